//! Input splits (issue 12 §2.1): 2,000 tiny Parquet files are packed into a few scan
//! tasks (each up to the larger of `min_partition_bytes` and the input's share of a
//! slot), the result is the oracle's, the job's `input_splits` decision names what
//! the rule saw and, once the scan stage finished, what its tasks read; the tasks'
//! `bytes_in` add up to the listed input bytes. With `adaptive_splits = false` the
//! scans follow the shuffle width as before, and no decision is recorded.

use anyhow::{Context, Result};
use integration_tests::oracle::check_spec_output;
use integration_tests::{events_job, gen_clickstream, http_get, Cluster};
use std::path::{Path, PathBuf};

fn spec(dir: &Path, name: &str, params: &str) -> Result<PathBuf> {
    events_job(
        dir,
        name,
        params,
        "SELECT kind, user_id % 10 AS bucket, count(*) AS n, sum(amount) AS total FROM events GROUP BY kind, user_id % 10",
    )
}

fn input_splits(c: &Cluster, job: &str) -> Result<Vec<serde_json::Value>> {
    let ds = c.cli_json(&["decisions", job])?;
    Ok(ds
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|d| d["kind"] == "input_splits")
        .collect())
}

/// Tasks of the job's first stage (the scan of `events`).
fn scan_tasks(v: &serde_json::Value) -> Result<u64> {
    v["stages"][0]["tasks_total"]
        .as_u64()
        .context("stage 0 tasks_total")
}

#[test]
fn two_thousand_tiny_files_are_packed_into_few_scan_tasks() -> Result<()> {
    let dir = tempfile::tempdir()?;
    gen_clickstream(&dir.path().join("data"), 20_000, 2_000)?;
    let files = std::fs::read_dir(dir.path().join("data/events"))?.count();
    assert_eq!(files, 2_000);
    let c = Cluster::start(2, 2)?;

    let on = spec(dir.path(), "packed", "")?;
    let (v, t_on) = c.run(&on)?;
    assert_eq!(v["state"], "succeeded", "{v}");
    check_spec_output(dir.path(), &on)?;
    let job = v["job_id"].as_str().context("id")?;
    let tasks = scan_tasks(&v)?;
    // a few MB of input over 4 slots (each task at least 1 MiB): one wave at most
    assert!((1..=4).contains(&tasks), "{tasks} scan tasks: {v}");

    let ds = input_splits(&c, job)?;
    assert_eq!(ds.len(), 1, "one input_splits decision per job: {ds:?}");
    let d = &ds[0];
    let inputs = &d["inputs"];
    assert_eq!(inputs["files"], "2000", "{d}");
    assert_eq!(inputs["scan_tasks"], tasks.to_string(), "{d}");
    assert_eq!(inputs["alive_slots"], "4", "{d}");
    assert_eq!(inputs["target_partition_bytes"], "67108864", "{d}");
    assert_eq!(inputs["scan_stages"], "0", "{d}");
    assert!(
        d["what"]
            .as_str()
            .unwrap_or("")
            .contains(&format!("{tasks} scan task(s) from 2000 file(s)")),
        "{d}"
    );
    assert!(d["why"].as_str().unwrap_or("").contains("packed"), "{d}");
    // the tasks read exactly the listed bytes, and the effect says so
    let bytes: u64 = inputs["bytes"].as_str().context("bytes")?.parse()?;
    assert_eq!(v["bytes_in"].as_u64(), Some(bytes), "{v}");
    let effect = d["effect"].as_str().unwrap_or("");
    assert!(
        effect.starts_with(&format!("stage 0: {tasks} scan task(s) read {bytes} bytes")),
        "{d}"
    );
    // the same record on the admin HTTP API
    let api: serde_json::Value = serde_json::from_str(&http_get(
        &c.coordinator.http,
        &format!("/api/decisions?job={job}"),
    )?)?;
    assert!(
        api.as_array()
            .is_some_and(|a| a.iter().any(|x| x["kind"] == "input_splits")),
        "{api}"
    );

    // switched off: the scan follows the shuffle width (a wave of the 4 slots)
    let off = spec(dir.path(), "unpacked", "adaptive_splits = false")?;
    let (v, t_off) = c.run(&off)?;
    assert_eq!(v["state"], "succeeded", "{v}");
    check_spec_output(dir.path(), &off)?;
    let job = v["job_id"].as_str().context("id")?;
    assert!(input_splits(&c, job)?.is_empty());
    assert_eq!(scan_tasks(&v)?, 4, "{v}");
    eprintln!("2,000 tiny files: {tasks} scan tasks in {t_on:?}; rule off: 4 tasks in {t_off:?}");
    Ok(())
}
