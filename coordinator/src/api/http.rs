//! HTTP admin API: `/metrics` (Prometheus text), `/api/jobs`, `/api/jobs/{id}`,
//! `/api/workers`, `/api/cluster`,
//! `/api/decisions[?job=ID]` (JSON), and `/` — a minimal dashboard that polls the JSON API.

use super::status::{decisions, job_status, workers};
use crate::core::Core;
use autopipe_proto as pb;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;

/// The admin router.
pub fn router(core: Arc<Core>) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/metrics", get(metrics))
        .route("/api/jobs", get(jobs))
        .route("/api/jobs/{id}", get(job))
        .route("/api/workers", get(list_workers))
        .route("/api/cluster", get(cluster))
        .route("/api/decisions", get(list_decisions))
        .with_state(core)
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
        "finished_at_ms": j.finished_at_ms,
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
        "stages": j.stages.iter().map(|s| json!({
            "stage_id": s.stage_id,
            "kind": s.kind,
            "tasks_total": s.tasks_total,
            "tasks_done": s.tasks_done,
            "tasks_running": s.tasks_running,
            "rows_out": s.rows_out,
            "bytes_out": s.bytes_out,
            "input_stages": s.input_stages,
            "started_at_ms": s.started_at_ms,
            "finished_at_ms": s.finished_at_ms,
            "task_ms_max": s.task_ms_max,
            "plan": s.plan,
        })).collect::<Vec<_>>(),
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
    })
}

async fn jobs(State(core): State<Arc<Core>>) -> Json<Value> {
    let v: Vec<Value> = core.read(|s| {
        s.job_order
            .iter()
            .filter_map(|id| s.jobs.get(id))
            .map(|j| job_json(&job_status(j)))
            .collect()
    });
    Json(Value::Array(v))
}

async fn job(State(core): State<Arc<Core>>, Path(id): Path<String>) -> Response {
    match core.read(|s| s.jobs.get(&id).map(job_status)) {
        Some(j) => Json(job_json(&j)).into_response(),
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
pub fn decision_json(d: &pb::Decision) -> Value {
    json!({
        "id": d.id,
        "at_ms": d.at_ms,
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
