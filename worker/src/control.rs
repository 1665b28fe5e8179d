//! `WorkerControl`: the coordinator launches, cancels and cleans up tasks here.
//! A launch is answered at once; the task runs in its own tokio task under a slot
//! semaphore and its result is reported to the coordinator with retries.

use crate::executor::{run_task, TaskMemory};
use crate::metrics::WorkerMetrics;
use crate::shuffle_store::ShuffleStore;
use crate::WorkerConfig;
use autopipe_common::auth::AuthChannel;
use autopipe_common::error::{Error, ErrorClass};
use autopipe_common::leader::Coordinators;
use autopipe_common::retry::RetryPolicy;
use autopipe_common::shuffle::channel_to;
use autopipe_proto as pb;
use futures::FutureExt;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

type Key = (String, u32, u32, u32);

/// How long a launch waits for a slot before it is refused.
const SLOT_WAIT: Duration = Duration::from_secs(2);

fn key_of(k: &pb::TaskKey) -> Key {
    (k.job_id.clone(), k.stage_id, k.task, k.attempt)
}

/// State shared by the worker's services and loops.
pub struct WorkerShared {
    /// configuration
    pub config: WorkerConfig,
    /// this worker's gRPC/Flight address as peers reach it
    pub address: String,
    /// shuffle files
    pub shuffle: Arc<ShuffleStore>,
    /// metrics
    pub metrics: Arc<WorkerMetrics>,
    /// the coordinator group, following its leader
    pub coordinators: Coordinators,
    /// memory for all running tasks, bytes
    memory_limit: u64,
    slots: Arc<Semaphore>,
    /// launches waiting for a free slot now (reported in heartbeats as `queued`)
    queued: std::sync::atomic::AtomicU32,
    worker_id: Mutex<Option<String>>,
    running: Mutex<HashMap<Key, Running>>,
    /// asked to stop (SIGTERM): no new task; leaves once the coordinator released it
    draining: std::sync::atomic::AtomicBool,
    /// cancelled when the coordinator released this draining worker
    released: CancellationToken,
    /// cancelled when draining starts (a signal, or `admin drain`)
    drain_started: CancellationToken,
}

/// An attempt that holds a slot: listed in heartbeats until its task has ended, also
/// after a cancel, so the coordinator counts its slot busy until it is really free.
struct Running {
    /// a streaming job's consumer task (it never ends by itself)
    streaming: bool,
    /// checked by the task between batches
    cancel: CancellationToken,
    /// stops it at its next await point
    abort: tokio::task::AbortHandle,
    /// its unit-by-unit scan, when it may be split (dynamic rebalancing)
    split: Option<Arc<crate::liquid::SplitControl>>,
}

impl Running {
    /// Asks the attempt to stop; true the first time.
    fn stop(&self) -> bool {
        let first = !self.cancel.is_cancelled();
        self.cancel.cancel();
        self.abort.abort();
        first
    }
}

/// Removes an attempt from the running list when its task ends, however it ends
/// (finished, failed, panicked or aborted).
struct Listed {
    shared: Arc<WorkerShared>,
    key: Key,
}

impl Drop for Listed {
    fn drop(&mut self) {
        self.shared.running.lock().expect("lock").remove(&self.key);
    }
}

impl WorkerShared {
    /// New shared state.
    pub fn new(config: WorkerConfig, shuffle_root: PathBuf, address: String) -> Self {
        let metrics = Arc::new(WorkerMetrics::default());
        let memory_limit = match config.memory_limit {
            0 => default_memory_limit(),
            n => n,
        };
        Self {
            memory_limit,
            slots: Arc::new(Semaphore::new(config.slots as usize)),
            queued: Default::default(),
            shuffle: Arc::new(ShuffleStore {
                root: shuffle_root,
                metrics: metrics.clone(),
            }),
            metrics,
            address,
            coordinators: Coordinators::new(&config.coordinators),
            config,
            worker_id: Mutex::new(None),
            running: Mutex::new(HashMap::new()),
            draining: Default::default(),
            released: CancellationToken::new(),
            drain_started: CancellationToken::new(),
        }
    }

