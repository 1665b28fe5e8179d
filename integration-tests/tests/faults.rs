//! Faults (issue 5). Worker loss: SIGKILL a worker while a map stage runs, SIGKILL a worker
//! that holds finished map outputs before the reducers read them, SIGKILL every worker
//! and start new ones. Each job must still end with exactly the oracle's rows. Workers
//! run every task after a test-only delay so the kills land where they are meant to;
//! the tests wait on the job's state, never on sleeps. A permanent run-time error (a
//! failing cast) fails the job at once, with its message and no retries.

use anyhow::Result;
use integration_tests::oracle::check_spec_output;
use integration_tests::{gen_clickstream, join_job, Cluster};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Heartbeat timeout for these tests: a killed worker is declared lost after it.
const LOST_AFTER: &[&str] = &["--heartbeat-timeout", "2"];

fn job(dir: &Path, name: &str) -> Result<PathBuf> {
    gen_clickstream(&dir.join("data"), 20_000, 6)?;
    join_job(dir, name)
}

fn check(dir: &Path, spec: &Path, v: &serde_json::Value) -> Result<()> {
    assert_eq!(v["state"], "succeeded", "{v}");
    check_spec_output(dir, spec)
}

fn submit(c: &Cluster, spec: &Path) -> Result<String> {
    c.submit(spec)
}

fn wait_done(c: &Cluster, id: &str) -> Result<serde_json::Value> {
    c.wait_done(id, Duration::from_secs(120))
}

#[test]
fn a_worker_killed_in_a_map_stage_is_replaced_and_the_job_completes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let spec = job(dir.path(), "kill_map")?;
    let mut c = Cluster::start_full(3, 2, &["--test-task-delay-ms", "800"], LOST_AFTER)?;
    let id = submit(&c, &spec)?;
    let mut victim = None;
    c.wait_for(Duration::from_secs(60), "a map task to run", |c| {
        victim = c.busy_worker()?;
        Ok(victim.is_some())
    })?;
    let v = c.cli_json(&["status", &id])?;
    assert_eq!(
        v["stages"][0]["tasks_done"], 0,
        "still in the first stage: {v}"
    );
    c.workers[victim.expect("waited for")].kill();
    let v = wait_done(&c, &id)?;
    check(dir.path(), &spec, &v)?;
    assert!(
        v["task_attempts"].as_u64() > v["tasks_total"].as_u64(),
        "{v}"
    );
    Ok(())
}

#[test]
fn a_killed_worker_nobody_calls_is_declared_lost_before_the_heartbeat_timeout() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let spec = job(dir.path(), "late_heartbeats")?;
    // the default 10 s heartbeat timeout; the victim's tasks sleep, so no launch or
    // fetch goes to it: only its late heartbeats give it away
    let mut c = Cluster::start_full(3, 2, &["--test-task-delay-ms", "1500"], &[])?;
    let id = submit(&c, &spec)?;
    let mut victim = None;
    c.wait_for(Duration::from_secs(60), "a map task to run", |c| {
        victim = c.busy_worker()?;
        Ok(victim.is_some())
    })?;
    let victim = victim.expect("waited for");
    let addr = c.workers[victim].addr.clone();
    c.workers[victim].kill();
    let killed = std::time::Instant::now();
    c.wait_for(
        Duration::from_secs(8),
        "the killed worker to be lost",
        |c| {
            let ws = c.cli_json(&["workers"])?;
            Ok(ws.as_array().is_some_and(|a| {
                a.iter()
                    .any(|w| w["address"] == addr.as_str() && w["state"] == "lost")
            }))
        },
    )?;
    assert!(
        killed.elapsed() < Duration::from_secs(10),
        "{:?}",
        killed.elapsed()
    );
    let v = wait_done(&c, &id)?;
    check(dir.path(), &spec, &v)?;
    Ok(())
}

