//! What a finished task produced, as workers report it and the coordinator records it.

use serde::{Deserialize, Serialize};

/// What a successful task reported.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TaskResult {
    /// (rows, bytes) per output partition (map tasks)
    pub partitions: Vec<(u64, u64)>,
    /// hot keys of the largest output partitions, from a sample of their rows:
    /// (partition, [(key, estimated rows)])
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hot_keys: Vec<(u32, Vec<(String, u64)>)>,
    /// staged files relative to the task's staging prefix (sink tasks)
    pub files: Vec<String>,
    /// rows read from sources
    pub rows_in: u64,
    /// bytes of source files read
    #[serde(default)]
    pub bytes_in: u64,
    /// rows produced
    pub rows_out: u64,
    /// bytes produced
    pub bytes_out: u64,
    /// run time
    pub duration_ms: u64,
    /// source records that failed to parse or convert
    #[serde(default)]
    pub bad_records: u64,
    /// URL of the attempt's dead-letter file (empty: none)
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dead_letter_file: String,
}

/// The message of a worker's `RESOURCE_EXHAUSTED` answer to a launch it refused
/// before starting anything (all its slots busy): the attempt never ran.
pub const NO_FREE_SLOT: &str = "no free task slot";

/// A draining worker's answer to a launch: like `NO_FREE_SLOT`, a refusal, not an
/// attempt (the coordinator places the task elsewhere).
pub const DRAINING: &str = "the worker is draining: it takes no new task";
