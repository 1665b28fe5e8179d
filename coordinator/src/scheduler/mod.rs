//! The scheduler loop (runs only on the raft leader): declares silent workers lost,
//! launches ready tasks onto workers with free slots, cancels tasks of cancelled or
//! failed jobs, and commits jobs whose sink stage is complete. It reads the state
//! and proposes commands; all side effects (RPCs, file moves) happen here.

pub mod autoscale;
pub mod commit;
pub mod compaction;
pub mod liquid;
pub mod load;
pub mod retention;
pub mod stall;
pub mod stream;

use crate::alerts::{self, AlertKind};
use crate::core::{attempt_id, AttemptId, Core};
use crate::optimizer::placement::{self, Placement, Rebalanced, Slots, StageContext};
use crate::optimizer::{replan, speculation, timeouts};
use crate::state::decision::inputs;
use crate::state::{
    Command, Decision, DecisionKind, ErrorRecord, FetchFailedRecord, Job, JobState, Outcome, State,
    TaskState, WorkerState,
};
use autopipe_common::error::{Error, ErrorClass};
use autopipe_common::retry::{self, RetryPolicy};
use autopipe_common::shuffle::channel_to;
use autopipe_common::spec::Format;
use autopipe_common::util::now_ms;
use autopipe_proto as pb;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Runs until `cancel`.
pub async fn run(core: Arc<Core>, cancel: CancellationToken) {
    let committing: Arc<Mutex<HashSet<String>>> = Default::default();
    let cleaning: Arc<Mutex<HashSet<String>>> = Default::default();
    let publishing: Arc<Mutex<HashSet<String>>> = Default::default();
    let mut retention_at = std::time::Instant::now();
    let mut was_leader = false;
    let mut refused_seen = 0;
    let mut orphans_cancelled: HashMap<AttemptId, std::time::Instant> = HashMap::new();
    let mut stalled: HashSet<String> = HashSet::new();
    let mut splits = liquid::Splits::default();
    let mut consumers = crate::optimizer::kafka_scaling::Memory::default();
    let refreshing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut refreshed_at = std::time::Instant::now();
    let mut status = core.raft.watch_status();
    let tables = compaction::Watch::default();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = core.wake.notified() => {},
            _ = status.changed() => {},
            _ = tokio::time::sleep(core.config.schedule_interval) => {},
        }
        if !core.raft.is_leader() {
            if std::mem::take(&mut was_leader) {
                core.forget_liveness();
            }
            continue;
        }
        if !was_leader {
            // a new leader: every worker the state knows as alive gets a fresh grace
            // period to heartbeat here before it is declared lost
            was_leader = true;
            core.seed_liveness();
        }
        detect_lost_workers(&core).await;
        let refused = retry::budget().exhausted();
        if refused > refused_seen {
            alerts::retry_budget_exhausted(&core, "coordinator", refused - refused_seen);
            refused_seen = refused;
        }
        time_out_attempts(&core).await;
        cancel_orphans(&core, &mut orphans_cancelled);
        load::publish(&core).await;
        liquid::split_running_tasks(&core, &mut splits).await;
        launch_ready_tasks(&core).await;
        stall::watch(&core, &mut stalled).await;
        start_commits(&core, &committing).await;
        compaction::run(&core, &tables);
        stream::publish_pending(&core, &publishing);
        stream::rescale(&core, &mut consumers).await;
        if refreshed_at.elapsed() >= stream::REFRESH_EVERY {
            refreshed_at = std::time::Instant::now();
            stream::refresh_unread(&core, &refreshing);
        }
        cleanup_finished(&core, &cleaning);
        if retention_at.elapsed() >= RETENTION_EVERY {
            retention_at = std::time::Instant::now();
            retention::enforce(&core).await;
        }
    }
}

/// How often the leader applies the retention policies (`retention`).
const RETENTION_EVERY: Duration = Duration::from_secs(1);

async fn detect_lost_workers(core: &Arc<Core>) {
    let timeout = core.config.heartbeat_timeout;
    // a worker whose heartbeats are late is probed once: if its process is gone it
    // is lost now, not when the timeout runs out (its running tasks wait for that)
    let probe_after = (timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(3));
    let (lost, late): (Vec<String>, Vec<String>) = {
        let mut live = core.liveness.lock().expect("liveness lock poisoned");
        let lost = live
            .iter()
            .filter(|(_, l)| l.last.elapsed() > timeout)
            .map(|(id, _)| id.clone())
            .collect();
        let late = live
            .iter_mut()
            .filter(|(_, l)| !l.probed && l.last.elapsed() > probe_after)
            .map(|(id, l)| {
                l.probed = true;
                id.clone()
            })
            .collect();
        (lost, late)
    };
    for id in late {
        let core = core.clone();
        tokio::spawn(async move { probe_worker(&core, &id).await });
    }
    for id in lost {
        declare_lost(core, &id, &format!("missed its heartbeats for {timeout:?}")).await;
    }
}

/// The one path by which a worker is declared lost (heartbeats missed, or its
/// process gone): forgotten by liveness, `WorkerLost` proposed (its running tasks and
/// map outputs are recomputed), an alert raised.
pub async fn declare_lost(core: &Core, id: &str, why: &str) {
    core.liveness
        .lock()
        .expect("liveness lock poisoned")
        .remove(id);
    let alive = core.read(|s| {
        s.workers
            .get(id)
            .map(|w| w.state == WorkerState::Alive)
            .unwrap_or(false)
    });
    if !alive {
        return;
    }
    tracing::warn!(worker = %id, "worker {why}; declaring it lost");
    match core
        .propose(Command::WorkerLost {
            worker_id: id.to_string(),
            at_ms: now_ms(),
        })
        .await
    {
        Ok(_) => alerts::raise(
            core,
            AlertKind::WorkerLost,
            id,
            &format!(
                "worker {id} {why} and was declared lost; its tasks and map outputs are recomputed"
            ),
        ),
        Err(e) => tracing::warn!(worker = %id, "could not record lost worker: {e}"),
    }
}

/// A worker a launch or a fetch could not reach: when its address refuses TCP
/// connections, nothing listens there any more (the process is gone), so it is
/// declared lost now instead of after the heartbeat timeout. A timeout or any other
/// error proves nothing and leaves it to the heartbeats.
pub async fn probe_worker(core: &Core, id: &str) {
    let Some(address) = core.read(|s| s.workers.get(id).map(|w| w.address.clone())) else {
        return;
    };
    let addr = address.trim_start_matches("http://").to_string();
    let r = tokio::time::timeout(
        Duration::from_secs(1),
        tokio::net::TcpStream::connect(&addr),
    )
    .await;
    if let Ok(Err(e)) = r {
        if e.kind() == std::io::ErrorKind::ConnectionRefused {
            declare_lost(core, id, &format!("refuses connections at {addr}")).await;
        }
    }
}

/// How often an orphaned attempt is asked again to stop.
const ORPHAN_CANCEL_EVERY: Duration = Duration::from_secs(2);

/// Cancels every attempt a worker says it runs that the state does not run: attempts
/// of failed, cancelled or finished jobs, losers of a speculation race, attempts that
/// timed out or were superseded, and cancels that never arrived. One mechanism for
/// all of them, driven by the heartbeats, so none keeps a slot forever.
fn cancel_orphans(core: &Arc<Core>, sent: &mut HashMap<AttemptId, std::time::Instant>) {
    let listed: Vec<(String, pb::TaskKey)> = core
        .liveness
        .lock()
        .expect("liveness lock poisoned")
        .iter()
        .flat_map(|(w, l)| l.running.iter().map(move |k| (w.clone(), k.clone())))
        .collect();
    sent.retain(|_, at| at.elapsed() < ORPHAN_CANCEL_EVERY);
    let orphans: Vec<(String, pb::TaskKey)> = core.read(|s| {
        listed
            .into_iter()
            .filter(|(w, k)| !s.attempt_runs(k, w))
            .collect()
    });
    for (worker_id, key) in orphans {
        let id = attempt_id(&key);
        if sent.contains_key(&id) {
            continue;
        }
        sent.insert(id, std::time::Instant::now());
        tracing::info!(worker = %worker_id, job = %key.job_id, stage = key.stage_id, task = key.task, attempt = key.attempt, "cancelling an attempt the job no longer runs");
        // (a listed attempt may just be finishing its report: its slot is not held)
        let core = core.clone();
        tokio::spawn(async move { send_cancel(&core, &worker_id, key).await });
    }
}

