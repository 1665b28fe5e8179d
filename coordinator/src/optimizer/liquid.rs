//! Dynamic work rebalancing of running scan tasks (issue 12 §2.7; Google Dataflow's
//! "liquid sharding"): a running scan task that lags its stage while a task slot is
//! idle hands the input it has not read yet to a new task. Unlike speculation, which
//! repeats the whole task, the two share the input: no row is read twice or skipped.
//!
//! **Trigger** (`candidates`, a pure function of the state): the job's
//! `dynamic_rebalance` (default on); a stage that scans sources (no shuffle input)
//! into a hash shuffle (more than one output partition, so consumers read every map
//! task and a new map task is simply one more) or into the sink (each task stages
//! its own files and the commit takes every task's); no consumer of the stage has started
//! or been re-planned (they list the stage's map tasks when they launch); no task of
//! the stage waits for a slot; a slot is idle after every pending task of every job
//! got one; and the attempt (without a speculative copy) has run longer than
//! `max(rebalance_lag_factor (1.5) x the median of the stage's finished tasks,
//! rebalance_min_runtime_ms (1000))`
//! (only the floor while none finished: idle slots beside a long scan are the case
//! Dataflow splits for). At most one split per idle slot per round, the longest
//! running first, each attempt asked at most every `ASK_EVERY_MS`. Anchors: Spark's
//! speculation multiplier (1.5 x the median); Dataflow splits whenever workers idle.
//!
//! **Protocol** (`scheduler::liquid` drives it). Only the worker knows how far its
//! scan got, so it chooses the split point; only the replicated state can make the
//! split binding, so the worker never drops input on its own:
//! 1. The leader asks the worker (`WorkerControl.SplitTask`). The scan reads its input
//!    in units (Parquet row groups, CSV/NDJSON chunks) in order; the worker reserves
//!    unit `k` (half-way through the units it has not started), answers with the
//!    prefix (units `[0, k)`) and the remainder (units `[k, n)`), and from then on
//!    starts no unit `>= k` until the split is confirmed: it keeps reading before `k`.
//!    With nothing left to give, or a scan it cannot cut, it refuses.
//! 2. The leader proposes `SplitRunningTask`: applied, the task's input is the prefix
//!    (`Task::scan`) and a new task of the stage reads the remainder. Any speculative
//!    copy of the task (it reads the whole input) is cancelled.
//! 3. The leader confirms (`ConfirmSplit`); the attempt ends at `k`, its result covers
//!    the prefix.
//!
//! Failures: an offer that no leader recorded stays reserved on the worker, which
//! lists it in every heartbeat; the leader (this one after a lost answer, or a new
//! one) proposes it again and confirms. Recording a split is idempotent (by task,
//! attempt and the attempt's split count), so a split already in the log is only
//! confirmed. There is no "abort": a state that refuses the split refuses it for good
//! while the attempt runs (the stage's shape and the job's param do not change, its
//! consumers cannot start while one of its tasks runs, an attempt that stopped never
//! runs again), so an offer is either recorded or its attempt is cancelled as an
//! orphan; never "refused, then recorded later" with the worker already past `k`.
//! A split attempt that fails, or whose worker is lost, is retried on the prefix;
//! its copies read the prefix; the new task and its retries read the remainder.

use crate::state::machine::Stage;
use crate::state::{Job, JobState, State, TaskState, WorkerState};
use std::collections::HashMap;

/// An attempt is asked at most this often (a refusal: it is on its last unit).
pub const ASK_EVERY_MS: u64 = 2_000;

/// Whether tasks of stage `si` of `job` run their scan unit by unit and may be
/// split: the job's `dynamic_rebalance`, and a stage that scans sources into a hash
/// shuffle or straight into the sink (`splittable_stage`).
pub fn splittable(job: &Job, si: usize) -> bool {
    job.stream.is_none()
        && job.spec.job.params.dynamic_rebalance()
        && job.stages.get(si).is_some_and(splittable_stage)
}

/// A stage whose tasks may be split while they run: it reads no other stage's
/// output, and writes a hash shuffle (whose consumers read every map task, so a new
/// one is simply one more) or the sink (whose commit takes every task's files). A
/// stage merged into one partition is read one map task per partition: never split.
pub fn splittable_stage(st: &Stage) -> bool {
    st.plan.inputs.is_empty() && st.plan.shuffle_partitions.is_none_or(|n| n > 1)
}

