//! Test harness: starts real `autopipe` coordinator and worker processes on
//! 127.0.0.1 ephemeral ports with temp dirs, runs CLI commands, and compares job
//! output with single-process DataFusion (order-insensitive, float tolerance).
//! Processes are SIGKILLed on drop; nothing waits on fixed sleeps.

pub mod kafka;
pub mod oracle;
pub mod proxy;
pub mod tpch;

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `autopipe` binary (or `$AUTOPIPE_BIN`): beside the running program (a binary in
/// `target/<profile>/`), or one directory up (a test in `target/<profile>/deps/`).
pub fn autopipe_bin() -> PathBuf {
    if let Ok(p) = std::env::var("AUTOPIPE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().expect("the program's directory");
    let candidates = [dir.join("autopipe"), dir.join("../autopipe")];
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "{} is missing: build it with `cargo build --workspace` (or `cargo test --workspace`)",
                candidates[1].display()
            )
        })
}

/// Sum of every sample of Prometheus metric `name` (all label sets) at `addr`'s /metrics.
pub fn metric_sum(addr: &str, name: &str) -> Result<f64> {
    let text = http_get(addr, "/metrics")?;
    Ok(text
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum())
}

/// A child process killed on drop.
pub struct Proc {
    /// the child
    pub child: Child,
    /// gRPC address it printed
    pub addr: String,
    /// HTTP address it printed
    pub http: String,
}

impl Proc {
    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends signal `name` (`TERM`, `INT`, `STOP`, `CONT`, ...) to the process.
    pub fn signal(&self, name: &str) -> Result<()> {
        let sent = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()?;
        if !sent.success() {
            bail!("kill -{name} {} failed", self.child.id());
        }
        Ok(())
    }