#[test]
fn map_outputs_lost_with_their_worker_are_recomputed() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let spec = job(dir.path(), "kill_outputs")?;
    // reducers fetch over Flight only: a dead worker's files are gone with it, as when
    // its machine fails (a reducer on the same host would read them from disk)
    // the default heartbeat timeout (10 s): the loss is found through the reducers'
    // fetch failures, whose worker then refuses connections
    let mut c = Cluster::start_full(
        3,
        2,
        &["--test-task-delay-ms", "800", "--no-host-local-shuffle"],
        &[],
    )?;
    let id = submit(&c, &spec)?;
    // the first stage is done, its outputs spread over the workers, and the reducers
    // are still in their start delay: kill a worker that holds outputs
    c.wait_for(Duration::from_secs(60), "the scan stages to finish", |c| {
        let v = c.cli_json(&["status", &id])?;
        let stages = v["stages"].as_array().cloned().unwrap_or_default();
        let done = |st: &serde_json::Value| st["tasks_done"] == st["tasks_total"];
        let scans: Vec<_> = stages
            .iter()
            .filter(|st| st["input_stages"].as_array().is_some_and(|a| a.is_empty()))
            .collect();
        Ok(!scans.is_empty() && scans.iter().all(|st| done(st)))
    })?;
    let v = c.cli_json(&["status", &id])?;
    assert_eq!(v["state"], "running", "{v}");
    let victim = 0;
    let addr = c.workers[victim].addr.clone();
    c.workers[victim].kill();
    c.wait_for(
        Duration::from_secs(5),
        "the dead worker to be declared lost well before the 10 s heartbeat timeout",
        |c| {
            let ws = c.cli_json(&["workers"])?;
            Ok(ws.as_array().is_some_and(|a| {
                a.iter()
                    .any(|w| w["address"] == addr.as_str() && w["state"] == "lost")
            }))
        },
    )?;
    let v = wait_done(&c, &id)?;
    check(dir.path(), &spec, &v)?;
    // the victim's map tasks ran again
    assert!(
        v["task_attempts"].as_u64() > v["tasks_total"].as_u64(),
        "{v}"
    );
    Ok(())
}

/// Issue 11.1: a reducer stuck on a slow worker becomes a straggler just after a
/// worker holding map outputs is lost. A speculative copy launched then would read
/// the surviving outputs only, succeed, win, and silently miss rows; it must wait
/// until the lost outputs are recomputed.
#[test]
fn a_straggling_reducer_is_never_copied_onto_partial_input() -> Result<()> {
    let dir = tempfile::tempdir()?;
    gen_clickstream(&dir.path().join("data"), 20_000, 6)?;
    // a straggler after 10 s once half the reducers finished; the loss is known
    // within about 3 s of the kill, long before
    let spec = integration_tests::aggregation_job(
        dir.path(),
        "partial_input",
        // (coalesce = false: the reducers stay one per partition, as the test counts)
        "speculation_quantile = 0.5\nspeculation_multiplier = 1.0\nspeculation_min_runtime_ms = 10000\ncoalesce = false",
    )?;
    let flight_only = "--no-host-local-shuffle";
    // worker 0 holds map outputs; worker 1 holds its reducer for 10 minutes
    let mut c = Cluster::start_full(1, 2, &[flight_only], LOST_AFTER)?;
    c.add_worker_with(
        1,
        &[
            flight_only,
            "--test-task-delay-ms",
            "600000",
            "--test-task-delay-stage",
            "1",
        ],
    )?;
    c.wait_for(Duration::from_secs(60), "2 workers", |c| {
        Ok(c.alive_workers()? == 2)
    })?;
    let id = submit(&c, &spec)?;
    c.wait_for(Duration::from_secs(60), "half the reducers done", |c| {
        let v = c.cli_json(&["status", &id])?;
        let reduce = &v["stages"][1];
        Ok(reduce["tasks_done"].as_u64().unwrap_or(0) >= 5)
    })?;
    c.workers[0].kill();
    // the lost map outputs are recomputed on a new worker, slowly (15 s): the
    // reducer crosses its straggler threshold while they are missing (the worker has
    // more slots than there are map tasks: a copy would find one)
    c.add_worker_with(
        8,
        &[
            flight_only,
            "--test-task-delay-ms",
            "15000",
            "--test-task-delay-stage",
            "0",
        ],
    )?;
    let v = wait_done(&c, &id)?;
    check(dir.path(), &spec, &v)?;
    let ds = c.cli_json(&["decisions", &id])?;
    eprintln!("DECISIONS {ds:#}");
    let copies: Vec<_> = ds
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["kind"] == "speculation")
        .collect();
    assert!(!copies.is_empty(), "the stuck reducer was copied: {ds}");
    Ok(())
}

