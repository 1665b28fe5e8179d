//! Applying a dynamic-rebalancing split (`Command::SplitRunningTask`, see
//! `optimizer::liquid` for the rule and the protocol): the split task keeps the
//! prefix of its scan, a new task of the same stage takes the remainder, and the
//! `split_running_task` decision gets its measured effect once both have finished.

use super::{ApplyError, Outcome, State, Task, TaskState};
use crate::state::commands::{Command, ScanSlice, SplitOrigin};
use crate::state::decision::{Decision, DecisionKind};

impl State {
    /// `Command::SplitRunningTask`. All checks run before any change. The reasons
    /// it refuses a split never go away while the offering attempt runs (see
    /// `optimizer::liquid`), so a refused offer is never recorded later.
    pub(super) fn on_split_running_task(&mut self, cmd: &Command) -> Result<Outcome, ApplyError> {
        let Command::SplitRunningTask {
            job_id,
            stage,
            task,
            attempt,
            seq,
            partition,
            prefix,
            remainder,
            units,
            at_ms,
            why,
            inputs,
        } = cmd
        else {
            unreachable!("called for SplitRunningTask only")
        };
        let illegal = |m: String| Err(ApplyError::Illegal(m));
        let decision_id = self.last_decision_id + 1;
        let job = self.running_job(job_id)?;
        let Some(st) = job.stages.get(*stage as usize) else {
            return illegal(format!("job {job_id} has no stage {stage}"));
        };
        // the same split recorded again (a re-proposal): nothing changes
        let recorded = st.tasks.iter().find(|t| {
            t.split_from
                .as_ref()
                .is_some_and(|o| o.task == *task && o.attempt == *attempt && o.seq == *seq)
        });
        if let Some(t) = recorded {
            return match &t.scan {
                Some(s) if s.ranges == *remainder => Ok(Outcome::Done),
                _ => illegal(format!(
                    "job {job_id} stage {stage} task {task} attempt {attempt}: split {seq} was recorded with another remainder"
                )),
            };
        }
        if !crate::optimizer::liquid::splittable_stage(st) {
            return illegal(format!(
                "job {job_id} stage {stage} is not a scan stage writing a hash shuffle or the sink"
            ));
        }
        // a consumer that launched (or was re-planned) lists the stage's map tasks as
        // they were then: it would miss the new one
        let consumer_started = job
            .stages
            .iter()
            .any(|c| c.plan.inputs.contains(stage) && !c.unstarted());
        if consumer_started {
            return illegal(format!(
                "job {job_id} stage {stage}: a stage reading it has started"
            ));
        }
        if prefix.is_empty() || remainder.is_empty() {
            return illegal(format!(
                "job {job_id} stage {stage} task {task}: a split needs a prefix and a remainder"
            ));
        }
        let Some(t) = st.tasks.get(*task as usize) else {
            return Err(ApplyError::UnknownTask {
                job: job_id.clone(),
                stage: *stage,
                task: *task,
            });
        };
        let running = t.running_attempts();
        let Some((_, worker, started_ms)) = running.iter().find(|(a, _, _)| a == attempt) else {
            return illegal(format!(
                "split of job {job_id} stage {stage} task {task} attempt {attempt}, which does not run"
            ));
        };
        let (worker, started_ms) = (worker.to_string(), *started_ms);
        let other = running
            .iter()
            .find(|(a, _, _)| a != attempt)
            .map(|(a, w, _)| (*a, w.to_string()));
        let done = st
            .tasks
            .iter()
            .filter(|t| {
                t.split_from
                    .as_ref()
                    .is_some_and(|o| o.task == *task && o.attempt == *attempt)
            })
            .count() as u32;
        if done != *seq {
            return illegal(format!(
                "split {seq} of job {job_id} stage {stage} task {task} attempt {attempt}, after {done} recorded"
            ));
        }
        // checked: apply
        let new_task = st.tasks.len() as u32;
        let st = &mut job.stages[*stage as usize];
        let t = &mut st.tasks[*task as usize];
        t.scan = Some(ScanSlice {
            partition: *partition,
            ranges: prefix.clone(),
        });
        let memory_slots = t.memory_slots;
        // another attempt of the task reads the whole input it was launched with:
        // it stops (a later copy reads the prefix)
        let (copy_decision, outcome) = match &other {
            Some((a, w)) => (
                t.detach_attempt(*a).0,
                Outcome::Superseded {
                    worker_id: w.clone(),
                    attempt: *a,
                },
            ),
            None => (None, Outcome::Done),
        };
        st.tasks.push(Task {
            scan: Some(ScanSlice {
                partition: *partition,
                ranges: remainder.clone(),
            }),
            split_from: Some(SplitOrigin {
                task: *task,
                attempt: *attempt,
                seq: *seq,
                decision: decision_id,
            }),
            memory_slots,
            ..Task::new()
        });
        let bytes = |r: &[autopipe_common::tolerant::FileRange]| -> u64 {
            r.iter().map(|r| r.end - r.start).sum()
        };
        let (started, at, total) = *units;
        let mut inputs = inputs.clone();
        for (k, v) in [
            ("stage", stage.to_string()),
            ("task", task.to_string()),
            ("attempt", attempt.to_string()),
            ("new_task", new_task.to_string()),
            ("worker", worker.clone()),
            ("units_started", started.to_string()),
            ("split_unit", at.to_string()),
            ("units_total", total.to_string()),
            ("prefix_bytes", bytes(prefix).to_string()),
            ("remainder_bytes", bytes(remainder).to_string()),
            ("runtime_ms", at_ms.saturating_sub(started_ms).to_string()),
        ] {
            inputs.insert(k.to_string(), v);
        }
        self.push_decision(Decision {
            id: 0,
            at_ms: *at_ms,
            job_id: job_id.clone(),
            kind: DecisionKind::SplitRunningTask,
            what: format!(
                "split stage {stage} task {task} (attempt {attempt} on worker {worker}) at unit {at} of {total}: it keeps units [0, {at}) ({} bytes), new task {new_task} reads the other {} ({} bytes)",
                bytes(prefix),
                total - at,
                bytes(remainder)
            ),
            why: why.clone(),
            inputs,
            effect: None,
        });
        if let (Some(d), Some((a, w))) = (copy_decision, &other) {
            self.append_effect(
                d,
                format!("attempt {a} on {w} was cancelled: its task was split by dynamic rebalancing (decision {decision_id})"),
            );
        }
        Ok(outcome)
    }

