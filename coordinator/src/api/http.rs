//! HTTP admin API: `/metrics` (Prometheus text), `/api/jobs[?limit=N&after=TOKEN]`,
//! `/api/jobs/{id}`, `/api/jobs/{id}/explain` (the plan as run),
//! `/api/workers`, `/api/cluster`,
//! `/api/decisions[?job=ID]` (JSON), and `/` — a minimal dashboard that polls the JSON API.
//!
//! Every route only reads. With a cluster token, a request that could change something
//! (any method but GET and HEAD) needs `Authorization: Bearer <token>`, and so does every
//! request when `--http-open-reads=false` (the guard `router` adds).

use super::status::{
    decisions, job_page_where, job_status, job_status_with_workers, public_state, workers,
};
use crate::core::Core;
use autopipe_common::auth::ServerAuth;
use autopipe_proto as pb;
use axum::extract::Request;
use axum::extract::{Path, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;

/// The admin router.
pub fn router(core: Arc<Core>) -> Router {
    let auth = ServerAuth::new(core.config.auth_token.as_ref());
    let open_reads = core.config.http_open_reads;
    let guard = axum::middleware::from_fn(move |req: Request, next: Next| {
        let auth = auth.clone();
        async move {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .map(|v| v.as_bytes());
            if http_needs_token(req.method(), open_reads) && !auth.accepts(given) {
                let msg = if given.is_none() {
                    "missing auth token: send `Authorization: Bearer <token>`"
                } else {
                    "wrong auth token"
                };
                return (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, "Bearer")],
                    msg,
                )
                    .into_response();
            }
            next.run(req).await
        }
    });
    Router::new()
        .route("/", get(dashboard))
        .route("/metrics", get(metrics))
        .route("/api/jobs", get(jobs))
        .route("/api/jobs/{id}", get(job))
        .route("/api/jobs/{id}/explain", get(explain))
        .route("/api/workers", get(list_workers))
        .route("/api/cluster", get(cluster))
        .route("/api/decisions", get(list_decisions))
        .with_state(core)
        .layer(guard)
}

/// Whether a request with `method` must carry the token (when the cluster has one):
/// anything that may change something, and reads too unless they are open.
fn http_needs_token(method: &Method, open_reads: bool) -> bool {
    let read = method == Method::GET || method == Method::HEAD;
    !read || !open_reads
}

async fn cluster(State(core): State<Arc<Core>>) -> Json<Value> {
    Json(super::cluster::cluster_json(
        &super::cluster::cluster_status(&core).await,
    ))
}

