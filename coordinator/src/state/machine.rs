//! The replicated state machine: a pure `apply(&mut State, &Command)` with no I/O.
//! Job, stage and task lifecycles are explicit enums; an illegal transition is an
//! error and leaves the state untouched (all checks run before any mutation).

use super::commands::{
    Command, ErrorRecord, ScanSlice, ShuffleHome, SplitOrigin, StagePlan, TaskReads, TaskResult,
    Waiting,
};
use super::decision::{Decision, DecisionKind, MAX_DECISIONS};
use autopipe_common::spec::PipelineSpec;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

mod split;
mod stream;

#[cfg(test)]
pub(crate) use stream::{test_launch, test_stream_job};
pub use stream::{
    BatchOffsets, PartitionProgress, PendingBatch, Stream, StreamPlan, TaskWork, WindowEmit,
};

/// Lifecycle of a job.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// stages are being run
    Running,
    /// staged output is being moved into place
    Committing,
    /// output committed
    Succeeded,
    /// failed; nothing committed
    Failed,
    /// cancelled by a user; nothing committed
    Cancelled,
}

impl JobState {
    /// No further transitions.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

/// Lifecycle of a task.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TaskState {
    /// waiting for a slot (or for its input stages)
    Pending,
    /// an attempt runs on a worker
    Running {
        /// attempt number
        attempt: u32,
        /// where
        worker_id: String,
        /// since
        started_ms: u64,
    },
    /// done; its output lives on `worker_id` (map) or in staging (sink)
    Succeeded {
        /// winning attempt
        attempt: u32,
        /// where the output is
        worker_id: String,
        /// what it produced
        result: TaskResult,
        /// when the winning attempt was launched
        #[serde(default)]
        started_ms: u64,
        /// when its success was recorded
        #[serde(default)]
        finished_ms: u64,
    },
}

/// A task (one partition of a stage).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Task {
    /// current state
    pub state: TaskState,
    /// attempts launched so far
    pub attempts: u32,
    /// failed attempts so far
    pub failures: u32,
    /// the last failure
    pub last_error: Option<ErrorRecord>,
    /// a retried task waits until then (backoff)
    #[serde(default)]
    pub not_before_ms: u64,
    /// a speculative second attempt, running beside the one in `state`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speculative: Option<SpeculativeCopy>,
    /// workers where an attempt of this task failed (or whose copy of its map output
    /// could not be fetched); retries go elsewhere when they can
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_on: Vec<String>,
    /// fetch failures of this (reducer) task so far
    #[serde(default)]
    pub fetch_failures: u32,
    /// task slots (and memory shares) each attempt takes; 0 or 1: one
    #[serde(default, skip_serializing_if = "one_slot")]
    pub memory_slots: u32,
    /// the decision of a speculative copy that now runs as the task's only attempt
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted: Option<u64>,
    /// what the task reads when its stage was re-planned (`None`: its own partition)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reads: Option<TaskReads>,
    /// the scan input of a task dynamic rebalancing split, or split off (`None`: its
    /// plan partition's whole group)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan: Option<ScanSlice>,
    /// the running task this one was split off (dynamic rebalancing)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_from: Option<SplitOrigin>,
}

fn one_slot(n: &u32) -> bool {
    *n <= 1
}

/// Fetch failures of one task that do not count against its attempts.
pub const MAX_SPARED_FETCH_FAILURES: u32 = 8;

/// The speculative copy of a running task.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SpeculativeCopy {
    /// its attempt number
    pub attempt: u32,
    /// where it runs
    pub worker_id: String,
    /// since
    pub started_ms: u64,
    /// the decision that launched it
    pub decision: u64,
}

impl Task {
    /// A task that has not run yet.
    pub fn new() -> Self {
        Task {
            state: TaskState::Pending,
            attempts: 0,
            failures: 0,
            last_error: None,
            not_before_ms: 0,
            speculative: None,
            failed_on: vec![],
            fetch_failures: 0,
            memory_slots: 0,
            promoted: None,
            reads: None,
            scan: None,
            split_from: None,
        }
    }

    /// Running attempts as `(attempt, worker, started_ms)`: the original, then the copy.
    pub fn running_attempts(&self) -> Vec<(u32, &str, u64)> {
        let mut out = Vec::with_capacity(2);
        if let TaskState::Running {
            attempt,
            worker_id,
            started_ms,
        } = &self.state
        {
            out.push((*attempt, worker_id.as_str(), *started_ms));
        }
        if let Some(c) = &self.speculative {
            out.push((c.attempt, c.worker_id.as_str(), c.started_ms));
        }
        out
    }

    /// Drops running attempt `attempt` (failed, lost or timed out) while the other
    /// may go on: the copy is promoted when the original goes. Returns the copy's
    /// decision (when a copy was involved) and whether an attempt still runs. An
    /// attempt that does not run changes nothing.
    fn detach_attempt(&mut self, attempt: u32) -> (Option<u64>, bool) {
        let original = match &self.state {
            TaskState::Running { attempt: a, .. } => Some(*a),
            _ => None,
        };
        match self.speculative.take() {
            Some(c) if c.attempt == attempt => (Some(c.decision), original.is_some()),
            Some(c) if original == Some(attempt) => {
                let d = c.decision;
                self.state = TaskState::Running {
                    attempt: c.attempt,
                    worker_id: c.worker_id,
                    started_ms: c.started_ms,
                };
                // the promoted copy's outcome completes its decision's effect
                self.promoted = Some(d);
                (Some(d), true)
            }
            None if original == Some(attempt) => {
                self.state = TaskState::Pending;
                (self.promoted.take(), false)
            }
            other => {
                self.speculative = other;
                (None, original.is_some())
            }
        }
    }
}

impl Default for Task {
    fn default() -> Self {
        Self::new()
    }
}

/// A stage and its tasks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Stage {
    /// what was planned
    pub plan: StagePlan,
    /// one per partition, or as re-planned (`replanned`)
    pub tasks: Vec<Task>,
    /// the decisions that re-planned the stage from its inputs' statistics (empty: it
    /// runs as planned)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replanned: Vec<u64>,
}

impl Stage {
    /// All tasks succeeded.
    pub fn is_complete(&self) -> bool {
        self.tasks
            .iter()
            .all(|t| matches!(t.state, TaskState::Succeeded { .. }))
    }
    /// Rows and bytes its succeeded tasks wrote.
    pub fn written(&self) -> (u64, u64) {
        self.tasks
            .iter()
            .filter_map(|t| match &t.state {
                TaskState::Succeeded { result, .. } => Some(&result.partitions),
                _ => None,
            })
            .flatten()
            .fold((0, 0), |(r, b), &(pr, pb)| (r + pr, b + pb))
    }
    /// Bytes its succeeded tasks wrote to their sink (or shuffle) files.
    pub fn bytes_out(&self) -> u64 {
        self.tasks
            .iter()
            .filter_map(|t| match &t.state {
                TaskState::Succeeded { result, .. } => Some(result.bytes_out),
                _ => None,
            })
            .sum()
    }
    /// Still as planned: no rule re-planned it and none of its tasks launched an
    /// attempt, so a rule may still change its tasks (and a consumer that starts
    /// later sees them as they are then).
    pub fn unstarted(&self) -> bool {
        self.replanned.is_empty() && self.tasks.iter().all(|t| t.attempts == 0)
    }
    /// Number of succeeded tasks.
    pub fn done(&self) -> usize {
        self.tasks
            .iter()
            .filter(|t| matches!(t.state, TaskState::Succeeded { .. }))
            .count()
    }
    /// Number of running tasks.
    pub fn running(&self) -> usize {
        self.tasks
            .iter()
            .filter(|t| matches!(t.state, TaskState::Running { .. }))
            .count()
    }
}

/// A job.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Job {
    /// id
    pub id: String,
    /// normalized spec
    pub spec: PipelineSpec,
    /// lifecycle
    pub state: JobState,
    /// stages; the last is the sink stage
    pub stages: Vec<Stage>,
    /// when submitted
    pub submitted_ms: u64,
    /// when it ended
    pub finished_ms: u64,
    /// why it failed
    pub error: Option<ErrorRecord>,
    /// committed files relative to the sink path
    pub committed_files: Vec<String>,
    /// the adapted per-task attempt limit (None: the job's max_task_attempts)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// why the job cannot progress now, if it cannot
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<Waiting>,
    /// failed attempts per cause (message with numbers and ids masked): count and
    /// the workers it happened on
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub failure_causes: BTreeMap<String, (u32, Vec<String>)>,
    /// position in submission order, from 1 (`ListJobs` pages by it: it survives
    /// the removal of other jobs; 0: submitted before jobs were numbered)
    #[serde(default)]
    pub seq: u64,
    /// its cleanup ran (only a terminal job's); only a cleaned job is forgotten
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cleaned: bool,
    /// a streaming job's partitions, offsets and committed batches
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<Stream>,
    /// the fingerprint of the submission's spec text (`request_fingerprint`; 0: none)
    #[serde(default, skip_serializing_if = "crate::state::commands::is_zero")]
    pub request_hash: u64,
    /// the idempotency key it was submitted with (empty: none)
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub request_id: String,
    /// a delta sink's table schema (Delta's JSON), from the planned output
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink_schema: Option<String>,
    /// a compaction job's input: it runs in the background (its tasks take only
    /// slots no user job waits for) and its commit replaces these files
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compaction: Option<crate::optimizer::compaction::CompactionJob>,
}

/// The stage a `ReplanStage` of `stage` appends for its pre-merge tasks `pre_merge`
/// (`StagePlan::pre_merge`), checked: the stage has a pre-merge plan, its tasks read
/// that plan's input through the new stage only, and the pre-merge tasks divide that
/// input alone.
fn pre_merge_stage(
    job: &Job,
    stage: u32,
    tasks: &[TaskReads],
    pre_merge: &[TaskReads],
) -> Result<Stage, ApplyError> {
    let illegal = |why: &str| {
        ApplyError::Illegal(format!(
            "job {} stage {stage} cannot add a pre-merge step: {why}",
            job.id
        ))
    };
    let st = job
        .stages
        .get(stage as usize)
        .ok_or_else(|| illegal("no such stage"))?;
    let pm = st
        .plan
        .pre_merge
        .as_ref()
        .ok_or_else(|| illegal("it has no pre-merge plan"))?;
    let id = job.stages.len() as u32;
    let input = job
        .stages
        .get(pm.input as usize)
        .ok_or_else(|| illegal("its input stage does not exist"))?;
    if tasks
        .iter()
        .flat_map(|t| &t.via)
        .any(|&v| v != (pm.input, id))
    {
        return Err(illegal("a task reads through another stage"));
    }
    if pre_merge
        .iter()
        .any(|t| !t.via.is_empty() || t.map_ranges.iter().any(|m| m.0 != pm.input))
    {
        return Err(illegal("a pre-merge task reads another input"));
    }
    Ok(Stage {
        plan: StagePlan {
            id,
            plan: pm.plan.clone(),
            display: pm.display.clone(),
            tasks: pre_merge.len() as u32,
            shuffle_partitions: input.plan.shuffle_partitions,
            inputs: vec![pm.input],
            join: None,
            broadcast: None,
            pre_merge: None,
            reduce: None,
        },
        tasks: pre_merge
            .iter()
            .map(|r| Task {
                reads: Some(r.clone()),
                ..Task::new()
            })
            .collect(),
        replanned: vec![],
    })
}

/// Drops a finished job's stage plans (datafusion-proto bytes, the bulk of a job in
/// the state): nothing runs them again, and the job is kept until `--job-retention`
/// forgets it. Its plans' text (`display`) stays for status and the dashboard.
fn release_plans(job: &mut Job) {
    for stage in &mut job.stages {
        stage.plan.plan = Default::default();
        stage.plan.broadcast = None;
        stage.plan.pre_merge = None;
    }
}

