//! Cancelling a running job stops its tasks and leaves no output: a worker started
//! with a test-only task delay keeps the job running until the cancel arrives.

use anyhow::Result;
use integration_tests::{files_under, gen_clickstream, http_get, Cluster};
use std::time::Duration;

#[test]
fn a_cancelled_job_writes_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    gen_clickstream(&dir.path().join("data"), 5_000, 2)?;
    let spec = dir.path().join("slow.toml");
    std::fs::write(
        &spec,
        r#"
[job]
name = "slow"
[[sources]]
name = "events"
format = "parquet"
path = "data/events"
[transform]
sql = "SELECT kind, count(*) AS n FROM events GROUP BY kind"
[sink]
format = "parquet"
path = "out/slow"
"#,
    )?;
    let cluster = Cluster::start_with(1, 2, &["--test-task-delay-ms", "600000"])?;
    let v = cluster.cli_json(&["submit", spec.to_str().unwrap()])?;
    let id = v["job_id"].as_str().expect("job id").to_string();
    cluster.wait_for(Duration::from_secs(30), "a task to run", |c| {
        let w = c.cli_json(&["workers"])?;
        Ok(w[0]["running_tasks"].as_u64().unwrap_or(0) > 0)
    })?;
    let v = cluster.cli_json(&["cancel", &id])?;
    assert_eq!(v["state"], "cancelled", "{v}");
    let v = cluster.cli_json(&["status", &id])?;
    assert_eq!(v["state"], "cancelled", "{v}");
    // the worker stops the attempts and reports no running tasks
    cluster.wait_for(
        Duration::from_secs(30),
        "the worker to drop the cancelled tasks",
        |c| {
            let m = http_get(&c.workers[0].http, "/metrics")?;
            Ok(m.lines().any(|l| l == "autopipe_worker_tasks_running 0"))
        },
    )?;
    let m = http_get(&cluster.workers[0].http, "/metrics")?;
    assert!(
        m.contains("autopipe_worker_tasks_total{outcome=\"cancelled\"}"),
        "{m}"
    );
    assert!(files_under(&dir.path().join("out/slow")).is_empty());
    assert!(
        !dir.path()
            .join("out/.slow.autopipe-staging")
            .join(&id)
            .exists(),
        "staging of a cancelled job is removed"
    );
    Ok(())
}
