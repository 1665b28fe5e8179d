//! Coordinator metrics in Prometheus text format: tasks and jobs by state (read from
//! the state at scrape time), task durations, rows and bytes, errors by class.

use crate::state::{DecisionKind, JobState, State, TaskState, WorkerState};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// All coordinator metrics.
pub struct Metrics {
    registry: Registry,
    tasks: Family<Labels, Gauge>,
    jobs: Family<Labels, Gauge>,
    workers: Family<Labels, Gauge>,
    /// task run time as reported by workers
    pub task_duration: Histogram,
    /// rows read by source scans
    pub rows_read: Counter,
    /// bytes of source files read
    pub bytes_read: Counter,
    /// rows written by sinks
    pub rows_written: Counter,
    /// bytes written (shuffle + sink)
    pub bytes_written: Counter,
    /// source records routed to the dead letters
    pub bad_records: Counter,
    /// retries this process's retry budget refused
    retry_budget_exhausted: Counter,
    /// task errors by class
    pub errors: Family<Labels, Counter>,
    /// commands written to the log
    pub commands: Counter,
    /// raft: term, commit_index, applied_index, last_index, snapshot_index, is_leader
    /// (one gauge each)
    raft: [(&'static str, Gauge); 6],
    /// alerts raised, by kind
    alerts: Family<Labels, Counter>,
    /// decisions taken, by kind (counted as they reach this coordinator's state)
    decisions: Family<Labels, Counter>,
    /// the newest decision counted
    decisions_seen: std::sync::atomic::AtomicU64,
    /// per pipeline (job name): when its last successful run finished
    last_success: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// running streaming jobs' lag per Kafka partition (high watermark - committed)
    kafka_lag: Family<Labels, Gauge>,
    /// running streaming jobs' committed offset per Kafka partition
    kafka_offset: Family<Labels, Gauge>,
    /// seconds from a micro-batch's oldest record's timestamp (its produce time) to
    /// the batch's files being published in the sink
    pub kafka_end_to_end: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("autopipe");
        let tasks = Family::<Labels, Gauge>::default();
        let jobs = Family::<Labels, Gauge>::default();
        let workers = Family::<Labels, Gauge>::default();
        let task_duration = Histogram::new(exponential_buckets(0.005, 2.0, 16));
        let rows_read = Counter::default();
        let rows_written = Counter::default();
        let bytes_read = Counter::default();
        let bytes_written = Counter::default();
        let errors = Family::<Labels, Counter>::default();
        let bad_records = Counter::default();
        let retry_budget_exhausted = Counter::default();
        let commands = Counter::default();
        let kafka_lag = Family::<Labels, Gauge>::default();
        let kafka_offset = Family::<Labels, Gauge>::default();
        let kafka_end_to_end = Histogram::new(exponential_buckets(0.01, 2.0, 14));
        registry.register(
            "kafka_end_to_end_seconds",
            "Seconds from a streaming micro-batch's oldest record's timestamp (its produce time) to its files published in the sink",
            kafka_end_to_end.clone(),
        );
        registry.register(
            "kafka_lag_records",
            "Records a running streaming job has not committed yet, per Kafka partition (its consumer's last seen high watermark minus the committed offset)",
            kafka_lag.clone(),
        );
        registry.register(
            "kafka_committed_offset",
            "The next offset a running streaming job reads, per Kafka partition, as committed with its output",
            kafka_offset.clone(),
        );
        let raft = [
            ("term", "This coordinator's raft term"),
            ("commit_index", "The raft log's commit index"),
            (
                "applied_index",
                "The raft log index this coordinator applied",
            ),
            (
                "last_index",
                "The raft log's last index on this coordinator",
            ),
            (
                "snapshot_index",
                "The index of this coordinator's raft snapshot",
            ),
            (
                "is_leader",
                "1 while this coordinator leads the raft group, else 0",
            ),
        ]
        .map(|(name, help)| {
            let g = Gauge::default();
            registry.register(format!("raft_{name}"), help, g.clone());
            (name, g)
        });
        let alerts = Family::<Labels, Counter>::default();
        let decisions = Family::<Labels, Counter>::default();
        let last_success = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "build",
            "The autopipe build this coordinator runs",
            prometheus_client::metrics::info::Info::new(vec![(
                "version".to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            )]),
        );
        registry.register(
            "pipeline_last_success_timestamp_seconds",
            "When the last successful run of each pipeline (job name) finished, seconds since the epoch",
            last_success.clone(),
        );
        registry.register("tasks", "Tasks by state", tasks.clone());
        registry.register("jobs", "Jobs by state", jobs.clone());
        registry.register("workers", "Workers by state", workers.clone());
        registry.register(
            "task_duration_seconds",
            "Task run time reported by workers",
            task_duration.clone(),
        );
        registry.register("rows_read", "Rows read from sources", rows_read.clone());
        registry.register(
            "bytes_read",
            "Bytes of source files read",
            bytes_read.clone(),
        );
        registry.register(
            "rows_written",
            "Rows written by sinks",
            rows_written.clone(),
        );
        registry.register(
            "bytes_written",
            "Bytes written to shuffle and sinks",
            bytes_written.clone(),
        );
        registry.register("task_errors", "Task errors by class", errors.clone());
        registry.register(
            "bad_records",
            "Source records that failed to parse or convert, written to the dead letters",
            bad_records.clone(),
        );
        registry.register(
            "retry_budget_exhausted",
            "Retries refused because the retry budget was spent",
            retry_budget_exhausted.clone(),
        );
        registry.register(
            "state_commands",
            "Commands written to the state log",
            commands.clone(),
        );
        registry.register("alerts", "Alerts raised, by kind", alerts.clone());
        registry.register(
            "decisions",
            "Automatic decisions taken, by kind",
            decisions.clone(),
        );
        Self {
            registry,
            tasks,
            jobs,
            workers,
            task_duration,
            rows_read,
            rows_written,
            bytes_read,
            bytes_written,
            errors,
            bad_records,
            retry_budget_exhausted,
            commands,
            raft,
            alerts,
            decisions,
            decisions_seen: Default::default(),
            last_success,
            kafka_lag,
            kafka_offset,
            kafka_end_to_end,
        }
    }
}

