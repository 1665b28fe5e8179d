//! The coordinator's shared core: the applied replicated state behind a mutex (never
//! held across an `.await`; only the raft node task writes it), the raft handle that
//! every change is proposed through, volatile worker liveness from heartbeats, change
//! notification for watchers and the scheduler, and metrics.

use crate::metrics::Metrics;
use crate::raft::{Applied, Raft, RaftConfig, RaftError};
use crate::state::{ApplyError, Command, Outcome, State, WorkerState};
use autopipe_common::error::{Error, Result};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

/// Coordinator configuration.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// gRPC listen address
    pub listen: SocketAddr,
    /// HTTP (metrics, admin JSON, dashboard) listen address
    pub http: SocketAddr,
    /// where the state log lives
    pub data_dir: PathBuf,
    /// a worker silent this long is declared lost
    pub heartbeat_timeout: Duration,
    /// scheduler wake-up interval (it also wakes on every change)
    pub schedule_interval: Duration,
    /// raft group settings (`dir` is set from `data_dir` at start)
    pub raft: RaftConfig,
    /// where alerts are POSTed as JSON (none: log and counter only)
    pub alert_webhook: Option<String>,
    /// the cluster token (`--auth-token-file`): every gRPC call must carry it, and
    /// this coordinator's own calls send it; none: no authentication
    pub auth_token: Option<autopipe_common::auth::AuthToken>,
    /// with a token, `/metrics` and the read-only HTTP API stay open without it
    /// (`--http-open-reads`); calls that change something always need it
    pub http_open_reads: bool,
    /// where jobs may read and write (`--allowed-roots`); empty: anywhere
    pub allowed_roots: autopipe_common::roots::AllowedRoots,
    /// how many finished jobs the state keeps, and how long (`--job-retention`)
    pub job_retention: crate::scheduler::retention::JobRetention,
    /// a lost worker is pruned from the state after this (`--lost-worker-retention`)
    pub lost_worker_retention: Duration,
    /// a job's commit running longer is abandoned and started again (`--commit-timeout-ms`)
    pub commit_timeout: Duration,
    /// test-only: the first commit of each job hangs this long before it starts
    pub test_commit_hang: Duration,
    /// test-only: the leader that gets a worker's split offer first exits before
    /// recording it, once for all coordinators sharing this marker file (created then)
    pub test_exit_after_split_offer: Option<std::path::PathBuf>,
    /// `--autoscale MIN..MAX --provisioner …`: the leader starts and releases workers
    /// (`scheduler::autoscale`); none: the fleet is what registers
    pub autoscale: Option<crate::scheduler::autoscale::AutoscaleConfig>,
    /// cluster defaults of `[job.params]` (`--param KEY=VALUE`): a submitted job's
    /// params take each one it does not set itself, so every rule can be switched
    /// off or pinned for the whole cluster
    pub default_params: autopipe_common::spec::JobParams,
    /// place tasks by the workers' load (`optimizer::placement`) unless a job's
    /// `load_aware_placement` says otherwise (`--load-aware-placement`); false: by
    /// free slots alone
    pub load_aware_placement: bool,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7700".parse().expect("valid literal"),
            http: "127.0.0.1:7780".parse().expect("valid literal"),
            data_dir: PathBuf::from("autopipe-coordinator"),
            heartbeat_timeout: Duration::from_secs(10),
            schedule_interval: Duration::from_millis(100),
            raft: RaftConfig::default(),
            alert_webhook: None,
            auth_token: None,
            http_open_reads: true,
            allowed_roots: Default::default(),
            job_retention: Default::default(),
            lost_worker_retention: Duration::from_secs(3_600),
            commit_timeout: Duration::from_secs(300),
            test_commit_hang: Duration::ZERO,
            test_exit_after_split_offer: None,
            autoscale: None,
            default_params: Default::default(),
            load_aware_placement: true,
        }
    }
}

/// What the latest heartbeat said about a worker (not replicated).
#[derive(Debug, Clone)]
pub struct Liveness {
    /// when it was received
    pub last: Instant,
    /// wall clock of the same
    pub last_ms: u64,
    /// CPU use in percent
    pub cpu_percent: f32,
    /// resident memory
    pub memory_used_bytes: u64,
    /// a task launch to it failed after this heartbeat: no launches until the next
    pub unreachable: bool,
    /// retries its retry budget refused, as it last reported
    pub retry_budget_exhausted: u64,
    /// probed since this heartbeat (its heartbeats are late)
    pub probed: bool,
    /// the attempts it runs, as it last reported
    pub running: Vec<autopipe_proto::TaskKey>,
    /// attempts this leader asked it to stop that it still listed in its last
    /// heartbeat: each holds a task slot until the worker no longer lists it
    pub stopping: HashSet<AttemptId>,
    /// its load as the last heartbeat said (recorded in the state by
    /// `scheduler::load` when it changed materially)
    pub load: Option<crate::state::load::WorkerLoad>,
    /// split points it offered that it still waits to have confirmed, as it last
    /// reported (`scheduler::liquid`)
    pub split_offers: Vec<autopipe_proto::SplitOffer>,
    /// it drains (its last heartbeat said so): no launches go there
    pub draining: bool,
}

/// (job, stage, task, attempt)
pub type AttemptId = (String, u32, u32, u32);

/// The id of an attempt's key.
pub fn attempt_id(k: &autopipe_proto::TaskKey) -> AttemptId {
    (k.job_id.clone(), k.stage_id, k.task, k.attempt)
}

