//! Trust (issue 11), with real coordinator and worker processes: a failed or
//! cancelled job stops every attempt it still runs (also a busy, CPU-bound one) and
//! frees its slots for the next job; a panicking or hanging task ends in a failure
//! that says why; a job that cannot progress says so, alerts and fails after its
//! max_stall_ms; an overwrite replaces what autopipe committed, never the user's
//! files, and marks a finished output with a `_SUCCESS` manifest.

use anyhow::Result;
use integration_tests::oracle::check_spec_output;
use integration_tests::{aggregation_job, gen_clickstream, metric_sum, write_spec, Cluster};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Tasks running on every worker, as the workers themselves count them.
fn tasks_running(c: &Cluster) -> f64 {
    c.workers
        .iter()
        .map(|w| metric_sum(&w.http, "autopipe_worker_tasks_running").unwrap_or(0.0))
        .sum()
}

fn wait_idle(c: &Cluster, within: Duration, what: &str) -> Result<Duration> {
    let t0 = Instant::now();
    c.wait_for(within, what, |c| Ok(tasks_running(c) == 0.0))?;
    Ok(t0.elapsed())
}

/// A one-stage job over `data/events` with `sql` and extra `[job.params]` lines.
fn job(dir: &Path, name: &str, sql: &str, params: &str) -> Result<PathBuf> {
    let path = dir.join(format!("{name}.toml"));
    write_spec(
        &path,
        &format!(
            r#"
[job]
name = "{name}"
[job.params]
{params}
[[sources]]
name = "events"
format = "parquet"
path = "data/events"
[transform]
sql = "{sql}"
[sink]
format = "parquet"
path = "out/{name}"
"#
        ),
    )?;
    Ok(path)
}

#[test]
fn a_failed_job_stops_its_other_attempts() -> Result<()> {
    let dir = tempfile::tempdir()?;
    gen_clickstream(&dir.path().join("data"), 5_000, 4)?;
    // a failing cast fails the job on the fast worker while the slow one holds a task
    let spec = job(
        dir.path(),
        "bad_cast",
        "SELECT CAST(kind AS INT) AS k FROM events",
        // one scan task per file (not packed into one), so each worker gets some
        "adaptive_splits = false",
    )?;
    let mut c = Cluster::start(1, 2)?;
    c.add_worker_with(2, &["--test-task-delay-ms", "600000"])?;
    c.wait_for(Duration::from_secs(60), "2 workers", |c| {
        Ok(c.alive_workers()? == 2)
    })?;
    let id = c.submit(&spec)?;
    let v = c.wait_done(&id, Duration::from_secs(60))?;
    assert_eq!(v["state"], "failed", "{v}");
    let took = wait_idle(&c, Duration::from_secs(10), "the slow attempt to stop")?;
    eprintln!("the failed job's last attempt stopped {took:?} after the job ended");
    Ok(())
}

#[test]
fn a_cancelled_busy_job_stops_at_once_and_frees_its_slots() -> Result<()> {
    let dir = tempfile::tempdir()?;
    gen_clickstream(&dir.path().join("data"), 20_000, 2)?;
    // a join on a key with a few values: billions of rows, all CPU, no I/O to wait on
    let spec = job(
        dir.path(),
        "explode",
        "SELECT count(*) AS n FROM events a JOIN events b ON a.kind = b.kind JOIN events c ON b.kind = c.kind JOIN events d ON c.kind = d.kind",
        "shuffle_partitions = 2",
    )?;
    let c = Cluster::start(2, 2)?;
    let id = c.submit(&spec)?;
    c.wait_for(Duration::from_secs(60), "the join to run", |c| {
        let v = c.cli_json(&["status", &id])?;
        let stages = v["stages"].as_array().cloned().unwrap_or_default();
        let scans_done = stages
            .iter()
            .filter(|s| s["input_stages"].as_array().is_some_and(|a| a.is_empty()))
            .all(|s| s["tasks_done"] == s["tasks_total"]);
        Ok(scans_done && tasks_running(c) > 0.0)
    })?;
    // let the join get deep into its output
    std::thread::sleep(Duration::from_secs(2));
    let v = c.cli_json(&["cancel", &id])?;
    assert_eq!(v["state"], "cancelled", "{v}");
    // within 2 s of the cancel reaching the worker (at most a heartbeat later)
    let took = wait_idle(&c, Duration::from_secs(4), "the cancelled attempts to stop")?;
    eprintln!("cancelled attempts stopped within {took:?}");
    // the slots are free for the next job
    let next = aggregation_job(dir.path(), "after_cancel", "")?;
    let (v, t) = c.run(&next)?;
    assert_eq!(v["state"], "succeeded", "{v}");
    assert!(t < Duration::from_secs(60), "{t:?}");
    assert_eq!(
        v["task_attempts"], v["tasks_total"],
        "no refused launch counted: {v}"
    );
    check_spec_output(dir.path(), &next)
}

