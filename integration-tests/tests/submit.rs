//! Idempotent submissions: `autopipe submit --request-id KEY` twice (a scheduler's
//! task retried) starts one job and answers its id both times; another key starts
//! another job; the key reused with another spec is refused.

use anyhow::Result;
use integration_tests::{gen_clickstream, join_job, Cluster};

#[test]
fn a_request_id_makes_a_submission_idempotent() -> Result<()> {
    let dir = tempfile::tempdir()?;
    gen_clickstream(&dir.path().join("data"), 2_000, 2)?;
    let spec = join_job(dir.path(), "idempotent")?;
    let spec = spec.to_str().expect("utf8");
    let c = Cluster::start(1, 2)?;
    let submit = |key: &str| -> Result<String> {
        let v = c.cli_json(&["submit", spec, "--request-id", key])?;
        Ok(v["job_id"].as_str().expect("job id").to_string())
    };
    let first = submit("airflow-run-1")?;
    let again = submit("airflow-run-1")?;
    assert_eq!(first, again, "the retry got the first job");
    let other = submit("airflow-run-2")?;
    assert_ne!(other, first);
    let jobs = c.cli_json(&["jobs"])?;
    assert_eq!(jobs.as_array().map(Vec::len), Some(2), "{jobs}");

    // the key again with another spec: an error naming the first job, no new job
    let changed = join_job(dir.path(), "idempotent_changed")?;
    let out = integration_tests::cli(&[
        "submit",
        changed.to_str().expect("utf8"),
        "--request-id",
        "airflow-run-1",
        "--coordinator",
        &c.url(),
    ])?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("airflow-run-1") && err.contains(&first) && err.contains("another spec"),
        "{err}"
    );
    let jobs = c.cli_json(&["jobs"])?;
    assert_eq!(jobs.as_array().map(Vec::len), Some(2), "{jobs}");
    Ok(())
}
