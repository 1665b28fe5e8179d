//! gRPC services: `JobService` (clients), `WorkerService` (workers), `AdminService`.
//! Every state change goes through `Core::propose` and is answered after it applied.

use super::cluster;
use super::status::{
    decisions, job_page_where, job_status, job_status_with_workers, public_state, workers,
};
use crate::core::{attempt_id, Core, Liveness, StoreError};
use crate::optimizer::partitions::{plan_inputs, InputPlan};
use crate::planner::plan_job_with;
use crate::planner::stream::{infer_missing_schema, plan_stream};
use crate::raft::{MemberChange, RaftError};
use crate::scheduler::report_failure;
use crate::state::{
    Command, Decision, DecisionKind, JobState, Outcome, ShuffleHome, TaskResult, WorkerState,
};
use autopipe_common::error::Error;
use autopipe_common::leader::LEADER_KEY;
use autopipe_common::spec::{JobMode, PipelineSpec, SinkMode};
use autopipe_common::splits::list_sources;
use autopipe_common::store::{parse_url, store_for};
use autopipe_common::util::now_ms;
use autopipe_proto as pb;
use futures::{Stream, StreamExt};
use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// All coordinator gRPC services over one core.
#[derive(Clone)]
pub struct Services {
    /// shared core
    pub core: Arc<Core>,
}

impl Services {
    /// Releases draining worker `id` if nothing blocks it (`State::release_blocker`).
    async fn release_drained(&self, id: &str) -> bool {
        let blocker = self.core.read(|s| s.release_blocker(id));
        if let Some(why) = blocker {
            tracing::debug!(worker = %id, "draining: {why}");
            return false;
        }
        let cmd = Command::WorkerReleased {
            worker_id: id.to_string(),
            at_ms: now_ms(),
        };
        match self.core.propose(cmd).await {
            Ok(_) => {
                tracing::info!(worker = %id, "drained worker released");
                true
            }
            Err(e) => {
                tracing::debug!(worker = %id, "drained worker not released: {e}");
                false
            }
        }
    }

    fn alive_workers(&self) -> u32 {
        alive(&self.core).len() as u32
    }

    async fn check_sink(&self, spec: &PipelineSpec) -> Result<(), Error> {
        if spec.sink.mode != SinkMode::ErrorIfExists
            || spec.sink.format == autopipe_common::spec::Format::Kafka
        {
            return Ok(());
        }
        let url = parse_url(&spec.sink.path)?;
        let (store, path) = store_for(&url)?;
        let any = store.list(Some(&path)).next().await;
        if let Some(Ok(m)) = any {
            return Err(Error::plan(
                "sink.mode",
                format!(
                    "mode = \"error_if_exists\" but {} already has files (e.g. {}); remove them or use mode = \"overwrite\"",
                    spec.sink.path, m.location
                ),
            ));
        }
        Ok(())
    }
}

/// The slots of each worker that is alive and heartbeats to this leader.
fn alive(core: &Core) -> Vec<u32> {
    let live = core
        .liveness
        .lock()
        .expect("liveness lock poisoned")
        .clone();
    core.read(|s| {
        s.workers
            .values()
            .filter(|w| w.state == WorkerState::Alive && live.contains_key(&w.id))
            .map(|w| w.slots)
            .collect()
    })
}

/// The job's scan tasks and shuffle width (`optimizer::partitions`), from its
/// sources' files as listed now and the alive slots.
async fn partitions_for(core: &Core, spec: &PipelineSpec) -> Result<InputPlan, Error> {
    let params = &spec.job.params;
    let sources = if params.adaptive_splits() {
        list_sources(spec, params.min_partition_bytes()).await?
    } else if params.shuffle_partitions.is_some() {
        vec![]
    } else {
        list_sources(spec, u64::MAX).await?
    };
    Ok(plan_inputs(&sources, params, alive(core).iter().sum()))
}

/// A planned batch job: its input splits, stages, scan stages and (for a delta sink)
/// the table schema.
pub(crate) struct PlannedBatch {
    /// the scan tasks and shuffle width, with their decision
    pub input: InputPlan,
    /// the stages
    pub stages: Vec<crate::state::commands::StagePlan>,
    /// the stages that scan sources
    pub scan_stages: Vec<String>,
    /// a delta sink's table schema (Delta's JSON)
    pub sink_schema: Option<String>,
}

/// Plans a batch job of `spec` (validated, paths normalized, delta sources pinned)
/// on the cluster as it is now.
pub(crate) async fn plan_batch(core: &Core, spec: &PipelineSpec) -> Result<PlannedBatch, Error> {
    let input = partitions_for(core, spec).await?;
    let planned = plan_job_with(spec, input.shuffle_partitions, input.splits.as_ref()).await?;
    let scan_stages = planned.scan_stages.iter().map(u32::to_string).collect();
    // a delta table's schema is the output's, known once planned
    let sink_schema = match spec.sink.format {
        autopipe_common::spec::Format::Delta => Some(
            crate::lake::delta::schema_json(&planned.output_schema)
                .map_err(|m| Error::plan("sink.format", m))?,
        ),
        _ => None,
    };
    Ok(PlannedBatch {
        input,
        stages: planned.stages,
        scan_stages,
        sink_schema,
    })
}

/// Pins each delta source to one table version (its `version`, the last one at or
/// before its `timestamp`, else the latest), so that planning and every task read
/// the same snapshot whatever is committed to the table meanwhile.
pub(crate) async fn pin_delta_sources(spec: &mut PipelineSpec) -> Result<(), Error> {
    for (i, s) in spec.sources.iter_mut().enumerate() {
        if s.format != autopipe_common::spec::Format::Delta {
            continue;
        }
        let key = format!("sources[{i}]");
        let v =
            autopipe_common::delta::pin_version(&s.path, s.version, s.timestamp.as_deref(), &key)
                .await?;
        s.version = Some(v);
        s.timestamp = None;
    }
    Ok(())
}

/// A launch older than this that the worker does not list as running was lost.
const LOST_LAUNCH_GRACE_MS: u64 = 5_000;

