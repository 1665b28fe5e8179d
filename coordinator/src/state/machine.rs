//! The replicated state machine: a pure `apply(&mut State, &Command)` with no I/O.
//! Job, stage and task lifecycles are explicit enums; an illegal transition is an
//! error and leaves the state untouched (all checks run before any mutation).

use super::commands::{Command, ErrorRecord, ShuffleHome, StagePlan, TaskResult};
use autopipe_common::spec::PipelineSpec;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
}

/// A stage and its tasks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Stage {
    /// what was planned
    pub plan: StagePlan,
    /// one per partition
    pub tasks: Vec<Task>,
}

impl Stage {
    /// All tasks succeeded.
    pub fn is_complete(&self) -> bool {
        self.tasks
            .iter()
            .all(|t| matches!(t.state, TaskState::Succeeded { .. }))
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
}

impl Job {
    /// The sink stage.
    pub fn sink_stage(&self) -> &Stage {
        self.stages
            .last()
            .expect("a planned job has at least one stage")
    }
    /// Whether a stage's inputs are all complete.
    pub fn stage_ready(&self, stage: usize) -> bool {
        self.stages[stage]
            .plan
            .inputs
            .iter()
            .all(|&i| self.stages[i as usize].is_complete())
    }
}

/// Worker liveness as recorded in the log.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// registered and heartbeating
    Alive,
    /// declared lost; never trusted again (a returning process registers anew)
    Lost,
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
                if self.workers.contains_key(worker_id) {
                    return Err(ApplyError::Illegal(format!(
                        "worker {worker_id} is already registered"
                    )));
                }
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
                    },
                );
                Ok(Outcome::Done)
            }
            Command::WorkerLost { worker_id, .. } => {
                let w = self
                    .workers
                    .get(worker_id)
                    .ok_or_else(|| ApplyError::UnknownWorker(worker_id.clone()))?;
                if w.state == WorkerState::Lost {
                    return Err(ApplyError::Illegal(format!(
                        "worker {worker_id} is already lost"
                    )));
                }
                self.workers
                    .get_mut(worker_id)
                    .expect("checked above")
                    .state = WorkerState::Lost;
                self.forget_worker_outputs(worker_id);
                Ok(Outcome::Done)
            }
            Command::SubmitJob {
                job_id,
                spec,
                stages,
                at_ms,
            } => {
                if self.jobs.contains_key(job_id) {
                    return Err(ApplyError::Illegal(format!("job {job_id} already exists")));
                }
                if stages.is_empty() {
                    return Err(ApplyError::Illegal(format!("job {job_id} has no stages")));
                }
                let stages = stages
                    .iter()
                    .map(|p| Stage {
                        plan: p.clone(),
                        tasks: (0..p.tasks)
                            .map(|_| Task {
                                state: TaskState::Pending,
                                attempts: 0,
                                failures: 0,
                                last_error: None,
                                not_before_ms: 0,
                            })
                            .collect(),
                    })
                    .collect();
                self.jobs.insert(
                    job_id.clone(),
                    Job {
                        id: job_id.clone(),
                        spec: spec.clone(),
                        state: JobState::Running,
                        stages,
                        submitted_ms: *at_ms,
                        finished_ms: 0,
                        error: None,
                        committed_files: vec![],
                    },
                );
                self.job_order.push(job_id.clone());
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
                let (worker_id, started_ms) = match &t.state {
                    TaskState::Running {
                        attempt: a,
                        worker_id,
                        started_ms,
                    } if a == attempt => (worker_id.clone(), *started_ms),
                    other => {
                        return Err(ApplyError::Illegal(format!(
                            "success of job {job_id} stage {stage} task {task} attempt {attempt} while {other:?}"
                        )))
                    }
                };
                t.state = TaskState::Succeeded {
                    attempt: *attempt,
                    worker_id,
                    result: result.clone(),
                    started_ms,
                    finished_ms: *at_ms,
                };
                Ok(Outcome::Done)
            }
            Command::TaskFailed {
                job_id,
                stage,
                task,
                attempt,
                error,
                retryable,
                retry_at_ms,
            } => {
                let job = self.running_job(job_id)?;
                let max_attempts = job.spec.job.params.max_task_attempts();
                let t = Self::task_mut(job, *stage, *task)?;
                match &t.state {
                    TaskState::Running { attempt: a, .. } if a == attempt => {}
                    other => {
                        return Err(ApplyError::Illegal(format!(
                            "failure of job {job_id} stage {stage} task {task} attempt {attempt} while {other:?}"
                        )))
                    }
                }
                t.last_error = Some(error.clone());
                t.state = TaskState::Pending;
                t.not_before_ms = *retry_at_ms;
                // A reducer that could not read a map output is not at fault (Spark's
                // FetchFailed): the output is recomputed and the reducer waits for it,
                // without spending one of its attempts. Nor is an attempt whose worker
                // did not answer the launch.
                if let Some(f) = &error.fetch_failed {
                    let lost = job
                        .stages
                        .get_mut(f.stage as usize)
                        .filter(|_| f.stage < *stage)
                        .and_then(|st| st.tasks.get_mut(f.map_task as usize));
                    if let Some(m) = lost {
                        if matches!(&m.state, TaskState::Succeeded { worker_id, .. } if *worker_id == f.worker_id)
                        {
                            m.state = TaskState::Pending;
                        }
                    }
                    return Ok(Outcome::TaskRequeued);
                }
                if error.worker_unreachable {
                    return Ok(Outcome::TaskRequeued);
                }
                t.failures += 1;
                if *retryable && t.failures < max_attempts {
                    return Ok(Outcome::TaskRequeued);
                }
                let failures = t.failures;
                let mut err = error.clone();
                if *retryable {
                    err.message = format!(
                        "stage {stage} task {task} failed {failures} times (max_task_attempts = {max_attempts}); last error: {}",
                        error.message
                    );
                }
                let job = self.jobs.get_mut(job_id).expect("checked above");
                job.state = JobState::Failed;
                job.error = Some(err);
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
                Ok(Outcome::JobChanged(job_id.clone(), JobState::Cancelled))
            }
        }
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
        for job in self.jobs.values_mut() {
            if job.state != JobState::Running {
                continue;
            }
            let last = job.stages.len() - 1;
            for (si, stage) in job.stages.iter_mut().enumerate() {
                for t in &mut stage.tasks {
                    let on_lost = match &t.state {
                        TaskState::Running { worker_id: w, .. } => w == worker_id,
                        // sink outputs are in staging storage, not on the worker
                        TaskState::Succeeded { worker_id: w, .. } => w == worker_id && si != last,
                        TaskState::Pending => false,
                    };
                    if on_lost {
                        t.state = TaskState::Pending;
                    }
                }
            }
        }
    }

    /// Running attempts per worker, counted in one pass over the running jobs.
    pub fn running_per_worker(&self) -> BTreeMap<&str, u32> {
        let mut out = BTreeMap::new();
        for t in self
            .jobs
            .values()
            .filter(|j| j.state == JobState::Running)
            .flat_map(|j| j.stages.iter())
            .flat_map(|s| s.tasks.iter())
        {
            if let TaskState::Running { worker_id, .. } = &t.state {
                *out.entry(worker_id.as_str()).or_insert(0) += 1;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_stage_state() -> State {
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
        s.apply(&crate::state::test_job(2)).unwrap();
        s
    }

    fn launch(
        s: &mut State,
        stage: u32,
        task: u32,
        attempt: u32,
        w: &str,
    ) -> Result<Outcome, ApplyError> {
        s.apply(&Command::TaskLaunched {
            job_id: "j".into(),
            stage,
            task,
            attempt,
            worker_id: w.into(),
            at_ms: 2,
        })
    }

    fn succeed(s: &mut State, stage: u32, task: u32, attempt: u32) -> Result<Outcome, ApplyError> {
        s.apply(&Command::TaskSucceeded {
            job_id: "j".into(),
            stage,
            task,
            attempt,
            result: TaskResult::default(),
            at_ms: 7,
        })
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
        let fetch_failed = |attempt| Command::TaskFailed {
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
        };
        // more fetch failures than the attempt limit: none counts against the reducer
        for attempt in 1..=5 {
            launch(&mut s, 1, 0, attempt, "w1").unwrap();
            assert_eq!(
                s.apply(&fetch_failed(attempt)).unwrap(),
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
        // a late fetch failure naming a worker that no longer holds the output (it
        // was recomputed elsewhere meanwhile) leaves the new output alone
        launch(&mut s, 1, 0, 6, "w1").unwrap();
        s.apply(&fetch_failed(6)).unwrap();
        launch(&mut s, 0, 1, 7, "w1").unwrap();
        succeed(&mut s, 0, 1, 7).unwrap();
        launch(&mut s, 1, 0, 7, "w2").unwrap();
        s.apply(&fetch_failed(7)).unwrap();
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
}
