//! The task that drives raft-rs's `RawNode`: it ticks, steps incoming messages, takes
//! proposals, and handles each `Ready` (send, snapshot, persist, apply, advance). It is
//! the only writer of the applied state (`Applied`), which everyone else reads through
//! `Core`. A proposal answers only after its entry is applied, with the outcome of
//! applying it.

use super::storage::SledStorage;
use super::transport::Transport;
use super::{Applied, RaftConfig, RaftError, RaftStatus, Role};
use crate::state::{ApplyError, Command, Outcome};
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeType, ConfChangeV2, Entry, EntryType, Message,
    MessageType, Snapshot,
};
use raft::{RawNode, StateRole};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio_util::sync::CancellationToken;

/// What a proposal returns once applied.
pub type ProposeResult = Result<Result<Outcome, ApplyError>, RaftError>;

/// Inputs of the node task.
pub(crate) enum Input {
    /// a command to replicate
    Propose {
        cmd: Command,
        reply: oneshot::Sender<ProposeResult>,
    },
    /// a membership change
    ChangeMembers {
        change: MemberChange,
        reply: oneshot::Sender<Result<(), RaftError>>,
    },
    /// a linearizable read: answered with the index the state must have applied
    /// before it is read (the leader's commit index, confirmed by a quorum)
    ReadIndex(oneshot::Sender<Result<u64, RaftError>>),
    /// a message from a peer
    Step(Message),
    /// a peer could not be reached
    Unreachable(u64),
    /// hand leadership to a member
    TransferLeader(u64),
}

/// A membership change, as the admin API asks for it.
#[derive(Debug, Clone)]
pub enum MemberChange {
    /// add a voter
    Add {
        /// member id
        id: u64,
        /// its gRPC address
        address: String,
    },
    /// remove a voter
    Remove {
        /// member id
        id: u64,
    },
}

/// What a normal entry carries: the command and who to answer.
#[derive(Serialize, Deserialize)]
struct Envelope {
    /// the proposing node's boot nonce (0 for none)
    origin: u64,
    seq: u64,
    cmd: Command,
}

/// What a conf-change entry's context carries.
#[derive(Serialize, Deserialize)]
struct ChangeContext {
    origin: u64,
    seq: u64,
    /// the added member's address
    address: Option<String>,
}

/// What a snapshot's data holds (written by `Applied::snapshot_bytes`).
#[derive(Deserialize)]
pub(crate) struct SnapshotData {
    pub state: crate::state::State,
    pub members: std::collections::BTreeMap<u64, String>,
}

enum Waiter {
    Command(oneshot::Sender<ProposeResult>),
    Change(oneshot::Sender<Result<(), RaftError>>),
}

/// Everything the node task owns.
pub(crate) struct Node {
    pub raw: RawNode<SledStorage>,
    pub config: RaftConfig,
    pub applied: Arc<Mutex<Applied>>,
    pub status: watch::Sender<RaftStatus>,
    pub version: Arc<watch::Sender<u64>>,
    pub wake: Arc<Notify>,
    pub transport: Transport,
    nonce: u64,
    seq: u64,
    waiters: HashMap<u64, (u64, Waiter)>,
    /// index of the latest snapshot taken or applied
    snapshot_index: u64,
    /// read-index requests waiting for the quorum's confirmation, by context
    reads: HashMap<Vec<u8>, oneshot::Sender<Result<u64, RaftError>>>,
    read_seq: u64,
    /// a member that started empty without bootstrapping: it neither votes nor
    /// campaigns until its log reaches this index, the leader's commit index when it
    /// first heard from the leader (`u64::MAX` until then)
    catching_up: Option<u64>,
}

impl Node {
    pub(crate) fn new(
        raw: RawNode<SledStorage>,
        config: RaftConfig,
        applied: Arc<Mutex<Applied>>,
        status: watch::Sender<RaftStatus>,
        version: Arc<watch::Sender<u64>>,
        wake: Arc<Notify>,
        transport: Transport,
    ) -> Self {
        let snapshot_index = raw.store().snapshot_index();
        Self {
            raw,
            config,
            applied,
            status,
            version,
            wake,
            transport,
            nonce: rand::random::<u64>() | 1,
            seq: 0,
            waiters: HashMap::new(),
            snapshot_index,
            reads: HashMap::new(),
            read_seq: 0,
            catching_up: None,
        }
    }

    /// Starts as a member that lost (or never had) its log: see `catching_up`.
    pub(crate) fn catching_up(mut self, yes: bool) -> Self {
        self.catching_up = yes.then_some(u64::MAX);
        self
    }

