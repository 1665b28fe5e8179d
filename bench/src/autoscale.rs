//! `bench autoscale`: a backlog job (a two-stage aggregation in 10 + 10 tasks) on a
//! coordinator with `--autoscale 1..4 --provisioner local` (workers of 1 slot, started
//! and released by the coordinator) against the same job on one fixed worker of 1
//! slot. Each repetition starts a fresh cluster of each kind (the autoscaled one at
//! MIN = 1 worker), alternating, and times the job from submission to its end, so the
//! autoscaled time includes starting its workers. Prints medians and the ratio.
//!
//! Run: `cargo build --release --workspace && target/release/bench autoscale`

use crate::median;
use anyhow::{bail, Result};
use integration_tests::{aggregation_job, gen_clickstream, Cluster};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Options of `bench autoscale`.
pub struct Args {
    pub rows: u64,
    pub reps: usize,
    pub task_delay_ms: u64,
    pub backlog_timeout: String,
    pub dir: PathBuf,
}

fn run_job(c: &Cluster, spec: &Path) -> Result<Duration> {
    let (v, t) = c.run(spec)?;
    if v["state"] != "succeeded" {
        bail!("job failed: {v}");
    }
    Ok(t)
}

fn fixed(spec: &Path, worker_args: &[&str]) -> Result<Duration> {
    let c = Cluster::start_with(1, 1, worker_args)?;
    run_job(&c, spec)
}

fn autoscaled(a: &Args, spec: &Path, worker_arg: &Option<String>) -> Result<(Duration, usize)> {
    let mut args = vec![
        "--autoscale",
        "1..4",
        "--provisioner",
        "local",
        "--worker-slots",
        "1",
        "--backlog-timeout",
        &a.backlog_timeout,
    ];
    if let Some(w) = worker_arg {
        args.push(w);
    }
    let mut c = Cluster::start_full(0, 1, &[], &args)?;
    let r = (|| {
        c.wait_for(Duration::from_secs(60), "the MIN worker", |c| {
            Ok(c.alive_workers()? >= 1)
        })?;
        let t = run_job(&c, spec)?;
        let added = c
            .cli_json(&["decisions"])?
            .as_array()
            .map(|a| a.iter().filter(|d| d["kind"] == "scale_up").count())
            .unwrap_or(0);
        Ok((t, added))
    })();
    // a graceful stop: the coordinator stops the workers it started
    c.coordinator.terminate(Duration::from_secs(30));
    r
}

pub fn run(a: Args) -> Result<()> {
    let dir = a.dir.join("autoscale");
    std::fs::create_dir_all(&dir)?;
    let dir = std::fs::canonicalize(&dir)?;
    if !dir.join("data/events").exists() {
        gen_clickstream(&dir.join("data"), a.rows, 10)?;
    }
    let spec = aggregation_job(&dir, "backlog", "")?;
    let delay = a.task_delay_ms.to_string();
    let worker_args: Vec<&str> = if a.task_delay_ms > 0 {
        vec!["--test-task-delay-ms", &delay]
    } else {
        vec![]
    };
    let worker_arg =
        (a.task_delay_ms > 0).then(|| format!("--worker-arg=--test-task-delay-ms={delay}"));
    let (mut t_fixed, mut t_auto, mut ups) = (vec![], vec![], vec![]);
    for _ in 0..a.reps {
        t_fixed.push(fixed(&spec, &worker_args)?);
        let (t, n) = autoscaled(&a, &spec, &worker_arg)?;
        t_auto.push(t);
        ups.push(n);
    }
    let (f, s) = (median(t_fixed), median(t_auto));
    println!(
        "{} events, 10 map + 10 reduce tasks, workers of 1 slot, task delay {} ms, backlog_timeout {}, {} reps; scale_up decisions per autoscaled run: {ups:?}",
        a.rows, a.task_delay_ms, a.backlog_timeout, a.reps
    );
    println!("| fleet | median (s) |");
    println!("| --- | --- |");
    println!("| 1 fixed worker | {:.2} |", f.as_secs_f64());
    println!("| --autoscale 1..4 | {:.2} |", s.as_secs_f64());
    println!(
        "autoscaled / fixed: {:.2}x",
        s.as_secs_f64() / f.as_secs_f64()
    );
    Ok(())
}