#[test]
fn every_worker_killed_and_two_new_ones_finish_the_job() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let spec = job(dir.path(), "kill_all")?;
    let mut c = Cluster::start_full(3, 2, &["--test-task-delay-ms", "800"], LOST_AFTER)?;
    let id = submit(&c, &spec)?;
    c.wait_for(Duration::from_secs(60), "a task to run", |c| {
        Ok(c.busy_worker()?.is_some())
    })?;
    for w in &mut c.workers {
        w.kill();
    }
    c.add_worker_with(2, &["--test-task-delay-ms", "100"])?;
    c.add_worker_with(2, &["--test-task-delay-ms", "100"])?;
    let v = wait_done(&c, &id)?;
    check(dir.path(), &spec, &v)?;
    Ok(())
}

/// A job whose cast fails at run time (strict mode): a permanent error.
fn bad_cast_job(dir: &Path, name: &str) -> Result<PathBuf> {
    gen_clickstream(&dir.join("data"), 5_000, 3)?;
    let spec = dir.join(format!("{name}.toml"));
    std::fs::write(
        &spec,
        format!(
            r#"
[job]
name = "{name}"
[[sources]]
name = "events"
format = "parquet"
path = "data/events"
[transform]
sql = "SELECT CAST(kind AS INT) AS k FROM events"
[sink]
format = "parquet"
path = "out/{name}"
"#
        ),
    )?;
    Ok(spec)
}

#[test]
fn a_permanent_error_fails_the_job_at_once_without_retries() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let spec = bad_cast_job(dir.path(), "bad_cast")?;
    let c = Cluster::start(2, 2)?;
    let id = submit(&c, &spec)?;
    let v = wait_done(&c, &id)?;
    assert_eq!(v["state"], "failed", "{v}");
    assert_eq!(v["error"]["class"], "permanent", "{v}");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("Cannot cast") || msg.contains("cast"), "{msg}");
    assert!(!msg.contains("failed 4 times"), "no retries: {msg}");
    // every task ran at most once: nothing was retried
    assert!(
        v["task_attempts"].as_u64() <= v["tasks_total"].as_u64(),
        "{v}"
    );
    assert!(integration_tests::files_under(&dir.path().join("out/bad_cast")).is_empty());
    Ok(())
}

/// A webhook receiver on loopback: the bodies of the POSTs it got.
fn webhook() -> Result<(String, std::sync::mpsc::Receiver<String>)> {
    use std::io::{BufRead, BufReader, Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/hook", l.local_addr()?);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut r = BufReader::new(s);
            let mut len = 0;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            let _ = r.read_exact(&mut body);
            let _ = r
                .get_mut()
                .write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n");
            let _ = tx.send(String::from_utf8_lossy(&body).into_owned());
        }
    });
    Ok((url, rx))
}