    /// While catching up: vote requests are dropped (no vote, granted or not) and the
    /// leader's commit index when first heard is the index to reach. Returns whether
    /// `m` is to be stepped.
    fn hear_while_catching_up(&mut self, m: &Message) -> bool {
        let Some(target) = self.catching_up else {
            return true;
        };
        match m.get_msg_type() {
            MessageType::MsgRequestVote | MessageType::MsgRequestPreVote => {
                tracing::debug!(from = m.from, "catching up: no vote");
                false
            }
            MessageType::MsgAppend | MessageType::MsgHeartbeat | MessageType::MsgSnapshot => {
                if target == u64::MAX {
                    self.catching_up = Some(m.commit);
                    tracing::info!(leader = m.from, commit = m.commit, "heard from the leader: taking part in elections once the log reaches its commit index");
                }
                true
            }
            _ => true,
        }
    }

    /// The leader promotes a learner to voter once it holds everything committed,
    /// one change at a time.
    fn promote_caught_up_learners(&mut self) {
        let r = &self.raw.raft;
        if r.state != StateRole::Leader || r.has_pending_conf() {
            return;
        }
        let committed = r.raft_log.committed;
        let ready = r
            .prs()
            .conf()
            .learners()
            .iter()
            .copied()
            .find(|id| r.prs().get(*id).is_some_and(|p| p.matched >= committed));
        let Some(id) = ready else { return };
        let mut one = ConfChangeSingle::default();
        one.set_change_type(ConfChangeType::AddNode);
        one.node_id = id;
        let mut cc = ConfChangeV2::default();
        cc.mut_changes().push(one);
        let ctx = ChangeContext {
            origin: self.nonce,
            seq: 0,
            address: None,
        };
        let ctx = serde_json::to_vec(&ctx).unwrap_or_default();
        match self.raw.propose_conf_change(ctx, cc) {
            Ok(()) => tracing::info!(
                member = id,
                index = committed,
                "learner caught up: promoting it to voter"
            ),
            Err(e) => tracing::debug!(member = id, "promotion not proposed: {e}"),
        }
    }

    /// Ends catching up once the log holds the index it waited for.
    fn check_caught_up(&mut self) {
        if let Some(target) = self.catching_up {
            if target != u64::MAX && self.raw.raft.raft_log.persisted >= target {
                tracing::info!(index = target, "caught up: voting again");
                self.catching_up = None;
            }
        }
    }