/// How long a task retry waits when the retry budget is spent.
const BUDGET_WAIT: Duration = Duration::from_secs(2);

/// One decided launch.
struct Launch {
    worker_id: String,
    address: String,
    def: pb::TaskDefinition,
    /// a speculative copy: the rule that fired and what it read
    speculative: Option<(String, BTreeMap<String, String>)>,
}

/// Cancels one attempt that the state ran until now (its job ended, it lost a race,
/// it timed out) on its worker: its slot counts as busy until the worker's heartbeat
/// no longer lists it. Best effort: a worker that does not answer is left to the
/// heartbeats (`cancel_orphans` asks again), and a late report of the attempt is
/// ignored.
pub async fn cancel_attempt(core: &Core, worker_id: &str, key: pb::TaskKey) {
    if let Some(l) = core
        .liveness
        .lock()
        .expect("liveness lock poisoned")
        .get_mut(worker_id)
    {
        l.stopping.insert(attempt_id(&key));
    }
    send_cancel(core, worker_id, key).await;
}

/// Asks `worker_id` to stop attempt `key`.
async fn send_cancel(core: &Core, worker_id: &str, key: pb::TaskKey) {
    let Some(addr) = core.read(|s| s.workers.get(worker_id).map(|w| w.address.clone())) else {
        return;
    };
    let Ok(ch) = channel_to(&addr) else { return };
    let mut c = pb::worker_control_client::WorkerControlClient::new(ch);
    let mut req = tonic::Request::new(pb::CancelTaskRequest { key: Some(key) });
    req.set_timeout(Duration::from_secs(5));
    if let Err(e) = c.cancel_task(req).await {
        tracing::debug!(worker = %worker_id, "cancel failed: {e}");
    }
}

/// Fails (as transient) and cancels every attempt that ran past its stage's task
/// timeout; each is a recorded `task_timeout` decision.
async fn time_out_attempts(core: &Arc<Core>) {
    let now = now_ms();
    let expired = core.read(|s| timeouts::expired_attempts(s, now));
    for x in expired {
        let e = Error::Transient(format!(
            "attempt {} of stage {} task {} timed out: it ran {} ms on worker {}, the task timeout is {} ms ({})",
            x.key.attempt, x.key.stage_id, x.key.task, x.ran_ms, x.worker_id, x.limit_ms, x.how
        ));
        core.metrics.error(class_name(ErrorClass::Transient));
        let Some(outcome) = propose_failure(core, &x.key, error_record(&e), true).await else {
            continue; // it finished meanwhile
        };
        let other_runs = core.read(|s| {
            s.jobs
                .get(&x.key.job_id)
                .and_then(|j| j.stages.get(x.key.stage_id as usize))
                .and_then(|st| st.tasks.get(x.key.task as usize))
                .is_some_and(|t| !t.running_attempts().is_empty())
        });
        let effect = match outcome {
            Outcome::JobChanged(_, JobState::Failed) => {
                "the task had no attempts left: the job failed".to_string()
            }
            _ if other_runs => format!(
                "the slot on {} was freed; the task's other attempt carries on",
                x.worker_id
            ),
            _ => format!(
                "the slot on {} was freed; the task is retried on another worker when one is free",
                x.worker_id
            ),
        };
        let decision = Decision {
            id: 0,
            at_ms: now,
            job_id: x.key.job_id.clone(),
            kind: DecisionKind::TaskTimeout,
            what: format!(
                "failed and cancelled attempt {} of stage {} task {} on worker {}",
                x.key.attempt, x.key.stage_id, x.key.task, x.worker_id
            ),
            why: format!(
                "it ran {} ms, past the task timeout of {} ms ({})",
                x.ran_ms, x.limit_ms, x.how
            ),
            inputs: inputs([
                ("runtime_ms", x.ran_ms.to_string()),
                ("timeout_ms", x.limit_ms.to_string()),
                ("finished_tasks_in_stage", x.finished.to_string()),
                ("worker", x.worker_id.clone()),
            ]),
            effect: Some(effect),
        };
        if let Err(e) = core.propose(Command::RecordDecision { decision }).await {
            tracing::debug!("timeout decision not recorded: {e}");
        }
        cancel_attempt(core, &x.worker_id, x.key).await;
    }
}

async fn launch_ready_tasks(core: &Arc<Core>) {
    let live: HashMap<String, u32> = core
        .liveness
        .lock()
        .expect("liveness lock poisoned")
        .iter()
        .filter(|(_, l)| !l.unreachable && !l.draining)
        .map(|(k, l)| (k.clone(), l.stopping.len() as u32))
        .collect();
    // One snapshot decides everything this tick, so a stage whose inputs complete
    // meanwhile is not launched as planned while its re-plan is left for later:
    // - a join whose build side just finished small runs as a broadcast join
    //   (`optimizer::broadcast`): nothing of that job launches until it is recorded;
    // - a stage whose inputs just completed is re-planned from their statistics
    //   before any of its tasks launches (`optimizer::replan`; `plan_launches_by_load`
    //   skips such a stage too).
    let cluster_load_aware = core.config.load_aware_placement;
    let (broadcasts, replans, launches, rebalanced) = core.read(|s| {
        let now = now_ms();
        let broadcasts = crate::optimizer::broadcast::runtime_broadcasts(s, now);
        let replans = replan::replans(s, now);
        let (mut launches, rebalanced) = plan_launches_by_load(s, &live, cluster_load_aware);
        launches.retain(|l| {
            let key = l.def.key.as_ref().expect("built with a key");
            !broadcasts
                .iter()
                .any(|b| matches!(b, Command::BroadcastJoin { job_id, .. } | Command::ReduceProbe { job_id, .. } if *job_id == key.job_id))
        });
        (broadcasts, replans, launches, rebalanced)
    });
    for cmd in broadcasts {
        if let Err(e) = core.propose(cmd).await {
            tracing::debug!("broadcast join not recorded: {e}");
        }
    }
    for r in replans {
        let (job, stage) = (r.job_id.clone(), r.stage);
        match core.propose(r.command()).await {
            Ok(_) => tracing::info!(%job, stage, "stage re-planned from its inputs' statistics"),
            Err(e) => tracing::debug!(%job, stage, "re-plan not recorded: {e}"),
        }
    }
    load::record_rebalance(core, rebalanced).await;
    // proposed together, so one raft Ready (one flush) records the whole wave
    let recorded = futures::future::join_all(launches.iter().map(|l| {
        let key = l.def.key.clone().expect("built with a key");
        core.propose(match &l.speculative {
            None => Command::TaskLaunched {
                job_id: key.job_id,
                stage: key.stage_id,
                task: key.task,
                attempt: key.attempt,
                worker_id: l.worker_id.clone(),
                at_ms: now_ms(),
            },
            Some((why, inputs)) => Command::SpeculativeLaunched {
                job_id: key.job_id,
                stage: key.stage_id,
                task: key.task,
                attempt: key.attempt,
                worker_id: l.worker_id.clone(),
                at_ms: now_ms(),
                why: why.clone(),
                inputs: inputs.clone(),
            },
        })
    }))
    .await;
    for (l, r) in launches.into_iter().zip(recorded) {
        if let Err(e) = r {
            tracing::debug!("launch not recorded: {e}");
            continue;
        }
        if l.def.key.as_ref().is_some_and(|k| k.attempt == 1) {
            retry::budget().deposit(); // first attempts fund the retries
        }
        let key = l.def.key.clone().expect("built with a key");
        let core = core.clone();
        tokio::spawn(async move {
            match send_launch(&l.address, l.def).await {
                Ok(()) => {}
                Err(LaunchError::Refused(why)) => {
                    // The worker is still busy (a cancelled attempt it has not stopped
                    // yet): not an attempt. No launches there until it heartbeats.
                    tracing::debug!(worker = %l.worker_id, job = %key.job_id, stage = key.stage_id, task = key.task, "launch refused: {why}");
                    mark_unreachable(&core, &l.worker_id);
                    let cmd = Command::LaunchRefused {
                        job_id: key.job_id.clone(),
                        stage: key.stage_id,
                        task: key.task,
                        attempt: key.attempt,
                        worker_id: l.worker_id.clone(),
                    };
                    if let Err(e) = core.propose(cmd).await {
                        tracing::debug!("refusal not recorded: {e}");
                    }
                }
                Err(LaunchError::Failed(e)) => {
                    tracing::warn!(worker = %l.worker_id, job = %key.job_id, stage = key.stage_id, task = key.task, "launch failed: {e}");
                    if e.class() == ErrorClass::Transient {
                        // The worker, not the task, is at fault (Spark does not count an
                        // executor loss against a task): no more launches there until it
                        // heartbeats again, and the attempt is not counted.
                        mark_unreachable(&core, &l.worker_id);
                        let mut rec = error_record(&e);
                        rec.worker_unreachable = true;
                        propose_failure(&core, &key, rec, true).await;
                        probe_worker(&core, &l.worker_id).await;
                    } else {
                        report_failure(&core, &key, &e).await;
                    }
                }
            }
        });
    }
}

