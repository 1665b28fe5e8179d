//! autopipe-worker: registers with the coordinator and heartbeats, runs the tasks it is
//! sent (DataFusion stage plans) on up to `slots` at a time, keeps map outputs in its
//! shuffle directory and serves them over Arrow Flight, and reports every task result.
#![warn(missing_docs)]

pub mod control;
pub mod executor;
pub mod flight;
pub mod identity;
pub mod key_sample;
pub mod liquid;
pub mod metrics;
pub mod shuffle_store;
pub mod stream;
mod stream_txn;
pub mod sweep;

use autopipe_common::error::{Error, Result};
use autopipe_common::retry::RetryPolicy;
use autopipe_common::shuffle::channel_to;
use autopipe_common::util::no_delay;
use autopipe_proto as pb;
use control::{Control, WorkerShared};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The health-checked service name that stays SERVING while a worker drains (a
/// liveness probe's; the server's own "" turns NOT_SERVING, for readiness).
pub const LIVENESS_SERVICE: &str = "autopipe.internal.v1.WorkerControl";

/// Worker configuration.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// coordinator addresses (the first that answers is used)
    pub coordinators: Vec<String>,
    /// gRPC + Flight listen address
    pub listen: SocketAddr,
    /// HTTP `/metrics` listen address
    pub http: SocketAddr,
    /// concurrent tasks
    pub slots: u32,
    /// shuffle files live here
    pub work_dir: PathBuf,
    /// heartbeat period
    pub heartbeat_interval: Duration,
    /// memory for all running tasks together, in bytes (0: half the machine's);
    /// each task gets its slots' share and spills to `work_dir/spill` beyond it
    pub memory_limit: u64,
    /// test-only: every task waits this long before it starts (a slow worker)
    pub test_task_delay: Duration,
    /// test-only: the delay applies only to tasks of this stage (None: every task)
    pub test_delay_stage: Option<u32>,
    /// test-only: a scan run unit by unit (dynamic rebalancing) waits this long
    /// before each unit (a slow scan that can be split)
    pub test_scan_unit_delay: Duration,
    /// test-only: the first attempt of every task fails with a transient error
    pub test_fail_first_attempt: bool,
    /// test-only: every task panics
    pub test_panic_tasks: bool,
    /// test-only: a task given fewer slots (memory shares) than this runs out of memory
    pub test_oom_below_slots: u32,
    /// the address others reach this worker at (default: the bound listen address)
    pub advertise: Option<String>,
    /// let reducers on this machine read this worker's map outputs from its disk
    /// instead of over Flight (Spark's host-local shuffle reads)
    pub host_local_shuffle: bool,
    /// how often the shuffle directories are listed to the coordinator and those of
    /// jobs that no longer run deleted (also once at start; see `sweep`)
    pub shuffle_sweep_interval: Duration,
    /// the cluster token (`--auth-token-file`): every call to this worker must carry
    /// it, and its own calls send it; none: no authentication
    pub auth_token: Option<autopipe_common::auth::AuthToken>,
    /// where tasks may stage output and write dead letters (`--allowed-roots`);
    /// empty: anywhere
    pub allowed_roots: autopipe_common::roots::AllowedRoots,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            coordinators: vec!["http://127.0.0.1:7700".into()],
            listen: "127.0.0.1:7800".parse().expect("valid literal"),
            http: "127.0.0.1:0".parse().expect("valid literal"),
            slots: 2,
            work_dir: PathBuf::from("autopipe-worker"),
            heartbeat_interval: Duration::from_secs(1),
            memory_limit: 0,
            test_task_delay: Duration::ZERO,
            test_delay_stage: None,
            test_scan_unit_delay: Duration::ZERO,
            test_fail_first_attempt: false,
            test_panic_tasks: false,
            test_oom_below_slots: 0,
            advertise: None,
            host_local_shuffle: true,
            shuffle_sweep_interval: Duration::from_secs(60),
            auth_token: None,
            allowed_roots: Default::default(),
        }
    }
}