    /// Waits until the process exits by itself (at most `timeout`); its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            if std::time::Instant::now() > deadline {
                bail!("process {} still runs after {timeout:?}", self.child.id());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Proc {
    /// SIGTERM (a graceful stop: a coordinator stops the workers its autoscaler
    /// started), then SIGKILL if it has not exited within `grace`.
    pub fn terminate(&mut self, grace: Duration) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `autopipe ARGS` and waits for its "listening on ADDR (http ADDR)" line.
pub fn spawn_server(args: &[&str]) -> Result<Proc> {
    spawn_server_env(args, &[])
}

/// `spawn_server` with extra environment variables (e.g. `AUTOPIPE_FAILPOINTS`).
pub fn spawn_server_env(args: &[&str], env: &[(&str, &str)]) -> Result<Proc> {
    let mut child = Command::new(autopipe_bin())
        .args(args)
        .env("AUTOPIPE_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("spawn autopipe")?;
    let Some(line) = first_line(&mut child, Duration::from_secs(60)) else {
        let _ = child.kill();
        bail!("autopipe {args:?} did not report its address within 60 s");
    };
    // "<role> listening on 127.0.0.1:P (http 127.0.0.1:Q)"
    let addr = line
        .split("listening on ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .map(str::to_string);
    let http = line
        .split("(http ")
        .nth(1)
        .map(|r| r.trim().trim_end_matches(')').to_string());
    match (addr, http) {
        (Some(addr), Some(http)) => Ok(Proc { child, addr, http }),
        _ => {
            let _ = child.kill();
            bail!("unexpected first line from autopipe {args:?}: {line:?}")
        }
    }
}

/// Starts `autopipe worker` on loopback ephemeral ports (or `extra`'s `--listen`),
/// registering with `coordinators` (comma-separated), with `work_dir` and extra flags.
pub fn spawn_worker(
    coordinators: &str,
    work_dir: &Path,
    slots: u32,
    extra: &[&str],
) -> Result<Proc> {
    spawn_worker_env(coordinators, work_dir, slots, extra, &[])
}

/// `spawn_worker` with extra environment variables.
pub fn spawn_worker_env(
    coordinators: &str,
    work_dir: &Path,
    slots: u32,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Result<Proc> {
    let slots = slots.to_string();
    // an ephemeral port unless `extra` names one
    let listen = if extra.contains(&"--listen") {
        vec![]
    } else {
        vec!["--listen", "127.0.0.1:0"]
    };
    let mut args = vec!["worker", "--coordinator", coordinators];
    args.extend(listen);
    args.extend([
        "--http",
        "127.0.0.1:0",
        "--slots",
        &slots,
        "--work-dir",
        work_dir.to_str().expect("utf8"),
    ]);
    args.extend_from_slice(extra);
    spawn_server_env(&args, env)
}

/// A coordinator and workers as separate processes.
pub struct Cluster {
    /// state, work dirs
    pub dir: tempfile::TempDir,
    /// the coordinator
    pub coordinator: Proc,
    /// the workers
    pub workers: Vec<Proc>,
    /// environment of every CLI command the harness runs (e.g. AUTOPIPE_AUTH_TOKEN)
    pub cli_env: Vec<(String, String)>,
}

impl Cluster {
    /// Starts 1 coordinator and `workers` workers and waits until all registered.
    pub fn start(workers: usize, slots: u32) -> Result<Self> {
        Self::start_with(workers, slots, &[])
    }

    /// Like `start`, with extra flags for every worker.
    pub fn start_with(workers: usize, slots: u32, worker_args: &[&str]) -> Result<Self> {
        Self::start_full(workers, slots, worker_args, &[])
    }

    /// Like `start`, with extra flags for every worker and for the coordinator.
    pub fn start_full(
        workers: usize,
        slots: u32,
        worker_args: &[&str],
        coordinator_args: &[&str],
    ) -> Result<Self> {
        Self::start_env(workers, slots, worker_args, coordinator_args, &[])
    }

    /// Like `start_full`, with environment variables for every CLI command the harness
    /// runs (e.g. `AUTOPIPE_AUTH_TOKEN` for a cluster started with `--auth-token-file`).
    pub fn start_env(
        workers: usize,
        slots: u32,
        worker_args: &[&str],
        coordinator_args: &[&str],
        cli_env: &[(&str, &str)],
    ) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("coord");
        let mut args = vec![
            "coordinator",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().expect("utf8"),
        ];
        args.extend_from_slice(coordinator_args);
        let coordinator = spawn_server(&args)?;
        let mut c = Cluster {
            dir,
            coordinator,
            workers: vec![],
            cli_env: cli_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        for _ in 0..workers {
            c.add_worker_with(slots, worker_args)?;
        }
        let n = workers;
        c.wait_for(Duration::from_secs(60), "workers to register", |c| {
            Ok(c.alive_workers()? >= n)
        })?;
        Ok(c)
    }

    /// The coordinator's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.coordinator.addr)
    }

    /// Starts one more worker.
    pub fn add_worker(&mut self, slots: u32) -> Result<()> {
        self.add_worker_with(slots, &[])
    }

    /// Starts one more worker with extra flags.
    pub fn add_worker_with(&mut self, slots: u32, extra: &[&str]) -> Result<()> {
        self.add_worker_env(slots, extra, &[])
    }

    /// Starts one more worker with extra flags and environment variables.
    pub fn add_worker_env(
        &mut self,
        slots: u32,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<()> {
        let w = spawn_worker_env(
            &self.url(),
            &self.worker_dir(self.workers.len()),
            slots,
            extra,
            env,
        )?;
        self.workers.push(w);
        Ok(())
    }

    /// The work dir of worker `i` (in `workers`).
    pub fn worker_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("worker-{i}"))
    }

    /// SIGKILLs worker `i` and starts it again on its work dir (where it keeps its id),
    /// with extra flags.
    pub fn restart_worker(&mut self, i: usize, slots: u32, extra: &[&str]) -> Result<()> {
        self.workers[i].kill();
        self.workers[i] = spawn_worker(&self.url(), &self.worker_dir(i), slots, extra)?;
        Ok(())
    }

    /// Number of workers the coordinator reports alive.
    pub fn alive_workers(&self) -> Result<usize> {
        let v = self.cli_json(&["workers"])?;
        Ok(v.as_array()
            .map(|a| a.iter().filter(|w| w["state"] == "alive").count())
            .unwrap_or(0))
    }

    /// Runs `autopipe ARGS --coordinator URL -o json` and parses stdout.
    pub fn cli_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let url = self.url();
        let mut a: Vec<&str> = args.to_vec();
        a.extend(["--coordinator", &url, "-o", "json"]);
        let env: Vec<(&str, &str)> = self
            .cli_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let out = cli_env(&a, &env)?;
        if !out.status.success() {
            bail!(
                "autopipe {a:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("stdout of {a:?}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// Submits the spec file; returns the job id.
    pub fn submit(&self, spec: &Path) -> Result<String> {
        let v = self.cli_json(&["submit", spec.to_str().context("utf8 path")?])?;
        Ok(v["job_id"].as_str().context("job id")?.to_string())
    }

    /// Waits until job `id` is no longer running or committing; returns its status.
    pub fn wait_done(&self, id: &str, timeout: Duration) -> Result<serde_json::Value> {
        self.wait_for(timeout, "the job to finish", |c| {
            let v = c.cli_json(&["status", id])?;
            Ok(v["state"] != "queued" && v["state"] != "running" && v["state"] != "committing")
        })?;
        self.cli_json(&["status", id])
    }

    /// Submits the spec file and waits for the job; returns its final status and the
    /// wall time from submission.
    pub fn run(&self, spec: &Path) -> Result<(serde_json::Value, Duration)> {
        let t0 = std::time::Instant::now();
        let id = self.submit(spec)?;
        let v = self.wait_done(&id, Duration::from_secs(600))?;
        Ok((v, t0.elapsed()))
    }

    /// Each registered worker's state (alive, lost, released), as `workers` lists them.
    pub fn worker_states(&self) -> Result<Vec<String>> {
        let ws = self.cli_json(&["workers"])?;
        Ok(ws
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|w| w["state"].as_str().map(str::to_string))
            .collect())
    }

    /// Index (in `workers`) of a worker that runs a task now.
    pub fn busy_worker(&self) -> Result<Option<usize>> {
        let ws = self.cli_json(&["workers"])?;
        let addr = ws
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|w| w["state"] == "alive" && w["running_tasks"].as_u64().unwrap_or(0) > 0)
            })
            .and_then(|w| w["address"].as_str().map(str::to_string));
        Ok(addr.and_then(|a| self.workers.iter().position(|w| w.addr == a)))
    }

    /// Polls `cond` until true or the deadline passes.
    pub fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        mut cond: impl FnMut(&Self) -> Result<bool>,
    ) -> Result<()> {
        wait_until(timeout, what, || cond(self))
    }
}

