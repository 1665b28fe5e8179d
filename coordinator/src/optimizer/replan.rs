//! Re-planning between stages (adaptive execution). When every input of a stage that
//! reads hash-shuffled data is complete and none of its tasks has run, the statistics
//! its map tasks really produced (bytes per output partition, per map task) decide
//! its tasks instead of the partition count planned at submit:
//! - `skew`: a skewed partition of a join is divided into several tasks; one of an
//!   aggregation's input into pre-merge tasks (a new stage) and one merge task;
//! - `coalesce`: contiguous small partitions are packed into one task.
//!
//! The result is one `ReplanStage` command carrying the new tasks and the decisions
//! that explain them; their measured effect (task times, the stage's wall time) is
//! filled in by the state machine when the stage completes.

use super::{coalesce, skew};
use crate::state::decision::inputs;
use crate::state::{
    Command, Decision, DecisionKind, Job, JobState, State, TaskReads, TaskState, WorkerState,
};
use std::ops::Range;

/// A re-planned stage.
#[derive(Debug, Clone, PartialEq)]
pub struct Replan {
    /// the job
    pub job_id: String,
    /// the stage
    pub stage: u32,
    /// its new tasks
    pub tasks: Vec<TaskReads>,
    /// why
    pub decisions: Vec<Decision>,
    /// the tasks of its aggregation's pre-merge step (a new stage), if any
    pub pre_merge: Vec<TaskReads>,
}

impl Replan {
    /// The command that applies it.
    pub fn command(self) -> Command {
        Command::ReplanStage {
            job_id: self.job_id,
            stage: self.stage,
            tasks: self.tasks,
            decisions: self.decisions,
            pre_merge: self.pre_merge,
        }
    }
}

/// Every stage of every running job that the rules re-plan now.
pub fn replans(s: &State, now_ms: u64) -> Vec<Replan> {
    s.jobs
        .values()
        .filter(|j| j.state == JobState::Running)
        .flat_map(|j| (0..j.stages.len() as u32).filter_map(|st| replan(s, j, st, now_ms)))
        .collect()
}

/// One input of a stage: its bytes per (map task, reducer partition).
struct Input<'a> {
    stage: u32,
    per_map: Vec<Vec<u64>>,
    results: Vec<&'a crate::state::TaskResult>,
}

impl Input<'_> {
    /// The keys its map tasks sampled as hot in partition `p`, with their estimated
    /// rows summed over the map tasks, largest first, and the partition's rows.
    fn hot_keys(&self, p: u32) -> (Vec<(String, u64)>, u64) {
        let mut keys: std::collections::BTreeMap<&str, u64> = Default::default();
        let mut rows = 0;
        for r in &self.results {
            rows += r.partitions.get(p as usize).map_or(0, |x| x.0);
            for (q, ks) in &r.hot_keys {
                if *q == p {
                    for (k, n) in ks {
                        *keys.entry(k).or_default() += n;
                    }
                }
            }
        }
        let mut keys: Vec<(String, u64)> =
            keys.into_iter().map(|(k, n)| (k.to_string(), n)).collect();
        keys.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        (keys, rows)
    }

    /// `sep` and "hot key K (~x% of its N rows)" for partition `p`'s hottest sampled
    /// key; empty when none was sampled.
    fn hot_key_text(&self, p: u32, sep: &str) -> String {
        let (keys, rows) = self.hot_keys(p);
        keys.first()
            .map(|(k, n)| {
                format!(
                    "{sep}hot key {k} (~{:.0}% of its {rows} rows)",
                    100.0 * *n as f64 / rows.max(1) as f64
                )
            })
            .unwrap_or_default()
    }

    fn partition_sizes(&self, n: usize) -> Vec<u64> {
        (0..n)
            .map(|p| self.per_map.iter().map(|m| m[p]).sum())
            .collect()
    }
}

