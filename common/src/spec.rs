//! The pipeline spec: `[job]`, `[[sources]]`, `[transform]`, `[sink]` in TOML (or JSON).
//!
//! Parsing rejects unknown keys and formats with the key and the reason; `normalize`
//! resolves relative paths against the spec file's directory and turns every path into
//! a URL, checking that local inputs exist. The normalized spec is what travels to the
//! coordinator (as JSON), so the coordinator never depends on the client's working dir.

use crate::error::{Error, Result};
use crate::util::parse_bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A whole pipeline.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// name, mode, params
    pub job: JobSpec,
    /// the tables the SQL reads
    pub sources: Vec<SourceSpec>,
    /// the SQL
    pub transform: TransformSpec,
    /// where the result goes
    pub sink: SinkSpec,
}

/// `[job]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// `[a-z0-9_-]+`
    pub name: String,
    /// batch (default) or streaming
    #[serde(default)]
    pub mode: JobMode,
    /// tunable overrides
    #[serde(default)]
    pub params: JobParams,
}

/// Batch or streaming.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum JobMode {
    /// run once over the inputs
    #[default]
    Batch,
    /// continuous (Kafka sources; not available yet)
    Streaming,
}

/// `[job.params]`: every tunable a user may pin for this job.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JobParams {
    /// target bytes per task partition, e.g. "64MiB" (default 64 MiB)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_partition_bytes: Option<ByteSize>,
    /// fixes the shuffle partition count instead of deriving it (and, unless
    /// `adaptive_splits = true` is set too, the scans' partition count, as before)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shuffle_partitions: Option<u32>,
    /// the smallest partition a rule makes when it cuts input finer than
    /// `target_partition_bytes` to give every slot work, and the size below which a
    /// coalesced task merges into a neighbour, e.g. "1MiB" (default 1 MiB, Spark
    /// AQE's coalescePartitions.minPartitionSize)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_partition_bytes: Option<ByteSize>,
    /// build scan tasks from file and row-group sizes (big Parquet files split at
    /// row groups, small files packed) instead of one scan partition per shuffle
    /// partition; default true, and off when `shuffle_partitions` is pinned
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive_splits: Option<bool>,
    /// attempts per task before the job fails (default 4)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_task_attempts: Option<u32>,
    /// a join side estimated at most this big is sent whole to every task of the join
    /// (a broadcast join) instead of shuffling both sides; "0" turns broadcasts off
    /// (default 10 MiB, Spark's autoBroadcastJoinThreshold)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcast_join_max_bytes: Option<ByteSize>,
    /// launch speculative copies of straggling tasks (default true)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speculation: Option<bool>,
    /// a task is a straggler when it has run this many times its stage's median
    /// task duration (default 3, Spark's spark.speculation.multiplier)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speculation_multiplier: Option<f64>,
    /// stragglers are looked for once this fraction of a stage's tasks is done
    /// (default 0.9, Spark's spark.speculation.quantile)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speculation_quantile: Option<f64>,
    /// no task younger than this is a straggler (default 1000 ms: a copy of a shorter
    /// task costs about as much to launch as it can save)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speculation_min_runtime_ms: Option<u64>,
    /// an attempt running longer than this is failed (transient) and retried
    /// elsewhere; 0 turns timeouts off (default: derived from the stage's finished
    /// tasks, 10 times the slowest, at least 60 s)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_timeout_ms: Option<u64>,
    /// the derived timeout of an attempt in a stage where no task has finished yet,
    /// when there is no duration to derive it from (default 3600000: 1 hour)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_task_timeout_ms: Option<u64>,
    /// retry a task that ran out of memory with a larger memory share (twice its
    /// slots, up to a whole worker); default true
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive_memory: Option<bool>,
    /// a job that has waited this long with no alive worker or no free task slot
    /// raises a job_stalled alert (default 30000)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stall_alert_ms: Option<u64>,
    /// a job that has waited this long with no alive worker or no free task slot
    /// fails (default: it waits)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_stall_ms: Option<u64>,
    /// adapt the per-task attempt limit (lower it when one cause repeats on several
    /// workers, raise it within twice max_task_attempts when a worker with a high
    /// transient failure rate would exhaust a task); default true, and off when
    /// max_task_attempts is set
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive_retries: Option<bool>,
    /// the job fails when more than this fraction of its source records fail to parse
    /// or convert (they are in the dead letters either way); default 0: any bad
    /// record fails the job
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bad_record_ratio: Option<f64>,
    /// a partitioned join whose build side's shuffled output turns out at most
    /// broadcast_join_max_bytes runs as a broadcast join, and its probe side is not
    /// shuffled (the probe side's stage waits for the build side to finish); default
    /// true
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_broadcast: Option<bool>,
    /// between stages, pack contiguous small reducer partitions into tasks of about
    /// target_partition_bytes (Spark AQE's coalescing); default true
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coalesce: Option<bool>,
    /// split a skewed partition of a join into several tasks, along map-output
    /// boundaries, replicating the other side's partition; default true
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skew_join: Option<bool>,
    /// split a skewed partition of an aggregation's input into pre-merge tasks (each
    /// merging the partial states of a range of map tasks) and one merge task;
    /// default true
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skew_aggregation: Option<bool>,
    /// a reducer partition is skewed when larger than this many times the median
    /// partition (default 5, Spark's skewedPartitionFactor) ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skew_factor: Option<f64>,
    /// ... and larger than this (default 256 MiB, Spark's
    /// skewedPartitionThresholdInBytes)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skew_threshold_bytes: Option<ByteSize>,
    /// place each task on the worker with the most headroom by its heartbeats (CPU,
    /// memory, queue) and its measured speed, not by free slots alone; default: the
    /// coordinator's `--load-aware-placement` (true)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_aware_placement: Option<bool>,
    /// dynamic work rebalancing (liquid sharding): a running scan task that lags its
    /// stage while a slot is idle hands its unread input to a new task; default true
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamic_rebalance: Option<bool>,
    /// ... once the task has run longer than this many times the median of its
    /// stage's finished tasks (default 1.5, Spark's speculation multiplier) ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebalance_lag_factor: Option<f64>,
    /// ... and than this (ms; default 1000)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebalance_min_runtime_ms: Option<u64>,
    /// streaming: the longest a micro-batch collects records before it runs, e.g.
    /// "1s", "500ms" or milliseconds (default 1 s)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_interval: Option<Millis>,
    /// streaming: the most records in one micro-batch (default 100000)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch_rows: Option<u64>,
    /// streaming: the kafka table's event-time column (a timestamp, or an integer of
    /// milliseconds since the epoch) that windows, the watermark and dedup read;
    /// default: the record's Kafka timestamp (`_timestamp`)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time: Option<String>,
    /// streaming: the SQL runs once per event-time window of this length, over the
    /// window's records (with `window_start` and `window_end` columns), once the
    /// watermark has passed its end; e.g. "1m" (default: per micro-batch, no windows)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_size: Option<Millis>,
    /// streaming: a new window starts every this long (hopping windows; default
    /// `window_size`: tumbling windows)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_slide: Option<Millis>,
    /// streaming: the watermark trails the largest event time seen in each partition
    /// by this long; a record whose windows all ended before its partition's
    /// watermark is late and goes to the dead letters (default 5 s)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark_delay: Option<Millis>,
    /// streaming: a partition that has read everything produced and got no record for
    /// this long does not hold the job's watermark back (Flink's idleness), e.g.
    /// "30s"; "0" turns it off (default 30 s)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark_idle_timeout: Option<Millis>,
    /// streaming: drop a record whose values in these columns (comma-separated) were
    /// seen in its partition within `dedup_window` of event time
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_key: Option<String>,
    /// streaming: how long a `dedup_key` is remembered, in event time (default 10 min)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_window: Option<Millis>,
    /// streaming: scale the consumer tasks with the lag (`optimizer::kafka_scaling`);
    /// default true
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka_autoscale: Option<bool>,
    /// streaming: the lag should be read within this long, e.g. "60s" (default 60 s,
    /// the Flink autoscaler's catch-up duration)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up_target: Option<Millis>,
    /// streaming: the share of a consumer task's measured capacity the input rate
    /// may use (default 0.7, the Flink autoscaler's target utilization)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_utilization: Option<f64>,
    /// streaming: consumer tasks are removed only after fewer were enough for this
    /// long, e.g. "5m" (default 5 min, a stabilization window)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_delay: Option<Millis>,
    /// delta sinks: compact the table's small files in the background
    /// (`optimizer::compaction`); default true
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compaction: Option<bool>,
    /// delta sinks: a partition is compacted once one size tier of its files holds
    /// this many (default 50, Delta's auto-compaction threshold)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compaction_min_files: Option<u32>,
    /// delta sinks: the size compaction writes files at, and below which a file is
    /// small, e.g. "128MiB" (default 128 MiB, Delta's optimize target)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compaction_target_file_bytes: Option<ByteSize>,
}

/// A duration in milliseconds, written as `"1s"`, `"500ms"` or a plain integer (ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SizeRepr", into = "u64")]
pub struct Millis(pub u64);

impl TryFrom<SizeRepr> for Millis {
    type Error = String;
    fn try_from(r: SizeRepr) -> std::result::Result<Self, String> {
        match r {
            SizeRepr::N(n) => Ok(Millis(n)),
            SizeRepr::S(s) => crate::util::parse_duration(&s).map(|d| Millis(d.as_millis() as u64)),
        }
    }
}
impl From<Millis> for u64 {
    fn from(m: Millis) -> u64 {
        m.0
    }
}

/// Default micro-batch interval of a streaming job (ms).
pub const DEFAULT_BATCH_INTERVAL_MS: u64 = 1_000;
/// Default most records in one micro-batch.
pub const DEFAULT_MAX_BATCH_ROWS: u64 = 100_000;
/// Default `watermark_delay`.
pub const DEFAULT_WATERMARK_DELAY_MS: u64 = 5_000;
/// Default `watermark_idle_timeout`.
pub const DEFAULT_WATERMARK_IDLE_TIMEOUT_MS: u64 = 30_000;
/// Default `dedup_window`.
pub const DEFAULT_DEDUP_WINDOW_MS: u64 = 600_000;
/// Default `catch_up_target` (the Flink autoscaler's catch-up duration).
pub const DEFAULT_CATCH_UP_TARGET_MS: u64 = 60_000;
/// Default `target_utilization` (the Flink autoscaler's).
pub const DEFAULT_TARGET_UTILIZATION: f64 = 0.7;
/// Default `scale_down_delay`.
pub const DEFAULT_SCALE_DOWN_DELAY_MS: u64 = 300_000;