/// No launches to `worker_id` until its next heartbeat.
fn mark_unreachable(core: &Core, worker_id: &str) {
    if let Some(l) = core
        .liveness
        .lock()
        .expect("liveness lock poisoned")
        .get_mut(worker_id)
    {
        l.unreachable = true;
    }
}

/// Why a launch did not start an attempt.
enum LaunchError {
    /// the worker answered that it has no free slot: nothing started
    Refused(String),
    /// anything else (the attempt may or may not run)
    Failed(Error),
}

async fn send_launch(address: &str, def: pb::TaskDefinition) -> Result<(), LaunchError> {
    let ch = channel_to(address).map_err(LaunchError::Failed)?;
    let mut client = pb::worker_control_client::WorkerControlClient::new(ch)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let mut req = tonic::Request::new(def);
    req.set_timeout(Duration::from_secs(10));
    match client.launch_task(req).await {
        Ok(_) => Ok(()),
        Err(s)
            if s.code() == tonic::Code::ResourceExhausted
                && (s.message() == autopipe_common::task::NO_FREE_SLOT
                    || s.message() == autopipe_common::task::DRAINING) =>
        {
            Err(LaunchError::Refused(s.message().to_string()))
        }
        Err(s) => Err(LaunchError::Failed(Error::from_status(&s))),
    }
}

/// Records a failed attempt (launch error or worker report).
pub async fn report_failure(core: &Core, key: &pb::TaskKey, e: &Error) {
    let class = e.class();
    core.metrics.error(class_name(class));
    if e.is_out_of_memory() {
        give_more_memory(core, key).await;
    }
    propose_failure(core, key, error_record(e), class == ErrorClass::Transient).await;
}

/// After an attempt ran out of memory: its task's next attempts get a larger share
/// (`optimizer::memory`), recorded as a `memory_retry` decision.
async fn give_more_memory(core: &Core, key: &pb::TaskKey) {
    let share = core
        .read(|s| crate::optimizer::memory::larger_share(s, &key.job_id, key.stage_id, key.task));
    let Some(x) = share else { return };
    let cmd = Command::TaskMemory {
        job_id: key.job_id.clone(),
        stage: key.stage_id,
        task: key.task,
        slots: x.slots,
    };
    if let Err(e) = core.propose(cmd).await {
        tracing::debug!("memory share not recorded: {e}");
        return;
    }
    let decision = Decision {
        id: 0,
        at_ms: now_ms(),
        job_id: key.job_id.clone(),
        kind: DecisionKind::MemoryRetry,
        what: format!(
            "stage {} task {} runs its next attempts with {} task slots' memory",
            key.stage_id, key.task, x.slots
        ),
        why: x.why,
        inputs: x.inputs,
        effect: None,
    };
    if let Err(e) = core.propose(Command::RecordDecision { decision }).await {
        tracing::debug!("memory decision not recorded: {e}");
    }
}

/// Proposes the failure of an attempt, with its backoff; `None` when the state did
/// not take it (the attempt is no longer running).
pub async fn propose_failure(
    core: &Core,
    key: &pb::TaskKey,
    error: ErrorRecord,
    retryable: bool,
) -> Option<Outcome> {
    // Backoff before the next attempt: full jitter over the one retry policy.
    let failures = core.read(|s| {
        s.jobs
            .get(&key.job_id)
            .and_then(|j| j.stages.get(key.stage_id as usize))
            .and_then(|st| st.tasks.get(key.task as usize))
            .map(|t| t.failures)
            .unwrap_or(0)
    });
    let mut backoff = RetryPolicy {
        base: Duration::from_millis(100),
        cap: Duration::from_secs(5),
        max_attempts: u32::MAX,
    }
    .backoff(failures);
    // a retry draws on the retry budget; when it is spent the task waits longer
    if retryable && !retry::budget().withdraw() {
        backoff = backoff.max(BUDGET_WAIT);
        tracing::warn!(job = %key.job_id, stage = key.stage_id, task = key.task, "retry budget exhausted: the retry waits {BUDGET_WAIT:?}");
    }
    let mut cmd = Command::TaskFailed {
        job_id: key.job_id.clone(),
        stage: key.stage_id,
        task: key.task,
        attempt: key.attempt,
        error,
        retryable,
        retry_at_ms: now_ms() + backoff.as_millis() as u64,
        at_ms: now_ms(),
        retry_limit: None,
    };
    // the retry-limit rule's outcome travels in the command
    let outcome = core.read(|s| crate::optimizer::retry_limit::outcome(s, &cmd));
    if let Command::TaskFailed { retry_limit, .. } = &mut cmd {
        *retry_limit = Some(outcome);
    }
    match core.propose(cmd).await {
        Ok(Outcome::JobChanged(job_id, JobState::Failed)) => {
            job_failed_alert(core, &job_id);
            Some(Outcome::JobChanged(job_id, JobState::Failed))
        }
        Ok(o) => Some(o),
        Err(err) => {
            tracing::debug!("failure not recorded: {err}");
            None
        }
    }
}

/// Raises the alert for a job that just failed, with its recorded error.
fn job_failed_alert(core: &Core, job_id: &str) {
    let msg = core.read(|s| {
        s.jobs
            .get(job_id)
            .and_then(|j| j.error.as_ref())
            .map(|e| format!("job {job_id} failed ({}): {}", e.class, e.message))
            .unwrap_or_else(|| format!("job {job_id} failed"))
    });
    alerts::raise(core, AlertKind::JobFailed, job_id, &msg);
}

/// State form of an error.
pub fn error_record(e: &Error) -> ErrorRecord {
    let d = e.to_detail();
    ErrorRecord {
        class: class_name(e.class()).to_string(),
        message: d.message,
        key: d.key,
        worker_unreachable: false,
        fetch_failed: match e {
            Error::FetchFailed {
                stage_id,
                map_task,
                worker_id,
                ..
            } => Some(FetchFailedRecord {
                stage: *stage_id,
                map_task: *map_task,
                worker_id: worker_id.clone(),
            }),
            _ => None,
        },
    }
}

/// Lower-case class name.
pub fn class_name(c: ErrorClass) -> &'static str {
    match c {
        ErrorClass::Transient => "transient",
        ErrorClass::Permanent => "permanent",
        ErrorClass::Data => "data",
    }
}

/// Decides launches with load-aware placement on by default (as the cluster flag
/// leaves it); see `plan_launches_by_load`.
#[cfg(test)]
fn plan_launches(s: &State, live: &HashMap<String, u32>) -> Vec<Launch> {
    plan_launches_by_load(s, live, true).0
}

/// The launches of one scheduler wave, and per (job, stage) how load-aware placement
/// differed from plain spreading (`optimizer::placement`).
type Planned = (Vec<Launch>, BTreeMap<(String, u32), Rebalanced>);