/// Polls `cond` until true or the deadline passes.
pub fn wait_until(
    timeout: Duration,
    what: &str,
    mut cond: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if cond().unwrap_or(false) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Free loopback ports (bound, then released for the processes to take).
///
/// They lie below the kernel's ephemeral range, so a member restarted on its port
/// cannot find it taken by some process's outgoing connection in the meantime.
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    use std::hash::{BuildHasher, Hasher};
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (from, span) = (10_000u16, low.saturating_sub(10_000).max(1));
    let mut held = Vec::new();
    let mut tries = 0;
    while held.len() < n {
        tries += 1;
        if tries > 10_000 {
            bail!("no {n} free loopback ports below {low}");
        }
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(tries);
        let port = from + (h.finish() % u64::from(span)) as u16;
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            held.push(l);
        }
    }
    held.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// A raft group of coordinator processes (fixed loopback ports, each with its own
/// data dir) and workers that know every coordinator address.
pub struct Group {
    /// data dirs, work dirs
    pub dir: tempfile::TempDir,
    /// member id → gRPC address (founders and added members)
    pub peers: std::collections::BTreeMap<u64, String>,
    /// running coordinators by id
    pub coordinators: std::collections::BTreeMap<u64, Proc>,
    /// where each member listens, when not at its `peers` address (behind a proxy)
    pub listen: std::collections::BTreeMap<u64, String>,
    /// the workers
    pub workers: Vec<Proc>,
    /// environment of every CLI command the harness runs (e.g. AUTOPIPE_AUTH_TOKEN)
    pub cli_env: Vec<(String, String)>,
    founders: String,
}

