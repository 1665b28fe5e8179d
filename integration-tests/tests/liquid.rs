//! Dynamic work rebalancing (issue 12 §2.7): one scan task over a Parquet file of 40
//! row groups, each row group slowed down on the workers (test-only), runs beside an
//! idle worker. The coordinator splits it at the row group its reader reached: the
//! original stops there and a new task reads the rest on the idle worker. The result
//! is the oracle's, the job read every source row exactly once, and the
//! `split_running_task` decision says what it did and, afterwards, its effect. With
//! `dynamic_rebalance = false` the task runs alone and nothing is split. A job that
//! scans straight into the sink is split the same way.

use anyhow::{Context, Result};
use datafusion::arrow::array::{Float64Array, Int64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use integration_tests::oracle::check_spec_output;
use integration_tests::{wait_until, write_spec, Cluster, Group};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const ROW_GROUPS: i64 = 40;

/// Rows of row group `g`: 500 to 650, unequal so that a task's row count is not a
/// multiple of any one group's (a count taken from shared scan metrics was).
fn group_rows(g: i64) -> i64 {
    500 + 50 * (g % 4)
}

/// Rows in the first `n` row groups.
fn rows_before(n: i64) -> u64 {
    (0..n).map(group_rows).sum::<i64>() as u64
}

/// One Parquet file of `ROW_GROUPS` row groups of `group_rows` rows.
fn write_events(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("k", DataType::Int64, false),
        Field::new("v", DataType::Float64, false),
    ]));
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(1000))
        .build();
    let file = std::fs::File::create(dir.join("part-0.parquet"))?;
    let mut w = ArrowWriter::try_new(file, schema.clone(), Some(props))?;
    for g in 0..ROW_GROUPS {
        let start = rows_before(g) as i64;
        let ids: Vec<i64> = (start..start + group_rows(g)).collect();
        let ks: Vec<i64> = ids.iter().map(|i| (i * 7919) % 13).collect();
        let vs: Vec<f64> = ids.iter().map(|i| (*i % 100) as f64 / 4.0).collect();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(Int64Array::from(ks)),
                Arc::new(Float64Array::from(vs)),
            ],
        )?;
        w.write(&batch)?;
        w.flush()?; // one row group per batch
    }
    w.close()?;
    Ok(())
}

fn spec(dir: &Path, name: &str, params: &str) -> Result<PathBuf> {
    spec_sql(
        dir,
        name,
        params,
        "SELECT k, count(*) AS n, sum(id) AS ids, sum(v) AS total FROM events GROUP BY k",
    )
}

