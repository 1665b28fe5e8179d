//! Randomized chaos runner: `cargo run -p integration-tests --bin chaos -- --runs N`.
//!
//! Each run starts 3 coordinators (one Raft group) and 3 workers, real processes on
//! loopback, with everything on at once:
//! - every launch and every shuffle fetch crosses a flaky proxy in front of its worker
//!   (it refuses every 5th connection and holds each new one 20 ms; host-local shuffle
//!   reads are off, so all shuffle data crosses the proxies);
//! - speculation with aggressive thresholds (a copy once half a stage is done and a
//!   task has run 1.5x the median, after 200 ms);
//! - 1 to 3 random kills (SIGKILL) at random moments: a worker (a replacement starts
//!   behind a proxy of its own) or the Raft leader (restarted with its data dir).
//!
//! Runs alternate between two jobs, each of which must finish with exactly the
//! single-process oracle's rows (none lost, none duplicated):
//! - a multi-stage join + aggregation;
//! - an aggregation with one hot key, whose skewed partition is pre-merged by an extra
//!   stage added at run time (`skew_aggregation`).
//!
//! Prints one line per run and a summary (runs, kills by kind, failures); `--seed`
//! replays a run sequence.

use anyhow::{bail, Context, Result};
use integration_tests::oracle::check_spec_output;
use integration_tests::proxy::FaultNet;
use integration_tests::{
    free_ports, gen_clickstream, gen_clickstream_skewed, join_job, spawn_worker, wait_until, Group,
};
use std::path::{Path, PathBuf};
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

/// Workers per run, and the most replacements a run may start.
const WORKERS: usize = 3;
const MAX_KILLS: u64 = 3;
const COORDINATOR_ARGS: &[&str] = &["--heartbeat-timeout", "2"];

