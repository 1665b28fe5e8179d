//! Streaming jobs on the leader (issue 13): a consumer task's micro-batch commit
//! (`WorkerService::CommitBatch`): its offsets and staged files in one command, then
//! its files published in the sink; and the publishing of batches a leader committed
//! but did not publish before it crashed or was deposed; and the consumer scaling
//! rule's proposals (`rescale`).

use super::{commit, job_staging_root, leads_in, staging_prefix};
use crate::alerts::{self, AlertKind};
use crate::core::{Core, StoreError};
use crate::optimizer::kafka_scaling;
use crate::state::{ApplyError, BatchOffsets, Command, Job, PendingBatch, Stream, WindowEmit};
use autopipe_common::error::{Error, Result};
use autopipe_common::util::now_ms;
use autopipe_proto as pb;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// Why a commit was not recorded.
#[derive(Debug)]
pub enum CommitRefused {
    /// the request is malformed (a file outside the attempt's staging)
    Invalid(String),
    /// the attempt lost its partitions, or the job ended: it must stop
    Fenced(String),
    /// the batch was worked out from a state that moved on (windows emitted since):
    /// the task runs again from the committed state
    Stale(String),
    /// the proposal failed (not the leader, no quorum): try again
    Store(StoreError),
}

/// Records a consumer task's micro-batch (`Command::StreamCommit`), then publishes
/// its files. Answers once the commit is applied: a publish that fails is retried by
/// the leader loop (`publish_pending`).
pub async fn commit_batch(
    core: &Arc<Core>,
    req: &pb::CommitBatchRequest,
) -> std::result::Result<(), CommitRefused> {
    let key = req
        .key
        .as_ref()
        .ok_or_else(|| CommitRefused::Invalid("a commit without a task key".into()))?;
    // the file moves are worked out on the state in place: no copy of the job per batch
    let moves = core
        .read(|s| {
            let job = s.jobs.get(&key.job_id)?;
            Some(match job.stream {
                None => Err(format!("job {} is not a streaming job", key.job_id)),
                Some(_) => batch_moves(job, key, req),
            })
        })
        .ok_or_else(|| CommitRefused::Fenced(format!("job {} does not exist", key.job_id)))?
        .map_err(CommitRefused::Invalid)?;
    // the checkpoints a commit replaces are deleted once no task can still read them
    let replaced: Vec<String> = core.read(|s| {
        s.jobs
            .get(&key.job_id)
            .and_then(|j| j.stream.as_ref())
            .map(|st| replaced_checkpoints(st, &req.partitions))
            .unwrap_or_default()
    });
    let opt = |v: i64| (v >= 0).then_some(v);
    let cmd = Command::StreamCommit {
        job_id: key.job_id.clone(),
        task: key.task,
        attempt: key.attempt,
        batch: req.batch,
        offsets: req
            .partitions
            .iter()
            .map(|p| BatchOffsets {
                partition: p.partition,
                from: opt(p.from_offset),
                to: p.to_offset,
                high_watermark: opt(p.high_watermark),
                max_event_ms: p.max_event_ms,
                state_url: (!p.state_url.is_empty()).then(|| p.state_url.clone()),
                min_open_end: p.min_open_end,
            })
            .collect(),
        moves,
        records: req.records,
        rows_out: req.rows_out,
        bytes_out: req.bytes_out,
        bad_records: req.bad_records,
        busy_ms: req.duration_ms,
        at_ms: now_ms(),
        emitted: req.emitted.map(|e| WindowEmit {
            after: e.after,
            until: e.until,
        }),
        duplicates: req.duplicates,
        late_records: req.late_records,
    };
    match core.propose(cmd).await {
        Ok(_) => {}
        Err(StoreError::Rejected(ApplyError::Stale(why))) => return Err(CommitRefused::Stale(why)),
        Err(StoreError::Rejected(why)) => return Err(CommitRefused::Fenced(why.to_string())),
        Err(e) => return Err(CommitRefused::Store(e)),
    }
    retire_checkpoints(replaced);
    let m = &core.metrics;
    m.rows_read.inc_by(req.records);
    m.rows_written.inc_by(req.rows_out);
    m.bytes_written.inc_by(req.bytes_out);
    m.bad_records.inc_by(req.bad_records);
    match publish(core, &key.job_id).await {
        // produce time to visible in the sink, for the batch's oldest record
        Ok(()) if req.oldest_record_ms >= 0 => {
            let ms = (now_ms() as i64 - req.oldest_record_ms).max(0);
            m.kafka_end_to_end.observe(ms as f64 / 1000.0);
        }
        Ok(()) => {}
        Err(e) => {
            tracing::warn!(job = %key.job_id, "committed batch not published yet (retried): {e}")
        }
    }
    // past max_bad_record_ratio the job fails (its dead letters are published)
    let over = core.read(|s| s.jobs.get(&key.job_id).map(commit::check_bad_records));
    if let Some(Err(e)) = over {
        alerts::raise(core, AlertKind::BadRecordRatio, &key.job_id, &e.to_string());
        let cmd = Command::JobFailed {
            job_id: key.job_id.clone(),
            error: super::error_record(&e),
            at_ms: now_ms(),
        };
        if let Err(e) = core.propose(cmd).await {
            tracing::warn!(job = %key.job_id, "bad-record failure not recorded: {e}");
        }
    }
    Ok(())
}

