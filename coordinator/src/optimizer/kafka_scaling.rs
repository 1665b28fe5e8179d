//! Scaling a streaming job's consumer tasks with its lag (issue 13), the Flink
//! autoscaler's model over the replicated state.
//!
//! - **Demand.** Required capacity = lag / `catch_up_target` + input rate /
//!   `target_utilization`; desired tasks = ceil(required capacity / the rate one task
//!   processes), where a task's rate is records per second of busy time over the
//!   job's committed batches (Flink's "true processing rate") and the input rate is
//!   the partitions' high watermarks' growth (`PartitionProgress::input_rate`).
//!   Capped at the partition count (KEDA's rule: a partition is read by one task)
//!   and at the alive workers' slots.
//! - **Scale up** at once, once every task reads and reported since the last change
//!   (on the input rate alone, with no lag, only after `cooldown`, the least time a
//!   change needs to show its effect). **Scale down** only after fewer tasks were enough
//!   for `scale_down_delay` (a stabilization window), to the most that window asked
//!   for; at once when the alive slots can no longer run every task (a lost worker).
//! - **Rebalance.** A task over its utilization target while another has room gets
//!   a partition moved. Every change deals the partitions anew by moving the fewest,
//!   bin-packed by their input rates (`reassign`).
//! - **Effect.** A `kafka_scale_up` or `kafka_rebalance` gets its effect once the lag
//!   is back under the threshold (what two batch intervals bring at the input rate):
//!   how long that took. A `kafka_scale_down` gets it `cooldown` after: the lag then.
//!
//! Pure: it reads `&State`, the clock and a small volatile memory (a new leader
//! starts its stabilization windows afresh, which only delays a scale-down) and
//! returns proposals; `scheduler::stream::rescale` proposes them as
//! `Command::StreamRescale` and `Command::DecisionEffect`. `kafka_autoscale = false`
//! turns it off for a job.

use crate::state::decision::inputs;
use crate::state::{Decision, DecisionKind, Job, JobState, State, Stream, TaskState, WorkerState};
use std::collections::BTreeMap;

/// The shortest time between two changes of one job (and before a scale-down's
/// effect is read): new tasks must start and commit before their effect shows.
pub const MIN_COOLDOWN_MS: u64 = 5_000;

/// A change is only worth its restarts when it lowers the busiest task's load by
/// at least this share.
const REBALANCE_GAIN: f64 = 0.2;

/// What the rule remembers between rounds: per job, since when fewer tasks would do
/// and the most tasks asked for since.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Memory {
    below: BTreeMap<String, (u64, usize)>,
}

/// One proposal of the rule.
#[derive(Debug, Clone, PartialEq)]
pub enum Proposal {
    /// deal the job's partitions anew (`Command::StreamRescale`)
    Rescale {
        /// job
        job_id: String,
        /// per task, its partitions
        assignment: Vec<Vec<i32>>,
        /// why
        decision: Decision,
    },
    /// a decision's measured effect (`Command::DecisionEffect`)
    Effect {
        /// the decision
        decision_id: u64,
        /// what happened
        effect: String,
    },
}

/// What the rule reads of one job.
#[derive(Debug, Clone, PartialEq)]
struct Demand {
    lag: i64,
    input_rate: f64,
    task_rate: f64,
    required: f64,
    desired: usize,
    cap: usize,
    tasks: usize,
}

/// The round at `now_ms`.
pub fn decide(s: &State, now_ms: u64, mem: &mut Memory) -> Vec<Proposal> {
    let mut out = vec![];
    let slots: u32 = s
        .workers
        .values()
        .filter(|w| w.state == WorkerState::Alive)
        .map(|w| w.slots.max(1))
        .sum();
    mem.below
        .retain(|id, _| s.jobs.get(id).is_some_and(|j| j.state == JobState::Running));
    for job in s.jobs.values().filter(|j| j.state == JobState::Running) {
        let Some(stream) = job.stream.as_ref() else {
            continue;
        };
        out.extend(effects(s, job, stream, now_ms));
        if !job.spec.job.params.kafka_autoscale() {
            continue;
        }
        if let Some(p) = decide_job(job, stream, slots, now_ms, mem) {
            out.push(p);
        }
    }
    out
}

