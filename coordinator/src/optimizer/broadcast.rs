//! Runtime broadcast. Trigger: a join stage planned as a partitioned hash join with a
//! broadcast alternative (`StagePlan::broadcast`, built by the planner when the
//! build side's size was unknown or only estimated) whose build side has finished
//! with at most `broadcast_join_max_bytes` of shuffled output, while neither the join
//! stage nor the probe side's map stage has started (the probe side waits for the
//! build side: `Job::held_for_broadcast`). Action: the join stage runs as a
//! collect-left (broadcast) hash join reading the build side's whole output, with
//! the probe side's input fused into it: the probe side is never shuffled. Anchor:
//! Spark AQE's conversion of a sort-merge join to a broadcast hash join from the
//! runtime size of a finished stage (`spark.sql.adaptive.autoBroadcastJoinThreshold`,
//! 10 MiB); Spark still shuffles a side that has already materialized, this skips
//! it. Of two joins in a chain, the lower one decides first: a join whose probe side
//! is a join still able to become a broadcast join waits for that one's build side,
//! as the lower one skips the shuffle of a larger table.
//!
//! The same small build side also filters a probe side that cannot be fused: a
//! semi, anti or outer join (whose build-side rows need every probe row to have been
//! seen) gets no broadcast plan, but its probe side's map stage may have a filtered
//! plan (`StagePlan::reduce`): with the build side complete and at most
//! `broadcast_join_max_bytes`, that stage first keeps only the rows whose join keys
//! occur in the build side's output, so it shuffles only rows that can match (TPC-H
//! Q4: 3.8M lineitem keys, 31 MB, become 1.2 MB). Both sides of a shuffled inner join
//! get such a plan from the small side of a probe-local semi or inner join right above
//! it on the same keys (TPC-H Q18's `IN` subquery). Default: on;
//! `runtime_broadcast = false` turns it off, and `broadcast_join_max_bytes = 0` turns
//! every broadcast off.

use crate::state::decision::inputs;
use crate::state::{Command, Decision, DecisionKind, Job, JobState, State};

/// The broadcast joins to switch to, and the probe sides to filter, now, as commands.
pub fn runtime_broadcasts(s: &State, now_ms: u64) -> Vec<Command> {
    let mut out = vec![];
    for job in s.jobs.values().filter(|j| j.state == JobState::Running) {
        let params = &job.spec.job.params;
        let limit = params.broadcast_join_max_bytes();
        if params.runtime_broadcast == Some(false) || limit == 0 {
            continue;
        }
        for (si, st) in job.stages.iter().enumerate() {
            let Some(b) = &st.plan.broadcast else {
                continue;
            };
            let Some(Some((rows, bytes))) = build_side(job, si) else {
                continue;
            };
            if bytes > limit {
                continue;
            }
            // the probe side is itself a join that may become a broadcast join, now
            // or once its own build side ends: that one skips the shuffle of a table
            // further down the chain (TPC-H Q2: part ⋈ partsupp under ⋈ supplier),
            // so it goes first (until it decides, its probe side waits anyway)
            if matches!(build_side(job, b.fused as usize), Some(l) if l.is_none_or(|(_, b)| b <= limit))
            {
                continue;
            }
            out.push(Command::BroadcastJoin {
                job_id: job.id.clone(),
                stage: si as u32,
                decision: decision(
                    job,
                    now_ms,
                    format!(
                        "stage {si} runs as a broadcast join in {} tasks: every task reads stage {}'s whole output ({rows} rows, {bytes} bytes), and stage {} (the probe side, {} tasks planned) is fused into it instead of shuffling",
                        b.tasks, b.build, b.fused, job.stages[b.fused as usize].tasks.len()
                    ),
                    format!(
                        "the join's build side (stage {}) wrote {bytes} bytes, at most broadcast_join_max_bytes = {limit}; at planning its size was unknown or only estimated",
                        b.build
                    ),
                    Seen {
                        stage: si,
                        build: b.build,
                        rows,
                        bytes,
                        limit,
                    },
                    [
                        ("fused_stage", b.fused.to_string()),
                        ("tasks_before", st.tasks.len().to_string()),
                        ("tasks_after", b.tasks.to_string()),
                    ],
                ),
            });
        }
        for (si, st) in job.stages.iter().enumerate() {
            let Some(r) = &st.plan.reduce else {
                continue;
            };
            let Some(build) = job.stages.get(r.build as usize) else {
                continue;
            };
            if !st.unstarted() || !build.is_complete() {
                continue;
            }
            let (rows, bytes) = build.written();
            if bytes > limit {
                continue;
            }
            let join = job
                .stages
                .get(r.join as usize)
                .and_then(|j| j.plan.join.as_ref());
            let join_type = join.map(|j| j.join_type.clone()).unwrap_or_default();
            // the join's own build side, or the build side of a join right above it
            let how = match join.is_some_and(|j| j.left == r.build) {
                true => format!(
                    "stage {}'s {join_type} join emits nothing for a row of stage {si} whose key its build side (stage {}) lacks",
                    r.join, r.build
                ),
                false => format!(
                    "stage {}'s {join_type} join feeds a join on the same keys that keeps only the keys of stage {}, so a row of stage {si} with another key produces nothing",
                    r.join, r.build
                ),
            };
            out.push(Command::ReduceProbe {
                job_id: job.id.clone(),
                stage: si as u32,
                decision: decision(
                    job,
                    now_ms,
                    format!(
                        "stage {si} keeps only the rows whose join keys occur in stage {}'s output before it shuffles them: every task reads that whole output ({rows} rows, {bytes} bytes)",
                        r.build
                    ),
                    format!(
                        "{how}, and stage {} wrote {bytes} bytes, at most broadcast_join_max_bytes = {limit}",
                        r.build
                    ),
                    Seen {
                        stage: si,
                        build: r.build,
                        rows,
                        bytes,
                        limit,
                    },
                    [
                        ("join_stage", r.join.to_string()),
                        ("join_type", join_type),
                    ],
                ),
            });
        }
    }
    out
}

