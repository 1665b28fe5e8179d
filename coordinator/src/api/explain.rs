//! The plan as run (`autopipe explain --analyze JOB`, `/api/jobs/{id}/explain`): each
//! stage with its plan, planned against actual tasks, the decisions that re-planned it
//! (with their measured effect) and what each of its tasks read, its rows and bytes in
//! and out and its task time spread; then the job's other decisions. Built from the
//! wire view (a `JobStatus` and the job's `Decision`s), so the CLI and the HTTP API
//! show one JSON shape and one text form.

use super::json::decision_json;
use autopipe_common::util::fmt_bytes;
use autopipe_proto::{self as pb, ShortName};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::fmt::Write;

/// Task ranges the text form lists per re-planned stage before it counts the rest.
const MAX_TASK_READS_SHOWN: usize = 16;

/// The decisions that re-planned stage `s`, in its order (ids that left the log are
/// skipped).
fn replanned_by<'a>(s: &pb::StageStatus, ds: &'a [pb::Decision]) -> Vec<&'a pb::Decision> {
    s.replanned_by
        .iter()
        .filter_map(|id| ds.iter().find(|d| d.id == *id))
        .collect()
}

/// The job's decisions that re-planned none of its stages (speculation, retries, ...).
fn other_decisions<'a>(j: &pb::JobStatus, ds: &'a [pb::Decision]) -> Vec<&'a pb::Decision> {
    let replanning: BTreeSet<u64> = j
        .stages
        .iter()
        .flat_map(|s| s.replanned_by.iter().copied())
        .collect();
    ds.iter()
        .filter(|d| d.job_id == j.job_id && !replanning.contains(&d.id))
        .collect()
}

/// What one task of a re-planned stage reads: `[2,5)` (reducer partitions 2, 3 and 4
/// of every map task), or `[3,4) stage 0 maps [0,2)` (a skew split's piece).
pub fn task_reads_text(r: &pb::TaskReadsStatus) -> String {
    let mut s = format!("[{},{})", r.start, r.end);
    for m in &r.map_ranges {
        let _ = write!(s, " stage {} maps [{},{})", m.stage, m.from, m.to);
    }
    for v in &r.via {
        let _ = write!(s, " stage {} via pre-merge stage {}", v.input, v.stage);
    }
    s
}

/// JSON form of what one task of a re-planned stage reads.
pub fn task_reads_json(r: &pb::TaskReadsStatus) -> Value {
    json!({
        "start": r.start,
        "end": r.end,
        "map_ranges": r.map_ranges.iter().map(|m| json!({
            "stage": m.stage, "from": m.from, "to": m.to,
        })).collect::<Vec<_>>(),
        "via": r.via.iter().map(|v| json!({"input": v.input, "stage": v.stage})).collect::<Vec<_>>(),
    })
}

/// One line for a decision: `#3 coalesce: what; effect: ...`.
pub fn decision_line(d: &pb::Decision) -> String {
    let effect = if d.effect.is_empty() {
        "not measured yet"
    } else {
        d.effect.as_str()
    };
    format!(
        "#{} {}: {}; effect: {effect}",
        d.id,
        pb::DecisionKind::name_of(d.kind),
        d.what
    )
}

fn state_name(s: i32) -> String {
    pb::JobState::try_from(s)
        .map(|s| s.as_str_name().to_ascii_lowercase())
        .unwrap_or_else(|_| "unknown".into())
}

fn wall_time_s(j: &pb::JobStatus) -> f64 {
    if j.finished_at_ms > 0 {
        j.finished_at_ms.saturating_sub(j.submitted_at_ms) as f64 / 1000.0
    } else {
        0.0
    }
}

/// JSON form of the plan as run. `decisions` are the job's (others are ignored).
pub fn explain_json(j: &pb::JobStatus, decisions: &[pb::Decision]) -> Value {
    let stages: Vec<Value> = j
        .stages
        .iter()
        .map(|s| {
            let by: Vec<Value> = replanned_by(s, decisions)
                .into_iter()
                .map(decision_json)
                .collect();
            json!({
                "stage_id": s.stage_id,
                "kind": pb::StageKind::name_of(s.kind),
                "input_stages": s.input_stages,
                "plan": s.plan,
                "tasks_planned": s.tasks_planned,
                "tasks_actual": s.tasks_total,
                "tasks_done": s.tasks_done,
                "replanned": !s.replanned_by.is_empty(),
                "replanned_by": by,
                "task_reads": s.task_reads.iter().map(task_reads_json).collect::<Vec<_>>(),
                "rows_in": s.rows_in,
                "bytes_in": s.bytes_in,
                "rows_out": s.rows_out,
                "bytes_out": s.bytes_out,
                "task_ms": {
                    "min": s.task_ms_min,
                    "median": s.task_ms_median,
                    "max": s.task_ms_max,
                },
                "started_at_ms": s.started_at_ms,
                "finished_at_ms": s.finished_at_ms,
            })
        })
        .collect();
    json!({
        "job_id": j.job_id,
        "name": j.name,
        "state": state_name(j.state),
        "submitted_at_ms": j.submitted_at_ms,
        "finished_at_ms": j.finished_at_ms,
        "wall_time_s": wall_time_s(j),
        "rows_in": j.rows_in,
        "rows_out": j.rows_out,
        "replanned_stages": j.stages.iter()
            .filter(|s| !s.replanned_by.is_empty())
            .map(|s| s.stage_id)
            .collect::<Vec<_>>(),
        "stages": stages,
        "other_decisions": other_decisions(j, decisions)
            .into_iter()
            .map(decision_json)
            .collect::<Vec<_>>(),
    })
}