fn decide_job(
    job: &Job,
    stream: &Stream,
    slots: u32,
    now_ms: u64,
    mem: &mut Memory,
) -> Option<Proposal> {
    let params = &job.spec.job.params;
    let tasks = stream.active_tasks();
    let cap = stream.partitions.len().min(slots as usize).max(1);
    if tasks > cap {
        // a lost worker: some tasks could never run, and their partitions would wait
        mem.below.remove(&job.id);
        let d = demand(stream, params, cap, tasks)?;
        let why = format!(
            "{tasks} consumer tasks but only {cap} slot(s) alive to run them: the partitions of the tasks that cannot start would never be read"
        );
        return rescale(
            job,
            stream,
            cap,
            DecisionKind::KafkaScaleDown,
            why,
            &d,
            now_ms,
        );
    }
    // every task reads and reported since the last change; a scale-up may follow at
    // once (the lag is the evidence), anything else waits out the cooldown
    let settled = (0..stream.assignment.len()).all(|t| {
        stream.parked(t) || matches!(job.stages[0].tasks[t].state, TaskState::Running { .. })
    }) && stream
        .partitions
        .values()
        .all(|p| p.updated_ms >= stream.rescaled_ms && p.high_watermark.is_some());
    if !settled {
        return None;
    }
    let d = demand(stream, params, cap, tasks)?;
    let catch_up = params.catch_up_target_ms() as f64 / 1000.0;
    let model = format!(
        "required capacity = lag {} / catch_up_target {catch_up} s + input {:.0} records/s / target_utilization {} = {:.0} records/s; one task processes {:.0} records/s",
        d.lag,
        d.input_rate,
        params.target_utilization(),
        d.required,
        d.task_rate
    );
    if d.desired > tasks {
        mem.below.remove(&job.id);
        if d.lag == 0 && now_ms < stream.rescaled_ms + cooldown_ms(params) {
            return None; // on the input rate alone, after the cooldown
        }
        let why = format!(
            "{model}: {} task(s) needed (capped at {} = partitions and alive slots), {tasks} read now",
            d.desired, cap
        );
        return rescale(
            job,
            stream,
            d.desired,
            DecisionKind::KafkaScaleUp,
            why,
            &d,
            now_ms,
        );
    }
    if now_ms < stream.rescaled_ms + cooldown_ms(params) {
        return None;
    }
    if d.desired < tasks {
        let delay = params.scale_down_delay_ms();
        let (since, most) = mem
            .below
            .entry(job.id.clone())
            .or_insert((now_ms, d.desired));
        *most = (*most).max(d.desired);
        let (since, most) = (*since, *most);
        if now_ms < since + delay || most >= tasks {
            return None;
        }
        mem.below.remove(&job.id);
        let why = format!(
            "{model}: at most {most} task(s) were needed for {} ms (scale_down_delay {delay} ms), {tasks} read",
            now_ms - since
        );
        return rescale(
            job,
            stream,
            most,
            DecisionKind::KafkaScaleDown,
            why,
            &d,
            now_ms,
        );
    }
    mem.below.remove(&job.id);
    // as many tasks as needed: is one of them over its target while another has room?
    let weights = weights(stream);
    let load = |a: &[i32]| a.iter().map(|p| weights[p]).sum::<f64>();
    let busiest = stream
        .assignment
        .iter()
        .map(|a| load(a))
        .fold(0.0, f64::max);
    let target = d.task_rate * params.target_utilization();
    if busiest - tasks as f64 <= target {
        return None; // (weights count each partition 1 above its rate)
    }
    let next = reassign(&stream.assignment, tasks, &weights);
    let after = next.iter().map(|a| load(a)).fold(0.0, f64::max);
    if after > busiest * (1.0 - REBALANCE_GAIN) {
        return None;
    }
    let why = format!(
        "the busiest task reads {:.0} records/s, over its target {target:.0} (target_utilization {} x {:.0} records/s a task processes); moving partitions brings it to {after:.0}",
        busiest,
        params.target_utilization(),
        d.task_rate
    );
    Some(proposal(
        job,
        stream,
        next,
        DecisionKind::KafkaRebalance,
        why,
        &d,
        now_ms,
    ))
}