async fn metrics(State(core): State<Arc<Core>>) -> Response {
    let raft = core.raft.status();
    let body = core.read(|s| core.metrics.render(s, &raft));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// JSON form of a job status.
pub fn job_json(j: &pb::JobStatus) -> Value {
    json!({
        "job_id": j.job_id,
        "name": j.name,
        "state": pb::JobState::try_from(j.state).map(|s| s.as_str_name().to_ascii_lowercase()).unwrap_or_default(),
        "rows_in": j.rows_in,
        "rows_out": j.rows_out,
        "tasks_total": j.tasks_total,
        "tasks_done": j.tasks_done,
        "task_attempts": j.task_attempts,
        "files_out": j.files_out,
        "bytes_in": j.bytes_in,
        "bytes_out": j.bytes_out,
        "submitted_at_ms": j.submitted_at_ms,
        "submitted_at": rfc3339(j.submitted_at_ms),
        "finished_at_ms": j.finished_at_ms,
        "finished_at": rfc3339(j.finished_at_ms),
        "output_path": j.output_path,
        "bad_records": j.bad_records,
        "dead_letter_path": j.dead_letter_path,
        "waiting": (!j.waiting_reason.is_empty()).then(|| json!({
            "reason": j.waiting_reason, "since_ms": j.waiting_since_ms})),
        "error": j.error.as_ref().map(|e| json!({
            "class": pb::ErrorClass::try_from(e.class).map(|c| c.as_str_name().to_ascii_lowercase()).unwrap_or_default(),
            "message": e.message,
            "key": e.key,
        })),
        "stages": j.stages.iter().map(stage_json).collect::<Vec<_>>(),
        "workers": job_workers_json(j),
        "stream": j.stream.as_ref().map(stream_json),
    })
}

/// JSON form of a streaming job's progress (the HTTP API's and the CLI's `stream`).
pub fn stream_json(s: &pb::StreamStatus) -> Value {
    let opt = |v: i64| (v >= 0).then_some(v);
    json!({
        "topic": s.topic,
        "batches": s.batches,
        "pending_batches": s.pending_batches,
        "records": s.records,
        "rows_out": s.rows_out,
        "bad_records": s.bad_records,
        "duplicates": s.duplicates,
        "late_records": s.late_records,
        "watermark_ms": s.watermark_ms,
        "windows_emitted_until_ms": s.windows_emitted_until_ms,
        "lag": s.lag,
        "input_records_per_s": s.input_records_per_s,
        "partitions": s.partitions.iter().map(|p| json!({
            "partition": p.partition,
            "task": p.task,
            "offset": opt(p.offset),
            "high_watermark": opt(p.high_watermark),
            "lag": opt(p.lag),
            "records": p.records,
            "input_records_per_s": p.input_records_per_s,
        })).collect::<Vec<_>>(),
        "tasks": s.tasks.iter().map(|t| json!({
            "task": t.task,
            "partitions": t.partitions,
            "batches": t.batches,
            "records": t.records,
            "records_per_s": t.records_per_s,
        })).collect::<Vec<_>>(),
    })
}

/// JSON form of a stage status (the HTTP API's `stages`, the CLI's `stage_details`).
/// `tasks_planned` differs from `tasks_total` when the decisions `replanned_by`
/// re-planned the stage; `task_reads` then says what each task read.
pub fn stage_json(s: &pb::StageStatus) -> Value {
    json!({
        "stage_id": s.stage_id,
        "kind": s.kind,
        "tasks_total": s.tasks_total,
        "tasks_done": s.tasks_done,
        "tasks_running": s.tasks_running,
        "tasks_planned": s.tasks_planned,
        "replanned_by": s.replanned_by,
        "rows_in": s.rows_in,
        "bytes_in": s.bytes_in,
        "rows_out": s.rows_out,
        "bytes_out": s.bytes_out,
        "input_stages": s.input_stages,
        "started_at_ms": s.started_at_ms,
        "started_at": rfc3339(s.started_at_ms),
        "finished_at_ms": s.finished_at_ms,
        "finished_at": rfc3339(s.finished_at_ms),
        "task_ms_min": s.task_ms_min,
        "task_ms_median": s.task_ms_median,
        "task_ms_max": s.task_ms_max,
        "task_reads": s.task_reads.iter().map(super::explain::task_reads_json).collect::<Vec<_>>(),
        "plan": s.plan,
    })
}

/// JSON form of a job's workers (`JobStatus.workers`; shared with the CLI's view).
pub fn job_workers_json(j: &pb::JobStatus) -> Value {
    j.workers
        .iter()
        .map(|w| {
            json!({
                "worker_id": w.worker_id,
                "state": w.state,
                "tasks_done": w.tasks_done,
                "tasks_running": w.tasks_running,
                "load": w.load.as_ref().map(load_json),
            })
        })
        .collect()
}

/// JSON form of a worker's recorded load.
pub fn load_json(l: &pb::WorkerLoad) -> Value {
    json!({
        "cpu_percent": l.cpu_percent,
        "cpu_cores": l.cpu_cores,
        "memory_used_bytes": l.memory_used_bytes,
        "memory_limit_bytes": l.memory_limit_bytes,
        "free_slots": l.free_slots,
        "running": l.running,
        "queued": l.queued,
        "spilled_bytes": l.spilled_bytes,
        "at_ms": l.at_ms,
        "at": rfc3339(l.at_ms),
        "hot": (!l.hot.is_empty()).then_some(&l.hot),
    })
}

/// JSON form of a worker.
pub fn worker_json(w: &pb::WorkerInfo) -> Value {
    json!({
        "worker_id": w.worker_id,
        "address": w.address,
        "http_address": w.http_address,
        "state": w.state,
        "slots": w.slots,
        "free_slots": w.free_slots,
        "running_tasks": w.running_tasks,
        "cpu_percent": w.cpu_percent,
        "memory_used_bytes": w.memory_used_bytes,
        "last_heartbeat_ms": w.last_heartbeat_ms,
        "load": w.load.as_ref().map(load_json),
    })
}

#[derive(serde::Deserialize)]
struct JobsQuery {
    limit: Option<usize>,
    after: Option<String>,
    /// only jobs in this state (running, committing, succeeded, failed, cancelled)
    state: Option<String>,
    /// only jobs of this name
    name: Option<String>,
    /// `full`: the stages' plans too
    view: Option<String>,
}

impl JobsQuery {
    /// Whether `j` passes the query's filters.
    fn keeps(&self, j: &crate::state::Job) -> bool {
        let state = public_state(j).as_str_name().to_ascii_lowercase();
        self.state
            .as_deref()
            .is_none_or(|s| s.eq_ignore_ascii_case(&state))
            && self.name.as_deref().is_none_or(|n| n == j.spec.job.name)
    }

    /// A job's JSON in the query's view (plans only in `view=full`, as gRPC's
    /// `ListJobs`).
    fn view(&self, j: &crate::state::Job) -> Value {
        let mut st = job_status(j);
        if self.view.as_deref() != Some("full") {
            for s in &mut st.stages {
                s.plan.clear();
            }
        }
        job_json(&st)
    }
}

/// Every job in submission order; with `?limit=N[&after=TOKEN]`, a page of them, the
/// next page's token in the `x-next-after` header (absent on the last page).
async fn jobs(
    State(core): State<Arc<Core>>,
    axum::extract::Query(q): axum::extract::Query<JobsQuery>,
) -> Response {
    if q.limit.is_none() && q.after.is_none() {
        let v: Vec<Value> = core.read(|s| {
            s.job_order
                .iter()
                .filter_map(|id| s.jobs.get(id))
                .filter(|j| q.keeps(j))
                .map(|j| q.view(j))
                .collect()
        });
        return Json(Value::Array(v)).into_response();
    }
    let page = core.read(|s| {
        job_page_where(
            s,
            q.limit.unwrap_or(0),
            q.after.as_deref().unwrap_or(""),
            |j| q.keeps(j),
        )
        .map(|(jobs, next)| (jobs.iter().map(|j| q.view(j)).collect::<Vec<_>>(), next))
    });
    match page {
        Ok((v, next)) => {
            let mut r = Json(Value::Array(v)).into_response();
            if let Some(v) = next.and_then(|t| header::HeaderValue::from_str(&t).ok()) {
                r.headers_mut().insert("x-next-after", v);
            }
            r
        }
        Err(e) => (StatusCode::BAD_REQUEST, Json(json!({ "error": e }))).into_response(),
    }
}

async fn job(State(core): State<Arc<Core>>, Path(id): Path<String>) -> Response {
    match core.read(|s| s.jobs.get(&id).map(|j| job_status_with_workers(s, j))) {
        Some(j) => Json(job_json(&j)).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("job '{id}' does not exist")})),
        )
            .into_response(),
    }
}

