//! Raft replication of the coordinator's state with tikv raft-rs: `storage` (the log,
//! hard state, conf state and snapshot on sled), `node` (the one task that drives the
//! `RawNode`), `transport` (raft messages between coordinators over the gRPC
//! `RaftService`, as opaque bytes). A single coordinator is a one-member group.
//!
//! Every state change is a `Command` proposed here; `Raft::propose` answers after the
//! entry is applied to `Applied`, with the outcome of applying it. Followers refuse
//! proposals with the leader's id and address.

pub mod node;
pub mod storage;
pub mod transport;

pub use node::{MemberChange, ProposeResult};

use crate::state::{Command, State};
use node::{Input, Node, SnapshotData, TracingDrain};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use storage::SledStorage;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio_util::sync::CancellationToken;

/// Longest wait for a quorum to confirm a read, or for the state to reach it.
const READ_INDEX_TIMEOUT: Duration = Duration::from_secs(5);

/// Raft settings of one coordinator.
#[derive(Debug, Clone)]
pub struct RaftConfig {
    /// this member's id (≥ 1)
    pub id: u64,
    /// founding members (id → gRPC address), this one included; empty: a one-member
    /// group of this coordinator alone
    pub peers: BTreeMap<u64, String>,
    /// join an existing group (added with `admin add-coordinator`) instead of founding one
    pub join: bool,
    /// found a new group when the storage is empty (etcd's `--initial-cluster-state
    /// new`). Without it a member of a multi-member group that starts empty (first
    /// start without the flag, or a wiped data directory) does not bootstrap: it waits
    /// for the leader and neither votes nor campaigns until it holds everything the
    /// group had committed when it first heard from the leader, so a member that lost
    /// its log never helps elect a leader that lacks committed entries.
    pub initial_cluster_new: bool,
    /// where the raft storage lives
    pub dir: PathBuf,
    /// tick interval
    pub tick: Duration,
    /// election timeout in ticks (randomized in [n, 2n)); 10 × 100 ms ≈ 1 s, like etcd
    pub election_ticks: usize,
    /// leader heartbeat interval in ticks
    pub heartbeat_ticks: usize,
    /// applied entries between snapshots (the log is compacted to each)
    pub snapshot_entries: u64,
    /// local address of connections to the other members (the gRPC listen address's
    /// IP when it is a specific one), so peers and firewalls see where traffic is from
    pub source_ip: Option<std::net::IpAddr>,
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            id: 1,
            peers: BTreeMap::new(),
            join: false,
            initial_cluster_new: false,
            dir: PathBuf::from("raft"),
            tick: Duration::from_millis(100),
            election_ticks: 10,
            heartbeat_ticks: 2,
            snapshot_entries: 1000,
            source_ip: None,
        }
    }
}

/// Why a proposal did not apply.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RaftError {
    /// this member is not the leader; the leader's id and address when known
    #[error("not the leader{}", match (leader, address) { (Some(id), Some(a)) => format!("; the leader is coordinator {id} at {a}"), (Some(id), None) => format!("; the leader is coordinator {id}"), _ => "; no leader is known yet".to_string() })]
    NotLeader {
        /// leader id
        leader: Option<u64>,
        /// leader gRPC address
        address: Option<String>,
    },
    /// raft refused the proposal
    #[error("raft refused the proposal: {0}")]
    Rejected(String),
    /// a command could not be encoded
    #[error("raft entry encoding: {0}")]
    Codec(String),
    /// the raft node has stopped (shutdown or storage failure)
    #[error("the raft node has stopped")]
    Stopped,
}

/// A member's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// the leader
    Leader,
    /// a follower
    Follower,
    /// campaigning
    Candidate,
}

impl Role {
    /// Lower-case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
        }
    }
}

/// This member's view of the group.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RaftStatus {
    /// this member's id
    pub id: u64,
    /// its role
    pub role: Role,
    /// current term
    pub term: u64,
    /// the leader it knows of
    pub leader: Option<u64>,
    /// commit index
    pub commit: u64,
    /// applied index
    pub applied: u64,
    /// index of the latest snapshot
    pub snapshot_index: u64,
    /// last log index
    pub last_index: u64,
    /// voting members
    pub voters: Vec<u64>,
    /// member addresses
    pub members: BTreeMap<u64, String>,
    /// a leader that has committed an entry of its own term and applied everything
    /// committed: its state lacks nothing the group committed (a job it does not
    /// know was never submitted, or was forgotten)
    #[serde(skip)]
    pub current: bool,
}

