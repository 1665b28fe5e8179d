//! The coordinator's shared core: the state store behind a mutex (never held across
//! an `.await`), volatile worker liveness from heartbeats, change notification for
//! watchers and the scheduler, and metrics.

use crate::metrics::Metrics;
use crate::state::{Command, Outcome, State, StateStore, StoreError, WorkerState};
use autopipe_common::error::{Error, Result};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

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
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7700".parse().expect("valid literal"),
            http: "127.0.0.1:7780".parse().expect("valid literal"),
            data_dir: PathBuf::from("autopipe-coordinator"),
            heartbeat_timeout: Duration::from_secs(10),
            schedule_interval: Duration::from_millis(100),
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
}

/// Shared coordinator core.
pub struct Core {
    /// configuration
    pub config: CoordinatorConfig,
    store: Mutex<StateStore>,
    /// heartbeat data by worker id
    pub liveness: Mutex<HashMap<String, Liveness>>,
    /// wakes the scheduler
    pub wake: Notify,
    version: watch::Sender<u64>,
    /// metrics
    pub metrics: Metrics,
}

impl Core {
    /// Opens the state under `config.data_dir` and replays it.
    pub fn open(config: CoordinatorConfig) -> Result<Self> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            Error::Permanent(format!(
                "cannot create data dir {}: {e}",
                config.data_dir.display()
            ))
        })?;
        let store = StateStore::open(&config.data_dir).map_err(|e| {
            Error::Permanent(format!(
                "cannot open state in {}: {e}",
                config.data_dir.display()
            ))
        })?;
        // Workers the log knows as alive get a fresh grace period to heartbeat again.
        let now = Instant::now();
        let liveness = store
            .state()
            .workers
            .values()
            .filter(|w| w.state == WorkerState::Alive)
            .map(|w| {
                (
                    w.id.clone(),
                    Liveness {
                        last: now,
                        last_ms: autopipe_common::util::now_ms(),
                        cpu_percent: 0.0,
                        memory_used_bytes: 0,
                    },
                )
            })
            .collect();
        Ok(Self {
            config,
            store: Mutex::new(store),
            liveness: Mutex::new(liveness),
            wake: Notify::new(),
            version: watch::channel(0).0,
            metrics: Metrics::default(),
        })
    }

    /// Writes `cmd` to the log and applies it; wakes the scheduler and watchers.
    pub fn propose(&self, cmd: Command) -> std::result::Result<Outcome, StoreError> {
        let out = self
            .store
            .lock()
            .expect("state lock poisoned")
            .propose(cmd)?;
        self.metrics.commands.inc();
        self.version.send_modify(|v| *v += 1);
        self.wake.notify_one();
        Ok(out)
    }

    /// Runs `f` on the current state.
    pub fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(self.store.lock().expect("state lock poisoned").state())
    }

    /// A receiver that changes whenever the state does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Wakes watchers without a state change (e.g. liveness).
    pub fn touch(&self) {
        self.version.send_modify(|v| *v += 1);
    }
}
