//! Load-aware placement (issue 12 §2.7, "rebalancing from heartbeats"): which worker
//! a task launches on. The scheduler (`plan_launches`) keeps the slot accounting and
//! the task's constraints (a retry avoids the workers it failed on, a speculative copy
//! goes elsewhere); this rule ranks the workers that have a free slot by headroom,
//! from the load their heartbeats reported (replicated, `state::load`) and from how
//! fast they ran this job's tasks (the state's task records).
//!
//! - **Trigger.** A worker is *hot* when its heartbeat says launches wait for a slot
//!   on it (`queued > 0`), its process uses at least 90% of its machine's cores
//!   (`HOT_CPU_FRACTION`), or at least 90% of its tasks' memory (`HOT_MEMORY_FRACTION`;
//!   beyond it tasks spill). A worker is *slow* in a stage when its median task took at
//!   least twice (`SLOW_FACTOR`) the fastest worker's median, in the latest stage of the
//!   job in which several workers finished tasks.
//! - **Action.** A task goes to the worker with the most headroom: not hot before hot,
//!   not slow before slow, then the most free slots less its queue (ties: the id, as
//!   plain spreading). A slow worker gets no task at all while the faster workers, at
//!   their measured speed, can finish every pending task of the stage before it would
//!   finish this one (the earliest-finish-time rule of list schedulers such as HEFT,
//!   and Hadoop LATE's "do not launch on slow nodes"): the task waits for a fast
//!   slot. Pending tasks are assigned only at launch (a worker queues nothing beyond a
//!   brief wait for a slot), so "partitions queued behind a hot or slow worker move to
//!   idle ones" is this rule: no partition is handed to such a worker while a better
//!   one takes it.
//! - **Record.** A placement that differs from plain spreading (most free slots) is a
//!   `rebalance` decision, one per stage (the first wave that differed), with every
//!   worker's load; its effect, once the stage finished, is how many tasks each worker
//!   ran and how long they took.
//! - **Switch.** `[job.params] load_aware_placement = false`, or the coordinator's
//!   `--load-aware-placement=false`, places by free slots alone.

use crate::state::decision::inputs;
use crate::state::load::WorkerLoad;
use crate::state::machine::Stage;
use crate::state::{Decision, DecisionKind, Job, JobState, State, TaskState};
use std::collections::BTreeMap;

/// A worker whose process uses this fraction of its machine's cores is hot.
pub const HOT_CPU_FRACTION: f64 = 0.9;
/// A worker whose process uses this fraction of its tasks' memory is hot.
pub const HOT_MEMORY_FRACTION: f64 = 0.9;
/// A worker whose median task takes this many times the fastest worker's is slow.
pub const SLOW_FACTOR: f64 = 2.0;

/// One worker's task slots as the leader accounts them, with its recorded load.
#[derive(Debug, Clone, PartialEq)]
pub struct Slots {
    /// worker id
    pub worker: String,
    /// free slots (running attempts and attempts it still stops are taken)
    pub free: i64,
    /// all its slots
    pub slots: i64,
    /// its load as the replicated state last recorded it
    pub load: Option<WorkerLoad>,
    /// when each attempt it runs started (ms since the epoch)
    pub running_since: Vec<u64>,
}

/// Why placement avoids a worker now (`None`: it is not hot).
pub fn hot(load: &WorkerLoad) -> Option<String> {
    if load.queued > 0 {
        return Some(format!("{} launches wait for a slot on it", load.queued));
    }
    let cpu = load.cpu_fraction();
    if cpu >= HOT_CPU_FRACTION {
        return Some(format!(
            "its CPU is at {:.0}% of its {} cores",
            cpu * 100.0,
            load.cpu_cores
        ));
    }
    let mem = load.memory_fraction();
    if mem >= HOT_MEMORY_FRACTION {
        return Some(format!(
            "its memory is at {:.0}% of its tasks' {} MiB",
            mem * 100.0,
            load.memory_limit_bytes >> 20
        ));
    }
    None
}

