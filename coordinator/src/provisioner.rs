//! Provisioners start and stop workers for the autoscaler (`scheduler::autoscale`,
//! issue 12 §2.8). `LocalProvisioner` (`--provisioner local`) runs `autopipe worker`
//! processes of this same binary on this machine, each with its own work dir under
//! `<data-dir>/autoscaled/<id>`, and gives each the id it will register under (written
//! to its work dir, where a worker keeps its id), so the scaler knows which registered
//! workers are its own. A provisioner only ever stops workers it started.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tonic::async_trait;

/// Why a provisioner could not start or stop a worker.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// the worker process could not be started (binary, work dir): fix and restart
    #[error("cannot start a worker: {0}")]
    Start(String),
    /// the worker is not one this provisioner started
    #[error("worker {0} was not started by this provisioner")]
    NotOwned(String),
}

impl ProvisionError {
    /// Retry class: a start may work next round (e.g. a full process table), a
    /// worker we do not own never will be ours.
    pub fn class(&self) -> autopipe_common::error::ErrorClass {
        match self {
            ProvisionError::Start(_) => autopipe_common::error::ErrorClass::Transient,
            ProvisionError::NotOwned(_) => autopipe_common::error::ErrorClass::Permanent,
        }
    }
}

/// Starts and stops workers.
#[async_trait]
pub trait Provisioner: Send + Sync {
    /// Starts `n` workers; returns the ids they will register under.
    async fn start(&self, n: u32) -> Result<Vec<String>, ProvisionError>;
    /// Stops worker `worker_id` (one it started), gracefully where it can.
    async fn stop(&self, worker_id: &str) -> Result<(), ProvisionError>;
    /// The workers it started that still run, with when each was started.
    fn running(&self) -> Vec<(String, Instant)>;
    /// Stops every worker it started (at shutdown).
    async fn shutdown(&self);
}

/// Settings of `LocalProvisioner`.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// the `autopipe` binary (default: this process's own)
    pub binary: Option<PathBuf>,
    /// where each started worker gets its work dir (`<root>/<id>`)
    pub root: PathBuf,
    /// task slots of each started worker
    pub slots: u32,
    /// more flags for every started worker (`--worker-arg`), e.g. `--memory-limit=2GiB`
    pub extra_args: Vec<String>,
}

/// Runs workers as child processes of this one on this machine.
pub struct LocalProvisioner {
    config: LocalConfig,
    binary: PathBuf,
    coordinators: String,
    children: Mutex<BTreeMap<String, (tokio::process::Child, Instant)>>,
}

/// How long a stopped worker may take to exit before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

impl LocalProvisioner {
    /// Workers it starts register with `coordinators` (gRPC URLs).
    pub fn new(config: LocalConfig, coordinators: &[String]) -> Result<Self, ProvisionError> {
        let binary = match &config.binary {
            Some(b) => b.clone(),
            None => std::env::current_exe().map_err(|e| {
                ProvisionError::Start(format!("cannot find this program's binary: {e}"))
            })?,
        };
        Ok(Self {
            config,
            binary,
            coordinators: coordinators.join(","),
            children: Mutex::new(BTreeMap::new()),
        })
    }

    fn start_one(&self) -> Result<String, ProvisionError> {
        let id = format!("as-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let dir = self.config.root.join(&id);
        let err = |what: &str, e: std::io::Error| {
            ProvisionError::Start(format!("{what} {}: {e}", dir.display()))
        };
        std::fs::create_dir_all(&dir).map_err(|e| err("cannot create work dir", e))?;
        // the worker registers under the id it finds in its work dir
        std::fs::write(dir.join("worker-id"), format!("{id}\n"))
            .map_err(|e| err("cannot write the worker id into", e))?;
        let log = std::fs::File::create(dir.join("worker.log"))
            .map_err(|e| err("cannot create worker.log in", e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| err("cannot open worker.log in", e))?;
        let child = tokio::process::Command::new(&self.binary)
            .arg("worker")
            .args(["--coordinator", &self.coordinators])
            .args(["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            .args(["--slots", &self.config.slots.to_string()])
            .arg("--work-dir")
            .arg(&dir)
            .args(&self.config.extra_args)
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log2)
            // a backstop: a provisioner dropped without `shutdown` leaves no process
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                ProvisionError::Start(format!("cannot run {} worker: {e}", self.binary.display()))
            })?;
        tracing::info!(worker = %id, pid = ?child.id(), dir = %dir.display(), "autoscaler started a worker");
        self.children
            .lock()
            .expect("children lock poisoned")
            .insert(id.clone(), (child, Instant::now()));
        Ok(id)
    }
}

#[async_trait]
impl Provisioner for LocalProvisioner {
    async fn start(&self, n: u32) -> Result<Vec<String>, ProvisionError> {
        let mut ids = Vec::with_capacity(n as usize);
        for _ in 0..n {
            match self.start_one() {
                Ok(id) => ids.push(id),
                // what started stays started (and counted); the rest next round
                Err(e) if !ids.is_empty() => {
                    tracing::warn!("autoscaler started {} of {n} workers: {e}", ids.len());
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(ids)
    }

    async fn stop(&self, worker_id: &str) -> Result<(), ProvisionError> {
        let (mut child, _) = self
            .children
            .lock()
            .expect("children lock poisoned")
            .remove(worker_id)
            .ok_or_else(|| ProvisionError::NotOwned(worker_id.to_string()))?;
        // SIGTERM: the worker stops its servers and exits (it runs nothing)
        if let Some(pid) = child.id() {
            let _ = tokio::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        match tokio::time::timeout(STOP_GRACE, child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                tracing::warn!(worker = %worker_id, "worker did not exit within {STOP_GRACE:?} of SIGTERM; killing it");
                let _ = child.kill().await;
            }
        }
        let dir = self.config.root.join(worker_id);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(worker = %worker_id, "cannot remove its work dir {}: {e}", dir.display());
        }
        tracing::info!(worker = %worker_id, "autoscaler stopped a worker");
        Ok(())
    }

    fn running(&self) -> Vec<(String, Instant)> {
        let mut children = self.children.lock().expect("children lock poisoned");
        children.retain(|id, (c, _)| match c.try_wait() {
            Ok(Some(status)) => {
                tracing::warn!(worker = %id, %status, "a worker the autoscaler started exited; see worker.log in its work dir");
                false
            }
            _ => true,
        });
        children
            .iter()
            .map(|(id, (_, t))| (id.clone(), *t))
            .collect()
    }

    async fn shutdown(&self) {
        let ids: Vec<String> = self
            .children
            .lock()
            .expect("children lock poisoned")
            .keys()
            .cloned()
            .collect();
        futures::future::join_all(ids.iter().map(|id| self.stop(id))).await;
    }
}
