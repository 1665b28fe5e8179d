//! Workers' load into the replicated state (issue 12 §1), and the `rebalance`
//! decisions of load-aware placement (`optimizer::placement`).
//!
//! Heartbeats arrive every second from every worker and stay leader-local
//! (`Core::liveness`); a raft entry per heartbeat would grow the log with the fleet for
//! nothing. The leader records a worker's latest heartbeat load (`Command::WorkerLoad`)
//! when none is recorded yet, or when at least `MIN_INTERVAL` (2 s) passed since the
//! recorded one and it changed materially: CPU by 10% of the machine's cores or
//! more, memory by 10% of its tasks' memory (or 64 MiB) or more, its queue, its
//! spilled bytes, its cores or memory limit, or whether it is hot; and at least every
//! `REFRESH` (30 s) otherwise, so the recorded free slots and running count stay near
//! the truth. Steady workers cost one entry per 30 s each.

use crate::core::Core;
use crate::optimizer::placement::{self, Rebalanced};
use crate::state::load::WorkerLoad;
use crate::state::{Command, WorkerState};
use autopipe_common::util::now_ms;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A worker's load is recorded at most this often (ms) ...
pub const MIN_INTERVAL_MS: u64 = 2_000;
/// ... and at least this often while it heartbeats (ms).
pub const REFRESH_MS: u64 = 30_000;

/// Whether heartbeat load `now` is worth a log entry over the recorded `was`.
pub fn material_change(was: Option<&WorkerLoad>, now: &WorkerLoad) -> bool {
    let Some(was) = was else { return true };
    let elapsed = now.at_ms.saturating_sub(was.at_ms);
    if elapsed < MIN_INTERVAL_MS {
        return false;
    }
    if elapsed >= REFRESH_MS {
        return true;
    }
    let mem_step = match now.memory_limit_bytes {
        0 => 64 << 20,
        limit => limit / 10,
    };
    (now.cpu_fraction() - was.cpu_fraction()).abs() >= 0.1
        || now.memory_used_bytes.abs_diff(was.memory_used_bytes) >= mem_step
        || now.queued != was.queued
        || now.spilled_bytes != was.spilled_bytes
        || now.cpu_cores != was.cpu_cores
        || now.memory_limit_bytes != was.memory_limit_bytes
        || placement::hot(now).is_some() != placement::hot(was).is_some()
}

/// Records the load of every alive worker whose heartbeat load changed materially
/// (leader only: it reads the leader's liveness).
pub async fn publish(core: &Arc<Core>) {
    let latest: Vec<(String, WorkerLoad)> = core
        .liveness
        .lock()
        .expect("liveness lock poisoned")
        .iter()
        .filter_map(|(id, l)| Some((id.clone(), l.load.clone()?)))
        .collect();
    let due: Vec<(String, WorkerLoad)> = core.read(|s| {
        latest
            .into_iter()
            .filter(|(id, load)| {
                s.workers.get(id).is_some_and(|w| {
                    w.state == WorkerState::Alive && material_change(w.load.as_ref(), load)
                })
            })
            .collect()
    });
    for (worker_id, load) in due {
        if let Err(e) = core
            .propose(Command::WorkerLoad {
                worker_id: worker_id.clone(),
                load,
            })
            .await
        {
            tracing::debug!(worker = %worker_id, "load not recorded: {e}");
        }
    }
    record_effects(core).await;
}

/// Records a `rebalance` decision for each stage whose placement by load differed
/// from plain spreading in this wave, unless the stage has one already.
pub async fn record_rebalance(core: &Core, rebalanced: BTreeMap<(String, u32), Rebalanced>) {
    if rebalanced.is_empty() {
        return;
    }
    let decisions: Vec<_> = core.read(|s| {
        rebalanced
            .iter()
            .filter(|((job, stage), _)| placement::undecided(s, job, *stage))
            .filter_map(|((job, stage), r)| {
                let speeds = placement::speeds(s.jobs.get(job)?, *stage as usize);
                Some(placement::decision(
                    job,
                    *stage,
                    r,
                    &r.workers,
                    &speeds,
                    now_ms(),
                ))
            })
            .collect()
    });
    for decision in decisions {
        let job = decision.job_id.clone();
        match core.propose(Command::RecordDecision { decision }).await {
            Ok(_) => tracing::info!(%job, "tasks placed by load (rebalance)"),
            Err(e) => tracing::debug!(%job, "rebalance decision not recorded: {e}"),
        }
    }
}

/// Records the measured effect of `rebalance` decisions whose stage finished.
async fn record_effects(core: &Core) {
    for (decision_id, effect) in core.read(placement::effects) {
        let cmd = Command::DecisionEffect {
            decision_id,
            effect,
        };
        if let Err(e) = core.propose(cmd).await {
            tracing::debug!("rebalance effect not recorded: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(at_ms: u64, cpu_percent: f32, memory_used_bytes: u64) -> WorkerLoad {
        WorkerLoad {
            cpu_percent,
            cpu_cores: 4,
            memory_used_bytes,
            memory_limit_bytes: 1_000,
            at_ms,
            ..Default::default()
        }
    }

    #[test]
    fn load_is_recorded_when_it_changed_materially_at_most_every_two_seconds() {
        let was = load(10_000, 100.0, 300);
        assert!(material_change(None, &was), "the first is recorded");
        // CPU up by 20% of 4 cores, but within 2 s: not yet
        assert!(!material_change(Some(&was), &load(11_000, 180.0, 300)));
        assert!(material_change(Some(&was), &load(12_000, 180.0, 300)));
        // small moves are not worth an entry ...
        assert!(!material_change(Some(&was), &load(20_000, 120.0, 350)));
        // ... memory by a tenth of the limit is
        assert!(material_change(Some(&was), &load(20_000, 100.0, 400)));
        // a queue appearing is
        let mut q = load(12_000, 100.0, 300);
        q.queued = 1;
        assert!(material_change(Some(&was), &q));
        // and every 30 s anyway
        assert!(material_change(Some(&was), &load(40_000, 100.0, 300)));
    }
}
