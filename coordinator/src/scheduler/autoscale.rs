//! The autoscaler's leader loop (`--autoscale MIN..MAX`, issue 12 §2.8): each round
//! it asks the scaling rule (`optimizer::scaling`) what the fleet needs, starts
//! workers through the provisioner (`crate::provisioner`), releases idle ones
//! (`Command::WorkerReleased`, then a graceful stop of the process) and records every
//! action as a `scale_up` / `scale_down` decision of the cluster (job id empty), with
//! its measured effect once known (the backlog drained, the worker stopped).
//!
//! Only the leader scales. A new leader starts with an empty provisioner: it takes
//! over the fleet it finds (every alive worker counts towards MIN and MAX), but it
//! never stops a worker it did not start itself — those, and the processes a former
//! leader started, stay until an operator stops them. At shutdown the local
//! provisioner stops the workers it started.

use crate::core::Core;
use crate::optimizer::scaling::{self, Memory, Params, Proposal};
use crate::provisioner::{LocalConfig, LocalProvisioner, ProvisionError, Provisioner};
use crate::state::{Command, Decision, DecisionKind, WorkerState};
use autopipe_common::util::now_ms;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// `--autoscale MIN..MAX` and its provisioner.
#[derive(Debug, Clone)]
pub struct AutoscaleConfig {
    /// the rule's bounds and timeouts
    pub params: Params,
    /// how workers are started (`--provisioner local`)
    pub provisioner: ProvisionerConfig,
}

/// Which provisioner (`--provisioner`).
#[derive(Debug, Clone)]
pub enum ProvisionerConfig {
    /// `autopipe worker` processes on this machine
    Local(LocalConfig),
}

/// `MIN..MAX` (e.g. `1..4`) as `(min, max)`: 0 ≤ MIN ≤ MAX, MAX ≥ 1.
pub fn parse_range(s: &str) -> Result<(u32, u32), String> {
    let bad = |why: &str| format!("--autoscale '{s}': {why} (expected MIN..MAX, e.g. 1..4)");
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| bad("no '..' between MIN and MAX"))?;
    let num = |v: &str, name: &str| {
        v.trim()
            .parse::<u32>()
            .map_err(|_| bad(&format!("{name} '{v}' is not a whole number")))
    };
    let (min, max) = (num(a, "MIN")?, num(b, "MAX")?);
    if min > max {
        return Err(bad(&format!("MIN {min} is above MAX {max}")));
    }
    if max == 0 {
        return Err(bad("MAX must be at least 1"));
    }
    Ok((min, max))
}

/// A worker that has not registered this long after its start is stopped.
const REGISTER_DEADLINE: Duration = Duration::from_secs(60);

/// Builds the provisioner of `config`; started workers register with `coordinators`.
pub fn provisioner(
    config: &AutoscaleConfig,
    data_dir: &Path,
    coordinators: &[String],
) -> Result<Arc<dyn Provisioner>, ProvisionError> {
    match &config.provisioner {
        ProvisionerConfig::Local(l) => {
            let mut l = l.clone();
            if l.root.as_os_str().is_empty() {
                l.root = data_dir.join("autoscaled");
            }
            Ok(Arc::new(LocalProvisioner::new(l, coordinators)?))
        }
    }
}

/// A `scale_up` whose effect is not measured yet.
struct OpenScaleUp {
    decision: u64,
    at_ms: u64,
    workers: Vec<String>,
    /// made for a backlog (else: to reach MIN)
    backlog: bool,
}

