//! Task timeouts. Trigger: an attempt has run longer than its stage's task timeout:
//! `task_timeout_ms` when set (0: off), else derived from the stage's finished tasks,
//! 10 times the slowest and at least 60 s, or `first_task_timeout_ms` (1 hour) while
//! none has finished. Action: the attempt fails as transient (its slot is freed and
//! the task retried elsewhere) and is cancelled, recorded as a `task_timeout`
//! decision (`scheduler::time_out_attempts` proposes it). Anchor: Spark has no task
//! timeout (its speculation copies slow tasks); Flink and Beam fail hung tasks with
//! a fixed timeout. Default: derived; `task_timeout_ms = 0` turns it off.

use crate::state::machine::Stage;
use crate::state::{JobState, State, TaskState};
use autopipe_common::spec::JobParams;
use autopipe_proto as pb;

/// Floor of the derived task timeout.
pub const MIN_DERIVED_TASK_TIMEOUT_MS: u64 = 60_000;
/// Timeout of attempts in a stage where nothing has finished yet (1 hour).
pub const DEFAULT_FIRST_TASK_TIMEOUT_MS: u64 = 3_600_000;
/// The derived task timeout is this many times the stage's slowest finished task.
pub const DERIVED_TASK_TIMEOUT_FACTOR: u64 = 10;

/// The timeout of a stage's attempts under `params`, and how it was chosen, given
/// the durations of its finished tasks; `None` only when timeouts are turned off.
pub fn task_timeout(params: &JobParams, finished_ms: &[u64]) -> Option<(u64, String)> {
    match params.task_timeout_ms {
        Some(0) => None,
        Some(ms) => Some((ms, format!("task_timeout_ms = {ms}"))),
        None => {
            let Some(slowest) = finished_ms.iter().copied().max() else {
                let ms = params
                    .first_task_timeout_ms
                    .unwrap_or(DEFAULT_FIRST_TASK_TIMEOUT_MS);
                return Some((
                    ms,
                    format!("no task of the stage has finished yet: first_task_timeout_ms = {ms}"),
                ));
            };
            let ms = (slowest * DERIVED_TASK_TIMEOUT_FACTOR).max(MIN_DERIVED_TASK_TIMEOUT_MS);
            Some((
                ms,
                format!(
                    "derived: {DERIVED_TASK_TIMEOUT_FACTOR} x the slowest of {} finished tasks ({slowest} ms), at least {MIN_DERIVED_TASK_TIMEOUT_MS} ms",
                    finished_ms.len()
                ),
            ))
        }
    }
}

/// An attempt past its task timeout.
#[derive(Debug)]
pub struct Expired {
    /// see `expired_attempts`
    pub key: pb::TaskKey,
    /// see `expired_attempts`
    pub worker_id: String,
    /// see `expired_attempts`
    pub ran_ms: u64,
    /// see `expired_attempts`
    pub limit_ms: u64,
    /// see `expired_attempts`
    pub how: String,
    /// see `expired_attempts`
    pub finished: usize,
}

/// Every running attempt of a running job past its stage's task timeout (a
/// streaming job's consumer tasks run until cancelled: never).
pub fn expired_attempts(s: &State, now: u64) -> Vec<Expired> {
    let mut out = vec![];
    let batch_jobs = s.jobs.values().filter(|j| j.stream.is_none());
    for job in batch_jobs.filter(|j| j.state == JobState::Running) {
        for (si, st) in job.stages.iter().enumerate() {
            let finished = finished_durations(st);
            let Some((limit_ms, how)) = task_timeout(&job.spec.job.params, &finished) else {
                continue;
            };
            for (ti, t) in st.tasks.iter().enumerate() {
                for (attempt, worker_id, started_ms) in t.running_attempts() {
                    let ran_ms = now.saturating_sub(started_ms);
                    if ran_ms > limit_ms {
                        out.push(Expired {
                            key: pb::TaskKey {
                                job_id: job.id.clone(),
                                stage_id: si as u32,
                                task: ti as u32,
                                attempt,
                            },
                            worker_id: worker_id.to_string(),
                            ran_ms,
                            limit_ms,
                            how: how.clone(),
                            finished: finished.len(),
                        });
                    }
                }
            }
        }
    }
    out
}

/// Run times (launch to recorded success) of a stage's finished tasks.
pub fn finished_durations(st: &Stage) -> Vec<u64> {
    st.tasks
        .iter()
        .filter_map(|t| match &t.state {
            TaskState::Succeeded {
                started_ms,
                finished_ms,
                ..
            } => Some(finished_ms.saturating_sub(*started_ms)),
            _ => None,
        })
        .collect()
}
