//! Durable coordinator state: commands (`commands`), the pure state machine
//! (`machine`) and the sled-backed command log (`log`). `StateStore` writes each
//! command to the log before applying it, and replays the log on start, so a
//! restarted coordinator knows every submitted job and its result.

pub mod commands;
pub mod log;
pub mod machine;

pub use commands::{Command, ErrorRecord, ShuffleHome, StagePlan, TaskResult};
pub use machine::{ApplyError, Job, JobState, Outcome, State, TaskState, WorkerState};

use log::CommandLog;
use std::path::Path;

/// The log plus the state it produces.
pub struct StateStore {
    log: CommandLog,
    state: State,
}

/// Failure to persist or apply.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// the command is not allowed now
    #[error(transparent)]
    Rejected(#[from] ApplyError),
    /// the log could not be written
    #[error("command log: {0}")]
    Log(String),
}

impl StateStore {
    /// Opens (or creates) the log in `dir` and replays it.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let log = CommandLog::open(dir).map_err(|e| StoreError::Log(e.to_string()))?;
        let mut state = State::default();
        for cmd in log.replay().map_err(|e| StoreError::Log(e.to_string()))? {
            // a command rejected when first applied is rejected again: deterministic no-op
            let _ = state.apply(&cmd);
        }
        Ok(Self { log, state })
    }

    /// Read access.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Validates `cmd` against the current state, writes it to the log, then applies it.
    pub fn propose(&mut self, cmd: Command) -> Result<Outcome, StoreError> {
        // Dry run on the affected part first so that rejected commands never reach the log.
        self.state.clone_for_check(&cmd).apply(&cmd)?;
        self.log
            .append(&cmd)
            .map_err(|e| StoreError::Log(e.to_string()))?;
        Ok(self.state.apply(&cmd)?)
    }

    /// Number of commands in the log.
    pub fn log_len(&self) -> u64 {
        self.log.len()
    }
}

impl State {
    /// A copy with only what `cmd` can touch (workers + that one job), for a dry run.
    fn clone_for_check(&self, cmd: &Command) -> State {
        let job_id = match cmd {
            Command::SubmitJob { job_id, .. }
            | Command::TaskLaunched { job_id, .. }
            | Command::TaskSucceeded { job_id, .. }
            | Command::TaskFailed { job_id, .. }
            | Command::JobCommitting { job_id }
            | Command::JobSucceeded { job_id, .. }
            | Command::JobFailed { job_id, .. }
            | Command::CancelJob { job_id, .. } => Some(job_id),
            Command::RegisterWorker { .. } => None,
            Command::WorkerLost { .. } => None,
        };
        let jobs = match job_id {
            Some(id) => self
                .jobs
                .get(id)
                .map(|j| [(id.clone(), j.clone())].into_iter().collect())
                .unwrap_or_default(),
            None => Default::default(),
        };
        State {
            workers: self.workers.clone(),
            jobs,
            job_order: vec![],
        }
    }
}

/// A one-source spec and a job of one map stage (`map_tasks` tasks) and one sink
/// stage, for tests of code that reads the state.
#[cfg(test)]
pub(crate) fn test_job(map_tasks: u32) -> Command {
    let spec = autopipe_common::spec::PipelineSpec::parse(
        "[job]\nname = \"t\"\n[[sources]]\nname = \"a\"\nformat = \"parquet\"\npath = \"/a\"\n[transform]\nsql = \"SELECT 1\"\n[sink]\nformat = \"csv\"\npath = \"/tmp/o\"\n",
        "t",
    )
    .expect("valid test spec");
    let stage = |id: u32, tasks: u32, shuffle: Option<u32>, inputs: Vec<u32>| StagePlan {
        id,
        plan: Default::default(),
        display: String::new(),
        tasks,
        shuffle_partitions: shuffle,
        inputs,
    };
    Command::SubmitJob {
        job_id: "j".into(),
        spec,
        stages: vec![
            stage(0, map_tasks, Some(2), vec![]),
            stage(1, 2, None, vec![0]),
        ],
        at_ms: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_survives_a_restart_and_rejected_commands_are_not_logged() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = StateStore::open(dir.path()).unwrap();
            s.propose(Command::RegisterWorker {
                worker_id: "w1".into(),
                address: "a".into(),
                http_address: String::new(),
                slots: 2,
                at_ms: 1,
                shuffle: Default::default(),
            })
            .unwrap();
            assert!(s
                .propose(Command::WorkerLost {
                    worker_id: "nope".into(),
                    at_ms: 2
                })
                .is_err());
            assert_eq!(s.log_len(), 1);
        }
        let s = StateStore::open(dir.path()).unwrap();
        assert_eq!(s.log_len(), 1);
        assert!(s.state().workers.contains_key("w1"));
    }
}
