//! The Python client package (`clients/python`, issue 14) against real clusters of this
//! build: its unittest suite, which starts coordinators and workers of the binary under
//! test (`AUTOPIPE_BIN`), submits, lists, cancels and watches jobs through the client,
//! checks that the committed gRPC stubs regenerate unchanged from the protos (with the
//! grpcio-tools that `generate.py` pins), and runs the Airflow operator in Airflow
//! (`dag.test()` and `execute`). The suite must run every test it holds and skip none,
//! so a module that stops importing, or a tool that goes missing, fails here.

use anyhow::{Context, Result};
use integration_tests::kafka::{airflow_path, grpc_tools_path, grpcio_path};
use std::path::Path;
use std::process::{Command, Stdio};

/// The tests in `clients/python/tests`.
const TESTS: usize = 38;

#[test]
fn the_python_client_suite_passes_against_real_clusters() -> Result<()> {
    let client = Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/python");
    let generate = std::fs::read_to_string(client.join("generate.py"))?;
    let tools_version = generate
        .lines()
        .find_map(|l| l.strip_prefix("GRPCIO_TOOLS = \"")?.strip_suffix('"'))
        .context("GRPCIO_TOOLS = \"...\" in clients/python/generate.py")?;
    let path = std::env::join_paths([client.clone(), grpcio_path()?, airflow_path()?])?;
    let out = Command::new("python3")
        .args(["-m", "unittest", "discover", "-v", "-s"])
        .arg(client.join("tests"))
        .env("PYTHONPATH", path)
        .env("AUTOPIPE_BIN", integration_tests::autopipe_bin())
        .env("AUTOPIPE_GRPC_TOOLS", grpc_tools_path(tools_version)?)
        // the client reads these as the CLI does; the tests' clusters want none of them
        .env_remove("AUTOPIPE_COORDINATOR")
        .env_remove("AUTOPIPE_AUTH_TOKEN")
        .env_remove("AUTOPIPE_TLS_CA")
        .env_remove("AUTOPIPE_TLS_CERT")
        .env_remove("AUTOPIPE_TLS_KEY")
        .stdin(Stdio::null())
        .output()
        .context("python3 -m unittest")?;
    // unittest reports on stderr: a line per test, "Ran N tests in T", then "OK" or why not
    let report = String::from_utf8_lossy(&out.stderr);
    let tail: String = {
        let lines: Vec<&str> = report.lines().collect();
        lines[lines.len().saturating_sub(150)..].join("\n")
    };
    assert!(
        out.status.success(),
        "the Python client's suite failed:\n{tail}"
    );
    let mut lines = report.lines().skip_while(|l| !l.starts_with("Ran "));
    let ran = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<usize>().ok())
        .context(format!("no \"Ran N tests\" line:\n{tail}"))?;
    assert_eq!(ran, TESTS, "tests run:\n{tail}");
    let verdict = lines.find(|l| !l.trim().is_empty());
    assert_eq!(verdict, Some("OK"), "nothing skipped:\n{tail}");
    Ok(())
}