/// How fast a worker ran a stage's tasks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Speed {
    /// its median task duration, ms (at least 1)
    pub median_ms: u64,
    /// that, over the fastest worker's median (1 for the fastest)
    pub factor: f64,
}

/// Each worker's speed on `job`, from the latest stage up to `stage` in which at least
/// two workers finished tasks (stages differ in cost, so workers are compared within
/// one). Workers that finished none there are absent (not known to be slow).
pub fn speeds(job: &Job, stage: usize) -> BTreeMap<String, Speed> {
    for st in job.stages.iter().take(stage + 1).rev() {
        let per_worker = durations_per_worker(st);
        if per_worker.len() < 2 {
            continue;
        }
        let medians: BTreeMap<String, u64> = per_worker
            .into_iter()
            .map(|(w, mut d)| {
                d.sort_unstable();
                (w, d[d.len() / 2].max(1))
            })
            .collect();
        let fastest = *medians.values().min().expect("at least two workers");
        return medians
            .into_iter()
            .map(|(w, m)| {
                let factor = m as f64 / fastest as f64;
                (
                    w,
                    Speed {
                        median_ms: m,
                        factor,
                    },
                )
            })
            .collect();
    }
    BTreeMap::new()
}

/// The run times of a stage's finished tasks, by the worker that ran them.
fn durations_per_worker(st: &Stage) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for t in &st.tasks {
        if let TaskState::Succeeded {
            worker_id,
            started_ms,
            finished_ms,
            ..
        } = &t.state
        {
            out.entry(worker_id.clone())
                .or_default()
                .push(finished_ms.saturating_sub(*started_ms));
        }
    }
    out
}

/// What placement knows of the stage a task belongs to.
#[derive(Debug, Default)]
pub struct StageContext {
    /// each worker's speed on the job (`speeds`)
    pub speeds: BTreeMap<String, Speed>,
    /// the stage's pending tasks not placed yet in this wave, this one included
    pub pending: usize,
    /// a task may wait for a faster worker (false for speculative copies)
    pub may_wait: bool,
    /// now, ms since the epoch
    pub now_ms: u64,
}

/// Where one task goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// the worker it launches on (`None`: it waits for a faster worker's slot)
    pub worker: Option<String>,
    /// where plain spreading (most free slots) would have put it, when that differs
    pub plain: Option<String>,
    /// why the plain choice was passed over, when it was
    pub why: Option<String>,
}

/// Places a task wanting `want` slots (at least one; a task wanting more slots than a
/// worker has takes all of it) on a worker `ok` accepts, and takes its slots. With
/// `ctx` (load-aware placement) by headroom, else by free slots alone (ties: the
/// worker id). `None`: no accepted worker has a free slot.
pub fn take(
    free: &mut [Slots],
    want: u32,
    ok: impl Fn(&str) -> bool,
    ctx: Option<&StageContext>,
) -> Option<Placement> {
    let need = |f: &Slots| (want.max(1) as i64).min(f.slots.max(1));
    let fits = |f: &Slots| f.free >= need(f) && ok(&f.worker);
    // plain spreading: the most free slots, then the id
    let plain = free
        .iter()
        .enumerate()
        .filter(|(_, f)| fits(f))
        .min_by(|(_, a), (_, b)| b.free.cmp(&a.free).then(a.worker.cmp(&b.worker)))
        .map(|(i, _)| i)?;
    let chosen = match ctx {
        None => Some(plain),
        Some(ctx) => by_headroom(free, &fits, &ok, ctx),
    };
    let plain_id = free[plain].worker.clone();
    let Some(i) = chosen else {
        let why = slow_why(&plain_id, ctx.expect("held only by load"));
        return Some(Placement {
            worker: None,
            why: Some(format!("{plain_id}: {why}")),
            plain: Some(plain_id),
        });
    };
    let n = need(&free[i]);
    free[i].free -= n;
    let worker = free[i].worker.clone();
    if i == plain {
        return Some(Placement {
            worker: Some(worker),
            plain: None,
            why: None,
        });
    }
    let ctx = ctx.expect("only load-aware placement differs");
    let why = free
        .iter()
        .find(|f| f.worker == plain_id)
        .and_then(|f| f.load.as_ref().and_then(hot))
        .unwrap_or_else(|| slow_why(&plain_id, ctx));
    Some(Placement {
        worker: Some(worker),
        why: Some(format!("{plain_id}: {why}")),
        plain: Some(plain_id),
    })
}

