//! Scaling the fleet (issue 12 §2.8), Spark's dynamic allocation
//! (`spark.dynamicAllocation.*`) over the replicated state.
//!
//! - **Scale up.** Trigger: tasks ready to launch need more slots than the alive
//!   workers have free (a backlog), and the backlog lasted `backlog_timeout` (Spark's
//!   `schedulerBacklogTimeout`, default 1 s). Action: request 1 worker, then — each
//!   further `backlog_timeout` the backlog persists (Spark's
//!   `sustainedSchedulerBacklogTimeout`, same default) — 2, 4, … (the request doubles
//!   only when it was granted in full), never more than the backlog needs
//!   (`ceil(unmet slots / worker slots)`, less the workers still starting) nor past
//!   `max`. The request falls back to 1 once the backlog is gone. Below `min` workers,
//!   the missing ones are requested at once.
//! - **Scale down.** Trigger: a worker the provisioner started ran no attempt for
//!   `idle_timeout` (Spark's `executorIdleTimeout`, default 60 s) and holds no map
//!   output an unfinished job still reads (`State::release_blocker`, Spark's
//!   shuffle-tracking rule). Action: release it, longest idle first, down to `min`
//!   alive workers; none while ready tasks wait.
//!
//! Pure: it reads `&State`, the clock and the scaler's small memory (`Memory`) and
//! returns proposals; the leader loop (`scheduler::autoscale`) starts and stops
//! processes and records the decisions. Switched off unless `--autoscale MIN..MAX` is
//! given; `--autoscale N..N` pins the fleet at N.

use crate::state::decision::inputs;
use crate::state::{JobState, State, WorkerState};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// The rule's parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// fewest workers (alive or starting)
    pub min: u32,
    /// most workers (alive or starting)
    pub max: u32,
    /// a backlog older than this asks for workers (Spark: 1 s)
    pub backlog_timeout: Duration,
    /// a worker idle longer than this is released (Spark: 60 s)
    pub idle_timeout: Duration,
    /// task slots of each started worker
    pub worker_slots: u32,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            min: 1,
            max: 1,
            backlog_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(60),
            worker_slots: 2,
        }
    }
}

/// What the scaler remembers between rounds (volatile: a new leader starts afresh).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Memory {
    /// workers the next request asks for (1, 2, 4, …)
    pub request: u32,
    /// since when the backlog lasts (ms since the epoch)
    pub backlog_since_ms: Option<u64>,
    /// the next request is due then
    pub next_request_ms: Option<u64>,
    /// since when each alive worker runs nothing
    pub idle_since_ms: BTreeMap<String, u64>,
}

/// What the fleet looks like now, as the rule counts it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fleet {
    /// ready tasks (inputs complete, not backing off) that wait for a slot
    pub ready_tasks: u32,
    /// slots those tasks need
    pub ready_slots: u32,
    /// free slots of alive workers
    pub free_slots: u32,
    /// alive workers
    pub alive: u32,
}

/// One proposal of the rule.
#[derive(Debug, Clone, PartialEq)]
pub enum Proposal {
    /// start `workers` more workers
    Add {
        /// how many
        workers: u32,
        /// why, in words
        why: String,
        /// what the rule read
        inputs: BTreeMap<String, String>,
    },
    /// release this idle worker
    Release {
        /// which
        worker_id: String,
        /// why it is safe, in words
        why: String,
        /// what the rule read
        inputs: BTreeMap<String, String>,
    },
    /// the backlog that made earlier requests is gone (their effect can be measured)
    Drained {
        /// since when it lasted
        since_ms: u64,
    },
}

/// Counts the backlog and the free slots at `now_ms`.
pub fn fleet(s: &State, now_ms: u64) -> Fleet {
    let running = s.running_per_worker();
    let alive: Vec<_> = s
        .workers
        .values()
        .filter(|w| w.state == WorkerState::Alive)
        .collect();
    let largest = alive.iter().map(|w| w.slots).max().unwrap_or(1).max(1);
    let free_slots = alive
        .iter()
        .map(|w| {
            w.slots
                .saturating_sub(running.get(w.id.as_str()).copied().unwrap_or(0))
        })
        .sum();
    let (mut ready_tasks, mut ready_slots) = (0, 0);
    for job in s.jobs.values().filter(|j| j.state == JobState::Running) {
        for (si, stage) in job.stages.iter().enumerate() {
            if !job.stage_ready(si) {
                continue;
            }
            for (ti, t) in stage.tasks.iter().enumerate() {
                if job.task_waits(si, ti, now_ms) {
                    ready_tasks += 1;
                    ready_slots += t.memory_slots.clamp(1, largest);
                }
            }
        }
    }
    Fleet {
        ready_tasks,
        ready_slots,
        free_slots,
        alive: alive.len() as u32,
    }
}