/// A running scan attempt to ask for a split.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// job
    pub job_id: String,
    /// stage
    pub stage: u32,
    /// task
    pub task: u32,
    /// the running attempt
    pub attempt: u32,
    /// where it runs
    pub worker_id: String,
    /// how long it has run
    pub runtime_ms: u64,
    /// the threshold it passed
    pub threshold_ms: u64,
    /// median of the stage's finished tasks (0: none finished)
    pub median_ms: u64,
    /// finished tasks of the stage
    pub finished: usize,
    /// idle slots when it was chosen
    pub idle_slots: u32,
    /// the job's `rebalance_lag_factor`
    pub lag_factor: f64,
    /// the job's `rebalance_min_runtime_ms`
    pub min_runtime_ms: u64,
}

impl Candidate {
    /// The rule that fired, in words.
    pub fn why(&self) -> String {
        format!(
            "stage {} task {} had run {} ms, more than {} ms = max(rebalance_lag_factor {} x the median of {} finished tasks ({} ms), rebalance_min_runtime_ms {}), with no task of its stage waiting and {} idle slot(s)",
            self.stage, self.task, self.runtime_ms, self.threshold_ms, self.lag_factor, self.finished, self.median_ms, self.min_runtime_ms, self.idle_slots
        )
    }

    /// What the rule read.
    pub fn inputs(&self) -> std::collections::BTreeMap<String, String> {
        crate::state::decision::inputs([
            ("threshold_ms", self.threshold_ms.to_string()),
            ("median_ms", self.median_ms.to_string()),
            ("finished_tasks", self.finished.to_string()),
            ("idle_slots", self.idle_slots.to_string()),
            ("lag_factor", self.lag_factor.to_string()),
            ("min_runtime_ms", self.min_runtime_ms.to_string()),
        ])
    }
}

/// Slots free after every pending task of the running jobs took one: over the
/// heartbeating alive workers (`live`: worker → attempts it was asked to stop and
/// still runs, which hold their slots).
pub fn idle_slots(s: &State, live: &HashMap<String, u32>) -> u32 {
    let running = s.running_per_worker();
    let free: i64 = s
        .workers
        .values()
        .filter(|w| w.state == WorkerState::Alive)
        .filter_map(|w| {
            let stopping = *live.get(&w.id)?;
            let busy = running.get(w.id.as_str()).copied().unwrap_or(0) + stopping;
            Some((w.slots as i64 - busy as i64).max(0))
        })
        .sum();
    let pending: i64 = s
        .jobs
        .values()
        .filter(|j| j.state == JobState::Running)
        .flat_map(|j| {
            j.stages
                .iter()
                .enumerate()
                .filter(|(si, _)| j.stage_ready(*si))
                .flat_map(|(_, st)| st.tasks.iter())
        })
        .filter(|t| t.state == TaskState::Pending)
        .count() as i64;
    (free - pending).max(0) as u32
}

/// Running scan attempts to split now, longest running first, at most `idle` of them.
pub fn candidates(s: &State, idle: u32, now: u64) -> Vec<Candidate> {
    if idle == 0 {
        return vec![];
    }
    let mut out = vec![];
    for job in s.jobs.values().filter(|j| j.state == JobState::Running) {
        for (si, st) in job.stages.iter().enumerate() {
            if !splittable(job, si) || !consumers_unstarted(job, si) {
                continue;
            }
            if st.tasks.iter().any(|t| t.state == TaskState::Pending) {
                continue;
            }
            let (finished, median_ms) = finished_median(st);
            let params = &job.spec.job.params;
            let (lag_factor, min_runtime_ms) = (
                params.rebalance_lag_factor(),
                params.rebalance_min_runtime_ms(),
            );
            let threshold_ms = ((lag_factor * median_ms as f64) as u64).max(min_runtime_ms);
            for (ti, t) in st.tasks.iter().enumerate() {
                let TaskState::Running {
                    attempt,
                    worker_id,
                    started_ms,
                } = &t.state
                else {
                    continue;
                };
                let runtime_ms = now.saturating_sub(*started_ms);
                if t.speculative.is_some() || runtime_ms <= threshold_ms {
                    continue;
                }
                out.push(Candidate {
                    job_id: job.id.clone(),
                    stage: si as u32,
                    task: ti as u32,
                    attempt: *attempt,
                    worker_id: worker_id.clone(),
                    runtime_ms,
                    threshold_ms,
                    median_ms,
                    finished,
                    idle_slots: idle,
                    lag_factor,
                    min_runtime_ms,
                });
            }
        }
    }
    out.sort_by_key(|c| std::cmp::Reverse(c.runtime_ms));
    out.truncate(idle as usize);
    out
}

/// No stage reading stage `si` has launched a task or been re-planned: each would
/// list the stage's map tasks as they are now.
fn consumers_unstarted(job: &Job, si: usize) -> bool {
    job.stages
        .iter()
        .all(|c| !c.plan.inputs.contains(&(si as u32)) || c.unstarted())
}