fn slow_why(worker: &str, ctx: &StageContext) -> String {
    match ctx.speeds.get(worker) {
        Some(s) if s.factor >= SLOW_FACTOR => format!(
            "its tasks take {:.1}x the fastest worker's ({} ms median)",
            s.factor, s.median_ms
        ),
        _ => "less headroom".to_string(),
    }
}

/// The fitting worker with the most headroom, skipping slow workers the faster ones
/// the task may run on (`ok`) make unnecessary (`None`: the task waits).
fn by_headroom(
    free: &[Slots],
    fits: &impl Fn(&Slots) -> bool,
    ok: &impl Fn(&str) -> bool,
    ctx: &StageContext,
) -> Option<usize> {
    let slow = |w: &str| ctx.speeds.get(w).is_some_and(|s| s.factor >= SLOW_FACTOR);
    let key = |f: &Slots| {
        let hot = f.load.as_ref().and_then(hot).is_some();
        let queued = f.load.as_ref().map_or(0, |l| l.queued as i64);
        (hot, slow(&f.worker), -(f.free - queued), f.worker.clone())
    };
    free.iter()
        .enumerate()
        .filter(|(_, f)| fits(f))
        .filter(|(_, f)| !faster_workers_suffice(f, free, ok, ctx))
        .min_by_key(|(_, f)| key(f))
        .map(|(i, _)| i)
}

/// Whether the workers faster than slow worker `f` (by `SLOW_FACTOR` or more) can run
/// all `ctx.pending` tasks in the time `f` takes for one: each of their slots finishes
/// what it runs, then runs another task every median. A slot whose attempt has run
/// `SLOW_FACTOR` times its worker's median already is stuck and counts for nothing
/// (so a task never waits on a worker that stopped delivering).
fn faster_workers_suffice(
    f: &Slots,
    free: &[Slots],
    ok: &impl Fn(&str) -> bool,
    ctx: &StageContext,
) -> bool {
    if !ctx.may_wait {
        return false;
    }
    let Some(me) = ctx
        .speeds
        .get(&f.worker)
        .filter(|s| s.factor >= SLOW_FACTOR)
    else {
        return false;
    };
    // only workers the task may run on (a retry avoids where it failed): waiting for
    // one it may not would wait forever
    let capacity: f64 = free
        .iter()
        .filter(|o| o.worker != f.worker && ok(&o.worker))
        .filter_map(|o| {
            let s = ctx.speeds.get(&o.worker)?;
            (s.factor * SLOW_FACTOR <= me.factor).then(|| {
                let stuck_after = (s.median_ms as f64 * SLOW_FACTOR) as u64;
                let stuck = o
                    .running_since
                    .iter()
                    .filter(|&&t| ctx.now_ms.saturating_sub(t) >= stuck_after)
                    .count() as i64;
                let per_slot = (me.median_ms as f64 / s.median_ms as f64 - 1.0).floor();
                (o.slots - stuck).max(0) as f64 * per_slot.max(0.0)
            })
        })
        .sum();
    capacity >= ctx.pending as f64
}