/// The round at `now_ms`: `starting` workers were requested and have not registered
/// yet; `owned` are the alive workers the provisioner started (only those are ever
/// released: a leader never stops a worker it did not start).
pub fn decide(
    s: &State,
    now_ms: u64,
    p: &Params,
    starting: u32,
    owned: &BTreeSet<String>,
    mem: &mut Memory,
) -> Vec<Proposal> {
    let f = fleet(s, now_ms);
    let mut out = vec![];
    let total = f.alive + starting;
    mem.request = mem.request.max(1);
    let unmet = f.ready_slots.saturating_sub(f.free_slots);
    let backlog_ms = p.backlog_timeout.as_millis() as u64;
    if total < p.min {
        let n = p.min - total;
        out.push(Proposal::Add {
            workers: n,
            why: format!(
                "{total} worker(s) alive or starting, below the --autoscale minimum of {}",
                p.min
            ),
            inputs: inputs([
                ("alive", f.alive.to_string()),
                ("starting", starting.to_string()),
                ("min", p.min.to_string()),
                ("workers_added", n.to_string()),
            ]),
        });
    } else if unmet > 0 {
        let since = *mem.backlog_since_ms.get_or_insert(now_ms);
        let due = *mem.next_request_ms.get_or_insert(since + backlog_ms);
        if now_ms >= due {
            let slots = p.worker_slots.max(1);
            let need = unmet.div_ceil(slots).saturating_sub(starting);
            let room = p.max.saturating_sub(total);
            let n = mem.request.min(need).min(room);
            if n > 0 {
                out.push(Proposal::Add {
                    workers: n,
                    why: format!(
                        "{} ready task(s) waited {} ms (over backlog_timeout {} ms) for {unmet} slot(s) more than the {} free; request {} (doubling while granted), capped by the {need} worker(s) the backlog needs and --autoscale max {}",
                        f.ready_tasks,
                        now_ms - since,
                        backlog_ms,
                        f.free_slots,
                        mem.request,
                        p.max
                    ),
                    inputs: inputs([
                        ("backlog_tasks", f.ready_tasks.to_string()),
                        ("backlog_slots", f.ready_slots.to_string()),
                        ("backlog_ms", (now_ms - since).to_string()),
                        ("free_slots", f.free_slots.to_string()),
                        ("request", mem.request.to_string()),
                        ("workers_needed", need.to_string()),
                        ("alive", f.alive.to_string()),
                        ("starting", starting.to_string()),
                        ("max", p.max.to_string()),
                        ("workers_added", n.to_string()),
                        ("slots_added", (n * slots).to_string()),
                    ]),
                });
            }
            // Spark: the next request doubles only after one granted in full
            mem.request = if n > 0 && n == mem.request {
                mem.request * 2
            } else {
                1
            };
            mem.next_request_ms = Some(now_ms + backlog_ms);
        }
    } else if let Some(since) = mem.backlog_since_ms.take() {
        mem.next_request_ms = None;
        mem.request = 1;
        out.push(Proposal::Drained { since_ms: since });
    }

    // idle bookkeeping: every alive worker, busy ones reset
    let running = s.running_per_worker();
    mem.idle_since_ms.retain(|id, _| {
        s.workers
            .get(id)
            .is_some_and(|w| w.state == WorkerState::Alive)
    });
    for w in s.workers.values().filter(|w| w.state == WorkerState::Alive) {
        if running.get(w.id.as_str()).copied().unwrap_or(0) > 0 {
            mem.idle_since_ms.remove(&w.id);
        } else {
            mem.idle_since_ms.entry(w.id.clone()).or_insert(now_ms);
        }
    }
    if f.ready_tasks > 0 || unmet > 0 {
        return out;
    }
    let idle_ms = p.idle_timeout.as_millis() as u64;
    let mut idle: Vec<(u64, &String)> = mem
        .idle_since_ms
        .iter()
        .filter(|(id, _)| owned.contains(*id))
        .map(|(id, since)| (now_ms.saturating_sub(*since), id))
        .filter(|(ms, _)| *ms >= idle_ms)
        .collect();
    idle.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    let mut alive = f.alive;
    for (ms, id) in idle {
        if alive <= p.min {
            break;
        }
        if let Some(blocker) = s.release_blocker(id) {
            tracing::debug!(worker = %id, "idle for {ms} ms but kept: {blocker}");
            continue;
        }
        alive -= 1;
        out.push(Proposal::Release {
            worker_id: id.clone(),
            why: format!(
                "idle for {ms} ms (over idle_timeout {idle_ms} ms); safe: no attempt runs there and it holds no map output an unfinished job still reads; {alive} worker(s) remain (--autoscale min {})",
                p.min
            ),
            inputs: inputs([
                ("worker", id.clone()),
                ("idle_ms", ms.to_string()),
                ("idle_timeout_ms", idle_ms.to_string()),
                ("alive_after", alive.to_string()),
                ("min", p.min.to_string()),
            ]),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{test_launch, test_state, test_succeed, Command};

    fn params(min: u32, max: u32) -> Params {
        Params {
            min,
            max,
            backlog_timeout: Duration::from_millis(1_000),
            idle_timeout: Duration::from_millis(60_000),
            worker_slots: 1,
        }
    }

    fn owned(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    fn added(ps: &[Proposal]) -> u32 {
        ps.iter()
            .map(|p| match p {
                Proposal::Add { workers, .. } => *workers,
                _ => 0,
            })
            .sum()
    }

    fn released(ps: &[Proposal]) -> Vec<String> {
        ps.iter()
            .filter_map(|p| match p {
                Proposal::Release { worker_id, .. } => Some(worker_id.clone()),
                _ => None,
            })
            .collect()
    }

    /// Registers one more worker of 1 slot.
    fn register(s: &mut State, w: &str) {
        s.apply(&Command::RegisterWorker {
            worker_id: w.into(),
            address: format!("{w}:1"),
            http_address: String::new(),
            slots: 1,
            at_ms: 0,
            shuffle: Default::default(),
        })
        .unwrap();
    }

    #[test]
    fn no_backlog_requests_nothing() {
        // 2 map tasks, 4 free slots
        let s = test_state(&[("w1", 4)], 2);
        let mut mem = Memory::default();
        for now in [0, 5_000, 10_000] {
            assert_eq!(
                added(&decide(&s, now, &params(1, 4), 0, &owned(&[]), &mut mem)),
                0
            );
        }
        assert_eq!(mem.backlog_since_ms, None);
    }

    #[test]
    fn a_backlog_shorter_than_backlog_timeout_requests_nothing() {
        // 10 map tasks, 1 slot
        let s = test_state(&[("w1", 1)], 10);
        let mut mem = Memory::default();
        let p = params(1, 4);
        assert!(decide(&s, 0, &p, 0, &owned(&[]), &mut mem).is_empty());
        assert_eq!(mem.backlog_since_ms, Some(0));
        assert!(decide(&s, 999, &p, 0, &owned(&[]), &mut mem).is_empty());
        assert_eq!(added(&decide(&s, 1_000, &p, 0, &owned(&[]), &mut mem)), 1);
    }

    #[test]
    fn requests_grow_1_2_4_capped_by_the_need_and_max() {
        // 20 ready tasks, 1 slot: the backlog needs 19 more 1-slot workers
        let mut s = test_state(&[("w1", 1)], 20);
        let p = params(1, 6);
        let mut mem = Memory::default();
        let none = owned(&[]);
        decide(&s, 0, &p, 0, &none, &mut mem);
        let first = decide(&s, 1_000, &p, 0, &none, &mut mem);
        assert_eq!(added(&first), 1);
        match &first[0] {
            Proposal::Add { inputs, .. } => {
                assert_eq!(inputs["backlog_tasks"], "20");
                assert_eq!(inputs["free_slots"], "1");
                assert_eq!(inputs["backlog_ms"], "1000");
                assert_eq!(inputs["request"], "1");
            }
            other => panic!("{other:?}"),
        }
        // not again before the sustained timeout
        assert_eq!(added(&decide(&s, 1_500, &p, 1, &none, &mut mem)), 0);
        // the first one registered (and took a task: still a backlog)
        register(&mut s, "a1");
        assert_eq!(added(&decide(&s, 2_000, &p, 0, &none, &mut mem)), 2);
        // 1 + 1 + 2 = 4 workers; max 6 leaves room for 2 of the 4 requested
        assert_eq!(added(&decide(&s, 3_000, &p, 2, &none, &mut mem)), 2);
        assert_eq!(mem.request, 1, "a capped request starts again at 1");
        assert_eq!(
            added(&decide(&s, 4_000, &p, 4, &none, &mut mem)),
            0,
            "at max"
        );

        // capped by the need: 3 ready tasks on 1 slot need 2 more workers
        let s = test_state(&[("w1", 1)], 3);
        let mut mem = Memory {
            request: 8,
            ..Default::default()
        };
        decide(&s, 0, &params(1, 10), 0, &none, &mut mem);
        assert_eq!(
            added(&decide(&s, 1_000, &params(1, 10), 0, &none, &mut mem)),
            2
        );
    }

    #[test]
    fn a_drained_backlog_resets_the_request_and_is_reported() {
        let mut s = test_state(&[("w1", 1)], 2);
        let p = params(1, 4);
        let mut mem = Memory::default();
        decide(&s, 0, &p, 0, &owned(&[]), &mut mem);
        assert_eq!(added(&decide(&s, 1_000, &p, 0, &owned(&[]), &mut mem)), 1);
        register(&mut s, "a1");
        let out = decide(&s, 1_500, &p, 0, &owned(&[]), &mut mem);
        assert_eq!(out, vec![Proposal::Drained { since_ms: 0 }]);
        assert_eq!(mem.request, 1);
        assert_eq!(mem.backlog_since_ms, None);
    }

    #[test]
    fn below_min_the_missing_workers_are_requested_at_once() {
        let s = State::default();
        let mut mem = Memory::default();
        assert_eq!(
            added(&decide(&s, 0, &params(2, 4), 0, &owned(&[]), &mut mem)),
            2
        );
        assert_eq!(
            added(&decide(&s, 0, &params(2, 4), 2, &owned(&[]), &mut mem)),
            0
        );
    }

    #[test]
    fn an_idle_worker_holding_needed_shuffle_data_is_kept() {
        // map task 0 succeeded on a1; the reduce stage has not run
        let mut s = test_state(&[("w1", 1), ("a1", 1)], 2);
        test_launch(&mut s, (0, 0, 1), "a1", 0).unwrap();
        test_succeed(&mut s, (0, 0, 1), 10).unwrap();
        test_launch(&mut s, (0, 1, 1), "w1", 0).unwrap();
        let p = params(1, 4);
        let mut mem = Memory::default();
        decide(&s, 100, &p, 0, &owned(&["a1"]), &mut mem);
        let out = decide(&s, 100 + 61_000, &p, 0, &owned(&["a1"]), &mut mem);
        assert!(released(&out).is_empty(), "{out:?}");
        assert!(s.release_blocker("a1").unwrap().contains("map output"));
        // the state machine refuses it too
        assert!(s
            .apply(&Command::WorkerReleased {
                worker_id: "a1".into(),
                at_ms: 0
            })
            .is_err());
    }

    #[test]
    fn idle_workers_past_idle_timeout_are_released_down_to_min_and_only_owned_ones() {
        let mut s = test_state(&[("w1", 1), ("a1", 1), ("a2", 1), ("a3", 1)], 1);
        // the job finishes on w1: nothing needed anywhere
        test_launch(&mut s, (0, 0, 1), "w1", 0).unwrap();
        test_succeed(&mut s, (0, 0, 1), 10).unwrap();
        for t in 0..2 {
            test_launch(&mut s, (1, t, 1), "w1", 10).unwrap();
            test_succeed(&mut s, (1, t, 1), 20).unwrap();
        }
        let p = params(2, 4);
        let mut mem = Memory::default();
        let own = owned(&["a1", "a2", "a3"]);
        assert!(released(&decide(&s, 100, &p, 0, &own, &mut mem)).is_empty());
        assert!(
            released(&decide(&s, 59_000, &p, 0, &own, &mut mem)).is_empty(),
            "not idle long enough"
        );
        // a2 became busy in between, and idle again at 30 s
        mem.idle_since_ms.insert("a2".into(), 30_000);
        let out = decide(&s, 60_100, &p, 0, &own, &mut mem);
        // 4 alive, min 2: the two longest idle owned workers go (w1 is not ours)
        assert_eq!(released(&out), vec!["a1", "a3"]);
        let Proposal::Release { inputs, why, .. } = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(inputs["idle_ms"], "60000");
        assert!(why.contains("safe"), "{why}");
        s.apply(&Command::WorkerReleased {
            worker_id: "a1".into(),
            at_ms: 60_100,
        })
        .unwrap();
        assert_eq!(s.workers["a1"].state, WorkerState::Released);
        assert!(s.release_blocker("a1").is_some(), "released once");
    }

    #[test]
    fn a_worker_running_an_attempt_cannot_be_released() {
        let mut s = test_state(&[("a1", 1)], 1);
        test_launch(&mut s, (0, 0, 1), "a1", 0).unwrap();
        let err = s
            .apply(&Command::WorkerReleased {
                worker_id: "a1".into(),
                at_ms: 0,
            })
            .unwrap_err();
        assert!(
            err.to_string().contains("stage 0 task 0 runs there"),
            "{err}"
        );
        assert_eq!(s.workers["a1"].state, WorkerState::Alive);
    }
}