    /// Runs until `cancel`: the one loop that touches the `RawNode`.
    pub(crate) async fn run(mut self, mut inbox: mpsc::Receiver<Input>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // a sole voter need not wait out an election timeout
        if self.raw.raft.prs().is_singleton()
            && self.raw.raft.prs().conf().voters().contains(self.config.id)
        {
            let _ = self.raw.campaign();
        }
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                // a member catching up does not tick: it never campaigns
                _ = tick.tick() => if self.catching_up.is_none() { self.raw.tick(); },
                input = inbox.recv() => {
                    let Some(input) = input else { break };
                    self.handle(input);
                    // take whatever else is queued, so one Ready (one flush) covers it
                    while let Ok(more) = inbox.try_recv() {
                        self.handle(more);
                    }
                }
            }
            if let Err(e) = self.on_ready() {
                // the log cannot be written: stop taking part rather than diverge
                tracing::error!("raft storage failed, stopping this coordinator's raft node: {e}");
                break;
            }
            self.check_caught_up();
            self.promote_caught_up_learners();
            // reads waiting on a leadership this member lost will never be confirmed
            if self.raw.raft.state != StateRole::Leader && !self.reads.is_empty() {
                let err = self.not_leader();
                for (_, reply) in self.reads.drain() {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
        for (_, (_, w)) in self.waiters.drain() {
            fail(w, RaftError::Stopped);
        }
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Propose { cmd, reply } => {
                if self.raw.raft.state != StateRole::Leader {
                    let _ = reply.send(Err(self.not_leader()));
                    return;
                }
                self.seq += 1;
                let env = Envelope {
                    origin: self.nonce,
                    seq: self.seq,
                    cmd,
                };
                let data = match serde_json::to_vec(&env) {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = reply.send(Err(RaftError::Codec(e.to_string())));
                        return;
                    }
                };
                match self.raw.propose(vec![], data) {
                    Ok(()) => {
                        let term = self.raw.raft.term;
                        self.waiters
                            .insert(self.seq, (term, Waiter::Command(reply)));
                    }
                    Err(_) => {
                        let _ = reply.send(Err(self.not_leader()));
                    }
                }
            }
            Input::ChangeMembers { change, reply } => {
                if self.raw.raft.state != StateRole::Leader {
                    let _ = reply.send(Err(self.not_leader()));
                    return;
                }
                self.seq += 1;
                let (single, address) = match change {
                    MemberChange::Add { id, address } => {
                        // a learner first: it counts towards no quorum until it has
                        // caught up (`promote_caught_up_learners`)
                        let mut s = ConfChangeSingle::default();
                        s.set_change_type(ConfChangeType::AddLearnerNode);
                        s.node_id = id;
                        (s, Some(address))
                    }
                    MemberChange::Remove { id } => {
                        let mut s = ConfChangeSingle::default();
                        s.set_change_type(ConfChangeType::RemoveNode);
                        s.node_id = id;
                        (s, None)
                    }
                };
                let mut cc = ConfChangeV2::default();
                cc.mut_changes().push(single);
                let ctx = ChangeContext {
                    origin: self.nonce,
                    seq: self.seq,
                    address,
                };
                let ctx = serde_json::to_vec(&ctx).unwrap_or_default();
                match self.raw.propose_conf_change(ctx, cc) {
                    Ok(()) => {
                        let term = self.raw.raft.term;
                        self.waiters.insert(self.seq, (term, Waiter::Change(reply)));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(RaftError::Rejected(e.to_string())));
                    }
                }
            }
            Input::Step(mut m) => {
                if !self.hear_while_catching_up(&m) {
                    return;
                }
                let ask_for_snapshot = self.guard_lost_log(&mut m);
                if let Err(e) = self.raw.step(m) {
                    tracing::debug!("raft step: {e}");
                }
                if let Some(r) = ask_for_snapshot {
                    self.send(vec![r]);
                }
            }
            Input::ReadIndex(reply) => {
                if self.raw.raft.state != StateRole::Leader {
                    let _ = reply.send(Err(self.not_leader()));
                    return;
                }
                self.read_seq += 1;
                let ctx = format!("{}-{}", self.nonce, self.read_seq).into_bytes();
                self.raw.read_index(ctx.clone());
                self.reads.insert(ctx, reply);
            }
            Input::Unreachable(id) => self.raw.report_unreachable(id),
            Input::TransferLeader(id) => self.raw.transfer_leader(id),
        }
    }

    /// A member whose data directory was wiped comes back with an empty log, while the
    /// leader still remembers what it acknowledged. raft-rs assumes durable logs: the
    /// follower would abort on a heartbeat committing past its last entry, and the
    /// leader, believing the member up to date, would never send it anything but
    /// heartbeats (and would ignore its rejections as stale). Here the follower commits
    /// only what it has and answers such a heartbeat with a rejection naming its real
    /// last index; the leader, seeing a rejection below the acknowledged index, probes
    /// that member from scratch, which ends in a snapshot. Neither fires for members
    /// that kept their logs. Returns the rejection to send after the heartbeat.
    fn guard_lost_log(&mut self, m: &mut Message) -> Option<Message> {
        let last = self.raw.raft.raft_log.last_index();
        let mut reply = None;
        if m.get_msg_type() == MessageType::MsgHeartbeat && m.commit > last {
            tracing::warn!(
                leader = m.from,
                commit = m.commit,
                last,
                "this coordinator lost its raft log (data dir wiped?); asking the leader for a snapshot"
            );
            let mut r = Message::default();
            r.set_msg_type(MessageType::MsgAppendResponse);
            r.to = m.from;
            r.from = self.config.id;
            r.term = m.term;
            r.index = m.commit;
            r.reject = true;
            r.reject_hint = last;
            reply = Some(r);
            m.commit = last;
        }
        if self.raw.raft.state == StateRole::Leader
            && m.get_msg_type() == MessageType::MsgAppendResponse
            && m.reject
        {
            if let Some(pr) = self.raw.raft.mut_prs().get_mut(m.from) {
                if m.reject_hint < pr.matched {
                    tracing::warn!(
                        member = m.from,
                        acknowledged = pr.matched,
                        has = m.reject_hint,
                        "a coordinator lost its raft log; catching it up by snapshot"
                    );
                    pr.matched = 0;
                    pr.become_probe();
                }
            }
        }
        reply
    }

    fn not_leader(&self) -> RaftError {
        let leader = self.raw.raft.leader_id;
        let address = self
            .applied
            .lock()
            .expect("applied lock poisoned")
            .members
            .get(&leader)
            .cloned();
        RaftError::NotLeader {
            leader: (leader != 0).then_some(leader),
            address,
        }
    }

    /// Handles one `Ready` in the order raft-rs documents, then its `LightReady`.
    fn on_ready(&mut self) -> raft::Result<()> {
        if !self.raw.has_ready() {
            self.publish_status();
            return Ok(());
        }
        let mut ready = self.raw.ready();
        // 1. a leader sends before it persists (raft-rs allows it; followers may not)
        self.send(ready.take_messages());
        // 2. a snapshot from the leader replaces our state
        if !ready.snapshot().is_empty() {
            let snap = ready.snapshot().clone();
            self.restore(&snap)?;
            self.raw.mut_store().apply_snapshot(snap)?;
        }
        // 3. append entries and persist the hard state (with the commit index) in one
        //    flush, before anything committed is applied
        let store = self.raw.mut_store();
        let mut dirty = !ready.snapshot().is_empty() || !ready.entries().is_empty();
        store.append(ready.entries())?;
        if let Some(hs) = ready.hs() {
            store.set_hard_state(hs)?;
            dirty = true;
        }
        if dirty {
            store.flush()?;
        }
        // 4. apply what is committed
        let committed = ready.take_committed_entries();
        self.apply(committed)?;
        // reads the quorum confirmed: the index to have applied before reading
        for rs in ready.take_read_states() {
            if let Some(reply) = self.reads.remove(&rs.request_ctx) {
                let _ = reply.send(Ok(rs.index));
            }
        }
        // 5. messages that had to wait for the persist (a follower's votes and acks)
        self.send(ready.take_persisted_messages());
        // 6. advance; the light ready may commit more
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            let store = self.raw.mut_store();
            store.set_commit(commit)?;
            store.flush()?;
        }
        self.send(light.take_messages());
        let committed = light.take_committed_entries();
        self.apply(committed)?;
        self.raw.advance_apply();
        self.maybe_compact()?;
        self.publish_status();
        Ok(())
    }

    fn send(&mut self, msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        let mut members = self
            .applied
            .lock()
            .expect("applied lock poisoned")
            .members
            .clone();
        // a joining member knows no addresses until the leader's snapshot arrives: it
        // answers the leader at the address `--peers` gives
        for (id, addr) in &self.config.peers {
            members.entry(*id).or_insert_with(|| addr.clone());
        }
        for m in msgs {
            self.transport.send(m, &members);
        }
    }

    fn restore(&mut self, snap: &Snapshot) -> raft::Result<()> {
        let data: SnapshotData = serde_json::from_slice(snap.get_data())
            .map_err(|e| raft::Error::Store(raft::StorageError::Other(e.into())))?;
        let mut a = self.applied.lock().expect("applied lock poisoned");
        a.state = data.state;
        a.members = data.members;
        a.index = snap.get_metadata().index;
        self.snapshot_index = a.index;
        drop(a);
        self.changed();
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> raft::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        for e in entries {
            match e.get_entry_type() {
                EntryType::EntryNormal => self.apply_normal(&e),
                EntryType::EntryConfChange => {
                    let cc = ConfChange::parse_from_bytes(e.get_data())
                        .map_err(|e| raft::Error::Store(raft::StorageError::Other(e.into())))?;
                    let cs = self.raw.apply_conf_change(&cc)?;
                    self.raw.mut_store().set_conf_state(&cs)?;
                }
                EntryType::EntryConfChangeV2 => self.apply_conf_change_v2(&e)?,
            }
            self.applied.lock().expect("applied lock poisoned").index = e.index;
        }
        self.changed();
        Ok(())
    }

    fn apply_normal(&mut self, e: &Entry) {
        if e.get_data().is_empty() {
            return; // a new leader's empty entry
        }
        let env: Envelope = match serde_json::from_slice(e.get_data()) {
            Ok(env) => env,
            Err(err) => {
                // cannot happen for entries this code wrote; skipping keeps every member
                // in step (all skip it)
                tracing::error!(index = e.index, "undecodable raft entry skipped: {err}");
                return;
            }
        };
        let outcome = self
            .applied
            .lock()
            .expect("applied lock poisoned")
            .state
            .apply(&env.cmd);
        if env.origin == self.nonce {
            if let Some((_, Waiter::Command(w))) = self.waiters.remove(&env.seq) {
                let _ = w.send(Ok(outcome));
            }
        }
    }

    fn apply_conf_change_v2(&mut self, e: &Entry) -> raft::Result<()> {
        let cc = ConfChangeV2::parse_from_bytes(e.get_data())
            .map_err(|e| raft::Error::Store(raft::StorageError::Other(e.into())))?;
        let ctx: Option<ChangeContext> = serde_json::from_slice(e.get_context()).ok();
        let result = self.raw.apply_conf_change(&cc);
        match &result {
            Ok(cs) => {
                self.raw.mut_store().set_conf_state(cs)?;
                let mut a = self.applied.lock().expect("applied lock poisoned");
                for c in cc.get_changes() {
                    match c.get_change_type() {
                        ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                            if let Some(addr) = ctx.as_ref().and_then(|c| c.address.clone()) {
                                a.members.insert(c.node_id, addr);
                            }
                        }
                        ConfChangeType::RemoveNode => {
                            a.members.remove(&c.node_id);
                        }
                    }
                }
            }
            Err(err) => tracing::warn!(index = e.index, "conf change not applied: {err}"),
        }
        if let Some(ctx) = ctx {
            if ctx.origin == self.nonce {
                if let Some((_, Waiter::Change(w))) = self.waiters.remove(&ctx.seq) {
                    let _ = w.send(
                        result
                            .map(|_| ())
                            .map_err(|e| RaftError::Rejected(e.to_string())),
                    );
                }
            }
        }
        Ok(())
    }

    /// Takes a snapshot and drops the log once `snapshot_entries` entries were applied
    /// since the last one.
    fn maybe_compact(&mut self) -> raft::Result<()> {
        let applied = self.raw.raft.raft_log.applied;
        if applied < self.snapshot_index + self.config.snapshot_entries {
            return Ok(());
        }
        let data = self
            .applied
            .lock()
            .expect("applied lock poisoned")
            .snapshot_bytes()?;
        let store = self.raw.mut_store();
        store.compact(applied, data)?;
        store.flush()?;
        self.snapshot_index = applied;
        tracing::debug!(index = applied, "raft log compacted");
        Ok(())
    }

    fn changed(&self) {
        self.version.send_modify(|v| *v += 1);
        self.wake.notify_one();
    }

    fn publish_status(&mut self) {
        let r = &self.raw.raft;
        let role = match r.state {
            StateRole::Leader => Role::Leader,
            StateRole::Candidate | StateRole::PreCandidate => Role::Candidate,
            StateRole::Follower => Role::Follower,
        };
        let (members, applied_index) = {
            let a = self.applied.lock().expect("applied lock poisoned");
            (a.members.clone(), a.index)
        };
        let status = RaftStatus {
            id: self.config.id,
            role,
            term: r.term,
            leader: (r.leader_id != 0).then_some(r.leader_id),
            commit: r.raft_log.committed,
            applied: applied_index,
            snapshot_index: self.snapshot_index,
            last_index: r.raft_log.last_index(),
            voters: {
                let mut v: Vec<u64> = r.prs().conf().voters().ids().iter().collect();
                v.sort_unstable();
                v
            },
            members,
            current: role == Role::Leader
                && r.commit_to_current_term()
                && applied_index >= r.raft_log.committed,
        };
        // proposals of an older term or of a node that lost leadership may never
        // commit: answer them now, the caller retries with the new leader
        if role != Role::Leader || self.status.borrow().term != status.term {
            let term = status.term;
            let stale: Vec<u64> = self
                .waiters
                .iter()
                .filter(|(_, (t, _))| role != Role::Leader || *t != term)
                .map(|(k, _)| *k)
                .collect();
            for k in stale {
                if let Some((_, w)) = self.waiters.remove(&k) {
                    fail(w, self.not_leader());
                }
            }
        }
        self.status.send_if_modified(|s| {
            if *s != status {
                *s = status;
                true
            } else {
                false
            }
        });
    }
}

fn fail(w: Waiter, e: RaftError) {
    match w {
        Waiter::Command(tx) => {
            let _ = tx.send(Err(e));
        }
        Waiter::Change(tx) => {
            let _ = tx.send(Err(e));
        }
    }
}

/// raft-rs logs through slog; this forwards its records to `tracing` (target `raft`).
pub(crate) struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record, values: &slog::OwnedKVList) -> Result<(), slog::Never> {
        use slog::KV as _;
        let mut kv = KvText(String::new());
        let _ = record.kv().serialize(record, &mut kv);
        let _ = values.serialize(record, &mut kv);
        let msg = format!("{}{}", record.msg(), kv.0);
        match record.level() {
            slog::Level::Critical | slog::Level::Error => tracing::error!(target: "raft", "{msg}"),
            slog::Level::Warning => tracing::warn!(target: "raft", "{msg}"),
            slog::Level::Info => tracing::info!(target: "raft", "{msg}"),
            slog::Level::Debug | slog::Level::Trace => tracing::trace!(target: "raft", "{msg}"),
        }
        Ok(())
    }
}

struct KvText(String);

impl slog::Serializer for KvText {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments) -> slog::Result {
        use std::fmt::Write as _;
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}