/// What a `broadcast` decision saw: the stage it changes and the build side's stage,
/// rows and bytes.
struct Seen {
    stage: usize,
    build: u32,
    rows: u64,
    bytes: u64,
    limit: u64,
}

/// A `broadcast` decision about `job`, with its inputs: what it saw and `more`.
fn decision<const N: usize>(
    job: &Job,
    now_ms: u64,
    what: String,
    why: String,
    seen: Seen,
    more: [(&str, String); N],
) -> Decision {
    let mut inputs = inputs([
        ("stage", seen.stage.to_string()),
        ("build_stage", seen.build.to_string()),
        ("build_bytes", seen.bytes.to_string()),
        ("build_rows", seen.rows.to_string()),
        ("broadcast_join_max_bytes", seen.limit.to_string()),
    ]);
    inputs.extend(more.into_iter().map(|(k, v)| (k.to_string(), v)));
    Decision {
        id: 0,
        at_ms: now_ms,
        job_id: job.id.clone(),
        kind: DecisionKind::Broadcast,
        what,
        why,
        inputs,
        effect: None,
    }
}

/// Stage `stage`'s broadcast plan, if it may still be used (the stage and its probe
/// side are as planned): its build side's rows and bytes once that side is complete,
/// `None` while it runs.
fn build_side(job: &Job, stage: usize) -> Option<Option<(u64, u64)>> {
    let st = job.stages.get(stage)?;
    let b = st.plan.broadcast.as_ref()?;
    let build = job.stages.get(b.build as usize)?;
    let fused = job.stages.get(b.fused as usize)?;
    if !st.unstarted() || !fused.unstarted() {
        return None;
    }
    if !build.is_complete() {
        return Some(None);
    }
    Some(Some(build.written()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{BroadcastPlan, TaskResult};

    /// Stage 2 joins map stages 0 (build) and 1 (probe), with a broadcast plan of 3
    /// tasks reading stage 0 only.
    fn job(params: &str) -> State {
        let spec = crate::state::test_spec(params);
        let stage = crate::state::test_stage;
        let mut join = stage(2, 4, None, vec![0, 1]);
        join.broadcast = Some(Box::new(BroadcastPlan {
            plan: Default::default(),
            display: "broadcast".into(),
            tasks: 3,
            inputs: vec![0],
            build: 0,
            fused: 1,
        }));
        let mut s = crate::state::test_state(&[("w1", 4)], 1);
        s.apply(&Command::SubmitJob {
            job_id: "b".into(),
            spec: Box::new(spec),
            stages: vec![
                stage(0, 1, Some(4), vec![]),
                stage(1, 2, Some(4), vec![]),
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

    fn build_done(s: &mut State, bytes: u64) {
        stage_done(s, 0, bytes);
    }

    #[test]
    fn the_probe_side_waits_for_a_small_build_side_and_is_then_fused() {
        let mut s = job("");
        assert!(!s.jobs["b"].stage_ready(1), "the probe side waits");
        assert!(runtime_broadcasts(&s, 5).is_empty(), "the build side runs");
        build_done(&mut s, 4096);
        assert!(s.jobs["b"].stage_ready(1));
        let [cmd] = runtime_broadcasts(&s, 5).try_into().unwrap();
        s.apply(&cmd).unwrap();
        let j = &s.jobs["b"];
        assert_eq!(j.stages[2].tasks.len(), 3);
        assert_eq!(j.stages[2].plan.inputs, vec![0]);
        assert_eq!(j.stages[2].plan.display, "broadcast");
        assert!(j.stages[1].tasks.is_empty(), "the probe side never runs");
        assert!(j.stage_ready(2));
        let d = s.decisions.last().unwrap();
        assert_eq!(d.kind, DecisionKind::Broadcast);
        assert_eq!(d.inputs["build_bytes"], "4096");
        assert!(runtime_broadcasts(&s, 6).is_empty(), "once");
        assert!(s.apply(&cmd).is_err(), "the plan is gone once used");
    }

    /// Stage 3 joins map stages 1 (build) and 2 (probe); stage 4 joins stage 0
    /// (build) with stage 3: both have broadcast plans.
    fn chain() -> State {
        let stage = crate::state::test_stage;
        let alt = |build, fused, inputs| {
            Some(Box::new(BroadcastPlan {
                plan: Default::default(),
                display: format!("broadcast {build}"),
                tasks: 2,
                inputs,
                build,
                fused,
            }))
        };
        let mut lower = stage(3, 4, Some(4), vec![1, 2]);
        lower.broadcast = alt(1, 2, vec![1]);
        let mut upper = stage(4, 4, None, vec![0, 3]);
        upper.broadcast = alt(0, 3, vec![0, 1, 2]);
        let mut s = crate::state::test_state(&[("w1", 4)], 1);
        s.apply(&Command::SubmitJob {
            job_id: "b".into(),
            spec: Box::new(crate::state::test_spec("")),
            stages: vec![
                stage(0, 1, Some(4), vec![]),
                stage(1, 1, Some(4), vec![]),
                stage(2, 2, Some(4), vec![]),
                lower,
                upper,
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

    fn stage_done(s: &mut State, stage: u32, bytes: u64) {
        s.apply(&Command::TaskLaunched {
            job_id: "b".into(),
            stage,
            task: 0,
            attempt: 1,
            worker_id: "w1".into(),
            at_ms: 1,
        })
        .unwrap();
        s.apply(&Command::TaskSucceeded {
            job_id: "b".into(),
            stage,
            task: 0,
            attempt: 1,
            result: TaskResult {
                partitions: vec![(10, bytes / 4); 4],
                ..Default::default()
            },
            at_ms: 2,
        })
        .unwrap();
    }

    #[test]
    fn of_two_joins_in_a_chain_the_lower_decides_first() {
        let mut s = chain();
        stage_done(&mut s, 0, 4096);
        assert!(
            runtime_broadcasts(&s, 5).is_empty(),
            "the upper join waits for the lower one's build side"
        );
        stage_done(&mut s, 1, 4096);
        let [cmd] = runtime_broadcasts(&s, 5).try_into().unwrap();
        assert!(matches!(cmd, Command::BroadcastJoin { stage: 3, .. }));
        s.apply(&cmd).unwrap();
        assert!(
            s.jobs["b"].stages[2].tasks.is_empty(),
            "the large table is never shuffled"
        );
        assert!(
            runtime_broadcasts(&s, 6).is_empty(),
            "the upper join's plan fused the lower one as planned: no longer usable"
        );

        // the lower build side turns out large: the upper join goes ahead
        let mut s = chain();
        stage_done(&mut s, 0, 4096);
        stage_done(&mut s, 1, 11 << 20);
        let [cmd] = runtime_broadcasts(&s, 5).try_into().unwrap();
        assert!(matches!(cmd, Command::BroadcastJoin { stage: 4, .. }));
    }

    /// Stage 2 semi-joins map stages 0 (build) and 1 (probe); stage 1 has a plan
    /// filtered by stage 0's keys.
    fn semi(params: &str) -> State {
        semi_with(params, 1)
    }

    /// `semi` with `build_tasks` tasks in the build side's stage.
    fn semi_with(params: &str, build_tasks: u32) -> State {
        let stage = crate::state::test_stage;
        let mut probe = stage(1, 2, Some(4), vec![]);
        probe.reduce = Some(Box::new(crate::state::ReducePlan {
            plan: Default::default(),
            display: "filtered".into(),
            inputs: vec![0],
            build: 0,
            join: 2,
        }));
        let mut join = stage(2, 4, None, vec![0, 1]);
        join.join = Some(crate::state::StageJoin {
            join_type: "LeftSemi".into(),
            left: 0,
            right: 1,
            split_left: true,
            split_right: true,
        });
        let mut s = crate::state::test_state(&[("w1", 4)], 1);
        s.apply(&Command::SubmitJob {
            job_id: "b".into(),
            spec: Box::new(crate::state::test_spec(params)),
            stages: vec![stage(0, build_tasks, Some(4), vec![]), probe, join],
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

    #[test]
    fn a_semi_joins_probe_side_waits_for_a_small_build_side_and_is_then_filtered_by_it() {
        let mut s = semi("");
        assert!(!s.jobs["b"].stage_ready(1), "the probe side waits");
        assert!(runtime_broadcasts(&s, 5).is_empty());
        build_done(&mut s, 4096);
        let [cmd] = runtime_broadcasts(&s, 5).try_into().unwrap();
        assert!(
            matches!(cmd, Command::ReduceProbe { stage: 1, .. }),
            "{cmd:?}"
        );
        s.apply(&cmd).unwrap();
        let j = &s.jobs["b"];
        assert_eq!(j.stages[1].plan.display, "filtered");
        assert_eq!(j.stages[1].plan.inputs, vec![0]);
        assert_eq!(j.stages[1].tasks.len(), 2, "its tasks stay");
        assert!(j.stage_ready(1));
        let d = s.decisions.last().unwrap();
        assert_eq!(d.kind, DecisionKind::Broadcast);
        assert_eq!(d.inputs["join_type"], "LeftSemi");
        assert_eq!(d.inputs["build_bytes"], "4096");
        assert!(runtime_broadcasts(&s, 6).is_empty(), "once");
        assert!(s.apply(&cmd).is_err(), "the plan is gone once used");

        let mut large = semi("");
        build_done(&mut large, 11 << 20);
        assert!(runtime_broadcasts(&large, 5).is_empty(), "above 10 MiB");
        assert!(
            large.jobs["b"].stage_ready(1),
            "the probe side runs as planned"
        );
        // a build side of two tasks: the probe side waits while the first one wrote
        // little, and no longer once the first alone wrote more than the limit
        for (bytes, waits) in [(4096, true), (11 << 20, false)] {
            let mut s = semi_with("", 2);
            build_done(&mut s, bytes);
            assert_eq!(
                !s.jobs["b"].stage_ready(1),
                waits,
                "the first wrote {bytes}"
            );
        }
        assert!(semi("runtime_broadcast = false").jobs["b"].stage_ready(1));
    }

    #[test]
    fn a_large_build_side_or_the_switch_off_keeps_the_shuffled_join() {
        let mut s = job("");
        build_done(&mut s, 11 << 20);
        assert!(runtime_broadcasts(&s, 5).is_empty(), "above 10 MiB");
        assert!(s.jobs["b"].stage_ready(1), "the probe side runs after all");
        let off = job("runtime_broadcast = false");
        assert!(off.jobs["b"].stage_ready(1), "no wait when off");
        let none = job("broadcast_join_max_bytes = 0");
        assert!(none.jobs["b"].stage_ready(1));
    }
}