impl Group {
    /// Starts `n` coordinators founding one group, waits for a leader, then starts
    /// `workers` workers and waits until they registered.
    pub fn start(n: usize, workers: usize, slots: u32, worker_args: &[&str]) -> Result<Self> {
        Self::start_with(n, workers, slots, worker_args, &[])
    }

    /// Like `start`, with extra flags for every coordinator.
    pub fn start_with(
        n: usize,
        workers: usize,
        slots: u32,
        worker_args: &[&str],
        coordinator_args: &[&str],
    ) -> Result<Self> {
        Self::start_env(n, workers, slots, worker_args, coordinator_args, &[])
    }

    /// Like `start_with`, with environment variables for every CLI command the harness
    /// runs (e.g. `AUTOPIPE_AUTH_TOKEN` for a group started with `--auth-token-file`).
    pub fn start_env(
        n: usize,
        workers: usize,
        slots: u32,
        worker_args: &[&str],
        coordinator_args: &[&str],
        cli_env: &[(&str, &str)],
    ) -> Result<Self> {
        let ports = free_ports(n)?;
        let peers: std::collections::BTreeMap<u64, String> = ports
            .iter()
            .enumerate()
            .map(|(i, p)| (i as u64 + 1, format!("127.0.0.1:{p}")))
            .collect();
        let founders = peers
            .iter()
            .map(|(id, a)| format!("{id}={a}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut g = Group {
            dir: tempfile::tempdir()?,
            peers,
            coordinators: Default::default(),
            listen: Default::default(),
            workers: vec![],
            cli_env: cli_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            founders,
        };
        for id in 1..=n as u64 {
            g.start_coordinator(id, coordinator_args)?;
        }
        wait_until(Duration::from_secs(30), "a leader", || {
            Ok(g.leader()?.is_some())
        })?;
        for _ in 0..workers {
            g.add_worker(slots, worker_args)?;
        }
        wait_until(Duration::from_secs(60), "workers to register", || {
            let v = g.cli_json(&["workers"])?;
            Ok(v.as_array()
                .map(|a| a.iter().filter(|w| w["state"] == "alive").count())
                .unwrap_or(0)
                >= workers)
        })?;
        Ok(g)
    }

    /// `n` coordinators behind a fault-injecting proxy each (see `proxy`): member `i`
    /// listens on 127.0.0.(10+i) and the others reach it through its proxy.
    pub fn start_behind_proxies(n: usize) -> Result<(Self, proxy::FaultNet)> {
        let mut listen = std::collections::BTreeMap::new();
        for i in 1..=n as u64 {
            let l = std::net::TcpListener::bind((Self::member_ip(i), 0))?;
            listen.insert(i, l.local_addr()?);
        }
        let net = proxy::FaultNet::start(&listen.values().copied().collect::<Vec<_>>())?;
        let peers: std::collections::BTreeMap<u64, String> = net
            .proxies
            .iter()
            .enumerate()
            .map(|(i, p)| (i as u64 + 1, p.to_string()))
            .collect();
        let founders = peers
            .iter()
            .map(|(id, a)| format!("{id}={a}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut g = Group {
            dir: tempfile::tempdir()?,
            peers,
            coordinators: Default::default(),
            listen: listen.iter().map(|(i, a)| (*i, a.to_string())).collect(),
            workers: vec![],
            cli_env: vec![],
            founders,
        };
        for id in 1..=n as u64 {
            g.start_coordinator(id, &[])?;
        }
        wait_until(Duration::from_secs(30), "a leader", || {
            Ok(g.leader()?.is_some())
        })?;
        Ok((g, net))
    }

    /// The loopback IP member `id` listens on (and connects from) behind a proxy.
    pub fn member_ip(id: u64) -> std::net::IpAddr {
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 10 + id as u8))
    }

