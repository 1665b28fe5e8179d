//! Builds the wire view (`JobStatus`, `WorkerInfo`) of the state, shared by gRPC and HTTP.

use crate::core::Core;
use crate::state::machine::WorkerRecord;
use crate::state::{Job, JobState, State, TaskState, WorkerState};
use autopipe_proto::{self as pb, ShortName};

/// Wire form of a job state.
pub fn job_state(s: JobState) -> pb::JobState {
    match s {
        JobState::Running => pb::JobState::Running,
        JobState::Committing => pb::JobState::Committing,
        JobState::Succeeded => pb::JobState::Succeeded,
        JobState::Failed => pb::JobState::Failed,
        JobState::Cancelled => pb::JobState::Cancelled,
    }
}

/// A job's state as clients see it: `QUEUED` while it runs but none of its tasks
/// has started yet (it waits for slots), else its state.
pub fn public_state(job: &Job) -> pb::JobState {
    let started = job
        .stages
        .iter()
        .any(|st| st.tasks.iter().any(|t| t.attempts > 0));
    match job.state {
        JobState::Running if !started => pb::JobState::Queued,
        s => job_state(s),
    }
}

/// The status of one job.
pub fn job_status(job: &Job) -> pb::JobStatus {
    let mut stages = Vec::new();
    let (mut rows_in, mut tasks_total, mut tasks_done, mut attempts) = (0, 0, 0, 0);
    let last = job.stages.len().saturating_sub(1);
    let mut rows_out = 0;
    let (mut bytes_in, mut bytes_out) = (0, 0);
    // (rows, bytes) each stage wrote, for the stages that read it
    let mut outputs: Vec<(u64, u64)> = Vec::with_capacity(job.stages.len());
    for (i, st) in job.stages.iter().enumerate() {
        let (mut r_out, mut b_out, mut r_src, mut b_src) = (0, 0, 0, 0);
        let (mut started, mut finished) = (u64::MAX, 0);
        let mut times = vec![];
        for t in &st.tasks {
            attempts += t.attempts;
            match &t.state {
                TaskState::Succeeded {
                    result,
                    started_ms,
                    finished_ms,
                    ..
                } => {
                    r_src += result.rows_in;
                    b_src += result.bytes_in;
                    r_out += result.rows_out;
                    b_out += result.bytes_out;
                    started = started.min(*started_ms);
                    finished = finished.max(*finished_ms);
                    times.push(result.duration_ms);
                }
                TaskState::Running { started_ms, .. } => started = started.min(*started_ms),
                TaskState::Pending => {}
            }
        }
        times.sort_unstable();
        rows_in += r_src;
        bytes_in += b_src;
        outputs.push((r_out, b_out));
        // an input stage comes before the stage that reads it
        let (r_read, b_read) = st
            .plan
            .inputs
            .iter()
            .filter_map(|&s| outputs.get(s as usize))
            .fold((0, 0), |(r, b), &(ro, bo)| (r + ro, b + bo));
        let finished = if st.is_complete() { finished } else { 0 };
        if i == last {
            rows_out = r_out;
            bytes_out = b_out;
        }
        tasks_total += st.tasks.len() as u32;
        tasks_done += st.done() as u32;
        stages.push(pb::StageStatus {
            stage_id: st.plan.id,
            kind: if st.plan.shuffle_partitions.is_some() {
                pb::StageKind::Map
            } else {
                pb::StageKind::Sink
            } as i32,
            tasks_total: st.tasks.len() as u32,
            tasks_done: st.done() as u32,
            tasks_running: st.running() as u32,
            rows_out: r_out,
            bytes_out: b_out,
            input_stages: st.plan.inputs.clone(),
            plan: st.plan.display.clone(),
            started_at_ms: if started == u64::MAX { 0 } else { started },
            finished_at_ms: finished,
            task_ms_max: times.last().copied().unwrap_or(0),
            tasks_planned: st.plan.tasks,
            replanned_by: st.replanned.clone(),
            rows_in: r_src + r_read,
            bytes_in: b_src + b_read,
            task_ms_min: times.first().copied().unwrap_or(0),
            // the upper median, as the re-plan's measured effect reports it
            task_ms_median: times.get(times.len() / 2).copied().unwrap_or(0),
            task_reads: if st.replanned.is_empty() {
                vec![]
            } else {
                st.tasks.iter().map(task_reads).collect()
            },
        });
    }
    let waiting = job
        .waiting
        .as_ref()
        .filter(|_| job.state == JobState::Running);
    let mut out = pb::JobStatus {
        job_id: job.id.clone(),
        request_id: job.request_id.clone(),
        name: job.spec.job.name.clone(),
        state: public_state(job) as i32,
        stages,
        rows_in,
        rows_out,
        submitted_at_ms: job.submitted_ms,
        finished_at_ms: job.finished_ms,
        output_path: match job.spec.sink.format {
            autopipe_common::spec::Format::Kafka => format!(
                "kafka://{}/{}",
                job.spec.sink.brokers.as_deref().unwrap_or_default(),
                job.spec.sink.topic.as_deref().unwrap_or_default()
            ),
            _ => job.spec.sink.path.clone(),
        },
        error: job.error.as_ref().map(|e| pb::ErrorDetail {
            error_class: match e.class.as_str() {
                "transient" => pb::ErrorClass::Transient,
                "data" => pb::ErrorClass::Data,
                _ => pb::ErrorClass::Permanent,
            } as i32,
            message: e.message.clone(),
            key: e.key.clone(),
            fetch_failed: None,
            out_of_memory: false,
        }),
        tasks_total,
        tasks_done,
        task_attempts: attempts,
        files_out: job.committed_files.len() as u64,
        bytes_in,
        bytes_out,
        bad_records: job.record_counts().1,
        dead_letter_path: job.dead_letter_dir(),
        waiting_reason: waiting.map(|w| w.reason.clone()).unwrap_or_default(),
        waiting_since_ms: waiting.map(|w| w.since_ms).unwrap_or(0),
        workers: vec![],
        stream: None,
    };
    if let Some(st) = &job.stream {
        out.rows_in = st.records;
        out.rows_out = st.rows_out;
        out.bytes_out = st.bytes_out;
        out.bad_records = st.bad_records;
        out.files_out = st.files;
        out.stream = Some(stream_status(job, st));
    }
    out
}