/// Speculation settings in effect for a job.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Speculation {
    /// on or off
    pub enabled: bool,
    /// straggler = runtime above `multiplier` x median
    pub multiplier: f64,
    /// fraction of the stage done before looking
    pub quantile: f64,
    /// minimum runtime of a straggler
    pub min_runtime_ms: u64,
}

/// Skewed: larger than this many times the median partition (Spark: 5).
pub const DEFAULT_SKEW_FACTOR: f64 = 5.0;
/// Skewed: and larger than this (Spark: 256 MiB).
pub const DEFAULT_SKEW_THRESHOLD_BYTES: u64 = 256 << 20;
/// A scan task is split once it runs this many times its stage's median (Spark's
/// speculation multiplier) ...
pub const DEFAULT_REBALANCE_LAG_FACTOR: f64 = 1.5;
/// ... and at least this long (ms).
pub const DEFAULT_REBALANCE_MIN_RUNTIME_MS: u64 = 1_000;

/// Most shuffle partitions a stage may have: every map task writes one file per
/// partition and every reducer opens one stream per map task.
pub const MAX_SHUFFLE_PARTITIONS: u32 = 10_000;

/// Default broadcast join limit (Spark's spark.sql.autoBroadcastJoinThreshold).
pub const DEFAULT_BROADCAST_JOIN_MAX_BYTES: u64 = 10 << 20;

/// Default target partition size (Spark AQE's advisoryPartitionSizeInBytes is 64 MiB).
pub const DEFAULT_TARGET_PARTITION_BYTES: u64 = 64 << 20;

/// Default files of one size tier that start a compaction (Delta's
/// auto-compaction threshold, `minNumFiles`).
pub const DEFAULT_COMPACTION_MIN_FILES: u32 = 50;
/// Default file size compaction writes (Delta's `optimize` target).
pub const DEFAULT_COMPACTION_TARGET_FILE_BYTES: u64 = 128 << 20;

/// Default smallest partition (Spark AQE's coalescePartitions.minPartitionSize).
pub const DEFAULT_MIN_PARTITION_BYTES: u64 = 1 << 20;

impl JobParams {
    /// Params from `KEY=VALUE` pairs (a cluster's `--param` defaults): VALUE is read
    /// as a TOML value (`4`, `true`, `"64MiB"`), else as a string (`64MiB`). An
    /// unknown key or a value of the wrong type is an error naming it.
    pub fn from_pairs(pairs: &[String]) -> std::result::Result<JobParams, String> {
        let mut table = toml::Table::new();
        for kv in pairs {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("--param '{kv}': expected KEY=VALUE"))?;
            let (k, v) = (k.trim(), v.trim());
            let value = toml::from_str::<toml::Table>(&format!("v = {v}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(v.to_string()));
            table.insert(k.to_string(), value);
        }
        toml::Value::Table(table)
            .try_into()
            .map_err(|e| format!("--param: {}", e.to_string().trim()))
    }

    /// These params, each one not set taken from `defaults` (a job's own params pin
    /// what they name; the cluster's `--param` defaults fill in the rest).
    pub fn or_defaults(self, defaults: &JobParams) -> JobParams {
        let mut mine = serde_json::to_value(&self).expect("params serialize");
        let theirs = serde_json::to_value(defaults).expect("params serialize");
        if let (Some(m), Some(t)) = (mine.as_object_mut(), theirs.as_object()) {
            for (k, v) in t {
                m.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        serde_json::from_value(mine).expect("merged params deserialize")
    }

    /// Effective target partition size.
    pub fn target_partition_bytes(&self) -> u64 {
        self.target_partition_bytes
            .map(|b| b.0)
            .unwrap_or(DEFAULT_TARGET_PARTITION_BYTES)
    }
    /// Effective smallest partition size (never above the target).
    pub fn min_partition_bytes(&self) -> u64 {
        self.min_partition_bytes
            .map(|b| b.0)
            .unwrap_or(DEFAULT_MIN_PARTITION_BYTES)
            .min(self.target_partition_bytes())
    }
    /// Whether scan tasks come from the input splits rule: `adaptive_splits`, else
    /// on unless `shuffle_partitions` pins the job's partition count.
    pub fn adaptive_splits(&self) -> bool {
        self.adaptive_splits
            .unwrap_or(self.shuffle_partitions.is_none())
    }
    /// Effective broadcast join limit.
    pub fn broadcast_join_max_bytes(&self) -> u64 {
        self.broadcast_join_max_bytes
            .map(|b| b.0)
            .unwrap_or(DEFAULT_BROADCAST_JOIN_MAX_BYTES)
    }
    /// Whether compaction runs on the delta tables the job writes (default on).
    pub fn compaction(&self) -> bool {
        self.compaction.unwrap_or(true)
    }
    /// Files of one size tier that start a compaction (at least 2).
    pub fn compaction_min_files(&self) -> u32 {
        self.compaction_min_files
            .unwrap_or(DEFAULT_COMPACTION_MIN_FILES)
            .max(2)
    }
    /// The size compaction writes files at.
    pub fn compaction_target_file_bytes(&self) -> u64 {
        self.compaction_target_file_bytes
            .map(|b| b.0)
            .unwrap_or(DEFAULT_COMPACTION_TARGET_FILE_BYTES)
            .max(1)
    }
    /// Whether running scan tasks may be split (`dynamic_rebalance`, default on).
    pub fn dynamic_rebalance(&self) -> bool {
        self.dynamic_rebalance.unwrap_or(true)
    }
    /// How many times its stage's median a scan task runs before it may be split.
    pub fn rebalance_lag_factor(&self) -> f64 {
        self.rebalance_lag_factor
            .unwrap_or(DEFAULT_REBALANCE_LAG_FACTOR)
    }
    /// How long (ms) a scan task runs at least before it may be split.
    pub fn rebalance_min_runtime_ms(&self) -> u64 {
        self.rebalance_min_runtime_ms
            .unwrap_or(DEFAULT_REBALANCE_MIN_RUNTIME_MS)
    }
    /// Effective skew factor.
    pub fn skew_factor(&self) -> f64 {
        self.skew_factor.unwrap_or(DEFAULT_SKEW_FACTOR)
    }
    /// Effective skew size threshold.
    pub fn skew_threshold_bytes(&self) -> u64 {
        self.skew_threshold_bytes
            .map(|b| b.0)
            .unwrap_or(DEFAULT_SKEW_THRESHOLD_BYTES)
    }
    /// Effective bad-record limit (a fraction of the records read).
    pub fn max_bad_record_ratio(&self) -> f64 {
        self.max_bad_record_ratio.unwrap_or(0.0)
    }
    /// Effective micro-batch interval (ms, at least 1).
    pub fn batch_interval_ms(&self) -> u64 {
        self.batch_interval
            .map(|m| m.0)
            .unwrap_or(DEFAULT_BATCH_INTERVAL_MS)
            .max(1)
    }
    /// Effective most records per micro-batch (at least 1).
    pub fn max_batch_rows(&self) -> u64 {
        self.max_batch_rows.unwrap_or(DEFAULT_MAX_BATCH_ROWS).max(1)
    }
    /// Event-time windows as (size, slide) in ms, when `window_size` is set.
    pub fn window(&self) -> Option<(u64, u64)> {
        let size = self.window_size?.0.max(1);
        Some((size, self.window_slide.map_or(size, |m| m.0.max(1))))
    }
    /// Effective watermark delay (ms).
    pub fn watermark_delay_ms(&self) -> u64 {
        self.watermark_delay
            .map_or(DEFAULT_WATERMARK_DELAY_MS, |m| m.0)
    }
    /// Effective idle-partition timeout of the watermark (ms; 0: off).
    pub fn watermark_idle_timeout_ms(&self) -> u64 {
        self.watermark_idle_timeout
            .map_or(DEFAULT_WATERMARK_IDLE_TIMEOUT_MS, |m| m.0)
    }
    /// The dedup key's columns (empty: no dedup).
    pub fn dedup_columns(&self) -> Vec<String> {
        self.dedup_key
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .collect()
    }
    /// Effective dedup window (ms).
    pub fn dedup_window_ms(&self) -> u64 {
        self.dedup_window.map_or(DEFAULT_DEDUP_WINDOW_MS, |m| m.0)
    }
    /// Whether consumer tasks scale with the lag (`kafka_autoscale`, default on).
    pub fn kafka_autoscale(&self) -> bool {
        self.kafka_autoscale.unwrap_or(true)
    }
    /// Effective catch-up target (ms, at least 1).
    pub fn catch_up_target_ms(&self) -> u64 {
        self.catch_up_target
            .map(|m| m.0)
            .unwrap_or(DEFAULT_CATCH_UP_TARGET_MS)
            .max(1)
    }
    /// Effective target utilization of a consumer task.
    pub fn target_utilization(&self) -> f64 {
        self.target_utilization
            .unwrap_or(DEFAULT_TARGET_UTILIZATION)
    }
    /// Effective stabilization window before consumer tasks are removed (ms).
    pub fn scale_down_delay_ms(&self) -> u64 {
        self.scale_down_delay
            .map(|m| m.0)
            .unwrap_or(DEFAULT_SCALE_DOWN_DELAY_MS)
    }
    /// Effective attempt limit.
    pub fn max_task_attempts(&self) -> u32 {
        self.max_task_attempts.unwrap_or(4).max(1)
    }
    /// Effective speculation settings.
    pub fn speculation(&self) -> Speculation {
        Speculation {
            enabled: self.speculation.unwrap_or(true),
            multiplier: self.speculation_multiplier.unwrap_or(3.0),
            quantile: self.speculation_quantile.unwrap_or(0.9),
            min_runtime_ms: self.speculation_min_runtime_ms.unwrap_or(1000),
        }
    }
}

/// A size in bytes, written as `"64MiB"` or a plain integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SizeRepr", into = "u64")]
pub struct ByteSize(pub u64);

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeRepr {
    N(u64),
    S(String),
}

impl TryFrom<SizeRepr> for ByteSize {
    type Error = String;
    fn try_from(r: SizeRepr) -> std::result::Result<Self, String> {
        match r {
            SizeRepr::N(n) => Ok(ByteSize(n)),
            SizeRepr::S(s) => parse_bytes(&s).map(ByteSize),
        }
    }
}
impl From<ByteSize> for u64 {
    fn from(b: ByteSize) -> u64 {
        b.0
    }
}

/// File formats for sources and sinks.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Apache Parquet
    Parquet,
    /// comma (or `delimiter`) separated values
    Csv,
    /// newline-delimited JSON
    Ndjson,
    /// a Kafka topic (a streaming job's source)
    Kafka,
    /// a Delta Lake table (a sink): Parquet files committed in one Delta transaction
    Delta,
}

impl Format {
    /// File extension without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Parquet => "parquet",
            Format::Csv => "csv",
            Format::Ndjson => "json",
            Format::Kafka => "",
            Format::Delta => "parquet",
        }
    }
    /// Spec name.
    pub fn name(self) -> &'static str {
        match self {
            Format::Parquet => "parquet",
            Format::Csv => "csv",
            Format::Ndjson => "ndjson",
            Format::Kafka => "kafka",
            Format::Delta => "delta",
        }
    }
    /// The format of the files a sink's tasks write (a delta table's are Parquet).
    pub fn file_format(self) -> Format {
        match self {
            Format::Delta => Format::Parquet,
            f => f,
        }
    }
    /// Parses a spec name.
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "parquet" => Some(Format::Parquet),
            "csv" => Some(Format::Csv),
            "ndjson" => Some(Format::Ndjson),
            "kafka" => Some(Format::Kafka),
            "delta" => Some(Format::Delta),
            _ => None,
        }
    }
}

