//! The JSON view of each API message: one shape, shared by the HTTP admin API
//! (`/api/...`) and the CLI's `-o json`, with enums as their lower-case short names
//! (`succeeded`, `draining`, `skew_split`) and every `*_at_ms` time also as an RFC 3339
//! `*_at`.

use autopipe_proto::{self as pb, ShortName};
use serde_json::{json, Value};

/// JSON form of a job status.
pub fn job_json(j: &pb::JobStatus) -> Value {
    let wall_time_s = if j.finished_at_ms > 0 {
        j.finished_at_ms.saturating_sub(j.submitted_at_ms) as f64 / 1000.0
    } else {
        0.0
    };
    json!({
        "job_id": j.job_id,
        "request_id": j.request_id,
        "name": j.name,
        "state": pb::JobState::name_of(j.state),
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
        "wall_time_s": wall_time_s,
        "output_path": j.output_path,
        "bad_records": j.bad_records,
        "dead_letter_path": j.dead_letter_path,
        "waiting": (!j.waiting_reason.is_empty()).then(|| json!({
            "reason": j.waiting_reason, "since_ms": j.waiting_since_ms})),
        "error": j.error.as_ref().map(|e| json!({
            "class": pb::ErrorClass::name_of(e.error_class),
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

/// JSON form of a stage status (a job's `stages`).
/// `tasks_planned` differs from `tasks_total` when the decisions `replanned_by`
/// re-planned the stage; `task_reads` then says what each task read.
pub fn stage_json(s: &pb::StageStatus) -> Value {
    json!({
        "stage_id": s.stage_id,
        "kind": pb::StageKind::name_of(s.kind),
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
                "state": pb::WorkerState::name_of(w.state),
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
        "state": pb::WorkerState::name_of(w.state),
        "slots": w.slots,
        "free_slots": w.free_slots,
        "running_tasks": w.running_tasks,
        "cpu_percent": w.cpu_percent,
        "memory_used_bytes": w.memory_used_bytes,
        "last_heartbeat_ms": w.last_heartbeat_ms,
        "load": w.load.as_ref().map(load_json),
    })
}

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
        "kind": pb::DecisionKind::name_of(d.kind),
        "what": d.what,
        "why": d.why,
        "inputs": d.inputs.iter().collect::<std::collections::BTreeMap<_, _>>(),
        "effect": d.effect,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::DecisionKind;

    #[test]
    fn every_decision_kind_has_its_api_enum_value_of_the_same_name() {
        for k in DecisionKind::ALL {
            let api = super::super::status::decision_kind(k);
            assert_ne!(api, pb::DecisionKind::Unspecified, "{}", k.name());
            assert_eq!(api.short_name(), k.name());
        }
    }
}