/// (staged URL, final URL) of a batch's files: output files keep their directories
/// (hive partitions) under the sink with `t{task}-a{attempt}-b{batch}-` before their
/// name; the dead letters go to the job's dead-letter directory. A file outside the
/// attempt's staging is refused.
fn batch_moves(
    job: &Job,
    key: &pb::TaskKey,
    req: &pb::CommitBatchRequest,
) -> std::result::Result<Vec<(String, String)>, String> {
    let (task, attempt, batch) = (key.task, key.attempt, req.batch);
    let staging = staging_prefix(job, task as usize, attempt);
    let tag = format!("t{task}-a{attempt}-b{batch}");
    let mut moves = vec![];
    for rel in &req.files {
        let inner = rel
            .strip_prefix(&format!("b{batch}/"))
            .filter(|r| !r.is_empty() && !r.split('/').any(|p| p.is_empty() || p == ".."))
            .ok_or_else(|| format!("file '{rel}' is not in batch {batch}'s staging"))?;
        let (dir, name) = match inner.rsplit_once('/') {
            Some((d, n)) => (format!("{d}/"), n),
            None => (String::new(), inner),
        };
        moves.push((
            format!("{staging}{rel}"),
            format!("{}{dir}{tag}-{name}", job.spec.sink.path),
        ));
    }
    if !req.dead_letter_file.is_empty() {
        let dead_staging = format!("{}dead-letter/t{task}-a{attempt}/", job_staging_root(job));
        let ok = req
            .dead_letter_file
            .strip_prefix(&dead_staging)
            .is_some_and(|r| !r.contains(".."));
        if !ok {
            return Err(format!(
                "dead-letter file '{}' is not in the attempt's staging",
                req.dead_letter_file
            ));
        }
        moves.push((
            req.dead_letter_file.clone(),
            format!("{}{tag}.ndjson", job.dead_letter_dir()),
        ));
    }
    Ok(moves)
}

/// Publishes the job's committed batches still staged, and records it.
pub async fn publish(core: &Arc<Core>, job_id: &str) -> Result<()> {
    let pending: Vec<PendingBatch> = core.read(|s| {
        s.jobs
            .get(job_id)
            .and_then(|j| j.stream.as_ref())
            .map(|st| st.pending.clone())
            .unwrap_or_default()
    });
    if pending.is_empty() {
        return Ok(());
    }
    let term = core.raft.status().term;
    let fence = || leads_in(core, term);
    commit::publish_batches(&pending, &fence).await?;
    core.propose(Command::StreamPublished {
        job_id: job_id.to_string(),
        batches: pending
            .iter()
            .map(|b| (b.task, b.attempt, b.batch))
            .collect(),
    })
    .await
    .map_err(|e| Error::Transient(format!("publish of job {job_id} not recorded: {e}")))?;
    Ok(())
}