/// Finished tasks of a stage and the median of their run times.
fn finished_median(st: &Stage) -> (usize, u64) {
    let mut d = super::timeouts::finished_durations(st);
    if d.is_empty() {
        return (0, 0);
    }
    d.sort_unstable();
    (d.len(), d[d.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{test_launch, test_state, test_succeed, Command, Outcome};
    use autopipe_common::tolerant::FileRange;

    fn live(ws: &[&str]) -> HashMap<String, u32> {
        ws.iter().map(|w| (w.to_string(), 0)).collect()
    }

    fn range(start: u64, end: u64) -> FileRange {
        FileRange {
            location: "a/f.parquet".into(),
            start,
            end,
            size: 1000,
        }
    }

    fn split(attempt: u32, seq: u32, prefix: (u64, u64), rest: (u64, u64)) -> Command {
        Command::SplitRunningTask {
            job_id: "j".into(),
            stage: 0,
            task: 1,
            attempt,
            seq,
            partition: 1,
            prefix: vec![range(prefix.0, prefix.1)],
            remainder: vec![range(rest.0, rest.1)],
            units: (3, 5, 8),
            at_ms: 10_000,
            why: "test".into(),
            inputs: Default::default(),
        }
    }

    #[test]
    fn a_lagging_scan_task_with_an_idle_slot_is_a_candidate() {
        // 2 map tasks on w1 and w2; w3 idle
        let mut s = test_state(&[("w1", 1), ("w2", 1), ("w3", 1)], 2);
        test_launch(&mut s, (0, 0, 1), "w1", 0).unwrap();
        test_launch(&mut s, (0, 1, 1), "w2", 0).unwrap();
        let l = live(&["w1", "w2", "w3"]);
        assert_eq!(idle_slots(&s, &l), 1);
        // nothing finished: only the floor applies
        let min = autopipe_common::spec::DEFAULT_REBALANCE_MIN_RUNTIME_MS;
        assert!(candidates(&s, 1, min).is_empty());
        let c = candidates(&s, 1, min + 1);
        assert_eq!(c.len(), 1, "{c:?}");
        // task 0 finished in 2 s: task 1 lags past 3 s
        test_succeed(&mut s, (0, 0, 1), 2_000).unwrap();
        assert!(candidates(&s, 2, 3_000).is_empty());
        let c = candidates(&s, 2, 3_001);
        assert_eq!(
            (c[0].task, c[0].attempt, c[0].median_ms, c[0].threshold_ms),
            (1, 1, 2_000, 3_000)
        );
        assert!(c[0].why().contains("median"), "{}", c[0].why());
        // no idle slot: nothing
        assert!(candidates(&s, 0, 10_000).is_empty());
        // the thresholds are the job's params: 4 x the 2 s median
        let params = &mut s.jobs.get_mut("j").unwrap().spec.job.params;
        params.rebalance_lag_factor = Some(4.0);
        params.rebalance_min_runtime_ms = Some(500);
        assert!(candidates(&s, 1, 8_000).is_empty());
        let c = candidates(&s, 1, 8_001);
        assert_eq!(c[0].threshold_ms, 8_000);
        assert_eq!(c[0].inputs()["lag_factor"], "4");
        assert!(
            c[0].why().contains("rebalance_lag_factor 4"),
            "{}",
            c[0].why()
        );
    }

    #[test]
    fn no_split_without_the_param_with_a_copy_or_once_a_consumer_started() {
        let mut s = test_state(&[("w1", 1), ("w2", 1)], 2);
        test_launch(&mut s, (0, 0, 1), "w1", 0).unwrap();
        test_launch(&mut s, (0, 1, 1), "w2", 0).unwrap();
        assert_eq!(candidates(&s, 2, 5_000).len(), 2);
        assert_eq!(candidates(&s, 1, 5_000).len(), 1, "one per idle slot");
        let mut off = s.clone();
        off.jobs
            .get_mut("j")
            .unwrap()
            .spec
            .job
            .params
            .dynamic_rebalance = Some(false);
        assert!(candidates(&off, 1, 5_000).is_empty());
        // a task with a speculative copy is left to speculation
        let mut copy = s.clone();
        copy.apply(&Command::RegisterWorker {
            worker_id: "w3".into(),
            address: "w3:1".into(),
            http_address: String::new(),
            slots: 1,
            at_ms: 0,
            shuffle: Default::default(),
        })
        .unwrap();
        copy.apply(&Command::SpeculativeLaunched {
            job_id: "j".into(),
            stage: 0,
            task: 0,
            attempt: 2,
            worker_id: "w3".into(),
            at_ms: 1,
            why: String::new(),
            inputs: Default::default(),
        })
        .unwrap();
        let c = candidates(&copy, 2, 5_000);
        assert_eq!(c.iter().map(|c| c.task).collect::<Vec<_>>(), vec![1]);
        // a consumer that has run (a map output recomputed after it started)
        let mut started = s.clone();
        started.jobs.get_mut("j").unwrap().stages[1].tasks[0].attempts = 1;
        assert!(candidates(&started, 1, 5_000).is_empty());
        // a pending task of the stage takes the slot first
        let mut pending = s;
        pending.jobs.get_mut("j").unwrap().stages[0].tasks[0].state = TaskState::Pending;
        assert!(candidates(&pending, 1, 5_000).is_empty());
    }

    #[test]
    fn a_recorded_split_gives_the_remainder_to_a_new_task_once() {
        let mut s = test_state(&[("w1", 1), ("w2", 1)], 2);
        test_launch(&mut s, (0, 0, 1), "w1", 0).unwrap();
        test_launch(&mut s, (0, 1, 1), "w2", 0).unwrap();
        assert_eq!(
            s.apply(&split(1, 0, (0, 500), (500, 1000))),
            Ok(Outcome::Done)
        );
        let st = &s.jobs["j"].stages[0];
        assert_eq!(st.tasks.len(), 3);
        assert_eq!(
            st.tasks[1].scan.as_ref().unwrap().ranges,
            vec![range(0, 500)]
        );
        let new = &st.tasks[2];
        assert_eq!(new.state, TaskState::Pending);
        assert_eq!(new.scan.as_ref().unwrap().ranges, vec![range(500, 1000)]);
        assert_eq!(new.scan.as_ref().unwrap().partition, 1);
        let d = s.decisions.last().unwrap();
        assert_eq!(d.kind, crate::state::DecisionKind::SplitRunningTask);
        assert_eq!(d.inputs["new_task"], "2");
        assert_eq!(new.split_from.as_ref().unwrap().decision, d.id);
        // proposed again (a leader change): nothing changes
        let before = s.clone();
        assert_eq!(
            s.apply(&split(1, 0, (0, 500), (500, 1000))),
            Ok(Outcome::Done)
        );
        assert_eq!(s, before);
        // the same split number with another point is a contradiction
        assert!(s.apply(&split(1, 0, (0, 300), (300, 1000))).is_err());
        // a second split of the same attempt, out of order, is refused
        assert!(s.apply(&split(1, 2, (0, 200), (200, 500))).is_err());
        assert!(s.apply(&split(1, 1, (0, 200), (200, 500))).is_ok());
        assert_eq!(s.jobs["j"].stages[0].tasks.len(), 4);
        // an attempt that no longer runs is not split
        assert!(s.apply(&split(7, 0, (0, 1), (1, 2))).is_err());
        // a retry of the split task reads its prefix: the lost worker's attempt goes
        s.apply(&Command::WorkerLost {
            worker_id: "w2".into(),
            at_ms: 20_000,
        })
        .unwrap();
        let t = &s.jobs["j"].stages[0].tasks[1];
        assert_eq!(t.state, TaskState::Pending);
        assert_eq!(t.scan.as_ref().unwrap().ranges, vec![range(0, 200)]);
        // the consumer stage waits for every map task, the new ones too
        assert!(!s.jobs["j"].stage_ready(1));
    }

    #[test]
    fn a_split_cancels_the_tasks_copy_and_is_measured_once_both_parts_finish() {
        let mut s = test_state(&[("w1", 1), ("w2", 1), ("w3", 1)], 2);
        test_launch(&mut s, (0, 0, 1), "w1", 0).unwrap();
        test_launch(&mut s, (0, 1, 1), "w2", 0).unwrap();
        s.apply(&Command::SpeculativeLaunched {
            job_id: "j".into(),
            stage: 0,
            task: 1,
            attempt: 2,
            worker_id: "w3".into(),
            at_ms: 1,
            why: String::new(),
            inputs: Default::default(),
        })
        .unwrap();
        let out = s.apply(&split(1, 0, (0, 500), (500, 1000))).unwrap();
        assert_eq!(
            out,
            Outcome::Superseded {
                worker_id: "w3".into(),
                attempt: 2
            }
        );
        assert!(s.jobs["j"].stages[0].tasks[1].speculative.is_none());
        test_succeed(&mut s, (0, 1, 1), 4_000).unwrap();
        let id = s.jobs["j"].stages[0].tasks[2]
            .split_from
            .as_ref()
            .unwrap()
            .decision;
        let effect = |s: &State| {
            s.decisions
                .iter()
                .find(|d| d.id == id)
                .unwrap()
                .effect
                .clone()
        };
        assert_eq!(effect(&s), None);
        test_launch(&mut s, (0, 2, 1), "w3", 4_100).unwrap();
        test_succeed(&mut s, (0, 2, 1), 6_000).unwrap();
        let e = effect(&s).expect("measured");
        assert!(e.contains("new task 2") && e.contains("1900 ms"), "{e}");
    }
}