/// Decides launches: jobs in submission order, ready stages in order, tasks onto the
/// alive worker with the most headroom (`optimizer::placement`: free slots, and the
/// load and speed its heartbeats and tasks showed, where the job's
/// `load_aware_placement` or else `load_aware` lets it; otherwise the most free slots),
/// avoiding workers where the task already failed while others are alive; then
/// speculative copies of stragglers onto the slots left. `live` maps each
/// heartbeating worker to the attempts it was asked to stop and still runs: such a
/// slot is free only once the worker stopped it.
fn plan_launches_by_load(s: &State, live: &HashMap<String, u32>, load_aware: bool) -> Planned {
    let running = s.running_per_worker();
    let since = running_since(s);
    let now = now_ms();
    let mut free: Vec<Slots> = s
        .workers
        .values()
        .filter_map(|w| {
            let stopping = *live.get(&w.id).filter(|_| w.state == WorkerState::Alive)?;
            let busy = running.get(w.id.as_str()).copied().unwrap_or(0) + stopping;
            Some(Slots {
                worker: w.id.clone(),
                free: w.slots as i64 - busy as i64,
                slots: w.slots as i64,
                load: w.load.clone(),
                running_since: since.get(w.id.as_str()).cloned().unwrap_or_default(),
            })
        })
        .collect();
    let before = free.clone();
    let mut out = Vec::new();
    let mut rebalanced: BTreeMap<(String, u32), Rebalanced> = BTreeMap::new();
    let running_jobs = || {
        s.job_order
            .iter()
            .map(|id| &s.jobs[id])
            .filter(|j| j.state == JobState::Running)
    };
    // Background jobs (compactions) take only slots no user job waits for: they
    // launch after every user job, and nothing of theirs while a user job has a
    // task waiting for a slot.
    let background = running_jobs().any(|j| j.compaction.is_some());
    let user_waiting = background
        && running_jobs().any(|j| {
            j.compaction.is_none()
                && (0..j.stages.len()).any(|si| {
                    j.stage_ready(si)
                        && (0..j.stages[si].tasks.len()).any(|ti| j.task_waits(si, ti, now))
                })
        });
    let in_turn = || {
        running_jobs()
            .filter(|j| j.compaction.is_none())
            .chain(running_jobs().filter(|j| j.compaction.is_some() && !user_waiting))
    };
    // a job's `load_aware_placement`, else the cluster's
    let by_load = |job: &Job| {
        job.spec
            .job
            .params
            .load_aware_placement
            .unwrap_or(load_aware)
    };
    'jobs: for job in in_turn() {
        let by_load = by_load(job);
        for (si, stage) in job.stages.iter().enumerate() {
            // a stage whose inputs completed after this tick's re-plans were read waits
            // for the next tick's re-plan rather than launch as planned at submit
            if !job.stage_ready(si) || replan::replan(s, job, si as u32, now).is_some() {
                continue;
            }
            let mut ctx = by_load.then(|| StageContext {
                speeds: placement::speeds(job, si),
                pending: (0..stage.tasks.len())
                    .filter(|&ti| job.task_waits(si, ti, u64::MAX))
                    .count(),
                may_wait: true,
                now_ms: now,
            });
            for (ti, task) in stage.tasks.iter().enumerate() {
                if !job.task_waits(si, ti, now) {
                    continue;
                }
                if !free.iter().any(|f| f.free > 0) {
                    break 'jobs;
                }
                // elsewhere than where it failed, unless it failed everywhere
                let failed_everywhere = free.iter().all(|f| task.failed_on.contains(&f.worker));
                let placed = take_slot(&mut free, task.memory_slots, ctx.as_ref(), |w| {
                    failed_everywhere || !task.failed_on.iter().any(|f| f == w)
                });
                if let Some(c) = ctx.as_mut() {
                    c.pending = c.pending.saturating_sub(1);
                }
                let Some(placed) = placed else { continue };
                rebalanced
                    .entry((job.id.clone(), si as u32))
                    .or_default()
                    .note(&placed);
                let Some(wid) = placed.worker else { continue };
                let worker = &s.workers[&wid];
                out.push(Launch {
                    worker_id: wid.clone(),
                    address: worker.address.clone(),
                    def: task_definition(s, job, si, ti, task.attempts + 1, &wid),
                    speculative: None,
                });
            }
        }
    }
    for job in running_jobs() {
        let spec = job.spec.job.params.speculation();
        // a consumer task runs until cancelled: a copy would read its partitions twice
        if !spec.enabled || job.stream.is_some() {
            continue;
        }
        let by_load = by_load(job);
        for (si, stage) in job.stages.iter().enumerate() {
            // a copy reads the inputs as they are now: never while one is recomputed
            if !job.stage_ready(si) {
                continue;
            }
            // a copy goes to the fastest worker with room (it never waits)
            let ctx = by_load.then(|| StageContext {
                speeds: placement::speeds(job, si),
                pending: 0,
                may_wait: false,
                now_ms: now,
            });
            for x in speculation::stragglers(stage, &spec, now) {
                let task = &stage.tasks[x.task];
                let TaskState::Running {
                    worker_id: original,
                    ..
                } = &task.state
                else {
                    continue;
                };
                let Some(wid) = take_slot(&mut free, task.memory_slots, ctx.as_ref(), |w| {
                    w != original && !task.failed_on.iter().any(|f| f == w)
                })
                .and_then(|p| p.worker) else {
                    continue;
                };
                let why = format!(
                    "stage {si} task {} had run {} ms, more than {} ms = max({} x the median of {} finished tasks ({} ms), speculation_min_runtime_ms {}), once {} of {} tasks (quantile {}) had finished",
                    x.task, x.runtime_ms, x.threshold_ms, spec.multiplier, x.finished, x.median_ms,
                    spec.min_runtime_ms, x.finished, stage.tasks.len(), spec.quantile
                );
                let inputs = inputs([
                    ("runtime_ms", x.runtime_ms.to_string()),
                    ("median_ms", x.median_ms.to_string()),
                    ("threshold_ms", x.threshold_ms.to_string()),
                    ("finished_tasks", x.finished.to_string()),
                    ("stage_tasks", stage.tasks.len().to_string()),
                    ("multiplier", spec.multiplier.to_string()),
                    ("quantile", spec.quantile.to_string()),
                    ("original_worker", original.clone()),
                ]);
                out.push(Launch {
                    worker_id: wid.clone(),
                    address: s.workers[&wid].address.clone(),
                    def: task_definition(s, job, si, x.task, task.attempts + 1, &wid),
                    speculative: Some((why, inputs)),
                });
            }
        }
    }
    rebalanced.retain(|_, r| r.any());
    for r in rebalanced.values_mut() {
        r.workers = before.clone();
    }
    (out, rebalanced)
}

/// When each attempt running on each worker started (all jobs).
fn running_since(s: &State) -> HashMap<&str, Vec<u64>> {
    let mut out: HashMap<&str, Vec<u64>> = HashMap::new();
    for job in s.jobs.values().filter(|j| j.state == JobState::Running) {
        for st in &job.stages {
            for t in &st.tasks {
                for (_, worker_id, started_ms) in t.running_attempts() {
                    out.entry(worker_id).or_default().push(started_ms);
                }
            }
        }
    }
    out
}

/// Takes `slots` slots (at least one) on a worker `ok` accepts: the one with the most
/// headroom with `ctx` (load-aware placement, `optimizer::placement`), else the one
/// with the most free slots; a task wanting more slots than a worker has takes all of
/// it. `None`: no accepted worker has room; a placement without a worker: the task
/// waits for a faster worker's slot.
fn take_slot(
    free: &mut [Slots],
    slots: u32,
    ctx: Option<&StageContext>,
    ok: impl Fn(&str) -> bool,
) -> Option<Placement> {
    placement::take(free, slots, ok, ctx)
}

/// Where a sink task attempt stages its files.
pub fn staging_prefix(job: &Job, task: usize, attempt: u32) -> String {
    format!("{}t{task}-a{attempt}/", job_staging_root(job))
}

