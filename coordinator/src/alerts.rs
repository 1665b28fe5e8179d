//! Critical events, raised by the leader's loops (never by the state machine): a job
//! failed, a worker was lost, a job's bad-record ratio was exceeded, the retry budget
//! ran out, a job stalled. Each is a structured log event (target `alert`), a
//! Prometheus counter (`autopipe_alerts_total{kind}`) and, when `--alert-webhook` is
//! set, a JSON POST to that URL (best effort, 5 s deadline, not retried, so a sick
//! receiver cannot slow the scheduler).

use crate::core::Core;
use autopipe_common::util::now_ms;
use std::time::Duration;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertKind {
    /// a job ended failed (its error is in the message)
    JobFailed,
    /// a worker missed its heartbeats and was declared lost
    WorkerLost,
    /// a job's share of bad source records exceeded its max_bad_record_ratio
    BadRecordRatio,
    /// the coordinator's retry budget ran out: failures are no longer retried at once
    RetryBudgetExhausted,
    /// a job has waited longer than its stall_alert_ms with no alive worker or no
    /// free task slot
    JobStalled,
}

impl AlertKind {
    /// snake_case name (label value and JSON `kind`)
    pub fn as_str(&self) -> &'static str {
        match self {
            AlertKind::JobFailed => "job_failed",
            AlertKind::WorkerLost => "worker_lost",
            AlertKind::BadRecordRatio => "bad_record_ratio_exceeded",
            AlertKind::RetryBudgetExhausted => "retry_budget_exhausted",
            AlertKind::JobStalled => "job_stalled",
        }
    }
}

/// Raises an alert about `subject` (a job or worker id).
pub fn raise(core: &Core, kind: AlertKind, subject: &str, message: &str) {
    tracing::error!(target: "alert", kind = kind.as_str(), subject, "{message}");
    core.metrics.alert(kind.as_str());
    let Some(url) = core.config.alert_webhook.clone() else {
        return;
    };
    let body = serde_json::json!({
        "kind": kind.as_str(),
        "subject": subject,
        "message": message,
        "at_ms": now_ms(),
        "coordinator": core.raft.id(),
    });
    tokio::spawn(async move {
        let r = reqwest::Client::new()
            .post(&url)
            .header("content-type", "application/json")
            .timeout(Duration::from_secs(5))
            .body(body.to_string())
            .send()
            .await
            .and_then(|r| r.error_for_status());
        if let Err(e) = r {
            tracing::warn!(%url, "alert webhook failed: {e}");
        }
    });
}

/// Raises `RetryBudgetExhausted` for `subject` (a worker id, or "coordinator") that
/// refused `refused` more retries, at most once a minute per subject.
pub fn retry_budget_exhausted(core: &Core, subject: &str, refused: u64) {
    static LAST: std::sync::Mutex<Vec<(String, std::time::Instant)>> =
        std::sync::Mutex::new(Vec::new());
    {
        let mut last = LAST.lock().expect("alert lock");
        if let Some((_, at)) = last.iter_mut().find(|(s, _)| s == subject) {
            if at.elapsed() < Duration::from_secs(60) {
                return;
            }
            *at = std::time::Instant::now();
        } else {
            last.push((subject.to_string(), std::time::Instant::now()));
        }
    }
    raise(
        core,
        AlertKind::RetryBudgetExhausted,
        subject,
        &format!(
            "the retry budget of {subject} is exhausted: {refused} more retries were refused (failures wait longer or fail instead of being retried at once)"
        ),
    );
}