/// `[[sources]]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// table name in SQL
    pub name: String,
    /// parquet | csv | ndjson | kafka | delta
    pub format: Format,
    /// file, directory or glob (delta: the table's root); local path or object-store
    /// URL (not for kafka)
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// csv: first line is a header (default true)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub has_header: Option<bool>,
    /// csv: field delimiter (default ",")
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delimiter: Option<String>,
    /// csv/ndjson/kafka: the columns and their types, as text ("id BIGINT, name
    /// VARCHAR") or a table (`{ id = "int64", name = "utf8" }`) (default: inferred from
    /// the first records, where a malformed value can widen a column to text; give the
    /// schema so such records go to the dead letters)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<SchemaSpec>,
    /// kafka: bootstrap servers, "host:port[,host:port...]"
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brokers: Option<String>,
    /// kafka: the topic
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// kafka: how record values are encoded: json (one JSON object per record)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_format: Option<String>,
    /// kafka: where a partition with no committed offset starts: earliest (default)
    /// or latest
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<KafkaStart>,
    /// kafka: librdkafka settings passed through as they are (`security.protocol`,
    /// `sasl.mechanism`, `ssl.ca.location`, ...)
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, OptionValue>,
    /// delta: read the table as of this version (time travel); default: the version
    /// that is current when the job is submitted (the coordinator pins it here, so
    /// every task of the job reads one snapshot)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// delta: read the table as of this time, RFC 3339 (`2026-12-01T08:00:00Z`): the
    /// last version committed at or before it
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    /// delta: read only these data files of the version (paths relative to the
    /// table's root, as its log names them); a compaction job reads its input so
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
}

/// Where a Kafka partition with no committed offset starts reading.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KafkaStart {
    /// its first retained record
    #[default]
    Earliest,
    /// records produced after the job started
    Latest,
}

/// A `[sources.options]` value: TOML strings, numbers and booleans all pass to
/// librdkafka as text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OptionValue {
    /// text
    Text(String),
    /// integer
    Int(i64),
    /// number
    Float(f64),
    /// flag
    Bool(bool),
}

impl std::fmt::Display for OptionValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OptionValue::Text(s) => f.write_str(s),
            OptionValue::Int(n) => write!(f, "{n}"),
            OptionValue::Float(n) => write!(f, "{n}"),
            OptionValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// A source's columns: `"id BIGINT, name VARCHAR"`, or a table of column = type in
/// the order written (`{ user_id = "int64", ts = "timestamp_ms" }`).
#[derive(Debug, Clone, PartialEq)]
pub enum SchemaSpec {
    /// comma-separated `name TYPE` pairs
    Text(String),
    /// (column, type) in order
    Columns(Vec<(String, String)>),
}

impl SchemaSpec {
    /// The Arrow schema it names (every column nullable).
    pub fn to_schema(&self) -> std::result::Result<datafusion::arrow::datatypes::Schema, String> {
        match self {
            SchemaSpec::Text(t) => parse_schema(t),
            SchemaSpec::Columns(cols) => {
                let mut fields: Vec<datafusion::arrow::datatypes::Field> = vec![];
                for (name, ty) in cols {
                    let dt = parse_type(ty).map_err(|m| format!("column '{name}': {m}"))?;
                    fields.push(datafusion::arrow::datatypes::Field::new(name, dt, true));
                }
                if fields.is_empty() {
                    return Err("names no column".into());
                }
                Ok(datafusion::arrow::datatypes::Schema::new(fields))
            }
        }
    }
}