/// The job's staging directory: a hidden sibling of the sink directory.
pub fn job_staging_root(job: &Job) -> String {
    format!("{}{}/", job.spec.sink.staging_dir(), job.id)
}

pub(crate) fn task_definition(
    s: &State,
    job: &Job,
    si: usize,
    ti: usize,
    attempt: u32,
    worker_id: &str,
) -> pb::TaskDefinition {
    let stage = &job.stages[si];
    let reads = stage.tasks[ti].reads.as_ref();
    let mut inputs = Vec::new();
    let mut input_stages = Vec::new();
    for &input in &stage.plan.inputs {
        // a later stage is a skewed aggregation's pre-merge stage, appended at run
        // time (planned stages come after their inputs): read in place of the input
        // it pre-merged, by the tasks that say so (`TaskReads::via`)
        if input as usize > si {
            continue;
        }
        let via = reads.and_then(|r| r.via.iter().find(|v| v.0 == input).map(|v| v.1));
        let source = via.unwrap_or(input);
        let map_tasks = &job.stages[source as usize].tasks;
        let mut read: Vec<u32> = (0..map_tasks.len() as u32).collect();
        // a re-planned task reads a range of a hash-shuffled input's partitions (of
        // some of its map tasks, for a skew split's side); merge inputs stay whole
        let (mut partition_start, mut partition_end) = (0, 0);
        if let Some(r) = reads {
            let hash = job.stages[input as usize]
                .plan
                .shuffle_partitions
                .is_some_and(|n| n > 1);
            if hash {
                (partition_start, partition_end) = (r.start, r.end);
            }
            if let Some(&(_, from, to)) = r.map_ranges.iter().find(|m| m.0 == input) {
                read = (from..to).collect();
            }
            if via.is_some() {
                // the pre-merge tasks of this task's partitions
                read.retain(|&m| {
                    map_tasks[m as usize]
                        .reads
                        .as_ref()
                        .is_some_and(|p| p.start < r.end && r.start < p.end)
                });
            }
        }
        input_stages.push(pb::InputStage {
            stage_id: input,
            map_tasks: read.clone(),
            partition_start,
            partition_end,
            via_stage: via,
        });
        for (mt, t) in map_tasks.iter().enumerate() {
            if !read.contains(&(mt as u32)) {
                continue;
            }
            if let TaskState::Succeeded {
                attempt, worker_id, ..
            } = &t.state
            {
                let w = s.workers.get(worker_id);
                inputs.push(pb::MapOutputLocation {
                    stage_id: source,
                    map_task: mt as u32,
                    attempt: *attempt,
                    worker_id: worker_id.clone(),
                    address: w.map(|w| w.address.clone()).unwrap_or_default(),
                    host_id: w.map(|w| w.shuffle.host_id.clone()).unwrap_or_default(),
                    shuffle_dir: w.map(|w| w.shuffle.dir.clone()).unwrap_or_default(),
                });
            }
        }
    }
    let output = match stage.plan.shuffle_partitions {
        Some(n) => pb::task_definition::Output::Shuffle(pb::ShuffleOutput { partitions: n }),
        None => pb::task_definition::Output::Sink(pb::SinkOutput {
            format: job.spec.sink.format.file_format().name().to_string(),
            staging_url: staging_prefix(job, ti, attempt),
            partition_by: job.spec.sink.partition_by.clone(),
        }),
    };
    let mut store_urls: Vec<String> = job
        .spec
        .sources
        .iter()
        .filter(|s| s.format != Format::Kafka)
        .map(|s| s.path.clone())
        .collect();
    if job.spec.sink.format != Format::Kafka {
        store_urls.push(job.spec.sink.path.clone());
    }
    // (a kafka sink's job stages state and dead letters there)
    store_urls.push(job.spec.sink.staging_dir());
    let stream = job.stream.as_ref().map(|st| pb::StreamTask {
        spec_json: serde_json::to_string(&job.spec).expect("a spec serializes"),
        partitions: st.assignment[ti]
            .iter()
            .map(|p| {
                let x = st.partitions.get(p);
                pb::PartitionStart {
                    partition: *p,
                    offset: x.and_then(|x| x.offset).unwrap_or(-1),
                    max_event_ms: x.and_then(|x| x.max_event_ms),
                    state_url: x.and_then(|x| x.state_url.clone()).unwrap_or_default(),
                }
            })
            .collect(),
        staging_url: staging_prefix(job, ti, attempt),
        dead_letter_url: format!("{}dead-letter/t{ti}-a{attempt}/", job_staging_root(job)),
        state_url: format!("{}state/", job_staging_root(job)),
        emitted_until_ms: st.emitted_until,
    });
    pb::TaskDefinition {
        key: Some(pb::TaskKey {
            job_id: job.id.clone(),
            stage_id: si as u32,
            task: ti as u32,
            attempt,
        }),
        plan: stage.plan.plan.as_ref().clone(),
        // a split task (dynamic rebalancing) scans its slice of a plan partition
        partition: reads
            .map(|r| r.start)
            .or(stage.tasks[ti].scan.as_ref().map(|s| s.partition)),
        scan: stage.tasks[ti].scan.as_ref().map(|s| pb::FileGroupNode {
            ranges: s.ranges.iter().map(|r| r.to_node()).collect(),
        }),
        dynamic_split: crate::optimizer::liquid::splittable(job, si),
        output: Some(output),
        inputs,
        input_stages,
        slots: job.stages[si].tasks[ti].memory_slots.clamp(
            1,
            s.workers
                .get(worker_id)
                .map(|w| w.slots)
                .unwrap_or(1)
                .max(1),
        ),
        store_urls,
        memory_limit_bytes: 0,
        worker_id: worker_id.to_string(),
        dead_letter_url: format!(
            "{}dead-letter/s{si}-t{ti}-a{attempt}.ndjson",
            job_staging_root(job)
        ),
        stream,
    }
}

/// Backoff between attempts of a commit that failed with a transient error.
const COMMIT_RETRY: RetryPolicy = RetryPolicy {
    base: Duration::from_millis(200),
    cap: Duration::from_secs(10),
    max_attempts: u32::MAX,
};

/// Commits every job whose stages are complete, and re-drives commits in progress
/// (after a leader change, a deadline, or a transient error that outlived its
/// retries). A commit is fenced by the term it started in; transient errors are
/// retried (backoff, retry budget) and never fail the job; a permanent or data error
/// fails it.
async fn start_commits(core: &Arc<Core>, committing: &Arc<Mutex<HashSet<String>>>) {
    let ready: Vec<(String, JobState)> = core.read(|s| {
        s.jobs
            .values()
            .filter(|j| {
                (j.state == JobState::Running && j.stages.iter().all(|st| st.is_complete()))
                    || j.state == JobState::Committing
            })
            .map(|j| (j.id.clone(), j.state))
            .collect()
    });
    for (job_id, state) in ready {
        if !committing.lock().expect("lock").insert(job_id.clone()) {
            continue;
        }
        if state == JobState::Running {
            if let Err(e) = core
                .propose(Command::JobCommitting {
                    job_id: job_id.clone(),
                })
                .await
            {
                tracing::warn!(job = %job_id, "cannot start commit: {e}");
                committing.lock().expect("lock").remove(&job_id);
                continue;
            }
        }
        let core = core.clone();
        let committing = committing.clone();
        tokio::spawn(async move {
            if let Some(job) = core.read(|s| s.jobs.get(&job_id).cloned()) {
                drive_commit(&core, job).await;
            }
            committing.lock().expect("lock").remove(&job_id);
        });
    }
}

