//! Bad input gets a clear error that names the file, the key and the reason, exits
//! non-zero, and writes nothing to the sink.

use std::path::Path;
use std::process::Command;

fn autopipe(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_autopipe"))
        .args(args)
        .env("AUTOPIPE_LOG", "error")
        .output()
        .expect("run autopipe");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (ok, text) = autopipe(&[
        "gen",
        "clickstream",
        "--rows",
        "2000",
        "--files",
        "2",
        "--out",
        data.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    dir
}

const GOOD: &str = r#"
[job]
name = "bad_input"

[[sources]]
name = "events"
format = "parquet"
path = "data/events"

[[sources]]
name = "users"
format = "csv"
path = "data/users.csv"

[transform]
sql = "SELECT kind, count(*) AS n FROM events GROUP BY kind"

[sink]
format = "parquet"
path = "out/result"
"#;

/// Writes `spec` into `dir`, runs `args` + spec path, and checks failure, message and empty sink.
fn expect_failure(dir: &Path, spec: &str, args: &[&str], must_contain: &[&str]) {
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, spec).unwrap();
    let mut a: Vec<&str> = args.to_vec();
    a.insert(1, path.to_str().unwrap());
    let (ok, text) = autopipe(&a);
    assert!(!ok, "expected failure for {args:?}, got success:\n{text}");
    assert!(
        text.contains("pipeline.toml"),
        "error must name the file:\n{text}"
    );
    for m in must_contain {
        assert!(text.contains(m), "error must contain {m:?}:\n{text}");
    }
    assert!(
        !dir.join("out/result").exists()
            || std::fs::read_dir(dir.join("out/result"))
                .unwrap()
                .next()
                .is_none(),
        "nothing may be written to the sink"
    );
}

const LOCAL: &[&str] = &["local", "--workers", "1"];
const UNREACHABLE: &[&str] = &["submit", "--coordinator", "http://127.0.0.1:9"];

#[test]
fn unknown_key_is_rejected_with_its_name() {
    let dir = setup();
    let spec = GOOD.replace(
        "path = \"data/users.csv\"",
        "path = \"data/users.csv\"\nheader_row = 1",
    );
    expect_failure(
        dir.path(),
        &spec,
        LOCAL,
        &["sources[1].header_row", "unknown field"],
    );
    expect_failure(dir.path(), &spec, UNREACHABLE, &["sources[1].header_row"]);
}

#[test]
fn unknown_format_is_rejected_with_its_name() {
    let dir = setup();
    let spec = GOOD.replace("format = \"csv\"", "format = \"xlsx\"");
    expect_failure(dir.path(), &spec, LOCAL, &["sources[1].format", "xlsx"]);
    let spec = GOOD.replace(
        "format = \"parquet\"\npath = \"out",
        "format = \"avro\"\npath = \"out",
    );
    expect_failure(dir.path(), &spec, LOCAL, &["sink.format", "avro"]);
}

#[test]
fn missing_path_is_rejected_with_its_name() {
    let dir = setup();
    let spec = GOOD.replace("data/users.csv", "data/no_such_users.csv");
    expect_failure(
        dir.path(),
        &spec,
        LOCAL,
        &["sources[1].path", "does not exist"],
    );
}

#[test]
fn unknown_table_is_rejected_with_the_sql_key() {
    let dir = setup();
    let spec = GOOD.replace("FROM events GROUP", "FROM evnts GROUP");
    expect_failure(dir.path(), &spec, LOCAL, &["transform.sql", "evnts"]);
}

#[test]
fn unknown_column_is_rejected_with_the_sql_key() {
    let dir = setup();
    let spec = GOOD.replace("SELECT kind,", "SELECT knd,");
    expect_failure(dir.path(), &spec, LOCAL, &["transform.sql", "knd"]);
}

#[test]
fn sql_syntax_error_is_rejected_with_the_sql_key() {
    let dir = setup();
    let spec = GOOD.replace(
        "SELECT kind, count(*) AS n FROM",
        "SELECT kind, count(*) AS n FORM",
    );
    expect_failure(dir.path(), &spec, LOCAL, &["transform.sql"]);
}

#[test]
fn a_transform_that_writes_files_is_refused_and_writes_nothing() {
    let dir = setup();
    let copied = dir.path().join("copied.csv");
    let spec = GOOD.replace(
        "SELECT kind, count(*) AS n FROM events GROUP BY kind",
        &format!("COPY (SELECT kind FROM events) TO '{}'", copied.display()),
    );
    expect_failure(
        dir.path(),
        &spec,
        LOCAL,
        &[
            "transform.sql",
            "may only query",
            "COPY ... TO is not allowed",
        ],
    );
    let path = dir.path().join("pipeline.toml");
    let (ok, text) = autopipe(&["explain", path.to_str().unwrap()]);
    assert!(!ok, "explain must refuse a COPY:\n{text}");
    assert!(text.contains("COPY ... TO is not allowed"), "{text}");
    assert!(!copied.exists(), "the COPY wrote {}", copied.display());
}

#[test]
fn unreachable_coordinator_is_reported() {
    let dir = setup();
    expect_failure(
        dir.path(),
        GOOD,
        UNREACHABLE,
        &["cannot reach coordinator", "127.0.0.1:9"],
    );
}

#[test]
fn local_runs_a_pipeline_to_completion_with_a_summary() {
    let dir = setup();
    let path = dir.path().join("pipeline.toml");
    std::fs::write(&path, GOOD).unwrap();
    let (ok, text) = autopipe(&["local", path.to_str().unwrap(), "--workers", "2"]);
    assert!(ok, "{text}");
    assert!(text.contains("succeeded"), "{text}");
    assert!(text.contains("rows in:   2000"), "{text}");
    assert!(text.contains("rows out:  4"), "{text}");
    let n = std::fs::read_dir(dir.path().join("out/result"))
        .unwrap()
        .count();
    assert!(n >= 1);
}