/// A streaming job's progress: per partition its task, committed offset and lag.
fn stream_status(job: &crate::state::Job, st: &crate::state::Stream) -> pb::StreamStatus {
    let task_of = |p: i32| {
        st.assignment
            .iter()
            .position(|ps| ps.contains(&p))
            .unwrap_or(0) as u32
    };
    pb::StreamStatus {
        topic: st.topic.clone(),
        partitions: st
            .partitions
            .iter()
            .map(|(&p, x)| pb::KafkaPartitionStatus {
                partition: p,
                task: task_of(p),
                offset: x.offset.unwrap_or(-1),
                high_watermark: x.high_watermark.unwrap_or(-1),
                lag: x.lag().unwrap_or(-1),
                records: x.records,
                input_records_per_s: x.input_rate,
            })
            .collect(),
        batches: st.batches,
        pending_batches: st.pending.len() as u64,
        records: st.records,
        rows_out: st.rows_out,
        bad_records: st.bad_records,
        lag: st.total_lag(),
        input_records_per_s: st.input_rate(),
        watermark_ms: autopipe_common::stream_state::StateParams::of(&job.spec.job.params)
            .and_then(|_| job.stream_watermark(autopipe_common::util::now_ms())),
        windows_emitted_until_ms: st.emitted_until,
        duplicates: st.duplicates,
        late_records: st.late_records,
        tasks: st
            .assignment
            .iter()
            .enumerate()
            .filter(|(_, ps)| !ps.is_empty())
            .map(|(i, ps)| {
                let w = st.work.get(i).cloned().unwrap_or_default();
                pb::ConsumerTaskStatus {
                    task: i as u32,
                    partitions: ps.clone(),
                    batches: w.batches,
                    records: w.records,
                    records_per_s: w.rate().unwrap_or(0.0),
                }
            })
            .collect(),
    }
}

/// What a task of a re-planned stage reads (its own partition when it has no `reads`).
fn task_reads(t: &crate::state::machine::Task) -> pb::TaskReadsStatus {
    match &t.reads {
        Some(r) => pb::TaskReadsStatus {
            start: r.start,
            end: r.end,
            map_ranges: r
                .map_ranges
                .iter()
                .map(|&(stage, from, to)| pb::MapTaskRange { stage, from, to })
                .collect(),
            via: r
                .via
                .iter()
                .map(|&(input, stage)| pb::ReadVia { input, stage })
                .collect(),
        },
        None => pb::TaskReadsStatus::default(),
    }
}