/// The applied state machine: the coordinator state plus the group's member addresses.
#[derive(Debug, Default)]
pub struct Applied {
    /// coordinator state
    pub state: State,
    /// member id → gRPC address
    pub members: BTreeMap<u64, String>,
    /// index of the last applied entry
    pub index: u64,
}

impl Applied {
    /// The state machine as snapshot bytes (what `SnapshotData` reads back).
    pub(crate) fn snapshot_bytes(&self) -> raft::Result<Vec<u8>> {
        #[derive(serde::Serialize)]
        struct Ref<'a> {
            state: &'a State,
            members: &'a BTreeMap<u64, String>,
        }
        serde_json::to_vec(&Ref {
            state: &self.state,
            members: &self.members,
        })
        .map_err(|e| raft::Error::Store(raft::StorageError::Other(e.into())))
    }
}

/// A handle to the node task.
#[derive(Clone)]
pub struct Raft {
    inbox: mpsc::Sender<Input>,
    status: watch::Receiver<RaftStatus>,
    id: u64,
    /// the commit index persisted when the node started
    initial_commit: u64,
}

impl Raft {
    /// Opens the storage under `config.dir` (bootstrapping a new group when it is empty
    /// and this member founds one), restores the latest snapshot into `applied` and
    /// starts the node task. `advertise` is this member's gRPC address.
    pub fn start(
        config: RaftConfig,
        advertise: String,
        applied: Arc<Mutex<Applied>>,
        version: Arc<watch::Sender<u64>>,
        wake: Arc<Notify>,
        cancel: CancellationToken,
    ) -> Result<(Raft, tokio::task::JoinHandle<()>), String> {
        std::fs::create_dir_all(&config.dir)
            .map_err(|e| format!("cannot create {}: {e}", config.dir.display()))?;
        let open_err = |e: raft::Error| format!("raft storage in {}: {e}", config.dir.display());
        let mut store = SledStorage::open(&config.dir).map_err(open_err)?;
        let mut founders = config.peers.clone();
        if founders.is_empty() {
            founders.insert(config.id, advertise.clone());
        }
        // a member that has state (a founder restarting, or one that joined earlier)
        // takes its membership from it; only a new founder needs itself in --peers
        let fresh = store.is_empty().map_err(open_err)?;
        if fresh && !config.join && !founders.contains_key(&config.id) {
            return Err(format!(
                "--peers does not name this coordinator's --id {} (use --join for a \
                 coordinator added with `autopipe admin add-coordinator`)",
                config.id
            ));
        }
        // a lone coordinator founds its one-member group whenever it starts empty (no
        // other member can hold entries it lost); a multi-member group is founded only
        // when asked to
        let bootstrap =
            fresh && !config.join && (config.peers.is_empty() || config.initial_cluster_new);
        if fresh && !config.join && !bootstrap {
            tracing::warn!(
                "coordinator {} starts with an empty data directory and without --initial-cluster-state new: it waits for the group's leader and takes no part in elections until it has caught up",
                config.id
            );
        }
        if bootstrap {
            let data = Applied {
                members: founders.clone(),
                ..Default::default()
            }
            .snapshot_bytes()
            .map_err(open_err)?;
            store
                .bootstrap(founders.keys().copied().collect(), data)
                .map_err(open_err)?;
        }
        // restore the latest snapshot; raft-rs re-delivers the committed entries after it
        let snap = store.latest_snapshot().map_err(open_err)?;
        let applied_index = snap.get_metadata().index;
        {
            let mut a = applied.lock().expect("applied lock poisoned");
            if applied_index > 0 {
                let data: SnapshotData = serde_json::from_slice(snap.get_data())
                    .map_err(|e| format!("raft snapshot in {}: {e}", config.dir.display()))?;
                a.state = data.state;
                a.members = data.members;
            }
            a.index = applied_index;
            // a lone member may have moved: its address is the one it listens on now
            if config.peers.is_empty() && !config.join {
                a.members.insert(config.id, advertise.clone());
            }
        }
        let initial_commit = store.hard_state().map_err(open_err)?.commit;
        let rc = raft::Config {
            id: config.id,
            election_tick: config.election_ticks,
            heartbeat_tick: config.heartbeat_ticks,
            applied: applied_index,
            pre_vote: true,
            check_quorum: true,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            ..Default::default()
        };
        rc.validate().map_err(|e| format!("raft config: {e}"))?;
        let source_state = applied.clone();
        store.set_snapshot_source(Box::new(move || {
            let a = source_state.lock().expect("applied lock poisoned");
            Ok((a.index, a.snapshot_bytes()?))
        }));
        let logger = slog::Logger::root(TracingDrain, slog::o!("raft_id" => config.id));
        let raw = raft::RawNode::new(&rc, store, &logger).map_err(open_err)?;
        let (tx, rx) = mpsc::channel(4096);
        let transport =
            transport::Transport::new(config.id, config.source_ip, tx.clone(), cancel.clone());
        let status0 = RaftStatus {
            id: config.id,
            role: Role::Follower,
            term: 0,
            leader: None,
            commit: 0,
            applied: applied_index,
            snapshot_index: applied_index,
            last_index: 0,
            voters: vec![],
            members: BTreeMap::new(),
            current: false,
        };
        let (status_tx, status_rx) = watch::channel(status0);
        let id = config.id;
        let catching_up = fresh && !bootstrap;
        let node = Node::new(raw, config, applied, status_tx, version, wake, transport)
            .catching_up(catching_up);
        let task = tokio::spawn(node.run(rx, cancel));
        Ok((
            Raft {
                inbox: tx,
                status: status_rx,
                id,
                initial_commit,
            },
            task,
        ))
    }