/// Runs one job's commit to its recorded end, unless this coordinator is deposed or
/// the deadline passes (then the next leader loop starts it again).
async fn drive_commit(core: &Arc<Core>, job: Job) {
    let job_id = job.id.clone();
    let term = core.raft.status().term;
    let fence_core = core.clone();
    let fence = move || leads_in(&fence_core, term);
    let deadline = core.config.commit_timeout;
    let hang = core.config.test_commit_hang;
    let run = async {
        if !hang.is_zero() && first_drive(&job_id) {
            tokio::time::sleep(hang).await; // test-only: a store that stopped answering
        }
        retry_transient(&fence, || commit::commit_job(&job, &fence)).await
    };
    let cmd = match tokio::time::timeout(deadline, run).await {
        Err(_) => {
            tracing::warn!(job = %job_id, "commit did not finish within {deadline:?}; it starts again");
            return;
        }
        Ok(Ok(files)) => {
            tracing::info!(job = %job_id, files = files.len(), "job committed");
            Command::JobSucceeded {
                job_id: job_id.clone(),
                files,
                at_ms: now_ms(),
            }
        }
        Ok(Err(e)) if e.class() == ErrorClass::Transient => {
            tracing::warn!(job = %job_id, "commit interrupted ({e}); it starts again");
            return;
        }
        Ok(Err(e)) => {
            tracing::error!(job = %job_id, "commit failed: {e}");
            if let Error::Data(m) = &e {
                alerts::raise(core, AlertKind::BadRecordRatio, &job_id, m);
            }
            Command::JobFailed {
                job_id: job_id.clone(),
                error: error_record(&e),
                at_ms: now_ms(),
            }
        }
    };
    if fence().is_err() {
        return; // the new leader redoes the commit and records its end
    }
    match core.propose(cmd).await {
        Ok(Outcome::JobChanged(id, JobState::Failed)) => job_failed_alert(core, &id),
        Ok(_) => {}
        Err(e) => tracing::warn!(job = %job_id, "cannot record commit result: {e}"),
    }
}

/// Test-only (`test_commit_hang`): true the first time a job's commit is driven.
fn first_drive(job_id: &str) -> bool {
    static DRIVEN: std::sync::OnceLock<Mutex<HashSet<String>>> = std::sync::OnceLock::new();
    DRIVEN
        .get_or_init(Default::default)
        .lock()
        .expect("lock")
        .insert(job_id.to_string())
}

/// Ok while this coordinator leads in `term`.
fn leads_in(core: &Core, term: u64) -> autopipe_common::Result<()> {
    let st = core.raft.status();
    if st.role == crate::raft::Role::Leader && st.term == term {
        Ok(())
    } else {
        Err(Error::Transient(format!(
            "coordinator {} no longer leads in term {term} (now term {}, {})",
            st.id,
            st.term,
            st.role.as_str()
        )))
    }
}