/// Every worker with its latest heartbeat.
pub fn workers(core: &Core, s: &State) -> Vec<pb::WorkerInfo> {
    let live = core
        .liveness
        .lock()
        .expect("liveness lock poisoned")
        .clone();
    let running = s.running_per_worker();
    s.workers
        .values()
        .map(|w| {
            let l = live.get(&w.id);
            // an attempt asked to stop holds its slot until the worker stops listing it
            let stopping = l.map(|l| l.stopping.len() as u32).unwrap_or(0);
            let busy = running.get(w.id.as_str()).copied().unwrap_or(0) + stopping;
            pb::WorkerInfo {
                worker_id: w.id.clone(),
                address: w.address.clone(),
                slots: w.slots,
                free_slots: w.slots.saturating_sub(busy),
                state: worker_state(w.state, l.is_some_and(|l| l.draining)) as i32,
                last_heartbeat_ms: l.map(|l| l.last_ms).unwrap_or(0),
                cpu_percent: l.map(|l| l.cpu_percent).unwrap_or(0.0),
                memory_used_bytes: l.map(|l| l.memory_used_bytes).unwrap_or(0),
                running_tasks: busy,
                http_address: w.http_address.clone(),
                load: load(w),
            }
        })
        .collect()
}

/// A worker's load as the replicated state recorded it, and whether placement
/// avoids it now.
fn load(w: &WorkerRecord) -> Option<pb::WorkerLoad> {
    w.load
        .as_ref()
        .map(|l| l.to_proto(crate::optimizer::placement::hot(l).unwrap_or_default()))
}

/// The API's state of a worker: an alive one that drains is `draining`.
fn worker_state(s: WorkerState, draining: bool) -> pb::WorkerState {
    match s {
        WorkerState::Alive if draining => pb::WorkerState::Draining,
        WorkerState::Alive => pb::WorkerState::Alive,
        WorkerState::Lost => pb::WorkerState::Lost,
        WorkerState::Released => pb::WorkerState::Released,
    }
}

/// The API's kind of a decision (the two lists are the same, name for name).
pub fn decision_kind(k: crate::state::DecisionKind) -> pb::DecisionKind {
    pb::DecisionKind::from_short_name(k.name()).unwrap_or_default()
}

/// The status of one job with the workers it runs on (`JobStatus.workers`): every
/// alive worker and every other that ran a task of it, with its recorded load.
pub fn job_status_with_workers(s: &State, job: &Job) -> pb::JobStatus {
    let mut st = job_status(job);
    let mut per_worker: std::collections::BTreeMap<&str, (u32, u32)> = s
        .workers
        .values()
        .filter(|w| w.state == WorkerState::Alive)
        .map(|w| (w.id.as_str(), (0, 0)))
        .collect();
    for stage in &job.stages {
        for t in &stage.tasks {
            if let TaskState::Succeeded { worker_id, .. } = &t.state {
                per_worker.entry(worker_id).or_default().0 += 1;
            }
            for (_, worker_id, _) in t.running_attempts() {
                per_worker.entry(worker_id).or_default().1 += 1;
            }
        }
    }
    st.workers = per_worker
        .into_iter()
        .map(|(id, (done, running))| {
            let w = s.workers.get(id);
            pb::JobWorker {
                worker_id: id.to_string(),
                state: w.map_or(pb::WorkerState::Forgotten, |w| worker_state(w.state, false))
                    as i32,
                tasks_done: done,
                tasks_running: running,
                load: w.and_then(load),
            }
        })
        .collect();
    st
}

/// The decision log (oldest first), optionally one job's.
pub fn decisions(s: &State, job_id: &str) -> Vec<pb::Decision> {
    s.decisions
        .iter()
        .filter(|d| job_id.is_empty() || d.job_id == job_id)
        .map(|d| pb::Decision {
            id: d.id,
            at_ms: d.at_ms,
            job_id: d.job_id.clone(),
            kind: decision_kind(d.kind) as i32,
            what: d.what.clone(),
            why: d.why.clone(),
            inputs: d.inputs.clone().into_iter().collect(),
            effect: d.effect.clone().unwrap_or_default(),
        })
        .collect()
}

/// Jobs per `ListJobs` page when the request names no size.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// The largest `ListJobs` page.
pub const MAX_PAGE_SIZE: usize = 1000;