#[test]
fn a_panicking_task_is_retried_then_fails_the_job_with_the_reason() -> Result<()> {
    let dir = tempfile::tempdir()?;
    gen_clickstream(&dir.path().join("data"), 2_000, 1)?;
    let spec = job(
        dir.path(),
        "panics",
        "SELECT kind FROM events",
        "max_task_attempts = 2",
    )?;
    let c = Cluster::start_with(1, 1, &["--test-panic-tasks"])?;
    let id = c.submit(&spec)?;
    let v = c.wait_done(&id, Duration::from_secs(60))?;
    assert_eq!(v["state"], "failed", "{v}");
    let msg = v["error"]["message"].as_str().unwrap_or("");
    assert!(
        msg.contains("panicked") && msg.contains("failed 2 times"),
        "{v}"
    );
    wait_idle(&c, Duration::from_secs(5), "no attempt left running")?;
    Ok(())
}

#[test]
fn a_hanging_sink_task_times_out_then_fails_the_job_with_the_reason() -> Result<()> {
    let dir = tempfile::tempdir()?;
    gen_clickstream(&dir.path().join("data"), 2_000, 1)?;
    // the only task of the only stage hangs: no finished task to derive a timeout from
    let spec = job(
        dir.path(),
        "hangs",
        "SELECT kind FROM events",
        "max_task_attempts = 2\ntask_timeout_ms = 1500\nspeculation = false",
    )?;
    let c = Cluster::start_with(1, 1, &["--test-task-delay-ms", "600000"])?;
    let t0 = Instant::now();
    let id = c.submit(&spec)?;
    let v = c.wait_done(&id, Duration::from_secs(60))?;
    assert_eq!(v["state"], "failed", "{v}");
    let msg = v["error"]["message"].as_str().unwrap_or("");
    assert!(msg.contains("timed out"), "{v}");
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    wait_idle(&c, Duration::from_secs(5), "the hanging attempts to stop")?;
    Ok(())
}

#[test]
fn a_job_without_workers_says_it_waits_alerts_and_fails_after_max_stall_ms() -> Result<()> {
    let dir = tempfile::tempdir()?;
    gen_clickstream(&dir.path().join("data"), 2_000, 1)?;
    let spec = job(
        dir.path(),
        "stalls",
        "SELECT kind FROM events",
        "stall_alert_ms = 1000\nmax_stall_ms = 6000",
    )?;
    let mut c = Cluster::start_full(1, 1, &[], &["--heartbeat-timeout", "2"])?;
    c.workers[0].kill();
    c.wait_for(Duration::from_secs(20), "the worker to be lost", |c| {
        Ok(c.alive_workers()? == 0)
    })?;
    let id = c.submit(&spec)?;
    c.wait_for(Duration::from_secs(20), "the job to say it waits", |c| {
        let v = c.cli_json(&["status", &id])?;
        Ok(v["waiting"]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("no alive worker")))
    })?;
    let page = integration_tests::http_get(&c.coordinator.http, &format!("/api/jobs/{id}"))?;
    assert!(page.contains("no alive worker"), "{page}");
    let out = integration_tests::cli(&["status", &id, "--coordinator", &c.url()])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("WAITING") && text.contains("no alive worker"),
        "{text}"
    );
    c.wait_for(Duration::from_secs(20), "the job_stalled alert", |c| {
        let m = integration_tests::http_get(&c.coordinator.http, "/metrics")?;
        Ok(m.contains("kind=\"job_stalled\""))
    })?;
    let v = c.wait_done(&id, Duration::from_secs(30))?;
    assert_eq!(v["state"], "failed", "{v}");
    let msg = v["error"]["message"].as_str().unwrap_or("");
    assert!(
        msg.contains("max_stall_ms = 6000") && msg.contains("no alive worker"),
        "{v}"
    );
    Ok(())
}

