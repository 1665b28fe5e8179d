//! Retention: how much of the past the replicated state keeps, so that it and its
//! snapshots stay proportional to live work, not to every job and worker ever seen.
//!
//! The rules are pure functions of the state, the policy and `now`; the leader loop
//! proposes what they choose as commands (`ForgetJobs`, `PruneWorkers`), so a replay
//! of the log drops exactly the same entries whatever the policy is then.
//!
//! - **Finished jobs** (`--job-retention COUNT,AGE`, default `1000,7d`): a terminal job
//!   whose cleanup ran is forgotten once it ended more than AGE ago, or once COUNT
//!   jobs ended after it. Its idempotency keys and decisions go with it. A job that is
//!   not terminal is never forgotten (the state machine refuses it), nor one whose
//!   cleanup has not run (its staging would never be discarded).
//! - **Lost workers** (`--lost-worker-retention`, default `1h`): a worker lost for
//!   longer is pruned. A worker keeps its id across restarts (saved in its work dir),
//!   so one that comes back within the period takes its entry again.

use crate::core::Core;
use crate::state::{Command, State, WorkerState};
use autopipe_common::util::{now_ms, parse_duration};
use std::time::Duration;

/// How many finished jobs the state keeps, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobRetention {
    /// finished jobs kept at most (the newest)
    pub max_jobs: usize,
    /// a finished job is kept at most this long after it ended
    pub max_age: Duration,
}

impl Default for JobRetention {
    fn default() -> Self {
        Self {
            max_jobs: 1000,
            max_age: Duration::from_secs(7 * 86_400),
        }
    }
}

impl std::str::FromStr for JobRetention {
    type Err = String;

    /// `COUNT,AGE`, e.g. `1000,7d` (AGE in ms, s, m, h or d).
    fn from_str(s: &str) -> Result<Self, String> {
        let (count, age) = s
            .split_once(',')
            .ok_or_else(|| format!("'{s}' is not COUNT,AGE (e.g. 1000,7d)"))?;
        let max_jobs = count.trim().parse().map_err(|_| {
            format!("'{count}' in '{s}' is not a job count (COUNT,AGE, e.g. 1000,7d)")
        })?;
        let max_age = parse_duration(age)?;
        Ok(Self { max_jobs, max_age })
    }
}

/// At most this many ids in one command, so each log entry stays small.
pub const MAX_PER_COMMAND: usize = 1000;

/// Finished jobs past `policy` at `now_ms`, oldest first (at most `MAX_PER_COMMAND`).
pub fn jobs_to_forget(s: &State, policy: &JobRetention, now_ms: u64) -> Vec<String> {
    let mut finished: Vec<_> = s.jobs.values().filter(|j| j.state.is_terminal()).collect();
    // newest first: the first `max_jobs` are kept
    finished.sort_by(|a, b| b.finished_ms.cmp(&a.finished_ms).then(b.seq.cmp(&a.seq)));
    let max_age_ms = policy.max_age.as_millis() as u64;
    let mut out: Vec<String> = finished
        .iter()
        .enumerate()
        .filter(|(rank, j)| {
            j.cleaned
                && (*rank >= policy.max_jobs || now_ms.saturating_sub(j.finished_ms) > max_age_ms)
        })
        .map(|(_, j)| j.id.clone())
        .collect();
    out.reverse();
    out.truncate(MAX_PER_COMMAND);
    out
}

/// Workers lost for longer than `retention` at `now_ms` (at most `MAX_PER_COMMAND`).
pub fn workers_to_prune(s: &State, retention: Duration, now_ms: u64) -> Vec<String> {
    let retention_ms = retention.as_millis() as u64;
    s.workers
        .values()
        .filter(|w| {
            w.state != WorkerState::Alive && now_ms.saturating_sub(w.lost_ms) > retention_ms
        })
        .map(|w| w.id.clone())
        .take(MAX_PER_COMMAND)
        .collect()
}