fn label(k: &str, v: &str) -> Labels {
    vec![(k.to_string(), v.to_string())]
}

impl Metrics {
    /// Refreshes the state gauges and renders the text exposition.
    pub fn render(&self, state: &State, raft: &crate::raft::RaftStatus) -> String {
        for (k, v) in [
            ("term", raft.term),
            ("commit_index", raft.commit),
            ("applied_index", raft.applied),
            ("last_index", raft.last_index),
            ("snapshot_index", raft.snapshot_index),
            (
                "is_leader",
                u64::from(raft.role == crate::raft::Role::Leader),
            ),
        ] {
            if let Some((_, g)) = self.raft.iter().find(|(name, _)| *name == k) {
                g.set(v as i64);
            }
        }
        let mut t = [0i64; 3];
        let mut j = [0i64; 5];
        for job in state.jobs.values() {
            j[match job.state {
                JobState::Running => 0,
                JobState::Committing => 1,
                JobState::Succeeded => 2,
                JobState::Failed => 3,
                JobState::Cancelled => 4,
            }] += 1;
            if job.state != JobState::Running {
                continue;
            }
            for task in job.stages.iter().flat_map(|s| s.tasks.iter()) {
                t[match task.state {
                    TaskState::Pending => 0,
                    TaskState::Running { .. } => 1,
                    TaskState::Succeeded { .. } => 2,
                }] += 1;
            }
        }
        for (i, s) in ["pending", "running", "succeeded"].iter().enumerate() {
            self.tasks.get_or_create(&label("state", s)).set(t[i]);
        }
        for (i, s) in ["running", "committing", "succeeded", "failed", "cancelled"]
            .iter()
            .enumerate()
        {
            self.jobs.get_or_create(&label("state", s)).set(j[i]);
        }
        let alive = state
            .workers
            .values()
            .filter(|w| w.state == WorkerState::Alive)
            .count() as i64;
        self.workers
            .get_or_create(&label("state", "alive"))
            .set(alive);
        self.workers
            .get_or_create(&label("state", "lost"))
            .set(state.workers.len() as i64 - alive);
        // every kind shows (0 until taken); each decision counts once, when a scrape
        // first sees it in the state
        for kind in DecisionKind::ALL {
            let _ = self.decisions.get_or_create(&label("kind", kind.name()));
        }
        let seen = self
            .decisions_seen
            .load(std::sync::atomic::Ordering::Relaxed);
        for d in state.decisions.iter().filter(|d| d.id > seen) {
            self.decisions
                .get_or_create(&label("kind", d.kind.name()))
                .inc();
        }
        if let Some(newest) = state.decisions.iter().map(|d| d.id).max() {
            self.decisions_seen
                .fetch_max(newest, std::sync::atomic::Ordering::Relaxed);
        }
        for job in state
            .jobs
            .values()
            .filter(|j| j.state == JobState::Succeeded)
        {
            let g = self
                .last_success
                .get_or_create(&label("pipeline", &job.spec.job.name));
            g.set(g.get().max(job.finished_ms as f64 / 1000.0));
        }
        self.kafka_lag.clear();
        self.kafka_offset.clear();
        for job in state.jobs.values().filter(|j| j.state == JobState::Running) {
            let Some(st) = &job.stream else { continue };
            for (p, x) in &st.partitions {
                let labels = vec![
                    ("job".to_string(), job.id.clone()),
                    ("topic".to_string(), st.topic.clone()),
                    ("partition".to_string(), p.to_string()),
                ];
                if let Some(lag) = x.lag() {
                    self.kafka_lag.get_or_create(&labels).set(lag);
                }
                if let Some(o) = x.offset {
                    self.kafka_offset.get_or_create(&labels).set(o);
                }
            }
        }
        let refused = autopipe_common::retry::budget().exhausted();
        self.retry_budget_exhausted
            .inc_by(refused.saturating_sub(self.retry_budget_exhausted.get()));
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// Counts an alert of `kind`.
    pub fn alert(&self, kind: &str) {
        self.alerts.get_or_create(&label("kind", kind)).inc();
    }

    /// Counts a task error of `class`.
    pub fn error(&self, class: &str) {
        self.errors.get_or_create(&label("class", class)).inc();
    }
}
