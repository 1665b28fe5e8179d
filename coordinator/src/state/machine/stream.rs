//! A streaming job's replicated progress (issue 13): which Kafka partitions each
//! consumer task reads, the offsets committed together with the output they
//! produced, and the committed micro-batches whose staged files are not yet
//! published in the sink.
//!
//! A micro-batch commits in one command (`Command::StreamCommit`): its new offsets and
//! its staged files. It is accepted only from the attempt that runs the task now, and
//! only if every partition starts where the last commit left it, so an attempt that
//! lost its partitions (its worker was declared lost, the task moved) can never
//! commit again: its output is discarded with its staging, and the new attempt
//! re-reads from the committed offsets. Output and offsets never disagree.

use super::{ApplyError, Outcome, State, TaskState};
use crate::state::commands::Command;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What the planner decided for a streaming job: the topic and each consumer task's
/// partitions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StreamPlan {
    /// the topic the job reads
    pub topic: String,
    /// per task (the stage's tasks in order), the partitions it reads
    pub assignment: Vec<Vec<i32>>,
}

/// A streaming job's progress.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Stream {
    /// the topic
    pub topic: String,
    /// per task, the partitions it reads
    pub assignment: Vec<Vec<i32>>,
    /// per partition
    pub partitions: BTreeMap<i32, PartitionProgress>,
    /// per task, its committed batches: the last one, what they read and how long
    /// they took
    pub work: Vec<TaskWork>,
    /// micro-batches committed
    pub batches: u64,
    /// committed micro-batches whose files are still staged
    pub pending: Vec<PendingBatch>,
    /// records read in committed batches (bad ones included)
    pub records: u64,
    /// rows written by committed batches
    pub rows_out: u64,
    /// bytes written by committed batches
    pub bytes_out: u64,
    /// records of committed batches that went to the dead letters
    pub bad_records: u64,
    /// files published in the sink (and dead letters)
    pub files: u64,
    /// when its partitions were last dealt anew (`Command::StreamRescale`; 0: never)
    #[serde(default)]
    pub rescaled_ms: u64,
    /// a windowed job: windows ending at or before this were emitted
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emitted_until: Option<i64>,
    /// records dropped as repeats (`dedup_key`)
    #[serde(default)]
    pub duplicates: u64,
    /// late records sent to the dead letters (windows)
    #[serde(default)]
    pub late_records: u64,
    /// partitions dealt to another task that the task named here still reads until
    /// its next commit (a task that only gives partitions up keeps running)
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub handoffs: BTreeMap<i32, u32>,
}

/// A consumer task's committed work; its processing rate is the Flink autoscaler's
/// "true processing rate": records per second of busy time.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TaskWork {
    /// its last committed batch, as (attempt, batch)
    pub last: (u32, u64),
    /// records its committed batches read
    pub records: u64,
    /// milliseconds its committed batches took (decode, SQL, write)
    pub busy_ms: u64,
    /// batches committed
    pub batches: u64,
}

impl TaskWork {
    /// Records per second of busy time, once it committed work.
    pub fn rate(&self) -> Option<f64> {
        (self.busy_ms > 0).then(|| self.records as f64 * 1000.0 / self.busy_ms as f64)
    }
}

/// One partition's committed progress.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PartitionProgress {
    /// the next offset to read (`None`: nothing committed; the source's `start`)
    pub offset: Option<i64>,
    /// the high watermark the last commit saw
    pub high_watermark: Option<i64>,
    /// records committed
    pub records: u64,
    /// when it last committed (ms)
    pub updated_ms: u64,
    /// records per second produced into it (its high watermark's growth over the
    /// last window of at least `RATE_WINDOW_MS`)
    #[serde(default)]
    pub input_rate: f64,
    /// where that window starts: (ms, high watermark)
    #[serde(default)]
    pub rate_mark: Option<(u64, i64)>,
    /// a stateful job: the largest event time committed records hold
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_event_ms: Option<i64>,
    /// a stateful job: the partition's state checkpoint as of its committed offset
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_url: Option<String>,
    /// when a commit last brought records of it (or its first commit): how long it
    /// has been idle
    #[serde(default)]
    pub last_record_ms: u64,
}

/// The shortest window a partition's input rate is measured over.
pub const RATE_WINDOW_MS: u64 = 3_000;

impl PartitionProgress {
    /// Records produced but not committed yet, as the last commit saw it.
    pub fn lag(&self) -> Option<i64> {
        let hw = self.high_watermark?;
        Some((hw - self.offset.unwrap_or(0)).max(0))
    }
}

/// A committed micro-batch whose files still wait in staging.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PendingBatch {
    /// the task
    pub task: u32,
    /// its attempt
    pub attempt: u32,
    /// the attempt's batch number
    pub batch: u64,
    /// (staged URL, final URL) of each file
    pub moves: Vec<(String, String)>,
}