    /// Waits until everything committed before this start is applied again (the log
    /// after the latest snapshot is replayed), so the state answers reads as before.
    pub async fn replayed(&self) {
        let mut st = self.status.clone();
        let _ = st.wait_for(|s| s.applied >= self.initial_commit).await;
    }

    /// A linearizable read point: returns once this member has confirmed with a quorum
    /// that it still leads and has applied everything committed before the call, so
    /// state read next is current (raft's ReadIndex). A follower answers `NotLeader`.
    pub async fn read_index(&self) -> Result<(), RaftError> {
        let (reply, rx) = oneshot::channel();
        self.inbox
            .send(Input::ReadIndex(reply))
            .await
            .map_err(|_| RaftError::Stopped)?;
        let confirm = tokio::time::timeout(READ_INDEX_TIMEOUT, rx);
        let index = match confirm.await {
            Ok(Ok(r)) => r?,
            Ok(Err(_)) => return Err(RaftError::Stopped),
            Err(_) => return Err(self.not_leader()),
        };
        let mut st = self.status.clone();
        let applied = async { st.wait_for(|s| s.applied >= index).await.map(|_| ()) };
        let reached = tokio::time::timeout(READ_INDEX_TIMEOUT, applied).await;
        match reached {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(RaftError::Stopped),
            Err(_) => Err(RaftError::Rejected(format!(
                "the state did not reach index {index} within {READ_INDEX_TIMEOUT:?}"
            ))),
        }
    }

    /// Replicates `cmd`; answers once it is applied, with the outcome of applying it.
    pub async fn propose(&self, cmd: Command) -> ProposeResult {
        let (reply, rx) = oneshot::channel();
        self.inbox
            .send(Input::Propose { cmd, reply })
            .await
            .map_err(|_| RaftError::Stopped)?;
        rx.await.map_err(|_| RaftError::Stopped)?
    }

    /// Adds or removes a voter through a ConfChangeV2; answers once applied.
    pub async fn change_members(&self, change: MemberChange) -> Result<(), RaftError> {
        let (reply, rx) = oneshot::channel();
        self.inbox
            .send(Input::ChangeMembers { change, reply })
            .await
            .map_err(|_| RaftError::Stopped)?;
        rx.await.map_err(|_| RaftError::Stopped)?
    }

    /// Asks the node (when it leads) to hand leadership to member `id`; see `status`
    /// for the outcome.
    pub async fn transfer_leader(&self, id: u64) -> Result<(), RaftError> {
        self.inbox
            .send(Input::TransferLeader(id))
            .await
            .map_err(|_| RaftError::Stopped)
    }

