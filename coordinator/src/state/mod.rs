//! The replicated coordinator state: commands (`commands`) and the pure state machine
//! (`machine`). Commands reach the state only through the raft log (`crate::raft`),
//! so every coordinator applies the same commands in the same order.

pub mod commands;
pub mod decision;
pub mod load;
pub mod machine;

pub use commands::{
    BroadcastPlan, Command, ErrorRecord, FetchFailedRecord, PreMergePlan, ReducePlan,
    RetryLimitChange, RetryLimitOutcome, ScanSlice, ShuffleHome, SplitOrigin, StageJoin, StagePlan,
    TaskReads, TaskResult, Waiting,
};
pub use decision::{Decision, DecisionKind};
pub use machine::{
    ApplyError, BatchOffsets, Job, JobState, Outcome, PendingBatch, State, Stream, StreamPlan,
    TaskState, TaskWork, WindowEmit, WorkerState,
};

impl State {
    /// A copy with only what `cmd` can touch (workers + that one job), for a dry run.
    pub(crate) fn clone_for_check(&self, cmd: &Command) -> State {
        // a release reads every unfinished job (attempts, map outputs): the whole state
        if let Command::WorkerReleased { .. } = cmd {
            return self.clone();
        }
        let job_id = match cmd {
            Command::SubmitJob { job_id, .. }
            | Command::TaskLaunched { job_id, .. }
            | Command::LaunchRefused { job_id, .. }
            | Command::JobWaiting { job_id, .. }
            | Command::TaskMemory { job_id, .. }
            | Command::ReplanStage { job_id, .. }
            | Command::BroadcastJoin { job_id, .. }
            | Command::ReduceProbe { job_id, .. }
            | Command::SpeculativeLaunched { job_id, .. }
            | Command::SplitRunningTask { job_id, .. }
            | Command::TaskSucceeded { job_id, .. }
            | Command::TaskFailed { job_id, .. }
            | Command::JobCommitting { job_id }
            | Command::JobSucceeded { job_id, .. }
            | Command::JobFailed { job_id, .. }
            | Command::CancelJob { job_id, .. }
            | Command::JobCleaned { job_id }
            | Command::StreamCommit { job_id, .. }
            | Command::StreamPublished { job_id, .. }
            | Command::StreamRescale { job_id, .. }
            | Command::StreamWatermarks { job_id, .. } => Some(job_id),
            Command::RecordDecision { decision } => Some(&decision.job_id),
            Command::RegisterWorker { .. } => None,
            Command::WorkerLost { .. } => None,
            Command::ForgetJobs { .. } | Command::PruneWorkers { .. } => None,
            Command::WorkerReleased { .. } | Command::DecisionEffect { .. } => None,
            Command::WorkerLoad { .. } | Command::TableObserved { .. } => None,
        };
        let mut jobs: std::collections::BTreeMap<String, machine::Job> = match job_id {
            Some(id) => self
                .jobs
                .get(id)
                .map(|j| [(id.clone(), j.clone())].into_iter().collect())
                .unwrap_or_default(),
            None => Default::default(),
        };
        if let Command::ForgetJobs { job_ids, .. } = cmd {
            jobs.extend(
                job_ids
                    .iter()
                    .filter_map(|id| self.jobs.get(id).map(|j| (id.clone(), j.clone()))),
            );
        }
        State {
            workers: self.workers.clone(),
            jobs,
            job_order: vec![],
            ..Default::default()
        }
    }
}

/// A one-source spec named "t" with `params` as `[job.params]` TOML lines, for tests.
#[cfg(test)]
pub(crate) fn test_spec(params: &str) -> autopipe_common::spec::PipelineSpec {
    autopipe_common::spec::PipelineSpec::parse(
        &format!("[job]\nname = \"t\"\n[job.params]\n{params}\n[[sources]]\nname = \"a\"\nformat = \"parquet\"\npath = \"/a\"\n[transform]\nsql = \"SELECT 1\"\n[sink]\nformat = \"csv\"\npath = \"/tmp/o\"\n"),
        "t",
    )
    .expect("valid test spec")
}