/// The job's demand now, `None` until a task has measured its rate.
fn demand(
    stream: &Stream,
    params: &autopipe_common::spec::JobParams,
    cap: usize,
    tasks: usize,
) -> Option<Demand> {
    let task_rate = stream.task_rate()?;
    let lag = stream.total_lag();
    let input_rate = stream.input_rate();
    let required = lag as f64 * 1000.0 / params.catch_up_target_ms() as f64
        + input_rate / params.target_utilization();
    let desired = ((required / task_rate).ceil() as usize).clamp(1, cap);
    Some(Demand {
        lag,
        input_rate,
        task_rate,
        required,
        desired,
        cap,
        tasks,
    })
}

/// How long a change waits for the next one: the rate window and three batches.
fn cooldown_ms(params: &autopipe_common::spec::JobParams) -> u64 {
    MIN_COOLDOWN_MS.max(3 * params.batch_interval_ms())
}

/// The lag under which a streaming job has caught up: what two batch intervals bring
/// at its input rate (at least one record).
pub fn lag_threshold(stream: &Stream, batch_interval_ms: u64) -> i64 {
    ((stream.input_rate() * 2.0 * batch_interval_ms as f64 / 1000.0).ceil() as i64).max(1)
}

fn rescale(
    job: &Job,
    stream: &Stream,
    n: usize,
    kind: DecisionKind,
    why: String,
    d: &Demand,
    now_ms: u64,
) -> Option<Proposal> {
    let next = reassign(&stream.assignment, n, &weights(stream));
    (next != stream.assignment).then(|| proposal(job, stream, next, kind, why, d, now_ms))
}

fn proposal(
    job: &Job,
    stream: &Stream,
    next: Vec<Vec<i32>>,
    kind: DecisionKind,
    why: String,
    d: &Demand,
    now_ms: u64,
) -> Proposal {
    let moved = moved_partitions(&stream.assignment, &next);
    let n = next.iter().filter(|a| !a.is_empty()).count();
    let what = format!(
        "consumer tasks of topic '{}': {} -> {n}; {moved} partition(s) moved ({})",
        stream.topic,
        d.tasks,
        show(&next)
    );
    Proposal::Rescale {
        job_id: job.id.clone(),
        decision: Decision {
            id: 0,
            at_ms: now_ms,
            job_id: job.id.clone(),
            kind,
            what,
            why,
            inputs: inputs([
                ("lag_records", d.lag.to_string()),
                ("input_records_per_s", format!("{:.1}", d.input_rate)),
                ("task_records_per_s", format!("{:.1}", d.task_rate)),
                ("required_records_per_s", format!("{:.1}", d.required)),
                ("desired_tasks", d.desired.to_string()),
                ("tasks_before", d.tasks.to_string()),
                ("tasks_after", n.to_string()),
                ("max_tasks", d.cap.to_string()),
                ("partitions_moved", moved.to_string()),
                (
                    "catch_up_target_ms",
                    job.spec.job.params.catch_up_target_ms().to_string(),
                ),
                (
                    "target_utilization",
                    job.spec.job.params.target_utilization().to_string(),
                ),
            ]),
            effect: None,
        },
        assignment: next,
    }
}

