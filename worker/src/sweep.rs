//! Sweeps orphaned shuffle directories (`<work_dir>/shuffle/<job>/`), so a worker's
//! disk holds only the map outputs of jobs that still run.
//!
//! Which directories are orphaned only the coordinator knows. An age rule ("delete
//! what was not touched for an hour") cannot tell a dead job's files from the map
//! outputs of a running one that a long stage still has to read, so it would either
//! delete live data or keep garbage for long. Instead:
//!
//! - at start (the first heartbeat after registering) and every
//!   `shuffle_sweep_interval`, the worker lists the job ids of its shuffle directories
//!   in its heartbeat (`shuffle_jobs`);
//! - the leader answers which of them it no longer runs (`finished_jobs`): terminal
//!   jobs, and jobs its state does not know (forgotten by retention, or never run in
//!   this cluster). It says "unknown" only when its state is current (it committed an
//!   entry of its own term and applied everything committed), so a new leader still
//!   catching up never names a running job;
//! - the worker deletes those directories. A directory created after the listing (a
//!   launch racing the heartbeat) was not listed, so it is never deleted.
//!
//! The coordinator's `CleanupJob` call at a job's end stays the prompt path; the sweep
//! catches what it misses: a worker that was down or unreachable then, a leader change
//! in between, directories left by an earlier process. Sink staging lives beside the
//! sink, not here: the coordinator deletes it in that same cleanup, recorded in the
//! state (`JobCleaned`) so a new leader neither repeats nor skips it. Spill files are
//! cleared at start (`start`).

use crate::shuffle_store::ShuffleStore;
use std::time::{Duration, Instant};

/// When the next listing is due.
pub struct Sweep {
    every: Duration,
    next: Option<Instant>,
}

impl Sweep {
    /// A sweep due now (at start), then every `every`.
    pub fn new(every: Duration) -> Self {
        Self { every, next: None }
    }

    /// The job ids to list in this heartbeat: all of them when a sweep is due, else none.
    pub fn due(&self, store: &ShuffleStore) -> Vec<String> {
        if self.next.is_some_and(|t| Instant::now() < t) {
            return vec![];
        }
        job_dirs(store)
    }

    /// The listing was answered: deletes the directories of `finished` jobs and
    /// schedules the next sweep. Returns how many were deleted.
    pub fn answered(
        &mut self,
        store: &ShuffleStore,
        listed: &[String],
        finished: &[String],
    ) -> usize {
        if listed.is_empty() {
            return 0;
        }
        self.next = Some(Instant::now() + self.every);
        let mut n = 0;
        for job in finished.iter().filter(|j| listed.contains(j)) {
            tracing::info!(job = %job, "deleting the shuffle files of a job that no longer runs");
            store.remove_job(job);
            n += 1;
        }
        n
    }
}

/// Job ids of the directories in the shuffle root (names that are not plain directory
/// names are skipped).
pub fn job_dirs(store: &ShuffleStore) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(&store.root) else {
        return vec![];
    };
    let mut out: Vec<String> = rd
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.is_empty() && !n.starts_with('.'))
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn store(root: &std::path::Path) -> ShuffleStore {
        ShuffleStore {
            root: root.to_path_buf(),
            metrics: Arc::new(Default::default()),
        }
    }

    #[test]
    fn only_the_listed_directories_of_finished_jobs_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        for job in ["done", "running", "late"] {
            std::fs::create_dir_all(s.task_dir(job, 0, 0, 1)).unwrap();
        }
        std::fs::write(dir.path().join("stray-file"), b"x").unwrap();
        let mut sweep = Sweep::new(Duration::from_secs(3600));
        let listed = sweep.due(&s);
        assert_eq!(listed, ["done", "late", "running"]);
        // "late" was created after the listing in reality: pretend it was not listed
        let listed: Vec<String> = listed.into_iter().filter(|j| j != "late").collect();
        let n = sweep.answered(&s, &listed, &["done".into(), "late".into()]);
        assert_eq!(n, 1);
        assert_eq!(job_dirs(&s), ["late", "running"]);
        // the next listing waits for the interval
        assert!(sweep.due(&s).is_empty());
    }

    #[test]
    fn a_sweep_is_due_at_start_and_again_after_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        std::fs::create_dir_all(s.task_dir("j", 0, 0, 1)).unwrap();
        let mut sweep = Sweep::new(Duration::ZERO);
        let listed = sweep.due(&s);
        assert_eq!(listed, ["j"]);
        sweep.answered(&s, &listed, &[]);
        assert_eq!(sweep.due(&s), ["j"], "interval 0: due at every heartbeat");
    }
}