impl Services {
    /// Attempts the state says run on this worker, launched well before this heartbeat,
    /// that the worker does not list were never delivered (e.g. the coordinator
    /// restarted between recording a launch and sending it): fail them as transient.
    async fn reconcile_running(&self, h: &pb::HeartbeatRequest) {
        let now = now_ms();
        let listed: std::collections::HashSet<(String, u32, u32, u32)> = h
            .running
            .iter()
            .map(|k| (k.job_id.clone(), k.stage_id, k.task, k.attempt))
            .collect();
        let lost: Vec<pb::TaskKey> = self.core.read(|s| {
            let mut out = vec![];
            for job in s.jobs.values().filter(|j| j.state == JobState::Running) {
                for (si, st) in job.stages.iter().enumerate() {
                    for (ti, t) in st.tasks.iter().enumerate() {
                        for (attempt, worker_id, started_ms) in t.running_attempts() {
                            let key = (job.id.clone(), si as u32, ti as u32, attempt);
                            if worker_id == h.worker_id
                                && now.saturating_sub(started_ms) > LOST_LAUNCH_GRACE_MS
                                && !listed.contains(&key)
                            {
                                out.push(pb::TaskKey {
                                    job_id: key.0,
                                    stage_id: key.1,
                                    task: key.2,
                                    attempt: key.3,
                                });
                            }
                        }
                    }
                }
            }
            out
        });
        for key in lost {
            tracing::warn!(worker = %h.worker_id, job = %key.job_id, stage = key.stage_id, task = key.task, attempt = key.attempt, "worker does not run this attempt; re-queueing it");
            // the launch never arrived (e.g. the coordinator failed over before
            // sending it): neither the task's nor the worker's fault, not counted
            let mut rec = crate::scheduler::error_record(&Error::Transient(format!(
                "attempt {} was never started on worker {}",
                key.attempt, h.worker_id
            )));
            rec.worker_unreachable = true;
            crate::scheduler::propose_failure(&self.core, &key, rec, true).await;
        }
    }
}

/// A worker id a worker may ask to keep: 1 to 64 ASCII letters, digits, `-`, `_`, `.`.
fn valid_worker_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Services {
    /// Of the jobs a worker holds shuffle directories of, those it may delete: jobs
    /// that are terminal, and jobs the state does not know (forgotten, or never run
    /// here). "Unknown" is answered only by a leader whose state is current: a new
    /// leader that has not applied everything committed yet may lack a running job.
    fn finished_jobs(&self, shuffle_jobs: &[String]) -> Vec<String> {
        if shuffle_jobs.is_empty() {
            return vec![];
        }
        let current = self.core.raft.status().current;
        self.core.read(|s| {
            shuffle_jobs
                .iter()
                .filter(|id| match s.jobs.get(*id) {
                    Some(j) => j.state.is_terminal(),
                    None => current,
                })
                .cloned()
                .collect()
        })
    }
}

/// INVALID_ARGUMENT for a request field, with a `BadRequest` naming it and an
/// `ErrorInfo` (reason `INVALID_ARGUMENT`).
fn bad_field(field: &str, message: String) -> Status {
    use tonic_types::StatusExt;
    let mut d =
        autopipe_common::error::error_info("INVALID_ARGUMENT", &[("class", "permanent".into())]);
    d.add_bad_request_violation(field, message.clone());
    Status::with_error_details(tonic::Code::InvalidArgument, message, d)
}

/// A proposal's failure as a gRPC status. Not the leader: `UNAVAILABLE` with the
/// leader's address in the `autopipe-leader` metadata key, so clients and workers
/// reconnect there, and in the standard details (`ErrorInfo` reason `NOT_LEADER`,
/// metadata `leader`; `RetryInfo`) for any other client.
pub fn store_status(e: StoreError) -> Status {
    use tonic_types::StatusExt;
    let info =
        |reason: &str, meta: Vec<(&str, String)>| autopipe_common::error::error_info(reason, &meta);
    match &e {
        StoreError::Rejected(_) => Status::with_error_details(
            tonic::Code::FailedPrecondition,
            e.to_string(),
            info("REJECTED", vec![("class", "permanent".into())]),
        ),
        StoreError::Raft(RaftError::NotLeader { address, .. }) => {
            let mut meta = vec![("class", "transient".to_string())];
            if let Some(a) = address {
                meta.push(("leader", a.clone()));
            }
            let mut d = info("NOT_LEADER", meta);
            d.set_retry_info(Some(std::time::Duration::from_millis(100)));
            let mut st = Status::with_error_details(tonic::Code::Unavailable, e.to_string(), d);
            if let Some(v) = address.as_ref().and_then(|a| a.parse().ok()) {
                st.metadata_mut().insert(LEADER_KEY, v);
            }
            st
        }
        StoreError::Raft(_) => {
            let mut d = info("NO_QUORUM", vec![("class", "transient".into())]);
            d.set_retry_info(Some(std::time::Duration::from_millis(500)));
            Status::with_error_details(tonic::Code::Unavailable, e.to_string(), d)
        }
    }
}

/// The longest a `WatchJob` stream stays silent by default (`keepalive_seconds`).
const DEFAULT_WATCH_KEEPALIVE_S: u64 = 15;

/// A reused idempotency key whose first job had another spec: `ALREADY_EXISTS`,
/// with `ErrorInfo` reason `REQUEST_ID_REUSED` naming that job.
fn reused_request_id(request_id: &str, job_id: &str) -> Status {
    use tonic_types::StatusExt;
    let mut d = autopipe_common::error::error_info(
        "REQUEST_ID_REUSED",
        &[
            ("class", "permanent".into()),
            ("job_id", job_id.to_string()),
        ],
    );
    d.add_bad_request_violation(
        "request_id",
        format!("request_id '{request_id}' already started job {job_id} with another spec; use a new key for a new spec"),
    );
    Status::with_error_details(
        tonic::Code::AlreadyExists,
        format!("request_id '{request_id}' already started job {job_id} with another spec; use a new key for a new spec"),
        d,
    )
}