/// A planned stage with no plan bytes, for tests: `tasks` tasks, writing `shuffle`
/// partitions (None: the sink), reading `inputs`.
#[cfg(test)]
pub(crate) fn test_stage(id: u32, tasks: u32, shuffle: Option<u32>, inputs: Vec<u32>) -> StagePlan {
    StagePlan {
        id,
        plan: Default::default(),
        display: String::new(),
        tasks,
        shuffle_partitions: shuffle,
        inputs,
        join: None,
        broadcast: None,
        pre_merge: None,
        reduce: None,
    }
}

/// A one-source spec and a job of one map stage (`map_tasks` tasks) and one sink
/// stage, for tests of code that reads the state.
#[cfg(test)]
pub(crate) fn test_job(map_tasks: u32) -> Command {
    let spec = test_spec("");
    let stage = test_stage;
    Command::SubmitJob {
        job_id: "j".into(),
        spec: Box::new(spec),
        stages: vec![
            stage(0, map_tasks, Some(2), vec![]),
            stage(1, 2, None, vec![0]),
        ],
        at_ms: 0,
        request_id: String::new(),
        request_hash: 0,
        stream: None,
        sink_schema: None,
        compaction: None,
    }
}

/// `test_job(map_tasks)` as job `job_id`, a compaction of `table` (version 0, one
/// file) when `table` is given.
#[cfg(test)]
pub(crate) fn test_job_as(job_id: &str, map_tasks: u32, table: Option<&str>) -> Command {
    let Command::SubmitJob { spec, stages, .. } = test_job(map_tasks) else {
        unreachable!("test_job submits a job")
    };
    Command::SubmitJob {
        job_id: job_id.into(),
        spec,
        stages,
        at_ms: 0,
        request_id: String::new(),
        request_hash: 0,
        stream: None,
        sink_schema: None,
        compaction: table.map(|t| {
            Box::new(crate::optimizer::compaction::CompactionJob {
                table: t.into(),
                version: 0,
                partition: "p/".into(),
                files: vec!["p/f0.parquet".into()],
                bytes: 1,
            })
        }),
    }
}

/// A state with `workers` (id, slots) registered and `test_job(map_tasks)` submitted.
#[cfg(test)]
pub(crate) fn test_state(workers: &[(&str, u32)], map_tasks: u32) -> State {
    let mut s = State::default();
    for (w, slots) in workers {
        s.apply(&Command::RegisterWorker {
            worker_id: w.to_string(),
            address: format!("{w}:1"),
            http_address: String::new(),
            slots: *slots,
            at_ms: 0,
            shuffle: Default::default(),
        })
        .expect("a new worker registers");
    }
    s.apply(&test_job(map_tasks))
        .expect("the test job is valid");
    s
}

/// Launches attempt `attempt` of task (`stage`, `task`) of the test job on `w`.
#[cfg(test)]
pub(crate) fn test_launch(
    s: &mut State,
    (stage, task, attempt): (u32, u32, u32),
    w: &str,
    at_ms: u64,
) -> Result<Outcome, ApplyError> {
    s.apply(&Command::TaskLaunched {
        job_id: "j".into(),
        stage,
        task,
        attempt,
        worker_id: w.into(),
        at_ms,
    })
}

/// Records the success of attempt `attempt` of task (`stage`, `task`) of the test job.
#[cfg(test)]
pub(crate) fn test_succeed(
    s: &mut State,
    (stage, task, attempt): (u32, u32, u32),
    at_ms: u64,
) -> Result<Outcome, ApplyError> {
    s.apply(&Command::TaskSucceeded {
        job_id: "j".into(),
        stage,
        task,
        attempt,
        result: TaskResult::default(),
        at_ms,
    })
}