    /// The memory of an attempt that takes `slots` task slots: that many slots' shares
    /// of the worker's memory limit; it spills to the work dir beyond.
    pub fn task_memory(&self, slots: u32) -> TaskMemory {
        let all = self.config.slots.max(1) as u64;
        TaskMemory {
            bytes: (self.memory_limit / all * slots.clamp(1, self.config.slots.max(1)) as u64)
                as usize,
            spill_dir: self.config.work_dir.join("spill"),
        }
    }

    /// The id the coordinator gave us.
    pub fn worker_id(&self) -> Option<String> {
        self.worker_id.lock().expect("lock").clone()
    }

    /// Sets (or clears) our id.
    pub fn set_worker_id(&self, id: Option<String>) {
        *self.worker_id.lock().expect("lock") = id;
    }

    /// Keys of running tasks.
    pub fn running_keys(&self) -> Vec<pb::TaskKey> {
        self.running
            .lock()
            .expect("lock")
            .keys()
            .map(|(j, s, t, a)| pb::TaskKey {
                job_id: j.clone(),
                stage_id: *s,
                task: *t,
                attempt: *a,
            })
            .collect()
    }

    /// Split points of running attempts that await the coordinator's confirmation.
    pub fn split_offers(&self) -> Vec<pb::SplitOffer> {
        self.running
            .lock()
            .expect("lock")
            .iter()
            .filter_map(|((j, s, t, a), r)| {
                let key = pb::TaskKey {
                    job_id: j.clone(),
                    stage_id: *s,
                    task: *t,
                    attempt: *a,
                };
                r.split.as_ref()?.pending(&key)
            })
            .collect()
    }

    fn split_control(&self, key: &pb::TaskKey) -> Option<Arc<crate::liquid::SplitControl>> {
        self.running
            .lock()
            .expect("lock")
            .get(&key_of(key))
            .and_then(|r| r.split.clone())
    }

    /// Free task slots.
    pub fn free_slots(&self) -> u32 {
        self.slots.available_permits() as u32
    }