/// `[[0, 2], [1], []]` as "t0: 0,2; t1: 1".
fn show(a: &[Vec<i32>]) -> String {
    a.iter()
        .enumerate()
        .filter(|(_, ps)| !ps.is_empty())
        .map(|(t, ps)| {
            let ps: Vec<String> = ps.iter().map(i32::to_string).collect();
            format!("t{t}: {}", ps.join(","))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Partitions whose task differs between `a` and `b`.
fn moved_partitions(a: &[Vec<i32>], b: &[Vec<i32>]) -> usize {
    let owner = |x: &[Vec<i32>]| -> BTreeMap<i32, usize> {
        x.iter()
            .enumerate()
            .flat_map(|(t, ps)| ps.iter().map(move |&p| (p, t)))
            .collect()
    };
    let (oa, ob) = (owner(a), owner(b));
    oa.iter().filter(|(p, t)| ob.get(p) != Some(t)).count()
}

/// Each partition's weight in the bin-packing: its input rate, plus one so that
/// partitions with no measured rate still spread by count.
fn weights(stream: &Stream) -> BTreeMap<i32, f64> {
    stream
        .partitions
        .iter()
        .map(|(&p, pr)| (p, pr.input_rate.max(0.0) + 1.0))
        .collect()
}

/// The partitions of `current` dealt to `n` tasks (at least one, at most one per
/// partition), moving as few as it can: the tasks that read keep reading (when
/// there are fewer, the ones with the fewest partitions stop), parked task slots are
/// reused before new ones are added, the stopped tasks' partitions go heaviest first
/// to the least loaded task, every task gets at least one, and then single moves
/// from the busiest to the least busy task are made while they lower the busier of
/// the two.
pub fn reassign(current: &[Vec<i32>], n: usize, weight: &BTreeMap<i32, f64>) -> Vec<Vec<i32>> {
    let w = |p: &i32| weight.get(p).copied().unwrap_or(1.0);
    let total: usize = current.iter().map(Vec::len).sum();
    let n = n.clamp(1, total.max(1));
    let mut out: Vec<Vec<i32>> = current.to_vec();
    let mut active: Vec<usize> = (0..out.len()).filter(|&t| !out[t].is_empty()).collect();
    let mut pool: Vec<i32> = vec![];
    if active.len() > n {
        // stop the tasks with the fewest partitions (then the lightest, the last)
        let mut by_size = active.clone();
        by_size.sort_by(|&a, &b| {
            let key = |t: usize| (out[t].len(), out[t].iter().map(w).sum::<f64>());
            let (ka, kb) = (key(a), key(b));
            ka.0.cmp(&kb.0).then(ka.1.total_cmp(&kb.1)).then(b.cmp(&a))
        });
        for &t in &by_size[..active.len() - n] {
            pool.append(&mut out[t]);
        }
        active.retain(|&t| !out[t].is_empty());
    }
    while active.len() < n {
        let t = (0..out.len())
            .find(|t| out[*t].is_empty() && !active.contains(t))
            .unwrap_or_else(|| {
                out.push(vec![]);
                out.len() - 1
            });
        active.push(t);
    }
    active.sort_unstable();
    let load = |out: &Vec<Vec<i32>>, t: usize| out[t].iter().map(w).sum::<f64>();
    pool.sort_by(|a, b| w(b).total_cmp(&w(a)).then(a.cmp(b)));
    for p in pool {
        let t = *active
            .iter()
            .min_by(|&&a, &&b| load(&out, a).total_cmp(&load(&out, b)).then(a.cmp(&b)))
            .expect("at least one task");
        out[t].push(p);
    }
    // every active task reads at least one partition: a new task takes the lightest
    // partition of the busiest task that has more than one
    for &t in &active {
        if !out[t].is_empty() {
            continue;
        }
        let donor = *active
            .iter()
            .filter(|&&d| out[d].len() > 1)
            .max_by(|&&a, &&b| load(&out, a).total_cmp(&load(&out, b)).then(b.cmp(&a)))
            .expect("more partitions than tasks");
        let i = lightest(&out[donor], &w);
        let p = out[donor].remove(i);
        out[t].push(p);
    }
    // single moves from the busiest to the least busy task while they help
    for _ in 0..total {
        let by_load = |a: &&usize, b: &&usize| load(&out, **a).total_cmp(&load(&out, **b));
        let hi = *active.iter().max_by(by_load).expect("a task");
        let lo = *active.iter().min_by(by_load).expect("a task");
        if hi == lo || out[hi].len() < 2 {
            break;
        }
        let (lh, ll) = (load(&out, hi), load(&out, lo));
        // the partition that leaves the two closest, if that lowers the busier
        let best = out[hi]
            .iter()
            .enumerate()
            .map(|(i, p)| (i, (lh - w(p)).max(ll + w(p))))
            .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        match best {
            Some((i, peak)) if peak < lh - 1e-9 => {
                let p = out[hi].remove(i);
                out[lo].push(p);
            }
            _ => break,
        }
    }
    for a in out.iter_mut() {
        a.sort_unstable();
    }
    // parked slots at the end are dropped (they hold nothing and run nothing)
    while out.len() > current.len() && out.last().is_some_and(Vec::is_empty) {
        out.pop();
    }
    out
}

fn lightest(ps: &[i32], w: &impl Fn(&i32) -> f64) -> usize {
    ps.iter()
        .enumerate()
        .min_by(|a, b| w(a.1).total_cmp(&w(b.1)).then(a.0.cmp(&b.0)))
        .map(|(i, _)| i)
        .expect("a partition")
}

/// The measured effect of the job's kafka decisions that have none yet.
fn effects(s: &State, job: &Job, stream: &Stream, now_ms: u64) -> Vec<Proposal> {
    let params = &job.spec.job.params;
    let threshold = lag_threshold(stream, params.batch_interval_ms());
    let lag = stream.total_lag();
    let fresh = |since: u64| stream.partitions.values().all(|p| p.updated_ms > since);
    s.decisions
        .iter()
        .filter(|d| d.job_id == job.id && d.effect.is_none())
        .filter_map(|d| {
            let secs = now_ms.saturating_sub(d.at_ms) as f64 / 1000.0;
            let tasks = stream.active_tasks();
            let effect = match d.kind {
                DecisionKind::KafkaScaleUp | DecisionKind::KafkaRebalance
                    if fresh(d.at_ms) && lag <= threshold =>
                {
                    format!(
                        "lag back under the threshold ({lag} <= {threshold} records, what two batch intervals bring at {:.0} records/s) {secs:.1} s after the change, with {tasks} task(s); lag at the decision: {}",
                        stream.input_rate(),
                        d.inputs.get("lag_records").map(String::as_str).unwrap_or("?")
                    )
                }
                DecisionKind::KafkaScaleDown
                    if fresh(d.at_ms) && now_ms >= d.at_ms + cooldown_ms(params) =>
                {
                    format!(
                        "{secs:.1} s after, {tasks} task(s) read {:.0} records/s with lag {lag} ({} the threshold of {threshold} records)",
                        stream.input_rate(),
                        if lag <= threshold { "under" } else { "over" }
                    )
                }
                _ => return None,
            };
            Some(Proposal::Effect {
                decision_id: d.id,
                effect,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::machine::{test_stream_job, BatchOffsets};
    use crate::state::{test_spec, Command};

    fn weights(rates: &[(i32, f64)]) -> BTreeMap<i32, f64> {
        rates.iter().copied().collect()
    }

    #[test]
    fn reassigning_moves_the_fewest_partitions_and_packs_by_rate() {
        let even = weights(&[(0, 1.0), (1, 1.0), (2, 1.0), (3, 1.0)]);
        // one task to four: each new task takes one partition
        let four = reassign(&[vec![0, 1, 2, 3]], 4, &even);
        assert_eq!(four.len(), 4);
        assert!(four.iter().all(|a| a.len() == 1), "{four:?}");
        assert_eq!(moved_partitions(&[vec![0, 1, 2, 3]], &four), 3);
        // two tasks to one: the other task's partitions join the first
        let one = reassign(&[vec![0, 2], vec![1, 3]], 1, &even);
        assert_eq!(one.iter().filter(|a| !a.is_empty()).count(), 1);
        assert_eq!(moved_partitions(&[vec![0, 2], vec![1, 3]], &one), 2);
        assert_eq!(one.len(), 2, "the stopped task's slot stays, parked");
        // a parked slot is reused before a task is added
        assert_eq!(reassign(&[vec![0, 1, 2, 3], vec![]], 2, &even).len(), 2);
        // by rate: the hot partition ends up alone
        let hot = weights(&[(0, 100.0), (1, 10.0), (2, 10.0), (3, 10.0)]);
        let two = reassign(&[vec![0, 1], vec![2, 3]], 2, &hot);
        let alone = two.iter().find(|a| a.contains(&0)).unwrap();
        assert_eq!(alone, &vec![0], "{two:?}");
        // never more tasks than partitions
        assert_eq!(reassign(&[vec![0, 1]], 5, &even).len(), 2);
        // the same count and balanced: nothing moves
        assert_eq!(
            reassign(&[vec![0, 2], vec![1, 3]], 2, &even),
            vec![vec![0, 2], vec![1, 3]]
        );
    }

    /// Workers w1, w2 with 2 slots each; a streaming job of 4 partitions read by one
    /// task (attempt 1 on w1), `params` in its spec.
    fn job(params: &str) -> State {
        let mut s = test_stream_job(test_spec(params), vec![vec![0, 1, 2, 3]]);
        launch(&mut s, 0, 1, "w1");
        s
    }

    use crate::state::machine::test_launch as launch;

    /// Task `task`'s attempt commits a batch of `n` records from each of its
    /// partitions in `busy_ms`, seeing `behind` records after each.
    fn commit(
        s: &mut State,
        task: u32,
        attempt: u32,
        n: i64,
        behind: i64,
        busy_ms: u64,
        at_ms: u64,
    ) {
        let st = s.jobs["s"].stream.clone().unwrap();
        let batch = st.work[task as usize].last.1 + 1;
        // its partitions, and those it is handing over
        let mut parts = st.assignment[task as usize].clone();
        parts.extend(
            st.handoffs
                .iter()
                .filter(|(_, f)| **f == task)
                .map(|(p, _)| *p),
        );
        parts.sort_unstable();
        let offsets: Vec<BatchOffsets> = parts
            .iter()
            .map(|p| {
                let from = st.partitions[p].offset;
                let to = from.unwrap_or(0) + n;
                BatchOffsets {
                    partition: *p,
                    from,
                    to,
                    high_watermark: Some(to + behind),
                    max_event_ms: None,
                    state_url: None,
                    min_open_end: None,
                }
            })
            .collect();
        let records = (n as u64) * offsets.len() as u64;
        s.apply(&Command::StreamCommit {
            job_id: "s".into(),
            task,
            attempt,
            batch,
            offsets,
            moves: vec![],
            records,
            rows_out: records,
            bytes_out: 1,
            bad_records: 0,
            busy_ms,
            at_ms,
            emitted: None,
            duplicates: 0,
            late_records: 0,
        })
        .unwrap();
    }

    fn apply(s: &mut State, ps: Vec<Proposal>) {
        for p in ps {
            match p {
                Proposal::Rescale {
                    job_id,
                    assignment,
                    decision,
                } => s
                    .apply(&Command::StreamRescale {
                        job_id,
                        assignment,
                        at_ms: decision.at_ms,
                        decision,
                    })
                    .unwrap(),
                Proposal::Effect {
                    decision_id,
                    effect,
                } => s
                    .apply(&Command::DecisionEffect {
                        decision_id,
                        effect,
                    })
                    .unwrap(),
            };
        }
    }

    #[test]
    fn a_burst_scales_up_at_once_and_the_quiet_after_it_scales_down_after_the_delay() {
        let mut s = job("catch_up_target = \"1s\"\nscale_down_delay = \"10s\"");
        let mut mem = Memory::default();
        // steady: 100 records per partition per second, each batch caught up; one
        // task processes 1000 records in 100 ms (10000 records/s)
        for i in 0..4 {
            commit(&mut s, 0, 1, 250, 0, 100, 1000 + i * 1000);
        }
        assert!(decide(&s, 5000, &mut mem).is_empty(), "one task keeps up");
        // a burst: 20000 records behind on each partition
        commit(&mut s, 0, 1, 250, 20_000, 100, 6000);
        let ps = decide(&s, 6000, &mut mem);
        let [Proposal::Rescale {
            assignment,
            decision,
            ..
        }] = &ps[..]
        else {
            panic!("{ps:?}")
        };
        assert_eq!(decision.kind, DecisionKind::KafkaScaleUp);
        assert_eq!(
            assignment.iter().filter(|a| !a.is_empty()).count(),
            4,
            "capped at the partitions"
        );
        assert_eq!(decision.inputs["lag_records"], "80000");
        apply(&mut s, ps);
        // task 0 keeps running and hands three partitions over at its next commit;
        // the new tasks start then
        let st = s.jobs["s"].stream.clone().unwrap();
        assert_eq!(s.jobs["s"].stages[0].tasks.len(), 4);
        assert!(!s.jobs["s"].ready_to_launch(0, 1, 7000));
        commit(&mut s, 0, 1, 250, 20_000, 100, 6500);
        assert!(s.jobs["s"].ready_to_launch(0, 1, 7000));
        for t in 1..4u32 {
            launch(&mut s, t, 1, if t < 2 { "w1" } else { "w2" });
        }
        assert!(decide(&s, 7000, &mut mem).is_empty(), "in its cooldown");
        // they catch up
        for t in 0..4u32 {
            commit(&mut s, t, 1, 20_000, 0, 2000, 12_000);
        }
        assert!(st.work.len() == 4);
        let ps = decide(&s, 12_000, &mut mem);
        let [Proposal::Effect { effect, .. }] = &ps[..] else {
            panic!("{ps:?}")
        };
        assert!(effect.contains("lag back under the threshold"), "{effect}");
        apply(&mut s, ps);
        // quiet: fewer tasks would do, but only after the delay
        for (i, at) in [13_000u64, 17_000, 21_000].into_iter().enumerate() {
            for t in 0..4u32 {
                commit(&mut s, t, 1, 10, 0, 10, at + i as u64);
            }
            let ps = decide(&s, at + 10, &mut mem);
            assert!(ps.is_empty(), "{at}: {ps:?}");
        }
        for t in 0..4u32 {
            commit(&mut s, t, 1, 10, 0, 10, 24_000);
        }
        let ps = decide(&s, 24_000, &mut mem);
        let [Proposal::Rescale {
            assignment,
            decision,
            ..
        }] = &ps[..]
        else {
            panic!("{ps:?}")
        };
        // to the most the window asked for: its first round still saw the catch-up's
        // input rate (2 tasks), though one task would do now
        assert_eq!(decision.kind, DecisionKind::KafkaScaleDown, "{decision:?}");
        assert_eq!(
            assignment.iter().filter(|a| !a.is_empty()).count(),
            2,
            "{decision:?}"
        );
        assert_eq!(decision.inputs["desired_tasks"], "1");
        assert!(
            decision
                .why
                .contains("at most 2 task(s) were needed for 12000 ms"),
            "{}",
            decision.why
        );
        assert_eq!(decision.inputs["partitions_moved"], "2");
        apply(&mut s, ps);
        let job = &s.jobs["s"];
        let parked: Vec<bool> = (0..4)
            .map(|t| job.stream.as_ref().unwrap().parked(t))
            .collect();
        assert_eq!(parked.iter().filter(|p| **p).count(), 2);
        for (t, parked) in parked.iter().enumerate() {
            // the remaining tasks run on (they gain partitions in place); the parked
            // ones never launch
            let runs = matches!(job.stages[0].tasks[t].state, TaskState::Running { .. });
            assert_eq!(runs, !parked, "task {t}");
            assert!(!job.ready_to_launch(0, t, 30_000));
        }
    }

    #[test]
    fn a_lost_worker_shrinks_the_tasks_to_the_slots_left_and_the_switch_turns_the_rule_off() {
        let mut s = job("");
        s.apply(&Command::StreamRescale {
            job_id: "s".into(),
            assignment: vec![vec![0], vec![1], vec![2], vec![3]],
            decision: Decision {
                id: 0,
                at_ms: 2,
                job_id: "s".into(),
                kind: DecisionKind::KafkaScaleUp,
                what: "test".into(),
                why: "test".into(),
                inputs: BTreeMap::new(),
                effect: None,
            },
            at_ms: 2,
        })
        .unwrap();
        commit(&mut s, 0, 1, 10, 0, 10, 100);
        s.apply(&Command::WorkerLost {
            worker_id: "w2".into(),
            at_ms: 200,
        })
        .unwrap();
        let mut mem = Memory::default();
        let ps = decide(&s, 300, &mut mem);
        // (the scale-up's effect, then the scale-down)
        let [Proposal::Effect { .. }, Proposal::Rescale {
            assignment,
            decision,
            ..
        }] = &ps[..]
        else {
            panic!("{ps:?}")
        };
        assert_eq!(decision.kind, DecisionKind::KafkaScaleDown);
        assert_eq!(assignment.iter().filter(|a| !a.is_empty()).count(), 2);
        assert!(decision.why.contains("only 2 slot(s)"), "{}", decision.why);
        let mut off = job("kafka_autoscale = false");
        commit(&mut off, 0, 1, 10, 1_000_000, 10, 10_000);
        assert!(decide(&off, 20_000, &mut mem).is_empty());
        // a rescale must deal every partition once
        let e = off
            .apply(&Command::StreamRescale {
                job_id: "s".into(),
                assignment: vec![vec![0, 1], vec![1, 3]],
                decision: decision.clone(),
                at_ms: 1,
            })
            .unwrap_err();
        assert!(e.to_string().contains("every partition"), "{e}");
    }

    #[test]
    fn a_task_that_gives_partitions_up_keeps_running_and_hands_them_over_at_its_commit() {
        let mut s = job("");
        let rescale = |s: &mut State, assignment: Vec<Vec<i32>>, at_ms: u64| {
            s.apply(&Command::StreamRescale {
                job_id: "s".into(),
                assignment,
                decision: Decision {
                    id: 0,
                    at_ms,
                    job_id: "s".into(),
                    kind: DecisionKind::KafkaScaleUp,
                    what: "test".into(),
                    why: "test".into(),
                    inputs: BTreeMap::new(),
                    effect: None,
                },
                at_ms,
            })
        };
        rescale(&mut s, vec![vec![0, 1], vec![2, 3]], 2).unwrap();
        let job = &s.jobs["s"];
        assert!(
            matches!(
                job.stages[0].tasks[0].state,
                TaskState::Running { attempt: 1, .. }
            ),
            "it only gives partitions up: it keeps running"
        );
        assert_eq!(job.stages[0].tasks[1].state, TaskState::Pending, "new");
        assert!(
            !job.ready_to_launch(0, 1, 10),
            "the new task waits until task 0 has handed 2 and 3 over"
        );
        // task 0's batch in flight still holds partitions 2 and 3: it commits them
        commit(&mut s, 0, 1, 10, 0, 10, 3);
        let st = s.jobs["s"].stream.as_ref().unwrap();
        assert!(st.handoffs.is_empty());
        assert_eq!(st.partitions[&3].offset, Some(10));
        assert!(s.jobs["s"].ready_to_launch(0, 1, 10), "handed over");
        // from now on, partition 2 is not task 0's
        let e = s
            .apply(&Command::StreamCommit {
                job_id: "s".into(),
                task: 0,
                attempt: 1,
                batch: 2,
                offsets: vec![BatchOffsets {
                    partition: 2,
                    from: Some(10),
                    to: 20,
                    high_watermark: None,
                    max_event_ms: None,
                    state_url: None,
                    min_open_end: None,
                }],
                moves: vec![],
                records: 10,
                rows_out: 0,
                bytes_out: 0,
                bad_records: 0,
                busy_ms: 1,
                at_ms: 4,
                emitted: None,
                duplicates: 0,
                late_records: 0,
            })
            .unwrap_err();
        assert!(e.to_string().contains("not assigned"), "{e}");
        launch(&mut s, 1, 1, "w2");
        // both run on: task 0 gains partition 2 once task 1 has handed it over
        rescale(&mut s, vec![vec![0, 1, 2], vec![3]], 5).unwrap();
        let job = &s.jobs["s"];
        let tasks = &job.stages[0].tasks;
        assert!(matches!(
            tasks[0].state,
            TaskState::Running { attempt: 1, .. }
        ));
        assert!(matches!(
            tasks[1].state,
            TaskState::Running { attempt: 1, .. }
        ));
        let st = job.stream.as_ref().unwrap();
        let running = |_: usize| true;
        assert_eq!(st.readable(0, &running), vec![0, 1], "2 is still task 1's");
        commit(&mut s, 1, 1, 5, 0, 10, 6);
        let st = s.jobs["s"].stream.as_ref().unwrap();
        assert_eq!(st.readable(0, &running), vec![0, 1, 2], "handed over");
        assert_eq!(st.readable(1, &running), vec![3]);
        assert_eq!(s.decisions.len(), 2);
    }
}
