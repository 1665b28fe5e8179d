//! Speculation. Trigger (Spark's rule, `TaskSetManager.checkSpeculatableTasks`):
//! once `speculation_quantile` (0.9) of a stage's tasks finished, a running task
//! without a copy that has run longer than max(`speculation_multiplier` (3) x the
//! median finished duration, `speculation_min_runtime_ms` (1 s)) is a straggler.
//! Action: a second attempt on another worker, once the stage's inputs are complete
//! (`scheduler::plan_launches`); the first to finish wins and the other is
//! cancelled, recorded as a `speculation` decision. Default: on; `speculation =
//! false` turns it off.

use super::timeouts::finished_durations;
use crate::state::machine::Stage;
use crate::state::TaskState;
use autopipe_common::spec::Speculation;

/// A running task slow enough for a speculative copy.
#[derive(Debug, PartialEq)]
pub struct Straggler {
    /// see `stragglers`
    pub task: usize,
    /// see `stragglers`
    pub runtime_ms: u64,
    /// see `stragglers`
    pub median_ms: u64,
    /// see `stragglers`
    pub threshold_ms: u64,
    /// see `stragglers`
    pub finished: usize,
}

/// Spark's rule (`TaskSetManager.checkSpeculatableTasks`): once `quantile` of the
/// stage's tasks finished, a running task without a copy that has run longer than
/// `max(multiplier x median finished duration, min_runtime)` is a straggler.
pub fn stragglers(st: &Stage, spec: &Speculation, now: u64) -> Vec<Straggler> {
    let mut finished = finished_durations(st);
    let min_finished = ((spec.quantile * st.tasks.len() as f64).floor() as usize).max(1);
    if finished.len() < min_finished {
        return vec![];
    }
    finished.sort_unstable();
    let median_ms = finished[finished.len() / 2];
    let threshold_ms = ((spec.multiplier * median_ms as f64) as u64).max(spec.min_runtime_ms);
    st.tasks
        .iter()
        .enumerate()
        .filter(|(_, t)| t.speculative.is_none())
        .filter_map(|(ti, t)| match &t.state {
            TaskState::Running { started_ms, .. }
                if now.saturating_sub(*started_ms) > threshold_ms =>
            {
                Some(Straggler {
                    task: ti,
                    runtime_ms: now.saturating_sub(*started_ms),
                    median_ms,
                    threshold_ms,
                    finished: finished.len(),
                })
            }
            _ => None,
        })
        .collect()
}