/// Publishes, in the background, every job's committed batches still staged (after a
/// leader change, or a publish that failed); `busy`: jobs being published here.
pub fn publish_pending(core: &Arc<Core>, busy: &Arc<Mutex<HashSet<String>>>) {
    let jobs: Vec<String> = core.read(|s| {
        s.jobs
            .values()
            .filter(|j| j.stream.as_ref().is_some_and(|st| !st.pending.is_empty()))
            .map(|j| j.id.clone())
            .collect()
    });
    for job_id in jobs {
        if !busy.lock().expect("lock").insert(job_id.clone()) {
            continue;
        }
        let (core, busy) = (core.clone(), busy.clone());
        tokio::spawn(async move {
            if let Err(e) = publish(&core, &job_id).await {
                tracing::warn!(job = %job_id, "cannot publish committed batches now: {e}");
            }
            busy.lock().expect("lock").remove(&job_id);
        });
    }
}

/// Asks the consumer scaling rule (`optimizer::kafka_scaling`) what every streaming
/// job needs, and proposes it: partitions dealt anew (the decision recorded with
/// them), and the measured effects of earlier decisions.
pub async fn rescale(core: &Arc<Core>, mem: &mut kafka_scaling::Memory) {
    let proposals = core.read(|s| kafka_scaling::decide(s, now_ms(), mem));
    for p in proposals {
        let cmd = match p {
            kafka_scaling::Proposal::Rescale {
                job_id,
                assignment,
                decision,
            } => {
                tracing::info!(job = %job_id, kind = decision.kind.name(), what = %decision.what, why = %decision.why, "consumer tasks rescaled");
                Command::StreamRescale {
                    job_id,
                    assignment,
                    at_ms: decision.at_ms,
                    decision,
                }
            }
            kafka_scaling::Proposal::Effect {
                decision_id,
                effect,
            } => Command::DecisionEffect {
                decision_id,
                effect,
            },
        };
        if let Err(e) = core.propose(cmd).await {
            tracing::warn!("consumer scaling not recorded: {e}");
            return;
        }
    }
}

/// The committed checkpoints a commit of `partitions` replaces. A retried commit
/// names the checkpoints already committed: those stay.
fn replaced_checkpoints(st: &Stream, partitions: &[pb::PartitionProgress]) -> Vec<String> {
    partitions
        .iter()
        .filter(|p| !p.state_url.is_empty())
        .filter_map(|p| {
            let old = st.partitions.get(&p.partition)?.state_url.clone()?;
            (old != p.state_url).then_some(old)
        })
        .collect()
}

/// How long a replaced state checkpoint stays readable: the emitting task may still
/// read it from the view its last commit returned.
const CHECKPOINT_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// Deletes replaced state checkpoints after `CHECKPOINT_GRACE` (one the leader
/// forgets in a crash stays until the job's staging is cleaned up).
fn retire_checkpoints(urls: Vec<String>) {
    if urls.is_empty() {
        return;
    }
    tokio::spawn(async move {
        tokio::time::sleep(CHECKPOINT_GRACE).await;
        for url in urls {
            if let Err(e) = autopipe_common::store::delete_url(&url).await {
                tracing::debug!(%url, "replaced state checkpoint not deleted: {e}");
            }
        }
    });
}

/// What a stateful job's emitting task needs after a commit: the job's watermark,
/// where windows were emitted until, and each partition's committed checkpoint.
pub fn view(job: &Job, st: &Stream) -> pb::StreamView {
    pb::StreamView {
        watermark_ms: job.stream_watermark(now_ms()),
        emitted_until_ms: st.emitted_until,
        partitions: st
            .partitions
            .iter()
            .map(|(&p, x)| pb::PartitionStart {
                partition: p,
                offset: x.offset.unwrap_or(-1),
                max_event_ms: x.max_event_ms,
                state_url: x.state_url.clone().unwrap_or_default(),
            })
            .collect(),
    }
}