impl Serialize for SchemaSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            SchemaSpec::Text(t) => s.serialize_str(t),
            SchemaSpec::Columns(cols) => {
                let mut m = s.serialize_map(Some(cols.len()))?;
                for (k, v) in cols {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for SchemaSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = SchemaSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"name TYPE, ...\" or a table of column = \"type\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<SchemaSpec, E> {
                Ok(SchemaSpec::Text(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<SchemaSpec, A::Error> {
                let mut cols: Vec<(String, String)> = vec![];
                while let Some((k, v)) = m.next_entry::<String, String>()? {
                    if cols.iter().any(|c| c.0 == k) {
                        return Err(serde::de::Error::custom(format!(
                            "column '{k}' appears twice"
                        )));
                    }
                    cols.push((k, v));
                }
                Ok(SchemaSpec::Columns(cols))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses a source schema: comma-separated `name TYPE` pairs, with TYPE one of
/// BIGINT, INT, SMALLINT, TINYINT, DOUBLE, FLOAT, VARCHAR (TEXT, STRING), BOOLEAN,
/// DATE, TIMESTAMP or DECIMAL(p, s). Every column is nullable.
pub fn parse_schema(
    text: &str,
) -> std::result::Result<datafusion::arrow::datatypes::Schema, String> {
    use datafusion::arrow::datatypes::{Field, Schema};
    let mut fields: Vec<Field> = vec![];
    // split on commas outside parentheses (DECIMAL(10, 2))
    let mut parts = vec![];
    let (mut depth, mut cur) = (0, String::new());
    for c in text.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    parts.push(cur);
    for part in parts {
        let part = part.trim();
        let Some((name, ty)) = part.split_once(char::is_whitespace) else {
            return Err(format!("'{part}' must be 'name TYPE'"));
        };
        let dt = parse_type(ty).map_err(|m| format!("column '{name}': {m}"))?;
        if fields.iter().any(|f| f.name() == name) {
            return Err(format!("column '{name}' appears twice"));
        }
        fields.push(Field::new(name, dt, true));
    }
    Ok(Schema::new(fields))
}

/// A column type, by its SQL name (BIGINT, INT, SMALLINT, TINYINT, DOUBLE, FLOAT,
/// VARCHAR, BOOLEAN, DATE, TIMESTAMP, DECIMAL(p, s)) or its Arrow name (int64, int32,
/// int16, int8, float64, float32, utf8 or string, bool, date32, timestamp_s,
/// timestamp_ms, timestamp_us, timestamp_ns), case-insensitive.
pub fn parse_type(ty: &str) -> std::result::Result<datafusion::arrow::datatypes::DataType, String> {
    use datafusion::arrow::datatypes::{DataType, TimeUnit};
    let ty = ty.trim().to_ascii_uppercase();
    Ok(match ty.as_str() {
        "BIGINT" | "INT8" | "LONG" | "INT64" => DataType::Int64,
        "INT" | "INTEGER" | "INT4" | "INT32" => DataType::Int32,
        "SMALLINT" | "INT2" | "INT16" => DataType::Int16,
        "TINYINT" => DataType::Int8,
        "DOUBLE" | "FLOAT8" | "FLOAT64" => DataType::Float64,
        "FLOAT" | "REAL" | "FLOAT4" | "FLOAT32" => DataType::Float32,
        "VARCHAR" | "TEXT" | "STRING" | "UTF8" => DataType::Utf8,
        "BOOLEAN" | "BOOL" => DataType::Boolean,
        "DATE" | "DATE32" => DataType::Date32,
        "TIMESTAMP" | "TIMESTAMP_NS" => DataType::Timestamp(TimeUnit::Nanosecond, None),
        "TIMESTAMP_US" => DataType::Timestamp(TimeUnit::Microsecond, None),
        "TIMESTAMP_MS" => DataType::Timestamp(TimeUnit::Millisecond, None),
        "TIMESTAMP_S" => DataType::Timestamp(TimeUnit::Second, None),
        t if t.starts_with("DECIMAL(") && t.ends_with(')') => {
            let inner = &t["DECIMAL(".len()..t.len() - 1];
            let (p, sc) = inner.split_once(',').unwrap_or((inner, "0"));
            match (p.trim().parse::<u8>(), sc.trim().parse::<i8>()) {
                (Ok(p), Ok(sc)) if (1..=38).contains(&p) && sc >= 0 && sc as u8 <= p => {
                    DataType::Decimal128(p, sc)
                }
                _ => return Err(format!("'{ty}' is not a valid DECIMAL(precision, scale)")),
            }
        }
        other => {
            return Err(format!(
                "unknown type '{other}' (use BIGINT, INT, SMALLINT, TINYINT, DOUBLE, FLOAT, VARCHAR, BOOLEAN, DATE, TIMESTAMP or DECIMAL(p, s), or int64, int32, int16, float64, float32, utf8, bool, date32, timestamp_s, timestamp_ms, timestamp_us, timestamp_ns)"
            ))
        }
    })
}

/// `[transform]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TransformSpec {
    /// DataFusion SQL over the source names
    pub sql: String,
}

/// `[sink]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SinkSpec {
    /// parquet | csv | ndjson | kafka | delta
    pub format: Format,
    /// output directory (a delta table's root); local path or object-store URL (not
    /// for kafka)
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// hive-style partition columns
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partition_by: Vec<String>,
    /// overwrite (default) | append | error_if_exists
    #[serde(default)]
    pub mode: SinkMode,
    /// overwrite also deletes files in the sink directory that no autopipe job
    /// committed (by default only what earlier jobs committed there is replaced)
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub overwrite_foreign: bool,
    /// where records that failed to parse or convert are written, one directory per
    /// job (default: the sink path with ".dead-letter" appended, a sibling); a kafka
    /// sink's job also stages its state there
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_path: Option<String>,
    /// kafka: bootstrap brokers, `host:port[,host:port...]`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brokers: Option<String>,
    /// kafka: the topic the output rows go to, one JSON record per row
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// kafka: the column whose value (as text) is each record's key; default none
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// kafka: librdkafka producer settings passed through as they are
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, OptionValue>,
    /// kafka: at-least-once (default: an idempotent producer) or exactly-once
    /// (Kafka transactions that carry each batch's output and its source offsets)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_guarantee: Option<DeliveryGuarantee>,
    /// kafka, exactly-once: the transactional ids are `PREFIX.JOB_ID.pN`, one per
    /// source partition N (default "autopipe")
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transactional_id_prefix: Option<String>,
}

/// How a kafka sink delivers its rows (Flink's `sink.delivery-guarantee`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryGuarantee {
    /// an idempotent producer; a batch whose commit a crash interrupted is sent again
    #[default]
    AtLeastOnce,
    /// each source partition's batch output and its next offset go to Kafka in one
    /// transaction; its next owner resumes after the last committed one (readers
    /// with `isolation.level = read_committed` see each row once)
    ExactlyOnce,
}

impl SinkSpec {
    /// The transactional id of source partition `partition` of job `job_id`, when
    /// the sink is an exactly-once kafka sink.
    pub fn transactional_id(&self, job_id: &str, partition: i32) -> Option<String> {
        (self.format == Format::Kafka
            && self.delivery_guarantee == Some(DeliveryGuarantee::ExactlyOnce))
        .then(|| {
            let prefix = self
                .transactional_id_prefix
                .as_deref()
                .unwrap_or("autopipe");
            format!("{prefix}.{job_id}.p{partition}")
        })
    }

    /// The dead-letter directory of job `job_id` (a URL ending in '/').
    pub fn dead_letter_dir(&self, job_id: &str) -> String {
        format!("{}/{job_id}/", self.dead_letter_root())
    }

    /// The directory that holds every job's dead-letter directory (no trailing '/').
    pub fn dead_letter_root(&self) -> String {
        match &self.dead_letter_path {
            Some(p) => p.trim_end_matches('/').to_string(),
            None => format!("{}.dead-letter", self.path.trim_end_matches('/')),
        }
    }

    /// The directory whose hidden sibling stages the job's output and state: the
    /// sink's, or a kafka sink's dead-letter directory.
    fn work_dir(&self) -> &str {
        match self.format {
            Format::Kafka => self.dead_letter_path.as_deref().unwrap_or_default(),
            _ => &self.path,
        }
    }

    /// The hidden sibling of the sink directory that jobs stage their output in (one
    /// directory per job) until the commit moves it into the sink; ends in '/'.
    pub fn staging_dir(&self) -> String {
        let sink = self.work_dir().trim_end_matches('/');
        let (parent, name) = sink.rsplit_once('/').unwrap_or(("", sink));
        format!("{parent}/.{name}.autopipe-staging/")
    }
}

/// How a sink treats existing output.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SinkMode {
    /// replace what is there when the job commits
    #[default]
    Overwrite,
    /// add files next to what is there
    Append,
    /// fail before running if the directory has files
    ErrorIfExists,
}

impl PipelineSpec {
    /// Parses TOML (or JSON when the text starts with `{`), naming `origin` in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let spec: PipelineSpec = if text.trim_start().starts_with('{') {
            let de = &mut serde_json::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de).map_err(|e| Error::Spec {
                origin: origin.to_string(),
                key: json_key(&e),
                message: e.inner().to_string(),
            })?
        } else {
            toml::from_str(text).map_err(|e| Error::Spec {
                origin: origin.to_string(),
                key: toml_key(text, &e),
                message: e.message().to_string() + &toml_location(text, &e),
            })?
        };
        spec.validate(origin)?;
        Ok(spec)
    }

    /// A typed spec from the API (`autopipe.v1.PipelineSpec`): its fields are the TOML
    /// keys, and a field left unset (an empty string, list or map, an absent optional)
    /// takes the key's default, as a key left out of the TOML does.
    pub fn from_message(m: &autopipe_proto::PipelineSpec, origin: &str) -> Result<Self> {
        let mut v = serde_json::to_value(m).map_err(|e| Error::Spec {
            origin: origin.to_string(),
            key: "-".into(),
            message: e.to_string(),
        })?;
        prune_unset(&mut v);
        Self::parse(&v.to_string(), origin)
    }

    /// Normalizes the paths of a spec sent over the API, where no spec file's
    /// directory can resolve a relative path: an object-store URL stays as it is, an
    /// absolute local path becomes a `file://` URL (a directory's ending in '/'), and
    /// a relative path is refused with its key. Local inputs must exist.
    pub fn normalize_sent(self, origin: &str) -> Result<Self> {
        let mut paths: Vec<(String, &str)> = vec![];
        for (i, s) in self.sources.iter().enumerate() {
            if s.format != Format::Kafka {
                paths.push((format!("sources[{i}].path"), &s.path));
            }
        }
        if self.sink.format != Format::Kafka {
            paths.push(("sink.path".into(), &self.sink.path));
        }
        if let Some(p) = &self.sink.dead_letter_path {
            paths.push(("sink.dead_letter_path".into(), p));
        }
        for (key, p) in paths {
            if !p.contains("://") && !Path::new(p).is_absolute() {
                return Err(Error::Spec {
                    origin: origin.to_string(),
                    key,
                    message: format!(
                        "'{p}' is a relative path, and a spec sent to the API has no \
                         directory to resolve it against: give an absolute path or a URL \
                         (`autopipe submit` resolves relative paths against the spec file)"
                    ),
                });
            }
        }
        self.normalize(Path::new("/"), origin)
    }

    /// Reads and parses a spec file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| Error::Spec {
            origin: origin.clone(),
            key: "-".into(),
            message: format!("cannot read the spec file: {e}"),
        })?;
        Self::parse(&text, &origin)
    }

    /// Checks what serde cannot: names, duplicates, csv options.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let err = |key: String, message: String| Error::Spec {
            origin: origin.to_string(),
            key,
            message,
        };
        if self.job.name.is_empty()
            || !self
                .job
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        {
            return Err(err(
                "job.name".into(),
                format!("'{}' must match [a-z0-9_-]+", self.job.name),
            ));
        }
        if self.sources.is_empty() {
            return Err(err(
                "sources".into(),
                "at least one [[sources]] entry is required".into(),
            ));
        }
        for (i, s) in self.sources.iter().enumerate() {
            let valid = !s.name.is_empty()
                && s.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !s.name.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                return Err(err(
                    format!("sources[{i}].name"),
                    format!(
                        "'{}' is not a valid table name (letters, digits, _)",
                        s.name
                    ),
                ));
            }
            if self.sources[..i].iter().any(|o| o.name == s.name) {
                return Err(err(
                    format!("sources[{i}].name"),
                    format!("duplicate source name '{}'", s.name),
                ));
            }
            let time_travel = [
                ("version", s.version.is_some()),
                ("timestamp", s.timestamp.is_some()),
                ("files", !s.files.is_empty()),
            ];
            if let Some(k) = time_travel
                .into_iter()
                .find_map(|(k, set)| set.then_some(k))
            {
                if s.format != Format::Delta {
                    return Err(err(
                        format!("sources[{i}].{k}"),
                        format!(
                            "applies to format = \"delta\" only, not {}",
                            s.format.name()
                        ),
                    ));
                }
            }
            if s.format == Format::Kafka {
                validate_kafka_source(s).map_err(|(k, m)| err(format!("sources[{i}]{k}"), m))?;
                if self.job.mode != JobMode::Streaming {
                    return Err(err(
                        format!("sources[{i}].format"),
                        "a kafka source is read by a streaming job: set [job] mode = \"streaming\""
                            .into(),
                    ));
                }
                if self.sources[..i].iter().any(|o| o.format == Format::Kafka) {
                    return Err(err(
                        format!("sources[{i}].format"),
                        "a streaming job reads one kafka source (join others as files)".into(),
                    ));
                }
                continue;
            }
            if s.format == Format::Delta {
                if s.version.is_some() && s.timestamp.is_some() {
                    return Err(err(
                        format!("sources[{i}].timestamp"),
                        "give version or timestamp, not both".into(),
                    ));
                }
                if let Some(t) = &s.timestamp {
                    if chrono::DateTime::parse_from_rfc3339(t).is_err() {
                        return Err(err(
                            format!("sources[{i}].timestamp"),
                            format!("'{t}' is not an RFC 3339 time (e.g. 2026-12-01T08:00:00Z)"),
                        ));
                    }
                }
            }
            if let Some(k) = kafka_only_key(s) {
                return Err(err(
                    format!("sources[{i}].{k}"),
                    format!(
                        "applies to format = \"kafka\" only, not {}",
                        s.format.name()
                    ),
                ));
            }
            if s.path.trim().is_empty() {
                return Err(err(format!("sources[{i}].path"), "path is empty".into()));
            }
            if s.format != Format::Csv && (s.has_header.is_some() || s.delimiter.is_some()) {
                return Err(err(
                    format!("sources[{i}]"),
                    "has_header and delimiter apply to format = \"csv\" only".into(),
                ));
            }
            if let Some(schema) = &s.schema {
                if s.format == Format::Parquet {
                    return Err(err(
                        format!("sources[{i}].schema"),
                        "applies to csv and ndjson sources; parquet files carry their schema"
                            .into(),
                    ));
                }
                schema
                    .to_schema()
                    .map_err(|m| err(format!("sources[{i}].schema"), m))?;
            }
            if let Some(d) = &s.delimiter {
                if d.len() != 1 {
                    return Err(err(
                        format!("sources[{i}].delimiter"),
                        format!("'{d}' must be exactly one ASCII character"),
                    ));
                }
            }
        }
        if self.job.mode == JobMode::Streaming
            && !self.sources.iter().any(|s| s.format == Format::Kafka)
        {
            return Err(err(
                "job.mode".into(),
                "a streaming job reads a kafka source ([[sources]] format = \"kafka\"); use mode = \"batch\" for files".into(),
            ));
        }
        if self.sink.format == Format::Kafka {
            validate_kafka_sink(&self.sink, &self.job)
                .map_err(|(k, m)| err(format!("sink.{k}"), m))?;
        } else if let Some(k) = [
            ("brokers", self.sink.brokers.is_some()),
            ("topic", self.sink.topic.is_some()),
            ("key", self.sink.key.is_some()),
            ("options", !self.sink.options.is_empty()),
            ("delivery_guarantee", self.sink.delivery_guarantee.is_some()),
            (
                "transactional_id_prefix",
                self.sink.transactional_id_prefix.is_some(),
            ),
        ]
        .into_iter()
        .find(|(_, set)| *set)
        .map(|(k, _)| k)
        {
            return Err(err(
                format!("sink.{k}"),
                "applies to a kafka sink (format = \"kafka\") only".into(),
            ));
        }
        if self.sink.format == Format::Delta {
            if self.job.mode == JobMode::Streaming {
                return Err(err(
                    "sink.format".into(),
                    "a streaming job cannot write a delta table yet (batch jobs can)".into(),
                ));
            }
            if self.sink.overwrite_foreign {
                return Err(err(
                    "sink.overwrite_foreign".into(),
                    "a delta table's overwrite removes every file of its current version \
                     through the log; files outside it are never read"
                        .into(),
                ));
            }
        }
        if self.transform.sql.trim().is_empty() {
            return Err(err("transform.sql".into(), "sql is empty".into()));
        }
        if self.sink.format != Format::Kafka && self.sink.path.trim().is_empty() {
            return Err(err("sink.path".into(), "path is empty".into()));
        }
        let p = &self.job.params;
        if let Some(r) = p.max_bad_record_ratio {
            if !(0.0..=1.0).contains(&r) {
                return Err(err(
                    "job.params.max_bad_record_ratio".into(),
                    format!("{r} must be between 0 and 1"),
                ));
            }
        }
        let streaming_only = [
            ("event_time", p.event_time.is_some()),
            ("window_size", p.window_size.is_some()),
            ("window_slide", p.window_slide.is_some()),
            ("watermark_delay", p.watermark_delay.is_some()),
            ("watermark_idle_timeout", p.watermark_idle_timeout.is_some()),
            ("dedup_key", p.dedup_key.is_some()),
            ("dedup_window", p.dedup_window.is_some()),
        ];
        if self.job.mode != JobMode::Streaming {
            if let Some((k, _)) = streaming_only.iter().find(|(_, set)| *set) {
                return Err(err(
                    format!("job.params.{k}"),
                    "applies to streaming jobs only (mode = \"streaming\")".into(),
                ));
            }
        }
        if p.window_slide.is_some() && p.window_size.is_none() {
            return Err(err(
                "job.params.window_slide".into(),
                "needs window_size".into(),
            ));
        }
        if let Some((size, slide)) = p.window() {
            if p.window_size.is_some_and(|m| m.0 == 0) || slide == 0 || slide > size {
                return Err(err(
                    "job.params.window_slide".into(),
                    format!("window_size {size} ms and window_slide {slide} ms: both above 0, the slide at most the size"),
                ));
            }
        }
        if p.dedup_window.is_some() && p.dedup_columns().is_empty() {
            return Err(err(
                "job.params.dedup_window".into(),
                "needs dedup_key (the columns that identify a repeat)".into(),
            ));
        }
        if let Some(u) = p.target_utilization {
            if !(u > 0.0 && u <= 1.0) {
                return Err(err(
                    "job.params.target_utilization".into(),
                    format!("{u} must be above 0 and at most 1"),
                ));
            }
        }
        if let Some(q) = p.speculation_quantile {
            if !(q > 0.0 && q <= 1.0) {
                return Err(err(
                    "job.params.speculation_quantile".into(),
                    format!("{q} must be above 0 and at most 1"),
                ));
            }
        }
        if let Some(m) = p.speculation_multiplier {
            if !(m >= 1.0 && m.is_finite()) {
                return Err(err(
                    "job.params.speculation_multiplier".into(),
                    format!("{m} must be at least 1"),
                ));
            }
        }
        if let Some(f) = p.skew_factor {
            if !(f >= 1.0 && f.is_finite()) {
                return Err(err(
                    "job.params.skew_factor".into(),
                    format!("{f} must be at least 1"),
                ));
            }
        }
        if let Some(n) = self.job.params.shuffle_partitions {
            if !(1..=MAX_SHUFFLE_PARTITIONS).contains(&n) {
                return Err(err(
                    "job.params.shuffle_partitions".into(),
                    format!("{n} must be between 1 and {MAX_SHUFFLE_PARTITIONS}"),
                ));
            }
        }
        Ok(())
    }

    /// Resolves paths against `base_dir` into URLs and checks that local inputs exist.
    pub fn normalize(mut self, base_dir: &Path, origin: &str) -> Result<Self> {
        for (i, s) in self.sources.iter_mut().enumerate() {
            if s.format == Format::Kafka {
                continue;
            }
            let key = format!("sources[{i}].path");
            s.path = resolve_url(&s.path, base_dir).map_err(|m| Error::Spec {
                origin: origin.into(),
                key: key.clone(),
                message: m,
            })?;
            check_input_exists(&s.path).map_err(|m| Error::Spec {
                origin: origin.into(),
                key,
                message: m,
            })?;
            // DataFusion reads a URL without a trailing '/' as a single file.
            if let Some(local) = s.path.strip_prefix("file://") {
                if Path::new(local).is_dir() && !s.path.ends_with('/') {
                    s.path.push('/');
                }
            }
        }
        if self.sink.format != Format::Kafka {
            self.sink.path = resolve_url(&self.sink.path, base_dir).map_err(|m| Error::Spec {
                origin: origin.into(),
                key: "sink.path".into(),
                message: m,
            })?;
        }
        if let Some(p) = &self.sink.dead_letter_path {
            self.sink.dead_letter_path =
                Some(resolve_url(p, base_dir).map_err(|m| Error::Spec {
                    origin: origin.into(),
                    key: "sink.dead_letter_path".into(),
                    message: m,
                })?);
        }
        if self.sink.format != Format::Kafka && !self.sink.path.ends_with('/') {
            self.sink.path.push('/');
        }
        Ok(self)
    }
}