    /// Starts (or restarts, on its data dir) founding member `id`.
    pub fn start_coordinator(&mut self, id: u64, extra: &[&str]) -> Result<()> {
        self.start_coordinator_env(id, extra, &[])
    }

    /// `start_coordinator` with environment variables (e.g. `AUTOPIPE_FAILPOINTS`).
    pub fn start_coordinator_env(
        &mut self,
        id: u64,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<()> {
        let addr = self
            .listen
            .get(&id)
            .cloned()
            .unwrap_or_else(|| self.peers[&id].clone());
        let data = self.dir.path().join(format!("coord-{id}"));
        let id_s = id.to_string();
        let mut args = vec![
            "coordinator",
            "--id",
            &id_s,
            "--peers",
            &self.founders,
            "--listen",
            &addr,
            "--http",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().expect("utf8"),
        ];
        // a founder's first start founds the group (later starts keep their state)
        if !data.exists() && !extra.contains(&"--initial-cluster-state") {
            args.extend(["--initial-cluster-state", "new"]);
        }
        args.extend_from_slice(extra);
        let p = spawn_server_env(&args, env)?;
        self.coordinators.insert(id, p);
        Ok(())
    }

    /// Starts a coordinator that joins the group as member `id` (after
    /// `admin add-coordinator`) on a fresh port; returns its address.
    pub fn join_coordinator(&mut self, id: u64) -> Result<String> {
        let port = free_ports(1)?[0];
        let addr = format!("127.0.0.1:{port}");
        self.peers.insert(id, addr.clone());
        self.start_coordinator(id, &["--join"])?;
        Ok(addr)
    }

    /// SIGKILLs coordinator `id`.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut p) = self.coordinators.remove(&id) {
            p.kill();
        }
    }

    /// All coordinator addresses, comma-separated (what workers and the CLI get).
    pub fn addrs(&self) -> String {
        self.peers.values().cloned().collect::<Vec<_>>().join(",")
    }

    /// Starts a worker that knows every coordinator.
    pub fn add_worker(&mut self, slots: u32, extra: &[&str]) -> Result<()> {
        let wd = self
            .dir
            .path()
            .join(format!("worker-{}", self.workers.len()));
        self.workers
            .push(spawn_worker(&self.addrs(), &wd, slots, extra)?);
        Ok(())
    }

    /// Runs `autopipe ARGS --coordinator ALL -o json` and parses stdout.
    pub fn cli_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let addrs = self.addrs();
        let mut a: Vec<&str> = args.to_vec();
        a.extend(["--coordinator", &addrs, "-o", "json"]);
        let out = cli_env(&a, &self.env())?;
        if !out.status.success() {
            bail!(
                "autopipe {a:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("stdout of {a:?}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// `autopipe cluster` as JSON, asked of the running coordinators.
    pub fn cluster(&self) -> Result<serde_json::Value> {
        let running = self
            .coordinators
            .keys()
            .map(|id| self.peers[id].clone())
            .collect::<Vec<_>>()
            .join(",");
        self.cluster_from(&running)
    }

    /// `autopipe cluster` as JSON, as member `id` sees the group.
    pub fn cluster_at(&self, id: u64) -> Result<serde_json::Value> {
        self.cluster_from(&self.peers[&id])
    }

    fn cluster_from(&self, addrs: &str) -> Result<serde_json::Value> {
        let out = cli_env(
            &["cluster", "--coordinator", addrs, "-o", "json"],
            &self.env(),
        )?;
        if !out.status.success() {
            bail!("autopipe cluster: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    fn env(&self) -> Vec<(&str, &str)> {
        self.cli_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// The leader that a majority of running members agree on, if any.
    pub fn leader(&self) -> Result<Option<u64>> {
        let c = self.cluster()?;
        let id = c["leader_id"].as_u64().unwrap_or(0);
        let members = c["members"].as_array().cloned().unwrap_or_default();
        let leads = members
            .iter()
            .any(|m| m["id"].as_u64() == Some(id) && m["role"] == "leader");
        Ok((id != 0 && leads).then_some(id))
    }
}

/// `autopipe gen clickstream` into `out` with `rows` events in `files` files.
pub fn gen_clickstream(out: &Path, rows: u64, files: usize) -> Result<()> {
    gen_clickstream_skewed(out, rows, files, 0.0)
}

/// `gen_clickstream` with a share `skew` of the events on one user (`--skew`).
pub fn gen_clickstream_skewed(out: &Path, rows: u64, files: usize, skew: f64) -> Result<()> {
    let (rows, files, skew) = (rows.to_string(), files.to_string(), skew.to_string());
    let mut args = vec!["gen", "clickstream", "--rows", &rows, "--files", &files];
    if skew != "0" {
        args.extend(["--skew", &skew]);
    }
    args.extend(["--out", out.to_str().context("utf8 path")?]);
    let g = cli(&args)?;
    if !g.status.success() {
        bail!("gen failed: {}", String::from_utf8_lossy(&g.stderr));
    }
    Ok(())
}

/// The first line a child prints on stdout, within `timeout`; the rest is drained.
fn first_line(child: &mut Child, timeout: Duration) -> Option<String> {
    let stdout = child.stdout.take()?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut line = String::new();
        let _ = r.read_line(&mut line);
        let _ = tx.send(line);
        // keep draining so the child never blocks on a full pipe
        let mut sink = Vec::new();
        let _ = r.read_to_end(&mut sink);
    });
    rx.recv_timeout(timeout).ok()
}

/// Runs `autopipe ARGS` to completion.
pub fn cli(args: &[&str]) -> Result<Output> {
    cli_env(args, &[])
}

/// Runs `autopipe ARGS` to completion with extra environment variables.
pub fn cli_env(args: &[&str], env: &[(&str, &str)]) -> Result<Output> {
    Ok(Command::new(autopipe_bin())
        .args(args)
        .env("AUTOPIPE_LOG", "warn")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()?)
}

/// The `grpc.health.v1` status (`SERVING`, `NOT_SERVING`, ...) of `service` ("" for
/// the server) at gRPC address `addr`, as Python's grpcio health client reads it.
pub fn grpc_health(addr: &str, service: &str) -> Result<String> {
    const CHECK: &str = r#"
import grpc, sys
from grpc_health.v1 import health_pb2, health_pb2_grpc
stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(sys.argv[1]))
r = stub.Check(health_pb2.HealthCheckRequest(service=sys.argv[2]), timeout=10)
print(health_pb2.HealthCheckResponse.ServingStatus.Name(r.status))
"#;
    let out = kafka::python(&kafka::grpcio_path()?, CHECK, &[addr, service])?;
    Ok(out.trim().to_string())
}

/// GETs `http://addr/path` with a plain HTTP/1.1 request; returns the body.
pub fn http_get(addr: &str, path: &str) -> Result<String> {
    let (status, head, body) = http_request(addr, "GET", path, &[])?;
    if status != 200 {
        bail!("GET {path}: {head}");
    }
    Ok(body)
}

/// Sends `METHOD path` (no body) with extra headers to `addr`; returns the status
/// code, the response head and the body.
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String, String)> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n{extra}Connection: close\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, head.to_string(), body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A multi-stage job (events ⋈ users, grouped; 6 shuffle partitions) named `name`,
/// writing Parquet to `out/<name>`: the spec file `dir/<name>.toml`, over the
/// clickstream data in `dir/data` (which the caller generates).
pub fn join_job(dir: &Path, name: &str) -> Result<PathBuf> {
    let spec = dir.join(format!("{name}.toml"));
    std::fs::write(
        &spec,
        format!(
            r#"
[job]
name = "{name}"
[job.params]
shuffle_partitions = 6
[[sources]]
name = "events"
format = "parquet"
path = "data/events"
[[sources]]
name = "users"
format = "csv"
path = "data/users.csv"
[transform]
sql = "SELECT u.country, e.kind, count(*) AS n, sum(e.amount) AS total FROM events e JOIN users u ON e.user_id = u.id GROUP BY u.country, e.kind"
[sink]
format = "parquet"
path = "out/{name}"
"#
        ),
    )?;
    Ok(spec)
}