impl Job {
    /// The sink stage.
    pub fn sink_stage(&self) -> &Stage {
        // the last planned stage; a pre-merge stage added at run time is a map stage
        self.stages
            .iter()
            .rev()
            .find(|s| s.plan.shuffle_partitions.is_none())
            .or(self.stages.last())
            .expect("a planned job has at least one stage")
    }
    /// Source records read and records sent to the dead letters, over the winning
    /// attempts of every task.
    pub fn record_counts(&self) -> (u64, u64) {
        if let Some(st) = &self.stream {
            return (st.records.saturating_sub(st.bad_records), st.bad_records);
        }
        let (mut read, mut bad) = (0, 0);
        for t in self.stages.iter().flat_map(|s| s.tasks.iter()) {
            if let TaskState::Succeeded { result, .. } = &t.state {
                read += result.rows_in;
                bad += result.bad_records;
            }
        }
        (read, bad)
    }
    /// Where the job's dead letters are committed.
    pub fn dead_letter_dir(&self) -> String {
        self.spec.sink.dead_letter_dir(&self.id)
    }
    /// Whether a stage exists and its inputs are all complete.
    pub fn stage_ready(&self, stage: usize) -> bool {
        self.stages.get(stage).is_some_and(|st| {
            st.plan
                .inputs
                .iter()
                .all(|&i| self.stages.get(i as usize).is_some_and(Stage::is_complete))
        }) && !self.held_for_broadcast(stage)
    }

    /// Whether task `task` of stage `stage` waits for a slot now: pending, past its
    /// backoff, its inputs complete, and not a parked consumer task (a streaming job's
    /// task left without partitions).
    pub fn ready_to_launch(&self, stage: usize, task: usize, now_ms: u64) -> bool {
        self.stage_ready(stage) && self.task_waits(stage, task, now_ms)
    }

    /// `ready_to_launch` less the stage's inputs (which a caller looping over a
    /// ready stage's tasks checked once): pending, past its backoff, and not a parked
    /// consumer task or one waiting for a partition to be handed over.
    pub fn task_waits(&self, stage: usize, task: usize, now_ms: u64) -> bool {
        let Some(t) = self.stages.get(stage).and_then(|st| st.tasks.get(task)) else {
            return false;
        };
        t.state == TaskState::Pending
            && t.not_before_ms <= now_ms
            && !self
                .stream
                .as_ref()
                .is_some_and(|st| st.parked(task) || self.awaits_running_handoff(st, task))
    }

    /// Whether a consumer task waits for a running task to hand it a partition.
    fn awaits_running_handoff(&self, st: &Stream, task: usize) -> bool {
        let running = |t: u32| {
            self.stages[0]
                .tasks
                .get(t as usize)
                .is_some_and(|t| matches!(t.state, TaskState::Running { .. }))
        };
        st.awaits_handoff(task)
            && st.assignment[task]
                .iter()
                .filter_map(|p| st.handoffs.get(p))
                .any(|from| *from as usize != task && running(*from))
    }

    /// Whether map stage `stage` waits for the build side of a join it feeds to
    /// finish: should that side be small, the join runs as a broadcast join with this
    /// stage fused into it, and its shuffle never happens, or this stage keeps only
    /// the rows whose keys the build side holds before its shuffle
    /// (`optimizer::broadcast`). Never once any of its tasks ran, once the build
    /// side's finished tasks wrote more than `broadcast_join_max_bytes`, nor with
    /// `runtime_broadcast = false`.
    pub fn held_for_broadcast(&self, stage: usize) -> bool {
        let params = &self.spec.job.params;
        if params.runtime_broadcast == Some(false) || params.broadcast_join_max_bytes() == 0 {
            return false;
        }
        if !self.stages.get(stage).is_some_and(Stage::unstarted) {
            return false;
        }
        // still running, and not already past the limit with the tasks it finished
        // (then the wait would be for nothing)
        let limit = params.broadcast_join_max_bytes();
        let build_running = |build: u32| {
            self.stages
                .get(build as usize)
                .is_none_or(|b| !b.is_complete() && b.written().1 <= limit)
        };
        let reduce = self.stages[stage]
            .plan
            .reduce
            .as_ref()
            .is_some_and(|r| build_running(r.build));
        reduce
            || self.stages.iter().any(|j| {
                j.plan.broadcast.as_ref().is_some_and(|b| {
                    b.fused as usize == stage && j.unstarted() && build_running(b.build)
                })
            })
    }
}

/// Worker liveness as recorded in the log.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// registered and heartbeating
    Alive,
    /// declared lost: what ran there and its map outputs are redone elsewhere; a
    /// returning worker registers again under its id (and is alive from then on)
    Lost,
    /// released by the autoscaler while idle (`Command::WorkerReleased`): nothing ran
    /// there and nothing it held was still needed, so nothing is redone
    Released,
}

/// A registered worker.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkerRecord {
    /// id
    pub id: String,
    /// gRPC + Flight address
    pub address: String,
    /// HTTP metrics address
    pub http_address: String,
    /// task slots
    pub slots: u32,
    /// liveness
    pub state: WorkerState,
    /// registration time
    pub registered_ms: u64,
    /// where its shuffle files live
    #[serde(default)]
    pub shuffle: ShuffleHome,
    /// attempts launched on it
    #[serde(default)]
    pub attempts: u64,
    /// of those, attempts that failed with a transient error
    #[serde(default)]
    pub transient_failures: u64,
    /// when it was declared lost or released (such a worker is pruned after a
    /// retention period)
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lost_ms: u64,
    /// its load from its heartbeats, as last recorded (`Command::WorkerLoad`)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<super::load::WorkerLoad>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Everything the coordinator must not forget.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct State {
    /// workers by id
    pub workers: BTreeMap<String, WorkerRecord>,
    /// jobs by id
    pub jobs: BTreeMap<String, Job>,
    /// job ids in submission order
    pub job_order: Vec<String>,
    /// idempotency keys of submissions and the job each started
    #[serde(default)]
    pub submissions: BTreeMap<String, String>,
    /// the decision log (automatic changes), oldest first
    #[serde(default)]
    pub decisions: Vec<Decision>,
    /// id of the last recorded decision
    #[serde(default)]
    pub last_decision_id: u64,
    /// `seq` of the last submitted job
    #[serde(default)]
    pub last_job_seq: u64,
    /// the delta tables jobs committed to, by root URL, as last observed
    /// (`Command::TableObserved`; the compaction rule's input)
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tables: BTreeMap<String, crate::optimizer::compaction::TableFiles>,
}

/// Why a command was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApplyError {
    /// unknown job
    #[error("job {0} does not exist")]
    UnknownJob(String),
    /// unknown worker
    #[error("worker {0} does not exist")]
    UnknownWorker(String),
    /// unknown stage or task
    #[error("job {job}: stage {stage} task {task} does not exist")]
    UnknownTask {
        /// job
        job: String,
        /// stage
        stage: u32,
        /// task
        task: u32,
    },
    /// the transition is not allowed from the current state
    #[error("illegal transition: {0}")]
    Illegal(String),
    /// the proposer worked from a state that has moved on: it may retry from the
    /// state as it is now
    #[error("stale: {0}")]
    Stale(String),
}

/// What applying a command changed, for the caller to react to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// nothing to report
    Done,
    /// the job reached a terminal or committing state
    JobChanged(String, JobState),
    /// a task will be retried
    TaskRequeued,
    /// a task finished while another attempt of it still runs there: cancel it
    Superseded {
        /// where the losing attempt runs
        worker_id: String,
        /// its attempt number
        attempt: u32,
    },
}