/// Proposes the forgetting and pruning the policies call for now (leader loop).
pub async fn enforce(core: &Core) {
    let now = now_ms();
    let (jobs, workers) = core.read(|s| {
        (
            jobs_to_forget(s, &core.config.job_retention, now),
            workers_to_prune(s, core.config.lost_worker_retention, now),
        )
    });
    if !jobs.is_empty() {
        let n = jobs.len();
        match core
            .propose(Command::ForgetJobs {
                job_ids: jobs,
                at_ms: now,
            })
            .await
        {
            Ok(_) => tracing::info!(jobs = n, "finished jobs past the retention forgotten"),
            Err(e) => tracing::warn!("cannot forget finished jobs: {e}"),
        }
    }
    if !workers.is_empty() {
        tracing::info!(?workers, "pruning lost workers past the retention");
        if let Err(e) = core
            .propose(Command::PruneWorkers {
                worker_ids: workers,
                at_ms: now,
            })
            .await
        {
            tracing::warn!("cannot prune lost workers: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::TaskResult;

    const DAY: u64 = 86_400_000;

    /// A state with one worker and jobs `ids`, each run to success (and cleaned up
    /// when `clean`), ending at `finished_ms`.
    fn run_job(s: &mut State, id: &str, finished_ms: u64, clean: bool) {
        run_job_with_plans(s, id, finished_ms, clean, 0);
    }

    /// `run_job` for a job whose every stage plan is `plan_bytes` long (0: the test
    /// job's own plans).
    fn run_job_with_plans(
        s: &mut State,
        id: &str,
        finished_ms: u64,
        clean: bool,
        plan_bytes: usize,
    ) {
        if !s.workers.contains_key("w1") {
            s.apply(&Command::RegisterWorker {
                worker_id: "w1".into(),
                address: "w1:1".into(),
                http_address: String::new(),
                slots: 2,
                at_ms: 0,
                shuffle: Default::default(),
            })
            .unwrap();
        }
        let Command::SubmitJob {
            spec, mut stages, ..
        } = crate::state::test_job(1)
        else {
            unreachable!()
        };
        if plan_bytes > 0 {
            for st in &mut stages {
                st.plan = std::sync::Arc::new(vec![0xA5; plan_bytes]);
            }
        }
        s.apply(&Command::SubmitJob {
            job_id: id.into(),
            spec,
            stages,
            at_ms: finished_ms,
            request_id: format!("req-{id}"),
            request_hash: 0,
            stream: None,
            sink_schema: None,
            compaction: None,
        })
        .unwrap();
        for (stage, task) in [(0, 0), (1, 0), (1, 1)] {
            s.apply(&Command::TaskLaunched {
                job_id: id.into(),
                stage,
                task,
                attempt: 1,
                worker_id: "w1".into(),
                at_ms: finished_ms,
            })
            .unwrap();
            s.apply(&Command::TaskSucceeded {
                job_id: id.into(),
                stage,
                task,
                attempt: 1,
                result: TaskResult::default(),
                at_ms: finished_ms,
            })
            .unwrap();
        }
        if plan_bytes > 0 {
            // a running job carries its plans, as base64 (not a JSON array of numbers)
            let size = serde_json::to_vec(&s.jobs[id]).unwrap().len();
            assert!(size > 2 * plan_bytes && size < 3 * plan_bytes, "{size}");
        }
        s.apply(&Command::JobCommitting { job_id: id.into() })
            .unwrap();
        s.apply(&Command::JobSucceeded {
            job_id: id.into(),
            files: vec!["part-0.parquet".into()],
            at_ms: finished_ms,
        })
        .unwrap();
        if clean {
            s.apply(&Command::JobCleaned { job_id: id.into() }).unwrap();
        }
    }

    #[test]
    fn the_retention_flag_is_a_count_and_an_age() {
        assert_eq!(
            "1000,7d".parse::<JobRetention>().unwrap(),
            JobRetention::default()
        );
        assert_eq!(
            "5, 90m".parse::<JobRetention>().unwrap(),
            JobRetention {
                max_jobs: 5,
                max_age: Duration::from_secs(5_400)
            }
        );
        for bad in ["1000", "7d", "x,7d", "10,7", "-1,1h"] {
            assert!(bad.parse::<JobRetention>().is_err(), "{bad}");
        }
    }

    #[test]
    fn finished_jobs_past_the_count_or_the_age_are_forgotten_oldest_first() {
        let mut s = State::default();
        let now = 30 * DAY;
        // ended 10, 9, ..., 1 days ago
        for i in 0..10u64 {
            run_job(&mut s, &format!("j{i}"), now - (10 - i) * DAY, true);
        }
        let policy = |max_jobs, days| JobRetention {
            max_jobs,
            max_age: Duration::from_millis(days * DAY),
        };
        assert!(jobs_to_forget(&s, &policy(10, 11), now).is_empty());
        assert_eq!(jobs_to_forget(&s, &policy(8, 11), now), ["j0", "j1"]);
        // older than 3.5 days: ended 10 .. 4 days ago
        let by_age = jobs_to_forget(&s, &policy(100, 3), now - DAY / 2);
        assert_eq!(by_age, ["j0", "j1", "j2", "j3", "j4", "j5", "j6"]);
        assert_eq!(jobs_to_forget(&s, &policy(0, 100), now).len(), 10);
    }

    #[test]
    fn running_and_uncleaned_jobs_are_never_forgotten() {
        let mut s = State::default();
        run_job(&mut s, "done", 1, true);
        run_job(&mut s, "not-cleaned", 2, false);
        let Command::SubmitJob { spec, stages, .. } = crate::state::test_job(1) else {
            unreachable!()
        };
        s.apply(&Command::SubmitJob {
            job_id: "running".into(),
            spec,
            stages,
            at_ms: 0,
            request_id: String::new(),
            request_hash: 0,
            stream: None,
            sink_schema: None,
            compaction: None,
        })
        .unwrap();
        let everything = JobRetention {
            max_jobs: 0,
            max_age: Duration::ZERO,
        };
        assert_eq!(jobs_to_forget(&s, &everything, 10 * DAY), ["done"]);
        // counted, though: the cleaned job past the count goes
        let one = JobRetention {
            max_jobs: 1,
            max_age: Duration::from_millis(100 * DAY),
        };
        assert_eq!(jobs_to_forget(&s, &one, 10 * DAY), ["done"]);
    }

    #[test]
    fn lost_workers_are_pruned_after_the_retention() {
        let mut s = State::default();
        run_job(&mut s, "j", 1, true);
        s.apply(&Command::WorkerLost {
            worker_id: "w1".into(),
            at_ms: 1_000,
        })
        .unwrap();
        let hour = Duration::from_secs(3_600);
        assert!(workers_to_prune(&s, hour, 1_000 + 3_600_000).is_empty());
        assert_eq!(workers_to_prune(&s, hour, 1_001 + 3_600_000), ["w1"]);
    }

    /// Applies what the retention rules choose, as the leader loop does.
    fn enforce_on(s: &mut State, policy: &JobRetention, now: u64) {
        let jobs = jobs_to_forget(s, policy, now);
        if !jobs.is_empty() {
            s.apply(&Command::ForgetJobs {
                job_ids: jobs,
                at_ms: now,
            })
            .unwrap();
        }
    }

    #[test]
    fn the_jobs_the_default_retention_keeps_fit_well_within_a_raft_message() {
        let policy = JobRetention::default();
        let mut s = State::default();
        // 1200 jobs whose stage plans are 256 KiB each
        for i in 0..1200u64 {
            run_job_with_plans(&mut s, &format!("job-{i:06}"), 1_000 + i, true, 256 << 10);
            enforce_on(&mut s, &policy, 1_000 + i);
        }
        assert_eq!(s.jobs.len(), policy.max_jobs);
        let size = serde_json::to_vec(&s).unwrap().len();
        assert!(
            size < crate::raft::transport::MAX_MESSAGE / 8,
            "{} finished jobs take {size} bytes of snapshot",
            s.jobs.len()
        );
    }

    #[test]
    fn the_snapshot_stays_the_same_size_however_many_jobs_have_run() {
        let policy = JobRetention {
            max_jobs: 5,
            max_age: Duration::from_secs(7 * 86_400),
        };
        let mut s = State::default();
        let mut size_after = std::collections::BTreeMap::new();
        for i in 0..300u64 {
            run_job(&mut s, &format!("job-{i:06}"), 1_000 + i, true);
            enforce_on(&mut s, &policy, 1_000 + i);
            if i == 19 || i == 299 {
                size_after.insert(i + 1, serde_json::to_vec(&s).unwrap().len());
            }
        }
        assert_eq!(s.jobs.len(), 5);
        assert_eq!(s.job_order.len(), 5);
        assert_eq!(s.submissions.len(), 5);
        let (small, big) = (size_after[&20], size_after[&300]);
        // only a few digits (sequence numbers, times) grow
        assert!(
            big <= small + 32,
            "the snapshot grew from {small} bytes after 20 jobs to {big} after 300"
        );
    }
}