#[test]
fn a_failed_job_and_a_lost_worker_raise_alerts() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let spec = bad_cast_job(dir.path(), "alert")?;
    let (url, got) = webhook()?;
    let mut c = Cluster::start_full(
        2,
        2,
        &[],
        &["--alert-webhook", &url, "--heartbeat-timeout", "2"],
    )?;
    let id = submit(&c, &spec)?;
    let alert: serde_json::Value =
        serde_json::from_str(&got.recv_timeout(Duration::from_secs(60))?)?;
    assert_eq!(alert["kind"], "job_failed", "{alert}");
    assert_eq!(alert["subject"], id.as_str(), "{alert}");
    assert!(
        alert["message"]
            .as_str()
            .unwrap_or_default()
            .contains("permanent"),
        "{alert}"
    );
    c.workers[0].kill();
    let alert: serde_json::Value =
        serde_json::from_str(&got.recv_timeout(Duration::from_secs(60))?)?;
    assert_eq!(alert["kind"], "worker_lost", "{alert}");
    let m = integration_tests::http_get(&c.coordinator.http, "/metrics")?;
    assert!(
        m.contains("autopipe_alerts_total{kind=\"job_failed\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("autopipe_alerts_total{kind=\"worker_lost\"} 1"),
        "{m}"
    );
    Ok(())
}

#[test]
fn workers_behind_a_flaky_link_to_the_coordinator_finish_the_job() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let spec = job(dir.path(), "flaky")?;
    let mut c = Cluster::start(0, 2)?;
    // every worker -> coordinator call goes through a proxy that refuses every third
    // connection and cuts every connection after 300 ms
    let net = integration_tests::proxy::FaultNet::start(&[c.coordinator.addr.parse()?])?;
    net.flaky(3, Duration::from_millis(300));
    let via = format!("http://{}", net.proxies[0]);
    for i in 0..3 {
        let wd = c.dir.path().join(format!("flaky-worker-{i}"));
        c.workers
            .push(integration_tests::spawn_worker(&via, &wd, 2, &[])?);
    }
    c.wait_for(Duration::from_secs(60), "workers to register", |c| {
        Ok(c.alive_workers()? == 3)
    })?;
    let id = submit(&c, &spec)?;
    let v = wait_done(&c, &id)?;
    check(dir.path(), &spec, &v)?;
    assert!(net.refused() > 0, "the link never failed");
    Ok(())
}

#[test]
fn workers_behind_flaky_links_to_each_other_finish_the_job() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let spec = job(dir.path(), "flaky_shuffle")?;
    let mut c = Cluster::start(0, 2)?;
    // each worker listens on its own port and advertises a proxy in front of it, so
    // every launch and every shuffle fetch (host-local reads off) crosses a proxy
    // that holds each new connection 50 ms and refuses every third
    let ports = integration_tests::free_ports(3)?;
    let targets: Vec<std::net::SocketAddr> = ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}").parse())
        .collect::<std::result::Result<_, _>>()?;
    let net = integration_tests::proxy::FaultNet::start(&targets)?;
    net.flaky(3, Duration::ZERO);
    net.delay(Duration::from_millis(50));
    for (i, port) in ports.iter().enumerate() {
        let wd = c.dir.path().join(format!("proxied-worker-{i}"));
        let listen = format!("127.0.0.1:{port}");
        let advertise = net.proxies[i].to_string();
        c.workers.push(integration_tests::spawn_worker(
            &c.url(),
            &wd,
            2,
            &[
                "--listen",
                &listen,
                "--advertise",
                &advertise,
                "--no-host-local-shuffle",
            ],
        )?);
    }
    c.wait_for(Duration::from_secs(60), "workers to register", |c| {
        Ok(c.alive_workers()? == 3)
    })?;
    let ws = c.cli_json(&["workers"])?;
    for w in ws.as_array().expect("workers") {
        let a = w["address"].as_str().unwrap_or("");
        assert!(net.proxies.iter().any(|p| p.to_string() == a), "{w}");
    }
    let id = submit(&c, &spec)?;
    let v = wait_done(&c, &id)?;
    check(dir.path(), &spec, &v)?;
    assert!(net.refused() > 0, "the links never failed");
    Ok(())
}