impl State {
    /// Applies `cmd`; on error nothing changed.
    pub fn apply(&mut self, cmd: &Command) -> Result<Outcome, ApplyError> {
        match cmd {
            Command::RegisterWorker {
                worker_id,
                address,
                http_address,
                slots,
                at_ms,
                shuffle,
            } => {
                // A worker keeps its id across restarts. Registering while alive means
                // its process restarted: what ran there is gone, through the one
                // lost-worker path. A lost worker's outputs were forgotten already.
                let before = self
                    .workers
                    .get(worker_id)
                    .map(|w| (w.state, w.attempts, w.transient_failures));
                if matches!(before, Some((WorkerState::Alive, ..))) {
                    self.forget_worker_outputs(worker_id);
                }
                let (_, attempts, transient_failures) =
                    before.unwrap_or((WorkerState::Alive, 0, 0));
                self.workers.insert(
                    worker_id.clone(),
                    WorkerRecord {
                        id: worker_id.clone(),
                        address: address.clone(),
                        http_address: http_address.clone(),
                        slots: *slots,
                        state: WorkerState::Alive,
                        registered_ms: *at_ms,
                        shuffle: shuffle.clone(),
                        attempts,
                        transient_failures,
                        lost_ms: 0,
                        load: None,
                    },
                );
                Ok(Outcome::Done)
            }
            Command::WorkerLost { worker_id, at_ms } => {
                let w = self
                    .workers
                    .get(worker_id)
                    .ok_or_else(|| ApplyError::UnknownWorker(worker_id.clone()))?;
                if w.state == WorkerState::Lost {
                    return Err(ApplyError::Illegal(format!(
                        "worker {worker_id} is already lost"
                    )));
                }
                let w = self.workers.get_mut(worker_id).expect("checked above");
                w.state = WorkerState::Lost;
                w.lost_ms = *at_ms;
                self.forget_worker_outputs(worker_id);
                Ok(Outcome::Done)
            }
            Command::SubmitJob {
                job_id,
                spec,
                stages,
                at_ms,
                request_id,
                request_hash,
                stream,
                sink_schema,
                compaction,
            } => {
                if self.jobs.contains_key(job_id) {
                    return Err(ApplyError::Illegal(format!("job {job_id} already exists")));
                }
                if let Some(first) = self.submissions.get(request_id) {
                    return Err(ApplyError::Illegal(format!(
                        "request {request_id} already submitted job {first}"
                    )));
                }
                if stages.is_empty() {
                    return Err(ApplyError::Illegal(format!("job {job_id} has no stages")));
                }
                if let Some(st) = stream {
                    if stages.len() != 1 || stages[0].tasks as usize != st.assignment.len() {
                        return Err(ApplyError::Illegal(format!(
                            "streaming job {job_id} must have one stage of one task per consumer"
                        )));
                    }
                }
                let stages = stages
                    .iter()
                    .map(|p| Stage {
                        plan: p.clone(),
                        tasks: (0..p.tasks).map(|_| Task::new()).collect(),
                        replanned: vec![],
                    })
                    .collect();
                self.jobs.insert(
                    job_id.clone(),
                    Job {
                        id: job_id.clone(),
                        spec: spec.as_ref().clone(),
                        state: JobState::Running,
                        stages,
                        submitted_ms: *at_ms,
                        finished_ms: 0,
                        error: None,
                        committed_files: vec![],
                        max_attempts: None,
                        waiting: None,
                        failure_causes: BTreeMap::new(),
                        seq: self.last_job_seq + 1,
                        cleaned: false,
                        stream: stream.as_deref().map(Stream::new),
                        request_hash: *request_hash,
                        request_id: request_id.clone(),
                        sink_schema: sink_schema.clone(),
                        compaction: compaction.as_deref().cloned(),
                    },
                );
                self.last_job_seq += 1;
                self.job_order.push(job_id.clone());
                if !request_id.is_empty() {
                    self.submissions.insert(request_id.clone(), job_id.clone());
                }
                Ok(Outcome::Done)
            }
            Command::TaskLaunched {
                job_id,
                stage,
                task,
                attempt,
                worker_id,
                at_ms,
            } => {
                let w = self
                    .workers
                    .get(worker_id)
                    .ok_or_else(|| ApplyError::UnknownWorker(worker_id.clone()))?;
                if w.state != WorkerState::Alive {
                    return Err(ApplyError::Illegal(format!("worker {worker_id} is lost")));
                }
                let job = self.running_job(job_id)?;
                if !job.stage_ready(*stage as usize) {
                    return Err(ApplyError::Illegal(format!(
                        "job {job_id} stage {stage} is not ready"
                    )));
                }
                let t = Self::task_mut(job, *stage, *task)?;
                if t.state != TaskState::Pending || *attempt != t.attempts + 1 {
                    return Err(ApplyError::Illegal(format!(
                        "launch of job {job_id} stage {stage} task {task} attempt {attempt} from {:?}",
                        t.state
                    )));
                }
                t.attempts = *attempt;
                t.state = TaskState::Running {
                    attempt: *attempt,
                    worker_id: worker_id.clone(),
                    started_ms: *at_ms,
                };
                self.count_attempt(worker_id);
                Ok(Outcome::Done)
            }
            Command::ReplanStage {
                job_id,
                stage,
                tasks,
                decisions,
                pre_merge,
            } => {
                let job = self.running_job(job_id)?;
                let pre_merge_stage = if pre_merge.is_empty() {
                    None
                } else {
                    Some(pre_merge_stage(job, *stage, tasks, pre_merge)?)
                };
                let st = job.stages.get_mut(*stage as usize).ok_or_else(|| {
                    ApplyError::Illegal(format!("job {job_id} has no stage {stage}"))
                })?;
                if !st.replanned.is_empty() {
                    return Err(ApplyError::Illegal(format!(
                        "job {job_id} stage {stage} was already re-planned"
                    )));
                }
                if tasks.is_empty() || st.tasks.iter().any(|t| t.attempts > 0) {
                    return Err(ApplyError::Illegal(format!(
                        "job {job_id} stage {stage} cannot be re-planned: it has started or the plan has no tasks"
                    )));
                }
                st.tasks = tasks
                    .iter()
                    .map(|r| Task {
                        reads: Some(r.clone()),
                        ..Task::new()
                    })
                    .collect();
                let mut ids = vec![];
                for d in decisions {
                    self.push_decision(d.clone());
                    ids.push(self.last_decision_id);
                }
                let job = self.running_job(job_id)?;
                job.stages[*stage as usize].replanned = ids.clone();
                if let Some(mut p) = pre_merge_stage {
                    let id = job.stages.len() as u32;
                    let st = &mut job.stages[*stage as usize];
                    st.plan.inputs.push(id);
                    st.plan.pre_merge = None;
                    p.replanned = ids;
                    job.stages.push(p);
                }
                Ok(Outcome::Done)
            }
            Command::BroadcastJoin {
                job_id,
                stage,
                decision,
            } => {
                let job = self.running_job(job_id)?;
                let si = *stage as usize;
                let illegal = |why: &str| {
                    ApplyError::Illegal(format!(
                        "job {job_id} stage {stage} cannot run as a broadcast join: {why}"
                    ))
                };
                let st = job.stages.get(si).ok_or_else(|| illegal("no such stage"))?;
                let b = st
                    .plan
                    .broadcast
                    .clone()
                    .ok_or_else(|| illegal("it has no broadcast plan"))?;
                if !st.unstarted() {
                    return Err(illegal("it was re-planned or has started"));
                }
                if !job
                    .stages
                    .get(b.fused as usize)
                    .is_some_and(Stage::unstarted)
                {
                    return Err(illegal("the probe side's stage has started"));
                }
                if !job
                    .stages
                    .get(b.build as usize)
                    .is_some_and(Stage::is_complete)
                {
                    return Err(illegal("its build side is not complete"));
                }
                self.push_decision(decision.clone());
                let id = self.last_decision_id;
                let job = self.running_job(job_id)?;
                let st = &mut job.stages[si];
                st.plan.plan = b.plan;
                st.plan.display = b.display;
                st.plan.tasks = b.tasks;
                st.plan.inputs = b.inputs;
                st.plan.join = None;
                st.plan.broadcast = None;
                st.tasks = (0..b.tasks).map(|_| Task::new()).collect();
                st.replanned = vec![id];
                let fused = &mut job.stages[b.fused as usize];
                fused.tasks.clear();
                fused.replanned = vec![id];
                Ok(Outcome::Done)
            }
            Command::ReduceProbe {
                job_id,
                stage,
                decision,
            } => {
                let job = self.running_job(job_id)?;
                let illegal = |why: &str| {
                    ApplyError::Illegal(format!(
                        "job {job_id} stage {stage} cannot filter by its join's build side: {why}"
                    ))
                };
                let st = job
                    .stages
                    .get(*stage as usize)
                    .ok_or_else(|| illegal("no such stage"))?;
                let r = st
                    .plan
                    .reduce
                    .clone()
                    .ok_or_else(|| illegal("it has no filtered plan"))?;
                if !st.unstarted() {
                    return Err(illegal("it was re-planned or has started"));
                }
                if !job
                    .stages
                    .get(r.build as usize)
                    .is_some_and(Stage::is_complete)
                {
                    return Err(illegal("the build side is not complete"));
                }
                self.push_decision(decision.clone());
                let id = self.last_decision_id;
                let job = self.running_job(job_id)?;
                let st = &mut job.stages[*stage as usize];
                st.plan.plan = r.plan;
                st.plan.display = r.display;
                st.plan.inputs = r.inputs;
                st.plan.reduce = None;
                st.replanned = vec![id];
                Ok(Outcome::Done)
            }
            Command::TaskMemory {
                job_id,
                stage,
                task,
                slots,
            } => {
                let job = self.running_job(job_id)?;
                let t = Self::task_mut(job, *stage, *task)?;
                t.memory_slots = (*slots).max(1);
                Ok(Outcome::Done)
            }
            Command::JobWaiting { job_id, waiting } => {
                let job = self.running_job(job_id)?;
                job.waiting = waiting.clone();
                Ok(Outcome::Done)
            }
            Command::LaunchRefused {
                job_id,
                stage,
                task,
                attempt,
                worker_id,
            } => {
                let job = self.running_job(job_id)?;
                let t = Self::task_mut(job, *stage, *task)?;
                let runs_there = t
                    .running_attempts()
                    .iter()
                    .any(|(a, w, _)| a == attempt && w == worker_id);
                if !runs_there || *attempt != t.attempts {
                    return Err(ApplyError::Illegal(format!(
                        "refusal of job {job_id} stage {stage} task {task} attempt {attempt} on {worker_id} while {:?}",
                        t.state
                    )));
                }
                // the attempt number is reused: the worker never started this one
                t.attempts -= 1;
                let (copy_decision, _) = t.detach_attempt(*attempt);
                if let Some(w) = self.workers.get_mut(worker_id) {
                    w.attempts = w.attempts.saturating_sub(1);
                }
                if let Some(d) = copy_decision {
                    self.append_effect(
                        d,
                        format!("worker {worker_id} refused attempt {attempt} (no free slot)"),
                    );
                }
                Ok(Outcome::TaskRequeued)
            }
            Command::SpeculativeLaunched {
                job_id,
                stage,
                task,
                attempt,
                worker_id,
                at_ms,
                why,
                inputs,
            } => {
                let w = self
                    .workers
                    .get(worker_id)
                    .ok_or_else(|| ApplyError::UnknownWorker(worker_id.clone()))?;
                if w.state != WorkerState::Alive {
                    return Err(ApplyError::Illegal(format!("worker {worker_id} is lost")));
                }
                let decision = self.last_decision_id + 1;
                let job = self.running_job(job_id)?;
                if !job.stage_ready(*stage as usize) {
                    return Err(ApplyError::Illegal(format!(
                        "job {job_id} stage {stage} is not ready: a copy would miss inputs"
                    )));
                }
                let t = Self::task_mut(job, *stage, *task)?;
                let original = match &t.state {
                    TaskState::Running { worker_id: w, .. }
                        if t.speculative.is_none()
                            && *attempt == t.attempts + 1
                            && w != worker_id =>
                    {
                        w.clone()
                    }
                    other => {
                        return Err(ApplyError::Illegal(format!(
                            "speculative launch of job {job_id} stage {stage} task {task} attempt {attempt} on {worker_id} while {other:?} (copy: {:?})",
                            t.speculative
                        )))
                    }
                };
                t.attempts = *attempt;
                t.speculative = Some(SpeculativeCopy {
                    attempt: *attempt,
                    worker_id: worker_id.clone(),
                    started_ms: *at_ms,
                    decision,
                });
                self.count_attempt(worker_id);
                self.push_decision(Decision {
                    id: 0,
                    at_ms: *at_ms,
                    job_id: job_id.clone(),
                    kind: DecisionKind::Speculation,
                    what: format!(
                        "launched a speculative copy of stage {stage} task {task} (attempt {attempt}) on worker {worker_id}, beside the original on {original}"
                    ),
                    why: why.clone(),
                    inputs: inputs.clone(),
                    effect: None,
                });
                Ok(Outcome::Done)
            }
            Command::RecordDecision { decision } => {
                // the fleet's decisions (`scale_up`, `scale_down`) belong to no job
                let cluster = matches!(
                    decision.kind,
                    DecisionKind::ScaleUp | DecisionKind::ScaleDown
                ) && decision.job_id.is_empty();
                if !cluster {
                    self.job_mut(&decision.job_id)?;
                }
                self.push_decision(decision.clone());
                // a scan stage that finished before its decision was recorded
                if decision.kind == DecisionKind::InputSplits {
                    let stages = decision.inputs.get("scan_stages").cloned();
                    for st in stages.iter().flat_map(|v| v.split(',')) {
                        if let Ok(st) = st.parse() {
                            self.note_scan_stage(&decision.job_id, st);
                        }
                    }
                }
                Ok(Outcome::Done)
            }
            Command::TaskSucceeded {
                job_id,
                stage,
                task,
                attempt,
                result,
                at_ms,
            } => {
                let job = self.running_job(job_id)?;
                let t = Self::task_mut(job, *stage, *task)?;
                // the winner, and the other attempt still running (the loser)
                let (winner, loser) = match (&t.state, &t.speculative) {
                    (
                        TaskState::Running {
                            attempt: a,
                            worker_id,
                            started_ms,
                        },
                        copy,
                    ) if a == attempt => (
                        (worker_id.clone(), *started_ms),
                        copy.as_ref()
                            .map(|c| (c.worker_id.clone(), c.attempt, c.started_ms)),
                    ),
                    (
                        TaskState::Running {
                            attempt: a,
                            worker_id,
                            started_ms,
                        },
                        Some(c),
                    ) if c.attempt == *attempt => (
                        (c.worker_id.clone(), c.started_ms),
                        Some((worker_id.clone(), *a, *started_ms)),
                    ),
                    (other, _) => {
                        return Err(ApplyError::Illegal(format!(
                            "success of job {job_id} stage {stage} task {task} attempt {attempt} while {other:?}"
                        )))
                    }
                };
                let copy = t.speculative.take();
                let promoted = t.promoted.take();
                let memory_slots = t.memory_slots;
                t.state = TaskState::Succeeded {
                    attempt: *attempt,
                    worker_id: winner.0,
                    result: result.clone(),
                    started_ms: winner.1,
                    finished_ms: *at_ms,
                };
                if memory_slots > 1 {
                    let (st, tk) = (stage.to_string(), task.to_string());
                    let open = self.decisions.iter_mut().rev().find(|d| {
                        d.kind == DecisionKind::MemoryRetry
                            && d.job_id == *job_id
                            && d.effect.is_none()
                            && d.inputs.get("stage") == Some(&st)
                            && d.inputs.get("task") == Some(&tk)
                    });
                    if let Some(d) = open {
                        d.effect = Some(format!(
                            "the attempt with {memory_slots} slots' memory succeeded in {} ms",
                            at_ms.saturating_sub(winner.1)
                        ));
                    }
                }
                self.measure_replan(job_id, *stage);
                self.note_scan_stage(job_id, *stage);
                self.measure_splits(job_id, *stage);
                let Some(copy) = copy else {
                    if let Some(d) = promoted {
                        self.append_effect(
                            d,
                            format!(
                                "the copy then finished, {} ms after its launch",
                                at_ms.saturating_sub(winner.1)
                            ),
                        );
                    }
                    return Ok(Outcome::Done);
                };
                let (loser_worker, loser_attempt, loser_started) =
                    loser.expect("a copy ran beside the winner");
                let effect = if copy.attempt == *attempt {
                    format!(
                        "the copy won: it took {} ms, while the original had run {} ms without finishing; the original was cancelled",
                        at_ms.saturating_sub(copy.started_ms),
                        at_ms.saturating_sub(loser_started),
                    )
                } else {
                    format!(
                        "the original finished first ({} ms in all, {} ms after the copy started); the copy was cancelled, its output discarded",
                        at_ms.saturating_sub(winner.1),
                        at_ms.saturating_sub(copy.started_ms),
                    )
                };
                self.set_effect(copy.decision, effect);
                Ok(Outcome::Superseded {
                    worker_id: loser_worker,
                    attempt: loser_attempt,
                })
            }
            Command::TaskFailed {
                job_id,
                stage,
                task,
                attempt,
                error,
                retryable,
                retry_at_ms,
                at_ms,
                retry_limit,
            } => {
                let job = self.running_job(job_id)?;
                let max_attempts = job.spec.job.params.max_task_attempts();
                let t = Self::task_mut(job, *stage, *task)?;
                let Some(failed_worker) = t
                    .running_attempts()
                    .into_iter()
                    .find(|(a, _, _)| a == attempt)
                    .map(|(_, w, _)| w.to_string())
                else {
                    return Err(ApplyError::Illegal(format!(
                        "failure of job {job_id} stage {stage} task {task} attempt {attempt} while {:?}",
                        t.state
                    )));
                };
                t.last_error = Some(error.clone());
                // the other attempt of a speculated task goes on
                let (copy_decision, still_running) = t.detach_attempt(*attempt);
                if !still_running {
                    t.not_before_ms = *retry_at_ms;
                }
                // A reducer that could not read a map output is not at fault (Spark's
                // FetchFailed): the output is recomputed and the reducer waits for it,
                // without spending one of its attempts. Nor is an attempt whose worker
                // did not answer the launch.
                // ... up to a point: a reducer that keeps failing to fetch (two workers
                // that cannot reach each other) is charged after MAX_SPARED_FETCH_FAILURES
                // (Spark fails the stage after 4 consecutive attempts)
                let fetch_spared = error.fetch_failed.is_some() && {
                    let t = Self::task_mut(job, *stage, *task)?;
                    t.fetch_failures += 1;
                    t.fetch_failures <= MAX_SPARED_FETCH_FAILURES
                };
                let spared = fetch_spared || error.worker_unreachable;
                if let Some(f) = &error.fetch_failed {
                    // only a stage this one reads (a pre-merge stage comes after it)
                    let reads_it = job
                        .stages
                        .get(*stage as usize)
                        .is_some_and(|st| st.plan.inputs.contains(&f.stage));
                    let lost = job
                        .stages
                        .get_mut(f.stage as usize)
                        .filter(|_| reads_it)
                        .and_then(|st| st.tasks.get_mut(f.map_task as usize));
                    if let Some(m) = lost {
                        if matches!(&m.state, TaskState::Succeeded { worker_id, .. } if *worker_id == f.worker_id)
                        {
                            m.state = TaskState::Pending;
                            // recomputed elsewhere when another worker can take it
                            if !m.failed_on.contains(&f.worker_id) {
                                m.failed_on.push(f.worker_id.clone());
                            }
                        }
                    }
                }
                let mut fails_job = false;
                if !spared {
                    let t = Self::task_mut(job, *stage, *task)?;
                    t.failures += 1;
                    if !t.failed_on.contains(&failed_worker) {
                        t.failed_on.push(failed_worker.clone());
                    }
                    let failures = t.failures;
                    if *retryable {
                        if let Some(w) = self.workers.get_mut(&failed_worker) {
                            w.transient_failures += 1;
                        }
                    }
                    let limit = self.adapt_retry_limit(
                        job_id,
                        (*stage, *task, failures),
                        &failed_worker,
                        error,
                        *retry_at_ms,
                        retry_limit.as_ref(),
                    );
                    // out of attempts, unless the other attempt still runs (it may yet
                    // succeed); a permanent error fails the job either way
                    fails_job = !*retryable || (failures >= limit && !still_running);
                }
                if let Some(d) = copy_decision {
                    self.append_effect(
                        d,
                        format!(
                            "attempt {attempt} failed ({}){}",
                            error.message,
                            if fails_job {
                                ""
                            } else {
                                "; the other attempt carries on"
                            }
                        ),
                    );
                }
                if !fails_job {
                    return Ok(Outcome::TaskRequeued);
                }
                let job = self.jobs.get_mut(job_id).expect("checked above");
                let failures = job.stages[*stage as usize].tasks[*task as usize].failures;
                let limit = job.max_attempts.unwrap_or(max_attempts);
                let mut err = error.clone();
                if *retryable {
                    err.message = format!(
                        "stage {stage} task {task} failed {failures} times (attempt limit {limit}{}); last error: {}",
                        if limit == max_attempts { format!(", max_task_attempts = {max_attempts}") } else { format!(", adapted from max_task_attempts = {max_attempts}") },
                        error.message
                    );
                }
                job.state = JobState::Failed;
                job.error = Some(err);
                job.finished_ms = *at_ms;
                release_plans(job);
                self.close_retry_decisions(job_id, "the job failed");
                Ok(Outcome::JobChanged(job_id.clone(), JobState::Failed))
            }
            Command::JobCommitting { job_id } => {
                let job = self.running_job(job_id)?;
                if !job.stages.iter().all(Stage::is_complete) {
                    return Err(ApplyError::Illegal(format!(
                        "job {job_id} cannot commit before all stages complete"
                    )));
                }
                job.state = JobState::Committing;
                Ok(Outcome::JobChanged(job_id.clone(), JobState::Committing))
            }
            Command::JobSucceeded {
                job_id,
                files,
                at_ms,
            } => {
                let job = self.job_mut(job_id)?;
                if job.state != JobState::Committing {
                    return Err(ApplyError::Illegal(format!(
                        "job {job_id} succeeded while {:?}",
                        job.state
                    )));
                }
                job.state = JobState::Succeeded;
                job.committed_files = files.clone();
                job.finished_ms = *at_ms;
                let delta = job.spec.sink.format == autopipe_common::spec::Format::Delta;
                let (table, bytes) = (job.spec.sink.path.clone(), job.sink_stage().bytes_out());
                let compaction = job.compaction.is_some();
                release_plans(job);
                if delta && !files.is_empty() {
                    // the table's running counts (write amplification)
                    let t = self.tables.entry(table.clone()).or_insert_with(|| {
                        crate::optimizer::compaction::TableFiles {
                            url: table,
                            ..Default::default()
                        }
                    });
                    if compaction {
                        t.compacted_bytes += bytes;
                        t.compactions += 1;
                    } else {
                        t.appended_bytes += bytes;
                    }
                }
                self.close_retry_decisions(job_id, "the job succeeded");
                Ok(Outcome::JobChanged(job_id.clone(), JobState::Succeeded))
            }
            Command::JobFailed {
                job_id,
                error,
                at_ms,
            } => {
                let job = self.job_mut(job_id)?;
                if job.state.is_terminal() {
                    return Err(ApplyError::Illegal(format!(
                        "job {job_id} failed while {:?}",
                        job.state
                    )));
                }
                job.state = JobState::Failed;
                job.error = Some(error.clone());
                job.finished_ms = *at_ms;
                release_plans(job);
                self.close_retry_decisions(job_id, "the job failed");
                Ok(Outcome::JobChanged(job_id.clone(), JobState::Failed))
            }
            Command::CancelJob { job_id, at_ms } => {
                let job = self.job_mut(job_id)?;
                if job.state.is_terminal() || job.state == JobState::Committing {
                    return Err(ApplyError::Illegal(format!(
                        "job {job_id} cannot be cancelled while {:?}",
                        job.state
                    )));
                }
                job.state = JobState::Cancelled;
                job.finished_ms = *at_ms;
                release_plans(job);
                self.close_retry_decisions(job_id, "the job was cancelled");
                Ok(Outcome::JobChanged(job_id.clone(), JobState::Cancelled))
            }
            Command::JobCleaned { job_id } => {
                let job = self.job_mut(job_id)?;
                if !job.state.is_terminal() {
                    return Err(ApplyError::Illegal(format!(
                        "job {job_id} cannot be cleaned up while {:?}",
                        job.state
                    )));
                }
                job.cleaned = true;
                Ok(Outcome::Done)
            }
            Command::ForgetJobs { job_ids, .. } => {
                let forget: std::collections::BTreeSet<&String> = job_ids
                    .iter()
                    .filter(|id| self.jobs.contains_key(*id))
                    .collect();
                if let Some(j) = forget
                    .iter()
                    .find_map(|id| self.jobs.get(*id).filter(|j| !j.state.is_terminal()))
                {
                    return Err(ApplyError::Illegal(format!(
                        "job {} cannot be forgotten while {:?}",
                        j.id, j.state
                    )));
                }
                if forget.is_empty() {
                    return Ok(Outcome::Done);
                }
                for id in &forget {
                    self.jobs.remove(*id);
                }
                self.job_order.retain(|id| !forget.contains(id));
                self.submissions.retain(|_, id| !forget.contains(id));
                self.decisions.retain(|d| !forget.contains(&d.job_id));
                Ok(Outcome::Done)
            }
            Command::WorkerReleased { worker_id, at_ms } => {
                if let Some(why) = self.release_blocker(worker_id) {
                    return Err(ApplyError::Illegal(format!(
                        "worker {worker_id} cannot be released: {why}"
                    )));
                }
                let w = self.workers.get_mut(worker_id).expect("checked above");
                w.state = WorkerState::Released;
                w.lost_ms = *at_ms;
                Ok(Outcome::Done)
            }
            Command::DecisionEffect {
                decision_id,
                effect,
            } => {
                self.set_effect(*decision_id, effect.clone());
                Ok(Outcome::Done)
            }
            Command::WorkerLoad { worker_id, load } => self.on_worker_load(worker_id, load),
            Command::SplitRunningTask { .. } => self.on_split_running_task(cmd),
            Command::StreamCommit { .. } => self.on_stream_commit(cmd),
            Command::StreamPublished { .. } => self.on_stream_published(cmd),
            Command::StreamRescale { .. } => self.on_stream_rescale(cmd),
            Command::StreamWatermarks { .. } => self.on_stream_watermarks(cmd),
            Command::PruneWorkers { worker_ids, .. } => {
                if let Some(w) = worker_ids.iter().find_map(|id| {
                    self.workers
                        .get(id)
                        .filter(|w| w.state == WorkerState::Alive)
                }) {
                    return Err(ApplyError::Illegal(format!(
                        "worker {} cannot be pruned while {:?}",
                        w.id, w.state
                    )));
                }
                for id in worker_ids {
                    self.workers.remove(id);
                }
                Ok(Outcome::Done)
            }
            Command::TableObserved { table } => {
                if let Some(old) = self.tables.get(&table.url) {
                    if old.version > table.version {
                        return Err(ApplyError::Stale(format!(
                            "table {} was observed at version {}, after {}",
                            table.url, old.version, table.version
                        )));
                    }
                }
                // the running counts are the commits' (`JobSucceeded`), not the reader's
                let mut t = table.as_ref().clone();
                if let Some(old) = self.tables.get(&table.url) {
                    t.appended_bytes = old.appended_bytes;
                    t.compacted_bytes = old.compacted_bytes;
                    t.compactions = old.compactions;
                }
                self.tables.insert(table.url.clone(), t);
                Ok(Outcome::Done)
            }
        }
    }

