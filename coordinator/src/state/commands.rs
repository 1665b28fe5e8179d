//! Commands: every change to the coordinator's durable state. A command is written
//! to the log before it is applied, and applying it is deterministic.

use autopipe_common::spec::PipelineSpec;
use serde::{Deserialize, Serialize};

/// An error as recorded in the state (class + message + spec key).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorRecord {
    /// "transient" | "permanent" | "data"
    pub class: String,
    /// what happened
    pub message: String,
    /// spec key, if any
    pub key: String,
    /// set when a reduce task could not read a map output
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetch_failed: Option<FetchFailedRecord>,
    /// the attempt could not be launched: its worker did not answer
    #[serde(default)]
    pub worker_unreachable: bool,
}

/// Which map output a reducer could not read.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FetchFailedRecord {
    /// producing stage
    pub stage: u32,
    /// producing map task
    pub map_task: u32,
    /// the worker that was to serve it
    pub worker_id: String,
}

/// One planned stage of a job.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StagePlan {
    /// index within the job
    pub id: u32,
    /// datafusion-proto bytes of the stage plan (shared: jobs are cloned for dry runs)
    #[serde(with = "shared_bytes")]
    pub plan: std::sync::Arc<Vec<u8>>,
    /// human-readable plan
    pub display: String,
    /// tasks = partitions of the stage's input side
    pub tasks: u32,
    /// `Some(n)`: a map stage writing n shuffle partitions; `None`: the sink stage
    pub shuffle_partitions: Option<u32>,
    /// stages whose output this stage reads (planned ones come before it; a
    /// pre-merge stage appended at run time after it)
    pub inputs: Vec<u32>,
    /// the stage's partitioned hash join, if it is one a skew split may divide
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<StageJoin>,
    /// the stage as a broadcast join, should its join's build side turn out small
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcast: Option<Box<BroadcastPlan>>,
    /// a pre-merge step for the stage's aggregation, should a partition of its input
    /// turn out skewed (`optimizer::skew`)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_merge: Option<Box<PreMergePlan>>,
    /// this (probe side's map) stage filtered by the keys of a join's build side,
    /// should that side turn out small (`optimizer::broadcast`)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reduce: Option<Box<ReducePlan>>,
}

/// A probe side's map stage that first keeps only the rows whose join keys occur in
/// the build side's output (a collect-left right-semi join against that whole
/// output), then shuffles as planned. For joins whose unmatched probe rows produce
/// nothing (inner, left, left semi/anti/mark without null-aware `NOT IN`): the rows it
/// drops could match no build row. Used when the build side turns out small.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReducePlan {
    /// datafusion-proto bytes of the stage's plan with the filter
    #[serde(with = "shared_bytes")]
    pub plan: std::sync::Arc<Vec<u8>>,
    /// human-readable plan
    pub display: String,
    /// the stages it reads (the build side's and the stage's own inputs)
    pub inputs: Vec<u32>,
    /// the build side's stage, read whole by every task
    pub build: u32,
    /// the join stage both sides feed
    pub join: u32,
}

/// The pre-merge step of a stage whose hash aggregation merges the partial states of
/// one hash-shuffled input: run over a range of that input's map tasks, it merges
/// their partial states of one partition into partial states again (DataFusion's
/// `PartialReduce` aggregate) and shuffles them exactly as the input did. A skewed
/// partition then runs as several pre-merge tasks and one merge task that reads
/// their output instead of the input's (`TaskReads::via`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PreMergePlan {
    /// datafusion-proto bytes of the pre-merge stage's plan
    #[serde(with = "shared_bytes")]
    pub plan: std::sync::Arc<Vec<u8>>,
    /// human-readable plan
    pub display: String,
    /// the input stage whose partial states it merges
    pub input: u32,
}

/// A join stage planned as a broadcast join instead (`optimizer::broadcast`): every
/// task reads the build side's whole output, and the probe side's map stage runs
/// inside this stage instead of shuffling.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BroadcastPlan {
    /// datafusion-proto bytes of the stage's plan as a broadcast join
    #[serde(with = "shared_bytes")]
    pub plan: std::sync::Arc<Vec<u8>>,
    /// human-readable plan
    pub display: String,
    /// its tasks: the probe side's input partitions
    pub tasks: u32,
    /// the stages it reads (the build side's, and the probe stage's own inputs)
    pub inputs: Vec<u32>,
    /// the build side's stage: small enough, its output goes whole to every task
    pub build: u32,
    /// the probe side's map stage, which then never runs
    pub fused: u32,
}