/// Gives an object-store source URL that names a directory its trailing '/' (DataFusion
/// reads a URL without one as a single file): one that is no object but a prefix of
/// some. A local directory got it in `PipelineSpec::normalize`.
async fn directory_urls(spec: &mut PipelineSpec) {
    for s in &mut spec.sources {
        if s.format == autopipe_common::spec::Format::Kafka
            || s.path.ends_with('/')
            || s.path.starts_with("file://")
            || s.path.contains(['*', '?', '['])
        {
            continue;
        }
        let Ok((store, path)) = parse_url(&s.path).and_then(|u| store_for(&u)) else {
            continue;
        };
        if object_store::ObjectStoreExt::head(&store, &path)
            .await
            .is_ok()
        {
            continue;
        }
        if let Some(Ok(_)) = store.list(Some(&path)).next().await {
            s.path.push('/');
        }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::JobStatus, Status>> + Send>>;

#[tonic::async_trait]
impl pb::job_service_server::JobService for Services {
    async fn submit_job(
        &self,
        req: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let req = req.into_inner();
        let origin = if req.spec_origin.is_empty() {
            "<request>".to_string()
        } else {
            req.spec_origin.clone()
        };
        let request_id = req.request_id.clone();
        use pb::submit_job_request::Spec as Sent;
        let parsed = match &req.spec {
            // the CLI's: its paths resolved against the spec file already
            Some(Sent::SpecJson(t)) => PipelineSpec::parse(t, &origin)?,
            Some(Sent::SpecToml(t)) => PipelineSpec::parse(t, &origin)?,
            Some(Sent::Pipeline(m)) => PipelineSpec::from_message(m, &origin)?,
            None => {
                return Err(autopipe_common::error::Error::Spec {
                    origin,
                    key: "spec".into(),
                    message: "the request carries no spec (spec_json, pipeline or spec_toml)"
                        .into(),
                }
                .into())
            }
        };
        // the spec as parsed, whichever form it came in, fingerprints the request
        let request_hash = crate::state::commands::request_fingerprint(
            &serde_json::to_string(&parsed).expect("a spec serializes"),
        );
        // the job the key started first; refused when it started it with another spec
        let first = |core: &Core| -> Result<Option<String>, Status> {
            if request_id.is_empty() {
                return Ok(None);
            }
            core.read(|s| {
                let Some(id) = s.submissions.get(&request_id) else {
                    return Ok(None);
                };
                let theirs = s.jobs.get(id).map_or(0, |j| j.request_hash);
                if theirs != 0 && theirs != request_hash {
                    return Err(reused_request_id(&request_id, id));
                }
                Ok(Some(id.clone()))
            })
        };
        if let Some(job_id) = first(&self.core)? {
            return Ok(Response::new(pb::SubmitJobResponse {
                job_id,
                created: false,
            }));
        }
        // the same normalization whatever the client
        let mut spec = parsed.normalize_sent(&origin)?;
        directory_urls(&mut spec).await;
        // the cluster's `--param` defaults fill what the job does not pin
        spec.job.params =
            std::mem::take(&mut spec.job.params).or_defaults(&self.core.config.default_params);
        spec.validate(&origin)?;
        // before anything reads a source or looks at the sink (`--allowed-roots`)
        self.core.config.allowed_roots.check_spec(&spec, &origin)?;
        pin_delta_sources(&mut spec).await?;
        let streaming = spec.job.mode == JobMode::Streaming;
        let (input, stages, scan_stages, stream, sink_schema) = if streaming {
            // one consumer task per alive worker to start with
            infer_missing_schema(&mut spec).await?;
            let (stages, stream) = plan_stream(&spec, self.alive_workers().max(1)).await?;
            let none = InputPlan {
                splits: None,
                shuffle_partitions: 1,
                decision: None,
            };
            (none, stages, vec![], Some(Box::new(stream)), None)
        } else {
            let b = plan_batch(&self.core, &spec).await?;
            (b.input, b.stages, b.scan_stages, None, b.sink_schema)
        };
        let partitions = input.shuffle_partitions;
        self.check_sink(&spec).await?;
        let job_id = format!(
            "{}-{}-{}",
            spec.job.name,
            chrono::Utc::now().format("%Y%m%d%H%M%S"),
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        );
        tracing::info!(job = %job_id, stages = stages.len(), partitions, streaming, "job submitted");
        let r = self
            .core
            .propose(Command::SubmitJob {
                job_id: job_id.clone(),
                spec: Box::new(spec),
                stages,
                at_ms: now_ms(),
                request_id: request_id.clone(),
                request_hash,
                stream,
                sink_schema,
                compaction: None,
            })
            .await;
        if r.is_ok() {
            if let Some((what, why, mut inputs)) = input.decision {
                inputs.insert("scan_stages".into(), scan_stages.join(","));
                let decision = Decision {
                    id: 0,
                    at_ms: now_ms(),
                    job_id: job_id.clone(),
                    kind: DecisionKind::InputSplits,
                    what,
                    why,
                    inputs,
                    effect: None,
                };
                // the job runs either way; only its record would be missing
                if let Err(e) = self
                    .core
                    .propose(Command::RecordDecision { decision })
                    .await
                {
                    tracing::warn!(job = %job_id, error = %e, "input_splits decision not recorded");
                }
            }
        }
        match r {
            Ok(_) => Ok(Response::new(pb::SubmitJobResponse {
                job_id,
                created: true,
            })),
            // the same request committed first (a retry that raced it)
            Err(StoreError::Rejected(_)) if !matches!(first(&self.core), Ok(None)) => {
                Ok(Response::new(pb::SubmitJobResponse {
                    job_id: first(&self.core)?.expect("checked"),
                    created: false,
                }))
            }
            Err(e) => Err(store_status(e)),
        }
    }

    async fn get_job(&self, req: Request<pb::JobId>) -> Result<Response<pb::JobStatus>, Status> {
        let id = req.into_inner().job_id;
        // served by the leader once a quorum confirmed it leads: never stale
        self.core
            .read_current(|s| s.jobs.get(&id).map(|j| job_status_with_workers(s, j)))
            .await
            .map_err(store_status)?
            .map(Response::new)
            .ok_or_else(|| {
                Status::not_found(format!("job '{id}' does not exist (see `autopipe jobs`)"))
            })
    }

    async fn list_jobs(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let r = req.into_inner();
        let states: Vec<i32> = r.states.clone();
        let full = r.view() == pb::JobView::Full;
        let keep = |j: &crate::state::Job| {
            (states.is_empty() || states.contains(&(public_state(j) as i32)))
                && (r.name.is_empty() || j.spec.job.name == r.name)
        };
        let (jobs, next) = self
            .core
            .read_current(|s| {
                job_page_where(s, r.page_size as usize, &r.page_token, keep).map(|(jobs, next)| {
                    let jobs = jobs
                        .into_iter()
                        .map(job_status)
                        .map(|mut st| {
                            if !full {
                                // plans only in the FULL view
                                for stage in &mut st.stages {
                                    stage.plan.clear();
                                }
                            }
                            st
                        })
                        .collect();
                    (jobs, next)
                })
            })
            .await
            .map_err(store_status)?
            .map_err(|m| bad_field("page_token", m))?;
        Ok(Response::new(pb::ListJobsResponse {
            jobs,
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn cancel_job(&self, req: Request<pb::JobId>) -> Result<Response<pb::JobStatus>, Status> {
        let id = req.into_inner().job_id;
        let state = self.core.read(|s| s.jobs.get(&id).map(|j| j.state));
        match state {
            None => return Err(Status::not_found(format!("job '{id}' does not exist"))),
            Some(st) if st.is_terminal() => {}
            Some(_) => {
                self.core
                    .propose(Command::CancelJob {
                        job_id: id.clone(),
                        at_ms: now_ms(),
                    })
                    .await
                    .map_err(store_status)?;
                // the leader loop cancels its running attempts (cancel_orphans)
            }
        }
        self.get_job(Request::new(pb::JobId { job_id: id })).await
    }

    type WatchJobStream = WatchStream;

    async fn watch_job(
        &self,
        req: Request<pb::WatchJobRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let req = req.into_inner();
        let id = req.job_id;
        let keepalive = std::time::Duration::from_secs(match req.keepalive_seconds {
            0 => DEFAULT_WATCH_KEEPALIVE_S,
            n => u64::from(n),
        });
        if self
            .core
            .read_current(|s| !s.jobs.contains_key(&id))
            .await
            .map_err(store_status)?
        {
            return Err(Status::not_found(format!("job '{id}' does not exist")));
        }
        let core = self.core.clone();
        let mut rx = core.subscribe();
        let stream = async_stream(move |tx| async move {
            // what was sent last, and when
            let mut sent: Option<(pb::JobStatus, tokio::time::Instant)> = None;
            loop {
                // a deposed leader's state may be stale: the client moves on to the
                // new leader
                if !core.raft.is_leader() {
                    let _ = tx
                        .send(Err(store_status(StoreError::Raft(core.raft.not_leader()))))
                        .await;
                    return;
                }
                let st = core.read(|s| s.jobs.get(&id).map(job_status));
                let Some(st) = st else {
                    // forgotten (retention) while watched: say so, never a silent end
                    let _ = tx
                        .send(Err(Status::not_found(format!(
                            "job '{id}' no longer exists (removed by the job retention)"
                        ))))
                        .await;
                    return;
                };
                let terminal = matches!(
                    pb::JobState::try_from(st.state),
                    Ok(pb::JobState::Succeeded | pb::JobState::Failed | pb::JobState::Cancelled)
                );
                let due = sent
                    .as_ref()
                    .is_none_or(|(last, at)| *last != st || at.elapsed() >= keepalive);
                if due {
                    if tx.send(Ok(st.clone())).await.is_err() || terminal {
                        return;
                    }
                    sent = Some((st, tokio::time::Instant::now()));
                }
                let next_keepalive = sent
                    .as_ref()
                    .map_or(keepalive, |(_, at)| keepalive.saturating_sub(at.elapsed()));
                // any change to the state wakes the loop; a keep-alive is due anyway
                tokio::select! {
                    r = rx.changed() => if r.is_err() { return },
                    _ = tokio::time::sleep(next_keepalive) => {},
                }
            }
        });
        Ok(Response::new(stream))
    }
}

/// A stream fed by a spawned producer.
fn async_stream<F, Fut>(f: F) -> WatchStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<pb::JobStatus, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl pb::worker_service_server::WorkerService for Services {
    async fn register_worker(
        &self,
        req: Request<pb::RegisterWorkerRequest>,
    ) -> Result<Response<pb::RegisterWorkerResponse>, Status> {
        let r = req.into_inner();
        if r.address.is_empty() || r.slots == 0 {
            return Err(Status::invalid_argument(
                "register: address must be set and slots must be at least 1",
            ));
        }
        // a worker keeps the id it was given (in its work dir) across restarts
        let worker_id = if r.worker_id.is_empty() {
            format!("w-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
        } else if valid_worker_id(&r.worker_id) {
            r.worker_id.clone()
        } else {
            return Err(Status::invalid_argument(format!(
                "register: worker id '{}' is not 1 to 64 letters, digits, '-', '_' or '.'; delete the worker's saved id (worker-id in its --work-dir) to get a new one",
                r.worker_id.escape_debug()
            )));
        };
        let before = self.core.read(|s| {
            s.workers
                .get(&worker_id)
                .map(|w| (w.state, w.address.clone()))
        });
        if let Some((WorkerState::Released, _)) = &before {
            // its heartbeat raced the autoscaler's stop: it is leaving, not coming back
            return Err(Status::failed_precondition(format!(
                "register: worker {worker_id} was released by the autoscaler (scale_down) and is being stopped; a worker meant to rejoin needs a fresh --work-dir (a new id)"
            )));
        }
        if let Some((state, address)) = &before {
            tracing::warn!(worker = %worker_id, was = %address, now = %r.address, "worker registers again under its id ({}); {}", if *state == WorkerState::Alive { "alive: its process restarted" } else { "lost" }, "its earlier attempts and map outputs are redone");
        }
        self.core
            .propose(Command::RegisterWorker {
                worker_id: worker_id.clone(),
                address: r.address.clone(),
                http_address: r.http_address,
                slots: r.slots,
                at_ms: now_ms(),
                shuffle: ShuffleHome {
                    host_id: r.host_id,
                    dir: r.shuffle_dir,
                },
            })
            .await
            .map_err(store_status)?;
        self.core
            .liveness
            .lock()
            .expect("liveness lock poisoned")
            .insert(worker_id.clone(), Liveness::now(0.0, 0));
        tracing::info!(worker = %worker_id, address = %r.address, slots = r.slots, "worker registered");
        Ok(Response::new(pb::RegisterWorkerResponse { worker_id }))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let h = req.into_inner();
        // liveness matters only where the scheduler runs; a follower's "unknown" would
        // make the worker register again, so it points the worker at the leader instead
        if !self.core.raft.is_leader() {
            return Err(store_status(StoreError::Raft(self.core.raft.not_leader())));
        }
        let known = self.core.read(|s| {
            s.workers
                .get(&h.worker_id)
                .map(|w| w.state == WorkerState::Alive)
                .unwrap_or(false)
        });
        let finished_jobs = self.finished_jobs(&h.shuffle_jobs);
        if known {
            self.reconcile_running(&h).await;
            let mut l = Liveness::now(h.cpu_percent, h.memory_used_bytes);
            l.retry_budget_exhausted = h.retry_budget_exhausted;
            l.running = h.running.clone();
            l.load = Some(crate::state::load::WorkerLoad::from_heartbeat(
                &h, l.last_ms,
            ));
            l.split_offers = h.split_offers.clone();
            l.draining = h.draining;
            let before = {
                let mut live = self.core.liveness.lock().expect("liveness lock poisoned");
                // an attempt asked to stop holds its slot while the worker lists it
                if let Some(prev) = live.get(&h.worker_id) {
                    let listed: HashSet<_> = h.running.iter().map(attempt_id).collect();
                    l.stopping = prev.stopping.intersection(&listed).cloned().collect();
                }
                live.insert(h.worker_id.clone(), l)
                    .map(|p| p.retry_budget_exhausted)
                    .unwrap_or(0)
            };
            if h.retry_budget_exhausted > before {
                crate::alerts::retry_budget_exhausted(
                    &self.core,
                    &h.worker_id,
                    h.retry_budget_exhausted - before,
                );
            }
        }
        // a draining worker is released once nothing runs there and nothing it holds
        // is still needed (as the fleet autoscaler releases an idle one): it leaves
        // without being declared lost, and nothing is redone
        let released = known && h.draining && self.release_drained(&h.worker_id).await;
        Ok(Response::new(pb::HeartbeatResponse {
            known,
            finished_jobs,
            released,
        }))
    }

    async fn commit_batch(
        &self,
        req: Request<pb::CommitBatchRequest>,
    ) -> Result<Response<pb::CommitBatchResponse>, Status> {
        use crate::scheduler::stream::{commit_batch, CommitRefused};
        if !self.core.raft.is_leader() {
            return Err(store_status(StoreError::Raft(self.core.raft.not_leader())));
        }
        let req = req.into_inner();
        match commit_batch(&self.core, &req).await {
            Ok(()) => Ok(Response::new(self.core.read(|s| {
                let key = req.key.as_ref().map(|k| k.job_id.as_str()).unwrap_or("");
                let job = s.jobs.get(key);
                let st = job.and_then(|j| j.stream.as_ref().map(|st| (j, st)));
                let task = req.key.as_ref().map_or(0, |k| k.task as usize);
                pb::CommitBatchResponse {
                    seq: st.map_or(0, |(_, st)| st.batches),
                    view: st.map(|(j, st)| crate::scheduler::stream::view(j, st)),
                    partitions: st
                        .map(|(j, st)| {
                            let tasks = &j.stages[0].tasks;
                            let running = |t: usize| {
                                tasks.get(t).is_some_and(|t| {
                                    matches!(t.state, crate::state::TaskState::Running { .. })
                                })
                            };
                            st.readable(task, &running)
                        })
                        .unwrap_or_default(),
                }
            }))),
            Err(CommitRefused::Invalid(m)) => Err(Status::invalid_argument(m)),
            Err(CommitRefused::Fenced(m)) => Err(Status::failed_precondition(m)),
            Err(CommitRefused::Stale(m)) => Err(Status::aborted(m)),
            Err(CommitRefused::Store(e)) => Err(store_status(e)),
        }
    }

    async fn report_task_status(
        &self,
        req: Request<pb::TaskStatusReport>,
    ) -> Result<Response<pb::TaskStatusAck>, Status> {
        let r = req.into_inner();
        let key = r
            .key
            .clone()
            .ok_or_else(|| Status::invalid_argument("task report without a key"))?;
        // only the leader records results; the worker retries there
        if !self.core.raft.is_leader() {
            return Err(store_status(StoreError::Raft(self.core.raft.not_leader())));
        }
        let current = self.core.read(|s| {
            s.jobs.get(&key.job_id).and_then(|j| {
                let t = j
                    .stages
                    .get(key.stage_id as usize)?
                    .tasks
                    .get(key.task as usize)?;
                Some((j.state, t.clone()))
            })
        });
        // Reports of attempts the state no longer expects are acknowledged and dropped.
        let expected = matches!(
            &current,
            Some((JobState::Running, t))
                if t.running_attempts().iter().any(|(a, w, _)| *a == key.attempt && *w == r.worker_id)
        );
        if !expected {
            tracing::debug!(job = %key.job_id, stage = key.stage_id, task = key.task, attempt = key.attempt, "ignoring stale task report");
            return Ok(Response::new(pb::TaskStatusAck {}));
        }
        if r.succeeded {
            tracing::debug!(job = %key.job_id, stage = key.stage_id, task = key.task, attempt = key.attempt, duration_ms = r.duration_ms, rows_out = r.rows_out, "task succeeded");
            let m = &self.core.metrics;
            m.task_duration.observe(r.duration_ms as f64 / 1000.0);
            m.rows_read.inc_by(r.rows_in);
            m.bytes_read.inc_by(r.bytes_in);
            m.bytes_written.inc_by(r.bytes_out);
            m.bad_records.inc_by(r.bad_records);
            let is_sink = self.core.read(|s| {
                s.jobs[&key.job_id].stages[key.stage_id as usize]
                    .plan
                    .shuffle_partitions
                    .is_none()
            });
            if is_sink {
                m.rows_written.inc_by(r.rows_out);
            }
            let result = TaskResult {
                partitions: r.partitions.iter().map(|p| (p.rows, p.bytes)).collect(),
                hot_keys: r
                    .partitions
                    .iter()
                    .filter(|p| !p.hot_keys.is_empty())
                    .map(|p| {
                        let keys = p.hot_keys.iter().map(|k| (k.key.clone(), k.rows));
                        (p.partition, keys.collect())
                    })
                    .collect(),
                files: r.files,
                rows_in: r.rows_in,
                bytes_in: r.bytes_in,
                rows_out: r.rows_out,
                bytes_out: r.bytes_out,
                duration_ms: r.duration_ms,
                bad_records: r.bad_records,
                dead_letter_file: r.dead_letter_file,
            };
            match self
                .core
                .propose(Command::TaskSucceeded {
                    job_id: key.job_id.clone(),
                    stage: key.stage_id,
                    task: key.task,
                    attempt: key.attempt,
                    result,
                    at_ms: now_ms(),
                })
                .await
            {
                // the other attempt of a speculated task lost: cancel it
                Ok(Outcome::Superseded { worker_id, attempt }) => {
                    let core = self.core.clone();
                    let loser = pb::TaskKey { attempt, ..key };
                    tokio::spawn(async move {
                        crate::scheduler::cancel_attempt(&core, &worker_id, loser).await
                    });
                }
                Ok(_) => {}
                Err(StoreError::Raft(e)) => return Err(store_status(StoreError::Raft(e))),
                Err(e) => tracing::debug!("success not recorded: {e}"),
            }
        } else {
            let err = r
                .error
                .as_ref()
                .map(Error::from_detail)
                .unwrap_or_else(|| Error::Transient("task failed without an error".into()));
            tracing::warn!(job = %key.job_id, stage = key.stage_id, task = key.task, attempt = key.attempt, class = ?err.class(), "task failed: {err}");
            report_failure(&self.core, &key, &err).await;
            // a map output could not be fetched: is its worker gone?
            if let Error::FetchFailed { worker_id, .. } = &err {
                let (core, id) = (self.core.clone(), worker_id.clone());
                tokio::spawn(async move { crate::scheduler::probe_worker(&core, &id).await });
            }
        }
        Ok(Response::new(pb::TaskStatusAck {}))
    }
}

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for Services {
    async fn list_workers(
        &self,
        _req: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let w = self.core.read(|s| workers(&self.core, s));
        Ok(Response::new(pb::ListWorkersResponse { workers: w }))
    }

    async fn list_decisions(
        &self,
        req: Request<pb::ListDecisionsRequest>,
    ) -> Result<Response<pb::ListDecisionsResponse>, Status> {
        let job_id = req.into_inner().job_id;
        let decisions = self.core.read(|s| {
            if !job_id.is_empty() && !s.jobs.contains_key(&job_id) {
                return Err(Status::not_found(format!("job '{job_id}' does not exist")));
            }
            Ok(decisions(s, &job_id))
        })?;
        Ok(Response::new(pb::ListDecisionsResponse { decisions }))
    }

    async fn cluster_status(
        &self,
        _req: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        Ok(Response::new(cluster::cluster_status(&self.core).await))
    }

    async fn member_status(
        &self,
        _req: Request<pb::MemberStatusRequest>,
    ) -> Result<Response<pb::CoordinatorMember>, Status> {
        Ok(Response::new(cluster::member_status(
            &self.core.raft.status(),
        )))
    }

    async fn add_coordinator(
        &self,
        req: Request<pb::AddCoordinatorRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let r = req.into_inner();
        let address = r.address.trim().trim_start_matches("http://").to_string();
        if r.id == 0 || address.is_empty() {
            return Err(Status::invalid_argument(
                "add-coordinator: the id must be at least 1 and the address must be set",
            ));
        }
        if self.core.members().contains_key(&r.id) {
            return Err(Status::already_exists(format!(
                "coordinator {} is already a member",
                r.id
            )));
        }
        self.core
            .raft
            .change_members(MemberChange::Add { id: r.id, address })
            .await
            .map_err(|e| store_status(StoreError::Raft(e)))?;
        Ok(Response::new(cluster::cluster_status(&self.core).await))
    }

    async fn remove_coordinator(
        &self,
        req: Request<pb::RemoveCoordinatorRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let id = req.into_inner().id;
        let members = self.core.members();
        if !members.contains_key(&id) {
            return Err(Status::not_found(format!(
                "coordinator {id} is not a member (see `autopipe cluster`)"
            )));
        }
        if members.len() == 1 {
            return Err(Status::failed_precondition(
                "cannot remove the last coordinator of the group",
            ));
        }
        self.core
            .raft
            .change_members(MemberChange::Remove { id })
            .await
            .map_err(|e| store_status(StoreError::Raft(e)))?;
        Ok(Response::new(cluster::cluster_status(&self.core).await))
    }

    async fn drain_worker(
        &self,
        req: Request<pb::DrainWorkerRequest>,
    ) -> Result<Response<pb::DrainWorkerResponse>, Status> {
        let id = req.into_inner().worker_id;
        let address = self.core.read(|s| {
            s.workers
                .get(&id)
                .filter(|w| w.state == WorkerState::Alive)
                .map(|w| w.address.clone())
        });
        let Some(address) = address else {
            return Err(Status::not_found(format!(
                "worker '{id}' is not an alive worker (see `autopipe workers`)"
            )));
        };
        let ch = autopipe_common::shuffle::channel_to(&address).map_err(|e| e.to_status())?;
        let mut c = pb::worker_control_client::WorkerControlClient::new(ch);
        c.drain(pb::DrainWorkerRequest { worker_id: id })
            .await
            .map_err(|s| Status::unavailable(format!("worker at {address}: {}", s.message())))?;
        Ok(Response::new(pb::DrainWorkerResponse {}))
    }

    async fn compact_table(
        &self,
        req: Request<pb::CompactTableRequest>,
    ) -> Result<Response<pb::CompactTableResponse>, Status> {
        let path = req.into_inner().path;
        let job_ids = crate::scheduler::compaction::compact_now(&self.core, &path)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(pb::CompactTableResponse { job_ids }))
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let id = req.into_inner().id;
        let st = self.core.raft.status();
        if !st.voters.contains(&id) {
            return Err(Status::not_found(format!(
                "coordinator {id} is not a voting member (see `autopipe cluster`)"
            )));
        }
        if st.leader == Some(id) {
            return Ok(Response::new(cluster::cluster_status(&self.core).await));
        }
        if !self.core.raft.is_leader() {
            return Err(store_status(StoreError::Raft(self.core.raft.not_leader())));
        }
        let mut status = self.core.raft.watch_status();
        self.core
            .raft
            .transfer_leader(id)
            .await
            .map_err(|e| store_status(StoreError::Raft(e)))?;
        // raft-rs aborts a transfer after an election timeout; wait a little longer
        let wait = self.core.config.raft.tick * (self.core.config.raft.election_ticks as u32 * 2);
        let moved = tokio::time::timeout(wait, async {
            loop {
                if status.borrow_and_update().leader == Some(id) {
                    return;
                }
                if status.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        if moved.is_err() {
            return Err(Status::deadline_exceeded(format!(
                "coordinator {id} did not take over within {wait:?}; is it caught up? (see `autopipe cluster`)"
            )));
        }
        Ok(Response::new(cluster::cluster_status(&self.core).await))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::TaskState;

    use crate::core::CoordinatorConfig;

    #[tokio::test]
    async fn an_attempt_the_worker_does_not_run_is_requeued_after_the_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        let cancel = tokio_util::sync::CancellationToken::new();
        let (core, _task) = Core::open(
            CoordinatorConfig {
                data_dir: dir.path().to_path_buf(),
                ..Default::default()
            },
            "127.0.0.1:1".into(),
            cancel.clone(),
        )
        .unwrap();
        let core = Arc::new(core);
        core.propose(Command::RegisterWorker {
            worker_id: "w1".into(),
            address: "a:1".into(),
            http_address: String::new(),
            slots: 4,
            at_ms: 0,
            shuffle: Default::default(),
        })
        .await
        .unwrap();
        core.propose(crate::state::test_job(2)).await.unwrap();
        for (task, at_ms) in [(0, now_ms() - 60_000), (1, now_ms() - 60_000)] {
            core.propose(Command::TaskLaunched {
                job_id: "j".into(),
                stage: 0,
                task,
                attempt: 1,
                worker_id: "w1".into(),
                at_ms,
            })
            .await
            .unwrap();
        }
        let svc = Services { core: core.clone() };
        // the worker runs task 1 but has never heard of task 0
        svc.reconcile_running(&pb::HeartbeatRequest {
            worker_id: "w1".into(),
            running: vec![pb::TaskKey {
                job_id: "j".into(),
                stage_id: 0,
                task: 1,
                attempt: 1,
            }],
            ..Default::default()
        })
        .await;
        let (t0, t1) = core.read(|s| {
            let st = &s.jobs["j"].stages[0];
            (st.tasks[0].clone(), st.tasks[1].clone())
        });
        assert_eq!(t0.state, TaskState::Pending);
        assert_eq!(
            t0.failures, 0,
            "a launch that never arrived is not the task's fault"
        );
        assert!(t0.last_error.as_ref().unwrap().worker_unreachable);
        assert!(matches!(t1.state, TaskState::Running { .. }));
        cancel.cancel();
    }

    /// A one-member coordinator core in `dir`, leading with a current state.
    async fn leading_core(
        dir: &std::path::Path,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Arc<Core> {
        let (core, _task) = Core::open(
            CoordinatorConfig {
                data_dir: dir.to_path_buf(),
                ..Default::default()
            },
            "127.0.0.1:1".into(),
            cancel.clone(),
        )
        .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !core.raft.status().current {
            assert!(std::time::Instant::now() < deadline, "no leader");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Arc::new(core)
    }

    fn register_request(address: &str, worker_id: &str) -> Request<pb::RegisterWorkerRequest> {
        Request::new(pb::RegisterWorkerRequest {
            address: address.into(),
            slots: 2,
            worker_id: worker_id.into(),
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn a_worker_registering_under_its_saved_id_keeps_it_and_one_entry() {
        use pb::worker_service_server::WorkerService;
        let dir = tempfile::tempdir().unwrap();
        let cancel = tokio_util::sync::CancellationToken::new();
        let svc = Services {
            core: leading_core(dir.path(), &cancel).await,
        };
        let id = svc
            .register_worker(register_request("a:1", ""))
            .await
            .unwrap()
            .into_inner()
            .worker_id;
        assert!(id.starts_with("w-"), "{id}");
        // the process restarts on another port and registers with its saved id
        let again = svc
            .register_worker(register_request("a:2", &id))
            .await
            .unwrap()
            .into_inner()
            .worker_id;
        assert_eq!(again, id);
        let ws = svc.core.read(|s| s.workers.clone());
        assert_eq!(ws.len(), 1);
        assert_eq!(ws[&id].address, "a:2");
        assert_eq!(ws[&id].state, WorkerState::Alive);
        for bad in ["../x", "a b", "x".repeat(65).as_str()] {
            let e = svc
                .register_worker(register_request("a:3", bad))
                .await
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}");
        }
        cancel.cancel();
    }

    /// Submits the test job (one map task) as `job_id`.
    async fn submit_test_job(core: &Core, job_id: &str, at_ms: u64) {
        let Command::SubmitJob { spec, stages, .. } = crate::state::test_job(1) else {
            unreachable!()
        };
        core.propose(Command::SubmitJob {
            job_id: job_id.into(),
            spec,
            stages,
            at_ms,
            request_id: String::new(),
            request_hash: 0,
            stream: None,
            sink_schema: None,
            compaction: None,
        })
        .await
        .unwrap();
    }

    /// Registers worker w1 (4 slots).
    async fn register_w1(core: &Core) {
        core.propose(Command::RegisterWorker {
            worker_id: "w1".into(),
            address: "w1:1".into(),
            http_address: String::new(),
            slots: 4,
            at_ms: 0,
            shuffle: Default::default(),
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn list_jobs_pages_through_every_job_in_submission_order() {
        use pb::job_service_server::JobService;
        let dir = tempfile::tempdir().unwrap();
        let cancel = tokio_util::sync::CancellationToken::new();
        let svc = Services {
            core: leading_core(dir.path(), &cancel).await,
        };
        for i in 0..5 {
            submit_test_job(&svc.core, &format!("j{i}"), i).await;
        }
        let (mut seen, mut token, mut pages) = (vec![], String::new(), 0);
        loop {
            let r = svc
                .list_jobs(Request::new(pb::ListJobsRequest {
                    page_size: 2,
                    page_token: token.clone(),
                    ..Default::default()
                }))
                .await
                .unwrap()
                .into_inner();
            pages += 1;
            assert!(r.jobs.len() <= 2);
            seen.extend(r.jobs.into_iter().map(|j| j.job_id));
            if r.next_page_token.is_empty() {
                break;
            }
            token = r.next_page_token;
        }
        assert_eq!(pages, 3);
        assert_eq!(seen, ["j0", "j1", "j2", "j3", "j4"]);
        let e = svc
            .list_jobs(Request::new(pb::ListJobsRequest {
                page_size: 2,
                page_token: "bogus".into(),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        use tonic_types::StatusExt;
        let d = e.check_error_details().expect("a google.rpc.Status");
        let v = &d.bad_request().expect("a BadRequest").field_violations[0];
        assert_eq!(v.field, "page_token");
        assert_eq!(
            d.error_info().map(|i| i.reason.as_str()),
            Some("INVALID_ARGUMENT")
        );
        cancel.cancel();
    }

    #[tokio::test]
    async fn list_jobs_filters_by_state_and_name_and_sends_plans_only_in_the_full_view() {
        use pb::job_service_server::JobService;
        let dir = tempfile::tempdir().unwrap();
        let cancel = tokio_util::sync::CancellationToken::new();
        let svc = Services {
            core: leading_core(dir.path(), &cancel).await,
        };
        for i in 0..5 {
            let Command::SubmitJob {
                mut spec,
                mut stages,
                ..
            } = crate::state::test_job(1)
            else {
                unreachable!()
            };
            spec.job.name = if i == 4 { "other" } else { "t" }.into();
            stages[0].display = "ParquetExec: file_groups={1 group}".into();
            svc.core
                .propose(Command::SubmitJob {
                    job_id: format!("j{i}"),
                    spec,
                    stages,
                    at_ms: i,
                    request_id: String::new(),
                    request_hash: 0,
                    stream: None,
                    sink_schema: None,
                    compaction: None,
                })
                .await
                .unwrap();
        }
        for id in ["j1", "j3"] {
            svc.core
                .propose(Command::CancelJob {
                    job_id: id.into(),
                    at_ms: 9,
                })
                .await
                .unwrap();
        }
        let list = |req: pb::ListJobsRequest| async {
            let r = svc.list_jobs(Request::new(req)).await.unwrap().into_inner();
            let ids: Vec<String> = r.jobs.iter().map(|j| j.job_id.clone()).collect();
            (ids, r.next_page_token, r.jobs)
        };
        let cancelled = pb::ListJobsRequest {
            states: vec![pb::JobState::Cancelled as i32],
            page_size: 1,
            ..Default::default()
        };
        let (ids, token, _) = list(cancelled.clone()).await;
        assert_eq!(ids, ["j1"]);
        let (ids, token, _) = list(pb::ListJobsRequest {
            page_token: token,
            ..cancelled
        })
        .await;
        assert_eq!((ids, token.as_str()), (vec!["j3".to_string()], ""));
        // (none of their tasks started: queued)
        let (ids, _, _) = list(pb::ListJobsRequest {
            states: vec![pb::JobState::Queued as i32],
            name: "t".into(),
            ..Default::default()
        })
        .await;
        assert_eq!(ids, ["j0", "j2"]);
        register_w1(&svc.core).await;
        svc.core
            .propose(Command::TaskLaunched {
                job_id: "j2".into(),
                stage: 0,
                task: 0,
                attempt: 1,
                worker_id: "w1".into(),
                at_ms: 10,
            })
            .await
            .unwrap();
        let (ids, _, _) = list(pb::ListJobsRequest {
            states: vec![pb::JobState::Running as i32],
            ..Default::default()
        })
        .await;
        assert_eq!(ids, ["j2"], "running once a task started");
        let (ids, _, basic) = list(pb::ListJobsRequest {
            name: "other".into(),
            ..Default::default()
        })
        .await;
        assert_eq!(ids, ["j4"]);
        assert_eq!(basic[0].stages[0].plan, "", "no plan in the basic view");
        let (_, _, full) = list(pb::ListJobsRequest {
            name: "other".into(),
            view: pb::JobView::Full as i32,
            ..Default::default()
        })
        .await;
        assert!(full[0].stages[0].plan.contains("ParquetExec"), "{full:?}");
        cancel.cancel();
    }

    #[tokio::test]
    async fn watch_job_sends_on_a_change_of_its_job_and_keeps_alive() {
        use pb::job_service_server::JobService;
        let dir = tempfile::tempdir().unwrap();
        let cancel = tokio_util::sync::CancellationToken::new();
        let svc = Services {
            core: leading_core(dir.path(), &cancel).await,
        };
        submit_test_job(&svc.core, "watched", 0).await;
        submit_test_job(&svc.core, "other", 0).await;
        let watch = |keepalive_seconds| {
            svc.watch_job(Request::new(pb::WatchJobRequest {
                job_id: "watched".into(),
                keepalive_seconds,
            }))
        };
        let mut quiet = watch(60).await.unwrap().into_inner();
        async fn next(s: &mut WatchStream, secs: u64) -> Option<pb::JobStatus> {
            let wait = std::time::Duration::from_secs(secs);
            tokio::time::timeout(wait, tokio_stream::StreamExt::next(s))
                .await
                .ok()
                .flatten()
                .map(|r| r.unwrap())
        }
        let first = next(&mut quiet, 5).await.expect("the status at once");
        assert_eq!(first.tasks_done, 0);
        // another job changes: nothing (the stream used to repeat itself every second)
        let launch = |job: &str| Command::TaskLaunched {
            job_id: job.into(),
            stage: 0,
            task: 0,
            attempt: 1,
            worker_id: "w1".into(),
            at_ms: 1,
        };
        register_w1(&svc.core).await;
        svc.core.propose(launch("other")).await.unwrap();
        assert!(next(&mut quiet, 2).await.is_none(), "no change of its job");
        // its job changes: sent
        svc.core.propose(launch("watched")).await.unwrap();
        let changed = next(&mut quiet, 5).await.expect("the change");
        assert_ne!(changed, first);
        // with a 1 s keep-alive, the unchanged status comes again
        let mut alive = watch(1).await.unwrap().into_inner();
        let a = next(&mut alive, 5).await.expect("at once");
        let b = next(&mut alive, 5).await.expect("a keep-alive");
        assert_eq!(a, b);
        cancel.cancel();
    }

    #[tokio::test]
    async fn the_heartbeat_names_the_shuffle_dirs_of_jobs_no_longer_running() {
        use pb::worker_service_server::WorkerService;
        let dir = tempfile::tempdir().unwrap();
        let cancel = tokio_util::sync::CancellationToken::new();
        let svc = Services {
            core: leading_core(dir.path(), &cancel).await,
        };
        for id in ["running", "cancelled"] {
            submit_test_job(&svc.core, id, 0).await;
        }
        svc.core
            .propose(Command::CancelJob {
                job_id: "cancelled".into(),
                at_ms: 1,
            })
            .await
            .unwrap();
        let r = svc
            .heartbeat(Request::new(pb::HeartbeatRequest {
                worker_id: "w-x".into(),
                shuffle_jobs: vec!["running".into(), "cancelled".into(), "forgotten".into()],
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.finished_jobs, ["cancelled", "forgotten"]);
        cancel.cancel();
    }
}