    fn on_worker_load(
        &mut self,
        worker_id: &str,
        load: &super::load::WorkerLoad,
    ) -> Result<Outcome, ApplyError> {
        let w = self
            .workers
            .get_mut(worker_id)
            .ok_or_else(|| ApplyError::UnknownWorker(worker_id.to_string()))?;
        if w.state != WorkerState::Alive {
            return Err(ApplyError::Illegal(format!(
                "worker {worker_id} is {:?}: its load is not recorded",
                w.state
            )));
        }
        w.load = Some(load.clone());
        Ok(Outcome::Done)
    }

    fn job_mut(&mut self, job_id: &str) -> Result<&mut Job, ApplyError> {
        self.jobs
            .get_mut(job_id)
            .ok_or_else(|| ApplyError::UnknownJob(job_id.to_string()))
    }

    fn running_job(&mut self, job_id: &str) -> Result<&mut Job, ApplyError> {
        let job = self.job_mut(job_id)?;
        if job.state != JobState::Running {
            return Err(ApplyError::Illegal(format!(
                "job {job_id} is {:?}, not running",
                job.state
            )));
        }
        Ok(job)
    }

    fn task_mut(job: &mut Job, stage: u32, task: u32) -> Result<&mut Task, ApplyError> {
        let id = job.id.clone();
        job.stages
            .get_mut(stage as usize)
            .and_then(|s| s.tasks.get_mut(task as usize))
            .ok_or(ApplyError::UnknownTask {
                job: id,
                stage,
                task,
            })
    }