/// The plan as run (`autopipe explain --analyze`'s JSON).
async fn explain(State(core): State<Arc<Core>>, Path(id): Path<String>) -> Response {
    match core.read(|s| s.jobs.get(&id).map(|j| (job_status(j), decisions(s, &id)))) {
        Some((j, ds)) => Json(super::explain::explain_json(&j, &ds)).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("job '{id}' does not exist")})),
        )
            .into_response(),
    }
}

async fn list_workers(State(core): State<Arc<Core>>) -> Json<Value> {
    let v = core.read(|s| workers(&core, s));
    Json(Value::Array(v.iter().map(worker_json).collect()))
}

/// JSON form of a decision.
/// Milliseconds since the epoch as an RFC 3339 UTC timestamp
/// (`2026-11-30T13:08:48.101Z`); `None` (JSON null) for 0, "not yet".
pub fn rfc3339(ms: u64) -> Option<String> {
    if ms == 0 {
        return None;
    }
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// JSON form of a decision (shared with the CLI's view).
pub fn decision_json(d: &pb::Decision) -> Value {
    json!({
        "id": d.id,
        "at_ms": d.at_ms,
        "at": rfc3339(d.at_ms),
        "job_id": d.job_id,
        "kind": d.kind,
        "what": d.what,
        "why": d.why,
        "inputs": d.inputs.iter().collect::<std::collections::BTreeMap<_, _>>(),
        "effect": d.effect,
    })
}

#[derive(serde::Deserialize)]
struct DecisionQuery {
    job: Option<String>,
}

async fn list_decisions(
    State(core): State<Arc<Core>>,
    axum::extract::Query(q): axum::extract::Query<DecisionQuery>,
) -> Json<Value> {
    let job = q.job.unwrap_or_default();
    let v = core.read(|s| decisions(s, &job));
    Json(Value::Array(v.iter().map(decision_json).collect()))
}

async fn dashboard() -> Html<&'static str> {
    Html(include_str!("dashboard.html"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stay_open_unless_closed_and_changes_always_need_the_token() {
        assert!(!http_needs_token(&Method::GET, true));
        assert!(!http_needs_token(&Method::HEAD, true));
        assert!(http_needs_token(&Method::GET, false));
        assert!(http_needs_token(&Method::POST, true));
        assert!(http_needs_token(&Method::DELETE, true));
        assert!(http_needs_token(&Method::PUT, false));
    }
}
