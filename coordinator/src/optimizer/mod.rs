//! Self-optimizing rules: each a pure function over the replicated state whose
//! result the leader proposes as commands and records as a decision (what, why, the
//! inputs it read; the effect is filled in once measured).
//!
//! - `replan`: re-plans a stage from its inputs' statistics before it runs, with
//!   `coalesce` (small reducer partitions packed) and `skew` (a skewed join partition
//!   split; a skewed aggregation partition pre-merged in pieces, then merged once);
//! - `broadcast`: a join whose build side turned out small runs as a broadcast join,
//!   its probe side unshuffled;
//! - `partitions`: scan tasks from file and row-group sizes, and the shuffle width;
//! - `memory`: a task out of memory retries with a larger share;
//! - `retry_limit`: a job's per-task attempt limit lowered or raised;
//! - `speculation`: a straggling task gets a copy on another worker;
//! - `timeouts`: an attempt past its task timeout fails and is retried elsewhere;
//! - `liquid`: a running scan task that lags hands its unread input to a new task;
//! - `scaling`: workers added for a backlog, idle ones released;
//! - `kafka_scaling`: a streaming job's consumer tasks scaled with its lag;
//! - `compaction`: a delta table's partition whose small files fill a size tier is
//!   rewritten into target-sized files by a background job.

pub mod broadcast;
pub mod coalesce;
pub mod compaction;
pub mod kafka_scaling;
pub mod liquid;
pub mod memory;
pub mod partitions;
pub mod placement;
pub mod replan;
pub mod retry_limit;
pub mod scaling;
pub mod skew;
pub mod speculation;
pub mod timeouts;