    /// The one code path for a lost worker: its running tasks go back to pending and
    /// map outputs that lived only on it are recomputed if a running job still needs them.
    fn forget_worker_outputs(&mut self, worker_id: &str) {
        let mut effects = vec![];
        for job in self.jobs.values_mut() {
            if job.state != JobState::Running {
                continue;
            }
            for stage in job.stages.iter_mut() {
                let sink = stage.plan.shuffle_partitions.is_none();
                for t in &mut stage.tasks {
                    let lost_attempt = t
                        .running_attempts()
                        .into_iter()
                        .find(|(_, w, _)| *w == worker_id)
                        .map(|(a, _, _)| a);
                    if let Some(a) = lost_attempt {
                        match t.detach_attempt(a) {
                            (Some(d), true) => effects.push((d, format!("attempt {a}'s worker {worker_id} was lost; the other attempt carries on"))),
                            (Some(d), false) => effects.push((d, format!("attempt {a}'s worker {worker_id} was lost; the task is retried"))),
                            _ => {}
                        }
                        continue;
                    }
                    // sink outputs are in staging storage, not on the worker
                    if matches!(&t.state, TaskState::Succeeded { worker_id: w, .. } if w == worker_id && !sink)
                    {
                        t.state = TaskState::Pending;
                    }
                }
            }
        }
        for (d, e) in effects {
            self.append_effect(d, e);
        }
    }

    fn count_attempt(&mut self, worker_id: &str) {
        if let Some(w) = self.workers.get_mut(worker_id) {
            w.attempts += 1;
        }
    }

    /// Counts a failure of task `(stage, task)` (now at `failures`) on `worker` by
    /// cause, applies the retry-limit rule's `outcome` for it (`optimizer::retry_limit`:
    /// a new limit and its decision, worked out by the proposer), and returns the
    /// job's per-task attempt limit in force. A command from before the rule was one
    /// carries no outcome: the rule runs here, as it did when it was written.
    ///
    /// Off when the job pins `max_task_attempts` or sets `adaptive_retries = false`.
    fn adapt_retry_limit(
        &mut self,
        job_id: &str,
        (stage, task, failures): (u32, u32, u32),
        worker: &str,
        error: &ErrorRecord,
        at_ms: u64,
        outcome: Option<&super::commands::RetryLimitOutcome>,
    ) -> u32 {
        let Some(job) = self.jobs.get_mut(job_id) else {
            return 1;
        };
        let params = &job.spec.job.params;
        let configured = params.max_task_attempts();
        let limit = job.max_attempts.unwrap_or(configured);
        if params.max_task_attempts.is_some() || params.adaptive_retries == Some(false) {
            return limit;
        }
        let cause = format!("{}: {}", error.class, mask_numbers(&error.message));
        let entry = job.failure_causes.entry(cause.clone()).or_default();
        entry.0 += 1;
        if !entry.1.iter().any(|w| w == worker) {
            entry.1.push(worker.to_string());
        }
        let (count, workers) = (entry.0, entry.1.len());
        if let Some(o) = outcome {
            // a stale outcome (the limit changed since it was worked out) is dropped
            let Some(c) = o.change.as_ref().filter(|c| c.from == limit) else {
                return limit;
            };
            job.max_attempts = Some(c.to);
            self.push_decision(c.decision.clone());
            return c.to;
        }
        let (attempts, transient) = self
            .workers
            .get(worker)
            .map(|w| (w.attempts, w.transient_failures))
            .unwrap_or((0, 0));
        let seen = crate::optimizer::retry_limit::Seen {
            cause: &cause,
            cause_failures: count,
            cause_workers: workers,
            worker,
            worker_attempts: attempts,
            worker_transient_failures: transient,
            error_class: &error.class,
            stage,
            task,
            task_failures: failures,
        };
        let Some(crate::optimizer::retry_limit::NewLimit {
            limit: new_limit,
            why,
            inputs,
        }) = crate::optimizer::retry_limit::adapt(limit, configured, &seen)
        else {
            return limit;
        };
        let job = self.jobs.get_mut(job_id).expect("looked up above");
        job.max_attempts = Some(new_limit);
        self.push_decision(Decision {
            id: 0,
            at_ms,
            job_id: job_id.to_string(),
            kind: DecisionKind::RetryLimit,
            what: format!(
                "{} the job's per-task attempt limit from {limit} to {new_limit}",
                if new_limit < limit {
                    "lowered"
                } else {
                    "raised"
                }
            ),
            why,
            inputs,
            effect: None,
        });
        new_limit
    }

    /// Gives the job's open decisions their effect when it ends: for retry limits,
    /// how it ended and after how many attempts.
    fn close_retry_decisions(&mut self, job_id: &str, how: &str) {
        let Some(job) = self.jobs.get(job_id) else {
            return;
        };
        let attempts: u32 = job
            .stages
            .iter()
            .flat_map(|s| s.tasks.iter())
            .map(|t| t.attempts)
            .sum();
        let failures: u32 = job
            .stages
            .iter()
            .flat_map(|s| s.tasks.iter())
            .map(|t| t.failures)
            .sum();
        let effect = format!("{how} after {attempts} task attempts ({failures} failed)");
        for d in self.decisions.iter_mut().rev() {
            // a compaction's effect is measured on the table after its commit
            // (`scheduler::compaction`)
            if d.job_id == job_id && d.effect.is_none() && d.kind != DecisionKind::Compaction {
                d.effect = Some(match d.kind {
                    DecisionKind::RetryLimit => effect.clone(),
                    _ => format!("{how} before its outcome was known"),
                });
            }
        }
    }

    /// When the last task of a stage that scans sources succeeds, adds what its tasks
    /// read and took to the job's `input_splits` decision (the rule's measured effect).
    fn note_scan_stage(&mut self, job_id: &str, stage: u32) {
        let Some(st) = self
            .jobs
            .get(job_id)
            .and_then(|j| j.stages.get(stage as usize))
        else {
            return;
        };
        let (mut bytes, mut ms) = (vec![], vec![]);
        for t in &st.tasks {
            match &t.state {
                TaskState::Succeeded {
                    result,
                    started_ms,
                    finished_ms,
                    ..
                } => {
                    bytes.push(result.bytes_in);
                    ms.push(finished_ms.saturating_sub(*started_ms));
                }
                _ => return,
            }
        }
        if bytes.is_empty() {
            return;
        }
        let (stage_id, tag) = (stage.to_string(), format!("stage {stage}: "));
        let Some(d) = self.decisions.iter().rev().find(|d| {
            d.kind == DecisionKind::InputSplits
                && d.job_id == job_id
                && d.inputs
                    .get("scan_stages")
                    .is_some_and(|v| v.split(',').any(|s| s == stage_id))
        }) else {
            return;
        };
        if d.effect.as_deref().is_some_and(|e| e.contains(&tag)) {
            return;
        }
        let id = d.id;
        let spread = |v: &mut Vec<u64>| {
            v.sort_unstable();
            format!("{}/{}/{}", v[0], v[v.len() / 2], v[v.len() - 1])
        };
        let total: u64 = bytes.iter().sum();
        let line = format!(
            "{tag}{} scan task(s) read {total} bytes (per task min/median/max {} bytes) in {} ms each",
            bytes.len(),
            spread(&mut bytes),
            spread(&mut ms),
        );
        self.append_effect(id, line);
    }

    fn push_decision(&mut self, mut d: Decision) {
        self.last_decision_id += 1;
        d.id = self.last_decision_id;
        self.decisions.push(d);
        if self.decisions.len() > MAX_DECISIONS {
            let extra = self.decisions.len() - MAX_DECISIONS;
            self.decisions.drain(..extra);
        }
    }

    /// Once a re-planned stage completes, its decisions' measured effect: how many
    /// tasks ran, their time spread (max / median, what skew splitting aims to bring
    /// down) and the stage's wall time.
    fn measure_replan(&mut self, job_id: &str, stage: u32) {
        let Some(st) = self
            .jobs
            .get(job_id)
            .and_then(|j| j.stages.get(stage as usize))
        else {
            return;
        };
        if st.replanned.is_empty() || !st.is_complete() {
            return;
        }
        let mut times = vec![];
        let (mut first, mut last) = (u64::MAX, 0);
        for t in &st.tasks {
            if let TaskState::Succeeded {
                started_ms,
                finished_ms,
                ..
            } = t.state
            {
                times.push(finished_ms.saturating_sub(started_ms));
                first = first.min(started_ms);
                last = last.max(finished_ms);
            }
        }
        if times.is_empty() {
            return;
        }
        times.sort_unstable();
        let median = times[times.len() / 2];
        let max = *times.last().unwrap_or(&0);
        let effect = format!(
            "the stage ran {} tasks (planned {}): task time min/median/max {}/{}/{} ms, max/median {:.1}; stage wall time {} ms",
            st.tasks.len(),
            st.plan.tasks,
            times.first().unwrap_or(&0),
            median,
            max,
            max as f64 / median.max(1) as f64,
            last.saturating_sub(first)
        );
        for id in st.replanned.clone() {
            self.set_effect(id, effect.clone());
        }
    }

    /// Adds to a decision's measured effect (what happened next).
    fn append_effect(&mut self, id: u64, more: String) {
        if let Some(d) = self.decisions.iter_mut().rev().find(|d| d.id == id) {
            d.effect = Some(match d.effect.take() {
                Some(e) => format!("{e}; {more}"),
                None => more,
            });
        }
    }

    /// Records a decision's measured effect (ignored if it left the log).
    fn set_effect(&mut self, id: u64, effect: String) {
        if let Some(d) = self.decisions.iter_mut().rev().find(|d| d.id == id) {
            d.effect = Some(effect);
        }
    }

    /// Whether attempt `key` of a running job runs on `worker_id`.
    pub fn attempt_runs(&self, key: &autopipe_proto::TaskKey, worker_id: &str) -> bool {
        self.jobs
            .get(&key.job_id)
            .filter(|j| j.state == JobState::Running)
            .and_then(|j| j.stages.get(key.stage_id as usize))
            .and_then(|st| st.tasks.get(key.task as usize))
            .is_some_and(|t| {
                t.running_attempts()
                    .iter()
                    .any(|(a, w, _)| *a == key.attempt && *w == worker_id)
            })
    }

    /// Why worker `worker_id` cannot leave the fleet now (`None`: it can): it is not
    /// alive, an attempt of a running job runs there, or it holds the map output of a
    /// stage that an unfinished job has yet to read (a consumer stage not complete).
    pub fn release_blocker(&self, worker_id: &str) -> Option<String> {
        match self.workers.get(worker_id) {
            None => return Some(format!("worker {worker_id} does not exist")),
            Some(w) if w.state != WorkerState::Alive => {
                return Some(format!("it is {:?}, not alive", w.state))
            }
            Some(_) => {}
        }
        for job in self.jobs.values().filter(|j| !j.state.is_terminal()) {
            for (si, stage) in job.stages.iter().enumerate() {
                let read_later = stage.plan.shuffle_partitions.is_some()
                    && job
                        .stages
                        .iter()
                        .any(|c| c.plan.inputs.contains(&(si as u32)) && !c.is_complete());
                for (ti, t) in stage.tasks.iter().enumerate() {
                    if job.state == JobState::Running
                        && t.running_attempts().iter().any(|(_, w, _)| *w == worker_id)
                    {
                        return Some(format!("job {} stage {si} task {ti} runs there", job.id));
                    }
                    if read_later
                        && matches!(&t.state, TaskState::Succeeded { worker_id: w, .. } if w == worker_id)
                    {
                        return Some(format!(
                            "it holds the map output of job {} stage {si} task {ti}, which the job has yet to read",
                            job.id
                        ));
                    }
                }
            }
        }
        None
    }

    /// Task slots taken per worker (an attempt takes its task's `memory_slots`),
    /// counted in one pass over the running jobs.
    pub fn running_per_worker(&self) -> BTreeMap<&str, u32> {
        let mut out = BTreeMap::new();
        for t in self
            .jobs
            .values()
            .filter(|j| j.state == JobState::Running)
            .flat_map(|j| j.stages.iter())
            .flat_map(|s| s.tasks.iter())
        {
            for (_, worker_id, _) in t.running_attempts() {
                let slots = self.workers.get(worker_id).map(|w| w.slots).unwrap_or(1);
                *out.entry(worker_id).or_insert(0) += t.memory_slots.clamp(1, slots.max(1));
            }
        }
        out
    }
}