/// How one stage's placements in a wave differed from plain spreading.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Rebalanced {
    /// tasks placed elsewhere than plain spreading would have, by (plain, chosen)
    pub moved: BTreeMap<(String, String), u32>,
    /// tasks left waiting for a fast worker instead of going to a slow one
    pub held: u32,
    /// why each passed-over worker was
    pub why: BTreeMap<String, String>,
    /// every worker's slots and load as the wave began (the decision's inputs)
    pub workers: Vec<Slots>,
}

impl Rebalanced {
    /// Notes one placement (nothing when it is plain spreading's).
    pub fn note(&mut self, p: &Placement) {
        let Some(plain) = &p.plain else { return };
        match &p.worker {
            Some(w) => *self.moved.entry((plain.clone(), w.clone())).or_default() += 1,
            None => self.held += 1,
        }
        if let Some(why) = &p.why {
            self.why.entry(plain.clone()).or_insert_with(|| why.clone());
        }
    }

    /// Whether anything differed.
    pub fn any(&self) -> bool {
        self.held > 0 || !self.moved.is_empty()
    }
}

/// Whether a stage of a job has no `rebalance` decision yet (one per stage).
pub fn undecided(s: &State, job_id: &str, stage: u32) -> bool {
    let stage = stage.to_string();
    !s.decisions.iter().any(|d| {
        d.kind == DecisionKind::Rebalance
            && d.job_id == job_id
            && d.inputs.get("stage") == Some(&stage)
    })
}

/// The `rebalance` decision of a stage's first wave placed by load: what moved where,
/// why, and every worker's load and speed as placement saw them.
pub fn decision(
    job_id: &str,
    stage: u32,
    r: &Rebalanced,
    workers: &[Slots],
    speeds: &BTreeMap<String, Speed>,
    at_ms: u64,
) -> Decision {
    let mut what = vec![];
    for ((from, to), n) in &r.moved {
        what.push(format!("{n} task(s) to {to} instead of {from}"));
    }
    if r.held > 0 {
        what.push(format!(
            "{} task(s) wait for a faster worker's slot instead of starting on a slow one",
            r.held
        ));
    }
    let mut ins = inputs([
        ("stage", stage.to_string()),
        ("moved", r.moved.values().sum::<u32>().to_string()),
        ("held", r.held.to_string()),
    ]);
    for w in workers {
        let mut v = format!("free {}/{} slots", w.free.max(0), w.slots);
        if let Some(l) = &w.load {
            v += &format!(
                ", cpu {:.0}% of {} cores, memory {} of {} MiB, queued {}, spilled {} MiB",
                l.cpu_percent,
                l.cpu_cores,
                l.memory_used_bytes >> 20,
                l.memory_limit_bytes >> 20,
                l.queued,
                l.spilled_bytes >> 20
            );
        }
        if let Some(s) = speeds.get(&w.worker) {
            v += &format!(
                ", median task {} ms ({:.1}x the fastest)",
                s.median_ms, s.factor
            );
        }
        ins.insert(format!("worker.{}", w.worker), v);
    }
    Decision {
        id: 0,
        at_ms,
        job_id: job_id.to_string(),
        kind: DecisionKind::Rebalance,
        what: format!("stage {stage}: {}", what.join("; ")),
        why: format!(
            "placed by headroom from the workers' heartbeats and task times, not by free slots alone: {}",
            r.why
                .values()
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        ),
        inputs: ins,
        effect: None,
    }
}