/// Runs until `cancel`, then stops the workers it started.
pub async fn run(
    core: Arc<Core>,
    config: AutoscaleConfig,
    prov: Arc<dyn Provisioner>,
    cancel: CancellationToken,
) {
    let params = config.params;
    let mut mem = Memory::default();
    let mut open: Vec<OpenScaleUp> = vec![];
    let mut was_leader = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(core.config.schedule_interval) => {},
        }
        if !core.raft.is_leader() {
            if std::mem::take(&mut was_leader) {
                mem = Memory::default();
                open.clear();
            }
            continue;
        }
        was_leader = true;
        let now = now_ms();
        let running = prov.running();
        let (starting, owned, late) = core.read(|s| {
            let mut starting = 0;
            let mut owned = BTreeSet::new();
            let mut late = vec![];
            for (id, since) in &running {
                match s.workers.get(id).map(|w| w.state) {
                    None if since.elapsed() > REGISTER_DEADLINE => late.push(id.clone()),
                    None => starting += 1,
                    Some(WorkerState::Alive) => {
                        owned.insert(id.clone());
                    }
                    Some(_) => {}
                }
            }
            (starting, owned, late)
        });
        for id in late {
            tracing::warn!(worker = %id, "a worker the autoscaler started did not register within {REGISTER_DEADLINE:?}; stopping it (see worker.log in its work dir)");
            let _ = prov.stop(&id).await;
        }
        let proposals = core.read(|s| scaling::decide(s, now, &params, starting, &owned, &mut mem));
        for p in proposals {
            match p {
                Proposal::Add {
                    workers,
                    why,
                    inputs,
                } => {
                    let ids = match prov.start(workers).await {
                        Ok(ids) => ids,
                        Err(e) => {
                            tracing::warn!(class = ?e.class(), "autoscaler: {e}");
                            continue;
                        }
                    };
                    let backlog = inputs.contains_key("backlog_tasks");
                    let what = format!("added {} worker(s): {}", ids.len(), ids.join(", "));
                    if let Some(id) =
                        record(&core, DecisionKind::ScaleUp, now, what, why, inputs).await
                    {
                        open.push(OpenScaleUp {
                            decision: id,
                            at_ms: now,
                            workers: ids,
                            backlog,
                        });
                    }
                }
                Proposal::Drained { since_ms } => {
                    for o in std::mem::take(&mut open) {
                        if !o.backlog {
                            open.push(o);
                            continue;
                        }
                        let (n, slots) = registered(&core, &o.workers);
                        let effect = format!(
                            "backlog drained {} ms after it began ({} ms after this request); {n} of {} started worker(s) registered, +{slots} slots",
                            now.saturating_sub(since_ms),
                            now.saturating_sub(o.at_ms),
                            o.workers.len()
                        );
                        set_effect(&core, o.decision, effect).await;
                    }
                }
                Proposal::Release {
                    worker_id,
                    why,
                    inputs,
                } => {
                    let r = core
                        .propose(Command::WorkerReleased {
                            worker_id: worker_id.clone(),
                            at_ms: now,
                        })
                        .await;
                    if let Err(e) = r {
                        // e.g. a task was launched there meanwhile: next round decides anew
                        tracing::info!(worker = %worker_id, "not released: {e}");
                        continue;
                    }
                    core.liveness
                        .lock()
                        .expect("liveness lock poisoned")
                        .remove(&worker_id);
                    let what = format!("released idle worker {worker_id}");
                    let decision =
                        record(&core, DecisionKind::ScaleDown, now, what, why, inputs).await;
                    let (core, prov) = (core.clone(), prov.clone());
                    tokio::spawn(async move {
                        let t = Instant::now();
                        let effect = match prov.stop(&worker_id).await {
                            Ok(()) => format!(
                                "worker {worker_id} stopped {} ms after its release (SIGTERM), its work dir removed",
                                t.elapsed().as_millis()
                            ),
                            Err(e) => format!("stopping worker {worker_id} failed: {e}"),
                        };
                        if let Some(id) = decision {
                            set_effect(&core, id, effect).await;
                        }
                    });
                }
            }
        }
        // workers added to reach MIN: measured once all registered
        let mut still = vec![];
        for o in std::mem::take(&mut open) {
            let (n, slots) = registered(&core, &o.workers);
            if o.backlog || n < o.workers.len() {
                still.push(o);
                continue;
            }
            let effect = format!(
                "{n} worker(s) registered within {} ms, +{slots} slots",
                now.saturating_sub(o.at_ms)
            );
            set_effect(&core, o.decision, effect).await;
        }
        open = still;
    }
    prov.shutdown().await;
}

/// How many of `ids` are alive, and their slots.
fn registered(core: &Core, ids: &[String]) -> (usize, u32) {
    core.read(|s| {
        ids.iter()
            .filter_map(|id| s.workers.get(id))
            .filter(|w| w.state == WorkerState::Alive)
            .fold((0, 0), |(n, slots), w| (n + 1, slots + w.slots))
    })
}

/// Records a cluster decision; returns its id.
async fn record(
    core: &Core,
    kind: DecisionKind,
    at_ms: u64,
    what: String,
    why: String,
    inputs: BTreeMap<String, String>,
) -> Option<u64> {
    tracing::info!(kind = kind.name(), "{what}: {why}");
    let r = core
        .propose(Command::RecordDecision {
            decision: Decision {
                id: 0,
                at_ms,
                job_id: String::new(),
                kind,
                what: what.clone(),
                why,
                inputs,
                effect: None,
            },
        })
        .await;
    if let Err(e) = r {
        tracing::warn!("could not record the {} decision: {e}", kind.name());
        return None;
    }
    core.read(|s| {
        s.decisions
            .iter()
            .rev()
            .find(|d| d.kind == kind && d.at_ms == at_ms && d.what == what)
            .map(|d| d.id)
    })
}

async fn set_effect(core: &Core, decision_id: u64, effect: String) {
    if let Err(e) = core
        .propose(Command::DecisionEffect {
            decision_id,
            effect,
        })
        .await
    {
        tracing::warn!("could not record decision {decision_id}'s effect: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn autoscale_ranges_parse_and_bad_ones_are_named() {
        assert_eq!(parse_range("1..4"), Ok((1, 4)));
        assert_eq!(parse_range("0..2"), Ok((0, 2)));
        assert_eq!(parse_range("3..3"), Ok((3, 3)));
        let e = parse_range("3..1").unwrap_err();
        assert!(
            e.contains("'3..1'") && e.contains("MIN 3 is above MAX 1"),
            "{e}"
        );
        assert!(parse_range("4").unwrap_err().contains("'4'"));
        assert!(parse_range("a..2").unwrap_err().contains("MIN 'a'"));
        assert!(parse_range("0..0").is_err());
    }
}
