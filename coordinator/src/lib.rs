//! autopipe-coordinator: keeps the durable job state (commands replicated by Raft
//! and applied by a pure state machine), plans SQL pipelines into stages, schedules tasks onto workers,
//! commits sink output, and serves gRPC (jobs, workers, admin) and HTTP (`/metrics`,
//! JSON admin API, dashboard).
#![warn(missing_docs)]

pub mod alerts;
pub mod api;
pub mod core;
pub mod metrics;
pub mod optimizer;
pub mod planner;
pub mod provisioner;
pub mod raft;
pub mod scheduler;
pub mod state;

pub use crate::core::{CoordinatorConfig, Core};

use autopipe_common::error::{Error, Result};
use autopipe_common::util::no_delay;
use autopipe_proto as pb;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A running coordinator.
pub struct CoordinatorHandle {
    /// bound gRPC address
    pub grpc_addr: SocketAddr,
    /// bound HTTP address
    pub http_addr: SocketAddr,
    /// shared core (state, liveness, metrics)
    pub core: Arc<Core>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl CoordinatorHandle {
    /// Waits until every server and loop has stopped (after the token is cancelled).
    pub async fn join(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Opens the state, binds the listeners and starts the servers and the scheduler.
pub async fn start(
    config: CoordinatorConfig,
    cancel: CancellationToken,
) -> Result<CoordinatorHandle> {
    let grpc = TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::Permanent(format!("cannot listen on {}: {e}", config.listen)))?;
    let http = TcpListener::bind(config.http)
        .await
        .map_err(|e| Error::Permanent(format!("cannot listen on {}: {e}", config.http)))?;
    let grpc_addr = grpc
        .local_addr()
        .map_err(|e| Error::Permanent(e.to_string()))?;
    let http_addr = http
        .local_addr()
        .map_err(|e| Error::Permanent(e.to_string()))?;
    let advertise = config
        .raft
        .peers
        .get(&config.raft.id)
        .cloned()
        .unwrap_or_else(|| grpc_addr.to_string());
    let peers = config.raft.peers.clone();
    // this coordinator's own calls (Raft, workers, other members) carry the token
    if let Some(t) = &config.auth_token {
        autopipe_common::auth::set_client_token(Some(t));
    }
    let auth = autopipe_common::auth::ServerAuth::new(config.auth_token.as_ref());
    let mut config = config;
    if !grpc_addr.ip().is_unspecified() {
        config.raft.source_ip = Some(grpc_addr.ip());
    }
    let (core, raft_task) = Core::open(config, advertise, cancel.clone())?;
    let core = Arc::new(core);
    core.raft.replayed().await;

    let svc = api::grpc::Services { core: core.clone() };
    let raft_svc =
        crate::raft::transport::RaftService::new(core.raft.clone(), peers, core.applied())
            .requiring_member_id(auth.enabled());
    let c1 = cancel.clone();
    // TLS (mutual) when the process has TLS settings
    let server = autopipe_common::tls::server()?;
    let grpc_task = tokio::spawn(async move {
        let r = server
            // every service below refuses a call without the cluster token
            .layer(auth.layer())
            .add_service(pb::job_service_server::JobServiceServer::new(svc.clone()))
            .add_service(pb::worker_service_server::WorkerServiceServer::new(
                svc.clone(),
            ))
            .add_service(pb::admin_service_server::AdminServiceServer::new(svc))
            .add_service(
                // a snapshot carries the whole state (job plans included)
                pb::raft_service_server::RaftServiceServer::new(raft_svc)
                    .max_decoding_message_size(crate::raft::transport::MAX_MESSAGE),
            )
            .serve_with_incoming_shutdown(no_delay(grpc), c1.cancelled_owned())
            .await;
        if let Err(e) = r {
            tracing::error!("coordinator gRPC server stopped: {e}");
        }
    });
    let c2 = cancel.clone();
    let router = api::http::router(core.clone());
    let http_task = tokio::spawn(async move {
        let r = axum::serve(http, router)
            .with_graceful_shutdown(c2.cancelled_owned())
            .await;
        if let Err(e) = r {
            tracing::error!("coordinator HTTP server stopped: {e}");
        }
    });
    let sched_task = tokio::spawn(scheduler::run(core.clone(), cancel.clone()));
    let mut tasks = vec![grpc_task, http_task, sched_task, raft_task];
    if let Some(a) = core.config.autoscale.clone() {
        // started workers follow the leader among the members (or find this one)
        let coordinators: Vec<String> = if core.config.raft.peers.is_empty() {
            let mut local = grpc_addr;
            if local.ip().is_unspecified() {
                local.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            vec![format!("http://{local}")]
        } else {
            core.config
                .raft
                .peers
                .values()
                .map(|a| format!("http://{}", a.trim_start_matches("http://")))
                .collect()
        };
        let prov = scheduler::autoscale::provisioner(&a, &core.config.data_dir, &coordinators)
            .map_err(|e| Error::Permanent(format!("--autoscale: {e}")))?;
        tasks.push(tokio::spawn(scheduler::autoscale::run(
            core.clone(),
            a,
            prov,
            cancel.clone(),
        )));
    }
    tracing::info!(%grpc_addr, %http_addr, "coordinator started");
    Ok(CoordinatorHandle {
        grpc_addr,
        http_addr,
        core,
        tasks,
    })
}
