//! Worker metrics in Prometheus text format: tasks by outcome, task durations, rows
//! and bytes read and written, shuffle bytes served, errors by class, bad records,
//! retries refused by the retry budget.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::path::Path;

type Labels = Vec<(String, String)>;

/// All worker metrics.
pub struct WorkerMetrics {
    registry: Registry,
    /// finished tasks by outcome (succeeded, failed, cancelled)
    pub tasks: Family<Labels, Counter>,
    /// tasks running now
    pub running: Gauge,
    /// task run time
    pub task_duration: Histogram,
    /// rows read by source scans
    pub rows_read: Counter,
    /// bytes of source files read
    pub bytes_read: Counter,
    /// rows written (shuffle + sink)
    pub rows_written: Counter,
    /// bytes written (shuffle + sink)
    pub bytes_written: Counter,
    /// shuffle bytes served over Flight
    pub shuffle_bytes_served: Counter,
    /// task errors by class
    pub errors: Family<Labels, Counter>,
    /// source records routed to the dead letters
    pub bad_records: Counter,
    /// bytes tasks spilled to disk to stay within their memory share
    pub spilled_bytes: Counter,
    /// retries this process's retry budget refused
    retry_budget_exhausted: Counter,
    /// task slots
    pub slots: Gauge,
    /// free task slots
    pub free_slots: Gauge,
    /// the memory its tasks share, bytes
    pub memory_limit: Gauge,
    /// resident memory of the process, bytes
    pub memory_resident: Gauge,
    /// free space on the work dir's file system, bytes
    pub disk_free: Gauge,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("autopipe_worker");
        let m = Self {
            tasks: Family::default(),
            running: Gauge::default(),
            task_duration: Histogram::new(exponential_buckets(0.005, 2.0, 16)),
            rows_read: Counter::default(),
            bytes_read: Counter::default(),
            rows_written: Counter::default(),
            bytes_written: Counter::default(),
            shuffle_bytes_served: Counter::default(),
            errors: Family::default(),
            bad_records: Counter::default(),
            spilled_bytes: Counter::default(),
            retry_budget_exhausted: Counter::default(),
            slots: Gauge::default(),
            free_slots: Gauge::default(),
            memory_limit: Gauge::default(),
            memory_resident: Gauge::default(),
            disk_free: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "build",
            "The autopipe build this worker runs",
            prometheus_client::metrics::info::Info::new(vec![(
                "version".to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            )]),
        );
        registry.register("slots", "Task slots", m.slots.clone());
        registry.register("free_slots", "Free task slots", m.free_slots.clone());
        registry.register(
            "memory_limit_bytes",
            "The memory this worker's tasks share",
            m.memory_limit.clone(),
        );
        registry.register(
            "memory_resident_bytes",
            "Resident memory of the worker process",
            m.memory_resident.clone(),
        );
        registry.register(
            "disk_free_bytes",
            "Free space on the file system of the worker's work dir (spills, shuffle files)",
            m.disk_free.clone(),
        );
        registry.register("tasks", "Finished tasks by outcome", m.tasks.clone());
        registry.register("tasks_running", "Tasks running now", m.running.clone());
        registry.register(
            "task_duration_seconds",
            "Task run time",
            m.task_duration.clone(),
        );
        registry.register("rows_read", "Rows read from sources", m.rows_read.clone());
        registry.register(
            "bytes_read",
            "Bytes of source files read",
            m.bytes_read.clone(),
        );
        registry.register(
            "rows_written",
            "Rows written to shuffle and sinks",
            m.rows_written.clone(),
        );
        registry.register(
            "bytes_written",
            "Bytes written to shuffle and sinks",
            m.bytes_written.clone(),
        );
        registry.register(
            "shuffle_bytes_served",
            "Shuffle file bytes served over Flight",
            m.shuffle_bytes_served.clone(),
        );
        registry.register("task_errors", "Task errors by class", m.errors.clone());
        registry.register(
            "bad_records",
            "Source records that failed to parse or convert, written to the dead letters",
            m.bad_records.clone(),
        );
        registry.register(
            "spilled_bytes",
            "Bytes tasks spilled to disk to stay within their memory share",
            m.spilled_bytes.clone(),
        );
        registry.register(
            "retry_budget_exhausted",
            "Retries refused because the retry budget was spent",
            m.retry_budget_exhausted.clone(),
        );
        Self { registry, ..m }
    }
}

impl WorkerMetrics {
    /// Text exposition.
    pub fn render(&self) -> String {
        let refused = autopipe_common::retry::budget().exhausted();
        self.retry_budget_exhausted
            .inc_by(refused.saturating_sub(self.retry_budget_exhausted.get()));
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// Counts a finished task.
    pub fn task_done(&self, outcome: &str) {
        self.tasks
            .get_or_create(&vec![("outcome".to_string(), outcome.to_string())])
            .inc();
    }

    /// Counts an error of `class`.
    pub fn error(&self, class: &str) {
        self.errors
            .get_or_create(&vec![("class".to_string(), class.to_string())])
            .inc();
    }

    /// Counts the size of a shuffle file being served.
    pub fn bytes_served(&self, path: &Path) {
        if let Ok(m) = std::fs::metadata(path) {
            self.shuffle_bytes_served.inc_by(m.len());
        }
    }
}
