//! `bench stragglers`: speculation against a slow worker. One cluster (a coordinator
//! and 4 workers of 1 slot as processes; one worker runs every task after a delay, as
//! a sick machine would) runs the same two-stage aggregation with speculation on (the
//! default) and off, alternating per repetition. Prints medians and the ratio.
//!
//! Run: `cargo build --release --workspace && target/release/bench stragglers`

use crate::median;
use anyhow::{bail, Result};
use integration_tests::{aggregation_job, gen_clickstream, Cluster};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Options of `bench stragglers`.
pub struct Args {
    pub rows: u64,
    pub reps: usize,
    pub delay_ms: u64,
    pub dir: PathBuf,
}

fn run_job(c: &Cluster, spec: &Path) -> Result<Duration> {
    let (v, t) = c.run(spec)?;
    if v["state"] != "succeeded" {
        bail!("job failed: {v}");
    }
    Ok(t)
}

pub fn run(a: Args) -> Result<()> {
    let dir = a.dir.join("stragglers");
    std::fs::create_dir_all(&dir)?;
    let dir = std::fs::canonicalize(&dir)?;
    if !dir.join("data/events").exists() {
        gen_clickstream(&dir.join("data"), a.rows, 10)?;
    }
    let on = aggregation_job(&dir, "speculation_on", "speculation = true")?;
    let off = aggregation_job(&dir, "speculation_off", "speculation = false")?;
    let mut c = Cluster::start(3, 1)?;
    c.add_worker_with(1, &["--test-task-delay-ms", &a.delay_ms.to_string()])?;
    c.wait_for(Duration::from_secs(60), "4 workers", |c| {
        Ok(c.alive_workers()? == 4)
    })?;
    let (mut t_on, mut t_off) = (vec![], vec![]);
    for _ in 0..a.reps {
        t_off.push(run_job(&c, &off)?);
        t_on.push(run_job(&c, &on)?);
    }
    let (on, off) = (median(t_on), median(t_off));
    println!(
        "{} events, 4 workers x 1 slot, one delaying every task by {} ms, {} reps",
        a.rows, a.delay_ms, a.reps
    );
    println!("| speculation | median (s) |");
    println!("| --- | --- |");
    println!("| off | {:.2} |", off.as_secs_f64());
    println!("| on (default) | {:.2} |", on.as_secs_f64());
    println!(
        "with speculation / without: {:.2}x",
        on.as_secs_f64() / off.as_secs_f64()
    );
    Ok(())
}