/// Text form of the plan as run.
pub fn explain_text(j: &pb::JobStatus, decisions: &[pb::Decision]) -> String {
    let mut out = String::new();
    let replanned = j
        .stages
        .iter()
        .filter(|s| !s.replanned_by.is_empty())
        .count();
    let _ = writeln!(
        out,
        "job {} ({}) {}: {} stage(s), {} re-planned; wall time {:.3}s",
        j.job_id,
        j.name,
        state_name(j.state),
        j.stages.len(),
        replanned,
        wall_time_s(j)
    );
    for s in &j.stages {
        let _ = writeln!(out);
        let reads = if s.input_stages.is_empty() {
            "reads sources".to_string()
        } else {
            let ids: Vec<String> = s.input_stages.iter().map(u32::to_string).collect();
            format!("reads stage(s) {}", ids.join(", "))
        };
        let tasks = if s.replanned_by.is_empty() {
            format!("{} tasks (as planned)", s.tasks_total)
        } else {
            format!(
                "{} tasks (planned {}): RE-PLANNED",
                s.tasks_total, s.tasks_planned
            )
        };
        let _ = writeln!(
            out,
            "stage {} {}, {reads}, {tasks}",
            s.stage_id,
            pb::StageKind::name_of(s.kind)
        );
        let _ = writeln!(
            out,
            "  in:    {} rows ({})   out: {} rows ({})",
            s.rows_in,
            fmt_bytes(s.bytes_in),
            s.rows_out,
            fmt_bytes(s.bytes_out)
        );
        if s.tasks_done > 0 {
            let _ = writeln!(
                out,
                "  tasks: {}/{} done, task time min/median/max {}/{}/{} ms",
                s.tasks_done, s.tasks_total, s.task_ms_min, s.task_ms_median, s.task_ms_max
            );
        } else {
            let _ = writeln!(out, "  tasks: 0/{} done", s.tasks_total);
        }
        let by = replanned_by(s, decisions);
        for d in &by {
            let _ = writeln!(
                out,
                "  re-planned by #{} {}: {}",
                d.id,
                pb::DecisionKind::name_of(d.kind),
                d.what
            );
            let _ = writeln!(out, "    why:    {}", d.why);
            let effect = if d.effect.is_empty() {
                "not measured yet"
            } else {
                &d.effect
            };
            let _ = writeln!(out, "    effect: {effect}");
        }
        if by.len() < s.replanned_by.len() {
            let _ = writeln!(
                out,
                "  ({} re-planning decision(s) left the log)",
                s.replanned_by.len() - by.len()
            );
        }
        if !s.task_reads.is_empty() {
            let shown: Vec<String> = s
                .task_reads
                .iter()
                .take(MAX_TASK_READS_SHOWN)
                .map(task_reads_text)
                .collect();
            let more = s.task_reads.len().saturating_sub(MAX_TASK_READS_SHOWN);
            let more = if more > 0 {
                format!(" … ({more} more)")
            } else {
                String::new()
            };
            let _ = writeln!(out, "  task reads (partitions): {}{more}", shown.join(" "));
        }
        let _ = writeln!(out, "  plan:");
        for line in s.plan.lines() {
            let _ = writeln!(out, "    {line}");
        }
    }
    let others = other_decisions(j, decisions);
    let _ = writeln!(out);
    if others.is_empty() {
        let _ = writeln!(out, "other decisions: none");
    } else {
        let _ = writeln!(out, "other decisions:");
        for d in others {
            let _ = writeln!(out, "  {}", decision_line(d));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(id: u64, kind: &str, effect: &str) -> pb::Decision {
        pb::Decision {
            id,
            at_ms: 1,
            job_id: "j1".into(),
            kind: pb::DecisionKind::from_short_name(kind).expect("a kind") as i32,
            what: format!("{kind} did something"),
            why: "a threshold".into(),
            inputs: Default::default(),
            effect: effect.into(),
        }
    }

    fn job() -> pb::JobStatus {
        pb::JobStatus {
            job_id: "j1".into(),
            name: "agg".into(),
            state: pb::JobState::Succeeded as i32,
            submitted_at_ms: 1_000,
            finished_at_ms: 3_500,
            stages: vec![
                pb::StageStatus {
                    stage_id: 0,
                    kind: pb::StageKind::Map as i32,
                    tasks_total: 4,
                    tasks_done: 4,
                    tasks_planned: 4,
                    rows_in: 100,
                    rows_out: 10,
                    plan: "AggregateExec\n  DataSourceExec".into(),
                    task_ms_min: 5,
                    task_ms_median: 7,
                    task_ms_max: 9,
                    ..Default::default()
                },
                pb::StageStatus {
                    stage_id: 1,
                    kind: pb::StageKind::Sink as i32,
                    tasks_total: 2,
                    tasks_done: 2,
                    tasks_planned: 10,
                    input_stages: vec![0],
                    replanned_by: vec![3],
                    task_reads: vec![
                        pb::TaskReadsStatus {
                            start: 0,
                            end: 6,
                            map_ranges: vec![],
                            via: vec![],
                        },
                        pb::TaskReadsStatus {
                            start: 6,
                            end: 7,
                            map_ranges: vec![pb::MapTaskRange {
                                stage: 0,
                                from: 0,
                                to: 2,
                            }],
                            via: vec![],
                        },
                    ],
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn a_replanned_stage_names_its_decisions_and_planned_against_actual_tasks() {
        let ds = vec![
            decision(3, "coalesce", "the stage ran 2 tasks (planned 10)"),
            decision(4, "speculation", ""),
        ];
        let v = explain_json(&job(), &ds);
        assert_eq!(v["replanned_stages"], json!([1]));
        let st = &v["stages"][1];
        assert_eq!(st["tasks_planned"], 10);
        assert_eq!(st["tasks_actual"], 2);
        assert_eq!(st["replanned"], true);
        assert_eq!(st["replanned_by"][0]["kind"], "coalesce");
        assert_eq!(st["task_reads"][1]["map_ranges"][0]["to"], 2);
        assert_eq!(v["stages"][0]["replanned"], false);
        assert_eq!(v["stages"][0]["task_ms"]["median"], 7);
        // the re-planning decision is the stage's, not among the others
        let others = v["other_decisions"].as_array().unwrap();
        assert_eq!(others.len(), 1);
        assert_eq!(others[0]["kind"], "speculation");
        assert_eq!(v["wall_time_s"], 2.5);
    }

    #[test]
    fn the_text_form_shows_the_replan_its_effect_and_the_plan() {
        let ds = vec![
            decision(3, "coalesce", "the stage ran 2 tasks (planned 10)"),
            decision(4, "speculation", ""),
        ];
        let t = explain_text(&job(), &ds);
        assert!(t.contains("1 re-planned"), "{t}");
        assert!(
            t.contains("stage 0 map, reads sources, 4 tasks (as planned)"),
            "{t}"
        );
        assert!(
            t.contains("stage 1 sink, reads stage(s) 0, 2 tasks (planned 10): RE-PLANNED"),
            "{t}"
        );
        assert!(
            t.contains("re-planned by #3 coalesce: coalesce did something"),
            "{t}"
        );
        assert!(
            t.contains("effect: the stage ran 2 tasks (planned 10)"),
            "{t}"
        );
        assert!(
            t.contains("task reads (partitions): [0,6) [6,7) stage 0 maps [0,2)"),
            "{t}"
        );
        assert!(t.contains("task time min/median/max 5/7/9 ms"), "{t}");
        assert!(t.contains("    AggregateExec\n      DataSourceExec"), "{t}");
        assert!(
            t.contains("  #4 speculation: speculation did something; effect: not measured yet"),
            "{t}"
        );
    }

    #[test]
    fn a_decision_that_left_the_log_is_counted_not_invented() {
        let t = explain_text(&job(), &[]);
        assert!(
            t.contains("(1 re-planning decision(s) left the log)"),
            "{t}"
        );
        assert!(t.contains("other decisions: none"), "{t}");
        let v = explain_json(&job(), &[]);
        assert_eq!(v["stages"][1]["replanned_by"], json!([]));
        assert_eq!(v["stages"][1]["replanned"], true);
    }

    #[test]
    fn decision_lines_carry_kind_what_and_effect() {
        assert_eq!(
            decision_line(&decision(7, "skew_split", "max/median 1.2")),
            "#7 skew_split: skew_split did something; effect: max/median 1.2"
        );
    }
}