/// Drops what a proto3 message cannot leave out (empty strings, lists and maps) and
/// absent optionals, so that serde's defaults apply as to a key left out of the TOML.
fn prune_unset(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Object(m) => m.retain(|_, x| {
            prune_unset(x);
            !matches!(x, Value::Null)
                && x.as_str() != Some("")
                && !x.as_array().is_some_and(Vec::is_empty)
                && !x.as_object().is_some_and(serde_json::Map::is_empty)
        }),
        Value::Array(a) => a.iter_mut().for_each(prune_unset),
        _ => {}
    }
}

/// The first kafka-only key a file source sets.
fn kafka_only_key(s: &SourceSpec) -> Option<&'static str> {
    [
        ("brokers", s.brokers.is_some()),
        ("topic", s.topic.is_some()),
        ("value_format", s.value_format.is_some()),
        ("start", s.start.is_some()),
        ("options", !s.options.is_empty()),
    ]
    .into_iter()
    .find(|(_, set)| *set)
    .map(|(k, _)| k)
}

/// A kafka source's keys: (the key's suffix after `sources[i]`, the reason).
fn validate_kafka_source(s: &SourceSpec) -> std::result::Result<(), (String, String)> {
    let bad = |k: &str, m: String| Err((k.to_string(), m));
    if !s.path.is_empty() {
        return bad(
            ".path",
            "a kafka source has brokers and a topic, not a path".into(),
        );
    }
    if s.has_header.is_some() || s.delimiter.is_some() {
        return bad(
            "",
            "has_header and delimiter apply to format = \"csv\" only".into(),
        );
    }
    check_brokers(s.brokers.as_deref()).map_err(|m| (".brokers".to_string(), m))?;
    check_topic(s.topic.as_deref()).map_err(|m| (".topic".to_string(), m))?;
    match s.value_format.as_deref().unwrap_or("json") {
        "json" => {}
        other => {
            return bad(
                ".value_format",
                format!("'{other}' is not supported (json)"),
            )
        }
    }
    match &s.schema {
        // inferred from the topic's first records when the job is submitted
        None => {}
        Some(schema) => {
            let schema = schema.to_schema().map_err(|m| (".schema".to_string(), m))?;
            if let Some(f) = schema.fields().iter().find(|f| f.name().starts_with('_')) {
                return bad(
                    ".schema",
                    format!(
                        "column '{}': names starting with '_' are kept for the record's _key, _partition, _offset and _timestamp",
                        f.name()
                    ),
                );
            }
        }
    }
    for k in s.options.keys() {
        if matches!(
            k.as_str(),
            "bootstrap.servers" | "group.id" | "enable.auto.commit"
        ) {
            return bad(
                &format!(".options.\"{k}\""),
                "is set by autopipe (brokers; offsets are committed with the output, not to a consumer group)".into(),
            );
        }
    }
    Ok(())
}