/// A partition whose consumer has not reported for this long (or whose task does
/// not run) has its high watermark asked of the brokers.
const SILENT_AFTER_MS: u64 = 15_000;

/// How often the leader looks for such partitions.
pub const REFRESH_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Keeps the lag of partitions no consumer task reports measured: their high
/// watermarks are asked of the brokers (ListOffsets) and recorded
/// (`Command::StreamWatermarks`). `busy`: a refresh still running.
pub fn refresh_unread(core: &Arc<Core>, busy: &Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::Ordering;
    let now = now_ms();
    type Unread = (String, autopipe_common::spec::SourceSpec, Vec<(i32, i64)>);
    let unread: Vec<Unread> = core.read(|s| {
        s.jobs
            .values()
            .filter(|j| !j.state.is_terminal())
            .filter_map(|j| {
                let st = j.stream.as_ref()?;
                let tasks = &j.stages.first()?.tasks;
                let silent: Vec<(i32, i64)> = st
                    .partitions
                    .iter()
                    .filter(|(p, x)| {
                        let task = st.assignment.iter().position(|a| a.contains(p));
                        let running = task.and_then(|t| tasks.get(t)).is_some_and(|t| {
                            matches!(t.state, crate::state::TaskState::Running { .. })
                        });
                        !running || x.updated_ms + SILENT_AFTER_MS < now
                    })
                    .map(|(p, x)| (*p, x.offset.unwrap_or(0)))
                    .collect();
                let source = j
                    .spec
                    .sources
                    .iter()
                    .find(|s| s.format == autopipe_common::spec::Format::Kafka)?
                    .clone();
                (!silent.is_empty()).then(|| (j.id.clone(), source, silent))
            })
            .collect()
    });
    if unread.is_empty() || busy.swap(true, Ordering::SeqCst) {
        return;
    }
    let (core, busy) = (core.clone(), busy.clone());
    tokio::spawn(async move {
        for (job_id, source, partitions) in unread {
            let asked = tokio::task::spawn_blocking(move || {
                autopipe_common::kafka::high_watermarks(
                    &source,
                    &partitions,
                    std::time::Duration::from_secs(2),
                )
            })
            .await;
            let high = match asked {
                Ok(Ok(h)) if !h.is_empty() => h,
                Ok(Err(e)) => {
                    tracing::warn!(job = %job_id, "high watermarks not read: {e}");
                    continue;
                }
                _ => continue,
            };
            let cmd = Command::StreamWatermarks {
                job_id: job_id.clone(),
                high,
                at_ms: now_ms(),
            };
            if let Err(e) = core.propose(cmd).await {
                tracing::warn!(job = %job_id, "high watermarks not recorded: {e}");
            }
        }
        busy.store(false, Ordering::SeqCst);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StreamPlan;

    #[test]
    fn a_retried_commit_retires_no_checkpoint() {
        let mut st = Stream::new(&StreamPlan {
            topic: "t".into(),
            assignment: vec![vec![0, 1]],
        });
        st.partitions.get_mut(&0).unwrap().state_url = Some("s/p0/b1".into());
        st.partitions.get_mut(&1).unwrap().state_url = Some("s/p1/b1".into());
        let progress = |p: i32, url: &str| pb::PartitionProgress {
            partition: p,
            state_url: url.into(),
            ..Default::default()
        };
        let new = [progress(0, "s/p0/b2"), progress(1, "")];
        assert_eq!(replaced_checkpoints(&st, &new), vec!["s/p0/b1".to_string()]);
        // the same commit again, once applied: p0's checkpoint is b2 already
        st.partitions.get_mut(&0).unwrap().state_url = Some("s/p0/b2".into());
        assert!(replaced_checkpoints(&st, &new).is_empty());
    }
}