/// A stage's partitioned hash join of two hash-shuffled inputs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StageJoin {
    /// DataFusion's join type (`Inner`, `Left`, ...)
    pub join_type: String,
    /// the input stage on the build (left) side
    pub left: u32,
    /// the input stage on the probe (right) side
    pub right: u32,
    /// the left side's partitions may be divided between tasks (each task then reads
    /// the right side's whole partition)
    pub split_left: bool,
    /// the right side's partitions may be divided
    pub split_right: bool,
}

pub use autopipe_common::task::TaskResult;

/// What one task of a re-planned stage reads: output partitions `[start, end)` of
/// each hash-shuffled input (a coalesced range, or one skewed partition), of every map
/// task, or of the map tasks `[from, to)` named in `map_ranges` for a skew split's
/// side. It runs plan partition `start` (every reader of the stage widens it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TaskReads {
    /// first reducer partition
    pub start: u32,
    /// one past the last reducer partition
    pub end: u32,
    /// a skew split: only map tasks `[from, to)` of input stage `stage`, as
    /// `(stage, from, to)`; inputs not named are read whole
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub map_ranges: Vec<(u32, u32, u32)>,
    /// a skewed aggregation's merge task: input stage `.0`'s partitions are read from
    /// the pre-merge stage `.1` (its tasks that read them), as `(input, stage)`
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub via: Vec<(u32, u32)>,
}

impl TaskReads {
    /// Partitions `[start, end)` of every map task of every input.
    pub fn range(start: u32, end: u32) -> Self {
        Self {
            start,
            end,
            map_ranges: vec![],
            via: vec![],
        }
    }
}

/// The retry-limit rule's outcome for one failure (`optimizer::retry_limit`): the
/// job's new per-task attempt limit and the decision that explains it, or nothing
/// (the limit stays).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RetryLimitOutcome {
    /// the limit it changes, with its decision
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<RetryLimitChange>,
}

/// A changed per-task attempt limit. Applied only while the job's limit is still
/// `from`: two failures whose outcomes were worked out at once from the same limit
/// change it once (the second, stale, is dropped).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RetryLimitChange {
    /// the limit the rule saw
    pub from: u32,
    /// the limit from now on
    pub to: u32,
    /// why
    pub decision: crate::state::decision::Decision,
}

/// The scan input of a task that dynamic rebalancing split (`optimizer::liquid`): its
/// scan of plan partition `partition` reads exactly `ranges` (a prefix kept by the
/// split task, or the remainder a new task took).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ScanSlice {
    /// the plan partition whose scan is narrowed
    pub partition: u32,
    /// the file ranges it reads (Parquet ranges cut at row-group starts)
    pub ranges: Vec<autopipe_common::tolerant::FileRange>,
}

/// Where a task split off a running one came from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SplitOrigin {
    /// the task that was split
    pub task: u32,
    /// its attempt that agreed to stop at the split point
    pub attempt: u32,
    /// splits of that attempt recorded before this one
    pub seq: u32,
    /// the `split_running_task` decision
    pub decision: u64,
}

/// A worker's machine and shuffle directory, for reducers on the same machine.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ShuffleHome {
    /// `autopipe_common::shuffle::host_id()` of the worker's machine
    pub host_id: String,
    /// the worker's shuffle directory there
    pub dir: String,
}

/// Why a running job cannot progress.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Waiting {
    /// what it waits for, and what to do
    pub reason: String,
    /// since when (ms since the epoch)
    pub since_ms: u64,
}

