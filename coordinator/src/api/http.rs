//! HTTP admin API: `/metrics` (Prometheus text), `/api/jobs[?limit=N&after=TOKEN]`,
//! `/api/jobs/{id}`, `/api/jobs/{id}/explain` (the plan as run),
//! `/api/workers`, `/api/cluster`,
//! `/api/decisions[?job=ID]` (JSON), and `/` — a minimal dashboard that polls the JSON API.
//!
//! Every route only reads. With a cluster token, a request that could change something
//! (any method but GET and HEAD) needs `Authorization: Bearer <token>`, and so does every
//! request when `--http-open-reads=false` (the guard `router` adds).

use super::json::{decision_json, job_json, worker_json};
use super::status::{
    decisions, job_page_where, job_status, job_status_with_workers, public_state, workers,
};
use crate::core::Core;
use autopipe_common::auth::ServerAuth;
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
