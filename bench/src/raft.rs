//! `bench raft`: the replicated coordinator, on 3 coordinator processes on loopback.
//!
//! - committed proposals per second: `clients` concurrent gRPC callers each register
//!   workers (one command each, answered once applied) for `secs` seconds; the same on
//!   a lone coordinator in the same run, for the ratio;
//! - failover: SIGKILL the leader, then time until a job submission is accepted by the
//!   new leader (the client follows the refusals' leader hints, as workers do).
//!
//! Run: `cargo build --release --workspace && target/release/bench raft`

use anyhow::{bail, Context, Result};
use autopipe_common::leader::Coordinators;
use autopipe_proto as pb;
use integration_tests::{wait_until, Group};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Options of `bench raft`.
pub struct Args {
    pub secs: f64,
    pub clients: usize,
    pub failovers: usize,
}

pub fn run(a: Args) -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let work = tempfile::tempdir()?;
    let spec = write_spec(work.path())?;

    eprintln!("1 coordinator: proposals for {:.0} s ...", a.secs);
    let lone = Group::start(1, 0, 1, &[])?;
    let lone_rate = rt.block_on(proposals(&lone, a.secs, a.clients))?;
    drop(lone);

    eprintln!("3 coordinators: proposals for {:.0} s ...", a.secs);
    let mut g = Group::start(3, 0, 1, &[])?;
    let rate = rt.block_on(proposals(&g, a.secs, a.clients))?;

    let mut failovers = Vec::new();
    for i in 0..a.failovers {
        let leader = leader_of(&g)?;
        let t = Instant::now();
        g.kill(leader);
        rt.block_on(submit_until_accepted(&g, &spec, Duration::from_secs(30)))
            .with_context(|| format!("failover {}", i + 1))?;
        let d = t.elapsed();
        eprintln!(
            "failover {}: leader {leader} killed, new leader accepted a job after {d:.2?}",
            i + 1
        );
        failovers.push(d);
        // bring the member back so the next kill again leaves a majority
        g.start_coordinator(leader, &[])?;
        wait_until(
            Duration::from_secs(30),
            "the restarted member to follow",
            || {
                let c = g.cluster()?;
                Ok(c["members"]
                    .as_array()
                    .is_some_and(|m| m.iter().filter(|m| m["role"] == "follower").count() == 2))
            },
        )?;
    }
    failovers.sort();
    let med = failovers[failovers.len() / 2];
    println!();
    println!("| measure | value |");
    println!("| --- | --- |");
    println!(
        "| committed proposals/s, 1 coordinator ({} clients) | {lone_rate:.0} |",
        a.clients
    );
    println!(
        "| committed proposals/s, 3 coordinators ({} clients) | {rate:.0} |",
        a.clients
    );
    println!("| ratio 3 / 1 | {:.2} |", rate / lone_rate);
    println!(
        "| SIGKILL of the leader → a new leader accepts a submission (median of {}, min–max) | {:.2} s ({:.2}–{:.2}) |",
        failovers.len(),
        med.as_secs_f64(),
        failovers[0].as_secs_f64(),
        failovers[failovers.len() - 1].as_secs_f64()
    );
    println!("| goal | ≤ 3 s with defaults (election timeout 1 s) |");
    Ok(())
}

fn leader_of(g: &Group) -> Result<u64> {
    let mut l = None;
    wait_until(Duration::from_secs(30), "a leader", || {
        l = g.leader()?;
        Ok(l.is_some())
    })?;
    Ok(l.expect("waited for"))
}

/// Committed `RegisterWorker` proposals per second from `clients` concurrent callers.
async fn proposals(g: &Group, secs: f64, clients: usize) -> Result<f64> {
    let leader = g.peers[&leader_of(g)?].clone();
    let ch = autopipe_common::shuffle::channel_to(&leader)?;
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let ch = ch.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = pb::worker_service_client::WorkerServiceClient::new(ch);
            let mut n = 0u64;
            while Instant::now() < deadline {
                client
                    .register_worker(pb::RegisterWorkerRequest {
                        address: format!("127.0.0.1:{}", 1 + (c as u64 * 1000 + n) % 1000),
                        slots: 1,
                        ..Default::default()
                    })
                    .await?;
                n += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, tonic::Status>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64())
}

/// Submits `spec` to the group, following leader hints, until one is accepted.
async fn submit_until_accepted(g: &Group, spec: &str, timeout: Duration) -> Result<()> {
    let coords = Coordinators::new(&[g.addrs()]);
    let deadline = Instant::now() + timeout;
    loop {
        let addr = coords.current();
        let r = async {
            let ch = autopipe_common::shuffle::channel_to(&addr)
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            let mut c = pb::job_service_client::JobServiceClient::new(ch);
            let mut req = tonic::Request::new(pb::SubmitJobRequest {
                spec: Some(pb::submit_job_request::Spec::SpecJson(spec.to_string())),
                spec_origin: "bench".into(),
                ..Default::default()
            });
            req.set_timeout(Duration::from_millis(500));
            c.submit_job(req).await
        }
        .await;
        let s = match r {
            Ok(_) => return Ok(()),
            Err(s) => s,
        };
        coords.failed(&addr, Some(&s));
        if Instant::now() > deadline {
            bail!(
                "no coordinator accepted a job within {timeout:?}; last: {addr}: {}",
                s.message()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn write_spec(dir: &Path) -> Result<String> {
    let data = dir.join("t.csv");
    std::fs::write(&data, "a,b\n1,2\n")?;
    let spec = autopipe_common::spec::PipelineSpec::parse(
        &format!(
            "[job]\nname = \"failover\"\n[[sources]]\nname = \"t\"\nformat = \"csv\"\npath = \"{}\"\n[transform]\nsql = \"SELECT a, b FROM t\"\n[sink]\nformat = \"csv\"\npath = \"{}\"\nmode = \"append\"\n",
            data.display(),
            dir.join("out").display()
        ),
        "bench",
    )?
    .normalize(dir, "bench")?;
    Ok(serde_json::to_string(&spec)?)
}
