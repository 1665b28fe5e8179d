//! The scheduler loop (runs only on the raft leader): declares silent workers lost,
//! launches ready tasks onto workers with free slots, cancels tasks of cancelled or
//! failed jobs, and commits jobs whose sink stage is complete. It reads the state
//! and proposes commands; all side effects (RPCs, file moves) happen here.

pub mod commit;

use crate::alerts::{self, AlertKind};
use crate::core::Core;
use crate::state::{
    Command, ErrorRecord, FetchFailedRecord, Job, JobState, Outcome, State, TaskState, WorkerState,
};
use autopipe_common::error::{Error, ErrorClass};
use autopipe_common::retry::RetryPolicy;
use autopipe_common::shuffle::channel_to;
use autopipe_common::util::now_ms;
use autopipe_proto as pb;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Runs until `cancel`.
pub async fn run(core: Arc<Core>, cancel: CancellationToken) {
    let committing: Arc<Mutex<HashSet<String>>> = Default::default();
    let mut cleaned: HashSet<String> = HashSet::new();
    let mut was_leader = false;
    let mut status = core.raft.watch_status();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = core.wake.notified() => {},
            _ = status.changed() => {},
            _ = tokio::time::sleep(core.config.schedule_interval) => {},
        }
        if !core.raft.is_leader() {
            was_leader = false;
            continue;
        }
        if !was_leader {
            // a new leader: every worker the state knows as alive gets a fresh grace
            // period to heartbeat here before it is declared lost
            was_leader = true;
            core.seed_liveness();
        }
        detect_lost_workers(&core).await;
        launch_ready_tasks(&core).await;
        start_commits(&core, &committing).await;
        cleanup_finished(&core, &mut cleaned);
    }
}