/// One partition in a `StreamCommit`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BatchOffsets {
    /// partition
    pub partition: i32,
    /// where the batch started (`None`: the partition had no committed offset)
    pub from: Option<i64>,
    /// the next offset after the batch
    pub to: i64,
    /// the high watermark the task last saw
    pub high_watermark: Option<i64>,
    /// a stateful job: the largest event time the partition has seen
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_event_ms: Option<i64>,
    /// a stateful job: its new state checkpoint (`None`: unchanged)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_url: Option<String>,
    /// a windowed job: the earliest window end a record of the batch counts in
    /// (refused when that window was emitted: the task saw an older state)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_open_end: Option<i64>,
}

/// A windowed job's windows emitted by a batch: those ending in `(after, until]`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct WindowEmit {
    /// windows ending at or before this had been emitted (`None`: none had)
    pub after: Option<i64>,
    /// the last window end emitted now
    pub until: i64,
}

impl Stream {
    /// A new job's progress.
    pub fn new(plan: &StreamPlan) -> Stream {
        Stream {
            topic: plan.topic.clone(),
            partitions: plan
                .assignment
                .iter()
                .flatten()
                .map(|&p| (p, PartitionProgress::default()))
                .collect(),
            work: vec![TaskWork::default(); plan.assignment.len()],
            assignment: plan.assignment.clone(),
            batches: 0,
            pending: vec![],
            records: 0,
            rows_out: 0,
            bytes_out: 0,
            bad_records: 0,
            files: 0,
            rescaled_ms: 0,
            emitted_until: None,
            duplicates: 0,
            late_records: 0,
            handoffs: BTreeMap::new(),
        }
    }

    /// The job's watermark at `now_ms` under its params: the smallest of its
    /// partitions' largest event times less `watermark_delay` (`None` while one has
    /// none). A partition idle for `watermark_idle_timeout` (its task runs and has
    /// read it to its end, no record since) does not count, unless every partition
    /// is idle. `running`: the consumer tasks that run now.
    pub fn watermark(
        &self,
        params: &autopipe_common::spec::JobParams,
        now_ms: u64,
        running: &dyn Fn(usize) -> bool,
    ) -> Option<i64> {
        self.watermark_with(params, now_ms, running, |_, p| p.max_event_ms)
    }

    /// `watermark` with each partition's largest event time from `max_event`.
    fn watermark_with(
        &self,
        params: &autopipe_common::spec::JobParams,
        now_ms: u64,
        running: &dyn Fn(usize) -> bool,
        max_event: impl Fn(i32, &PartitionProgress) -> Option<i64>,
    ) -> Option<i64> {
        let idle_ms = params.watermark_idle_timeout_ms();
        let read = |i: i32| {
            self.assignment
                .iter()
                .position(|a| a.contains(&i))
                .is_some_and(running)
        };
        // (a partition whose task does not run has a lag nobody measures)
        let idle = |i: i32, p: &PartitionProgress| {
            idle_ms > 0
                && read(i)
                && p.lag() == Some(0)
                && p.last_record_ms > 0
                && now_ms >= p.last_record_ms + idle_ms
        };
        let active: Vec<Option<i64>> = self
            .partitions
            .iter()
            .filter(|(&i, p)| !idle(i, p))
            .map(|(&i, p)| max_event(i, p))
            .collect();
        let all: Vec<Option<i64>> = self
            .partitions
            .iter()
            .map(|(&i, p)| max_event(i, p))
            .collect();
        let delay = params.watermark_delay_ms() as i64;
        let considered = if active.is_empty() {
            // all idle: only the partitions with event times hold it
            all.into_iter().flatten().map(Some).collect()
        } else {
            active
        };
        autopipe_common::stream_state::job_watermark(considered, delay)
    }

    /// The task that emits a windowed job's windows: the one reading its lowest
    /// partition.
    pub fn emitter(&self) -> Option<usize> {
        let lowest = *self.partitions.keys().next()?;
        if let Some(from) = self.handoffs.get(&lowest) {
            return Some(*from as usize);
        }
        self.assignment.iter().position(|a| a.contains(&lowest))
    }

    /// Records not committed yet, over all partitions whose high watermark is known.
    pub fn total_lag(&self) -> i64 {
        self.partitions.values().filter_map(|p| p.lag()).sum()
    }

    /// Records per second produced into the topic, over all its partitions.
    pub fn input_rate(&self) -> f64 {
        self.partitions.values().map(|p| p.input_rate).sum()
    }