    /// Launches waiting for a free slot now.
    pub fn queued(&self) -> u32 {
        self.queued.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The memory all running tasks share, bytes.
    pub fn memory_limit(&self) -> u64 {
        self.memory_limit
    }

    /// Starts draining: no new task from now on; a streaming job's consumer tasks
    /// (which never end by themselves) stop, and the coordinator launches them
    /// elsewhere from their committed offsets; the others run to their end.
    pub fn drain(&self) {
        if self
            .draining
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        tracing::info!("draining: no new tasks; leaving once the coordinator releases this worker");
        self.drain_started.cancel();
        for r in self.running.lock().expect("lock").values() {
            if r.streaming && r.stop() {
                self.metrics.task_done("cancelled");
            }
        }
    }

    /// Whether it drains.
    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Cancelled once draining started.
    pub fn drain_started(&self) -> CancellationToken {
        self.drain_started.clone()
    }

    /// Cancelled once the coordinator released this draining worker.
    pub fn released(&self) -> CancellationToken {
        self.released.clone()
    }

    /// Stops every running task (each leaves the running list once it has ended).
    pub fn cancel_all(&self) {
        for r in self.running.lock().expect("lock").values() {
            if r.stop() {
                self.metrics.task_done("cancelled");
            }
        }
    }
}

/// Counts a task in the running gauge for as long as it lives (also when aborted).
struct RunningGauge(Arc<WorkerMetrics>);

impl RunningGauge {
    fn new(m: Arc<WorkerMetrics>) -> Self {
        m.running.inc();
        Self(m)
    }
}

impl Drop for RunningGauge {
    fn drop(&mut self) {
        self.0.running.dec();
    }
}

/// `Ok` when everything `def` writes (its staging URL, its dead-letter file) lies
/// under `roots` (`--allowed-roots`); otherwise a permanent error naming the URL and
/// the roots, so the job fails instead of writing there.
pub fn confined(
    def: &pb::TaskDefinition,
    roots: &autopipe_common::roots::AllowedRoots,
) -> Result<(), Error> {
    let staging = match &def.output {
        Some(pb::task_definition::Output::Sink(s)) => Some(s.staging_url.as_str()),
        _ => None,
    };
    let stream = def.stream.as_ref();
    let writes = [
        ("staging URL", staging),
        ("dead-letter URL", Some(def.dead_letter_url.as_str())),
        ("stream staging URL", stream.map(|s| s.staging_url.as_str())),
        (
            "stream dead-letter URL",
            stream.map(|s| s.dead_letter_url.as_str()),
        ),
    ];
    for (what, url) in writes {
        let Some(url) = url.filter(|u| !u.is_empty()) else {
            continue;
        };
        roots
            .check(url)
            .map_err(|m| Error::Permanent(format!("this worker refuses the task's {what}: {m}")))?;
    }
    Ok(())
}

/// The WorkerControl service.
#[derive(Clone)]
pub struct Control {
    /// shared state
    pub shared: Arc<WorkerShared>,
}

#[tonic::async_trait]
impl pb::worker_control_server::WorkerControl for Control {
    async fn launch_task(
        &self,
        req: Request<pb::TaskDefinition>,
    ) -> Result<Response<pb::LaunchTaskResponse>, Status> {
        let def = req.into_inner();
        let key = def
            .key
            .clone()
            .ok_or_else(|| Status::invalid_argument("task definition without a key"))?;
        confined(&def, &self.shared.config.allowed_roots)?;
        if self.shared.is_draining() {
            return Err(Status::resource_exhausted(autopipe_common::task::DRAINING));
        }
        let streaming = def.stream.is_some();
        // The registration answer may still be on its way to us; the coordinator says
        // which id it launched for, and a launch for an identity we gave up is refused.
        let worker_id = def.worker_id.clone();
        if let Some(me) = self.shared.worker_id() {
            if me != worker_id {
                return Err(Status::failed_precondition(format!(
                    "task was launched for worker {worker_id}, this is {me}"
                )));
            }
        }
        // A cancelled attempt frees its slot a moment after the coordinator counts it
        // free (the abort completes on its own task): wait briefly before refusing.
        // An attempt given a larger memory share takes that many slots.
        let slots = def.slots.clamp(1, self.shared.config.slots.max(1));
        let memory = self.shared.task_memory(slots);
        let queued = &self.shared.queued;
        queued.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let permit = tokio::time::timeout(
            SLOT_WAIT,
            self.shared.slots.clone().acquire_many_owned(slots),
        )
        .await;
        queued.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        let permit = permit
            .ok()
            .and_then(Result::ok)
            .ok_or_else(|| Status::resource_exhausted(autopipe_common::task::NO_FREE_SLOT))?;
        let shared = self.shared.clone();
        let k = key_of(&key);
        let mut running = self.shared.running.lock().expect("lock");
        if running.contains_key(&k) {
            return Err(Status::already_exists("task attempt is already running"));
        }
        let guard = RunningGauge::new(shared.metrics.clone());
        let delay = match shared.config.test_delay_stage {
            Some(stage) if stage != key.stage_id => Duration::ZERO,
            _ => shared.config.test_task_delay,
        };
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let splitting = crate::executor::Splitting {
            unit_delay: shared.config.test_scan_unit_delay,
            ..Default::default()
        };
        let split = def.dynamic_split.then(|| splitting.control.clone());
        let listed = Listed {
            shared: shared.clone(),
            key: k.clone(),
        };
        // Spawned paused, so that it is listed before it can end.
        let (go, ready) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            let _listed = listed;
            if ready.await.is_err() {
                return;
            }
            if !delay.is_zero() {
                tokio::time::sleep(delay).await; // test-only: a deliberately slow worker
            }
            let run = async {
                if shared.config.test_fail_first_attempt && key.attempt == 1 {
                    // test-only: a transient failure of every first attempt
                    Err(Error::Transient("test: first attempts fail".into()))
                } else if shared.config.test_panic_tasks {
                    panic!("test: every task panics");
                } else if slots < shared.config.test_oom_below_slots {
                    // test-only: a task too big for fewer slots' memory than this
                    Err(Error::from(
                        datafusion::error::DataFusionError::ResourcesExhausted(format!(
                            "test: a task needs {} slots' memory, it has {slots}",
                            shared.config.test_oom_below_slots
                        )),
                    ))
                } else if def.stream.is_some() {
                    crate::stream::run_stream(&def, &shared, &stop, &memory.spill_dir).await
                } else {
                    run_task(&def, &shared.shuffle, &stop, &memory, &splitting).await
                }
            };
            // A panic is this attempt's failure, not the worker's end: caught and
            // reported like any error (retried elsewhere, counted).
            let result = std::panic::AssertUnwindSafe(run)
                .catch_unwind()
                .await
                .unwrap_or_else(|p| {
                    Err(Error::Transient(format!(
                        "task panicked: {}",
                        panic_message(&*p)
                    )))
                });
            drop(permit);
            drop(guard);
            if stop.is_cancelled() {
                return; // nobody wants its result
            }
            // The attempt stays in the heartbeat's running list until its report is
            // acknowledged, so the coordinator never mistakes it for a lost launch.
            report(&shared, &worker_id, key.clone(), result).await;
        });
        running.insert(
            k,
            Running {
                streaming,
                cancel,
                abort: handle.abort_handle(),
                split,
            },
        );
        let _ = go.send(());
        Ok(Response::new(pb::LaunchTaskResponse {}))
    }

    async fn drain(
        &self,
        _req: Request<pb::DrainWorkerRequest>,
    ) -> Result<Response<pb::DrainWorkerResponse>, Status> {
        self.shared.drain();
        Ok(Response::new(pb::DrainWorkerResponse {}))
    }

    async fn cancel_task(
        &self,
        req: Request<pb::CancelTaskRequest>,
    ) -> Result<Response<pb::CancelTaskResponse>, Status> {
        if let Some(k) = req.into_inner().key {
            // it stays listed (its slot busy) until its task has really ended
            let first = self
                .shared
                .running
                .lock()
                .expect("lock")
                .get(&key_of(&k))
                .is_some_and(Running::stop);
            if first {
                self.shared.metrics.task_done("cancelled");
            }
        }
        Ok(Response::new(pb::CancelTaskResponse {}))
    }

    async fn split_task(
        &self,
        req: Request<pb::SplitTaskRequest>,
    ) -> Result<Response<pb::SplitTaskResponse>, Status> {
        let key = req
            .into_inner()
            .key
            .ok_or_else(|| Status::invalid_argument("split request without a key"))?;
        let answer = match self.shared.split_control(&key) {
            None => Err("the attempt does not run here, or its scan cannot be split".into()),
            Some(c) => c.offer(&key),
        };
        Ok(Response::new(match answer {
            Ok(offer) => {
                tracing::info!(job = %key.job_id, stage = key.stage_id, task = key.task, attempt = key.attempt, unit = offer.split_unit, units = offer.units_total, "offered a split point");
                pb::SplitTaskResponse {
                    offer: Some(offer),
                    refused: String::new(),
                }
            }
            Err(refused) => pb::SplitTaskResponse {
                offer: None,
                refused,
            },
        }))
    }

    async fn confirm_split(
        &self,
        req: Request<pb::ConfirmSplitRequest>,
    ) -> Result<Response<pb::ConfirmSplitResponse>, Status> {
        let r = req.into_inner();
        let key = r
            .key
            .ok_or_else(|| Status::invalid_argument("confirmation without a key"))?;
        if let Some(c) = self.shared.split_control(&key) {
            if c.confirm(r.seq) {
                tracing::info!(job = %key.job_id, stage = key.stage_id, task = key.task, attempt = key.attempt, "split confirmed: the attempt stops at its split point");
            }
        }
        Ok(Response::new(pb::ConfirmSplitResponse {}))
    }

    async fn cleanup_job(
        &self,
        req: Request<pb::CleanupJobRequest>,
    ) -> Result<Response<pb::CleanupJobResponse>, Status> {
        self.shared.shuffle.remove_job(&req.into_inner().job_id);
        Ok(Response::new(pb::CleanupJobResponse {}))
    }
}