#[test]
fn an_overwrite_keeps_the_users_files_and_marks_its_output_with_success() -> Result<()> {
    let dir = tempfile::tempdir()?;
    gen_clickstream(&dir.path().join("data"), 5_000, 2)?;
    let out = dir.path().join("out/agg");
    std::fs::create_dir_all(out.join("sub"))?;
    std::fs::write(out.join("notes.txt"), "my notes")?;
    std::fs::write(out.join("sub/keep.md"), "mine")?;
    let spec = aggregation_job(dir.path(), "agg", "")?;
    let c = Cluster::start(2, 2)?;
    let (v1, _) = c.run(&spec)?;
    assert_eq!(v1["state"], "succeeded", "{v1}");
    let first = parquet_files(&out);
    assert!(!first.is_empty());
    let (v2, _) = c.run(&spec)?;
    assert_eq!(v2["state"], "succeeded", "{v2}");
    let second = parquet_files(&out);
    assert!(
        first.iter().all(|f| !second.contains(f)),
        "the first run's files are replaced"
    );
    assert_eq!(std::fs::read_to_string(out.join("notes.txt"))?, "my notes");
    assert_eq!(std::fs::read_to_string(out.join("sub/keep.md"))?, "mine");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("_SUCCESS"))?)?;
    assert_eq!(manifest["job_id"], v2["job_id"], "{manifest}");
    let mut listed: Vec<String> = manifest["files"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str().map(str::to_string))
        .collect();
    listed.sort();
    assert_eq!(listed, second);
    check_spec_output(dir.path(), &spec)
}

/// Parquet files directly in `dir`, sorted.
fn parquet_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".parquet"))
        .collect();
    v.sort();
    v
}

#[test]
fn a_high_cardinality_aggregation_over_10m_rows_spills_within_256mib() -> Result<()> {
    let dir = tempfile::tempdir()?;
    gen_clickstream(&dir.path().join("data"), 10_000_000, 4)?;
    // 10M groups: the final aggregation cannot hold them in a task's share
    let spec = job(
        dir.path(),
        "spills",
        "SELECT event_id % 1000 AS b, count(*) AS ids, sum(n) AS n, sum(s) AS s FROM (SELECT event_id, count(*) AS n, sum(amount) AS s FROM events GROUP BY event_id) GROUP BY event_id % 1000",
        "shuffle_partitions = 2",
    )?;
    let c = Cluster::start_with(2, 2, &["--memory-limit", "256MiB"])?;
    let (v, t) = c.run(&spec)?;
    assert_eq!(v["state"], "succeeded", "{v}");
    let spilled: f64 = c
        .workers
        .iter()
        .map(|w| metric_sum(&w.http, "autopipe_worker_spilled_bytes_total").unwrap_or(0.0))
        .sum();
    eprintln!("10M-row aggregation in {t:?}, {spilled} bytes spilled");
    assert!(
        spilled > 0.0,
        "nothing spilled: the memory limit was not in force"
    );
    check_spec_output(dir.path(), &spec)
}

#[test]
fn a_task_out_of_memory_is_retried_with_a_larger_share_and_the_decision_says_so() -> Result<()> {
    let dir = tempfile::tempdir()?;
    gen_clickstream(&dir.path().join("data"), 2_000, 1)?;
    let spec = job(
        dir.path(),
        "oom",
        "SELECT kind, count(*) AS n FROM events GROUP BY kind",
        "",
    )?;
    // every task needs 4 slots' memory: 1 slot fails, 2 fail, 4 succeed
    let c = Cluster::start_with(1, 4, &["--test-oom-below-slots", "4"])?;
    let (v, _) = c.run(&spec)?;
    assert_eq!(v["state"], "succeeded", "{v}");
    let ds = c.cli_json(&["decisions", v["job_id"].as_str().unwrap_or("")])?;
    let shares: Vec<_> = ds
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["kind"] == "memory_retry")
        .collect();
    assert!(
        shares.iter().any(|d| d["inputs"]["slots_after"] == "4"
            && d["effect"].as_str().unwrap_or("").contains("succeeded")),
        "{ds}"
    );
    check_spec_output(dir.path(), &spec)?;
    // turned off, the task keeps its share and the job fails with the reason
    let off = job(
        dir.path(),
        "oom_off",
        "SELECT kind, count(*) AS n FROM events GROUP BY kind",
        "adaptive_memory = false\nmax_task_attempts = 2",
    )?;
    let (v, _) = c.run(&off)?;
    assert_eq!(v["state"], "failed", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("out of memory"),
        "{v}"
    );
    Ok(())
}

#[test]
fn a_commit_past_its_deadline_is_abandoned_and_run_again() -> Result<()> {
    let dir = tempfile::tempdir()?;
    gen_clickstream(&dir.path().join("data"), 2_000, 1)?;
    let spec = job(dir.path(), "redriven", "SELECT kind FROM events", "")?;
    // the first commit hangs for 10 minutes (a store that stopped answering); the
    // deadline is 1 s
    let c = Cluster::start_full(
        1,
        2,
        &[],
        &[
            "--commit-timeout-ms",
            "1000",
            "--test-commit-hang-ms",
            "600000",
        ],
    )?;
    let t0 = Instant::now();
    let id = c.submit(&spec)?;
    let v = c.wait_done(&id, Duration::from_secs(60))?;
    assert_eq!(v["state"], "succeeded", "{v}");
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "the hung commit was waited out: {:?}",
        t0.elapsed()
    );
    check_spec_output(dir.path(), &spec)
}
