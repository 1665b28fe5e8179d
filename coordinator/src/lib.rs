//! autopipe-coordinator: keeps the durable job state (commands replicated by Raft
//! and applied by a pure state machine), plans SQL pipelines into stages, schedules tasks onto workers,
//! commits sink output, and serves gRPC (jobs, workers, admin) and HTTP (`/metrics`,
//! JSON admin API, dashboard).
#![warn(missing_docs)]

pub mod alerts;
pub mod api;
pub mod core;
pub mod lake;
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
use std::time::Duration;
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
    let mut server = autopipe_common::tls::server()?;
    let (health, reflection, reflection_alpha) =
        standard_services(core.clone(), cancel.clone()).await?;
    let grpc_task = tokio::spawn(async move {
        use tonic::service::interceptor::InterceptedService as Guarded;
        let r = server
            // autopipe's services refuse a call without the cluster token; health
            // checks (load balancers, Kubernetes probes) and reflection do not
            .add_service(Guarded::new(
                pb::job_service_server::JobServiceServer::new(svc.clone()),
                auth.clone(),
            ))
            .add_service(Guarded::new(
                pb::worker_service_server::WorkerServiceServer::new(svc.clone()),
                auth.clone(),
            ))
            .add_service(Guarded::new(
                pb::admin_service_server::AdminServiceServer::new(svc),
                auth.clone(),
            ))
            .add_service(Guarded::new(
                // a snapshot carries the whole state (job plans included)
                pb::raft_service_server::RaftServiceServer::new(raft_svc)
                    .max_decoding_message_size(crate::raft::transport::MAX_MESSAGE),
                auth,
            ))
            .add_service(health)
            .add_service(reflection)
            .add_service(reflection_alpha)
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

/// The standard gRPC services of a coordinator: health checking
/// (`grpc.health.v1.Health`: the server "" is SERVING while it runs, for a liveness
/// probe; the public services are SERVING while this member knows a leader, so a
/// readiness probe keeps a member cut off from its group out of a load balancer),
/// and server reflection (v1 and v1alpha, so grpcurl and grpcio's reflection client
/// both list and describe them) of the public services and health only.
async fn standard_services(
    core: Arc<Core>,
    cancel: CancellationToken,
) -> Result<(
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    tonic_reflection::pb::v1::server_reflection_server::ServerReflectionServer<
        impl tonic_reflection::pb::v1::server_reflection_server::ServerReflection,
    >,
    tonic_reflection::pb::v1alpha::server_reflection_server::ServerReflectionServer<
        impl tonic_reflection::pb::v1alpha::server_reflection_server::ServerReflection,
    >,
)> {
    let (reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(async move {
        let mut serving = None;
        loop {
            let now = core.raft.status().leader.is_some();
            if serving != Some(now) {
                let status = if now {
                    tonic_health::ServingStatus::Serving
                } else {
                    tonic_health::ServingStatus::NotServing
                };
                for name in pb::PUBLIC_SERVICES {
                    reporter.set_service_status(name, status).await;
                }
                serving = Some(now);
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    });
    let builder = || {
        let mut b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health");
        for name in pb::PUBLIC_SERVICES {
            b = b.with_service_name(name);
        }
        b
    };
    let reflection_error =
        |e: tonic_reflection::server::Error| Error::Permanent(format!("gRPC reflection: {e}"));
    let v1 = builder().build_v1().map_err(reflection_error)?;
    let v1alpha = builder().build_v1alpha().map_err(reflection_error)?;
    Ok((health, v1, v1alpha))
}