async fn report(
    shared: &WorkerShared,
    worker_id: &str,
    key: pb::TaskKey,
    result: autopipe_common::Result<autopipe_common::task::TaskResult>,
) {
    let m = &shared.metrics;
    let report = match result {
        Ok(out) => {
            m.task_done("succeeded");
            m.task_duration.observe(out.duration_ms as f64 / 1000.0);
            m.rows_read.inc_by(out.rows_in);
            m.bytes_read.inc_by(out.bytes_in);
            m.bytes_written.inc_by(out.bytes_out);
            m.bad_records.inc_by(out.bad_records);
            pb::TaskStatusReport {
                worker_id: worker_id.to_string(),
                key: Some(key.clone()),
                succeeded: true,
                error: None,
                partitions: out
                    .partitions
                    .iter()
                    .enumerate()
                    .map(|(i, (rows, bytes))| pb::PartitionStats {
                        partition: i as u32,
                        rows: *rows,
                        bytes: *bytes,
                        hot_keys: out
                            .hot_keys
                            .iter()
                            .find(|(p, _)| *p as usize == i)
                            .map(|(_, keys)| {
                                keys.iter()
                                    .map(|(key, rows)| pb::KeyFrequency {
                                        key: key.clone(),
                                        rows: *rows,
                                    })
                                    .collect()
                            })
                            .unwrap_or_default(),
                    })
                    .collect(),
                files: out.files,
                rows_in: out.rows_in,
                bytes_in: out.bytes_in,
                rows_out: out.rows_out,
                bytes_out: out.bytes_out,
                duration_ms: out.duration_ms,
                bad_records: out.bad_records,
                dead_letter_file: out.dead_letter_file.clone(),
            }
        }
        Err(e) => {
            let e = unwrap_external(e);
            m.task_done("failed");
            m.error(match e.class() {
                ErrorClass::Transient => "transient",
                ErrorClass::Permanent => "permanent",
                ErrorClass::Data => "data",
            });
            tracing::warn!(job = %key.job_id, stage = key.stage_id, task = key.task, "task failed: {e}");
            pb::TaskStatusReport {
                worker_id: worker_id.to_string(),
                key: Some(key.clone()),
                succeeded: false,
                error: Some(e.to_detail()),
                ..Default::default()
            }
        }
    };
    let r = call_leader(shared, |mut c| {
        let mut req = Request::new(report.clone());
        req.set_timeout(Duration::from_secs(5));
        async move { c.report_task_status(req).await.map(|_| ()) }
    })
    .await;
    if let Err(e) = r {
        tracing::error!(job = %key.job_id, stage = key.stage_id, task = key.task, "could not report task status: {e}");
    }
}