    /// Hands a peer's message to the node.
    pub async fn step(&self, m: raft::eraftpb::Message) -> Result<(), RaftError> {
        self.inbox
            .send(Input::Step(m))
            .await
            .map_err(|_| RaftError::Stopped)
    }

    /// This member's current view.
    pub fn status(&self) -> RaftStatus {
        self.status.borrow().clone()
    }

    /// A receiver that changes with the status (role, term, commit, …).
    pub fn watch_status(&self) -> watch::Receiver<RaftStatus> {
        self.status.clone()
    }

    /// The refusal a follower gives, with the leader it knows of.
    pub fn not_leader(&self) -> RaftError {
        let st = self.status.borrow();
        RaftError::NotLeader {
            leader: st.leader,
            address: st.leader.and_then(|l| st.members.get(&l).cloned()),
        }
    }

    /// True when this member leads.
    pub fn is_leader(&self) -> bool {
        self.status.borrow().role == Role::Leader
    }

    /// This member's id.
    pub fn id(&self) -> u64 {
        self.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{CoordinatorConfig, Core, StoreError};
    use crate::state::Command;
    use std::time::Instant;

    fn register(n: usize) -> Command {
        Command::RegisterWorker {
            worker_id: format!("w{n}"),
            address: format!("127.0.0.1:{}", 10_000 + n),
            http_address: String::new(),
            slots: 1,
            at_ms: n as u64,
            shuffle: Default::default(),
        }
    }

    /// A coordinator of a test group (servers on loopback, data under `dir`).
    struct Member {
        handle: crate::CoordinatorHandle,
        cancel: CancellationToken,
    }

    async fn start_member(
        id: u64,
        peers: &BTreeMap<u64, String>,
        dir: &std::path::Path,
        snapshot_entries: u64,
    ) -> Member {
        let cancel = CancellationToken::new();
        let handle = crate::start(
            CoordinatorConfig {
                listen: peers[&id].parse().unwrap(),
                http: "127.0.0.1:0".parse().unwrap(),
                data_dir: dir.join(format!("c{id}")),
                raft: RaftConfig {
                    id,
                    peers: peers.clone(),
                    initial_cluster_new: !dir.join(format!("c{id}.wiped")).exists(),
                    tick: Duration::from_millis(20),
                    election_ticks: 10,
                    snapshot_entries,
                    ..Default::default()
                },
                ..Default::default()
            },
            cancel.clone(),
        )
        .await
        .unwrap();
        Member { handle, cancel }
    }

    fn ports(n: usize) -> BTreeMap<u64, String> {
        let ls: Vec<_> = (0..n)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        ls.iter()
            .enumerate()
            .map(|(i, l)| (i as u64 + 1, l.local_addr().unwrap().to_string()))
            .collect()
    }

    async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn leader(members: &BTreeMap<u64, Member>) -> Option<u64> {
        members
            .iter()
            .find(|(_, m)| m.handle.core.raft.is_leader())
            .map(|(id, _)| *id)
    }

    fn core(m: &Member) -> &Core {
        &m.handle.core
    }

    #[tokio::test]
    async fn a_lone_coordinator_leads_at_once_and_keeps_its_state_over_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let config = || CoordinatorConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            http: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_path_buf(),
            raft: RaftConfig {
                snapshot_entries: 3,
                ..Default::default()
            },
            ..Default::default()
        };
        let cancel = CancellationToken::new();
        let h = crate::start(config(), cancel.clone()).await.unwrap();
        let t = Instant::now();
        for n in 0..5 {
            h.core.propose(register(n)).await.unwrap();
        }
        // no election timeout to wait out
        assert!(
            t.elapsed() < Duration::from_millis(900),
            "{:?}",
            t.elapsed()
        );
        // a refused command is answered without an entry
        let before = h.core.raft.status().last_index;
        let refused = h
            .core
            .propose(Command::WorkerLost {
                worker_id: "nope".into(),
                at_ms: 9,
            })
            .await;
        assert!(matches!(refused, Err(StoreError::Rejected(_))));
        assert_eq!(h.core.raft.status().last_index, before);
        assert!(h.core.raft.status().snapshot_index >= 3, "compacted");
        cancel.cancel();
        h.join().await;