/// A failure message with its numbers (ports, ids, attempt and task numbers) masked,
/// so the same cause on different tasks and workers compares equal.
fn mask_numbers(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut in_num = false;
    for c in msg.chars() {
        if c.is_ascii_hexdigit() && (c.is_ascii_digit() || in_num) {
            if !in_num {
                out.push('#');
                in_num = true;
            }
        } else {
            in_num = false;
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::decision::inputs;

    fn two_stage_state() -> State {
        two_workers_and_job(2)
    }

    /// Workers w1 and w2 (2 slots each) and `test_job(map_tasks)`.
    fn two_workers_and_job(map_tasks: u32) -> State {
        let mut s = State::default();
        for w in ["w1", "w2"] {
            s.apply(&Command::RegisterWorker {
                worker_id: w.into(),
                address: format!("{w}:1"),
                http_address: String::new(),
                slots: 2,
                at_ms: 0,
                shuffle: Default::default(),
            })
            .unwrap();
        }
        s.apply(&crate::state::test_job(map_tasks)).unwrap();
        s
    }

    fn launch(
        s: &mut State,
        stage: u32,
        task: u32,
        attempt: u32,
        w: &str,
    ) -> Result<Outcome, ApplyError> {
        crate::state::test_launch(s, (stage, task, attempt), w, 2)
    }

    fn succeed(s: &mut State, stage: u32, task: u32, attempt: u32) -> Result<Outcome, ApplyError> {
        crate::state::test_succeed(s, (stage, task, attempt), 7)
    }

    fn refused(s: &mut State, task: u32, attempt: u32, w: &str) -> Result<Outcome, ApplyError> {
        s.apply(&Command::LaunchRefused {
            job_id: "j".into(),
            stage: 0,
            task,
            attempt,
            worker_id: w.into(),
        })
    }

    #[test]
    fn a_refused_launch_is_not_an_attempt_and_its_number_is_reused() {
        let mut s = two_stage_state();
        launch(&mut s, 0, 0, 1, "w1").unwrap();
        assert_eq!(refused(&mut s, 0, 1, "w1"), Ok(Outcome::TaskRequeued));
        let t = &s.jobs["j"].stages[0].tasks[0];
        assert_eq!(
            (&t.state, t.attempts, t.failures),
            (&TaskState::Pending, 0, 0)
        );
        assert_eq!(s.workers["w1"].attempts, 0);
        // the next launch is attempt 1 again
        launch(&mut s, 0, 0, 1, "w2").unwrap();
        // a refusal that is not the running attempt's, or from elsewhere, is illegal
        assert!(refused(&mut s, 0, 1, "w1").is_err());
        assert!(refused(&mut s, 0, 2, "w2").is_err());
        assert!(refused(&mut s, 1, 1, "w2").is_err());
    }

    #[test]
    fn a_job_records_why_it_waits_while_it_runs() {
        let mut s = two_stage_state();
        let waiting = Some(Waiting {
            reason: "no alive worker".into(),
            since_ms: 5,
        });
        let cmd = |w: &Option<Waiting>| Command::JobWaiting {
            job_id: "j".into(),
            waiting: w.clone(),
        };
        s.apply(&cmd(&waiting)).unwrap();
        assert_eq!(s.jobs["j"].waiting, waiting);
        s.apply(&cmd(&None)).unwrap();
        assert_eq!(s.jobs["j"].waiting, None);
        s.apply(&Command::CancelJob {
            job_id: "j".into(),
            at_ms: 9,
        })
        .unwrap();
        assert!(s.apply(&cmd(&waiting)).is_err(), "only a running job waits");
    }

    #[test]
    fn a_succeeded_task_keeps_when_its_winning_attempt_ran() {
        let mut s = two_stage_state();
        launch(&mut s, 0, 0, 1, "w1").unwrap();
        succeed(&mut s, 0, 0, 1).unwrap();
        match &s.jobs["j"].stages[0].tasks[0].state {
            TaskState::Succeeded {
                started_ms,
                finished_ms,
                ..
            } => assert_eq!((*started_ms, *finished_ms), (2, 7)),
            other => panic!("not succeeded: {other:?}"),
        }
    }

    #[test]
    fn a_finished_scan_stage_gives_the_input_splits_decision_its_effect() {
        let mut s = two_stage_state();
        s.apply(&Command::RecordDecision {
            decision: Decision {
                id: 0,
                at_ms: 1,
                job_id: "j".into(),
                kind: DecisionKind::InputSplits,
                what: "planned 2 scan task(s)".into(),
                why: "input_splits".into(),
                inputs: inputs([("scan_stages", "0".to_string())]),
                effect: None,
            },
        })
        .unwrap();
        launch(&mut s, 0, 0, 1, "w1").unwrap();
        launch(&mut s, 0, 1, 1, "w2").unwrap();
        succeed(&mut s, 0, 0, 1).unwrap();
        assert_eq!(s.decisions[0].effect, None, "the stage is not done yet");
        succeed(&mut s, 0, 1, 1).unwrap();
        let effect = s.decisions[0].effect.clone().unwrap();
        assert!(
            effect.starts_with("stage 0: 2 scan task(s) read") && effect.contains("in 5/5/5 ms"),
            "{effect}"
        );
        // stage 1 reads no source: nothing more
        launch(&mut s, 1, 0, 1, "w1").unwrap();
        succeed(&mut s, 1, 0, 1).unwrap();
        assert_eq!(s.decisions[0].effect.as_ref(), Some(&effect));
    }

    #[test]
    fn a_stage_cannot_start_before_its_inputs_complete() {
        let mut s = two_stage_state();
        assert!(launch(&mut s, 1, 0, 1, "w1").is_err());
        launch(&mut s, 0, 0, 1, "w1").unwrap();
        launch(&mut s, 0, 1, 1, "w2").unwrap();
        succeed(&mut s, 0, 0, 1).unwrap();
        assert!(launch(&mut s, 1, 0, 1, "w1").is_err());
        succeed(&mut s, 0, 1, 1).unwrap();
        launch(&mut s, 1, 0, 1, "w1").unwrap();
    }

    #[test]
    fn a_stale_attempt_cannot_report_success() {
        let mut s = two_stage_state();
        launch(&mut s, 0, 0, 1, "w1").unwrap();
        let before = s.clone();
        assert!(succeed(&mut s, 0, 0, 2).is_err());
        assert_eq!(s, before, "a rejected command leaves the state untouched");
    }

    #[test]
    fn transient_failures_retry_until_the_attempt_limit_then_fail_the_job() {
        let mut s = two_stage_state();
        s.jobs
            .get_mut("j")
            .unwrap()
            .spec
            .job
            .params
            .adaptive_retries = Some(false);
        let err = ErrorRecord {
            class: "transient".into(),
            message: "connection reset".into(),
            key: String::new(),
            fetch_failed: None,
            worker_unreachable: false,
        };
        for attempt in 1..=4 {
            launch(&mut s, 0, 0, attempt, "w1").unwrap();
            let out = s
                .apply(&Command::TaskFailed {
                    job_id: "j".into(),
                    stage: 0,
                    task: 0,
                    attempt,
                    error: err.clone(),
                    retryable: true,
                    retry_at_ms: 0,
                    at_ms: 0,
                    retry_limit: None,
                })
                .unwrap();
            if attempt < 4 {
                assert_eq!(out, Outcome::TaskRequeued);
            } else {
                assert_eq!(out, Outcome::JobChanged("j".into(), JobState::Failed));
            }
        }
        let e = s.jobs["j"].error.clone().unwrap();
        assert!(e.message.contains("failed 4 times"), "{}", e.message);
    }

    #[test]
    fn permanent_failure_fails_the_job_at_once() {
        let mut s = two_stage_state();
        launch(&mut s, 0, 0, 1, "w1").unwrap();
        let out = s
            .apply(&Command::TaskFailed {
                job_id: "j".into(),
                stage: 0,
                task: 0,
                attempt: 1,
                error: ErrorRecord {
                    class: "permanent".into(),
                    message: "cast failed".into(),
                    key: String::new(),
                    fetch_failed: None,
                    worker_unreachable: false,
                },
                retryable: false,
                retry_at_ms: 0,
                at_ms: 0,
                retry_limit: None,
            })
            .unwrap();
        assert_eq!(out, Outcome::JobChanged("j".into(), JobState::Failed));
        assert_eq!(s.jobs["j"].error.as_ref().unwrap().message, "cast failed");
    }

    #[test]
    fn a_fetch_failure_recomputes_exactly_that_map_output_and_spares_the_reducer() {
        let mut s = two_stage_state();
        launch(&mut s, 0, 0, 1, "w1").unwrap();
        launch(&mut s, 0, 1, 1, "w2").unwrap();
        succeed(&mut s, 0, 0, 1).unwrap();
        succeed(&mut s, 0, 1, 1).unwrap();
        // more fetch failures than the attempt limit: none counts against the reducer
        for attempt in 1..=5 {
            launch(&mut s, 1, 0, attempt, "w1").unwrap();
            assert_eq!(
                s.apply(&fetch_failure(attempt)).unwrap(),
                Outcome::TaskRequeued
            );
            let st = &s.jobs["j"].stages;
            assert_eq!(st[0].tasks[1].state, TaskState::Pending, "recomputed");
            assert!(matches!(st[0].tasks[0].state, TaskState::Succeeded { .. }));
            assert_eq!(st[1].tasks[0].failures, 0);
            // the output comes back (on w2 again) before the next attempt reads it
            launch(&mut s, 0, 1, attempt + 1, "w2").unwrap();
            succeed(&mut s, 0, 1, attempt + 1).unwrap();
        }
        assert_eq!(s.jobs["j"].state, JobState::Running);
        assert_eq!(
            s.jobs["j"].stages[0].tasks[1].failed_on,
            vec!["w2".to_string()],
            "the recompute avoids the worker that could not serve it"
        );
        // a late fetch failure naming a worker that no longer holds the output (it
        // was recomputed elsewhere meanwhile) leaves the new output alone
        launch(&mut s, 1, 0, 6, "w1").unwrap();
        s.apply(&fetch_failure(6)).unwrap();
        launch(&mut s, 0, 1, 7, "w1").unwrap();
        succeed(&mut s, 0, 1, 7).unwrap();
        launch(&mut s, 1, 0, 7, "w2").unwrap();
        s.apply(&fetch_failure(7)).unwrap();
        assert!(matches!(
            s.jobs["j"].stages[0].tasks[1].state,
            TaskState::Succeeded { .. }
        ));
    }

    #[test]
    fn launches_to_an_unreachable_worker_do_not_spend_attempts() {
        let mut s = two_stage_state();
        for attempt in 1..=6 {
            launch(&mut s, 0, 0, attempt, "w1").unwrap();
            let out = s
                .apply(&Command::TaskFailed {
                    job_id: "j".into(),
                    stage: 0,
                    task: 0,
                    attempt,
                    error: ErrorRecord {
                        class: "transient".into(),
                        message: "tcp connect error".into(),
                        key: String::new(),
                        fetch_failed: None,
                        worker_unreachable: true,
                    },
                    retryable: true,
                    retry_at_ms: 0,
                    at_ms: 0,
                    retry_limit: None,
                })
                .unwrap();
            assert_eq!(out, Outcome::TaskRequeued);
        }
        assert_eq!(s.jobs["j"].stages[0].tasks[0].failures, 0);
        assert_eq!(s.jobs["j"].state, JobState::Running);
    }

    #[test]
    fn losing_a_worker_requeues_its_running_tasks_and_its_map_outputs() {
        let mut s = two_stage_state();
        launch(&mut s, 0, 0, 1, "w1").unwrap();
        launch(&mut s, 0, 1, 1, "w2").unwrap();
        succeed(&mut s, 0, 0, 1).unwrap();
        s.apply(&Command::WorkerLost {
            worker_id: "w1".into(),
            at_ms: 3,
        })
        .unwrap();
        let st = &s.jobs["j"].stages[0];
        assert_eq!(
            st.tasks[0].state,
            TaskState::Pending,
            "map output on w1 is recomputed"
        );
        assert!(matches!(st.tasks[1].state, TaskState::Running { .. }));
        assert!(
            launch(&mut s, 0, 0, 2, "w1").is_err(),
            "a lost worker gets no tasks"
        );
        launch(&mut s, 0, 0, 2, "w2").unwrap();
    }

    fn speculate(s: &mut State, task: u32, attempt: u32, w: &str) -> Result<Outcome, ApplyError> {
        s.apply(&Command::SpeculativeLaunched {
            job_id: "j".into(),
            stage: 0,
            task,
            attempt,
            worker_id: w.into(),
            at_ms: 5,
            why: "slow".into(),
            inputs: Default::default(),
        })
    }

    /// Reducer stage 1 task 0 `attempt` could not fetch map task 1's output from w2.
    fn fetch_failure(attempt: u32) -> Command {
        Command::TaskFailed {
            job_id: "j".into(),
            stage: 1,
            task: 0,
            attempt,
            error: ErrorRecord {
                class: "transient".into(),
                message: "fetch failed".into(),
                key: String::new(),
                fetch_failed: Some(crate::state::FetchFailedRecord {
                    stage: 0,
                    map_task: 1,
                    worker_id: "w2".into(),
                }),
                worker_unreachable: false,
            },
            retryable: true,
            retry_at_ms: 0,
            at_ms: 0,
            retry_limit: None,
        }
    }

    /// Map task `task` attempt `attempt` failed with `class` and `msg`.
    fn failure(task: u32, attempt: u32, class: &str, msg: &str) -> Command {
        Command::TaskFailed {
            job_id: "j".into(),
            stage: 0,
            task,
            attempt,
            error: ErrorRecord {
                class: class.into(),
                message: msg.into(),
                key: String::new(),
                fetch_failed: None,
                worker_unreachable: false,
            },
            retryable: class == "transient",
            retry_at_ms: 0,
            at_ms: 0,
            retry_limit: None,
        }
    }

    fn fail(s: &mut State, task: u32, attempt: u32, class: &str) -> Result<Outcome, ApplyError> {
        s.apply(&failure(task, attempt, class, "boom"))
    }

    #[test]
    fn a_speculative_copy_that_wins_supersedes_the_original_and_records_the_effect() {
        let mut s = two_stage_state();
        launch(&mut s, 0, 0, 1, "w1").unwrap();
        assert!(
            speculate(&mut s, 0, 2, "w1").is_err(),
            "never on the original's worker"
        );
        assert!(
            speculate(&mut s, 0, 3, "w2").is_err(),
            "the next attempt only"
        );
        speculate(&mut s, 0, 2, "w2").unwrap();
        assert!(speculate(&mut s, 0, 3, "w2").is_err(), "one copy at a time");
        assert_eq!(s.running_per_worker().get("w2"), Some(&1));
        assert_eq!(s.decisions.len(), 1);
        assert_eq!(s.decisions[0].kind, DecisionKind::Speculation);
        assert_eq!(s.decisions[0].effect, None);
        let out = succeed(&mut s, 0, 0, 2).unwrap();
        assert_eq!(
            out,
            Outcome::Superseded {
                worker_id: "w1".into(),
                attempt: 1
            }
        );
        let t = &s.jobs["j"].stages[0].tasks[0];
        assert!(
            matches!(&t.state, TaskState::Succeeded { attempt: 2, worker_id, .. } if worker_id == "w2")
        );
        assert!(t.speculative.is_none());
        assert!(s.decisions[0]
            .effect
            .as_deref()
            .unwrap()
            .starts_with("the copy won"));
        // the loser's late report is refused: its output is never used
        assert!(succeed(&mut s, 0, 0, 1).is_err());
    }

    #[test]
    fn when_the_original_wins_the_copy_is_superseded() {
        let mut s = two_stage_state();
        launch(&mut s, 0, 0, 1, "w1").unwrap();
        speculate(&mut s, 0, 2, "w2").unwrap();
        let out = succeed(&mut s, 0, 0, 1).unwrap();
        assert_eq!(
            out,
            Outcome::Superseded {
                worker_id: "w2".into(),
                attempt: 2
            }
        );
        assert!(s.decisions[0]
            .effect
            .as_deref()
            .unwrap()
            .starts_with("the original finished first"));
        assert!(succeed(&mut s, 0, 0, 2).is_err());
    }

    #[test]
    fn a_failed_or_lost_attempt_of_a_speculated_task_leaves_the_other_running() {
        let mut s = two_stage_state();
        launch(&mut s, 0, 0, 1, "w1").unwrap();
        speculate(&mut s, 0, 2, "w2").unwrap();
        // the original fails: the copy is promoted, the failure counted, and the
        // retry of the task avoids w1
        assert_eq!(
            fail(&mut s, 0, 1, "transient").unwrap(),
            Outcome::TaskRequeued
        );
        let t = &s.jobs["j"].stages[0].tasks[0];
        assert!(
            matches!(&t.state, TaskState::Running { attempt: 2, worker_id, .. } if worker_id == "w2")
        );
        assert_eq!(
            (t.failures, t.failed_on.clone()),
            (1, vec!["w1".to_string()])
        );
        assert!(s.decisions[0]
            .effect
            .as_deref()
            .unwrap()
            .contains("carries on"));
        // a second copy, then the copy's worker is lost: the original goes on
        speculate(&mut s, 0, 3, "w1").unwrap();
        s.apply(&Command::WorkerLost {
            worker_id: "w1".into(),
            at_ms: 9,
        })
        .unwrap();
        let t = &s.jobs["j"].stages[0].tasks[0];
        assert!(matches!(t.state, TaskState::Running { attempt: 2, .. }));
        assert!(t.speculative.is_none());
        succeed(&mut s, 0, 0, 2).unwrap();
    }

    #[test]
    fn a_permanent_failure_of_either_attempt_fails_the_job() {
        let mut s = two_stage_state();
        launch(&mut s, 0, 0, 1, "w1").unwrap();
        speculate(&mut s, 0, 2, "w2").unwrap();
        assert_eq!(
            fail(&mut s, 0, 2, "permanent").unwrap(),
            Outcome::JobChanged("j".into(), JobState::Failed)
        );
    }

    #[test]
    fn the_decision_log_numbers_decisions_and_keeps_the_newest() {
        let mut s = two_stage_state();
        let d = |i: u64| Command::RecordDecision {
            decision: Decision {
                id: 0,
                at_ms: i,
                job_id: "j".into(),
                kind: DecisionKind::TaskTimeout,
                what: format!("d{i}"),
                why: String::new(),
                inputs: Default::default(),
                effect: None,
            },
        };
        assert!(s
            .apply(&Command::RecordDecision {
                decision: Decision {
                    job_id: "nope".into(),
                    ..match d(0) {
                        Command::RecordDecision { decision } => decision,
                        _ => unreachable!(),
                    }
                }
            })
            .is_err());
        for i in 0..(MAX_DECISIONS as u64 + 5) {
            s.apply(&d(i)).unwrap();
        }
        assert_eq!(s.decisions.len(), MAX_DECISIONS);
        assert_eq!(s.decisions[0].id, 6);
        assert_eq!(s.last_decision_id, MAX_DECISIONS as u64 + 5);
    }

    fn fail_on(s: &mut State, task: u32, attempt: u32, w: &str, msg: &str) -> Outcome {
        launch(s, 0, task, attempt, w).unwrap();
        s.apply(&failure(task, attempt, "transient", msg)).unwrap()
    }

    #[test]
    fn one_cause_repeating_on_several_workers_lowers_the_attempt_limit() {
        let mut s = two_stage_state();
        // the same missing file, whatever the task or worker
        fail_on(&mut s, 0, 1, "w1", "cannot open /data/part-0001.csv");
        fail_on(&mut s, 1, 1, "w2", "cannot open /data/part-0002.csv");
        assert!(s.decisions.is_empty());
        let out = fail_on(&mut s, 0, 2, "w2", "cannot open /data/part-0001.csv");
        assert_eq!(out, Outcome::JobChanged("j".into(), JobState::Failed));
        let job = &s.jobs["j"];
        assert_eq!(job.max_attempts, Some(2));
        assert!(
            job.error
                .as_ref()
                .unwrap()
                .message
                .contains("attempt limit 2, adapted"),
            "{:?}",
            job.error
        );
        let d = &s.decisions[0];
        assert_eq!(d.kind, DecisionKind::RetryLimit);
        assert!(
            d.what.contains("lowered") && d.what.contains("from 4 to 2"),
            "{}",
            d.what
        );
        assert_eq!(d.inputs["workers"], "2");
        assert_eq!(d.inputs["cause"], "transient: cannot open /data/part-#.csv");
        assert!(d.effect.as_deref().unwrap().starts_with("the job failed"));
    }

    /// The retry-limit rule's outcome is worked out by the proposer and travels in
    /// `TaskFailed`; `apply` follows the command, whatever the rule would say.
    #[test]
    fn the_retry_limit_rule_s_outcome_travels_in_the_command_and_apply_follows_it() {
        let failures = [
            (0, 1, "w1", "cannot open /data/part-0001.csv"),
            (1, 1, "w2", "cannot open /data/part-0002.csv"),
            (0, 2, "w2", "cannot open /data/part-0001.csv"),
        ];
        let mut s = two_stage_state();
        let mut last = None;
        for (task, attempt, w, msg) in failures {
            launch(&mut s, 0, task, attempt, w).unwrap();
            let mut cmd = failure(task, attempt, "transient", msg);
            let o = crate::optimizer::retry_limit::outcome(&s, &cmd);
            assert!(
                s.decisions.is_empty(),
                "the dry run leaves the state as it was"
            );
            if let Command::TaskFailed { retry_limit, .. } = &mut cmd {
                *retry_limit = Some(o.clone());
            }
            last = Some((s.apply(&cmd).unwrap(), o));
        }
        let (out, o) = last.unwrap();
        let c = o.change.expect("the third failure lowers the limit");
        assert_eq!((c.from, c.to), (4, 2));
        assert_eq!(c.decision.kind, DecisionKind::RetryLimit);
        assert_eq!(out, Outcome::JobChanged("j".into(), JobState::Failed));
        assert_eq!(s.jobs["j"].max_attempts, Some(2));
        assert_eq!(s.decisions.len(), 1);
        assert!(s.decisions[0].what.contains("from 4 to 2"));

        // a command that says "no change" is followed: the limit stays
        let mut s = two_stage_state();
        for (task, attempt, w, msg) in failures {
            launch(&mut s, 0, task, attempt, w).unwrap();
            let mut cmd = failure(task, attempt, "transient", msg);
            if let Command::TaskFailed { retry_limit, .. } = &mut cmd {
                *retry_limit = Some(Default::default());
            }
            assert_eq!(s.apply(&cmd).unwrap(), Outcome::TaskRequeued);
        }
        assert_eq!(s.jobs["j"].max_attempts, None);
        assert!(s.decisions.is_empty());
        // and the failures were still counted by cause
        assert_eq!(
            s.jobs["j"].failure_causes["transient: cannot open /data/part-#.csv"].0,
            3
        );
    }

    /// Two failures whose outcomes the leader worked out at once, from the same
    /// limit: the first lowers it, the second (stale) is dropped, one decision.
    #[test]
    fn a_stale_retry_limit_outcome_is_dropped() {
        let mut s = two_workers_and_job(4);
        fail_on(&mut s, 0, 1, "w1", "disk 1 full");
        fail_on(&mut s, 1, 1, "w2", "disk 2 full");
        launch(&mut s, 0, 2, 1, "w1").unwrap();
        launch(&mut s, 0, 3, 1, "w2").unwrap();
        let mut cmds: Vec<Command> = [(2, "disk 3 full"), (3, "disk 4 full")]
            .into_iter()
            .map(|(task, msg)| failure(task, 1, "transient", msg))
            .collect();
        let outcomes: Vec<_> = cmds
            .iter()
            .map(|c| crate::optimizer::retry_limit::outcome(&s, c))
            .collect();
        for (cmd, o) in cmds.iter_mut().zip(outcomes) {
            assert_eq!(o.change.as_ref().map(|c| (c.from, c.to)), Some((4, 2)));
            if let Command::TaskFailed { retry_limit, .. } = cmd {
                *retry_limit = Some(o);
            }
            assert_eq!(s.apply(cmd).unwrap(), Outcome::TaskRequeued);
        }
        assert_eq!(s.jobs["j"].max_attempts, Some(2));
        assert_eq!(s.decisions.len(), 1, "{:?}", s.decisions);
    }

    #[test]
    fn a_worker_with_a_high_transient_failure_rate_raises_the_limit_within_a_bound() {
        let mut s = two_stage_state();
        let mut attempt = 0;
        let out = loop {
            attempt += 1;
            let out = fail_on(
                &mut s,
                0,
                attempt,
                "w1",
                &format!("connection reset {attempt}"),
            );
            if out != Outcome::TaskRequeued {
                break out;
            }
        };
        assert_eq!(out, Outcome::JobChanged("j".into(), JobState::Failed));
        assert_eq!(
            attempt, 8,
            "raised one by one up to twice max_task_attempts"
        );
        let raised: Vec<_> = s
            .decisions
            .iter()
            .filter(|d| d.what.contains("raised"))
            .collect();
        assert_eq!(raised.len(), 4, "4 -> 5 -> 6 -> 7 -> 8");
        assert_eq!(raised[0].inputs["worker_transient_failures"], "4");
        // off when the job pins the limit
        let mut s = two_stage_state();
        s.jobs
            .get_mut("j")
            .unwrap()
            .spec
            .job
            .params
            .max_task_attempts = Some(4);
        for a in 1..=4 {
            fail_on(&mut s, 0, a, "w1", "connection reset");
        }
        assert_eq!(s.jobs["j"].state, JobState::Failed);
        assert!(s.decisions.is_empty());
    }

    #[test]
    fn endless_fetch_failures_are_charged_to_the_reducer_after_a_cap() {
        let mut s = two_stage_state();
        s.jobs
            .get_mut("j")
            .unwrap()
            .spec
            .job
            .params
            .adaptive_retries = Some(false);
        launch(&mut s, 0, 0, 1, "w1").unwrap();
        launch(&mut s, 0, 1, 1, "w2").unwrap();
        succeed(&mut s, 0, 0, 1).unwrap();
        succeed(&mut s, 0, 1, 1).unwrap();
        let mut map_attempt = 1;
        let mut outcome = Outcome::Done;
        for attempt in 1..=(MAX_SPARED_FETCH_FAILURES + 4) {
            launch(&mut s, 1, 0, attempt, "w1").unwrap();
            outcome = s.apply(&fetch_failure(attempt)).unwrap();
            if outcome != Outcome::TaskRequeued {
                break;
            }
            let charged = s.jobs["j"].stages[1].tasks[0].failures;
            assert_eq!(charged, attempt.saturating_sub(MAX_SPARED_FETCH_FAILURES));
            map_attempt += 1;
            launch(&mut s, 0, 1, map_attempt, "w2").unwrap();
            succeed(&mut s, 0, 1, map_attempt).unwrap();
        }
        assert_eq!(outcome, Outcome::JobChanged("j".into(), JobState::Failed));
        let e = s.jobs["j"].error.clone().unwrap();
        assert!(e.message.contains("failed 4 times"), "{}", e.message);
    }

    #[test]
    fn a_submission_key_starts_one_job_only() {
        let mut s = State::default();
        let submit = |job: &str, key: &str| match crate::state::test_job(1) {
            Command::SubmitJob {
                spec,
                stages,
                at_ms,
                ..
            } => Command::SubmitJob {
                job_id: job.into(),
                spec,
                stages,
                at_ms,
                request_id: key.into(),
                request_hash: 0,
                stream: None,
                sink_schema: None,
                compaction: None,
            },
            _ => unreachable!(),
        };
        s.apply(&submit("a", "k1")).unwrap();
        let before = s.clone();
        assert!(s.apply(&submit("b", "k1")).is_err(), "same key, second job");
        assert_eq!(s, before);
        s.apply(&submit("c", "k2")).unwrap();
        s.apply(&submit("d", "")).unwrap();
        s.apply(&submit("e", "")).unwrap();
        assert_eq!(s.submissions["k1"], "a");
        assert_eq!(s.jobs.len(), 4);
    }

    #[test]
    fn a_task_out_of_attempts_lives_on_in_its_copy() {
        let mut s = two_stage_state();
        s.jobs
            .get_mut("j")
            .unwrap()
            .spec
            .job
            .params
            .adaptive_retries = Some(false);
        for a in 1..=3 {
            fail_on(&mut s, 0, a, "w1", "reset");
        }
        launch(&mut s, 0, 0, 4, "w1").unwrap();
        speculate(&mut s, 0, 5, "w2").unwrap();
        // the 4th failure exhausts the task, but its copy still runs
        assert_eq!(
            fail(&mut s, 0, 4, "transient").unwrap(),
            Outcome::TaskRequeued
        );
        assert_eq!(s.jobs["j"].state, JobState::Running);
        succeed(&mut s, 0, 0, 5).unwrap();
        let effect = s.decisions[0].effect.clone().unwrap();
        assert!(
            effect.contains("carries on") && effect.contains("the copy then finished"),
            "{effect}"
        );
        // a job that ends while a copy runs closes its decision
        launch(&mut s, 0, 1, 1, "w1").unwrap();
        speculate(&mut s, 1, 2, "w2").unwrap();
        s.apply(&Command::CancelJob {
            job_id: "j".into(),
            at_ms: 9,
        })
        .unwrap();
        assert!(s.decisions[1]
            .effect
            .as_deref()
            .unwrap()
            .contains("cancelled before its outcome was known"));
    }

    #[test]
    fn commit_requires_every_stage_and_cancel_is_final() {
        let mut s = two_stage_state();
        assert!(s
            .apply(&Command::JobCommitting { job_id: "j".into() })
            .is_err());
        s.apply(&Command::CancelJob {
            job_id: "j".into(),
            at_ms: 5,
        })
        .unwrap();
        assert!(launch(&mut s, 0, 0, 1, "w1").is_err());
        assert!(s
            .apply(&Command::CancelJob {
                job_id: "j".into(),
                at_ms: 6
            })
            .is_err());
    }

    fn register(s: &mut State, w: &str, address: &str, at_ms: u64) -> Result<Outcome, ApplyError> {
        s.apply(&Command::RegisterWorker {
            worker_id: w.into(),
            address: address.into(),
            http_address: String::new(),
            slots: 2,
            at_ms,
            shuffle: Default::default(),
        })
    }

    fn lose(s: &mut State, w: &str, at_ms: u64) -> Result<Outcome, ApplyError> {
        s.apply(&Command::WorkerLost {
            worker_id: w.into(),
            at_ms,
        })
    }

    #[test]
    fn a_lost_worker_registering_under_its_id_is_alive_again_as_one_entry() {
        let mut s = two_stage_state();
        launch(&mut s, 0, 0, 1, "w1").unwrap();
        lose(&mut s, "w1", 5).unwrap();
        assert_eq!(s.workers["w1"].lost_ms, 5);
        register(&mut s, "w1", "w1:2", 9).unwrap();
        assert_eq!(s.workers.len(), 2, "one entry per worker id");
        let w = &s.workers["w1"];
        assert_eq!(
            (
                w.state,
                w.address.as_str(),
                w.registered_ms,
                w.lost_ms,
                w.attempts
            ),
            (WorkerState::Alive, "w1:2", 9, 0, 1)
        );
        // it takes tasks again; the task lost with it starts over as attempt 2
        launch(&mut s, 0, 0, 2, "w1").unwrap();
    }

    #[test]
    fn a_worker_registering_while_alive_restarted_and_loses_its_attempts_and_map_outputs() {
        let mut s = two_stage_state();
        launch(&mut s, 0, 0, 1, "w1").unwrap();
        succeed(&mut s, 0, 0, 1).unwrap();
        launch(&mut s, 0, 1, 1, "w1").unwrap();
        let mut lost = s.clone();
        lose(&mut lost, "w1", 5).unwrap();
        register(&mut s, "w1", "w1:2", 9).unwrap();
        assert_eq!(s.workers["w1"].state, WorkerState::Alive);
        assert_eq!(s.workers["w1"].address, "w1:2");
        // exactly what the lost-worker path does to the jobs
        assert_eq!(s.jobs, lost.jobs);
        let tasks = &s.jobs["j"].stages[0].tasks;
        assert_eq!(tasks[0].state, TaskState::Pending, "its map output is gone");
        assert_eq!(tasks[1].state, TaskState::Pending, "its attempt is gone");
        // the old attempt's late report is refused
        assert!(succeed(&mut s, 0, 1, 1).is_err());
    }

    #[test]
    fn only_lost_workers_are_pruned() {
        let mut s = two_stage_state();
        let prune = |ids: &[&str]| Command::PruneWorkers {
            worker_ids: ids.iter().map(|w| w.to_string()).collect(),
            at_ms: 10,
        };
        let before = s.clone();
        assert!(s.apply(&prune(&["w1"])).is_err());
        assert_eq!(s, before, "an alive worker stays");
        lose(&mut s, "w1", 5).unwrap();
        s.apply(&prune(&["w1", "gone"])).unwrap();
        assert_eq!(s.workers.keys().collect::<Vec<_>>(), ["w2"]);
        // the id may come back as a new worker
        register(&mut s, "w1", "w1:3", 11).unwrap();
        assert_eq!(s.workers["w1"].attempts, 0);
    }

    #[test]
    fn jobs_are_numbered_in_submission_order() {
        let mut s = two_stage_state();
        let Command::SubmitJob { spec, stages, .. } = crate::state::test_job(1) else {
            unreachable!()
        };
        s.apply(&Command::SubmitJob {
            job_id: "k".into(),
            spec,
            stages,
            at_ms: 1,
            request_id: String::new(),
            request_hash: 0,
            stream: None,
            sink_schema: None,
            compaction: None,
        })
        .unwrap();
        assert_eq!(
            (s.jobs["j"].seq, s.jobs["k"].seq, s.last_job_seq),
            (1, 2, 2)
        );
    }

    #[test]
    fn only_a_terminal_job_is_cleaned_up() {
        let mut s = two_stage_state();
        let cleaned = Command::JobCleaned { job_id: "j".into() };
        assert!(s.apply(&cleaned).is_err());
        assert!(!s.jobs["j"].cleaned);
        s.apply(&Command::CancelJob {
            job_id: "j".into(),
            at_ms: 5,
        })
        .unwrap();
        s.apply(&cleaned).unwrap();
        assert!(s.jobs["j"].cleaned);
    }

    #[test]
    fn a_forgotten_job_leaves_with_its_key_and_decisions_and_a_running_job_is_never_forgotten() {
        let mut s = State::default();
        register(&mut s, "w1", "w1:1", 0).unwrap();
        let Command::SubmitJob { spec, stages, .. } = crate::state::test_job(1) else {
            unreachable!()
        };
        for (id, key) in [("a", "ka"), ("b", "kb")] {
            s.apply(&Command::SubmitJob {
                job_id: id.into(),
                spec: spec.clone(),
                stages: stages.clone(),
                at_ms: 1,
                request_id: key.into(),
                request_hash: 0,
                stream: None,
                sink_schema: None,
                compaction: None,
            })
            .unwrap();
            s.apply(&Command::RecordDecision {
                decision: Decision {
                    id: 0,
                    at_ms: 2,
                    job_id: id.into(),
                    kind: DecisionKind::TaskTimeout,
                    what: String::new(),
                    why: String::new(),
                    inputs: Default::default(),
                    effect: None,
                },
            })
            .unwrap();
        }
        let forget = |ids: &[&str]| Command::ForgetJobs {
            job_ids: ids.iter().map(|j| j.to_string()).collect(),
            at_ms: 10,
        };
        let before = s.clone();
        assert!(s.apply(&forget(&["a"])).is_err(), "a running job stays");
        assert_eq!(s, before);
        s.apply(&Command::CancelJob {
            job_id: "a".into(),
            at_ms: 3,
        })
        .unwrap();
        // one running job in the list refuses the whole command
        assert!(s.apply(&forget(&["a", "b"])).is_err());
        s.apply(&forget(&["a", "never-was"])).unwrap();
        assert_eq!(s.jobs.keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!(s.job_order, ["b"]);
        assert_eq!(s.submissions.keys().collect::<Vec<_>>(), ["kb"]);
        assert_eq!(
            s.decisions
                .iter()
                .map(|d| d.job_id.as_str())
                .collect::<Vec<_>>(),
            ["b"]
        );
        // forgetting again changes nothing
        let after = s.clone();
        s.apply(&forget(&["a"])).unwrap();
        assert_eq!(s, after);
    }
}
