//! The leader's side of dynamic work rebalancing (`optimizer::liquid` holds the rule
//! and the protocol): asks the workers of lagging scan attempts for a split point,
//! records each offer as a `SplitRunningTask` and confirms it to the worker; offers
//! that a worker still lists in its heartbeats unconfirmed (a lost answer, a leader
//! change) are recorded again (idempotent) and confirmed. Every RPC runs in its own
//! tokio task, so the scheduler loop never waits on a worker.

use crate::core::{attempt_id, AttemptId, Core};
use crate::optimizer::liquid::{self as rule, Candidate};
use crate::state::{Command, Outcome};
use autopipe_common::shuffle::channel_to;
use autopipe_common::tolerant::FileRange;
use autopipe_common::util::now_ms;
use autopipe_proto as pb;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A listed offer is recorded again once it has waited this long unconfirmed.
const OFFER_GRACE: Duration = Duration::from_secs(2);
/// Deadline of each RPC to a worker.
const RPC_TIMEOUT: Duration = Duration::from_secs(3);

/// The leader loop's memory of splits in progress (not replicated: a new leader
/// starts empty and finds pending offers in the heartbeats).
#[derive(Default)]
pub struct Splits {
    /// when each attempt was last asked
    asked: HashMap<AttemptId, Instant>,
    /// attempts with an RPC or a proposal in flight
    inflight: Arc<Mutex<HashSet<AttemptId>>>,
    /// listed offers (attempt, seq) and when they were first seen
    listed: HashMap<(AttemptId, u32), Instant>,
}

/// One round: re-records offers listed unconfirmed, then asks the candidates.
pub async fn split_running_tasks(core: &Arc<Core>, st: &mut Splits) {
    let (live, offers): (HashMap<String, u32>, Vec<(String, pb::SplitOffer)>) = {
        let l = core.liveness.lock().expect("liveness lock poisoned");
        (
            l.iter()
                .filter(|(_, l)| !l.unreachable)
                .map(|(k, l)| (k.clone(), l.stopping.len() as u32))
                .collect(),
            l.iter()
                .flat_map(|(w, l)| l.split_offers.iter().map(move |o| (w.clone(), o.clone())))
                .collect(),
        )
    };
    let now = Instant::now();
    let seen: HashSet<(AttemptId, u32)> = offers
        .iter()
        .filter_map(|(_, o)| o.key.as_ref().map(|k| (attempt_id(k), o.seq)))
        .collect();
    st.listed.retain(|k, _| seen.contains(k));
    for (worker, offer) in offers {
        let Some(key) = offer.key.clone() else {
            continue;
        };
        let id = (attempt_id(&key), offer.seq);
        let first = *st.listed.entry(id.clone()).or_insert(now);
        if now.duration_since(first) < OFFER_GRACE || !claim(&st.inflight, &id.0) {
            continue;
        }
        st.listed.insert(id.clone(), now);
        let (core, inflight) = (core.clone(), st.inflight.clone());
        tokio::spawn(async move {
            let why = "recorded from the worker's unconfirmed offer (its answer or the confirmation was lost, or the leader changed)".to_string();
            record_and_confirm(&core, &worker, &offer, why, Default::default()).await;
            inflight.lock().expect("lock").remove(&id.0);
        });
    }
    st.asked
        .retain(|_, at| at.elapsed() < Duration::from_millis(rule::ASK_EVERY_MS));
    let candidates = core.read(|s| rule::candidates(s, rule::idle_slots(s, &live), now_ms()));
    for c in candidates {
        let key = pb::TaskKey {
            job_id: c.job_id.clone(),
            stage_id: c.stage,
            task: c.task,
            attempt: c.attempt,
        };
        let id = attempt_id(&key);
        if st.asked.contains_key(&id) || !claim(&st.inflight, &id) {
            continue;
        }
        st.asked.insert(id.clone(), now);
        let (core, inflight) = (core.clone(), st.inflight.clone());
        tokio::spawn(async move {
            ask(&core, &c, key).await;
            inflight.lock().expect("lock").remove(&id);
        });
    }
}