/// A Kafka `brokers` list: comma-separated host:port.
fn check_brokers(b: Option<&str>) -> std::result::Result<(), String> {
    let b = b.map(str::trim).unwrap_or_default();
    if b.is_empty() {
        return Err("brokers is required, e.g. \"127.0.0.1:9092\"".into());
    }
    for one in b.split(',') {
        let one = one.trim();
        let port = one
            .rsplit_once(':')
            .and_then(|(h, p)| (!h.is_empty()).then_some(p));
        if port.and_then(|p| p.parse::<u16>().ok()).is_none() {
            return Err(format!("'{one}' is not host:port"));
        }
    }
    Ok(())
}

/// A Kafka topic name.
fn check_topic(t: Option<&str>) -> std::result::Result<(), String> {
    let t = t.unwrap_or_default();
    if t.is_empty() {
        return Err("topic is required".into());
    }
    let legal = t.len() <= 249
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !legal || t == "." || t == ".." {
        return Err(format!(
            "'{t}' is not a Kafka topic name (letters, digits, '.', '_', '-')"
        ));
    }
    Ok(())
}

/// A kafka sink's keys: (the key after `sink.`, the reason).
fn validate_kafka_sink(s: &SinkSpec, job: &JobSpec) -> std::result::Result<(), (String, String)> {
    let bad = |k: &str, m: String| Err((k.to_string(), m));
    if job.mode != JobMode::Streaming {
        return bad(
            "format",
            "a kafka sink takes a streaming job's output (mode = \"streaming\")".into(),
        );
    }
    if !s.path.is_empty() {
        return bad(
            "path",
            "a kafka sink has brokers and a topic, not a path".into(),
        );
    }
    check_brokers(s.brokers.as_deref()).map_err(|m| ("brokers".to_string(), m))?;
    check_topic(s.topic.as_deref()).map_err(|m| ("topic".to_string(), m))?;
    if !s.partition_by.is_empty() {
        return bad(
            "partition_by",
            "a kafka sink partitions by its key (sink.key), not by directories".into(),
        );
    }
    if s.dead_letter_path
        .as_deref()
        .is_none_or(|p| p.trim().is_empty())
    {
        return bad(
            "dead_letter_path",
            "a kafka sink needs a directory for the job's dead letters and state checkpoints, e.g. \"out/clicks.dead-letter\"".into(),
        );
    }
    for k in s.options.keys() {
        if matches!(
            k.as_str(),
            "bootstrap.servers" | "enable.idempotence" | "acks" | "transactional.id"
        ) {
            return bad(
                &format!("options.\"{k}\""),
                "is set by autopipe (brokers; an idempotent producer, acks=all; transactional ids from transactional_id_prefix)".into(),
            );
        }
    }
    let exactly_once = s.delivery_guarantee == Some(DeliveryGuarantee::ExactlyOnce);
    if let Some(p) = &s.transactional_id_prefix {
        if !exactly_once {
            return bad(
                "transactional_id_prefix",
                "applies to delivery_guarantee = \"exactly-once\" only".into(),
            );
        }
        if p.is_empty()
            || !p
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return bad(
                "transactional_id_prefix",
                format!("'{p}' is not a transactional id prefix (letters, digits, '.', '_', '-')"),
            );
        }
    }
    if exactly_once && job.params.window_size.is_some() {
        return bad(
            "delivery_guarantee",
            "exactly-once commits each source partition's output in its own Kafka transaction, and a window's output spans partitions: a windowed job's kafka sink is at-least-once (remove delivery_guarantee or write windows to a file sink)".into(),
        );
    }
    Ok(())
}

/// Turns a path or URL into a URL; relative paths are resolved against `base`.
pub fn resolve_url(path: &str, base: &Path) -> std::result::Result<String, String> {
    if let Some((scheme, _)) = path.split_once("://") {
        return match scheme {
            "file" | "memory" | "s3" => Ok(path.to_string()),
            other => Err(format!(
                "object store scheme '{other}://' is not supported (use a local path, file://, memory:// or s3://)"
            )),
        };
    }
    let p = PathBuf::from(path);
    let abs = if p.is_absolute() { p } else { base.join(p) };
    let abs = normalize_path(&abs);
    let mut s = format!("file://{}", abs.display());
    if path.ends_with('/') && !s.ends_with('/') {
        s.push('/');
    }
    Ok(s)
}

fn normalize_path(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// For `file://` URLs: the path (or, for a glob, at least one match) must exist.
fn check_input_exists(url: &str) -> std::result::Result<(), String> {
    let Some(local) = url.strip_prefix("file://") else {
        return Ok(());
    };
    if local.contains(['*', '?', '[']) {
        let mut matches = glob::glob(local).map_err(|e| format!("bad glob '{local}': {e}"))?;
        return match matches.next() {
            Some(_) => Ok(()),
            None => Err(format!("no file matches '{local}'")),
        };
    }
    let p = Path::new(local);
    if !p.exists() {
        return Err(format!("'{local}' does not exist"));
    }
    if p.is_dir() {
        let has_file = walk_has_file(p);
        if !has_file {
            return Err(format!("directory '{local}' contains no files"));
        }
    }
    Ok(())
}

fn walk_has_file(dir: &Path) -> bool {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return false;
    };
    rd.flatten().any(|e| {
        let p = e.path();
        if p.is_dir() {
            walk_has_file(&p)
        } else {
            !e.file_name().to_string_lossy().starts_with(['.', '_'])
        }
    })
}

fn toml_location(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!(" (line {line})")
        }
        None => String::new(),
    }
}

/// Best-effort dotted key for a TOML error: the table header above the error plus the key on its line.
fn toml_key(text: &str, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else {
        return "-".into();
    };
    let before = &text[..span.start.min(text.len())];
    let mut table = String::new();
    let mut index: std::collections::HashMap<String, i64> = Default::default();
    for line in before.lines() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("[[").and_then(|r| r.strip_suffix("]]")) {
            let n = index.entry(name.trim().to_string()).or_insert(-1);
            *n += 1;
            table = format!("{}[{}]", name.trim(), n);
        } else if let Some(name) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            table = name.trim().to_string();
        }
    }
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line
        .split('=')
        .next()
        .map(str::trim)
        .filter(|k| !k.is_empty() && !k.starts_with('[') && line.contains('='))
        .unwrap_or("");
    match (table.is_empty(), key.is_empty()) {
        (true, true) => "-".into(),
        (true, false) => key.to_string(),
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    }
}

/// The key a JSON spec's error is about: the path where it happened (`sources[0]`),
/// and the field a missing or unknown field error names (`sources[0].format`).
fn json_key(e: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let path = e.path().to_string();
    let msg = e.inner().to_string();
    let field = (msg.starts_with("missing field") || msg.starts_with("unknown field"))
        .then(|| json_key_hint(&msg))
        .filter(|f| f != "-");
    // (the root prints as "."; a path through an empty map key prints as "")
    let key = match (path.as_str(), field) {
        ("." | "", Some(f)) => f,
        ("." | "", None) => json_key_hint(&msg),
        (p, Some(f)) => format!("{p}.{f}"),
        (p, None) => p.to_string(),
    };
    if key.is_empty() {
        "-".into()
    } else {
        key
    }
}

fn json_key_hint(msg: &str) -> String {
    // why: the quoted name can be empty (`unknown variant ``` for `"mode": ""`, or a
    // key that is a backtick), and an error with an empty key names nothing
    match msg.split('`').nth(1) {
        Some(key) if !key.is_empty() => key.to_string(),
        _ => "-".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) const GOOD: &str = r#"
[job]
name = "revenue_by_country"
[job.params]
target_partition_bytes = "32MiB"

[[sources]]
name = "events"
format = "parquet"
path = "data/events"

[[sources]]
name = "users"
format = "csv"
path = "data/users.csv"
has_header = true

[transform]
sql = "SELECT 1"

[sink]
format = "parquet"
path = "out/x"
partition_by = ["country"]
"#;

    #[test]
    fn a_full_spec_parses_with_defaults() {
        let s = PipelineSpec::parse(GOOD, "t.toml").unwrap();
        assert_eq!(s.job.mode, JobMode::Batch);
        assert_eq!(s.job.params.target_partition_bytes(), 32 << 20);
        assert_eq!(s.sink.mode, SinkMode::Overwrite);
        assert_eq!(s.sources[1].format, Format::Csv);
    }

    #[test]
    fn unknown_key_is_named_with_its_table() {
        let bad = GOOD.replace("has_header = true", "has_header = true\nquote_char = \"'\"");
        let e = PipelineSpec::parse(&bad, "t.toml").unwrap_err().to_string();
        assert!(e.contains("t.toml"), "{e}");
        assert!(e.contains("sources[1].quote_char"), "{e}");
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn unknown_format_is_named() {
        let bad = GOOD.replace("format = \"csv\"", "format = \"xml\"");
        let e = PipelineSpec::parse(&bad, "t.toml").unwrap_err().to_string();
        assert!(e.contains("sources[1].format"), "{e}");
        assert!(e.contains("xml"), "{e}");
    }

    #[test]
    fn bad_job_name_and_param_are_rejected() {
        let bad = GOOD.replace("revenue_by_country", "Revenue By Country");
        let e = PipelineSpec::parse(&bad, "t.toml").unwrap_err().to_string();
        assert!(e.contains("job.name"), "{e}");
        let bad = GOOD.replace("\"32MiB\"", "\"32 parsecs\"");
        let e = PipelineSpec::parse(&bad, "t.toml").unwrap_err().to_string();
        assert!(e.contains("target_partition_bytes"), "{e}");
        for n in ["0", "10001", "4000000000"] {
            let bad = GOOD.replace(
                "[job.params]",
                &format!("[job.params]\nshuffle_partitions = {n}"),
            );
            let e = PipelineSpec::parse(&bad, "t.toml").unwrap_err().to_string();
            assert!(
                e.contains("shuffle_partitions") && e.contains("between 1 and 10000"),
                "{e}"
            );
        }
    }

    #[test]
    fn normalize_resolves_relative_paths_and_reports_missing_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("data/events")).unwrap();
        std::fs::write(dir.path().join("data/events/a.parquet"), b"x").unwrap();
        std::fs::write(dir.path().join("data/users.csv"), b"id\n1\n").unwrap();
        let s = PipelineSpec::parse(GOOD, "t.toml").unwrap();
        let n = s.clone().normalize(dir.path(), "t.toml").unwrap();
        assert_eq!(
            n.sources[0].path,
            format!("file://{}/data/events/", dir.path().display())
        );
        assert!(n.sink.path.ends_with("/out/x/"));

        std::fs::remove_file(dir.path().join("data/users.csv")).unwrap();
        let e = s.normalize(dir.path(), "t.toml").unwrap_err().to_string();
        assert!(
            e.contains("sources[1].path") && e.contains("does not exist"),
            "{e}"
        );
    }
}