        let cancel = CancellationToken::new();
        let h = crate::start(config(), cancel.clone()).await.unwrap();
        wait_for("the restarted node to apply its log", || {
            h.core.read(|s| s.workers.len()) == 5
        })
        .await;
        h.core.propose(register(5)).await.unwrap();
        assert_eq!(h.core.read(|s| s.workers.len()), 6);
        cancel.cancel();
        h.join().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_coordinators_replicate_refuse_follower_writes_and_catch_up_a_wiped_member() {
        let dir = tempfile::tempdir().unwrap();
        let peers = ports(3);
        let mut members = BTreeMap::new();
        for id in 1..=3 {
            members.insert(id, start_member(id, &peers, dir.path(), 20).await);
        }
        wait_for("a leader", || leader(&members).is_some()).await;
        let lead = leader(&members).unwrap();
        for n in 0..10 {
            core(&members[&lead]).propose(register(n)).await.unwrap();
        }
        wait_for("all three to apply 10 commands", || {
            members
                .values()
                .all(|m| core(m).read(|s| s.workers.len()) == 10)
        })
        .await;

        // a follower refuses writes and names the leader
        let follower = *members.keys().find(|id| **id != lead).unwrap();
        match core(&members[&follower]).propose(register(99)).await {
            Err(StoreError::Raft(RaftError::NotLeader { leader, address })) => {
                assert_eq!(leader, Some(lead));
                assert_eq!(address.as_deref(), Some(peers[&lead].as_str()));
            }
            other => panic!("follower accepted a write: {other:?}"),
        }

        // stop the follower, move on by more than a snapshot, wipe it, restart it
        let m = members.remove(&follower).unwrap();
        m.cancel.cancel();
        m.handle.join().await;
        for n in 10..60 {
            core(&members[&lead]).propose(register(n)).await.unwrap();
        }
        assert!(core(&members[&lead]).raft.status().snapshot_index > 20);
        std::fs::remove_dir_all(dir.path().join(format!("c{follower}"))).unwrap();
        // restarted as an existing member (no bootstrap): it catches up from the leader
        std::fs::write(dir.path().join(format!("c{follower}.wiped")), "").unwrap();
        members.insert(
            follower,
            start_member(follower, &peers, dir.path(), 20).await,
        );
        wait_for("the wiped member to catch up", || {
            core(&members[&follower]).read(|s| s.workers.len()) == 60
        })
        .await;
        // its status is published after the state it applied: wait for it too
        wait_for(
            "the caught-up member's status to show the leader's snapshot",
            || core(&members[&follower]).raft.status().snapshot_index > 20,
        )
        .await;
        let lead_state = core(&members[&lead]).read(|s| s.clone());
        assert_eq!(core(&members[&follower]).read(|s| s.clone()), lead_state);
        for m in members.into_values() {
            m.cancel.cancel();
            m.handle.join().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_are_served_only_by_a_leader_a_quorum_confirms() {
        let dir = tempfile::tempdir().unwrap();
        let peers = ports(3);
        let mut members = BTreeMap::new();
        for id in 1..=3 {
            members.insert(id, start_member(id, &peers, dir.path(), 1000).await);
        }
        wait_for("a leader", || leader(&members).is_some()).await;
        let lead = leader(&members).unwrap();
        core(&members[&lead]).propose(register(1)).await.unwrap();
        let n = core(&members[&lead])
            .read_current(|s| s.workers.len())
            .await;
        assert_eq!(n.unwrap(), 1);
        // a follower does not answer from its possibly stale state
        let follower = *members.keys().find(|id| **id != lead).unwrap();
        let r = core(&members[&follower])
            .read_current(|s| s.workers.len())
            .await;
        assert!(
            matches!(r, Err(StoreError::Raft(RaftError::NotLeader { leader: Some(l), .. })) if l == lead),
            "{r:?}"
        );
        // cut off from the others, the leader cannot confirm it still leads
        for id in [1, 2, 3].into_iter().filter(|id| *id != lead) {
            let m = members.remove(&id).unwrap();
            m.cancel.cancel();
            m.handle.join().await;
        }
        let r = core(&members[&lead])
            .read_current(|s| s.workers.len())
            .await;
        assert!(r.is_err(), "an isolated leader served a read: {r:?}");
        for m in members.into_values() {
            m.cancel.cancel();
            m.handle.join().await;
        }
    }
}
