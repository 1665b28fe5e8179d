//! `autopipe local`: one coordinator and N workers in this process, talking real gRPC
//! and Arrow Flight on 127.0.0.1 ephemeral ports, with temporary state and work dirs.

use anyhow::{Context, Result};
use autopipe_common::auth::AuthToken;
use autopipe_common::roots::AllowedRoots;
use autopipe_coordinator::CoordinatorConfig;
use autopipe_worker::WorkerConfig;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A running embedded cluster.
pub struct LocalCluster {
    /// coordinator gRPC URL
    pub url: String,
    /// coordinator HTTP address
    pub http: String,
    cancel: CancellationToken,
    coordinator: autopipe_coordinator::CoordinatorHandle,
    workers: Vec<autopipe_worker::WorkerHandle>,
    _dir: tempfile::TempDir,
}

impl LocalCluster {
    /// Starts the cluster and waits until every worker registered. With `auth_token`,
    /// every server requires it and every client in this process sends it.
    /// With `autoscale`, no worker runs in this process: the coordinator starts
    /// `autopipe worker` processes (MIN at once, work dirs in the cluster's temporary
    /// dir) and scales them; `start` waits for MIN.
    pub async fn start(
        workers: usize,
        slots: u32,
        auth_token: Option<AuthToken>,
        allowed_roots: AllowedRoots,
        mut autoscale: Option<autopipe_coordinator::scheduler::autoscale::AutoscaleConfig>,
        default_params: autopipe_common::spec::JobParams,
    ) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("autopipe-local-")
            .tempdir()
            .context("cannot create a temporary directory")?;
        let cancel = CancellationToken::new();
        let workers = match &mut autoscale {
            Some(a) => {
                let autopipe_coordinator::scheduler::autoscale::ProvisionerConfig::Local(l) =
                    &mut a.provisioner;
                l.root = dir.path().join("autoscaled");
                a.params.min as usize
            }
            None => workers,
        };
        let embedded = if autoscale.is_some() { 0 } else { workers };
        let coordinator = autopipe_coordinator::start(
            CoordinatorConfig {
                listen: "127.0.0.1:0".parse()?,
                http: "127.0.0.1:0".parse()?,
                data_dir: dir.path().join("coordinator"),
                auth_token: auth_token.clone(),
                allowed_roots: allowed_roots.clone(),
                autoscale,
                default_params,
                ..Default::default()
            },
            cancel.clone(),
        )
        .await?;
        let url = format!("http://{}", coordinator.grpc_addr);
        let mut ws = Vec::new();
        for i in 0..embedded {
            ws.push(
                autopipe_worker::start(
                    WorkerConfig {
                        coordinators: vec![url.clone()],
                        listen: "127.0.0.1:0".parse()?,
                        http: "127.0.0.1:0".parse()?,
                        slots,
                        // the embedded workers share this process, and so the
                        // default memory of one worker (half the machine)
                        memory_limit: autopipe_worker::control::default_memory_limit()
                            / embedded as u64,
                        work_dir: dir.path().join(format!("worker-{i}")),
                        heartbeat_interval: Duration::from_millis(500),
                        auth_token: auth_token.clone(),
                        allowed_roots: allowed_roots.clone(),
                        ..Default::default()
                    },
                    cancel.clone(),
                )
                .await?,
            );
        }
        let core = coordinator.core.clone();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while core.read(|s| s.workers.len()) < workers {
            if std::time::Instant::now() > deadline {
                anyhow::bail!("workers did not register within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Self {
            url,
            http: coordinator.http_addr.to_string(),
            cancel,
            coordinator,
            workers: ws,
            _dir: dir,
        })
    }

    /// Stops every server and loop.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        for w in self.workers {
            w.join().await;
        }
        self.coordinator.join().await;
    }
}