async fn detect_lost_workers(core: &Core) {
    let timeout = core.config.heartbeat_timeout;
    let lost: Vec<String> = {
        let live = core.liveness.lock().expect("liveness lock poisoned");
        live.iter()
            .filter(|(_, l)| l.last.elapsed() > timeout)
            .map(|(id, _)| id.clone())
            .collect()
    };
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

/// One decided launch.
struct Launch {
    worker_id: String,
    address: String,
    def: pb::TaskDefinition,
}

async fn launch_ready_tasks(core: &Arc<Core>) {
    let live: HashMap<String, ()> = core
        .liveness
        .lock()
        .expect("liveness lock poisoned")
        .iter()
        .filter(|(_, l)| !l.unreachable)
        .map(|(k, _)| (k.clone(), ()))
        .collect();
    let launches = core.read(|s| plan_launches(s, &live));
    // proposed together, so one raft Ready (one flush) records the whole wave
    let recorded = futures::future::join_all(launches.iter().map(|l| {
        let key = l.def.key.clone().expect("built with a key");
        core.propose(Command::TaskLaunched {
            job_id: key.job_id,
            stage: key.stage_id,
            task: key.task,
            attempt: key.attempt,
            worker_id: l.worker_id.clone(),
            at_ms: now_ms(),
        })
    }))
    .await;
    for (l, r) in launches.into_iter().zip(recorded) {
        if let Err(e) = r {
            tracing::debug!("launch not recorded: {e}");
            continue;
        }
        let key = l.def.key.clone().expect("built with a key");
        let core = core.clone();
        tokio::spawn(async move {
            let r = send_launch(&l.address, l.def).await;
            if let Err(e) = r {
                tracing::warn!(worker = %l.worker_id, job = %key.job_id, stage = key.stage_id, task = key.task, "launch failed: {e}");
                if e.class() == ErrorClass::Transient {
                    // The worker, not the task, is at fault (Spark does not count an
                    // executor loss against a task): no more launches there until it
                    // heartbeats again, and the attempt is not counted.
                    if let Some(l) = core
                        .liveness
                        .lock()
                        .expect("liveness lock poisoned")
                        .get_mut(&l.worker_id)
                    {
                        l.unreachable = true;
                    }
                    let mut rec = error_record(&e);
                    rec.worker_unreachable = true;
                    propose_failure(&core, &key, rec, true).await;
                    probe_worker(&core, &l.worker_id).await;
                } else {
                    report_failure(&core, &key, &e).await;
                }
            }
        });
    }
}

async fn send_launch(address: &str, def: pb::TaskDefinition) -> Result<(), Error> {
    let ch = channel_to(address)?;
    let mut client = pb::worker_control_client::WorkerControlClient::new(ch)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let mut req = tonic::Request::new(def);
    req.set_timeout(Duration::from_secs(10));
    client
        .launch_task(req)
        .await
        .map_err(|s| Error::from_status(&s))?;
    Ok(())
}

/// Records a failed attempt (launch error or worker report).
pub async fn report_failure(core: &Core, key: &pb::TaskKey, e: &Error) {
    let class = e.class();
    core.metrics.error(class_name(class));
    propose_failure(core, key, error_record(e), class == ErrorClass::Transient).await;
}

/// Proposes the failure of an attempt, with its backoff.
async fn propose_failure(core: &Core, key: &pb::TaskKey, error: ErrorRecord, retryable: bool) {
    // Backoff before the next attempt: full jitter over the one retry policy.
    let failures = core.read(|s| {
        s.jobs
            .get(&key.job_id)
            .and_then(|j| j.stages.get(key.stage_id as usize))
            .and_then(|st| st.tasks.get(key.task as usize))
            .map(|t| t.failures)
            .unwrap_or(0)
    });
    let backoff = RetryPolicy {
        base: Duration::from_millis(100),
        cap: Duration::from_secs(5),
        max_attempts: u32::MAX,
    }
    .backoff(failures);
    let cmd = Command::TaskFailed {
        job_id: key.job_id.clone(),
        stage: key.stage_id,
        task: key.task,
        attempt: key.attempt,
        error,
        retryable,
        retry_at_ms: now_ms() + backoff.as_millis() as u64,
    };
    match core.propose(cmd).await {
        Ok(Outcome::JobChanged(job_id, JobState::Failed)) => job_failed_alert(core, &job_id),
        Ok(_) => {}
        Err(err) => tracing::debug!("failure not recorded: {err}"),
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

/// Decides launches: jobs in submission order, ready stages in order, tasks onto the
/// alive worker with the most free slots.
fn plan_launches(s: &State, live: &HashMap<String, ()>) -> Vec<Launch> {
    let running = s.running_per_worker();
    let mut free: Vec<(String, i64)> = s
        .workers
        .values()
        .filter(|w| w.state == WorkerState::Alive && live.contains_key(&w.id))
        .map(|w| {
            let busy = running.get(w.id.as_str()).copied().unwrap_or(0);
            (w.id.clone(), w.slots as i64 - busy as i64)
        })
        .collect();
    let mut out = Vec::new();
    let now = now_ms();
    for job_id in &s.job_order {
        let job = &s.jobs[job_id];
        if job.state != JobState::Running {
            continue;
        }
        for (si, stage) in job.stages.iter().enumerate() {
            if !job.stage_ready(si) {
                continue;
            }
            for (ti, task) in stage.tasks.iter().enumerate() {
                if task.state != TaskState::Pending || task.not_before_ms > now {
                    continue;
                }
                free.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                let Some(slot) = free.first_mut().filter(|f| f.1 > 0) else {
                    return out;
                };
                slot.1 -= 1;
                let worker = &s.workers[&slot.0];
                out.push(Launch {
                    worker_id: worker.id.clone(),
                    address: worker.address.clone(),
                    def: task_definition(s, job, si, ti, task.attempts + 1, &worker.id),
                });
            }
        }
    }
    out
}

/// Where a sink task attempt stages its files.
pub fn staging_prefix(job: &Job, task: usize, attempt: u32) -> String {
    format!("{}t{task}-a{attempt}/", job_staging_root(job))
}

/// The job's staging directory: a hidden sibling of the sink directory.
pub fn job_staging_root(job: &Job) -> String {
    let sink = job.spec.sink.path.trim_end_matches('/');
    let (parent, name) = sink.rsplit_once('/').unwrap_or(("", sink));
    format!("{parent}/.{name}.autopipe-staging/{}/", job.id)
}

fn task_definition(
    s: &State,
    job: &Job,
    si: usize,
    ti: usize,
    attempt: u32,
    worker_id: &str,
) -> pb::TaskDefinition {
    let stage = &job.stages[si];
    let mut inputs = Vec::new();
    for &input in &stage.plan.inputs {
        for (mt, t) in job.stages[input as usize].tasks.iter().enumerate() {
            if let TaskState::Succeeded {
                attempt, worker_id, ..
            } = &t.state
            {
                let w = s.workers.get(worker_id);
                inputs.push(pb::MapOutputLocation {
                    stage_id: input,
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
            format: job.spec.sink.format.name().to_string(),
            staging_url: staging_prefix(job, ti, attempt),
            partition_by: job.spec.sink.partition_by.clone(),
        }),
    };
    let mut store_urls: Vec<String> = job.spec.sources.iter().map(|s| s.path.clone()).collect();
    store_urls.push(job.spec.sink.path.clone());
    pb::TaskDefinition {
        key: Some(pb::TaskKey {
            job_id: job.id.clone(),
            stage_id: si as u32,
            task: ti as u32,
            attempt,
        }),
        plan: stage.plan.plan.as_ref().clone(),
        output: Some(output),
        inputs,
        store_urls,
        memory_limit_bytes: 0,
        worker_id: worker_id.to_string(),
    }
}

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
            let job = core.read(|s| s.jobs.get(&job_id).cloned());
            if let Some(job) = job {
                let cmd = match commit::commit_job(&job).await {
                    Ok(files) => Command::JobSucceeded {
                        job_id: job_id.clone(),
                        files,
                        at_ms: now_ms(),
                    },
                    Err(e) => {
                        tracing::error!(job = %job_id, "commit failed: {e}");
                        Command::JobFailed {
                            job_id: job_id.clone(),
                            error: error_record(&e),
                            at_ms: now_ms(),
                        }
                    }
                };
                if let Command::JobSucceeded { files, .. } = &cmd {
                    tracing::info!(job = %job_id, files = files.len(), "job committed");
                }
                match core.propose(cmd).await {
                    Ok(Outcome::JobChanged(id, JobState::Failed)) => job_failed_alert(&core, &id),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(job = %job_id, "cannot record commit result: {e}"),
                }
            }
            committing.lock().expect("lock").remove(&job_id);
        });
    }
}

/// Once a job is terminal: cancel its still-running attempts, drop its staging and
/// ask workers to delete its shuffle files.
fn cleanup_finished(core: &Arc<Core>, cleaned: &mut HashSet<String>) {
    let todo: Vec<(Job, Vec<(String, String)>)> = core.read(|s| {
        s.jobs
            .values()
            .filter(|j| j.state.is_terminal() && !cleaned.contains(&j.id))
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
        cleaned.insert(job.id.clone());
        tokio::spawn(async move {
            if job.state != JobState::Succeeded {
                if let Err(e) = commit::discard_staging(&job).await {
                    tracing::warn!(job = %job.id, "cannot delete staging: {e}");
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
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_with(workers: &[(&str, u32)], tasks: u32) -> State {
        let mut s = State::default();
        for (w, slots) in workers {
            s.apply(&Command::RegisterWorker {
                worker_id: w.to_string(),
                address: format!("{w}:1"),
                http_address: String::new(),
                slots: *slots,
                at_ms: 0,
                shuffle: Default::default(),
            })
            .unwrap();
        }
        s.apply(&crate::state::test_job(tasks)).unwrap();
        s
    }

    fn live(ids: &[&str]) -> HashMap<String, ()> {
        ids.iter().map(|i| (i.to_string(), ())).collect()
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
    fn no_slot_no_launch_and_silent_workers_get_nothing() {
        let s = state_with(&[("w1", 1), ("w2", 4)], 3);
        let l = plan_launches(&s, &live(&["w1"]));
        assert_eq!(l.len(), 1, "only w1 heartbeats and it has one slot");
        assert_eq!(l[0].worker_id, "w1");
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
        })
        .unwrap();
        assert!(plan_launches(&s, &live(&["w1"])).is_empty());
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
}
