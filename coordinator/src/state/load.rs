//! A worker's load from its heartbeats, as the replicated state keeps it on the
//! worker record (`Command::WorkerLoad`). The leader records a heartbeat's load only
//! when it changed materially, at most every few seconds (`scheduler::load`), so a
//! heartbeat is not a raft entry; placement (`optimizer::placement`) reads it from
//! here, as do `autopipe workers`, `autopipe status JOB` and the admin API.

use serde::{Deserialize, Serialize};

/// What one heartbeat said about a worker's load.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WorkerLoad {
    /// process CPU, percent of one core (up to 100 x `cpu_cores`)
    pub cpu_percent: f32,
    /// cores of its machine
    pub cpu_cores: u32,
    /// resident memory, bytes
    pub memory_used_bytes: u64,
    /// the memory its tasks share, bytes (0: not reported)
    pub memory_limit_bytes: u64,
    /// free task slots, as it reported them
    pub free_slots: u32,
    /// attempts it runs
    pub running: u32,
    /// launches waiting for a task slot on it
    pub queued: u32,
    /// bytes its tasks spilled to disk since it started
    pub spilled_bytes: u64,
    /// when the heartbeat arrived (leader's clock, ms since the epoch)
    pub at_ms: u64,
}

impl WorkerLoad {
    /// CPU use as a fraction of the machine (0 when the cores are unknown).
    pub fn cpu_fraction(&self) -> f64 {
        if self.cpu_cores == 0 {
            return 0.0;
        }
        self.cpu_percent as f64 / (100.0 * self.cpu_cores as f64)
    }

    /// Memory use as a fraction of its tasks' memory (0 when the limit is unknown).
    pub fn memory_fraction(&self) -> f64 {
        if self.memory_limit_bytes == 0 {
            return 0.0;
        }
        self.memory_used_bytes as f64 / self.memory_limit_bytes as f64
    }

    /// Wire form; `hot` is why placement avoids the worker now (empty: it does not).
    pub fn to_proto(&self, hot: String) -> autopipe_proto::WorkerLoad {
        autopipe_proto::WorkerLoad {
            cpu_percent: self.cpu_percent,
            cpu_cores: self.cpu_cores,
            memory_used_bytes: self.memory_used_bytes,
            memory_limit_bytes: self.memory_limit_bytes,
            free_slots: self.free_slots,
            running: self.running,
            queued: self.queued,
            spilled_bytes: self.spilled_bytes,
            at_ms: self.at_ms,
            hot,
        }
    }

    /// From a heartbeat received at `at_ms`.
    pub fn from_heartbeat(h: &autopipe_proto::HeartbeatRequest, at_ms: u64) -> Self {
        Self {
            cpu_percent: h.cpu_percent,
            cpu_cores: h.cpu_cores,
            memory_used_bytes: h.memory_used_bytes,
            memory_limit_bytes: h.memory_limit_bytes,
            free_slots: h.free_slots,
            running: h.running.len() as u32,
            queued: h.queued,
            spilled_bytes: h.spilled_bytes,
            at_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ApplyError, Command};

    #[test]
    fn an_alive_workers_load_is_recorded_and_a_new_process_starts_without_one() {
        let mut s = crate::state::test_state(&[("w1", 2)], 1);
        let load = WorkerLoad {
            cpu_percent: 150.0,
            cpu_cores: 2,
            queued: 1,
            at_ms: 5,
            ..Default::default()
        };
        let cmd = |w: &str| Command::WorkerLoad {
            worker_id: w.into(),
            load: load.clone(),
        };
        s.apply(&cmd("w1")).unwrap();
        assert_eq!(s.workers["w1"].load.as_ref(), Some(&load));
        assert_eq!(load.cpu_fraction(), 0.75);
        assert!(matches!(
            s.apply(&cmd("nope")),
            Err(ApplyError::UnknownWorker(_))
        ));
        // it survives a snapshot (serde) round trip
        let copy: crate::state::State =
            serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(copy.workers["w1"].load, s.workers["w1"].load);
        // a lost worker's load is not updated; registering again starts without one
        s.apply(&Command::WorkerLost {
            worker_id: "w1".into(),
            at_ms: 6,
        })
        .unwrap();
        assert!(matches!(s.apply(&cmd("w1")), Err(ApplyError::Illegal(_))));
        s.apply(&Command::RegisterWorker {
            worker_id: "w1".into(),
            address: "w1:2".into(),
            http_address: String::new(),
            slots: 2,
            at_ms: 7,
            shuffle: Default::default(),
        })
        .unwrap();
        assert_eq!(s.workers["w1"].load, None);
    }
}