/// A running worker.
pub struct WorkerHandle {
    /// bound gRPC + Flight address
    pub addr: SocketAddr,
    /// bound HTTP address
    pub http_addr: SocketAddr,
    /// its state (`drain` starts a graceful stop)
    pub shared: Arc<WorkerShared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl WorkerHandle {
    /// Waits until the servers and loops stopped (after cancel).
    pub async fn join(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Binds, starts the servers, registers and heartbeats until `cancel`.
pub async fn start(config: WorkerConfig, cancel: CancellationToken) -> Result<WorkerHandle> {
    if config.coordinators.is_empty() {
        return Err(Error::Permanent("no coordinator address given".into()));
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::Permanent(format!("cannot listen on {}: {e}", config.listen)))?;
    let http = TcpListener::bind(config.http)
        .await
        .map_err(|e| Error::Permanent(format!("cannot listen on {}: {e}", config.http)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Permanent(e.to_string()))?;
    let http_addr = http
        .local_addr()
        .map_err(|e| Error::Permanent(e.to_string()))?;
    let shuffle_root = config.work_dir.join("shuffle");
    std::fs::create_dir_all(&shuffle_root).map_err(|e| {
        Error::Permanent(format!(
            "cannot create work dir {}: {e}",
            shuffle_root.display()
        ))
    })?;
    // spill files of tasks that died with an earlier process
    let spill = config.work_dir.join("spill");
    let _ = std::fs::remove_dir_all(&spill);
    std::fs::create_dir_all(&spill).map_err(|e| {
        Error::Permanent(format!("cannot create spill dir {}: {e}", spill.display()))
    })?;
    let advertised = config.advertise.clone().unwrap_or_else(|| addr.to_string());
    let shared = Arc::new(WorkerShared::new(config.clone(), shuffle_root, advertised));
    // this worker's own calls (heartbeats, reports, shuffle fetches) carry the token
    if let Some(t) = &config.auth_token {
        autopipe_common::auth::set_client_token(Some(t));
    }
    let auth = autopipe_common::auth::ServerAuth::new(config.auth_token.as_ref());

    let control = Control {
        shared: shared.clone(),
    };
    let flight = flight::ShuffleFlightService {
        store: shared.shuffle.clone(),
    };
    let c1 = cancel.clone();
    // TLS (mutual) when the process has TLS settings
    let server = autopipe_common::tls::server()?;
    // health checking (`grpc.health.v1`) for Kubernetes probes: the server ("") is
    // SERVING until the worker drains, then NOT_SERVING, so a readiness probe stops
    // sending it work; WorkerControl stays SERVING while the process still serves
    // (its map outputs, its running tasks), for a liveness probe
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(LIVENESS_SERVICE, tonic_health::ServingStatus::Serving)
        .await;
    let drain_started = shared.drain_started();
    tokio::spawn(async move {
        drain_started.cancelled().await;
        reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
    });
    let grpc_task = tokio::spawn(async move {
        use tonic::service::interceptor::InterceptedService as Guarded;
        let r = server
            // pings notice a reducer that went away mid-stream
            .http2_keepalive_interval(Some(autopipe_common::shuffle::KEEP_ALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(autopipe_common::shuffle::KEEP_ALIVE_TIMEOUT))
            // WorkerControl and Flight refuse a call without the cluster token; a
            // health check needs none
            .add_service(Guarded::new(
                pb::worker_control_server::WorkerControlServer::new(control)
                    .max_decoding_message_size(64 << 20),
                auth.clone(),
            ))
            .add_service(Guarded::new(
                arrow_flight::flight_service_server::FlightServiceServer::new(flight),
                auth,
            ))
            .add_service(health)
            .serve_with_incoming_shutdown(no_delay(listener), c1.cancelled_owned())
            .await;
        if let Err(e) = r {
            tracing::error!("worker gRPC server stopped: {e}");
        }
    });
    let metrics = shared.metrics.clone();
    let c2 = cancel.clone();
    let http_task = tokio::spawn(async move {
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let m = metrics.clone();
                async move { m.render() }
            }),
        );
        let _ = axum::serve(http, app)
            .with_graceful_shutdown(c2.cancelled_owned())
            .await;
    });
    let hb_task = tokio::spawn(heartbeat_loop(shared.clone(), http_addr, cancel.clone()));
    let c3 = cancel.clone();
    let s3 = shared.clone();
    let stop_task = tokio::spawn(async move {
        c3.cancelled().await;
        s3.cancel_all();
    });
    tracing::info!(%addr, %http_addr, slots = config.slots, "worker started");
    Ok(WorkerHandle {
        addr,
        http_addr,
        shared,
        tasks: vec![grpc_task, http_task, hb_task, stop_task],
    })
}

/// Registers (again whenever the coordinator forgets us) and heartbeats every interval.
async fn heartbeat_loop(
    shared: Arc<WorkerShared>,
    http_addr: SocketAddr,
    cancel: CancellationToken,
) {
    let policy = RetryPolicy {
        base: Duration::from_millis(100),
        cap: Duration::from_secs(2),
        max_attempts: u32::MAX,
    };
    let mut failures = 0u32;
    let mut sys = sysinfo::System::new();
    let pid = sysinfo::get_current_pid().ok();
    let mut sweep = sweep::Sweep::new(shared.config.shuffle_sweep_interval);
    loop {
        if cancel.is_cancelled() {
            return;
        }
        let coords = &shared.coordinators;
        let coord = coords.current();
        let mut redirected = false;
        let r = async {
            let ch = channel_to(&coord).inspect_err(|_| {
                coords.failed(&coord, None);
            })?;
            let mut client = pb::worker_service_client::WorkerServiceClient::new(ch);
            if shared.worker_id().is_none() {
                // the id it had before, so a restart keeps one entry for this worker
                let saved = identity::load(&shared.config.work_dir);
                let mut req = tonic::Request::new(pb::RegisterWorkerRequest {
                    worker_id: saved.clone().unwrap_or_default(),
                    address: shared.address.clone(),
                    slots: shared.config.slots,
                    http_address: http_addr.to_string(),
                    host_id: if shared.config.host_local_shuffle {
                        autopipe_common::shuffle::host_id().to_string()
                    } else {
                        String::new()
                    },
                    shuffle_dir: shared.shuffle.root.display().to_string(),
                });
                req.set_timeout(Duration::from_secs(5));
                let id = client
                    .register_worker(req)
                    .await
                    .map_err(|s| {
                        redirected = coords.failed(&coord, Some(&s));
                        Error::from_status(&s)
                    })?
                    .into_inner()
                    .worker_id;
                tracing::info!(worker = %id, coordinator = %coord, "registered");
                if saved.as_deref() != Some(id.as_str()) {
                    identity::save(&shared.config.work_dir, &id);
                }
                shared.set_worker_id(Some(id));
            }
            let id = shared.worker_id().expect("set above");
            let (cpu, mem) = match pid {
                Some(pid) => {
                    sys.refresh_processes(sysinfo::ProcessesToUpdate::Some(&[pid]), true);
                    sys.process(pid)
                        .map(|p| (p.cpu_usage(), p.memory()))
                        .unwrap_or((0.0, 0))
                }
                None => (0.0, 0),
            };
            let m = &shared.metrics;
            m.slots.set(i64::from(shared.config.slots));
            m.free_slots.set(i64::from(shared.free_slots()));
            m.memory_limit.set(shared.memory_limit() as i64);
            m.memory_resident.set(mem as i64);
            if let Some(free) = disk_free(&shared.config.work_dir) {
                m.disk_free.set(free as i64);
            }
            let running = shared.running_keys();
            // at start and every sweep interval: which job dirs we hold (see `sweep`)
            let shuffle_jobs = sweep.due(&shared.shuffle);
            let mut req = tonic::Request::new(pb::HeartbeatRequest {
                worker_id: id.clone(),
                free_slots: shared.free_slots(),
                running,
                cpu_percent: cpu,
                memory_used_bytes: mem,
                retry_budget_exhausted: autopipe_common::retry::budget().exhausted(),
                shuffle_jobs: shuffle_jobs.clone(),
                spilled_bytes: shared.metrics.spilled_bytes.get(),
                queued: shared.queued(),
                memory_limit_bytes: shared.memory_limit(),
                cpu_cores: cpu_cores(),
                split_offers: shared.split_offers(),
                draining: shared.is_draining(),
            });
            req.set_timeout(Duration::from_secs(5));
            let resp = client
                .heartbeat(req)
                .await
                .map_err(|s| {
                    redirected = coords.failed(&coord, Some(&s));
                    Error::from_status(&s)
                })?
                .into_inner();
            sweep.answered(&shared.shuffle, &shuffle_jobs, &resp.finished_jobs);
            if resp.released {
                tracing::info!("drained and released by the coordinator");
                shared.released().cancel();
            }
            if !resp.known && shared.is_draining() {
                // released (by the fleet autoscaler, or drained) or declared lost
                // while draining: nothing to come back for
                tracing::info!(worker = %id, "draining and no longer a member; stopping");
                shared.released().cancel();
            } else if !resp.known {
                // Declared lost: our running attempts and outputs are not trusted any
                // more; stop them and register again (under the id we keep).
                tracing::warn!(worker = %id, "coordinator does not know this worker; registering again");
                shared.cancel_all();
                shared.set_worker_id(None);
            }
            Ok::<_, Error>(())
        }
        .await;
        let sleep = match r {
            Ok(()) => {
                failures = 0;
                shared.config.heartbeat_interval
            }
            // a follower named the leader: go there now
            Err(e) if redirected => {
                tracing::debug!(coordinator = %coord, "redirected to the leader: {e}");
                Duration::ZERO
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(coordinator = %coord, "heartbeat failed: {e}");
                policy.backoff(failures.min(10))
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(sleep) => {},
        }
    }
}

/// CPU cores of this machine (at least 1).
fn cpu_cores() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// Free bytes on the file system that holds `dir` (its longest mount point prefix).
fn disk_free(dir: &std::path::Path) -> Option<u64> {
    let dir = std::fs::canonicalize(dir).ok()?;
    let disks = sysinfo::Disks::new_with_refreshed_list();
    disks
        .list()
        .iter()
        .filter(|d| dir.starts_with(d.mount_point()))
        .max_by_key(|d| d.mount_point().as_os_str().len())
        .map(|d| d.available_space())
}