/// Marks `id` in flight; false when it already was.
fn claim(inflight: &Mutex<HashSet<AttemptId>>, id: &AttemptId) -> bool {
    inflight.lock().expect("lock").insert(id.clone())
}

fn client(
    core: &Core,
    worker: &str,
) -> Option<pb::worker_control_client::WorkerControlClient<autopipe_common::auth::AuthChannel>> {
    let addr = core.read(|s| s.workers.get(worker).map(|w| w.address.clone()))?;
    let ch = channel_to(&addr).ok()?;
    Some(pb::worker_control_client::WorkerControlClient::new(ch))
}

/// Asks the candidate's worker for a split point, then records and confirms it.
async fn ask(core: &Arc<Core>, c: &Candidate, key: pb::TaskKey) {
    let Some(mut client) = client(core, &c.worker_id) else {
        return;
    };
    let mut req = tonic::Request::new(pb::SplitTaskRequest { key: Some(key) });
    req.set_timeout(RPC_TIMEOUT);
    let offer = match client.split_task(req).await {
        Ok(r) => match r.into_inner() {
            pb::SplitTaskResponse { offer: Some(o), .. } => o,
            pb::SplitTaskResponse { refused, .. } => {
                tracing::debug!(job = %c.job_id, stage = c.stage, task = c.task, "no split: {refused}");
                return;
            }
        },
        Err(e) => {
            tracing::debug!(worker = %c.worker_id, "split request failed: {e}");
            return;
        }
    };
    if let Some(marker) = &core.config.test_exit_after_split_offer {
        // test-only: a leader lost between the worker's offer and its record
        if std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(marker)
            .is_ok()
        {
            tracing::warn!("test: exiting with a split offer unrecorded");
            std::process::exit(17);
        }
    }
    record_and_confirm(core, &c.worker_id, &offer, c.why(), c.inputs()).await;
}

/// Records `offer` (`SplitRunningTask`) and confirms it to `worker`. A proposal that
/// fails leaves the offer reserved on the worker: it lists it in its heartbeats and
/// it is proposed again (see `optimizer::liquid` on why there is no abort).
async fn record_and_confirm(
    core: &Arc<Core>,
    worker: &str,
    offer: &pb::SplitOffer,
    why: String,
    inputs: std::collections::BTreeMap<String, String>,
) {
    let Some(key) = offer.key.clone() else {
        return;
    };
    let ranges = |g: &Option<pb::FileGroupNode>| -> Vec<FileRange> {
        g.iter()
            .flat_map(|g| g.ranges.iter().map(FileRange::from_node))
            .collect()
    };
    let cmd = Command::SplitRunningTask {
        job_id: key.job_id.clone(),
        stage: key.stage_id,
        task: key.task,
        attempt: key.attempt,
        seq: offer.seq,
        partition: offer.partition,
        prefix: ranges(&offer.prefix),
        remainder: ranges(&offer.remainder),
        units: (offer.units_started, offer.split_unit, offer.units_total),
        at_ms: now_ms(),
        why,
        inputs,
    };
    match core.propose(cmd).await {
        Ok(outcome) => {
            tracing::info!(job = %key.job_id, stage = key.stage_id, task = key.task, attempt = key.attempt, unit = offer.split_unit, units = offer.units_total, "running scan task split");
            if let Outcome::Superseded { worker_id, attempt } = outcome {
                let mut copy = key.clone();
                copy.attempt = attempt;
                super::cancel_attempt(core, &worker_id, copy).await;
            }
            core.wake.notify_one();
        }
        Err(e) => {
            tracing::warn!(job = %key.job_id, stage = key.stage_id, task = key.task, "split not recorded (the worker keeps its offer): {e}");
            return;
        }
    }
    let Some(mut client) = client(core, worker) else {
        return;
    };
    let mut req = tonic::Request::new(pb::ConfirmSplitRequest {
        key: Some(key),
        seq: offer.seq,
    });
    req.set_timeout(RPC_TIMEOUT);
    if let Err(e) = client.confirm_split(req).await {
        // the worker lists the offer until it hears: confirmed again then
        tracing::debug!(worker = %worker, "split confirmation failed: {e}");
    }
}
