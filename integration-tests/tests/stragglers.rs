//! Stragglers (issue 5, test 7): one worker of four runs every task after a long
//! test-only delay. With speculation (the default) its tasks get copies on the fast
//! workers and the job finishes sooner than the same job with `speculation = false`;
//! the decisions say so, and the output has every oracle row exactly once. With
//! speculation off, a task timeout fails the slow attempts and retries them elsewhere.

use anyhow::Result;
use integration_tests::oracle::check_spec_output;
use integration_tests::{aggregation_job, gen_clickstream, http_get, Cluster};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A two-stage aggregation in 10 tasks per stage, so that 9 of 10 (Spark's quantile
/// 0.9) finish on the fast workers while the slow one holds its task. The other
/// rules that would act on the slow worker or the task counts (load-aware placement,
/// dynamic rebalancing, coalescing) are off: this measures speculation alone.
fn spec(dir: &Path, name: &str, params: &str) -> Result<PathBuf> {
    let isolated = format!(
        "coalesce = false\nload_aware_placement = false\ndynamic_rebalance = false\n{params}"
    );
    aggregation_job(dir, name, &isolated)
}

/// 3 fast workers and 1 slow one, one slot each.
fn cluster(slow_delay_ms: u64) -> Result<Cluster> {
    let mut c = Cluster::start(3, 1)?;
    c.add_worker_with(1, &["--test-task-delay-ms", &slow_delay_ms.to_string()])?;
    c.wait_for(Duration::from_secs(60), "4 workers", |c| {
        Ok(c.alive_workers()? == 4)
    })?;
    Ok(c)
}

fn run(c: &Cluster, spec: &Path) -> Result<(serde_json::Value, Duration)> {
    c.run(spec)
}

fn decisions(c: &Cluster, job: &str) -> Result<Vec<serde_json::Value>> {
    Ok(c.cli_json(&["decisions", job])?
        .as_array()
        .cloned()
        .unwrap_or_default())
}

#[test]
fn a_slow_worker_triggers_speculation_and_the_job_finishes_sooner() -> Result<()> {
    let dir = tempfile::tempdir()?;
    gen_clickstream(&dir.path().join("data"), 20_000, 10)?;
    let on = spec(dir.path(), "speculated", "")?;
    let off = spec(dir.path(), "unspeculated", "speculation = false")?;
    let c = cluster(5_000)?;

    let (v_off, t_off) = run(&c, &off)?;
    assert_eq!(v_off["state"], "succeeded", "{v_off}");
    check_spec_output(dir.path(), &off)?;
    let job_off = v_off["job_id"].as_str().expect("id");
    assert!(
        decisions(&c, job_off)?
            .iter()
            .all(|d| d["kind"] != "speculation"),
        "speculation is off"
    );

    let (v_on, t_on) = run(&c, &on)?;
    assert_eq!(v_on["state"], "succeeded", "{v_on}");
    check_spec_output(dir.path(), &on)?;
    let job_on = v_on["job_id"].as_str().expect("id");
    let ds = decisions(&c, job_on)?;
    let copies: Vec<_> = ds.iter().filter(|d| d["kind"] == "speculation").collect();
    assert!(!copies.is_empty(), "no speculation: {ds:?}");
    assert!(
        copies.iter().any(|d| d["effect"]
            .as_str()
            .unwrap_or("")
            .starts_with("the copy won")),
        "{copies:?}"
    );
    for d in &copies {
        assert!(d["why"].as_str().unwrap_or("").contains("median"), "{d}");
        assert!(d["inputs"]["median_ms"].is_string(), "{d}");
    }
    assert!(
        t_on < t_off,
        "speculation took {t_on:?}, without it {t_off:?}"
    );
    // the same log on the admin HTTP API and in the metrics
    let http = c.coordinator.http.as_str();
    let api: serde_json::Value =
        serde_json::from_str(&http_get(http, &format!("/api/decisions?job={job_on}"))?)?;
    assert_eq!(api.as_array().map(Vec::len), Some(ds.len()));
    // the dashboard shows the decision log and the coordinator group
    let page = http_get(http, "/")?;
    assert!(
        page.contains("fetch('/api/decisions')") && page.contains("fetch('/api/cluster')"),
        "{page}"
    );
    let metrics = http_get(http, "/metrics")?;
    assert!(
        metrics.contains("autopipe_decisions_total{kind=\"speculation\"}"),
        "{metrics}"
    );
    eprintln!("speculation on: {t_on:?}, off: {t_off:?}");
    Ok(())
}

#[test]
fn an_attempt_past_its_task_timeout_is_retried_on_another_worker() -> Result<()> {
    let dir = tempfile::tempdir()?;
    gen_clickstream(&dir.path().join("data"), 20_000, 10)?;
    let s = spec(
        dir.path(),
        "timeouts",
        "speculation = false\ntask_timeout_ms = 1500",
    )?;
    // the slow worker would hold its tasks for 10 minutes
    let c = cluster(600_000)?;
    let (v, t) = run(&c, &s)?;
    assert_eq!(v["state"], "succeeded", "{v}");
    assert!(t < Duration::from_secs(60), "took {t:?}");
    check_spec_output(dir.path(), &s)?;
    let ds = decisions(&c, v["job_id"].as_str().expect("id"))?;
    let timeouts: Vec<_> = ds.iter().filter(|d| d["kind"] == "task_timeout").collect();
    assert!(!timeouts.is_empty(), "{ds:?}");
    assert_eq!(timeouts[0]["inputs"]["timeout_ms"], "1500", "{ds:?}");
    assert!(ds.iter().all(|d| d["kind"] != "speculation"));
    Ok(())
}