    /// A task with no partitions (scaled down): it is not launched.
    pub fn parked(&self, task: usize) -> bool {
        self.assignment.get(task).is_some_and(|a| a.is_empty())
    }

    /// The partitions task `task` reads now: its own, less those another task
    /// (`running`) has not handed over yet.
    pub fn readable(&self, task: usize, running: &dyn Fn(usize) -> bool) -> Vec<i32> {
        self.assignment
            .get(task)
            .map(|a| {
                a.iter()
                    .copied()
                    .filter(|p| {
                        self.handoffs
                            .get(p)
                            .is_none_or(|from| *from as usize == task || !running(*from as usize))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether task `task` waits for another task to hand one of its partitions over.
    pub fn awaits_handoff(&self, task: usize) -> bool {
        self.assignment.get(task).is_some_and(|a| {
            a.iter().any(|p| {
                self.handoffs
                    .get(p)
                    .is_some_and(|from| *from as usize != task)
            })
        })
    }

    /// Consumer tasks that read partitions.
    pub fn active_tasks(&self) -> usize {
        self.assignment.iter().filter(|a| !a.is_empty()).count()
    }

    /// Records per second of busy time over every committed batch: what one consumer
    /// task processes (the Flink autoscaler's true processing rate).
    pub fn task_rate(&self) -> Option<f64> {
        let records: u64 = self.work.iter().map(|w| w.records).sum();
        let busy: u64 = self.work.iter().map(|w| w.busy_ms).sum();
        (busy > 0 && records > 0).then(|| records as f64 * 1000.0 / busy as f64)
    }
}

impl PartitionProgress {
    /// A commit saw high watermark `hw` at `at_ms`: the input rate is the growth
    /// since the window's mark, once the window is long enough.
    fn observe(&mut self, hw: i64, at_ms: u64) {
        match self.rate_mark {
            None => self.rate_mark = Some((at_ms, hw)),
            Some((t0, hw0)) if at_ms >= t0 + RATE_WINDOW_MS => {
                self.input_rate = (hw - hw0).max(0) as f64 * 1000.0 / (at_ms - t0) as f64;
                self.rate_mark = Some((at_ms, hw));
            }
            Some(_) => {}
        }
    }
}

impl super::Job {
    /// A streaming job's watermark at `now_ms` (`Stream::watermark`, with the consumer
    /// tasks that run now).
    pub fn stream_watermark(&self, now_ms: u64) -> Option<i64> {
        let st = self.stream.as_ref()?;
        let tasks = &self.stages.first()?.tasks;
        let running = |t: usize| {
            tasks
                .get(t)
                .is_some_and(|t| matches!(t.state, TaskState::Running { .. }))
        };
        st.watermark(&self.spec.job.params, now_ms, &running)
    }
}

impl State {
    /// Job `job_id`, unless it does not exist or has ended (`illegal` says why).
    fn live_job(
        &mut self,
        job_id: &str,
        illegal: &dyn Fn(String) -> ApplyError,
    ) -> Result<&mut super::Job, ApplyError> {
        let job = self
            .jobs
            .get_mut(job_id)
            .ok_or_else(|| ApplyError::UnknownJob(job_id.to_string()))?;
        if job.state.is_terminal() {
            return Err(illegal(format!("the job is {:?}", job.state)));
        }
        Ok(job)
    }

    /// `Command::StreamCommit`: all checks run before any change.
    pub(super) fn on_stream_commit(&mut self, cmd: &Command) -> Result<Outcome, ApplyError> {
        let Command::StreamCommit {
            job_id,
            task,
            attempt,
            batch,
            offsets,
            moves,
            records,
            rows_out,
            bytes_out,
            bad_records,
            busy_ms,
            at_ms,
            emitted,
            duplicates,
            late_records,
        } = cmd
        else {
            unreachable!("called for StreamCommit only")
        };
        let illegal = |why: String| {
            ApplyError::Illegal(format!(
                "job {job_id} task {task} attempt {attempt} batch {batch}: {why}"
            ))
        };
        let job = self.live_job(job_id, &illegal)?;
        let running = job
            .stages
            .first()
            .and_then(|st| st.tasks.get(*task as usize))
            .map(|t| matches!(t.state, TaskState::Running { attempt: a, .. } if a == *attempt));
        let stream = job
            .stream
            .as_mut()
            .ok_or_else(|| illegal("not a streaming job".into()))?;
        if stream.work.get(*task as usize).map(|w| w.last) == Some((*attempt, *batch)) {
            return Ok(Outcome::Done); // the same commit again (a retried proposal)
        }
        if running != Some(true) {
            return Err(illegal("the attempt no longer runs the task".into()));
        }
        let owned = &stream.assignment[*task as usize];
        for o in offsets {
            let handing_over = stream.handoffs.get(&o.partition) == Some(task);
            if !owned.contains(&o.partition) && !handing_over {
                return Err(illegal(format!(
                    "partition {} is not assigned to the task",
                    o.partition
                )));
            }
            let committed = stream.partitions.get(&o.partition).and_then(|p| p.offset);
            if committed != o.from {
                return Err(illegal(format!(
                    "partition {} moved on: committed {committed:?}, the batch started at {:?}",
                    o.partition, o.from
                )));
            }
            if o.to < o.from.unwrap_or(0) {
                return Err(illegal(format!(
                    "partition {} would go back from {:?} to {}",
                    o.partition, o.from, o.to
                )));
            }
        }
        let stale = |why: String| {
            ApplyError::Stale(format!(
                "job {job_id} task {task} attempt {attempt} batch {batch}: {why}"
            ))
        };
        // a record admitted into a window already emitted would never be emitted: the
        // task saw an older emission, and runs again from the committed state
        for o in offsets {
            if let (Some(end), Some(until)) = (o.min_open_end, stream.emitted_until) {
                if end <= until {
                    return Err(stale(format!(
                        "partition {} admitted a record into the window ending {end}, but windows until {until} were emitted",
                        o.partition
                    )));
                }
            }
        }
        if let Some(e) = emitted {
            // windows are emitted once: by the task reading the lowest partition, from
            // where the last emission ended, and only windows the watermark closed
            if stream.emitter() != Some(*task as usize) {
                return Err(illegal(
                    "only the task reading the lowest partition emits windows".into(),
                ));
            }
            if e.after != stream.emitted_until || e.after.is_some_and(|a| e.until <= a) {
                return Err(stale(format!(
                    "windows emitted until {:?}; the batch emits ({:?}, {}]",
                    stream.emitted_until, e.after, e.until
                )));
            }
            let params = &job.spec.job.params;
            let tasks = &job.stages[0].tasks;
            let running = |t: usize| {
                tasks
                    .get(t)
                    .is_some_and(|t| matches!(t.state, TaskState::Running { .. }))
            };
            let watermark = stream.watermark_with(params, *at_ms, &running, |p, x| {
                let now = offsets.iter().find(|o| o.partition == p);
                x.max_event_ms.max(now.and_then(|o| o.max_event_ms))
            });
            let (size, slide) = params.window().unwrap_or((1, 1));
            let closed = watermark
                .map(|w| autopipe_common::stream_state::closed_until(w, size as i64, slide as i64));
            if closed.is_none_or(|c| c < e.until) {
                return Err(stale(format!(
                    "windows until {} are not closed: the watermark closes them until {closed:?}",
                    e.until
                )));
            }
        }
        for o in offsets {
            let p = stream.partitions.entry(o.partition).or_default();
            let read = (o.to - o.from.unwrap_or(o.to)).max(0) as u64;
            p.records += read;
            p.offset = Some(o.to);
            if let Some(hw) = o.high_watermark {
                p.high_watermark = Some(hw.max(o.to));
            } else if let Some(hw) = p.high_watermark.as_mut() {
                *hw = (*hw).max(o.to);
            }
            if let Some(hw) = p.high_watermark {
                p.observe(hw, *at_ms);
            }
            p.max_event_ms = p.max_event_ms.max(o.max_event_ms);
            if read > 0 || p.last_record_ms == 0 {
                p.last_record_ms = *at_ms;
            }
            if let Some(url) = &o.state_url {
                p.state_url = Some(url.clone());
            }
            p.updated_ms = *at_ms;
        }
        let w = &mut stream.work[*task as usize];
        w.last = (*attempt, *batch);
        w.records += records;
        w.busy_ms += busy_ms;
        w.batches += 1;
        // a consumer task runs for days: its attempt limit counts the failures since
        // its last commit, not since the job started
        if let Some(t) = job.stages[0].tasks.get_mut(*task as usize) {
            t.failures = 0;
        }
        // the answer to this commit tells the task its partitions: it has handed over
        stream.handoffs.retain(|_, from| from != task);
        stream.batches += 1;
        stream.records += records;
        stream.rows_out += rows_out;
        stream.bytes_out += bytes_out;
        stream.bad_records += bad_records;
        stream.duplicates += duplicates;
        stream.late_records += late_records;
        if let Some(e) = emitted {
            stream.emitted_until = Some(e.until);
        }
        if !moves.is_empty() {
            stream.pending.push(PendingBatch {
                task: *task,
                attempt: *attempt,
                batch: *batch,
                moves: moves.clone(),
            });
        }
        Ok(Outcome::Done)
    }

    /// `Command::StreamRescale`: all checks run before any change.
    pub(super) fn on_stream_rescale(&mut self, cmd: &Command) -> Result<Outcome, ApplyError> {
        let Command::StreamRescale {
            job_id,
            assignment,
            decision,
            at_ms,
        } = cmd
        else {
            unreachable!("called for StreamRescale only")
        };
        let illegal = |why: String| ApplyError::Illegal(format!("job {job_id}: {why}"));
        let job = self.live_job(job_id, &illegal)?;
        let stream = job
            .stream
            .as_mut()
            .ok_or_else(|| illegal("not a streaming job".into()))?;
        let mut dealt: Vec<i32> = assignment.iter().flatten().copied().collect();
        dealt.sort_unstable();
        let owned: Vec<i32> = stream.partitions.keys().copied().collect();
        if dealt != owned {
            return Err(illegal(format!(
                "a rescale must deal every partition {owned:?} once, not {dealt:?}"
            )));
        }
        if assignment.iter().all(|a| a.is_empty()) {
            return Err(illegal("a rescale leaves no task reading".into()));
        }
        let tasks = &mut job.stages[0].tasks;
        let n = assignment.len().max(tasks.len());
        tasks.resize_with(n, super::Task::new);
        stream.work.resize_with(n, TaskWork::default);
        stream.assignment.resize_with(n, Vec::new);
        // a handoff whose task stopped meanwhile is moot
        stream.handoffs.retain(|_, from| {
            tasks
                .get(*from as usize)
                .is_some_and(|t| matches!(t.state, TaskState::Running { .. }))
        });
        for (i, task) in tasks.iter_mut().enumerate() {
            let new = assignment.get(i).cloned().unwrap_or_default();
            let old = &stream.assignment[i];
            if new == *old {
                continue;
            }
            let running = matches!(task.state, TaskState::Running { .. });
            if running && !new.is_empty() {
                // it keeps running: the answer to its next commit tells it its
                // partitions. It hands the ones it gives up over at that commit (their
                // new owner starts once it has, from the offsets it committed), and it
                // starts reading the ones it gains once their old owner has
                for p in old.iter().filter(|p| !new.contains(p)) {
                    stream.handoffs.insert(*p, i as u32);
                }
            } else {
                // its running attempt (if any) is an orphan now: the fence refuses its
                // commits and the leader cancels it; the task runs again with `new`
                task.state = TaskState::Pending;
                task.speculative = None;
                task.not_before_ms = 0;
                stream.handoffs.retain(|_, from| *from != i as u32);
            }
            stream.assignment[i] = new;
        }
        stream.rescaled_ms = *at_ms;
        self.push_decision(decision.clone());
        Ok(Outcome::Done)
    }

    /// `Command::StreamWatermarks`: high watermarks of partitions no task reports.
    pub(super) fn on_stream_watermarks(&mut self, cmd: &Command) -> Result<Outcome, ApplyError> {
        let Command::StreamWatermarks {
            job_id,
            high,
            at_ms,
        } = cmd
        else {
            unreachable!("called for StreamWatermarks only")
        };
        let stream = self
            .jobs
            .get_mut(job_id)
            .ok_or_else(|| ApplyError::UnknownJob(job_id.clone()))?
            .stream
            .as_mut()
            .ok_or_else(|| ApplyError::Illegal(format!("job {job_id} is not a streaming job")))?;
        for (part, hw) in high {
            if let Some(p) = stream.partitions.get_mut(part) {
                let hw = p.high_watermark.map_or(*hw, |h| h.max(*hw));
                p.high_watermark = Some(hw);
                p.observe(hw, *at_ms);
            }
        }
        Ok(Outcome::Done)
    }

    /// `Command::StreamPublished`: the batches' files are in place.
    pub(super) fn on_stream_published(&mut self, cmd: &Command) -> Result<Outcome, ApplyError> {
        let Command::StreamPublished { job_id, batches } = cmd else {
            unreachable!("called for StreamPublished only")
        };
        let job = self
            .jobs
            .get_mut(job_id)
            .ok_or_else(|| ApplyError::UnknownJob(job_id.clone()))?;
        let Some(stream) = job.stream.as_mut() else {
            return Err(ApplyError::Illegal(format!(
                "job {job_id} is not a streaming job"
            )));
        };
        let mut published = 0;
        stream.pending.retain(|b| {
            let done = batches.contains(&(b.task, b.attempt, b.batch));
            if done {
                published += b.moves.len() as u64;
            }
            !done
        });
        stream.files += published;
        Ok(Outcome::Done)
    }
}

/// Tests: workers w1 and w2 (2 slots each) and a streaming job "s" of `spec` whose
/// consumer tasks read `assignment` (none launched).
#[cfg(test)]
pub(crate) fn test_stream_job(
    spec: autopipe_common::spec::PipelineSpec,
    assignment: Vec<Vec<i32>>,
) -> State {
    let mut s = crate::state::test_state(&[("w1", 2), ("w2", 2)], 1);
    s.apply(&Command::SubmitJob {
        job_id: "s".into(),
        spec: Box::new(spec),
        stages: vec![crate::state::test_stage(
            0,
            assignment.len() as u32,
            None,
            vec![],
        )],
        at_ms: 0,
        request_id: String::new(),
        request_hash: 0,
        stream: Some(Box::new(StreamPlan {
            topic: "clicks".into(),
            assignment,
        })),
        sink_schema: None,
        compaction: None,
    })
    .unwrap();
    s
}

/// Tests: attempt `attempt` of consumer task `task` of job "s" launched on `w`.
#[cfg(test)]
pub(crate) fn test_launch(s: &mut State, task: u32, attempt: u32, w: &str) {
    s.apply(&Command::TaskLaunched {
        job_id: "s".into(),
        stage: 0,
        task,
        attempt,
        worker_id: w.into(),
        at_ms: 1,
    })
    .unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Workers w1, w2; a streaming job "s" of two consumer tasks reading partitions
    /// [0, 2] and [1]; task 0's attempt 1 runs on w1.
    fn streaming() -> State {
        let mut s = test_stream_job(crate::state::test_spec(""), vec![vec![0, 2], vec![1]]);
        launch(&mut s, 0, 1, "w1");
        s
    }

    use super::test_launch as launch;

    fn commit(task: u32, attempt: u32, batch: u64, offsets: &[(i32, Option<i64>, i64)]) -> Command {
        Command::StreamCommit {
            job_id: "s".into(),
            task,
            attempt,
            batch,
            offsets: offsets
                .iter()
                .map(|&(partition, from, to)| BatchOffsets {
                    partition,
                    from,
                    to,
                    high_watermark: Some(to + 5),
                    max_event_ms: None,
                    state_url: None,
                    min_open_end: None,
                })
                .collect(),
            moves: vec![("staged".into(), "final".into())],
            records: offsets
                .iter()
                .map(|o| (o.2 - o.1.unwrap_or(0)) as u64)
                .sum(),
            rows_out: 1,
            bytes_out: 1,
            bad_records: 0,
            busy_ms: 10,
            at_ms: 2,
            emitted: None,
            duplicates: 0,
            late_records: 0,
        }
    }

    #[test]
    fn a_batch_commits_its_offsets_once_and_only_from_where_the_last_left_them() {
        let mut s = streaming();
        s.apply(&commit(0, 1, 1, &[(0, None, 10), (2, None, 4)]))
            .unwrap();
        let st = s.jobs["s"].stream.clone().unwrap();
        assert_eq!(st.partitions[&0].offset, Some(10));
        assert_eq!(st.partitions[&0].lag(), Some(5));
        assert_eq!((st.batches, st.records, st.pending.len()), (1, 14, 1));
        assert_eq!(st.work[0].rate(), Some(1400.0), "14 records in 10 ms");
        assert_eq!(st.work[1].rate(), None);
        // the same commit again (a retried proposal) changes nothing
        let before = s.clone();
        s.apply(&commit(0, 1, 1, &[(0, None, 10), (2, None, 4)]))
            .unwrap();
        assert_eq!(s, before);
        // a batch that does not start where the last one left the partition
        let e = s.apply(&commit(0, 1, 2, &[(0, Some(8), 20)])).unwrap_err();
        assert!(e.to_string().contains("moved on"), "{e}");
        // a partition the task does not own
        let e = s.apply(&commit(0, 1, 2, &[(1, None, 3)])).unwrap_err();
        assert!(e.to_string().contains("not assigned"), "{e}");
        // a task that is not running (task 1 never launched)
        assert!(s.apply(&commit(1, 1, 1, &[(1, None, 3)])).is_err());
        assert_eq!(s, before);
        s.apply(&commit(0, 1, 2, &[(0, Some(10), 20)])).unwrap();
        assert_eq!(
            s.jobs["s"].stream.as_ref().unwrap().partitions[&0].offset,
            Some(20)
        );
    }

    #[test]
    fn an_attempt_that_lost_its_task_never_commits_again() {
        let mut s = streaming();
        s.apply(&commit(0, 1, 1, &[(0, None, 10)])).unwrap();
        // w1 is lost: the task runs again elsewhere, from the committed offsets
        s.apply(&Command::WorkerLost {
            worker_id: "w1".into(),
            at_ms: 3,
        })
        .unwrap();
        launch(&mut s, 0, 2, "w2");
        let e = s.apply(&commit(0, 1, 2, &[(0, Some(10), 30)])).unwrap_err();
        assert!(e.to_string().contains("no longer runs"), "{e}");
        s.apply(&commit(0, 2, 1, &[(0, Some(10), 30)])).unwrap();
        let st = s.jobs["s"].stream.as_ref().unwrap();
        assert_eq!(st.partitions[&0].offset, Some(30));
        // a partition's first commit pins where it starts: it counts no records
        assert_eq!(st.partitions[&0].records, 20);
    }

    #[test]
    fn published_batches_leave_the_pending_list_and_a_cancelled_job_takes_no_commit() {
        let mut s = streaming();
        s.apply(&commit(0, 1, 1, &[(0, None, 10)])).unwrap();
        s.apply(&commit(0, 1, 2, &[(0, Some(10), 12)])).unwrap();
        s.apply(&Command::StreamPublished {
            job_id: "s".into(),
            batches: vec![(0, 1, 1)],
        })
        .unwrap();
        let st = s.jobs["s"].stream.as_ref().unwrap();
        assert_eq!((st.pending.len(), st.pending[0].batch, st.files), (1, 2, 1));
        s.apply(&Command::CancelJob {
            job_id: "s".into(),
            at_ms: 4,
        })
        .unwrap();
        assert!(s.apply(&commit(0, 1, 3, &[(0, Some(12), 13)])).is_err());
    }

    #[test]
    fn high_watermarks_asked_of_the_brokers_never_go_back() {
        let mut s = streaming();
        s.apply(&commit(0, 1, 1, &[(0, None, 10)])).unwrap();
        let wm = |s: &mut State, hw: i64| {
            s.apply(&Command::StreamWatermarks {
                job_id: "s".into(),
                high: vec![(0, hw), (7, 1)],
                at_ms: 5,
            })
            .unwrap();
            s.jobs["s"].stream.as_ref().unwrap().partitions[&0].high_watermark
        };
        assert_eq!(wm(&mut s, 40), Some(40));
        assert_eq!(
            wm(&mut s, 30),
            Some(40),
            "an older answer does not lower it"
        );
        let st = s.jobs["s"].stream.as_ref().unwrap();
        assert_eq!(st.partitions[&0].lag(), Some(30));
        assert!(!st.partitions.contains_key(&7), "not the job's partition");
    }

    #[test]
    fn a_commit_clears_the_tasks_failures() {
        let mut s = streaming();
        s.apply(&Command::TaskFailed {
            job_id: "s".into(),
            stage: 0,
            task: 0,
            attempt: 1,
            error: crate::state::ErrorRecord {
                class: "transient".into(),
                message: "broker down".into(),
                key: String::new(),
                fetch_failed: None,
                worker_unreachable: false,
            },
            retryable: true,
            retry_at_ms: 0,
            at_ms: 2,
            retry_limit: None,
        })
        .unwrap();
        assert_eq!(s.jobs["s"].stages[0].tasks[0].failures, 1);
        launch(&mut s, 0, 2, "w2");
        s.apply(&commit(0, 2, 1, &[(0, None, 10)])).unwrap();
        assert_eq!(s.jobs["s"].stages[0].tasks[0].failures, 0);
    }
}

#[cfg(test)]
mod window_tests {
    use super::*;
    use crate::state::test_spec;
    use autopipe_common::spec::Millis;

    /// A windowed job (10 ms tumbling windows, watermark 5 ms behind) of two tasks
    /// reading [0, 2] and [1], both running.
    fn windowed() -> State {
        let mut spec = test_spec("");
        spec.job.params.window_size = Some(Millis(10));
        spec.job.params.watermark_delay = Some(Millis(5));
        let mut s = test_stream_job(spec, vec![vec![0, 2], vec![1]]);
        test_launch(&mut s, 0, 1, "w1");
        test_launch(&mut s, 1, 1, "w2");
        s
    }

    /// Task `task` commits `parts` as (partition, largest event time), no records,
    /// emitting `emitted`.
    fn commit(
        task: u32,
        batch: u64,
        parts: &[(i32, i64)],
        emitted: Option<WindowEmit>,
        s: &State,
    ) -> Command {
        let st = s.jobs["s"].stream.as_ref().unwrap();
        Command::StreamCommit {
            job_id: "s".into(),
            task,
            attempt: 1,
            batch,
            offsets: parts
                .iter()
                .map(|&(p, max)| BatchOffsets {
                    partition: p,
                    from: st.partitions[&p].offset,
                    to: st.partitions[&p].offset.unwrap_or(0),
                    high_watermark: None,
                    max_event_ms: Some(max),
                    state_url: Some(format!("state/p{p}/b{batch}")),
                    min_open_end: None,
                })
                .collect(),
            moves: vec![],
            records: 0,
            rows_out: 0,
            bytes_out: 0,
            bad_records: 0,
            busy_ms: 0,
            at_ms: 2,
            emitted,
            duplicates: 0,
            late_records: 1,
        }
    }

    #[test]
    fn an_idle_partition_does_not_hold_the_watermark_back() {
        let mut st = Stream::new(&StreamPlan {
            topic: "t".into(),
            assignment: vec![vec![0, 1]],
        });
        let mut params = test_spec("").job.params;
        params.watermark_delay = Some(Millis(5));
        params.watermark_idle_timeout = Some(Millis(1000));
        let set = |p: &mut PartitionProgress, max: Option<i64>, lag: i64, last: u64| {
            p.max_event_ms = max;
            p.offset = Some(10);
            p.high_watermark = Some(10 + lag);
            p.last_record_ms = last;
        };
        set(st.partitions.get_mut(&0).unwrap(), Some(100), 0, 5000);
        // partition 1 never had a record, read to its end since 1000
        set(st.partitions.get_mut(&1).unwrap(), None, 0, 1000);
        assert_eq!(
            st.watermark(&params, 1500, &|_| true),
            None,
            "not idle for 1 s yet"
        );
        assert_eq!(
            st.watermark(&params, 2000, &|_| true),
            Some(95),
            "idle: left out"
        );
        assert_eq!(
            st.watermark(&params, 2000, &|_| false),
            None,
            "a partition whose task does not run is not idle: its lag is not measured"
        );
        // behind (lag > 0) is not idle, however long ago its last record
        set(st.partitions.get_mut(&1).unwrap(), Some(50), 3, 1000);
        assert_eq!(st.watermark(&params, 9000, &|_| true), Some(45));
        // every partition idle: the event times there are count
        set(st.partitions.get_mut(&1).unwrap(), Some(50), 0, 1000);
        assert_eq!(st.watermark(&params, 9000, &|_| true), Some(45));
        params.watermark_idle_timeout = Some(Millis(0));
        set(st.partitions.get_mut(&1).unwrap(), None, 0, 1000);
        assert_eq!(
            st.watermark(&params, 90_000, &|_| true),
            None,
            "idleness off"
        );
    }

    #[test]
    fn windows_are_emitted_once_by_the_lowest_partitions_task_once_closed() {
        let mut s = windowed();
        s.apply(&commit(0, 1, &[(0, 40), (2, 30)], None, &s))
            .unwrap();
        let st = s.jobs["s"].stream.as_ref().unwrap();
        let params = s.jobs["s"].spec.job.params.clone();
        assert_eq!(
            st.watermark(&params, 2, &|_| true),
            None,
            "partition 1 has no event time yet"
        );
        assert_eq!(st.partitions[&2].state_url.as_deref(), Some("state/p2/b1"));
        assert_eq!(st.emitter(), Some(0));
        // partition 1 at 17: the watermark is 12, windows until 10 are closed
        s.apply(&commit(1, 1, &[(1, 17)], None, &s)).unwrap();
        assert_eq!(
            s.jobs["s"]
                .stream
                .as_ref()
                .unwrap()
                .watermark(&params, 2, &|_| true),
            Some(12)
        );
        let emit = |after, until| Some(WindowEmit { after, until });
        // not the emitter
        let e = s
            .apply(&commit(1, 2, &[(1, 17)], emit(None, 10), &s))
            .unwrap_err();
        assert!(e.to_string().contains("lowest partition"), "{e}");
        // a window not closed yet
        let e = s
            .apply(&commit(0, 2, &[(0, 40)], emit(None, 20), &s))
            .unwrap_err();
        assert!(e.to_string().contains("not closed"), "{e}");
        s.apply(&commit(0, 2, &[(0, 40)], emit(None, 10), &s))
            .unwrap();
        assert_eq!(s.jobs["s"].stream.as_ref().unwrap().emitted_until, Some(10));
        // emitting the same windows again is refused
        let e = s
            .apply(&commit(0, 3, &[(0, 40)], emit(None, 10), &s))
            .unwrap_err();
        assert!(e.to_string().contains("emitted until"), "{e}");
        // partition 1 at 36: the watermark is 25 (partition 2's 30 less 5); the
        // emitter's own commit raising partition 2 to 50 counts too: [10, 20) closes
        s.apply(&commit(1, 2, &[(1, 36)], None, &s)).unwrap();
        s.apply(&commit(0, 3, &[(2, 50)], emit(Some(10), 20), &s))
            .unwrap();
        let st = s.jobs["s"].stream.as_ref().unwrap();
        assert_eq!(
            (st.emitted_until, st.watermark(&params, 2, &|_| true)),
            (Some(20), Some(31))
        );
        assert_eq!(st.late_records, 5, "one per commit here");
    }
}