#[test]
fn a_spent_retry_budget_delays_retries_and_raises_an_alert() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let spec = job(dir.path(), "budget")?;
    // every first attempt fails (transient) and the coordinator's budget allows no
    // retry: each retry waits the budget's 2 s instead of a short backoff
    let c = Cluster::start_full(
        2,
        2,
        &["--test-fail-first-attempt"],
        &[
            "--retry-budget-percent",
            "0",
            "--retry-budget-min-per-sec",
            "0",
        ],
    )?;
    let t0 = std::time::Instant::now();
    let id = submit(&c, &spec)?;
    let v = wait_done(&c, &id)?;
    check(dir.path(), &spec, &v)?;
    let tasks = v["tasks_total"].as_u64().expect("tasks");
    assert_eq!(v["task_attempts"].as_u64(), Some(2 * tasks), "{v}");
    assert!(t0.elapsed() >= Duration::from_secs(2), "{:?}", t0.elapsed());
    let refused = integration_tests::metric_sum(
        &c.coordinator.http,
        "autopipe_retry_budget_exhausted_total",
    )?;
    assert!(
        refused >= tasks as f64,
        "{refused} refused retries for {tasks} tasks"
    );
    let m = integration_tests::http_get(&c.coordinator.http, "/metrics")?;
    assert!(
        m.contains("autopipe_alerts_total{kind=\"retry_budget_exhausted\"} 1"),
        "one alert (rate-limited): {m}"
    );
    Ok(())
}

/// The same transient cause on both workers (every first attempt fails alike): the
/// leader works out the retry-limit rule's outcome before proposing a failure and the
/// command carries it. The third failure lowers the job's attempt limit from 4 to 2,
/// recorded as a `retry_limit` decision; every second attempt succeeds.
#[test]
fn a_cause_repeating_on_two_workers_lowers_the_attempt_limit() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let spec = job(dir.path(), "lowered")?;
    let c = Cluster::start_with(2, 2, &["--test-fail-first-attempt"])?;
    let id = submit(&c, &spec)?;
    let v = wait_done(&c, &id)?;
    check(dir.path(), &spec, &v)?;
    let tasks = v["tasks_total"].as_u64().expect("tasks");
    assert_eq!(v["task_attempts"].as_u64(), Some(2 * tasks), "{v}");
    let decisions = c.cli_json(&["decisions", &id])?;
    let lowered: Vec<_> = decisions
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["kind"] == "retry_limit")
        .collect();
    let [d] = lowered.as_slice() else {
        panic!("one retry_limit decision: {decisions}");
    };
    assert!(
        d["what"].as_str().unwrap_or("").contains("from 4 to 2"),
        "{d}"
    );
    assert_eq!(d["inputs"]["workers"], "2", "{d}");
    assert_eq!(
        d["inputs"]["cause"], "transient: test: first attempts fail",
        "{d}"
    );
    Ok(())
}

/// A rolling restart pages no one: SIGTERM drains a worker mid-job. It takes no new
/// task, finishes its running ones, keeps serving its map outputs until the job no
/// longer needs them, is released (not declared lost: no alert, nothing redone) and
/// exits by itself. The job's output is the oracle's.
#[test]
fn a_sigterm_drains_a_worker_and_no_one_is_paged() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let spec = job(dir.path(), "drained")?;
    let mut c = Cluster::start_full(2, 2, &["--test-task-delay-ms", "300"], LOST_AFTER)?;
    let id = c.submit(&spec)?;
    let mut busy = None;
    c.wait_for(Duration::from_secs(60), "a running task", |c| {
        busy = c.busy_worker()?;
        Ok(busy.is_some())
    })?;
    let i = busy.expect("found");
    c.workers[i].signal("TERM")?;
    // it leaves by itself once released
    let status = c.workers[i].wait_exit(Duration::from_secs(90))?;
    assert!(status.success(), "a drained worker exits cleanly: {status}");
    let v = c.wait_done(&id, Duration::from_secs(120))?;
    assert_eq!(v["state"], "succeeded", "{v}");
    check_spec_output(dir.path(), &spec)?;
    let states = c.worker_states()?;
    assert!(states.contains(&"released".to_string()), "{states:?}");
    assert!(!states.contains(&"lost".to_string()), "{states:?}");
    let m = integration_tests::http_get(&c.coordinator.http, "/metrics")?;
    assert!(
        !m.contains("autopipe_alerts_total{kind=\"worker_lost\"}"),
        "no worker_lost alert: {m}"
    );
    Ok(())
}