/// The re-plan of `stage` of `job`, if the stage is ready for one and a rule changes
/// something.
pub fn replan(s: &State, job: &Job, stage: u32, now_ms: u64) -> Option<Replan> {
    let st = job.stages.get(stage as usize)?;
    if !st.unstarted() {
        return None;
    }
    let n = st.tasks.len();
    if n < 2 || st.plan.inputs.is_empty() {
        return None;
    }
    let mut hash = vec![];
    for &i in &st.plan.inputs {
        let input = job.stages.get(i as usize)?;
        match input.plan.shuffle_partitions {
            Some(m) if m as usize == n && m > 1 => {}
            // a merge input is read whole by every task
            Some(1) => continue,
            _ => return None,
        }
        let mut per_map = vec![];
        let mut results = vec![];
        for t in &input.tasks {
            let TaskState::Succeeded { result, .. } = &t.state else {
                return None;
            };
            if result.partitions.len() != n {
                return None;
            }
            per_map.push(result.partitions.iter().map(|&(_, b)| b).collect());
            results.push(result);
        }
        hash.push(Input {
            stage: i,
            per_map,
            results,
        });
    }
    if hash.is_empty() {
        return None;
    }
    let params = &job.spec.job.params;
    let advisory = params.target_partition_bytes();
    let mut decisions = vec![];
    let decision = |kind, what: String, why: String, inputs| Decision {
        id: 0,
        at_ms: now_ms,
        job_id: job.id.clone(),
        kind,
        what,
        why,
        inputs,
        effect: None,
    };

    // what a task should read: target_partition_bytes, but no more than the input
    // spread over the alive slots (so every slot gets work), at least
    // min_partition_bytes; a skewed partition's pieces aim at it too
    let sizes: Vec<u64> = (0..n)
        .map(|p| {
            hash.iter()
                .map(|h| h.per_map.iter().map(|m| m[p]).sum::<u64>())
                .sum()
        })
        .collect();
    let total: u64 = sizes.iter().sum();
    let slots: u32 = s
        .workers
        .values()
        .filter(|w| w.state == WorkerState::Alive)
        .map(|w| w.slots)
        .sum();
    let min = params.min_partition_bytes();
    let target = coalesce::target_size(total, slots, advisory, min);

    // skew: the partitions divided, and each one's tasks
    let mut split: Vec<Option<Vec<TaskReads>>> = vec![None; n];
    let factor = params.skew_factor();
    let threshold = params.skew_threshold_bytes();
    // a stage whose output is merged (read one map task per partition, in order) must
    // not run more tasks than planned: only coalescing applies there
    let merged_output = st.plan.shuffle_partitions == Some(1);
    if let (Some(j), true) = (
        &st.plan.join,
        params.skew_join != Some(false) && !merged_output,
    ) {
        let side = |stage: u32, allowed: bool| {
            hash.iter()
                .find(|h| h.stage == stage)
                .filter(|_| allowed)
                .map(|h| (h, h.partition_sizes(n)))
        };
        let (left, right) = (side(j.left, j.split_left), side(j.right, j.split_right));
        let flags = |side: &Option<(&Input, Vec<u64>)>| {
            side.as_ref()
                .map(|(_, sizes)| skew::skewed(sizes, factor, threshold))
                .unwrap_or_else(|| vec![false; n])
        };
        let (lskew, rskew) = (flags(&left), flags(&right));
        let ranges = |side: &Option<(&Input, Vec<u64>)>, skewed: &[bool], p: usize| {
            let Some((input, sizes)) = side else {
                return vec![];
            };
            if !skewed[p] {
                return vec![];
            }
            let target = skew::split_target(sizes, skewed, target);
            let per_map: Vec<u64> = input.per_map.iter().map(|m| m[p]).collect();
            skew::map_ranges(&per_map, target)
        };
        for p in 0..n {
            let (lr, rr) = (ranges(&left, &lskew, p), ranges(&right, &rskew, p));
            if lr.len() < 2 && rr.len() < 2 {
                continue;
            }
            let whole = |r: Vec<Range<u32>>| {
                if r.len() < 2 {
                    vec![None]
                } else {
                    r.into_iter().map(Some).collect()
                }
            };
            let (lr, rr) = (whole(lr), whole(rr));
            let mut tasks = vec![];
            for l in &lr {
                for r in &rr {
                    let mut map_ranges = vec![];
                    if let Some(l) = l {
                        map_ranges.push((j.left, l.start, l.end));
                    }
                    if let Some(r) = r {
                        map_ranges.push((j.right, r.start, r.end));
                    }
                    tasks.push(TaskReads {
                        map_ranges,
                        ..TaskReads::range(p as u32, p as u32 + 1)
                    });
                }
            }
            let describe =
                |name: &str, side: &Option<(&Input, Vec<u64>)>, pieces: &[Option<Range<u32>>]| {
                    side.as_ref().map(|(input, sizes)| {
                        let hot = input.hot_key_text(p as u32, ", ");
                        format!(
                        "{name} (stage {}): {} bytes, median partition {} bytes, {} piece(s){hot}",
                        input.stage,
                        sizes[p],
                        skew::median(sizes),
                        pieces.len()
                    )
                    })
                };
            let sides: Vec<String> = [describe("left", &left, &lr), describe("right", &right, &rr)]
                .into_iter()
                .flatten()
                .collect();
            decisions.push(decision(
                DecisionKind::SkewSplit,
                format!(
                    "stage {stage} partition {p} of the {} join runs as {} tasks ({} x {} pieces of its left and right map outputs), each reading the other side's whole partition",
                    j.join_type,
                    tasks.len(),
                    lr.len(),
                    rr.len()
                ),
                format!(
                    "the partition is larger than both skew_factor = {factor} x its side's median partition and skew_threshold_bytes = {threshold}: {}",
                    sides.join("; ")
                ),
                inputs([
                    ("stage", stage.to_string()),
                    ("partition", p.to_string()),
                    ("join_type", j.join_type.clone()),
                    ("sides", sides.join("; ")),
                    ("skew_factor", factor.to_string()),
                    ("skew_threshold_bytes", threshold.to_string()),
                    ("tasks", tasks.len().to_string()),
                ]),
            ));
            // the hottest sampled key of the divided sides, by name
            let hottest = [&left, &right]
                .into_iter()
                .flatten()
                .filter_map(|(input, _)| input.hot_keys(p as u32).0.into_iter().next())
                .max_by_key(|(_, n)| *n);
            if let (Some((key, _)), Some(d)) = (hottest, decisions.last_mut()) {
                d.inputs.insert("hot_key".into(), key);
            }
            split[p] = Some(tasks);
        }
    }

    // skew in an aggregation's input: pre-merge pieces, then one merge task
    let mut pre_merge = vec![];
    if let (Some(pm), true) = (&st.plan.pre_merge, params.skew_aggregation != Some(false)) {
        if let Some(input) = hash.iter().find(|h| h.stage == pm.input) {
            let via = (pm.input, job.stages.len() as u32);
            let sizes = input.partition_sizes(n);
            let skewed = skew::skewed(&sizes, factor, threshold);
            for p in 0..n {
                if !skewed[p] || split[p].is_some() {
                    continue;
                }
                let piece = skew::split_target(&sizes, &skewed, target);
                let per_map: Vec<u64> = input.per_map.iter().map(|m| m[p]).collect();
                let ranges = skew::map_ranges(&per_map, piece);
                if ranges.len() < 2 {
                    continue;
                }
                let hot = input.hot_key_text(p as u32, "; ");
                let keys = input.hot_keys(p as u32).0;
                let mut d = decision(
                    DecisionKind::SkewSplit,
                    format!(
                        "stage {stage} partition {p} of the aggregation runs as {} pre-merge tasks (stage {}), each merging the partial states of a range of stage {}'s map tasks, and one merge task",
                        ranges.len(),
                        via.1,
                        pm.input
                    ),
                    format!(
                        "the partition is larger than both skew_factor = {factor} x the median partition ({} bytes) and skew_threshold_bytes = {threshold}: {} bytes of partial states{hot}",
                        skew::median(&sizes),
                        sizes[p]
                    ),
                    inputs([
                        ("stage", stage.to_string()),
                        ("partition", p.to_string()),
                        ("input_stage", pm.input.to_string()),
                        ("partition_bytes", sizes[p].to_string()),
                        ("median_partition", skew::median(&sizes).to_string()),
                        ("skew_factor", factor.to_string()),
                        ("skew_threshold_bytes", threshold.to_string()),
                        ("pre_merge_tasks", ranges.len().to_string()),
                    ]),
                );
                if let Some((k, _)) = keys.into_iter().next() {
                    d.inputs.insert("hot_key".into(), k);
                }
                decisions.push(d);
                pre_merge.extend(ranges.into_iter().map(|r| TaskReads {
                    map_ranges: vec![(pm.input, r.start, r.end)],
                    ..TaskReads::range(p as u32, p as u32 + 1)
                }));
                split[p] = Some(vec![TaskReads {
                    via: vec![via],
                    ..TaskReads::range(p as u32, p as u32 + 1)
                }]);
            }
        }
    }

    // coalesce the runs of partitions between the divided ones
    let mut tasks: Vec<TaskReads> = vec![];
    let mut p = 0;
    let coalescing = params.coalesce != Some(false);
    let (mut unsplit, mut coalesced) = (0, 0);
    while p < n {
        if let Some(t) = split[p].take() {
            tasks.extend(t);
            p += 1;
            continue;
        }
        let end = (p..n).find(|&q| split[q].is_some()).unwrap_or(n);
        unsplit += end - p;
        let runs = if coalescing {
            coalesce::coalesce(&sizes[p..end], target, min)
        } else {
            (0..(end - p) as u32).map(|i| i..i + 1).collect()
        };
        coalesced += runs.len();
        tasks.extend(
            runs.into_iter()
                .map(|r| TaskReads::range(p as u32 + r.start, p as u32 + r.end)),
        );
        p = end;
    }
    if coalesced < unsplit {
        let mut sorted = sizes.clone();
        sorted.sort_unstable();
        decisions.insert(
            0,
            decision(
                DecisionKind::Coalesce,
                format!(
                    "stage {stage} reads its {unsplit} reducer partitions in {coalesced} tasks instead of {unsplit}: contiguous partitions packed to about {target} bytes each"
                ),
                format!(
                    "its inputs' map tasks wrote {total} bytes in all; packing to target {target} bytes (target_partition_bytes = {advisory}, at most the input spread over {slots} alive slots, at least min_partition_bytes = {min}) runs fewer, fuller tasks"
                ),
                inputs([
                    ("stage", stage.to_string()),
                    ("partitions", n.to_string()),
                    ("bytes", total.to_string()),
                    ("smallest_partition", sorted.first().copied().unwrap_or(0).to_string()),
                    ("median_partition", skew::median(&sizes).to_string()),
                    ("largest_partition", sorted.last().copied().unwrap_or(0).to_string()),
                    ("target_bytes", target.to_string()),
                    ("alive_slots", slots.to_string()),
                    ("tasks_before", unsplit.to_string()),
                    ("tasks_after", coalesced.to_string()),
                ]),
            ),
        );
    }
    if decisions.is_empty() {
        return None;
    }
    Some(Replan {
        job_id: job.id.clone(),
        stage,
        tasks,
        decisions,
        pre_merge,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{StageJoin, TaskResult};

    const MB: u64 = 1 << 20;

    /// A job "j" whose stage 2 joins the hash outputs (n partitions) of map stages 0
    /// and 1 (`maps` tasks each), with `join_type` (None: no join, e.g. an aggregate),
    /// and `params` as `[job.params]` TOML lines; two workers of 4 slots.
    fn join_job(n: u32, maps: u32, join_type: Option<(&str, bool, bool)>, params: &str) -> State {
        let spec = crate::state::test_spec(params);
        let stage = crate::state::test_stage;
        let mut join = stage(2, n, None, vec![0, 1]);
        join.join = join_type.map(|(t, l, r)| StageJoin {
            join_type: t.into(),
            left: 0,
            right: 1,
            split_left: l,
            split_right: r,
        });
        let mut s = State::default();
        for w in ["w1", "w2"] {
            s.apply(&Command::RegisterWorker {
                worker_id: w.into(),
                address: format!("{w}:1"),
                http_address: String::new(),
                slots: 4,
                at_ms: 0,
                shuffle: Default::default(),
            })
            .unwrap();
        }
        s.apply(&Command::SubmitJob {
            job_id: "j".into(),
            spec: Box::new(spec),
            stages: vec![
                stage(0, maps, Some(n), vec![]),
                stage(1, maps, Some(n), vec![]),
                join,
            ],
            at_ms: 0,
            request_id: String::new(),
            request_hash: 0,
            stream: None,
            sink_schema: None,
            compaction: None,
        })
        .unwrap();
        s
    }

    /// Map task `task` of `stage` succeeds having written `bytes[p]` to partition p.
    fn map_done(s: &mut State, stage: u32, task: u32, bytes: &[u64]) {
        s.apply(&Command::TaskLaunched {
            job_id: "j".into(),
            stage,
            task,
            attempt: 1,
            worker_id: "w1".into(),
            at_ms: 1,
        })
        .unwrap();
        s.apply(&Command::TaskSucceeded {
            job_id: "j".into(),
            stage,
            task,
            attempt: 1,
            result: TaskResult {
                partitions: bytes.iter().map(|&b| (b / 100, b)).collect(),
                ..Default::default()
            },
            at_ms: 2,
        })
        .unwrap();
    }

    fn plan_of(s: &State) -> Option<Replan> {
        replan(s, &s.jobs["j"], 2, 10)
    }

    fn ranges(r: &Replan) -> Vec<(u32, u32)> {
        r.tasks.iter().map(|t| (t.start, t.end)).collect()
    }

    const KB: u64 = 1 << 10;

    #[test]
    fn nothing_is_re_planned_before_every_input_is_complete_nor_twice() {
        let mut s = join_job(8, 2, Some(("Inner", true, true)), "");
        for t in 0..2 {
            map_done(&mut s, 0, t, &[KB; 8]);
        }
        map_done(&mut s, 1, 0, &[KB; 8]);
        assert_eq!(plan_of(&s), None);
        map_done(&mut s, 1, 1, &[KB; 8]);
        let r = plan_of(&s).unwrap();
        s.apply(&r.command()).unwrap();
        assert_eq!(plan_of(&s), None, "a stage is re-planned once");
        assert_eq!(s.jobs["j"].stages[2].tasks.len(), 1);
        assert_eq!(s.jobs["j"].stages[2].replanned, vec![1]);
    }

    #[test]
    fn tiny_partitions_are_coalesced_into_one_task_and_the_decision_names_the_sizes() {
        let mut s = join_job(8, 2, Some(("Inner", true, true)), "");
        for st in 0..2 {
            for t in 0..2 {
                map_done(&mut s, st, t, &[KB; 8]);
            }
        }
        let r = plan_of(&s).unwrap();
        assert_eq!(ranges(&r), vec![(0, 8)]);
        let [d] = r.decisions.as_slice() else {
            panic!("{:?}", r.decisions)
        };
        assert_eq!(d.kind, DecisionKind::Coalesce);
        assert_eq!(d.inputs["bytes"], (32 * KB).to_string());
        assert_eq!(d.inputs["tasks_before"], "8");
        assert_eq!(d.inputs["tasks_after"], "1");
        // switched off: nothing to re-plan
        let mut off = join_job(8, 2, Some(("Inner", true, true)), "coalesce = false");
        for st in 0..2 {
            for t in 0..2 {
                map_done(&mut off, st, t, &[KB; 8]);
            }
        }
        assert_eq!(plan_of(&off), None);
    }

    #[test]
    fn all_empty_partitions_make_one_task() {
        let mut s = join_job(16, 1, None, "");
        map_done(&mut s, 0, 0, &[0; 16]);
        map_done(&mut s, 1, 0, &[0; 16]);
        assert_eq!(ranges(&plan_of(&s).unwrap()), vec![(0, 16)]);
    }

    #[test]
    fn partitions_at_the_target_stay_as_planned() {
        let mut s = join_job(4, 1, None, "target_partition_bytes = \"1MiB\"");
        map_done(&mut s, 0, 0, &[MB; 4]);
        map_done(&mut s, 1, 0, &[MB; 4]);
        assert_eq!(plan_of(&s), None);
    }

    /// Left (stage 0) partition 3 holds 4 x 100 MiB over 4 map tasks, with user 1 as
    /// its sampled hot key; the rest 1 MiB.
    fn skewed_left(join: (&str, bool, bool), params: &str) -> State {
        let mut s = join_job(8, 4, Some(join), params);
        for t in 0..4 {
            let mut left = vec![MB / 4; 8];
            left[3] = 100 * MB;
            map_done(&mut s, 0, t, &left);
            map_done(&mut s, 1, t, &[MB / 4; 8]);
            let job = s.jobs.get_mut("j").unwrap();
            if let TaskState::Succeeded { result, .. } = &mut job.stages[0].tasks[t as usize].state
            {
                let rows = result.partitions[3].0;
                result.hot_keys = vec![(
                    3,
                    vec![
                        ("user_id=1".into(), rows / 2),
                        ("user_id=9".into(), rows / 10),
                    ],
                )];
            }
        }
        s
    }

    const SMALL_SKEW: &str =
        "skew_threshold_bytes = \"64MiB\"\ntarget_partition_bytes = \"100MiB\"";

    #[test]
    fn one_giant_join_partition_is_split_by_map_outputs_and_the_rest_coalesced() {
        let s = skewed_left(("Inner", true, true), SMALL_SKEW);
        let r = plan_of(&s).unwrap();
        let split: Vec<_> = r
            .tasks
            .iter()
            .filter(|t| !t.map_ranges.is_empty())
            .collect();
        assert_eq!(split.len(), 4, "{:?}", r.tasks);
        for (i, t) in split.iter().enumerate() {
            assert_eq!((t.start, t.end), (3, 4));
            assert_eq!(t.map_ranges, vec![(0, i as u32, i as u32 + 1)]);
        }
        // the partitions before and after it are coalesced around it, never across it
        let rest: Vec<_> = r
            .tasks
            .iter()
            .filter(|t| t.map_ranges.is_empty())
            .map(|t| (t.start, t.end))
            .collect();
        assert_eq!(rest, vec![(0, 3), (4, 8)]);
        let kinds: Vec<_> = r.decisions.iter().map(|d| d.kind).collect();
        assert_eq!(kinds, vec![DecisionKind::Coalesce, DecisionKind::SkewSplit]);
        assert_eq!(r.decisions[1].inputs["partition"], "3");
        assert_eq!(r.decisions[1].inputs["hot_key"], "user_id=1");
        assert!(
            r.decisions[1]
                .why
                .contains("hot key user_id=1 (~50% of its"),
            "{}",
            r.decisions[1].why
        );
        // every (map task, partition) of each side is read exactly once per pairing
        let mut s2 = s.clone();
        s2.apply(&r.command()).unwrap();
        assert_eq!(s2.jobs["j"].stages[2].tasks.len(), 6);
    }

    #[test]
    fn a_side_the_join_type_forbids_dividing_is_read_whole() {
        // a right join may not divide its left (build) side: nothing to split
        let s = skewed_left(("Right", false, true), SMALL_SKEW);
        let r = plan_of(&s).unwrap();
        assert!(r.tasks.iter().all(|t| t.map_ranges.is_empty()));
        assert!(r
            .decisions
            .iter()
            .all(|d| d.kind != DecisionKind::SkewSplit));
        // a full join divides neither; skew_join = false turns it off
        let full = plan_of(&skewed_left(("Full", false, false), SMALL_SKEW)).unwrap();
        assert!(full.tasks.iter().all(|t| t.map_ranges.is_empty()));
        let off = plan_of(&skewed_left(
            ("Inner", true, true),
            &format!("{SMALL_SKEW}\nskew_join = false"),
        ))
        .unwrap();
        assert!(off.tasks.iter().all(|t| t.map_ranges.is_empty()));
        // no join (an aggregate's stage): no split either
    }

    #[test]
    fn both_sides_skewed_pair_every_piece_of_one_with_every_piece_of_the_other() {
        let mut s = join_job(8, 2, Some(("Inner", true, true)), SMALL_SKEW);
        for st in 0..2 {
            for t in 0..2 {
                let mut b = vec![MB / 4; 8];
                b[5] = 100 * MB;
                map_done(&mut s, st, t, &b);
            }
        }
        let r = plan_of(&s).unwrap();
        let pairs: Vec<_> = r
            .tasks
            .iter()
            .filter(|t| t.start == 5)
            .map(|t| t.map_ranges.clone())
            .collect();
        assert_eq!(
            pairs,
            vec![
                vec![(0, 0, 1), (1, 0, 1)],
                vec![(0, 0, 1), (1, 1, 2)],
                vec![(0, 1, 2), (1, 0, 1)],
                vec![(0, 1, 2), (1, 1, 2)],
            ]
        );
    }

    #[test]
    fn a_stage_reading_a_per_map_input_or_a_different_width_is_left_alone() {
        let mut s = join_job(8, 1, None, "");
        map_done(&mut s, 0, 0, &[KB; 8]);
        map_done(&mut s, 1, 0, &[KB; 8]);
        let job = s.jobs.get_mut("j").unwrap();
        job.stages[1].plan.shuffle_partitions = Some(4);
        assert_eq!(plan_of(&s), None);
    }

    /// Stage 2 aggregates the partial states of stage 0 (and reads stage 1 whole per
    /// partition): its partition 3 is skewed. It runs as pre-merge tasks over ranges
    /// of stage 0's map tasks (a new stage 3, shuffled as stage 0 was) and one merge
    /// task that reads partition 3 through stage 3; the rest coalesce as usual.
    #[test]
    fn a_skewed_aggregation_partition_is_pre_merged_in_pieces_then_merged_once() {
        let pre_merged = |params: &str| {
            let mut s = skewed_left(("Inner", false, false), params);
            let job = s.jobs.get_mut("j").unwrap();
            job.stages[2].plan.join = None;
            job.stages[2].plan.pre_merge = Some(Box::new(crate::state::PreMergePlan {
                plan: Default::default(),
                display: "RepartitionExec ... AggregateExec: mode=PartialReduce".into(),
                input: 0,
            }));
            s
        };
        let mut s = pre_merged(SMALL_SKEW);
        let r = plan_of(&s).unwrap();
        assert_eq!(r.pre_merge.len(), 4, "{:?}", r.pre_merge);
        for (i, t) in r.pre_merge.iter().enumerate() {
            assert_eq!((t.start, t.end), (3, 4));
            assert_eq!(t.map_ranges, vec![(0, i as u32, i as u32 + 1)]);
            assert!(t.via.is_empty());
        }
        assert_eq!(ranges(&r), vec![(0, 3), (3, 4), (4, 8)]);
        assert_eq!(r.tasks[1].via, vec![(0, 3)]);
        assert!(r.tasks[1].map_ranges.is_empty());
        let d = r
            .decisions
            .iter()
            .find(|d| d.kind == DecisionKind::SkewSplit)
            .unwrap();
        assert_eq!(d.inputs["partition"], "3");
        assert_eq!(d.inputs["pre_merge_tasks"], "4");
        assert_eq!(d.inputs["hot_key"], "user_id=1");
        assert!(d.what.contains("4 pre-merge tasks (stage 3)"), "{}", d.what);

        // applied: stage 3 exists, stage 2 waits for it and reads it
        s.apply(&r.command()).unwrap();
        let job = &s.jobs["j"];
        assert_eq!(job.stages.len(), 4);
        let pm = &job.stages[3];
        assert_eq!(pm.plan.inputs, vec![0]);
        assert_eq!(pm.plan.shuffle_partitions, Some(8));
        assert_eq!(pm.tasks.len(), 4);
        assert_eq!(pm.replanned, job.stages[2].replanned);
        assert!(pm.plan.display.contains("PartialReduce"));
        assert_eq!(job.stages[2].plan.inputs, vec![0, 1, 3]);
        assert!(job.stage_ready(3) && !job.stage_ready(2));
        assert_eq!(
            job.sink_stage().plan.id,
            2,
            "the appended pre-merge stage is a map stage, not the sink"
        );
        assert_eq!(
            replan(&s, job, 3, 10),
            None,
            "a pre-merge stage is never re-planned"
        );
        for t in 0..4 {
            map_done(&mut s, 3, t, &[MB; 8]);
        }
        assert!(s.jobs["j"].stage_ready(2));
        // the merge task reads partition 3 from the pre-merge stage's tasks only; the
        // other tasks read stage 0 itself and never the pre-merge stage
        let def = crate::scheduler::task_definition(&s, &s.jobs["j"], 2, 1, 1, "w1");
        let from_0 = def.input_stages.iter().find(|i| i.stage_id == 0).unwrap();
        assert_eq!(from_0.via_stage, Some(3));
        assert_eq!(from_0.map_tasks, vec![0, 1, 2, 3]);
        assert_eq!((from_0.partition_start, from_0.partition_end), (3, 4));
        assert!(def.input_stages.iter().all(|i| i.stage_id != 3));
        assert!(def
            .inputs
            .iter()
            .filter(|l| l.stage_id != 1)
            .all(|l| l.stage_id == 3));
        let def = crate::scheduler::task_definition(&s, &s.jobs["j"], 2, 0, 1, "w1");
        let ids: Vec<_> = def
            .input_stages
            .iter()
            .map(|i| (i.stage_id, i.via_stage))
            .collect();
        assert_eq!(ids, vec![(0, None), (1, None)]);
        assert!(def.inputs.iter().all(|l| l.stage_id != 3));
        // the merge task cannot fetch a pre-merge output: that output is recomputed
        s.apply(&Command::TaskLaunched {
            job_id: "j".into(),
            stage: 2,
            task: 1,
            attempt: 1,
            worker_id: "w2".into(),
            at_ms: 3,
        })
        .unwrap();
        s.apply(&Command::TaskFailed {
            job_id: "j".into(),
            stage: 2,
            task: 1,
            attempt: 1,
            error: crate::state::ErrorRecord {
                class: "transient".into(),
                message: "fetch failed".into(),
                key: String::new(),
                fetch_failed: Some(crate::state::FetchFailedRecord {
                    stage: 3,
                    map_task: 1,
                    worker_id: "w1".into(),
                }),
                worker_unreachable: false,
            },
            retryable: true,
            retry_at_ms: 0,
            at_ms: 4,
            retry_limit: None,
        })
        .unwrap();
        assert_eq!(s.jobs["j"].stages[3].tasks[1].state, TaskState::Pending);
        assert!(!s.jobs["j"].stage_ready(2));

        // switched off: the partition runs as one task
        let off = pre_merged(&format!("{SMALL_SKEW}\nskew_aggregation = false"));
        let r = plan_of(&off).unwrap();
        assert!(r.pre_merge.is_empty());
        assert!(r.tasks.iter().all(|t| t.via.is_empty()));
        // a stale command naming another stage is refused
        let mut bad = pre_merged(SMALL_SKEW);
        let mut r = plan_of(&bad).unwrap();
        r.tasks[1].via = vec![(0, 7)];
        assert!(bad.apply(&r.command()).is_err());
        assert_eq!(bad.jobs["j"].stages.len(), 3);
    }
}