/// One page of jobs in submission order: up to `page_size` (0: `DEFAULT_PAGE_SIZE`, at
/// most `MAX_PAGE_SIZE`) jobs submitted after the job `token` names (empty: from the
/// first), and the next page's token (`None`: this page is the last). The token is the
/// last listed job's submission number, so the jobs that retention forgets between two
/// pages shift nothing. (Jobs from before jobs were numbered all have number 0: they
/// are listed only from the first page on.)
pub fn job_page<'a>(
    s: &'a State,
    page_size: usize,
    token: &str,
) -> Result<(Vec<&'a Job>, Option<String>), String> {
    job_page_where(s, page_size, token, |_| true)
}

/// `job_page` over the jobs `keep` accepts (a page holds `page_size` of those).
pub fn job_page_where<'a>(
    s: &'a State,
    page_size: usize,
    token: &str,
    keep: impl Fn(&Job) -> bool,
) -> Result<(Vec<&'a Job>, Option<String>), String> {
    let after: u64 = match token {
        "" => 0,
        t => t.parse().map_err(|_| {
            format!("page token '{t}' was not given out by `ListJobs`; list again without it")
        })?,
    };
    let size = match page_size {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    };
    let seq = |id: &String| s.jobs.get(id).map_or(0, |j| j.seq);
    // `job_order` is in submission order, so numbers only grow along it
    let start = if token.is_empty() {
        0
    } else {
        s.job_order.partition_point(|id| seq(id) <= after)
    };
    let mut rest = s.job_order[start..]
        .iter()
        .filter_map(|id| s.jobs.get(id))
        .filter(|j| keep(j));
    let jobs: Vec<&Job> = rest.by_ref().take(size).collect();
    let next = rest
        .next()
        .and_then(|_| jobs.last().map(|j| j.seq.to_string()));
    Ok((jobs, next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Command;

    fn state_with_jobs(n: usize) -> State {
        let mut s = State::default();
        let Command::SubmitJob { spec, stages, .. } = crate::state::test_job(1) else {
            unreachable!()
        };
        for i in 0..n {
            s.apply(&Command::SubmitJob {
                job_id: format!("j{i}"),
                spec: spec.clone(),
                stages: stages.clone(),
                at_ms: i as u64,
                request_id: String::new(),
                request_hash: 0,
                stream: None,
                sink_schema: None,
                compaction: None,
            })
            .unwrap();
        }
        s
    }

    fn ids(jobs: &[&Job]) -> Vec<String> {
        jobs.iter().map(|j| j.id.clone()).collect()
    }

    #[test]
    fn pages_list_every_job_once_in_submission_order() {
        let s = state_with_jobs(5);
        let (p1, t1) = job_page(&s, 2, "").unwrap();
        assert_eq!(ids(&p1), ["j0", "j1"]);
        let (p2, t2) = job_page(&s, 2, &t1.unwrap()).unwrap();
        assert_eq!(ids(&p2), ["j2", "j3"]);
        let (p3, t3) = job_page(&s, 2, &t2.unwrap()).unwrap();
        assert_eq!((ids(&p3), t3), (vec!["j4".to_string()], None));
        // the default size takes all five; an exact fit has no next page
        assert_eq!(job_page(&s, 0, "").unwrap().0.len(), 5);
        assert_eq!(job_page(&s, 5, "").unwrap().1, None);
        assert!(job_page(&s, 2, "not-a-token").is_err());
    }

    #[test]
    fn jobs_forgotten_between_pages_shift_nothing() {
        let mut s = state_with_jobs(6);
        let (_, t1) = job_page(&s, 2, "").unwrap();
        for id in ["j0", "j1", "j3"] {
            s.apply(&Command::CancelJob {
                job_id: id.into(),
                at_ms: 9,
            })
            .unwrap();
        }
        s.apply(&Command::ForgetJobs {
            job_ids: vec!["j0".into(), "j1".into(), "j3".into()],
            at_ms: 10,
        })
        .unwrap();
        let (p2, t2) = job_page(&s, 2, &t1.unwrap()).unwrap();
        assert_eq!(ids(&p2), ["j2", "j4"]);
        let (p3, t3) = job_page(&s, 2, &t2.unwrap()).unwrap();
        assert_eq!((ids(&p3), t3), (vec!["j5".to_string()], None));
    }
}