fn spec_sql(dir: &Path, name: &str, params: &str, sql: &str) -> Result<PathBuf> {
    let path = dir.join(format!("{name}.toml"));
    write_spec(
        &path,
        &format!(
            r#"
[job]
name = "{name}"
[job.params]
speculation = false
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

fn decisions(c: &Cluster, job: &str, kind: &str) -> Result<Vec<serde_json::Value>> {
    Ok(c.cli_json(&["decisions", job])?
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|d| d["kind"] == kind)
        .collect())
}

/// The events in a temp dir, and two workers of one slot whose scans run a row group
/// every 150 ms: a one-task scan runs on one, the other idles.
fn slow_scan_beside_an_idle_worker() -> Result<(tempfile::TempDir, Cluster)> {
    let dir = tempfile::tempdir()?;
    write_events(&dir.path().join("data/events"))?;
    let c = Cluster::start_with(2, 1, &["--test-scan-unit-delay-ms", "150"])?;
    c.wait_for(Duration::from_secs(60), "2 workers", |c| {
        Ok(c.alive_workers()? == 2)
    })?;
    Ok((dir, c))
}

#[test]
fn a_running_scan_split_by_dynamic_rebalancing_reads_every_row_exactly_once() -> Result<()> {
    let (dir, c) = slow_scan_beside_an_idle_worker()?;
    let total_rows = rows_before(ROW_GROUPS);

    let on = spec(dir.path(), "split", "")?;
    let (v, t_on) = c.run(&on)?;
    assert_eq!(v["state"], "succeeded", "{v}");
    check_spec_output(dir.path(), &on)?;
    let job = v["job_id"].as_str().context("job id")?;
    // every source row read once: by the split task (its prefix) or the new one
    assert_eq!(v["rows_in"], total_rows, "{v}");
    let scan = &v["stages"][0];
    assert_eq!(scan["tasks_planned"], 1, "{scan}");
    let tasks = scan["tasks_total"].as_u64().context("tasks_total")?;
    assert!(tasks >= 2, "the scan was not split: {scan}");
    let splits = decisions(&c, job, "split_running_task")?;
    assert_eq!(splits.len() as u64, tasks - 1, "{splits:?}");
    let d = &splits[0];
    eprintln!("{splits:#?}");
    assert!(d["why"].as_str().unwrap_or("").contains("idle slot"), "{d}");
    let inputs = &d["inputs"];
    let at: u64 = inputs["split_unit"]
        .as_str()
        .context("split_unit")?
        .parse()?;
    let started: u64 = inputs["units_started"].as_str().context("units")?.parse()?;
    assert_eq!(inputs["units_total"], ROW_GROUPS.to_string(), "{d}");
    assert!(
        started >= 1 && at >= started && at < ROW_GROUPS as u64,
        "{d}"
    );
    let effect = d["effect"].as_str().unwrap_or("");
    assert!(
        effect.contains("of its prefix") && effect.contains("of the remainder"),
        "{d}"
    );
    // split once: the task read exactly the row groups before the split point
    if splits.len() == 1 {
        assert!(
            effect.contains(&format!("read {} rows", rows_before(at as i64))),
            "{d}"
        );
    }

    let off = spec(dir.path(), "unsplit", "dynamic_rebalance = false")?;
    let (v, t_off) = c.run(&off)?;
    assert_eq!(v["state"], "succeeded", "{v}");
    check_spec_output(dir.path(), &off)?;
    assert_eq!(v["rows_in"], total_rows, "{v}");
    assert_eq!(v["stages"][0]["tasks_total"], 1, "{v}");
    let job = v["job_id"].as_str().context("job id")?;
    assert!(decisions(&c, job, "split_running_task")?.is_empty());
    eprintln!("dynamic rebalancing on: {t_on:?}; off: {t_off:?}");
    Ok(())
}

/// A job that only scans and filters into the sink (no shuffle): its one scan task
/// is split all the same, the new task writes its own files, and the commit takes
/// both tasks' files: every row exactly once in the output.
#[test]
fn a_scan_straight_into_the_sink_is_split_and_every_row_is_written_once() -> Result<()> {
    let (dir, c) = slow_scan_beside_an_idle_worker()?;
    let total_rows = rows_before(ROW_GROUPS);
    let s = spec_sql(
        dir.path(),
        "scan_to_sink",
        "",
        "SELECT id, k, v * 2 AS v2 FROM events WHERE v >= 0",
    )?;
    let (v, _) = c.run(&s)?;
    assert_eq!(v["state"], "succeeded", "{v}");
    check_spec_output(dir.path(), &s)?;
    assert_eq!(
        v["stages"].as_array().map(Vec::len),
        Some(1),
        "one stage, the sink: {v}"
    );
    assert_eq!(v["rows_in"], total_rows, "{v}");
    assert_eq!(v["rows_out"], total_rows, "{v}");
    let sink = &v["stages"][0];
    assert_eq!(sink["tasks_planned"], 1, "{sink}");
    let tasks = sink["tasks_total"].as_u64().context("tasks_total")?;
    assert!(tasks >= 2, "the sink's scan was not split: {sink}");
    let job = v["job_id"].as_str().context("job id")?;
    let splits = decisions(&c, job, "split_running_task")?;
    assert_eq!(splits.len() as u64, tasks - 1, "{splits:?}");
    // both tasks' files were committed
    assert!(v["files_out"].as_u64().unwrap_or(0) >= tasks, "{v}");
    Ok(())
}

#[test]
fn the_split_tasks_worker_killed_after_the_split_its_retry_reads_only_the_prefix() -> Result<()> {
    let dir = tempfile::tempdir()?;
    write_events(&dir.path().join("data/events"))?;
    let mut c = Cluster::start_full(
        2,
        1,
        &["--test-scan-unit-delay-ms", "150"],
        &["--heartbeat-timeout", "2"],
    )?;
    c.wait_for(Duration::from_secs(60), "2 workers", |c| {
        Ok(c.alive_workers()? == 2)
    })?;
    let s = spec(dir.path(), "split_then_kill", "")?;
    let id = c.submit(&s)?;
    let mut split = serde_json::Value::Null;
    c.wait_for(Duration::from_secs(60), "a split", |c| {
        if let Some(d) = decisions(c, &id, "split_running_task")?.into_iter().next() {
            split = d;
        }
        Ok(!split.is_null())
    })?;
    // the worker of the split task goes: its retry must read the prefix alone
    let worker = split["inputs"]["worker"].as_str().context("worker")?;
    let workers = c.cli_json(&["workers"])?;
    let address = workers
        .as_array()
        .into_iter()
        .flatten()
        .find(|w| w["worker_id"] == worker)
        .and_then(|w| w["address"].as_str())
        .context("the split task's worker")?
        .to_string();
    let victim = c
        .workers
        .iter()
        .position(|p| address.ends_with(p.addr.trim_start_matches("http://")))
        .context("its process")?;
    c.workers[victim].kill();
    let v = c.wait_done(&id, Duration::from_secs(120))?;
    assert_eq!(v["state"], "succeeded", "{v}");
    check_spec_output(dir.path(), &s)?;
    assert_eq!(v["rows_in"], rows_before(ROW_GROUPS), "{v}");
    assert!(
        v["task_attempts"].as_u64() > v["tasks_total"].as_u64(),
        "the split task ran again: {v}"
    );
    Ok(())
}

/// The leader that asked for a split dies after the worker reserved its split point
/// and before anything was recorded (a test hook makes it exit there, once for the
/// group). The worker keeps reading up to its reserved point, lists the offer in its
/// heartbeats and answers any new request with it; the next leader records and
/// confirms it. The job succeeds with every row read exactly once.
#[test]
fn a_split_offer_the_leader_died_holding_is_recorded_by_the_next_leader() -> Result<()> {
    let dir = tempfile::tempdir()?;
    write_events(&dir.path().join("data/events"))?;
    let marker = dir.path().join("exited");
    let marker_arg = marker.to_str().context("utf8")?;
    let g = Group::start_with(
        3,
        2,
        1,
        &["--test-scan-unit-delay-ms", "150"],
        &["--test-exit-after-split-offer", marker_arg],
    )?;
    let s = spec(dir.path(), "split_across_leaders", "")?;
    let v = g.cli_json(&["submit", s.to_str().context("utf8")?])?;
    let id = v["job_id"].as_str().context("job id")?.to_string();
    wait_until(Duration::from_secs(120), "the job to finish", || {
        let v = g.cli_json(&["status", &id])?;
        Ok(v["state"] != "queued" && v["state"] != "running" && v["state"] != "committing")
    })?;
    assert!(marker.exists(), "the leader never got a split offer");
    let v = g.cli_json(&["status", &id])?;
    assert_eq!(v["state"], "succeeded", "{v}");
    check_spec_output(dir.path(), &s)?;
    assert_eq!(v["rows_in"], rows_before(ROW_GROUPS), "{v}");
    let splits: Vec<serde_json::Value> = g
        .cli_json(&["decisions", &id])?
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|d| d["kind"] == "split_running_task")
        .collect();
    // recorded by the next leader: from the worker's heartbeats, or from its answer
    // to that leader's own request (a worker answers with the offer it holds)
    let d = splits.first().context("no split was recorded")?;
    let effect = d["effect"].as_str().unwrap_or("");
    assert!(
        effect.contains("of its prefix") && effect.contains("of the remainder"),
        "{d}"
    );
    // each split recorded once: one new task each
    assert_eq!(
        v["stages"][0]["tasks_total"].as_u64(),
        Some(splits.len() as u64 + 1),
        "{v}"
    );
    Ok(())
}