#[cfg(test)]
mod param_default_tests {
    use super::tests::GOOD;
    use super::*;

    #[test]
    fn cluster_defaults_fill_what_a_job_does_not_pin() {
        let d = JobParams::from_pairs(&[
            "coalesce=false".into(),
            "skew_factor = 3".into(),
            "target_partition_bytes=32MiB".into(),
            "shuffle_partitions=12".into(),
        ])
        .unwrap();
        assert_eq!(d.coalesce, Some(false));
        assert_eq!(d.target_partition_bytes(), 32 << 20);
        let job = JobParams {
            shuffle_partitions: Some(4),
            ..Default::default()
        };
        let merged = job.or_defaults(&d);
        assert_eq!(merged.shuffle_partitions, Some(4), "the job's pin wins");
        assert_eq!(merged.skew_factor, Some(3.0));
        assert_eq!(merged.coalesce, Some(false));
        assert_eq!(
            JobParams::default().or_defaults(&JobParams::default()),
            JobParams::default()
        );
    }

    #[test]
    fn a_bad_param_names_the_key_or_the_pair() {
        let e = JobParams::from_pairs(&["colaesce=false".into()]).unwrap_err();
        assert!(e.contains("colaesce"), "{e}");
        let e = JobParams::from_pairs(&["coalesce".into()]).unwrap_err();
        assert!(e.contains("KEY=VALUE"), "{e}");
        let e = JobParams::from_pairs(&["skew_factor=high".into()]).unwrap_err();
        assert!(
            e.contains("skew_factor") || e.contains("invalid type"),
            "{e}"
        );
    }

    /// A streaming spec with `source` as its kafka source's extra lines.
    fn streaming(source: &str, job: &str) -> String {
        format!(
            r#"
[job]
name = "s"
{job}
[[sources]]
name = "clicks"
format = "kafka"
{source}
[transform]
sql = "SELECT * FROM clicks"
[sink]
format = "parquet"
path = "out/x"
"#
        )
    }

    const KAFKA: &str = r#"brokers = "127.0.0.1:9092"
topic = "clicks"
schema = { user_id = "int64", url = "utf8", ts = "timestamp_ms" }"#;

    #[test]
    fn a_streaming_spec_reads_its_kafka_keys_and_params() {
        let spec = PipelineSpec::parse(
            &streaming(
                &format!("{KAFKA}\nstart = \"latest\"\n[sources.options]\n\"security.protocol\" = \"SASL_SSL\"\n\"fetch.min.bytes\" = 1"),
                "mode = \"streaming\"\n[job.params]\nbatch_interval = \"500ms\"\nmax_batch_rows = 10\ncatch_up_target = \"2s\"\ntarget_utilization = 0.5\nscale_down_delay = \"3s\"\nkafka_autoscale = false",
            ),
            "s.toml",
        )
        .unwrap();
        let s = &spec.sources[0];
        assert_eq!(s.format, Format::Kafka);
        assert_eq!(s.start, Some(KafkaStart::Latest));
        assert_eq!(s.options["security.protocol"].to_string(), "SASL_SSL");
        assert_eq!(s.options["fetch.min.bytes"].to_string(), "1");
        let names: Vec<String> = s
            .schema
            .as_ref()
            .unwrap()
            .to_schema()
            .unwrap()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(names, ["user_id", "url", "ts"], "in the order written");
        assert_eq!(spec.job.params.batch_interval_ms(), 500);
        assert_eq!(spec.job.params.max_batch_rows(), 10);
        let p = &spec.job.params;
        assert_eq!(
            (
                p.catch_up_target_ms(),
                p.target_utilization(),
                p.scale_down_delay_ms(),
                p.kafka_autoscale()
            ),
            (2000, 0.5, 3000, false)
        );
        // the normalized spec travels as JSON and keeps the column order
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(PipelineSpec::parse(&json, "j").unwrap(), spec);
        let normalized = spec
            .clone()
            .normalize(Path::new("/base"), "s.toml")
            .unwrap();
        assert_eq!(normalized.sources[0].path, "", "a kafka source has no path");
    }

    #[tokio::test]
    async fn the_examples_are_valid_specs() {
        let stream = PipelineSpec::parse(
            include_str!("../../examples/clicks_stream.toml"),
            "examples/clicks_stream.toml",
        )
        .unwrap();
        let p = &stream.job.params;
        assert_eq!(p.window(), Some((60_000, 60_000)));
        assert_eq!(p.dedup_columns(), ["user_id", "ts"]);
        let schema = crate::kafka::table_schema(&stream.sources[0]).unwrap();
        crate::stream_state::StateParams::of(p)
            .unwrap()
            .check(&schema)
            .unwrap();
        // its SQL plans over the windowed table (no broker needed for that)
        let (ctx, _, _) = crate::kafka::stream_context(&stream).await.unwrap();
        let df = ctx.sql(&stream.transform.sql).await.unwrap();
        assert!(df
            .schema()
            .field_with_unqualified_name("window_start")
            .is_ok());
        PipelineSpec::parse(
            include_str!("../../examples/clickstream.toml"),
            "examples/clickstream.toml",
        )
        .unwrap();
    }

    #[test]
    fn a_kafka_sink_needs_a_streaming_job_brokers_a_topic_and_a_dead_letter_path() {
        let sink = |lines: &str, mode: &str| {
            streaming(KAFKA, mode).replace(
                "[sink]\nformat = \"parquet\"\npath = \"out/x\"",
                &format!("[sink]\nformat = \"kafka\"\n{lines}"),
            )
        };
        let ok = "brokers = \"h:1\"\ntopic = \"out\"\nkey = \"url\"\ndead_letter_path = \"dl\"";
        let spec = PipelineSpec::parse(&sink(ok, "mode = \"streaming\""), "s.toml").unwrap();
        assert_eq!(spec.sink.topic.as_deref(), Some("out"));
        let n = spec.normalize(Path::new("/base"), "s.toml").unwrap();
        assert_eq!(n.sink.path, "", "a kafka sink has no path");
        assert_eq!(n.sink.staging_dir(), "file:///base/.dl.autopipe-staging/");
        assert_eq!(n.sink.transactional_id("j1", 3), None, "at-least-once");
        let eos = format!("{ok}\ndelivery_guarantee = \"exactly-once\"");
        let spec = PipelineSpec::parse(&sink(&eos, "mode = \"streaming\""), "s.toml").unwrap();
        assert_eq!(
            spec.sink.transactional_id("j1", 3).as_deref(),
            Some("autopipe.j1.p3")
        );
        let cases = [
            (
                sink(
                    "topic = \"out\"\ndead_letter_path = \"dl\"",
                    "mode = \"streaming\"",
                ),
                "sink.brokers",
                "required",
            ),
            (
                sink("brokers = \"h:1\"\ntopic = \"out\"", "mode = \"streaming\""),
                "sink.dead_letter_path",
                "state",
            ),
            (
                streaming(KAFKA, "mode = \"streaming\"")
                    .replace("path = \"out/x\"", "path = \"out/x\"\ntopic = \"t\""),
                "sink.topic",
                "kafka sink",
            ),
            (
                streaming(KAFKA, "mode = \"streaming\"").replace(
                    "path = \"out/x\"",
                    "path = \"out/x\"\ndelivery_guarantee = \"exactly-once\"",
                ),
                "sink.delivery_guarantee",
                "kafka sink",
            ),
            (
                sink(
                    &format!("{ok}\ntransactional_id_prefix = \"x\""),
                    "mode = \"streaming\"",
                ),
                "sink.transactional_id_prefix",
                "exactly-once",
            ),
            (
                sink(
                    &format!("{ok}\ndelivery_guarantee = \"exactly-once\"\ntransactional_id_prefix = \"a b\""),
                    "mode = \"streaming\"",
                ),
                "sink.transactional_id_prefix",
                "letters",
            ),
            (
                sink(
                    &format!("{ok}\ndelivery_guarantee = \"exactly-once\""),
                    "mode = \"streaming\"\n[job.params]\nwindow_size = \"1m\"",
                ),
                "sink.delivery_guarantee",
                "window",
            ),
            (
                sink(
                    &format!("{ok}\ndelivery_guarantee = \"exactly_once\""),
                    "mode = \"streaming\"",
                ),
                "delivery_guarantee",
                "exactly-once",
            ),
        ];
        for (text, key, why) in cases {
            let e = PipelineSpec::parse(&text, "s.toml")
                .unwrap_err()
                .to_string();
            assert!(e.contains(key) && e.contains(why), "{key} / {why}: {e}");
        }
    }