/// Runs `op` until it succeeds or fails with a non-transient error, or `fence` fails;
/// transient failures wait a full-jitter backoff, longer when the retry budget is
/// spent.
async fn retry_transient<T, F, Fut>(
    fence: &(dyn Fn() -> autopipe_common::Result<()> + Send + Sync),
    mut op: F,
) -> autopipe_common::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = autopipe_common::Result<T>>,
{
    let mut attempt = 0;
    loop {
        fence()?;
        match op().await {
            Err(e) if e.class() == ErrorClass::Transient => {
                fence()?;
                let mut wait = COMMIT_RETRY.backoff(attempt);
                if !retry::budget().withdraw() {
                    wait = wait.max(BUDGET_WAIT);
                }
                tracing::warn!("transient error, retried in {wait:?}: {e}");
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Terminal jobs whose cleanup has not run (recorded in the state, so this holds
/// across leader changes), except those in `busy`.
fn to_clean_up<'a>(s: &'a State, busy: &HashSet<String>) -> Vec<&'a Job> {
    s.jobs
        .values()
        .filter(|j| j.state.is_terminal() && !j.cleaned && !busy.contains(&j.id))
        .collect()
}

/// How long a cleanup whose staging could not be deleted (a transient error) waits
/// before it is tried again.
const CLEANUP_RETRY: Duration = Duration::from_secs(5);

/// Once a job is terminal: cancel its attempts still running, drop its staging, ask
/// workers to delete its shuffle files, and record that it was done (`JobCleaned`),
/// so a new leader cleans up only the jobs not cleaned yet instead of every job ever
/// run. A worker that misses the request (down, unreachable) deletes the files when
/// its heartbeat lists them (`WorkerService::heartbeat`, `worker/src/sweep.rs`).
/// `cleaning`: jobs whose cleanup is under way here.
fn cleanup_finished(core: &Arc<Core>, cleaning: &Arc<Mutex<HashSet<String>>>) {
    let busy = cleaning.lock().expect("lock").clone();
    let todo: Vec<(Job, Vec<(String, String)>)> = core.read(|s| {
        to_clean_up(s, &busy)
            .into_iter()
            .map(|j| {
                let workers = s
                    .workers
                    .values()
                    .filter(|w| w.state == WorkerState::Alive)
                    .map(|w| (w.id.clone(), w.address.clone()))
                    .collect();
                (j.clone(), workers)
            })
            .collect()
    });
    for (job, workers) in todo {
        cleaning.lock().expect("lock").insert(job.id.clone());
        // its attempts still running stop now (cancel_orphans retries any cancel that
        // does not arrive)
        for (si, st) in job.stages.iter().enumerate() {
            for (ti, t) in st.tasks.iter().enumerate() {
                for (attempt, worker_id, _) in t.running_attempts() {
                    let key = pb::TaskKey {
                        job_id: job.id.clone(),
                        stage_id: si as u32,
                        task: ti as u32,
                        attempt,
                    };
                    let (core, worker_id) = (core.clone(), worker_id.to_string());
                    tokio::spawn(async move { cancel_attempt(&core, &worker_id, key).await });
                }
            }
        }
        let (core, cleaning) = (core.clone(), cleaning.clone());
        tokio::spawn(async move {
            let done = || cleaning.lock().expect("lock").remove(&job.id);
            // a streaming job's committed batches reach the sink before its staging goes
            if job.stream.is_some() {
                if let Err(e) = stream::publish(&core, &job.id).await {
                    tracing::warn!(job = %job.id, "cannot publish committed batches now, tried again in {CLEANUP_RETRY:?}: {e}");
                    tokio::time::sleep(CLEANUP_RETRY).await;
                    done();
                    return;
                }
            }
            if job.state != JobState::Succeeded {
                match commit::discard_staging(&job).await {
                    Ok(()) => {}
                    Err(e) if e.class() == ErrorClass::Transient => {
                        tracing::warn!(job = %job.id, "cannot delete staging now, tried again in {CLEANUP_RETRY:?}: {e}");
                        tokio::time::sleep(CLEANUP_RETRY).await;
                        done();
                        return;
                    }
                    Err(e) => tracing::warn!(job = %job.id, "cannot delete staging: {e}"),
                }
            }
            for (wid, addr) in workers {
                let Ok(ch) = channel_to(&addr) else { continue };
                let mut client = pb::worker_control_client::WorkerControlClient::new(ch);
                let mut req = tonic::Request::new(pb::CleanupJobRequest {
                    job_id: job.id.clone(),
                });
                req.set_timeout(Duration::from_secs(5));
                if let Err(e) = client.cleanup_job(req).await {
                    tracing::debug!(worker = %wid, "cleanup of job {} failed: {e}", job.id);
                }
            }
            let cmd = Command::JobCleaned {
                job_id: job.id.clone(),
            };
            if let Err(e) = core.propose(cmd).await {
                tracing::debug!(job = %job.id, "cleanup not recorded: {e}");
            }
            done();
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optimizer::speculation::{stragglers, Straggler};
    use crate::optimizer::timeouts::expired_attempts;

    use crate::state::test_state as state_with;

    fn live(ids: &[&str]) -> HashMap<String, u32> {
        ids.iter().map(|i| (i.to_string(), 0)).collect()
    }

    #[test]
    fn launches_fill_free_slots_spreading_over_workers_and_only_ready_stages() {
        let s = state_with(&[("w1", 2), ("w2", 2)], 3);
        let l = plan_launches(&s, &live(&["w1", "w2"]));
        // 3 map tasks, the sink stage waits for them
        assert_eq!(l.len(), 3);
        assert!(l.iter().all(|x| x.def.key.as_ref().unwrap().stage_id == 0));
        let on_w1 = l.iter().filter(|x| x.worker_id == "w1").count();
        assert!((1..=2).contains(&on_w1), "spread over both workers");
        assert_eq!(l[0].def.worker_id, l[0].worker_id);
    }

    #[test]
    fn a_compaction_job_takes_only_slots_no_user_job_waits_for() {
        // a compaction submitted first, a user job after it
        let mut s = State::default();
        s.apply(&Command::RegisterWorker {
            worker_id: "w1".into(),
            address: "w1:1".into(),
            http_address: String::new(),
            slots: 2,
            at_ms: 0,
            shuffle: Default::default(),
        })
        .unwrap();
        s.apply(&crate::state::test_job_as("compact", 3, Some("file:///t/")))
            .unwrap();
        s.apply(&crate::state::test_job_as("user", 3, None))
            .unwrap();
        // the user job waits for both slots (3 map tasks): nothing of the compaction
        let l = plan_launches(&s, &live(&["w1"]));
        assert_eq!(l.len(), 2);
        assert!(
            l.iter()
                .all(|x| x.def.key.as_ref().unwrap().job_id == "user"),
            "user first"
        );
        // once no user task waits, the compaction takes the slots left
        s.apply(&Command::CancelJob {
            job_id: "user".into(),
            at_ms: 1,
        })
        .unwrap();
        let l = plan_launches(&s, &live(&["w1"]));
        assert_eq!(l.len(), 2);
        assert!(l
            .iter()
            .all(|x| x.def.key.as_ref().unwrap().job_id == "compact"));
    }

    #[test]
    fn no_slot_no_launch_and_silent_workers_get_nothing() {
        let s = state_with(&[("w1", 1), ("w2", 4)], 3);
        let l = plan_launches(&s, &live(&["w1"]));
        assert_eq!(l.len(), 1, "only w1 heartbeats and it has one slot");
        assert_eq!(l[0].worker_id, "w1");
    }

    #[test]
    fn a_stage_the_rules_would_re_plan_does_not_launch_as_planned() {
        let mut s = state_with(&[("w1", 4)], 1);
        crate::state::test_launch(&mut s, (0, 0, 1), "w1", 1).unwrap();
        s.apply(&Command::TaskSucceeded {
            job_id: "j".into(),
            stage: 0,
            task: 0,
            attempt: 1,
            result: crate::state::TaskResult {
                partitions: vec![(1, 100), (1, 100)],
                ..Default::default()
            },
            at_ms: 2,
        })
        .unwrap();
        // the map output completed after this tick's re-plans were read: the sink's
        // two planned tasks would be coalesced, so neither launches yet
        assert!(plan_launches(&s, &live(&["w1"])).is_empty());
        let r = replan::replan(&s, &s.jobs["j"], 1, 10).expect("coalesced");
        s.apply(&r.command()).unwrap();
        let l = plan_launches(&s, &live(&["w1"]));
        assert_eq!(l.len(), 1, "the re-planned stage launches its one task");
    }

    #[test]
    fn a_task_in_backoff_waits() {
        let mut s = state_with(&[("w1", 4)], 1);
        s.apply(&Command::TaskLaunched {
            job_id: "j".into(),
            stage: 0,
            task: 0,
            attempt: 1,
            worker_id: "w1".into(),
            at_ms: 1,
        })
        .unwrap();
        s.apply(&Command::TaskFailed {
            job_id: "j".into(),
            stage: 0,
            task: 0,
            attempt: 1,
            error: ErrorRecord {
                class: "transient".into(),
                message: "reset".into(),
                key: String::new(),
                fetch_failed: None,
                worker_unreachable: false,
            },
            retryable: true,
            retry_at_ms: now_ms() + 60_000,
            at_ms: 0,
            retry_limit: None,
        })
        .unwrap();
        assert!(plan_launches(&s, &live(&["w1"])).is_empty());
    }

    /// A state with `tasks` map tasks on w1 and w2 (w3 idle), of which `done` finished after `dur` ms and the rest run since `since`.
    fn stage_with_stragglers(tasks: u32, done: u32, dur: u64, since: u64) -> State {
        let mut s = state_with(&[("w1", 8), ("w2", 8), ("w3", 8)], tasks);
        for t in 0..tasks {
            let w = ["w1", "w2"][t as usize % 2];
            let started = if t < done { 1_000 } else { since };
            s.apply(&Command::TaskLaunched {
                job_id: "j".into(),
                stage: 0,
                task: t,
                attempt: 1,
                worker_id: w.into(),
                at_ms: started,
            })
            .unwrap();
            if t < done {
                s.apply(&Command::TaskSucceeded {
                    job_id: "j".into(),
                    stage: 0,
                    task: t,
                    attempt: 1,
                    result: Default::default(),
                    at_ms: started + dur,
                })
                .unwrap();
            }
        }
        s
    }

    fn spark_defaults() -> autopipe_common::spec::Speculation {
        autopipe_common::spec::JobParams::default().speculation()
    }

    #[test]
    fn stragglers_follow_sparks_rule() {
        let now = 100_000;
        // 9 of 10 done (quantile 0.9) in 2 s each; the last has run 7 s > 3 x 2 s
        let s = stage_with_stragglers(10, 9, 2_000, now - 7_000);
        let st = &s.jobs["j"].stages[0];
        let x = stragglers(st, &spark_defaults(), now);
        assert_eq!(
            x,
            vec![Straggler {
                task: 9,
                runtime_ms: 7_000,
                median_ms: 2_000,
                threshold_ms: 6_000,
                finished: 9
            }]
        );
        // not yet past 3 x the median
        let s = stage_with_stragglers(10, 9, 2_000, now - 5_000);
        assert!(stragglers(&s.jobs["j"].stages[0], &spark_defaults(), now).is_empty());
        // too few done: 8 of 10 is below the 0.9 quantile
        let s = stage_with_stragglers(10, 8, 2_000, now - 60_000);
        assert!(stragglers(&s.jobs["j"].stages[0], &spark_defaults(), now).is_empty());
        // fast stages: the minimum runtime holds
        let s = stage_with_stragglers(10, 9, 10, now - 900);
        assert!(stragglers(&s.jobs["j"].stages[0], &spark_defaults(), now).is_empty());
    }

    #[test]
    fn a_straggler_gets_one_copy_on_another_worker_unless_speculation_is_off() {
        let now = now_ms();
        let s = stage_with_stragglers(10, 9, 10, now - 5_000);
        let l = plan_launches(&s, &live(&["w1", "w2", "w3"]));
        let copies: Vec<_> = l.iter().filter(|x| x.speculative.is_some()).collect();
        assert_eq!(
            copies.len(),
            1,
            "{:?}",
            l.iter().map(|x| &x.worker_id).collect::<Vec<_>>()
        );
        // task 9 runs on w2; the copy goes to the worker with the most free slots
        assert_eq!(copies[0].worker_id, "w1");
        let key = copies[0].def.key.clone().unwrap();
        assert_eq!((key.task, key.attempt), (9, 2));
        let (why, inputs) = copies[0].speculative.clone().unwrap();
        assert!(why.contains("median"), "{why}");
        assert_eq!(inputs["original_worker"], "w2");

        let mut s = s;
        s.jobs.get_mut("j").unwrap().spec.job.params.speculation = Some(false);
        let l = plan_launches(&s, &live(&["w1", "w2", "w3"]));
        assert!(l.iter().all(|x| x.speculative.is_none()));
    }

    /// Map tasks 0..3 done on w1, w1, w2; reducer 0 done, reducer 1 running on w2
    /// since long ago; speculation fires at once (quantile 0.5, multiplier 1).
    fn reducer_straggling_over(s: &mut State, now: u64) {
        let params = &mut s.jobs.get_mut("j").unwrap().spec.job.params;
        params.speculation_quantile = Some(0.5);
        params.speculation_multiplier = Some(1.0);
        params.speculation_min_runtime_ms = Some(100);
        for (t, w) in ["w1", "w1", "w2"].iter().enumerate() {
            launch(s, 0, t as u32, w, now - 60_000);
            succeed(s, 0, t as u32, now - 59_000);
        }
        launch(s, 1, 0, "w3", now - 50_000);
        succeed(s, 1, 0, now - 49_900);
        launch(s, 1, 1, "w2", now - 50_000);
    }

    fn launch(s: &mut State, stage: u32, task: u32, w: &str, at_ms: u64) {
        crate::state::test_launch(s, (stage, task, 1), w, at_ms).unwrap();
    }

    fn succeed(s: &mut State, stage: u32, task: u32, at_ms: u64) {
        crate::state::test_succeed(s, (stage, task, 1), at_ms).unwrap();
    }

    #[test]
    fn a_straggling_reducer_gets_no_copy_while_a_map_output_is_recomputed() {
        let now = now_ms();
        let mut s = state_with(&[("w1", 4), ("w2", 4), ("w3", 4)], 3);
        reducer_straggling_over(&mut s, now);
        // with its inputs complete, the straggler gets a copy that reads all 3 outputs
        let l = plan_launches(&s, &live(&["w1", "w2", "w3"]));
        let copy = l.iter().find(|x| x.speculative.is_some()).expect("a copy");
        assert_eq!(copy.def.inputs.len(), 3);
        assert_eq!(
            copy.def.input_stages,
            vec![pb::InputStage {
                stage_id: 0,
                map_tasks: vec![0, 1, 2],
                ..Default::default()
            }]
        );
        // w1 is lost: map tasks 0 and 1 are recomputed, and the copy waits for them
        s.apply(&Command::WorkerLost {
            worker_id: "w1".into(),
            at_ms: now,
        })
        .unwrap();
        let l = plan_launches(&s, &live(&["w2", "w3"]));
        assert!(
            l.iter().all(|x| x.speculative.is_none()),
            "a copy on partial input"
        );
        let keys: Vec<_> = l
            .iter()
            .map(|x| x.def.key.as_ref().map(|k| (k.stage_id, k.task)).unwrap())
            .collect();
        assert_eq!(keys, vec![(0, 0), (0, 1)]);
        // and the state machine refuses one
        let copy = Command::SpeculativeLaunched {
            job_id: "j".into(),
            stage: 1,
            task: 1,
            attempt: 2,
            worker_id: "w3".into(),
            at_ms: now,
            why: String::new(),
            inputs: Default::default(),
        };
        assert!(
            matches!(s.apply(&copy), Err(crate::state::ApplyError::Illegal(m)) if m.contains("not ready"))
        );
    }

    #[test]
    fn a_slot_whose_cancelled_attempt_still_runs_is_not_free() {
        let s = state_with(&[("w1", 2), ("w2", 2)], 3);
        // w1 still runs 2 attempts it was asked to stop
        let live: HashMap<String, u32> = [("w1".to_string(), 2), ("w2".to_string(), 0)].into();
        let l = plan_launches(&s, &live);
        assert_eq!(l.len(), 2);
        assert!(l.iter().all(|x| x.worker_id == "w2"), "w1's slots are busy");
    }

    #[tokio::test]
    async fn a_transient_commit_error_is_retried_and_a_permanent_one_is_not() {
        let calls = std::sync::atomic::AtomicU32::new(0);
        let ok = || Ok(());
        let r = retry_transient(&ok, || async {
            match calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                0 | 1 => Err(Error::Transient("store timed out".into())),
                n => Ok(n),
            }
        })
        .await;
        assert_eq!(r.unwrap(), 2);
        let r: autopipe_common::Result<()> =
            retry_transient(&ok, || async { Err(Error::Permanent("denied".into())) }).await;
        assert!(matches!(r, Err(Error::Permanent(_))));
        // a deposed leader stops retrying
        let deposed = || Err(Error::Transient("deposed".into()));
        let r: autopipe_common::Result<()> =
            retry_transient(&deposed, || async { Err(Error::Transient("x".into())) }).await;
        assert!(r.unwrap_err().to_string().contains("deposed"));
    }

    #[test]
    fn a_retry_avoids_the_worker_where_the_task_failed() {
        let mut s = state_with(&[("w1", 4), ("w2", 1)], 1);
        s.apply(&Command::TaskLaunched {
            job_id: "j".into(),
            stage: 0,
            task: 0,
            attempt: 1,
            worker_id: "w1".into(),
            at_ms: 1,
        })
        .unwrap();
        s.apply(&Command::TaskFailed {
            job_id: "j".into(),
            stage: 0,
            task: 0,
            attempt: 1,
            error: ErrorRecord {
                class: "transient".into(),
                message: "timed out".into(),
                key: String::new(),
                fetch_failed: None,
                worker_unreachable: false,
            },
            retryable: true,
            retry_at_ms: 0,
            at_ms: 0,
            retry_limit: None,
        })
        .unwrap();
        let l = plan_launches(&s, &live(&["w1", "w2"]));
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].worker_id, "w2", "w1 has more free slots but failed it");
        // when it failed on every live worker, any will do
        let l = plan_launches(&s, &live(&["w1"]));
        assert_eq!(l[0].worker_id, "w1");
    }

    #[test]
    fn attempts_past_the_task_timeout_expire() {
        let now = 10_000_000;
        // derived: nothing finished yet, the first-task timeout (1 hour) holds
        let s = stage_with_stragglers(4, 0, 0, now - 3_500_000);
        assert!(expired_attempts(&s, now).is_empty());
        let mut s = stage_with_stragglers(4, 0, 0, now - 3_700_000);
        assert_eq!(expired_attempts(&s, now).len(), 4);
        let x = &expired_attempts(&s, now)[0];
        assert_eq!(x.limit_ms, 3_600_000);
        assert!(x.how.contains("first_task_timeout_ms"), "{}", x.how);
        s.jobs
            .get_mut("j")
            .unwrap()
            .spec
            .job
            .params
            .first_task_timeout_ms = Some(4_000_000);
        assert!(expired_attempts(&s, now).is_empty());
        // derived: 10 x the slowest (2 s) is below the 60 s floor
        let s = stage_with_stragglers(4, 3, 2_000, now - 61_000);
        let x = expired_attempts(&s, now);
        assert_eq!(x.len(), 1);
        assert_eq!(
            (x[0].key.task, x[0].limit_ms, x[0].ran_ms),
            (3, 60_000, 61_000)
        );
        assert!(x[0].how.starts_with("derived"), "{}", x[0].how);
        let s = stage_with_stragglers(4, 3, 2_000, now - 59_000);
        assert!(expired_attempts(&s, now).is_empty());
        // explicit, and off
        let mut s = stage_with_stragglers(4, 0, 0, now - 1_500);
        s.jobs.get_mut("j").unwrap().spec.job.params.task_timeout_ms = Some(1_000);
        assert_eq!(expired_attempts(&s, now).len(), 4);
        s.jobs.get_mut("j").unwrap().spec.job.params.task_timeout_ms = Some(0);
        assert!(expired_attempts(&s, now).is_empty());
    }

    #[test]
    fn staging_is_a_hidden_sibling_of_the_sink_per_job_and_attempt() {
        let s = state_with(&[("w1", 1)], 1);
        let job = &s.jobs["j"];
        assert_eq!(job_staging_root(job), "/tmp/.o.autopipe-staging/j/");
        assert_eq!(
            staging_prefix(job, 3, 2),
            "/tmp/.o.autopipe-staging/j/t3-a2/"
        );
    }

    #[test]
    fn a_new_leader_cleans_up_only_the_jobs_whose_cleanup_is_not_recorded() {
        let mut s = state_with(&[("w1", 1)], 1);
        let busy = HashSet::new();
        assert!(to_clean_up(&s, &busy).is_empty(), "the job still runs");
        s.apply(&Command::CancelJob {
            job_id: "j".into(),
            at_ms: 1,
        })
        .unwrap();
        let ids = |s: &State, busy: &HashSet<String>| {
            to_clean_up(s, busy)
                .iter()
                .map(|j| j.id.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&s, &busy), ["j"]);
        assert!(
            ids(&s, &HashSet::from(["j".to_string()])).is_empty(),
            "under way"
        );
        s.apply(&Command::JobCleaned { job_id: "j".into() })
            .unwrap();
        // what any leader, also a new one with nothing in memory, reads
        assert!(ids(&s, &busy).is_empty());
    }
}
