//! The decision log: every automatic change the coordinator makes to a running job
//! (a speculative copy, a timed-out attempt, an adapted retry limit) is recorded
//! in the replicated state with what it did, why, the inputs it decided on, and,
//! once known, its measured effect. The CLI (`autopipe decisions`), the admin API
//! (`ListDecisions`, `/api/decisions`) and the dashboard read it from here.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What kind of automatic change.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    /// a straggling task got a second, speculative attempt on another worker
    Speculation,
    /// an attempt ran past its task timeout and was failed (and cancelled)
    TaskTimeout,
    /// a job's per-task attempt limit was lowered or raised
    RetryLimit,
    /// a task that ran out of memory is retried with a larger memory share
    /// (recorded as `memory_share` before issue 12 named it)
    #[serde(alias = "memory_share")]
    MemoryRetry,
    /// contiguous small reducer partitions were packed into fewer tasks
    Coalesce,
    /// a skewed reducer partition was split into several tasks
    SkewSplit,
    /// a join side small at run time was broadcast instead of shuffled
    Broadcast,
    /// tasks were placed or moved by the workers' load (heartbeats)
    Rebalance,
    /// a running scan task's unread input was handed to another worker
    SplitRunningTask,
    /// workers were added for a backlog
    ScaleUp,
    /// idle workers were released
    ScaleDown,
    /// scan tasks were built from the input's file and row-group sizes
    InputSplits,
    /// a streaming job got more consumer tasks for its lag
    KafkaScaleUp,
    /// a streaming job's consumer tasks were reduced after its lag stayed low
    KafkaScaleDown,
    /// a streaming job's partitions were moved between its consumer tasks
    KafkaRebalance,
    /// a delta table's small files were rewritten into target-sized files
    Compaction,
}

impl DecisionKind {
    /// Every kind, in the order the CLI and the metrics list them.
    pub const ALL: [DecisionKind; 16] = [
        DecisionKind::Speculation,
        DecisionKind::TaskTimeout,
        DecisionKind::RetryLimit,
        DecisionKind::MemoryRetry,
        DecisionKind::Coalesce,
        DecisionKind::SkewSplit,
        DecisionKind::Broadcast,
        DecisionKind::Rebalance,
        DecisionKind::SplitRunningTask,
        DecisionKind::ScaleUp,
        DecisionKind::ScaleDown,
        DecisionKind::InputSplits,
        DecisionKind::KafkaScaleUp,
        DecisionKind::KafkaScaleDown,
        DecisionKind::KafkaRebalance,
        DecisionKind::Compaction,
    ];

    /// The snake_case name used by the CLI, the API and the metrics.
    pub fn name(self) -> &'static str {
        match self {
            DecisionKind::Speculation => "speculation",
            DecisionKind::TaskTimeout => "task_timeout",
            DecisionKind::RetryLimit => "retry_limit",
            DecisionKind::MemoryRetry => "memory_retry",
            DecisionKind::Coalesce => "coalesce",
            DecisionKind::SkewSplit => "skew_split",
            DecisionKind::Broadcast => "broadcast",
            DecisionKind::Rebalance => "rebalance",
            DecisionKind::SplitRunningTask => "split_running_task",
            DecisionKind::ScaleUp => "scale_up",
            DecisionKind::ScaleDown => "scale_down",
            DecisionKind::InputSplits => "input_splits",
            DecisionKind::KafkaScaleUp => "kafka_scale_up",
            DecisionKind::KafkaScaleDown => "kafka_scale_down",
            DecisionKind::KafkaRebalance => "kafka_rebalance",
            DecisionKind::Compaction => "compaction",
        }
    }
}

/// One recorded decision.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Decision {
    /// position in the log, from 1 (assigned when applied)
    #[serde(default)]
    pub id: u64,
    /// when it was taken
    pub at_ms: u64,
    /// the job it changed
    pub job_id: String,
    /// what kind of change
    pub kind: DecisionKind,
    /// what was done, in words
    pub what: String,
    /// why, in words (the rule and the threshold it crossed)
    pub why: String,
    /// the measured inputs the rule read
    pub inputs: BTreeMap<String, String>,
    /// the measured effect, once known
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<String>,
}

/// The log keeps at most this many decisions (the oldest go first).
pub const MAX_DECISIONS: usize = 10_000;

/// Builds an inputs map from `(name, value)` pairs.
pub fn inputs<const N: usize>(pairs: [(&str, String); N]) -> BTreeMap<String, String> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}
