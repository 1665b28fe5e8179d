//! `bench recovery`: the wall time of one job with a worker SIGKILLed in the middle,
//! against the same job undisturbed, in one run on one cluster (a coordinator and 3
//! workers as processes). The killed worker is one that runs tasks when a quarter of
//! the job's tasks are done; a replacement starts at once, as a cluster manager would
//! start one. The job is a TPC-H query (Q18 by default: 5 stages, a join chain and a
//! large aggregation) at the given scale factor. Prints medians and the ratio.
//!
//! Run: `cargo build --release --workspace && target/release/bench recovery --sf 10`

use anyhow::{bail, Result};
use autopipe_common::spec::PipelineSpec;
use integration_tests::tpch::{self as datagen, spec_toml, QUERIES};
use integration_tests::Cluster;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Options of `bench recovery`.
pub struct Args {
    pub sf: f64,
    pub query: usize,
    pub reps: usize,
    pub heartbeat_timeout: f64,
    pub dir: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    if a.query == 0 || a.query > QUERIES.len() {
        bail!("--query must be 1..=22");
    }
    std::fs::create_dir_all(&a.dir)?;
    let dir = std::fs::canonicalize(&a.dir)?;
    let data = datagen::ensure(&dir, a.sf, false)?;
    let out = dir.join("out-recovery");
    let spec_path = dir.join(format!("recovery-q{}.toml", a.query));
    std::fs::write(
        &spec_path,
        spec_toml(&data, a.query, QUERIES[a.query - 1], &out),
    )?;
    let timeout = a.heartbeat_timeout.to_string();
    let mut c = Cluster::start_full(3, 2, &[], &["--heartbeat-timeout", &timeout])?;
    let (mut calm, mut killed) = (Vec::new(), Vec::new());
    for rep in 0..a.reps {
        let t = run_job(&mut c, &spec_path, None)?;
        eprintln!("rep {}: undisturbed {t:.2?}", rep + 1);
        calm.push(t);
        let t = run_job(&mut c, &spec_path, Some(0.25))?;
        eprintln!("rep {}: one worker killed {t:.2?}", rep + 1);
        killed.push(t);
    }
    let med = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64()
    };
    let (m0, m1) = (med(&mut calm), med(&mut killed));
    println!();
    println!(
        "TPC-H SF{} Q{} · 1 coordinator + 3 workers × 2 slots · heartbeat timeout {} s · {} reps",
        a.sf, a.query, a.heartbeat_timeout, a.reps
    );
    println!();
    println!("| run | median s | min s | max s |");
    println!("| --- | --- | --- | --- |");
    for (name, v, m) in [
        ("undisturbed", &calm, m0),
        ("one worker SIGKILLed", &killed, m1),
    ] {
        println!(
            "| {name} | {m:.2} | {:.2} | {:.2} |",
            v[0].as_secs_f64(),
            v[v.len() - 1].as_secs_f64()
        );
    }
    println!();
    println!("killed / undisturbed = {:.2}× (goal ≤ 1.5×)", m1 / m0);
    Ok(())
}

/// Runs the job once; with `kill_at`, SIGKILLs a busy worker once that share of the
/// tasks is done and starts a replacement. Returns the wall time from submission.
fn run_job(c: &mut Cluster, spec_path: &Path, kill_at: Option<f64>) -> Result<Duration> {
    let spec = PipelineSpec::from_file(spec_path)?;
    let _ = std::fs::remove_dir_all(&spec.sink.path);
    let t = Instant::now();
    let v = c.cli_json(&["submit", spec_path.to_str().expect("utf8")])?;
    let id = v["job_id"].as_str().unwrap_or_default().to_string();
    let mut pending_kill = kill_at;
    loop {
        let st = c.cli_json(&["status", &id])?;
        let state = st["state"].as_str().unwrap_or_default().to_string();
        if state == "succeeded" {
            return Ok(t.elapsed());
        }
        if state != "queued" && state != "running" && state != "committing" {
            bail!("job {id} ended {state}: {}", st["error"]);
        }
        if let Some(share) = pending_kill {
            let done = st["tasks_done"].as_f64().unwrap_or(0.0);
            let total = st["tasks_total"].as_f64().unwrap_or(1.0);
            if done >= share * total {
                if let Some(i) = c.busy_worker()? {
                    c.workers.remove(i).kill();
                    c.add_worker(2)?;
                    pending_kill = None;
                }
            }
        }
        if t.elapsed() > Duration::from_secs(600) {
            bail!("job {id} still running after 600 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