    #[test]
    fn kafka_source_mistakes_name_their_key() {
        let streaming_mode = "mode = \"streaming\"";
        let cases = [
            (streaming(KAFKA, ""), "sources[0].format", "streaming"),
            (
                streaming("topic = \"t\"\nschema = \"a BIGINT\"", streaming_mode),
                "sources[0].brokers",
                "required",
            ),
            (
                streaming(
                    "brokers = \"localhost\"\ntopic = \"t\"\nschema = \"a BIGINT\"",
                    streaming_mode,
                ),
                "sources[0].brokers",
                "host:port",
            ),
            (
                streaming("brokers = \"h:1\"\nschema = \"a BIGINT\"", streaming_mode),
                "sources[0].topic",
                "required",
            ),
            (
                streaming(
                    "brokers = \"h:1\"\ntopic = \"a b\"\nschema = \"a BIGINT\"",
                    streaming_mode,
                ),
                "sources[0].topic",
                "topic name",
            ),
            (
                streaming(
                    "brokers = \"h:1\"\ntopic = \"t\"\nschema = { a = \"int99\" }",
                    streaming_mode,
                ),
                "sources[0].schema",
                "unknown type",
            ),
            (
                streaming(
                    "brokers = \"h:1\"\ntopic = \"t\"\nschema = { _key = \"utf8\" }",
                    streaming_mode,
                ),
                "sources[0].schema",
                "_partition",
            ),
            (
                streaming(&format!("{KAFKA}\nvalue_format = \"avro\""), streaming_mode),
                "sources[0].value_format",
                "avro",
            ),
            (
                streaming(&format!("{KAFKA}\npath = \"x\""), streaming_mode),
                "sources[0].path",
                "not a path",
            ),
            (
                streaming(
                    &format!("{KAFKA}\n[sources.options]\n\"group.id\" = \"g\""),
                    streaming_mode,
                ),
                "group.id",
                "set by autopipe",
            ),
            (
                streaming(
                    KAFKA,
                    "mode = \"streaming\"\n[job.params]\ntarget_utilization = 1.5",
                ),
                "job.params.target_utilization",
                "at most 1",
            ),
            (
                streaming(KAFKA, "mode = \"streaming\"\n[job.params]\nwindow_slide = \"1s\""),
                "job.params.window_slide",
                "needs window_size",
            ),
            (
                streaming(
                    KAFKA,
                    "mode = \"streaming\"\n[job.params]\nwindow_size = \"1s\"\nwindow_slide = \"2s\"",
                ),
                "job.params.window_slide",
                "at most the size",
            ),
            (
                streaming(KAFKA, "mode = \"streaming\"\n[job.params]\ndedup_window = \"1m\""),
                "job.params.dedup_window",
                "needs dedup_key",
            ),
        ];
        for (text, key, why) in cases {
            let e = PipelineSpec::parse(&text, "s.toml")
                .unwrap_err()
                .to_string();
            assert!(e.contains(key) && e.contains(why), "{key} / {why}: {e}");
        }
        // a file source may not carry kafka keys, and streaming needs a kafka source
        let e = PipelineSpec::parse(
            &GOOD.replace("has_header = true", "has_header = true\ntopic = \"t\""),
            "g",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("sources[1].topic") && e.contains("kafka"), "{e}");
        let e = PipelineSpec::parse(
            &GOOD.replace(
                "name = \"revenue_by_country\"",
                "name = \"r\"\nmode = \"streaming\"",
            ),
            "g",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("job.mode") && e.contains("kafka"), "{e}");
    }
}

#[cfg(test)]
mod message_tests {
    use super::*;
    use autopipe_proto as pb;

    /// The field names serde reads for `T` (its `deserialize_struct` fields).
    fn serde_fields<'de, T: Deserialize<'de>>() -> Vec<&'static str> {
        struct Grab(Vec<&'static str>);
        impl<'de> serde::Deserializer<'de> for &mut Grab {
            type Error = serde::de::value::Error;
            fn deserialize_any<V: serde::de::Visitor<'de>>(
                self,
                _: V,
            ) -> std::result::Result<V::Value, Self::Error> {
                Err(serde::de::Error::custom("fields only"))
            }
            fn deserialize_struct<V: serde::de::Visitor<'de>>(
                self,
                _: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> std::result::Result<V::Value, Self::Error> {
                self.0 = fields.to_vec();
                Err(serde::de::Error::custom("fields only"))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 u8 u16 u32 u64 f32 f64 char str string bytes
                byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct
                map enum identifier ignored_any
            }
        }
        let mut g = Grab(vec![]);
        let _ = T::deserialize(&mut g);
        let mut f = g.0;
        f.sort();
        f
    }

    /// A message's field names (all of them: unset ones serialize as null or empty).
    fn message_fields(m: impl serde::Serialize) -> Vec<String> {
        let v = serde_json::to_value(m).unwrap();
        let mut f: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        f.sort();
        f
    }

    #[test]
    fn the_typed_spec_message_has_every_key_of_the_toml() {
        assert_eq!(
            message_fields(pb::JobParams::default()),
            serde_fields::<JobParams>()
        );
        assert_eq!(
            message_fields(pb::SourceSpec::default()),
            serde_fields::<SourceSpec>()
        );
        assert_eq!(
            message_fields(pb::SinkSpec::default()),
            serde_fields::<SinkSpec>()
        );
        assert_eq!(
            message_fields(pb::JobSpec::default()),
            serde_fields::<JobSpec>()
        );
        assert_eq!(
            message_fields(pb::PipelineSpec::default()),
            serde_fields::<PipelineSpec>()
        );
    }

    fn message(dir: &Path) -> pb::PipelineSpec {
        pb::PipelineSpec {
            job: Some(pb::JobSpec {
                name: "typed".into(),
                params: Some(pb::JobParams {
                    target_partition_bytes: Some("32MiB".into()),
                    coalesce: Some(false),
                    shuffle_partitions: Some(8),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            sources: vec![pb::SourceSpec {
                name: "events".into(),
                format: "csv".into(),
                path: dir.join("in").display().to_string(),
                schema: Some("id BIGINT, name VARCHAR".into()),
                ..Default::default()
            }],
            transform: Some(pb::TransformSpec {
                sql: "SELECT * FROM events".into(),
            }),
            sink: Some(pb::SinkSpec {
                format: "parquet".into(),
                path: format!("file://{}", dir.join("out").display()),
                mode: "append".into(),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_typed_spec_is_the_toml_spec_with_its_paths_normalized() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("in")).unwrap();
        std::fs::write(dir.path().join("in/a.csv"), "id,name\n1,x\n").unwrap();
        let s = PipelineSpec::from_message(&message(dir.path()), "req")
            .unwrap()
            .normalize_sent("req")
            .unwrap();
        assert_eq!(s.job.mode, JobMode::Batch, "an empty enum is its default");
        assert_eq!(s.job.params.target_partition_bytes(), 32 << 20);
        assert_eq!(s.job.params.coalesce, Some(false));
        assert_eq!(s.job.params.speculation, None, "unset stays unset");
        assert_eq!(s.sink.mode, SinkMode::Append);
        assert!(s.sink.partition_by.is_empty());
        // a local directory became a URL ending in '/'
        assert_eq!(
            s.sources[0].path,
            format!("file://{}/", dir.path().join("in").display())
        );
        assert!(s.sink.path.ends_with("/out/"));
    }

    #[test]
    fn a_typed_specs_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = |m: pb::PipelineSpec| -> String {
            match PipelineSpec::from_message(&m, "req").and_then(|s| s.normalize_sent("req")) {
                Err(Error::Spec { key, .. }) => key,
                other => panic!("{other:?}"),
            }
        };
        let mut m = message(dir.path());
        m.sources[0].path = "data/in".into();
        assert_eq!(key(m), "sources[0].path", "a relative path");
        let mut m = message(dir.path());
        m.sources[0].format = "xls".into();
        assert_eq!(key(m), "sources[0].format");
        let mut m = message(dir.path());
        m.sink.as_mut().unwrap().format = String::new();
        assert_eq!(key(m), "sink.format", "a required key left empty");
        let mut m = message(dir.path());
        m.sink.as_mut().unwrap().dead_letter_path = Some("dl".into());
        assert_eq!(key(m), "sink.dead_letter_path");
        let mut m = message(dir.path());
        m.job
            .as_mut()
            .unwrap()
            .params
            .as_mut()
            .unwrap()
            .skew_threshold_bytes = Some("lots".into());
        assert_eq!(key(m), "job.params.skew_threshold_bytes");
    }
}

#[cfg(test)]
mod delta_tests {
    use super::tests::GOOD;
    use super::*;

    #[test]
    fn a_delta_sink_writes_parquet_files_and_refuses_what_it_cannot_do_yet() {
        let delta = GOOD.replace("[sink]\nformat = \"parquet\"", "[sink]\nformat = \"delta\"");
        let s = PipelineSpec::parse(&delta, "d.toml").unwrap();
        assert_eq!(s.sink.format, Format::Delta);
        assert_eq!(s.sink.format.file_format(), Format::Parquet);
        let key = |text: &str| match PipelineSpec::parse(text, "d.toml") {
            Err(Error::Spec { key, .. }) => key,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            key(&delta.replace(
                "partition_by = ",
                "overwrite_foreign = true\npartition_by = "
            )),
            "sink.overwrite_foreign"
        );
        // a delta source reads one version, by number or time, not both
        let source = GOOD.replacen("format = \"parquet\"", "format = \"delta\"", 1);
        let s = PipelineSpec::parse(&source, "d.toml").unwrap();
        assert_eq!(s.sources[0].format, Format::Delta);
        let at = |extra: &str| {
            source.replacen(
                "path = \"data/events\"",
                &format!("path = \"data/events\"\n{extra}"),
                1,
            )
        };
        assert!(PipelineSpec::parse(&at("version = 3"), "d.toml").is_ok());
        assert!(PipelineSpec::parse(&at("timestamp = \"2026-12-01T08:00:00Z\""), "d.toml").is_ok());
        assert_eq!(
            key(&at("version = 3\ntimestamp = \"2026-12-01T08:00:00Z\"")),
            "sources[0].timestamp"
        );
        assert_eq!(
            key(&at("timestamp = \"yesterday\"")),
            "sources[0].timestamp"
        );
        // time travel and file lists are a delta source's only
        let parquet = |extra: &str| {
            GOOD.replacen(
                "path = \"data/events\"",
                &format!("path = \"data/events\"\n{extra}"),
                1,
            )
        };
        assert_eq!(key(&parquet("version = 3")), "sources[0].version");
        assert_eq!(key(&parquet("files = [\"a.parquet\"]")), "sources[0].files");
    }
}
