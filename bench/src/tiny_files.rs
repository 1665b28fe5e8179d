//! `bench tiny-files`: the input splits rule (issue 12 §2.1) on many tiny files. One
//! cluster (a coordinator and `--workers` workers of `--slots` slots, as processes)
//! runs the same two-stage aggregation over `--files` tiny Parquet files with
//! `adaptive_splits = true` (the default) and `false`, alternating per repetition.
//! Prints the scan task count and the median/min/max wall time of each, and the ratio.
//!
//! Run: `cargo build --release --workspace && target/release/bench tiny-files`

use crate::median;
use anyhow::{bail, Context, Result};
use integration_tests::{events_job, gen_clickstream, Cluster, AGGREGATION_SQL};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Options of `bench tiny-files`.
pub struct Args {
    pub files: usize,
    pub rows: u64,
    pub reps: usize,
    pub workers: usize,
    pub slots: u32,
    pub dir: PathBuf,
}

fn spec(dir: &Path, name: &str, params: &str) -> Result<PathBuf> {
    events_job(dir, name, params, AGGREGATION_SQL)
}

/// Wall time and scan (stage 0) task count of one run.
fn run_job(c: &Cluster, spec: &Path) -> Result<(Duration, u64)> {
    let (v, t) = c.run(spec)?;
    if v["state"] != "succeeded" {
        bail!("job failed: {v}");
    }
    let tasks = v["stages"][0]["tasks_total"]
        .as_u64()
        .context("stage 0 tasks_total")?;
    Ok((t, tasks))
}

fn spread(v: &[Duration]) -> String {
    let min = v.iter().min().copied().unwrap_or_default();
    let max = v.iter().max().copied().unwrap_or_default();
    format!(
        "{:.2} | {:.2} | {:.2}",
        median(v.to_vec()).as_secs_f64(),
        min.as_secs_f64(),
        max.as_secs_f64()
    )
}

pub fn run(a: Args) -> Result<()> {
    let dir = a.dir.join(format!("tiny-files-{}-{}", a.files, a.rows));
    std::fs::create_dir_all(&dir)?;
    let dir = std::fs::canonicalize(&dir)?;
    if !dir.join("data/events").exists() {
        gen_clickstream(&dir.join("data"), a.rows, a.files)?;
    }
    let on = spec(&dir, "splits_on", "adaptive_splits = true")?;
    let off = spec(&dir, "splits_off", "adaptive_splits = false")?;
    let c = Cluster::start(a.workers, a.slots)?;
    let (mut t_on, mut t_off) = (vec![], vec![]);
    let (mut n_on, mut n_off) = (0, 0);
    for _ in 0..a.reps {
        let (t, n) = run_job(&c, &off)?;
        t_off.push(t);
        n_off = n;
        let (t, n) = run_job(&c, &on)?;
        t_on.push(t);
        n_on = n;
    }
    println!(
        "{} tiny Parquet files ({} events), {} workers x {} slots, {} reps (alternating)",
        a.files, a.rows, a.workers, a.slots, a.reps
    );
    println!("| adaptive_splits | scan tasks | median (s) | min (s) | max (s) |");
    println!("| --- | --- | --- | --- | --- |");
    println!("| false | {n_off} | {} |", spread(&t_off));
    println!("| true (default) | {n_on} | {} |", spread(&t_on));
    println!(
        "rule on / off: {:.2}x wall time, {:.2}x scan tasks",
        median(t_on).as_secs_f64() / median(t_off).as_secs_f64(),
        n_on as f64 / n_off.max(1) as f64
    );
    Ok(())
}