    /// Once a split task and the task split off it have both succeeded, the
    /// decision's measured effect: when each finished and what each read.
    pub(super) fn measure_splits(&mut self, job_id: &str, stage: u32) {
        let Some(st) = self
            .jobs
            .get(job_id)
            .and_then(|j| j.stages.get(stage as usize))
        else {
            return;
        };
        let mut effects = vec![];
        for (ti, t) in st.tasks.iter().enumerate() {
            let Some(origin) = &t.split_from else {
                continue;
            };
            let (
                TaskState::Succeeded {
                    result: new,
                    worker_id: new_worker,
                    started_ms: new_started,
                    finished_ms: new_finished,
                    ..
                },
                Some(TaskState::Succeeded {
                    result: old,
                    started_ms: old_started,
                    finished_ms: old_finished,
                    ..
                }),
            ) = (
                &t.state,
                st.tasks.get(origin.task as usize).map(|o| &o.state),
            )
            else {
                continue;
            };
            let open = self
                .decisions
                .iter()
                .rev()
                .find(|d| d.id == origin.decision)
                .is_some_and(|d| d.effect.is_none());
            if !open {
                continue;
            }
            effects.push((
                origin.decision,
                format!(
                    "task {} read {} rows ({} bytes) of its prefix in {} ms; new task {ti} read {} rows ({} bytes) of the remainder on worker {new_worker} in {} ms; the two finished {} ms apart; together they wrote {} rows",
                    origin.task,
                    old.rows_in,
                    old.bytes_in,
                    old_finished.saturating_sub(*old_started),
                    new.rows_in,
                    new.bytes_in,
                    new_finished.saturating_sub(*new_started),
                    new_finished.abs_diff(*old_finished),
                    old.rows_out + new.rows_out,
                ),
            ));
        }
        for (d, e) in effects {
            self.set_effect(d, e);
        }
    }
}