/// Per-kind, per-bucket totals of the clickstream events: a two-stage aggregation.
pub const AGGREGATION_SQL: &str = "SELECT kind, user_id % 100 AS bucket, count(*) AS n, sum(amount) AS total FROM events GROUP BY kind, user_id % 100";

/// A two-stage aggregation of the clickstream events in `dir/data` (which the caller
/// generates) in 10 tasks per stage, with extra `[job.params]` lines: the spec file
/// `dir/<name>.toml`, writing Parquet to `out/<name>`.
pub fn aggregation_job(dir: &Path, name: &str, params: &str) -> Result<PathBuf> {
    events_job(
        dir,
        name,
        &format!("shuffle_partitions = 10\n{params}"),
        AGGREGATION_SQL,
    )
}

/// A job running `sql` over the clickstream events in `dir/data` (source `events`),
/// with `params` as `[job.params]` lines: the spec file `dir/<name>.toml`, writing
/// Parquet to `out/<name>`.
pub fn events_job(dir: &Path, name: &str, params: &str, sql: &str) -> Result<PathBuf> {
    let path = dir.join(format!("{name}.toml"));
    write_spec(
        &path,
        &format!(
            r#"
[job]
name = "{name}"
[job.params]
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

/// Writes a spec file.
pub fn write_spec(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text)?;
    Ok(())
}

/// Files (not dirs) under `dir`, recursively, relative.
pub fn files_under(dir: &Path) -> Vec<String> {
    let mut out = vec![];
    fn walk(base: &Path, d: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap_or(&p).display().to_string());
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// An S3-compatible object store on 127.0.0.1 (moto's server, a real S3 REST
/// endpoint), with the given buckets created. Killed on drop.
pub struct S3Server {
    proc: Child,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
}

const S3_SERVER_PY: &str = r#"
import sys, boto3
from moto.server import ThreadedMotoServer
s = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
s.start()
host, port = s.get_host_and_port()
c = boto3.client("s3", endpoint_url=f"http://{host}:{port}", aws_access_key_id="test",
                 aws_secret_access_key="test", region_name="us-east-1")
for b in sys.argv[1:]:
    c.create_bucket(Bucket=b)
print(f"s3 listening on {host}:{port}", flush=True)
sys.stdin.read()
"#;

impl S3Server {
    /// Starts the server (installing moto with pip first if it is missing).
    pub fn start(buckets: &[&str]) -> Result<Self> {
        let have = Command::new("python3")
            .args(["-c", "import moto.server, boto3"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("python3 is needed for the S3 test server")?;
        if !have.success() {
            let s = Command::new("python3")
                .args(["-m", "pip", "install", "-q", "moto[server]"])
                .status()?;
            if !s.success() {
                bail!(
                    "could not install the S3 test server: python3 -m pip install 'moto[server]'"
                );
            }
        }
        let mut proc = Command::new("python3")
            .arg("-c")
            .arg(S3_SERVER_PY)
            .args(buckets)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let Some(line) = first_line(&mut proc, Duration::from_secs(60)) else {
            let _ = proc.kill();
            bail!("the S3 test server did not start within 60 s");
        };
        let Some(addr) = line.trim().strip_prefix("s3 listening on ") else {
            let _ = proc.kill();
            bail!("unexpected output from the S3 test server: {line:?}");
        };
        Ok(Self {
            endpoint: format!("http://{addr}"),
            proc,
        })
    }

    /// The AWS_* environment that points object_store at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.proc.kill();
        let _ = self.proc.wait();
    }
}