/// What one run did.
#[derive(Default)]
struct Kills {
    workers: u32,
    leaders: u32,
    what: Vec<String>,
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
    let skewed_dir = tempfile::tempdir()?;
    gen_clickstream_skewed(&skewed_dir.path().join("data"), 600_000, 2, 0.15)?;
    let jobs = [
        (dir.path(), aggressive_spec(dir.path())?),
        (
            skewed_dir.path(),
            skewed_aggregation_spec(skewed_dir.path())?,
        ),
    ];
    let mut rng = Rng(seed | 1);
    let (mut passed, mut failed, mut workers, mut leaders) = (0, 0, 0, 0);
    let t0 = Instant::now();
    for run in 1..=runs {
        let mut kills = Kills::default();
        let (dir, spec) = &jobs[(run as usize - 1) % jobs.len()];
        let r = one_run(dir, spec, &mut rng, &mut kills);
        workers += kills.workers;
        leaders += kills.leaders;
        match r {
            Ok(()) => {
                passed += 1;
                println!(
                    "run {run}: {} passed ({})",
                    spec.file_stem().and_then(|n| n.to_str()).unwrap_or("?"),
                    kills.what.join(", ")
                );
            }
            Err(e) => {
                failed += 1;
                println!("run {run}: FAILED after {}: {e:#}", kills.what.join(", "));
            }
        }
    }
    println!(
        "{runs} runs in {:.0} s: {passed} passed, {failed} failed; killed {workers} workers and {leaders} raft leaders",
        t0.elapsed().as_secs_f64()
    );
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

/// The join job with speculation on a hair trigger.
fn aggressive_spec(dir: &Path) -> Result<PathBuf> {
    let spec = join_job(dir, "chaos")?;
    let text = std::fs::read_to_string(&spec)?.replace(
        "[job.params]\n",
        "[job.params]\nspeculation_quantile = 0.5\nspeculation_multiplier = 1.5\nspeculation_min_runtime_ms = 200\n",
    );
    std::fs::write(&spec, text)?;
    Ok(spec)
}

/// Per-key totals where the hot user's events (15%) share one key and every other
/// event has its own: map tasks of 300k events give up partial aggregation, and the
/// hot key's partition is pre-merged by an extra stage (thresholds scaled to the data,
/// as in the adaptive tests); speculation as in `aggressive_spec`.
fn skewed_aggregation_spec(dir: &Path) -> Result<PathBuf> {
    let spec = dir.join("chaos_skewed.toml");
    std::fs::write(
        &spec,
        r#"
[job]
name = "chaos_skewed"
[job.params]
shuffle_partitions = 32
skew_factor = 2
skew_threshold_bytes = "64KiB"
target_partition_bytes = "64KiB"
speculation_quantile = 0.5
speculation_multiplier = 1.5
speculation_min_runtime_ms = 200
[[sources]]
name = "events"
format = "parquet"
path = "data/events"
[transform]
sql = "SELECT k, count(*) AS n, sum(amount) AS total, max(session_id) AS last_session FROM (SELECT CASE WHEN user_id = 1 THEN -1 ELSE event_id END AS k, amount, session_id FROM events) GROUP BY k"
[sink]
format = "parquet"
path = "out/chaos_skewed"
"#,
    )?;
    Ok(spec)
}

/// Starts a worker behind its own flaky proxy.
fn proxied_worker(g: &mut Group, nets: &mut Vec<FaultNet>) -> Result<()> {
    let port = free_ports(1)?[0];
    let listen = format!("127.0.0.1:{port}");
    let net = FaultNet::start(&[listen.parse()?])?;
    net.flaky(5, Duration::ZERO);
    net.delay(Duration::from_millis(20));
    let advertise = net.proxies[0].to_string();
    let wd = g.dir.path().join(format!("worker-{}", g.workers.len()));
    let w = spawn_worker(
        &g.addrs(),
        &wd,
        2,
        &[
            "--listen",
            &listen,
            "--advertise",
            &advertise,
            "--no-host-local-shuffle",
            "--test-task-delay-ms",
            "300",
        ],
    )?;
    g.workers.push(w);
    nets.push(net);
    Ok(())
}

/// The job's status, once the group has a leader again (a leader change makes a
/// status call fail for a moment).
fn status(g: &Group, id: &str) -> Result<serde_json::Value> {
    let mut st = None;
    wait_until(Duration::from_secs(30), "a leader to answer", || {
        st = Some(g.cli_json(&["status", id])?);
        Ok(true)
    })?;
    st.context("waited for it")
}

fn one_run(dir: &Path, spec: &Path, rng: &mut Rng, kills: &mut Kills) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir.join("out"));
    let mut g = Group::start_with(3, 0, 2, &[], COORDINATOR_ARGS)?;
    let mut nets = Vec::new();
    for _ in 0..WORKERS {
        proxied_worker(&mut g, &mut nets)?;
    }
    wait_until(Duration::from_secs(60), "workers to register", || {
        let v = g.cli_json(&["workers"])?;
        Ok(v.as_array()
            .map(|a| a.iter().filter(|w| w["state"] == "alive").count())
            .unwrap_or(0)
            >= WORKERS)
    })?;
    let v = g.cli_json(&["submit", spec.to_str().context("utf8 path")?])?;
    let id = v["job_id"].as_str().unwrap_or_default().to_string();
    let mut killed = std::collections::HashSet::new();
    for _ in 0..1 + rng.below(MAX_KILLS) {
        std::thread::sleep(Duration::from_millis(rng.below(1500)));
        let st = status(&g, &id)?;
        if st["state"] != "queued" && st["state"] != "running" {
            break;
        }
        let at = format!("{}/{} tasks", st["tasks_done"], st["tasks_total"]);
        if rng.below(3) == 0 {
            let Some(leader) = g.leader()? else { continue };
            g.kill(leader);
            kills.leaders += 1;
            kills.what.push(format!("killed leader {leader} at {at}"));
            // it comes back with its data dir (a majority runs on without it)
            g.start_coordinator(leader, COORDINATOR_ARGS)?;
        } else {
            let alive: Vec<usize> = (0..g.workers.len())
                .filter(|i| !killed.contains(i))
                .collect();
            let victim = alive[rng.below(alive.len() as u64) as usize];
            g.workers[victim].kill();
            killed.insert(victim);
            kills.workers += 1;
            kills.what.push(format!("killed worker {victim} at {at}"));
            proxied_worker(&mut g, &mut nets)?;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(240);
    let st = loop {
        let st = status(&g, &id)?;
        if st["state"] != "queued" && st["state"] != "running" && st["state"] != "committing" {
            break st;
        }
        if Instant::now() > deadline {
            bail!("job {id} still running after 240 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if st["state"] != "succeeded" {
        bail!("job {id} ended {}: {}", st["state"], st["error"]);
    }
    // a stage added at run time (a skewed partition's pre-merge) shows here
    kills.what.push(format!(
        "{} stages",
        st["stages"].as_array().map_or(0, Vec::len)
    ));
    // exactly the oracle's rows: none lost, none duplicated
    check_spec_output(dir, spec)
}