/// Effects of `rebalance` decisions whose stage has finished (or whose job ended
/// first): how many of the stage's tasks each worker ran, and their median time.
pub fn effects(s: &State) -> Vec<(u64, String)> {
    let mut out = vec![];
    for d in s
        .decisions
        .iter()
        .filter(|d| d.kind == DecisionKind::Rebalance && d.effect.is_none())
    {
        let Some(job) = s.jobs.get(&d.job_id) else {
            continue;
        };
        let Some(stage) = d.inputs.get("stage").and_then(|v| v.parse::<usize>().ok()) else {
            continue;
        };
        let Some(st) = job.stages.get(stage) else {
            continue;
        };
        if st.is_complete() {
            let finished = st
                .tasks
                .iter()
                .filter_map(|t| match &t.state {
                    TaskState::Succeeded { finished_ms, .. } => Some(*finished_ms),
                    _ => None,
                })
                .max()
                .unwrap_or(d.at_ms);
            let per_worker: Vec<String> = durations_per_worker(st)
                .into_iter()
                .map(|(w, mut ds)| {
                    ds.sort_unstable();
                    format!("{w} {} (median {} ms)", ds.len(), ds[ds.len() / 2])
                })
                .collect();
            out.push((
                d.id,
                format!(
                    "stage {stage} finished {} ms later; tasks per worker: {}",
                    finished.saturating_sub(d.at_ms),
                    per_worker.join(", ")
                ),
            ));
        } else if job.state != JobState::Running {
            out.push((
                d.id,
                format!(
                    "the job ended ({:?}) before stage {stage} finished",
                    job.state
                ),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(w: &str, free: i64, all: i64, load: Option<WorkerLoad>) -> Slots {
        Slots {
            worker: w.into(),
            free,
            slots: all,
            load,
            running_since: vec![],
        }
    }

    fn load(cpu_percent: f32, mem_fraction: f64, queued: u32) -> Option<WorkerLoad> {
        Some(WorkerLoad {
            cpu_percent,
            cpu_cores: 4,
            memory_used_bytes: (mem_fraction * 1024.0) as u64,
            memory_limit_bytes: 1024,
            queued,
            ..Default::default()
        })
    }

    fn any(_: &str) -> bool {
        true
    }

    fn ctx() -> StageContext {
        StageContext {
            pending: 1,
            may_wait: true,
            ..Default::default()
        }
    }

    #[test]
    fn a_hot_worker_gets_tasks_only_after_the_others_are_full() {
        // w1 has more free slots, but its CPU is at 95% of 4 cores
        let mut free = vec![
            slots("w1", 4, 4, load(380.0, 0.2, 0)),
            slots("w2", 2, 4, load(40.0, 0.2, 0)),
        ];
        let p = take(&mut free, 1, any, Some(&ctx())).unwrap();
        assert_eq!(p.worker.as_deref(), Some("w2"));
        assert_eq!(p.plain.as_deref(), Some("w1"));
        assert!(p.why.unwrap().contains("CPU is at 95%"));
        take(&mut free, 1, any, Some(&ctx())).unwrap();
        // w2 is full now: the hot worker still takes the rest (no slot stays idle)
        let p = take(&mut free, 1, any, Some(&ctx())).unwrap();
        assert_eq!(p.worker.as_deref(), Some("w1"));
        assert_eq!(p.plain, None);
        assert_eq!((free[0].free, free[1].free), (3, 0));
        // memory and a queue make a worker hot too
        for hot_load in [load(10.0, 0.95, 0), load(10.0, 0.1, 2)] {
            let mut free = vec![
                slots("w1", 4, 4, hot_load),
                slots("w2", 1, 4, load(10.0, 0.1, 0)),
            ];
            let p = take(&mut free, 1, any, Some(&ctx())).unwrap();
            assert_eq!(p.worker.as_deref(), Some("w2"));
        }
    }

    #[test]
    fn equal_loads_place_as_plain_spreading_does() {
        let mut by_load = vec![
            slots("w1", 2, 2, load(50.0, 0.5, 0)),
            slots("w2", 2, 2, load(50.0, 0.5, 0)),
            slots("w3", 1, 2, None),
        ];
        let mut plain = by_load.clone();
        for _ in 0..5 {
            let a = take(&mut by_load, 1, any, Some(&ctx())).unwrap();
            let b = take(&mut plain, 1, any, None).unwrap();
            assert_eq!(a.worker, b.worker);
            assert_eq!(a.plain, None, "nothing differs, nothing to record");
        }
        assert!(
            take(&mut by_load, 1, any, Some(&ctx())).is_none(),
            "all full"
        );
    }

    #[test]
    fn a_worker_without_a_free_slot_gets_nothing_however_idle() {
        let mut free = vec![
            slots("idle", 0, 2, load(0.0, 0.0, 0)),
            slots("hot", 1, 2, load(400.0, 0.95, 0)),
        ];
        let p = take(&mut free, 1, any, Some(&ctx())).unwrap();
        assert_eq!(p.worker.as_deref(), Some("hot"));
        assert!(take(&mut free, 1, any, Some(&ctx())).is_none());
        // a task wanting more slots than a worker has takes all of it, once free
        let mut free = vec![slots("w1", 2, 2, None)];
        assert!(take(&mut free, 4, any, Some(&ctx())).is_some());
        assert_eq!(free[0].free, 0);
    }

    #[test]
    fn the_constraints_of_a_task_hold_whatever_the_load() {
        // a retry avoids w2 where it failed, though w2 is the idle one
        let mut free = vec![
            slots("w1", 1, 2, load(390.0, 0.2, 0)),
            slots("w2", 2, 2, load(0.0, 0.0, 0)),
        ];
        let p = take(&mut free, 1, |w| w != "w2", Some(&ctx())).unwrap();
        assert_eq!(p.worker.as_deref(), Some("w1"));
        assert_eq!(p.plain, None);
        assert!(take(&mut free, 1, |w| w != "w2", Some(&ctx())).is_none());
    }

    fn speed(median_ms: u64, factor: f64) -> Speed {
        Speed { median_ms, factor }
    }

    #[test]
    fn a_slow_worker_gets_a_task_only_when_the_fast_ones_cannot_absorb_the_rest() {
        let speeds: BTreeMap<String, Speed> = [
            ("fast".to_string(), speed(300, 1.0)),
            ("slow".to_string(), speed(3_000, 10.0)),
        ]
        .into();
        // the fast worker (1 slot) runs 9 more tasks while the slow one runs one
        let mut free = vec![slots("fast", 0, 1, None), slots("slow", 1, 1, None)];
        let c = StageContext {
            speeds: speeds.clone(),
            pending: 9,
            may_wait: true,
            now_ms: 10_000,
        };
        let p = take(&mut free, 1, any, Some(&c)).unwrap();
        assert_eq!(p.worker, None, "it waits for the fast worker");
        assert_eq!(p.plain.as_deref(), Some("slow"));
        assert_eq!(
            p.why.unwrap(),
            "slow: its tasks take 10.0x the fastest worker's (3000 ms median)"
        );
        assert_eq!(free[1].free, 1, "no slot taken");
        // a speculative copy never waits
        let copy = StageContext {
            speeds: speeds.clone(),
            may_wait: false,
            ..c
        };
        let p = take(&mut free.clone(), 1, any, Some(&copy)).unwrap();
        assert_eq!(p.worker.as_deref(), Some("slow"));
        // nor does a task whose fast worker's slot is stuck (running 2 x its median)
        let mut stuck = free.clone();
        stuck[0].running_since = vec![10_000 - 600];
        let c = StageContext {
            may_wait: true,
            ..copy
        };
        let p = take(&mut stuck, 1, any, Some(&c)).unwrap();
        assert_eq!(p.worker.as_deref(), Some("slow"));
        // more pending than that: the slow worker helps
        let c = StageContext {
            speeds,
            pending: 10,
            may_wait: true,
            now_ms: 10_000,
        };
        let p = take(&mut free, 1, any, Some(&c)).unwrap();
        assert_eq!(p.worker.as_deref(), Some("slow"));
        // with both free, the fast one first
        let mut free = vec![slots("fast", 1, 1, None), slots("slow", 1, 1, None)];
        let p = take(&mut free, 1, any, Some(&c)).unwrap();
        assert_eq!(p.worker.as_deref(), Some("fast"));
        assert_eq!(p.plain, None);
        // without load-awareness the slow worker takes it
        let mut free = vec![slots("fast", 0, 1, None), slots("slow", 1, 1, None)];
        let p = take(&mut free, 1, any, None).unwrap();
        assert_eq!(p.worker.as_deref(), Some("slow"));
    }

    /// A retry that failed on the fast worker may not run there: it never waits for
    /// that worker's slot (it would wait forever), it takes the slow one.
    #[test]
    fn a_task_never_waits_for_a_fast_worker_it_may_not_run_on() {
        let speeds: BTreeMap<String, Speed> = [
            ("fast".to_string(), speed(300, 1.0)),
            ("slow".to_string(), speed(3_000, 10.0)),
        ]
        .into();
        let c = StageContext {
            speeds,
            pending: 1,
            may_wait: true,
            now_ms: 10_000,
        };
        let mut free = vec![slots("fast", 0, 1, None), slots("slow", 1, 1, None)];
        let p = take(&mut free.clone(), 1, any, Some(&c)).unwrap();
        assert_eq!(p.worker, None, "a first attempt waits for the fast worker");
        let p = take(&mut free, 1, |w| w != "fast", Some(&c)).unwrap();
        assert_eq!(p.worker.as_deref(), Some("slow"));
    }

    #[test]
    fn speeds_compare_workers_within_the_latest_stage_they_share() {
        let mut s = crate::state::test_state(&[("w1", 4), ("w2", 4)], 4);
        for (t, w, dur) in [
            (0, "w1", 100),
            (1, "w1", 120),
            (2, "w2", 500),
            (3, "w2", 400),
        ] {
            crate::state::test_launch(&mut s, (0, t, 1), w, 1_000).unwrap();
            crate::state::test_succeed(&mut s, (0, t, 1), 1_000 + dur).unwrap();
        }
        let sp = speeds(&s.jobs["j"], 1);
        assert_eq!(sp["w1"], speed(120, 1.0));
        assert_eq!(sp["w2"], speed(500, 500.0 / 120.0));
        // one worker alone says nothing about speed
        let s = crate::state::test_state(&[("w1", 4)], 1);
        assert!(speeds(&s.jobs["j"], 0).is_empty());
    }

    #[test]
    fn one_decision_per_stage_and_its_effect_once_the_stage_finished() {
        let mut s = crate::state::test_state(&[("w1", 4), ("w2", 4)], 2);
        let mut r = Rebalanced::default();
        r.note(&Placement {
            worker: Some("w2".into()),
            plain: Some("w1".into()),
            why: Some("w1: hot".into()),
        });
        r.note(&Placement {
            worker: Some("w2".into()),
            plain: None,
            why: None,
        });
        assert!(r.any());
        let free = vec![
            slots("w1", 4, 4, load(390.0, 0.1, 0)),
            slots("w2", 3, 4, None),
        ];
        let d = decision("j", 0, &r, &free, &BTreeMap::new(), 1_000);
        assert_eq!(d.what, "stage 0: 1 task(s) to w2 instead of w1");
        assert!(
            d.inputs["worker.w1"].contains("cpu 390% of 4 cores"),
            "{:?}",
            d.inputs
        );
        assert!(undecided(&s, "j", 0));
        s.apply(&crate::state::Command::RecordDecision { decision: d })
            .unwrap();
        assert!(!undecided(&s, "j", 0));
        assert!(undecided(&s, "j", 1));
        assert!(effects(&s).is_empty(), "the stage still runs");
        for (t, w) in [(0, "w2"), (1, "w2")] {
            crate::state::test_launch(&mut s, (0, t, 1), w, 1_000).unwrap();
            crate::state::test_succeed(&mut s, (0, t, 1), 1_250).unwrap();
        }
        let e = effects(&s);
        assert_eq!(e.len(), 1);
        assert_eq!(
            e[0].1,
            "stage 0 finished 250 ms later; tasks per worker: w2 2 (median 250 ms)"
        );
    }
}