/// Everything the state machine accepts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// a worker joined, or came back under the id it keeps in its work dir: a lost
    /// entry with that id is alive again at the new address; an alive one means its
    /// process restarted, so its attempts and map outputs are lost first (the one
    /// lost-worker path), then it is alive again
    RegisterWorker {
        /// assigned (or kept) id
        worker_id: String,
        /// gRPC/Flight address
        address: String,
        /// admin/metrics address
        http_address: String,
        /// concurrent tasks
        slots: u32,
        /// when
        at_ms: u64,
        /// where its shuffle files live
        #[serde(default)]
        shuffle: ShuffleHome,
    },
    /// a worker missed its heartbeats; its running tasks and unread outputs are redone
    WorkerLost {
        /// which
        worker_id: String,
        /// when
        at_ms: u64,
    },
    /// a planned job was accepted
    SubmitJob {
        /// id
        job_id: String,
        /// normalized spec (boxed: the other commands are small)
        spec: Box<PipelineSpec>,
        /// stages in dependency order; the last one is the sink stage
        stages: Vec<StagePlan>,
        /// when
        at_ms: u64,
        /// the client's idempotency key (empty: none)
        #[serde(default, skip_serializing_if = "String::is_empty")]
        request_id: String,
        /// the fingerprint of the client's spec text, so the key reused with another
        /// spec is refused (0: none recorded)
        #[serde(default, skip_serializing_if = "is_zero")]
        request_hash: u64,
        /// a streaming job's topic and partition assignment (its one stage's tasks
        /// are the consumer tasks)
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stream: Option<Box<crate::state::machine::StreamPlan>>,
        /// a delta sink's table schema (Delta's JSON), from the planned output
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sink_schema: Option<String>,
        /// a compaction job's input (`optimizer::compaction`): it runs in the
        /// background and its commit replaces these files
        #[serde(default, skip_serializing_if = "Option::is_none")]
        compaction: Option<Box<crate::optimizer::compaction::CompactionJob>>,
    },
    /// a task attempt was sent to a worker
    TaskLaunched {
        /// job
        job_id: String,
        /// stage
        stage: u32,
        /// task index (= partition)
        task: u32,
        /// attempt number, from 1
        attempt: u32,
        /// where
        worker_id: String,
        /// when
        at_ms: u64,
    },
    /// a running job cannot progress (no alive worker, no free slot), or can again
    /// (`waiting: None`)
    JobWaiting {
        /// job
        job_id: String,
        /// why it waits, and since when
        waiting: Option<Waiting>,
    },
    /// an adaptive rule re-planned a stage whose inputs are complete and none of whose
    /// tasks ran yet: its tasks become `tasks`, each reading what its `TaskReads` says
    /// (`optimizer::adapt`); a stage is re-planned at most once
    ReplanStage {
        /// job
        job_id: String,
        /// stage
        stage: u32,
        /// what each new task reads, in task order
        tasks: Vec<TaskReads>,
        /// the decisions that explain it (recorded with it)
        decisions: Vec<crate::state::decision::Decision>,
        /// the tasks of the stage's pre-merge step (`StagePlan::pre_merge`), appended
        /// to the job as a new stage that this one then reads; empty: none
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pre_merge: Vec<TaskReads>,
    },
    /// a join stage whose build side turned out small runs as its broadcast plan
    /// (`StagePlan::broadcast`): its tasks and inputs become the plan's, and the
    /// probe side's map stage is left with no tasks
    BroadcastJoin {
        /// job
        job_id: String,
        /// the join stage
        stage: u32,
        /// why (recorded with it)
        decision: crate::state::decision::Decision,
    },
    /// a probe side's map stage whose join's build side turned out small runs as its
    /// filtered plan (`StagePlan::reduce`): same tasks, the build side added to its
    /// inputs
    ReduceProbe {
        /// job
        job_id: String,
        /// the probe side's map stage
        stage: u32,
        /// why (recorded with it)
        decision: crate::state::decision::Decision,
    },
    /// a task's next attempts take this many task slots of their worker, and as many
    /// slots' shares of its memory (after the task ran out of memory)
    TaskMemory {
        /// job
        job_id: String,
        /// stage
        stage: u32,
        /// task index
        task: u32,
        /// slots per attempt, at least 1
        slots: u32,
    },
    /// the worker refused a launch before starting it (no free slot): the attempt
    /// never ran and is not counted; the task waits for another slot
    LaunchRefused {
        /// job
        job_id: String,
        /// stage
        stage: u32,
        /// task index
        task: u32,
        /// the refused attempt (the task's latest)
        attempt: u32,
        /// the worker that refused it
        worker_id: String,
    },
    /// a second attempt of a straggling task was sent to another worker; both run
    /// until one finishes (recorded as a `speculation` decision)
    SpeculativeLaunched {
        /// job
        job_id: String,
        /// stage
        stage: u32,
        /// task
        task: u32,
        /// the copy's attempt number (the task's next)
        attempt: u32,
        /// where the copy runs (never the original's worker)
        worker_id: String,
        /// when
        at_ms: u64,
        /// the rule that fired, in words
        why: String,
        /// what the rule read
        inputs: std::collections::BTreeMap<String, String>,
    },
    /// an automatic change with no other command of its own (a timeout, a retry
    /// limit), appended to the decision log
    RecordDecision {
        /// the decision (its id is assigned when applied)
        decision: super::decision::Decision,
    },
    /// a task attempt finished
    TaskSucceeded {
        /// job
        job_id: String,
        /// stage
        stage: u32,
        /// task
        task: u32,
        /// attempt
        attempt: u32,
        /// what it produced
        result: TaskResult,
        /// when the coordinator heard of it
        #[serde(default)]
        at_ms: u64,
    },
    /// a task attempt failed
    TaskFailed {
        /// job
        job_id: String,
        /// stage
        stage: u32,
        /// task
        task: u32,
        /// attempt
        attempt: u32,
        /// why
        error: ErrorRecord,
        /// true: worth another attempt (transient)
        retryable: bool,
        /// earliest time of the next attempt (backoff chosen by the proposer)
        #[serde(default)]
        retry_at_ms: u64,
        /// when the failure was recorded
        #[serde(default)]
        at_ms: u64,
        /// what the retry-limit rule decided for this failure, worked out by the
        /// proposer (`optimizer::retry_limit::outcome`); absent in entries written
        /// before the rule was a command, which replay it inside `apply`
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_limit: Option<RetryLimitOutcome>,
    },
    /// the sink stage finished; the coordinator is moving staged files into place
    JobCommitting {
        /// job
        job_id: String,
    },
    /// the output is in place
    JobSucceeded {
        /// job
        job_id: String,
        /// committed files, relative to the sink path
        files: Vec<String>,
        /// when
        at_ms: u64,
    },
    /// the job failed
    JobFailed {
        /// job
        job_id: String,
        /// why
        error: ErrorRecord,
        /// when
        at_ms: u64,
    },
    /// a user cancelled the job
    CancelJob {
        /// job
        job_id: String,
        /// when
        at_ms: u64,
    },
    /// a terminal job's cleanup ran (attempts cancelled, staging discarded, workers
    /// asked to delete its shuffle files): a new leader does not run it again
    JobCleaned {
        /// job
        job_id: String,
    },
    /// terminal jobs past the retention policy leave the state, with their
    /// idempotency keys and decisions (chosen by `scheduler::retention`); ids no
    /// longer in the state are skipped, a job that is not terminal is refused
    ForgetJobs {
        /// jobs
        job_ids: Vec<String>,
        /// when
        at_ms: u64,
    },
    /// the autoscaler released an idle worker it started (issue 12 §2.8): it leaves
    /// the fleet without being counted as lost; refused while an attempt runs there or
    /// while it holds map output an unfinished job still reads (`State::release_blocker`)
    WorkerReleased {
        /// which
        worker_id: String,
        /// when
        at_ms: u64,
    },
    /// the measured effect of a decision, once known (e.g. a `scale_up`'s backlog
    /// drained); a decision no longer in the log is skipped
    DecisionEffect {
        /// the decision's id
        decision_id: u64,
        /// what happened, in words
        effect: String,
    },
    /// a worker's load from its heartbeats (issue 12 §1), recorded by the leader when
    /// it changed materially, at most every few seconds (`scheduler::load`); refused
    /// for a worker that is not alive
    WorkerLoad {
        /// which
        worker_id: String,
        /// what its heartbeat said
        load: super::load::WorkerLoad,
    },
    /// a running scan attempt agreed to stop at a split point (dynamic rebalancing,
    /// `optimizer::liquid`): the task now reads `prefix`, a new task of the stage
    /// reads `remainder`; a `split_running_task` decision is recorded. Recording the
    /// same split (task, attempt, seq) again changes nothing (a re-proposal after a
    /// leader change or a lost answer).
    SplitRunningTask {
        /// job
        job_id: String,
        /// stage
        stage: u32,
        /// the split task
        task: u32,
        /// its attempt that made the offer
        attempt: u32,
        /// splits of that attempt recorded before this one
        seq: u32,
        /// the plan partition both parts scan
        partition: u32,
        /// what the task keeps
        prefix: Vec<autopipe_common::tolerant::FileRange>,
        /// what the new task reads
        remainder: Vec<autopipe_common::tolerant::FileRange>,
        /// the worker's progress: units started, the split unit, units in all
        units: (u32, u32, u32),
        /// when
        at_ms: u64,
        /// why the rule fired, in words
        why: String,
        /// what it read
        inputs: std::collections::BTreeMap<String, String>,
    },
    /// a streaming task's micro-batch committed: its partitions' new offsets and its
    /// staged files, in one command (`machine::stream`); refused unless the attempt
    /// runs the task and every partition starts where the last commit left it. The
    /// same (task, attempt, batch) again changes nothing.
    StreamCommit {
        /// job
        job_id: String,
        /// the consumer task
        task: u32,
        /// its attempt
        attempt: u32,
        /// the attempt's batch number, from 1
        batch: u64,
        /// each partition's progress
        offsets: Vec<crate::state::machine::BatchOffsets>,
        /// (staged URL, final URL) of each output and dead-letter file
        moves: Vec<(String, String)>,
        /// records read (bad ones included)
        records: u64,
        /// rows written
        rows_out: u64,
        /// bytes written
        bytes_out: u64,
        /// records sent to the dead letters
        bad_records: u64,
        /// milliseconds the batch took on its worker (decode, SQL, write)
        #[serde(default)]
        busy_ms: u64,
        /// when
        at_ms: u64,
        /// a windowed job's windows emitted in the batch (by the task reading the
        /// lowest partition)
        #[serde(default, skip_serializing_if = "Option::is_none")]
        emitted: Option<crate::state::machine::WindowEmit>,
        /// records dropped as repeats
        #[serde(default)]
        duplicates: u64,
        /// late records sent to the dead letters
        #[serde(default)]
        late_records: u64,
    },
    /// committed micro-batches' files are in the sink: (task, attempt, batch) each
    StreamPublished {
        /// job
        job_id: String,
        /// the batches
        batches: Vec<(u32, u32, u64)>,
    },
    /// high watermarks the leader asked the brokers for (ListOffsets), of partitions
    /// no consumer task reports now (its task is not running, or silent): their lag
    /// stays measured; a watermark never goes back
    StreamWatermarks {
        /// job
        job_id: String,
        /// (partition, high watermark)
        high: Vec<(i32, i64)>,
        /// when
        at_ms: u64,
    },
    /// a streaming job's partitions dealt anew to its consumer tasks
    /// (`optimizer::kafka_scaling`): a task whose partitions changed stops (its attempt
    /// is an orphan the fence refuses) and runs again with its new ones from the
    /// committed offsets; a task with none is parked. Refused unless `assignment`
    /// holds every partition of the stream exactly once.
    StreamRescale {
        /// job
        job_id: String,
        /// per task, its partitions (longer than today's tasks: tasks are added)
        assignment: Vec<Vec<i32>>,
        /// why (recorded with it)
        decision: crate::state::decision::Decision,
        /// when
        at_ms: u64,
    },
    /// lost workers past the lost-worker retention leave the state (chosen by
    /// `scheduler::retention`); ids no longer in the state are skipped, an alive
    /// worker is refused
    PruneWorkers {
        /// workers
        worker_ids: Vec<String>,
        /// when
        at_ms: u64,
    },
    /// what a delta table a job committed to holds now (issue 15 §2), as the leader
    /// read it from the table's log after the commit, with the table's running
    /// counts: the input of the compaction rule
    TableObserved {
        /// the table
        table: Box<crate::optimizer::compaction::TableFiles>,
    },
}

