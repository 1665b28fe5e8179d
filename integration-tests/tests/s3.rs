//! Sources and sinks on an S3-compatible object store (a real S3 REST server on
//! 127.0.0.1): a job copies local Parquet files into a bucket, a second job reads them
//! from the bucket and writes its result there; both equal the single-process oracle.

use anyhow::Result;
use autopipe_common::spec::PipelineSpec;
use integration_tests::oracle::{actual, assert_same, expected};
use integration_tests::{gen_clickstream, S3Server};

fn run_local(spec: &std::path::Path, env: &[(&'static str, String)]) -> Result<serde_json::Value> {
    let out = std::process::Command::new(integration_tests::autopipe_bin())
        .arg("local")
        .arg(spec)
        .args(["--workers", "2", "-o", "json"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("AUTOPIPE_LOG", "warn")
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "autopipe local {} failed: {}{}",
        spec.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[test]
fn pipelines_read_and_write_s3_urls() -> Result<()> {
    let s3 = S3Server::start(&["autopipe-test"])?;
    let env = s3.env();
    // the oracle in this process reads the bucket too
    for (k, v) in &env {
        std::env::set_var(k, v);
    }
    let dir = tempfile::tempdir()?;
    gen_clickstream(&dir.path().join("data"), 20_000, 4)?;

    let copy = dir.path().join("copy.toml");
    std::fs::write(
        &copy,
        r#"
[job]
name = "to_s3"
[[sources]]
name = "events"
format = "parquet"
path = "data/events"
[transform]
sql = "SELECT event_id, user_id, kind, amount FROM events"
[sink]
format = "parquet"
path = "s3://autopipe-test/events_copy"
"#,
    )?;
    let agg = dir.path().join("agg.toml");
    std::fs::write(
        &agg,
        r#"
[job]
name = "from_s3"
[[sources]]
name = "events"
format = "parquet"
path = "s3://autopipe-test/events_copy/"
[transform]
sql = "SELECT kind, count(*) AS n, sum(amount) AS total FROM events GROUP BY kind"
[sink]
format = "csv"
path = "s3://autopipe-test/by_kind"
partition_by = ["kind"]
"#,
    )?;
    let rt = tokio::runtime::Runtime::new()?;
    for spec_path in [&copy, &agg] {
        let v = run_local(spec_path, &env)?;
        assert_eq!(v["state"], "succeeded", "{v}");
        let spec = PipelineSpec::from_file(spec_path)?.normalize(dir.path(), "t")?;
        rt.block_on(async {
            let (names, types, exp) = expected(&spec).await?;
            assert_eq!(v["rows_out"].as_u64(), Some(exp.len() as u64), "{v}");
            let act = actual(&spec, &names, &types).await?;
            assert_same(&spec.job.name, exp, act)
        })?;
    }
    Ok(())
}