/// Calls the coordinators' leader with `call`, following leader changes (a
/// follower's answer names the leader) and retrying transient failures with backoff
/// (100 ms to 2 s, 30 attempts); any other failure is returned as the error its
/// status says.
pub(crate) async fn call_leader<T, Fut>(
    shared: &WorkerShared,
    call: impl Fn(pb::worker_service_client::WorkerServiceClient<AuthChannel>) -> Fut,
) -> Result<T, Error>
where
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let policy = RetryPolicy {
        base: Duration::from_millis(100),
        cap: Duration::from_secs(2),
        max_attempts: 30,
    };
    let coords = &shared.coordinators;
    policy
        .run(|| {
            let coord = coords.current();
            let ch = channel_to(&coord);
            let call = &call;
            async move {
                let ch = ch.inspect_err(|_| {
                    coords.failed(&coord, None);
                })?;
                let c = pb::worker_service_client::WorkerServiceClient::new(ch);
                call(c).await.map_err(|s| {
                    coords.failed(&coord, Some(&s));
                    Error::from_status(&s)
                })
            }
        })
        .await
}

/// Half of the memory the process may use (Spark's and Flink's defaults leave the rest
/// to the OS, the process itself and its page cache): a worker's default
/// `memory_limit`. That is the machine's memory, or a container's limit when it is
/// smaller (cgroup v2 `memory.max`, v1 `memory.limit_in_bytes`), so a worker in a
/// container does not plan for the host's memory and get OOM-killed. Workers sharing
/// one process (`autopipe local`) share it.
pub fn default_memory_limit() -> u64 {
    let mut sys = sysinfo::System::new();
    sys.refresh_memory();
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|f| cgroup_limit(&std::fs::read_to_string(f).ok()?));
    let total = cgroup.map_or(sys.total_memory(), |c| c.min(sys.total_memory()));
    (total / 2).max(256 << 20)
}

