//! Retry limit. Trigger: a counted failure of a task (applied by the state machine
//! in `TaskFailed`, which keeps the failure counts this rule reads). Action:
//! - lowered to 2 when one cause (the message with numbers masked) has failed at
//!   least 3 attempts on at least 2 workers: a cause that does not depend on the
//!   worker looks permanent, and further attempts would only repeat it;
//! - raised by one, up to twice the configured limit, when a transient failure
//!   would exhaust the task's attempts on a worker whose own transient failure rate
//!   is high (at least half of at least 4 attempts): the worker, not the task, is
//!   failing.
//!
//! Recorded as a `retry_limit` decision. Anchor: Spark's fixed
//! `spark.task.maxFailures` (4). Default: on; off when the job pins
//! `max_task_attempts` or sets `adaptive_retries = false`.
//!
//! Its outcome travels in the `TaskFailed` command: the leader works it out before
//! proposing the failure (`outcome`, a dry run of the failure's bookkeeping on a copy
//! of the state), and `apply` applies what the command says, so a change of this rule
//! never changes how a log replays. (Entries written before then carry no outcome,
//! and `apply` runs the rule for them.)

use crate::state::decision::inputs;
use crate::state::{Command, DecisionKind, RetryLimitChange, RetryLimitOutcome, State};
use std::collections::BTreeMap;

/// What the rule decides for the failure `cmd` (a `TaskFailed` without an outcome)
/// on the state `s`: applied to a copy of the job, the failure's bookkeeping runs the
/// rule; its new limit and decision, if any, are the outcome the command carries.
pub fn outcome(s: &State, cmd: &Command) -> RetryLimitOutcome {
    let Command::TaskFailed { job_id, .. } = cmd else {
        return RetryLimitOutcome::default();
    };
    let mut dry = s.clone_for_check(cmd);
    let Some(job) = dry.jobs.get(job_id) else {
        return RetryLimitOutcome::default();
    };
    let before = job.max_attempts;
    let from = before.unwrap_or_else(|| job.spec.job.params.max_task_attempts());
    let decisions = dry.decisions.len();
    if dry.apply(cmd).is_err() {
        return RetryLimitOutcome::default();
    }
    let after = dry.jobs.get(job_id).and_then(|j| j.max_attempts);
    let decision = dry
        .decisions
        .iter()
        .skip(decisions)
        .find(|d| d.kind == DecisionKind::RetryLimit)
        .cloned();
    match (after, decision) {
        (Some(to), Some(mut d)) if after != before => {
            d.id = 0;
            RetryLimitOutcome {
                change: Some(RetryLimitChange {
                    from,
                    to,
                    decision: d,
                }),
            }
        }
        _ => RetryLimitOutcome::default(),
    }
}

/// What the rule sees of one counted failure.
pub struct Seen<'a> {
    /// the failure's cause, numbers masked
    pub cause: &'a str,
    /// attempts of the job that failed with this cause, this one included
    pub cause_failures: u32,
    /// workers they failed on
    pub cause_workers: usize,
    /// where this one failed
    pub worker: &'a str,
    /// attempts that worker ran
    pub worker_attempts: u64,
    /// of which failed transiently
    pub worker_transient_failures: u64,
    /// "transient" | "permanent" | "data"
    pub error_class: &'a str,
    /// the task's stage
    pub stage: u32,
    /// the task
    pub task: u32,
    /// its counted failures, this one included
    pub task_failures: u32,
}

/// A changed limit, and why.
#[derive(Debug, PartialEq)]
pub struct NewLimit {
    /// attempts per task from now on
    pub limit: u32,
    /// why, in words
    pub why: String,
    /// what the rule read
    pub inputs: BTreeMap<String, String>,
}

/// The job's per-task attempt limit after the failure `seen`, when it changes from
/// `limit` (the configured limit being `configured`).
pub fn adapt(limit: u32, configured: u32, seen: &Seen) -> Option<NewLimit> {
    let (count, workers, cause) = (seen.cause_failures, seen.cause_workers, seen.cause);
    if count >= 3 && workers >= 2 && limit > 2 {
        return Some(NewLimit {
            limit: 2,
            why: format!(
                "the same cause failed {count} attempts on {workers} workers; a cause that does not depend on the worker looks permanent: {cause}"
            ),
            inputs: inputs([
                ("cause", cause.to_string()),
                ("failed_attempts", count.to_string()),
                ("workers", workers.to_string()),
            ]),
        });
    }
    let (attempts, transient) = (seen.worker_attempts, seen.worker_transient_failures);
    let high = attempts >= 4 && transient * 2 >= attempts;
    let bound = configured * 2;
    let (stage, task, worker, failures) = (seen.stage, seen.task, seen.worker, seen.task_failures);
    (seen.error_class == "transient" && high && failures >= limit && limit < bound).then(|| {
        NewLimit {
            limit: limit + 1,
            why: format!(
                "stage {stage} task {task} would run out of attempts on worker {worker}, whose transient failure rate is {transient}/{attempts}: the worker, not the task, is failing (bound: {bound})"
            ),
            inputs: inputs([
                ("worker", worker.to_string()),
                ("worker_attempts", attempts.to_string()),
                ("worker_transient_failures", transient.to_string()),
                ("task_failures", failures.to_string()),
                ("bound", bound.to_string()),
            ]),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen<'a>(
        cause_failures: u32,
        cause_workers: usize,
        worker: (u64, u64),
        class: &'a str,
        task_failures: u32,
    ) -> Seen<'a> {
        Seen {
            cause: "transient: boom",
            cause_failures,
            cause_workers,
            worker: "w1",
            worker_attempts: worker.0,
            worker_transient_failures: worker.1,
            error_class: class,
            stage: 0,
            task: 1,
            task_failures,
        }
    }

    #[test]
    fn one_cause_on_two_workers_lowers_the_limit_and_a_failing_worker_raises_it() {
        assert_eq!(
            adapt(4, 4, &seen(3, 2, (0, 0), "transient", 1))
                .unwrap()
                .limit,
            2
        );
        assert_eq!(
            adapt(2, 4, &seen(3, 2, (0, 0), "transient", 1)),
            None,
            "already 2"
        );
        assert_eq!(
            adapt(4, 4, &seen(3, 1, (0, 0), "transient", 1)),
            None,
            "one worker"
        );
        let raised = adapt(4, 4, &seen(1, 1, (8, 4), "transient", 4)).unwrap();
        assert_eq!(raised.limit, 5);
        assert_eq!(raised.inputs["bound"], "8");
        assert_eq!(
            adapt(8, 4, &seen(1, 1, (8, 4), "transient", 8)),
            None,
            "at the bound"
        );
        assert_eq!(
            adapt(4, 4, &seen(1, 1, (8, 3), "transient", 4)),
            None,
            "rate too low"
        );
        assert_eq!(adapt(4, 4, &seen(1, 1, (8, 4), "permanent", 4)), None);
    }
}