/// What a draining worker tells probes and operators: the server's health ("", a
/// readiness probe's) turns NOT_SERVING at once, so no new work is routed to it,
/// while the liveness service stays SERVING as it finishes; `workers` lists it as
/// `draining` until it is released.
#[test]
fn a_draining_worker_is_not_ready_but_live_and_listed_as_draining() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let spec = job(dir.path(), "drain_probes")?;
    let mut c = Cluster::start_full(2, 1, &["--test-task-delay-ms", "3000"], LOST_AFTER)?;
    let id = c.submit(&spec)?;
    let probe = |addr: &str| -> Result<(String, String)> {
        Ok((
            integration_tests::grpc_health(addr, "")?,
            integration_tests::grpc_health(addr, "autopipe.internal.v1.WorkerControl")?,
        ))
    };
    let mut busy = None;
    c.wait_for(Duration::from_secs(60), "a running task", |c| {
        busy = c.busy_worker()?;
        Ok(busy.is_some())
    })?;
    let i = busy.expect("found");
    let (ready, _) = probe(&c.workers[i].addr)?;
    assert_eq!(ready, "SERVING");
    c.workers[i].signal("TERM")?;
    // it finishes its 3 s task and serves its map outputs until the job is done
    let (ready, live) = probe(&c.workers[i].addr)?;
    assert_eq!((ready.as_str(), live.as_str()), ("NOT_SERVING", "SERVING"));
    c.wait_for(
        Duration::from_secs(30),
        "the worker listed as draining",
        |c| Ok(c.worker_states()?.contains(&"draining".to_string())),
    )?;
    c.workers[i].wait_exit(Duration::from_secs(120))?;
    let v = c.wait_done(&id, Duration::from_secs(120))?;
    assert_eq!(v["state"], "succeeded", "{v}");
    check_spec_output(dir.path(), &spec)?;
    assert!(c.worker_states()?.contains(&"released".to_string()));
    Ok(())
}

#[test]
fn admin_drain_releases_a_worker_remotely() -> Result<()> {
    let mut c = Cluster::start_full(2, 2, &[], LOST_AFTER)?;
    let ws = c.cli_json(&["workers"])?;
    let addr = c.workers[0].addr.clone();
    let id = ws
        .as_array()
        .into_iter()
        .flatten()
        .find(|w| w["address"].as_str() == Some(addr.as_str()))
        .and_then(|w| w["worker_id"].as_str())
        .expect("worker 0 is listed")
        .to_string();
    let out = integration_tests::cli(&["admin", "drain", &id, "--coordinator", &c.url()])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.workers[0].wait_exit(Duration::from_secs(60))?;
    let ws = c.cli_json(&["workers"])?;
    let w = ws
        .as_array()
        .into_iter()
        .flatten()
        .find(|w| w["worker_id"] == id.as_str())
        .cloned()
        .unwrap_or_default();
    assert_eq!(w["state"], "released", "{ws}");
    // an unknown worker is named
    let out = integration_tests::cli(&["admin", "drain", "w-nope", "--coordinator", &c.url()])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("w-nope"));
    Ok(())
}