/// A cgroup memory limit file's value: bytes, or none for `max` (v2) or v1's
/// "unlimited" (a page-rounded i64::MAX).
fn cgroup_limit(text: &str) -> Option<u64> {
    let n: u64 = text.trim().parse().ok()?;
    (n < 1 << 60).then_some(n)
}

/// The message a panic carried.
fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// DataFusion wraps our errors (e.g. FetchFailed from the shuffle reader) as External;
/// unwrap them so the class and fields survive.
fn unwrap_external(e: Error) -> Error {
    use datafusion::error::DataFusionError;
    fn find(e: &DataFusionError) -> Option<&Error> {
        match e {
            DataFusionError::External(b) => b.downcast_ref::<Error>(),
            DataFusionError::Context(_, inner) => find(inner),
            DataFusionError::Shared(inner) => find(inner),
            _ => None,
        }
    }
    if let Error::DataFusion(df) = &e {
        if let Some(Error::FetchFailed {
            stage_id,
            map_task,
            worker_id,
            message,
        }) = find(df)
        {
            return Error::FetchFailed {
                stage_id: *stage_id,
                map_task: *map_task,
                worker_id: worker_id.clone(),
                message: message.clone(),
            };
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use autopipe_common::roots::AllowedRoots;
    #[test]
    fn a_container_limit_caps_the_default_memory_and_max_means_none() {
        assert_eq!(cgroup_limit("1073741824\n"), Some(1 << 30));
        assert_eq!(cgroup_limit("max\n"), None);
        assert_eq!(cgroup_limit("9223372036854771712"), None);
    }

    fn def(staging: &str, dead: &str) -> pb::TaskDefinition {
        pb::TaskDefinition {
            output: Some(pb::task_definition::Output::Sink(pb::SinkOutput {
                format: "csv".into(),
                staging_url: staging.into(),
                partition_by: vec![],
            })),
            dead_letter_url: dead.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_task_writing_outside_the_roots_is_refused() {
        let roots = AllowedRoots::parse("/data").unwrap();
        let ok = def(
            "file:///data/.out.autopipe-staging/j/t0-a1/",
            "file:///data/.out.autopipe-staging/j/dead-letter/s0-t0-a1.ndjson",
        );
        assert!(confined(&ok, &roots).is_ok());
        let e = confined(&def("file:///etc/.x.autopipe-staging/j/t0-a1/", ""), &roots).unwrap_err();
        assert_eq!(e.class(), ErrorClass::Permanent);
        assert!(
            e.to_string().contains("staging URL") && e.to_string().contains("/etc/"),
            "{e}"
        );
        let e = confined(
            &def("file:///data/s/", "file:///data/../var/x.ndjson"),
            &roots,
        )
        .unwrap_err();
        assert!(e.to_string().contains("dead-letter URL"), "{e}");
        // no roots: anything goes
        assert!(confined(&def("file:///etc/x/", ""), &AllowedRoots::default()).is_ok());
    }
}