impl Liveness {
    /// A heartbeat received now.
    pub fn now(cpu_percent: f32, memory_used_bytes: u64) -> Self {
        Self {
            last: Instant::now(),
            last_ms: autopipe_common::util::now_ms(),
            cpu_percent,
            memory_used_bytes,
            unreachable: false,
            retry_budget_exhausted: 0,
            probed: false,
            running: vec![],
            stopping: HashSet::new(),
            load: None,
            split_offers: vec![],
            draining: false,
        }
    }
}

/// Why a proposed command did not take effect.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// the state machine refused it (validated on the leader before proposing, so a
    /// refused command rarely reaches the log)
    #[error(transparent)]
    Rejected(#[from] ApplyError),
    /// it was not replicated: not the leader, or the raft node stopped
    #[error(transparent)]
    Raft(#[from] RaftError),
}

/// Shared coordinator core.
pub struct Core {
    /// configuration
    pub config: CoordinatorConfig,
    applied: Arc<Mutex<Applied>>,
    /// this coordinator's raft member
    pub raft: Raft,
    /// heartbeat data by worker id
    pub liveness: Mutex<HashMap<String, Liveness>>,
    /// wakes the scheduler
    pub wake: Arc<Notify>,
    version: Arc<watch::Sender<u64>>,
    /// metrics
    pub metrics: Metrics,
}

impl Core {
    /// Opens the raft storage under `config.data_dir/raft`, restores the state and
    /// starts the raft node task (stopped by `cancel`). `advertise` is this
    /// coordinator's gRPC address.
    pub fn open(
        mut config: CoordinatorConfig,
        advertise: String,
        cancel: CancellationToken,
    ) -> Result<(Self, tokio::task::JoinHandle<()>)> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            Error::Permanent(format!(
                "cannot create data dir {}: {e}",
                config.data_dir.display()
            ))
        })?;
        config.raft.dir = config.data_dir.join("raft");
        let applied: Arc<Mutex<Applied>> = Default::default();
        let version = Arc::new(watch::channel(0).0);
        let wake = Arc::new(Notify::new());
        let (raft, task) = Raft::start(
            config.raft.clone(),
            advertise,
            applied.clone(),
            version.clone(),
            wake.clone(),
            cancel,
        )
        .map_err(Error::Permanent)?;
        Ok((
            Self {
                config,
                applied,
                raft,
                liveness: Mutex::new(HashMap::new()),
                wake,
                version,
                metrics: Metrics::default(),
            },
            task,
        ))
    }

    /// Gives every worker the state knows as alive a fresh grace period to heartbeat
    /// (on becoming leader: heartbeats went to the previous one). An entry left from an
    /// earlier term of this node is replaced, not kept: its last heartbeat is as old as
    /// that term, and would have every worker declared lost at once. Workers the state
    /// no longer knows as alive are forgotten.
    pub fn seed_liveness(&self) {
        let alive: HashSet<String> = self.read(|s| {
            s.workers
                .values()
                .filter(|w| w.state == WorkerState::Alive)
                .map(|w| w.id.clone())
                .collect()
        });
        let mut live = self.liveness.lock().expect("liveness lock poisoned");
        live.retain(|id, _| alive.contains(id));
        for id in alive {
            let mut fresh = Liveness::now(0.0, 0);
            // the worker's retry-budget count is cumulative: alerts compare against it
            fresh.retry_budget_exhausted = live.get(&id).map_or(0, |l| l.retry_budget_exhausted);
            live.insert(id, fresh);
        }
    }

    /// Forgets every worker's liveness (on stepping down: heartbeats now go to the new
    /// leader, and what this node saw would only age).
    pub fn forget_liveness(&self) {
        self.liveness
            .lock()
            .expect("liveness lock poisoned")
            .clear();
    }

    /// Runs `f` on the applied state once it is current: this coordinator leads and a
    /// quorum confirmed it (read index), so nothing committed is missing. A follower
    /// answers `NotLeader`, with the leader to ask.
    pub async fn read_current<T>(
        &self,
        f: impl FnOnce(&State) -> T,
    ) -> std::result::Result<T, StoreError> {
        self.raft.read_index().await?;
        Ok(self.read(f))
    }

    /// Validates `cmd` against the applied state, replicates it and answers once it is
    /// applied, with the outcome. The raft node wakes the scheduler and watchers.
    pub async fn propose(&self, cmd: Command) -> std::result::Result<Outcome, StoreError> {
        // Dry run on the affected part first, so that commands the state machine would
        // refuse (a stale task report, say) are answered without a log entry.
        self.read(|s| s.clone_for_check(&cmd).apply(&cmd))?;
        let out = self.raft.propose(cmd).await??;
        self.metrics.commands.inc();
        Ok(out)
    }

    /// Runs `f` on the current applied state.
    pub fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.applied.lock().expect("applied lock poisoned").state)
    }

    /// A receiver that changes whenever the state does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Wakes watchers without a state change (e.g. liveness).
    pub fn touch(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    /// The coordinator group's members (id → gRPC address), as applied.
    pub fn members(&self) -> std::collections::BTreeMap<u64, String> {
        self.applied
            .lock()
            .expect("applied lock poisoned")
            .members
            .clone()
    }

    /// The shared applied state (for the raft service's member check).
    pub fn applied(&self) -> Arc<Mutex<Applied>> {
        self.applied.clone()
    }
}
