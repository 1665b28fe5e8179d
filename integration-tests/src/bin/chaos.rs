//! Randomized chaos runner: `cargo run -p integration-tests --bin chaos -- --runs N`.
//!
//! Each run starts a coordinator and 3 workers (real processes on loopback), submits a
//! multi-stage join + aggregation job, and SIGKILLs random workers at random moments
//! while it runs (starting a replacement for each). The job must finish with exactly the
//! single-process oracle's rows. Prints one line per run and `N passed, M failed`;
//! `--seed` replays a run sequence.

use anyhow::{bail, Result};
use integration_tests::oracle::check_spec_output;
use integration_tests::{gen_clickstream, join_job, Cluster};
use std::path::Path;
use std::time::{Duration, Instant};

/// xorshift64*: enough randomness for choosing victims and moments, replayable by seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn arg(name: &str) -> Option<u64> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

fn main() -> Result<()> {
    let runs = arg("--runs").unwrap_or(5);
    let seed = arg("--seed").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    println!("chaos: {runs} runs, --seed {seed}");
    let dir = tempfile::tempdir()?;
    gen_clickstream(&dir.path().join("data"), 20_000, 6)?;
    let spec = join_job(dir.path(), "chaos")?;
    let mut rng = Rng(seed | 1);
    let (mut passed, mut failed) = (0, 0);
    for run in 1..=runs {
        match one_run(dir.path(), &spec, &mut rng) {
            Ok(what) => {
                passed += 1;
                println!("run {run}: passed ({what})");
            }
            Err(e) => {
                failed += 1;
                println!("run {run}: FAILED: {e:#}");
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

fn one_run(dir: &Path, spec: &Path, rng: &mut Rng) -> Result<String> {
    let _ = std::fs::remove_dir_all(dir.join("out"));
    let slow = ["--test-task-delay-ms", "300"];
    let mut c = Cluster::start_full(3, 2, &slow, &["--heartbeat-timeout", "2"])?;
    let v = c.cli_json(&["submit", spec.to_str().expect("utf8")])?;
    let id = v["job_id"].as_str().unwrap_or_default().to_string();
    let kills = 1 + rng.below(3);
    let mut done = Vec::new();
    let mut killed = std::collections::HashSet::new();
    for _ in 0..kills {
        std::thread::sleep(Duration::from_millis(rng.below(1500)));
        let st = c.cli_json(&["status", &id])?;
        if st["state"] != "running" {
            break;
        }
        let alive: Vec<usize> = (0..c.workers.len())
            .filter(|i| !killed.contains(i))
            .collect();
        let victim = alive[rng.below(alive.len() as u64) as usize];
        c.workers[victim].kill();
        killed.insert(victim);
        done.push(format!(
            "killed worker {victim} at {}/{} tasks",
            st["tasks_done"], st["tasks_total"]
        ));
        c.add_worker_with(2, &slow)?;
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    let st = loop {
        let st = c.cli_json(&["status", &id])?;
        if st["state"] != "running" && st["state"] != "committing" {
            break st;
        }
        if Instant::now() > deadline {
            bail!("job {id} still running after 180 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if st["state"] != "succeeded" {
        bail!("job {id} ended {}: {}", st["state"], st["error"]);
    }
    check_spec_output(dir, spec)?;
    Ok(done.join(", "))
}
