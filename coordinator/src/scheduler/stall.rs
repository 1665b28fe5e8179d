//! Jobs that cannot progress say so. A running job with nothing running and tasks
//! ready to launch waits when no worker is alive or every slot is busy; the leader
//! records the reason (`JobWaiting`, shown by status, the CLI and the dashboard),
//! raises a `job_stalled` alert once the wait passes the job's `stall_alert_ms`
//! (default 30 s), and fails the job after `max_stall_ms` when that is set.

use super::{error_record, job_failed_alert};
use crate::alerts::{self, AlertKind};
use crate::core::Core;
use crate::state::{Command, Job, JobState, Outcome, State, Waiting, WorkerState};
use autopipe_common::error::Error;
use autopipe_common::util::now_ms;
use std::collections::{HashMap, HashSet};

/// Default `stall_alert_ms`.
pub const DEFAULT_STALL_ALERT_MS: u64 = 30_000;

/// Why `job` cannot progress now, given the heartbeating workers and the attempts
/// each still runs after being asked to stop; `None` while it runs something or can
/// launch something.
pub fn waiting_reason(
    s: &State,
    job: &Job,
    live: &HashMap<String, u32>,
    now: u64,
) -> Option<String> {
    let tasks = || {
        job.stages
            .iter()
            .enumerate()
            .flat_map(|(si, st)| st.tasks.iter().map(move |t| (si, t)))
    };
    if tasks().any(|(_, t)| !t.running_attempts().is_empty()) {
        return None;
    }
    let launchable = job.stages.iter().enumerate().any(|(si, st)| {
        job.stage_ready(si) && (0..st.tasks.len()).any(|ti| job.task_waits(si, ti, now))
    });
    if !launchable {
        return None; // retries in backoff, or nothing left to run
    }
    let alive: Vec<_> = s
        .workers
        .values()
        .filter(|w| w.state == WorkerState::Alive && live.contains_key(&w.id))
        .collect();
    if alive.is_empty() {
        return Some(
            "no alive worker: every worker is lost or has stopped heartbeating; start one with `autopipe worker --coordinator ...`"
                .into(),
        );
    }
    let running = s.running_per_worker();
    let slots: u32 = alive.iter().map(|w| w.slots).sum();
    let busy: u32 = alive
        .iter()
        .map(|w| {
            running
                .get(w.id.as_str())
                .copied()
                .unwrap_or(0)
                .saturating_add(live[&w.id])
                .min(w.slots)
        })
        .sum();
    (busy >= slots).then(|| {
        format!(
            "no free task slot: all {slots} slots of the {} alive workers are busy with other jobs",
            alive.len()
        )
    })
}

/// One running job's wait, as recorded and as it is now.
struct WaitCheck {
    job_id: String,
    before: Option<Waiting>,
    after: Option<Waiting>,
    alert_ms: u64,
    max_ms: Option<u64>,
}

/// Records when running jobs start or stop waiting, alerts on long waits and fails
/// jobs past their `max_stall_ms`. `alerted` holds the jobs alerted on in their
/// current wait.
pub async fn watch(core: &Core, alerted: &mut HashSet<String>) {
    let live: HashMap<String, u32> = core
        .liveness
        .lock()
        .expect("liveness lock poisoned")
        .iter()
        .map(|(k, l)| (k.clone(), l.stopping.len() as u32))
        .collect();
    let now = now_ms();
    let changes: Vec<WaitCheck> = core.read(|s| {
        s.jobs
            .values()
            .filter(|j| j.state == JobState::Running)
            .map(|j| {
                let waiting = waiting_reason(s, j, &live, now).map(|reason| Waiting {
                    reason,
                    // the same wait goes on: keep its start
                    since_ms: j.waiting.as_ref().map(|w| w.since_ms).unwrap_or(now),
                });
                let params = &j.spec.job.params;
                WaitCheck {
                    job_id: j.id.clone(),
                    before: j.waiting.clone(),
                    after: waiting,
                    alert_ms: params.stall_alert_ms.unwrap_or(DEFAULT_STALL_ALERT_MS),
                    max_ms: params.max_stall_ms,
                }
            })
            .collect()
    });
    for WaitCheck {
        job_id,
        before,
        after,
        alert_ms,
        max_ms,
    } in changes
    {
        if before != after {
            if after.is_none() {
                alerted.remove(&job_id);
            }
            let cmd = Command::JobWaiting {
                job_id: job_id.clone(),
                waiting: after.clone(),
            };
            if let Err(e) = core.propose(cmd).await {
                tracing::debug!(job = %job_id, "wait not recorded: {e}");
                continue;
            }
        }
        let Some(w) = after else { continue };
        let waited = now.saturating_sub(w.since_ms);
        if waited >= alert_ms && alerted.insert(job_id.clone()) {
            alerts::raise(
                core,
                AlertKind::JobStalled,
                &job_id,
                &format!(
                    "job {job_id} has made no progress for {waited} ms: {}",
                    w.reason
                ),
            );
        }
        if let Some(max) = max_ms.filter(|m| waited >= *m) {
            let e = Error::Transient(format!(
                "the job made no progress for {waited} ms (max_stall_ms = {max}): {}",
                w.reason
            ));
            let cmd = Command::JobFailed {
                job_id: job_id.clone(),
                error: error_record(&e),
                at_ms: now,
            };
            match core.propose(cmd).await {
                Ok(Outcome::JobChanged(id, JobState::Failed)) => job_failed_alert(core, &id),
                Ok(_) => {}
                Err(e) => tracing::debug!(job = %job_id, "stall failure not recorded: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(workers: &[(&str, u32)]) -> State {
        crate::state::test_state(workers, 2)
    }

    #[test]
    fn a_job_waits_with_no_alive_worker_or_no_free_slot_and_not_otherwise() {
        let s = state(&[("w1", 2)]);
        let job = &s.jobs["j"];
        let live = |n: u32| -> HashMap<String, u32> { [("w1".to_string(), n)].into() };
        let r = waiting_reason(&s, job, &HashMap::new(), 0).unwrap();
        assert!(r.starts_with("no alive worker"), "{r}");
        let r = waiting_reason(&s, job, &live(2), 0).unwrap();
        assert!(r.starts_with("no free task slot: all 2 slots"), "{r}");
        assert_eq!(waiting_reason(&s, job, &live(1), 0), None);
        // something of its own runs: it progresses
        let mut s = s;
        s.apply(&Command::TaskLaunched {
            job_id: "j".into(),
            stage: 0,
            task: 0,
            attempt: 1,
            worker_id: "w1".into(),
            at_ms: 0,
        })
        .unwrap();
        assert_eq!(waiting_reason(&s, &s.jobs["j"], &live(2), 0), None);
    }
}