/// Serde for `Arc<Vec<u8>>`: one base64 string in JSON (a JSON array of numbers took
/// about 3.5 bytes per byte); an array, as older logs and snapshots hold, still reads.
mod shared_bytes {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};
    use std::sync::Arc;

    pub fn serialize<S: Serializer>(v: &Arc<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v.as_slice()))
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Bytes {
        Base64(String),
        Array(Vec<u8>),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<Vec<u8>>, D::Error> {
        match Bytes::deserialize(d)? {
            Bytes::Array(v) => Ok(Arc::new(v)),
            Bytes::Base64(s) => STANDARD
                .decode(s)
                .map(Arc::new)
                .map_err(|e| serde::de::Error::custom(format!("plan bytes: {e}"))),
        }
    }
}

/// For `skip_serializing_if`: a zero that a default restores.
pub(crate) fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// A stable fingerprint of a submission's spec text (FNV-1a, 64 bits; never 0), the
/// same on every coordinator and version.
pub fn request_fingerprint(text: &str) -> u64 {
    let h = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    h.max(1)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_request_fingerprint_is_fnv1a_and_never_zero() {
        assert_eq!(super::request_fingerprint(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(super::request_fingerprint("a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(
            super::request_fingerprint("a"),
            super::request_fingerprint("b")
        );
    }

    use super::StagePlan;

    #[test]
    fn plan_bytes_travel_as_base64_and_older_arrays_still_read() {
        let plan = StagePlan {
            id: 0,
            plan: std::sync::Arc::new(vec![0, 1, 2, 250]),
            display: "x".into(),
            tasks: 1,
            shuffle_partitions: None,
            inputs: vec![],
            join: None,
            broadcast: None,
            pre_merge: None,
            reduce: None,
        };
        let json = serde_json::to_value(&plan).unwrap();
        assert_eq!(json["plan"], "AAEC+g==");
        assert_eq!(
            serde_json::from_value::<StagePlan>(json.clone()).unwrap(),
            plan
        );
        let mut older = json;
        older["plan"] = serde_json::json!([0, 1, 2, 250]);
        assert_eq!(serde_json::from_value::<StagePlan>(older).unwrap(), plan);
    }
}
