//! Shuffle reads. `ShuffleReaderExec` is the leaf that replaces a stage boundary in
//! the consuming stage's plan: on the coordinator it is a placeholder (no locations);
//! the worker's codec fills in the map output locations of the task it runs, and
//! executing a partition streams that partition from every producing map task over
//! Arrow Flight `DoGet` (ticket = job, stage, map task, attempt, partition).

use crate::auth::{authed, AuthChannel};
use crate::error::Error;
use crate::retry::RetryPolicy;
use crate::tolerant::{DeadLetters, FileRange, RecordFormat, TolerantScanExec};
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::Ticket;
use autopipe_proto as pb;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::ipc::convert::{fb_to_schema, IpcSchemaEncoder};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{
    Boundedness, ChildrenPropertiesMode, EmissionType, ReplaceChildrenOptions,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tonic::transport::Channel;

/// Reads one stage's shuffle output.
#[derive(Debug)]
pub struct ShuffleReaderExec {
    /// the producing stage
    pub stage_id: u32,
    /// true: partition p = output partition p of every map task;
    /// false: partition p = the single output of map task p
    pub hash: bool,
    /// job the shuffle belongs to (filled on the worker)
    pub job_id: String,
    /// one location per producing map task (filled on the worker)
    pub locations: Vec<pb::MapOutputLocation>,
    /// every map task of the producing stage, as the coordinator planned it (filled on
    /// the worker); `execute` refuses locations that do not match it exactly
    pub expected_map_tasks: Option<Vec<u32>>,
    /// a hash reader of a re-planned task reads these output partitions `[start, end)`
    /// of every expected map task, whatever partition it is asked for (filled on the
    /// worker)
    pub partition_range: Option<(u32, u32)>,
    partitions: usize,
    properties: Arc<PlanProperties>,
}

impl ShuffleReaderExec {
    /// A reader of `partitions` partitions with `schema`.
    pub fn new(stage_id: u32, schema: SchemaRef, partitions: usize, hash: bool) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            stage_id,
            hash,
            job_id: String::new(),
            locations: vec![],
            expected_map_tasks: None,
            partition_range: None,
            partitions,
            properties: Arc::new(properties),
        }
    }

    /// Number of output partitions.
    pub fn partitions(&self) -> usize {
        self.partitions
    }
}

impl DisplayAs for ShuffleReaderExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "ShuffleReaderExec: stage={}, partitions={}, mode={}",
            self.stage_id,
            self.partitions,
            if self.hash { "hash" } else { "per_map" }
        )
    }
}

impl ExecutionPlan for ShuffleReaderExec {
    fn name(&self) -> &str {
        "ShuffleReaderExec"
    }
    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }
    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }
    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }
    fn replace_children(
        self: Arc<Self>,
        _: Vec<Arc<dyn ExecutionPlan>>,
        _: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition >= self.partitions {
            return Err(DataFusionError::Internal(format!(
                "ShuffleReaderExec: partition {partition} out of {}",
                self.partitions
            )));
        }
        let fetches = self
            .fetches(partition)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let expected = fetches.len();
        let job_id = self.job_id.clone();
        let schema = self.schema();
        let stage_id = self.stage_id;
        // Each fetch counts itself once its stream has ended without an error; the
        // reader ends with an error unless every expected map output was read.
        let read = Arc::new(AtomicUsize::new(0));
        let counted = read.clone();
        // Map outputs are fetched concurrently and their batches interleave: a hash
        // partition's rows have no order across map tasks (and a per-map reader has one
        // map task).
        let stream = futures::stream::iter(fetches)
            .map(move |(loc, part)| {
                let job_id = job_id.clone();
                let counted = counted.clone();
                async move {
                    let batches = fetch_partition(&job_id, &loc, part).await?;
                    let done = futures::stream::once(futures::future::lazy(move |_| {
                        counted.fetch_add(1, Ordering::SeqCst);
                        None
                    }));
                    Ok::<_, DataFusionError>(
                        batches
                            .map(Some)
                            .chain(done)
                            .filter_map(futures::future::ready),
                    )
                }
            })
            .buffer_unordered(FETCH_CONCURRENCY)
            .try_flatten_unordered(FETCH_CONCURRENCY)
            .map(Some)
            .chain(futures::stream::once(futures::future::lazy(move |_| {
                let n = read.load(Ordering::SeqCst);
                if n == expected {
                    return None;
                }
                Some(Err(DataFusionError::External(Box::new(
                    Error::IncompleteInput {
                        stage_id,
                        message: format!(
                            "read {n} of {expected} map outputs for partition {partition}"
                        ),
                    },
                ))))
            })))
            .filter_map(futures::future::ready);
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

impl ShuffleReaderExec {
    /// The map outputs partition `partition` reads, as (location, output partition):
    /// exactly one location per expected map task (every map task of the stage for a
    /// hash shuffle, map task `partition` otherwise), or an `IncompleteInput` error
    /// naming what is missing, duplicated or unexpected.
    pub fn fetches(&self, partition: usize) -> Result<Vec<(pb::MapOutputLocation, u32)>, Error> {
        let incomplete = |message: String| Error::IncompleteInput {
            stage_id: self.stage_id,
            message,
        };
        let Some(expected) = &self.expected_map_tasks else {
            return Err(incomplete(
                "the task definition does not say which map outputs to read".into(),
            ));
        };
        let mut by_task: BTreeMap<u32, &pb::MapOutputLocation> = BTreeMap::new();
        for l in &self.locations {
            if !expected.contains(&l.map_task) {
                return Err(incomplete(format!(
                    "a location for map task {}, which is not one of the stage's {} map tasks",
                    l.map_task,
                    expected.len()
                )));
            }
            if by_task.insert(l.map_task, l).is_some() {
                return Err(incomplete(format!(
                    "two locations for map task {}",
                    l.map_task
                )));
            }
        }
        // A per-map reader's partition p reads map task p; a stage re-planned into
        // fewer tasks than planned leaves its last partitions empty (more tasks than
        // planned are never read this way: `optimizer::replan` splits no stage whose
        // output is merged).
        let wanted: Vec<u32> = if self.hash {
            expected.clone()
        } else {
            expected
                .iter()
                .copied()
                .filter(|&m| m as usize % self.partitions.max(1) == partition)
                .collect()
        };
        let missing: Vec<u32> = wanted
            .iter()
            .copied()
            .filter(|t| !by_task.contains_key(t))
            .collect();
        if !missing.is_empty() {
            return Err(incomplete(format!(
                "no location for map task(s) {missing:?} of {}; the stage is not complete",
                expected.len()
            )));
        }
        let parts = match (self.hash, self.partition_range) {
            (true, Some((start, end))) if start < end && end as usize <= self.partitions => {
                start..end
            }
            (true, Some((start, end))) => {
                return Err(incomplete(format!(
                    "partition range [{start}, {end}) is not within the stage's {} partitions",
                    self.partitions
                )))
            }
            (true, None) => partition as u32..partition as u32 + 1,
            (false, _) => 0..1,
        };
        Ok(wanted
            .iter()
            .flat_map(|t| parts.clone().map(|p| (by_task[t].clone(), p)))
            .collect())
    }
}

/// Directory of a job's shuffle files under a worker's shuffle root: always one level
/// below it, whatever the id holds (a ticket or a cleanup request names any string).
pub fn job_dir(root: &Path, job: &str) -> PathBuf {
    if job.is_empty() {
        return root.join("_");
    }
    let safe: String = job
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    root.join(safe)
}

/// Directory of one map task attempt's output.
pub fn task_dir(root: &Path, job: &str, stage: u32, task: u32, attempt: u32) -> PathBuf {
    job_dir(root, job)
        .join(stage.to_string())
        .join(format!("{task}-{attempt}"))
}

/// Arrow IPC file of one output partition of one map task attempt.
pub fn partition_file(
    root: &Path,
    job: &str,
    stage: u32,
    task: u32,
    attempt: u32,
    part: u32,
) -> PathBuf {
    task_dir(root, job, stage, task, attempt).join(format!("{part}.arrow"))
}

/// This machine (host name and boot id): map outputs of a worker with the same id are
/// files on this machine's disks.
pub fn host_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        let host = read("/proc/sys/kernel/hostname");
        let boot = read("/proc/sys/kernel/random/boot_id");
        if host.is_empty() && boot.is_empty() {
            // unknown machine: never claim another worker's files are local
            format!("unknown-{}", std::process::id())
        } else {
            format!("{host}/{boot}")
        }
    })
}

/// Batches of one map output file. Opening it (and reading its footer) happens here, so
/// a missing or unreadable file is an error before any batch. The Flight server
/// streams them to remote reducers; a reducer on the same machine reads them
/// directly, as Spark reads host-local shuffle blocks.
///
/// The file is memory-mapped and its batches decoded in place (arrow's `FileDecoder`,
/// with validation): their arrays point into the file's pages, with no copy into new
/// buffers. A map output is written once and only ever deleted (never changed) while
/// it may be read, and a deleted file's mapping stays valid.
///
/// A corrupt file is an error, never a short stream or a dead process: the footer's
/// blocks must lie inside the file (arrow allocates a block's length before reading
/// it, apache/arrow-rs#10921), every block the footer lists must decode to a record
/// batch, and a panic of arrow's decoder on a malformed schema or batch is caught and
/// reported as an error that ends the stream.
pub fn read_partition_file(
    path: &Path,
) -> std::result::Result<
    (
        SchemaRef,
        BoxStream<'static, std::result::Result<RecordBatch, ArrowError>>,
    ),
    ArrowError,
> {
    use datafusion::arrow::buffer::Buffer;
    use datafusion::arrow::ipc::reader::FileDecoder;
    let io = |e: std::io::Error| ArrowError::IoError(format!("{}: {e}", path.display()), e);
    let file = std::fs::File::open(path).map_err(io)?;
    // SAFETY: map outputs are never written to once complete (see above); the
    // mapping is read-only
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
    let buffer = Buffer::from(bytes::Bytes::from_owner(map));
    let shown = path.display().to_string();
    let corrupt =
        move |why: String| ArrowError::IpcError(format!("{shown}: corrupt map output: {why}"));
    let footer = checked_footer(&buffer).map_err(&corrupt)?;
    let setup = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let schema = footer
            .schema()
            .ok_or_else(|| "a footer without a schema".to_string())?;
        let schema = Arc::new(fb_to_schema(schema));
        let mut decoder = FileDecoder::new(Arc::clone(&schema), footer.version());
        for block in footer.dictionaries().into_iter().flatten() {
            decoder
                .read_dictionary(block, &block_data(&buffer, block))
                .map_err(|e| e.to_string())?;
        }
        let blocks: Vec<_> = footer
            .recordBatches()
            .into_iter()
            .flatten()
            .copied()
            .collect();
        Ok::<_, String>((schema, decoder, blocks))
    }));
    let (schema, decoder, blocks) = setup
        .map_err(|p| panic_message(&*p))
        .and_then(|r| r)
        .map_err(&corrupt)?;
    let listed = blocks.len();
    let batches = blocks.into_iter().enumerate().map(move |(i, block)| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            decoder.read_record_batch(&block, &block_data(&buffer, &block))
        }))
        .map_err(|p| corrupt(panic_message(&*p)))
        .and_then(|r| r.map_err(|e| corrupt(e.to_string())))
        .and_then(|b| {
            b.ok_or_else(|| {
                corrupt(format!(
                    "block {i} of the {listed} its footer lists is not a record batch"
                ))
            })
        })
    });
    // one error ends the stream
    let mut failed = false;
    let batches = batches.take_while(move |r| {
        let go = !failed;
        failed |= r.is_err();
        go
    });
    Ok((schema, futures::stream::iter(batches).boxed()))
}

/// A block's bytes in `file` (its message and body; `checked_footer` checked the range).
fn block_data(
    file: &datafusion::arrow::buffer::Buffer,
    b: &datafusion::arrow::ipc::Block,
) -> datafusion::arrow::buffer::Buffer {
    let len = b.bodyLength() as usize + b.metaDataLength() as usize;
    file.slice_with_length(b.offset() as usize, len)
}

/// The footer of the IPC file `bytes`, once every block it lists lies inside the file.
fn checked_footer(bytes: &[u8]) -> std::result::Result<datafusion::arrow::ipc::Footer<'_>, String> {
    let len = bytes.len();
    if len < 10 {
        return Err(format!("{len} bytes is too short for an Arrow IPC file"));
    }
    let tail: [u8; 10] = bytes[len - 10..].try_into().expect("10 bytes");
    let footer_len =
        datafusion::arrow::ipc::reader::read_footer_length(tail).map_err(|e| e.to_string())?;
    if footer_len + 10 > len {
        return Err(format!("a footer of {footer_len} bytes in a file of {len}"));
    }
    let footer = datafusion::arrow::ipc::root_as_footer(&bytes[len - 10 - footer_len..len - 10])
        .map_err(|e| format!("unreadable footer: {e}"))?;
    let blocks = footer
        .recordBatches()
        .into_iter()
        .flatten()
        .chain(footer.dictionaries().into_iter().flatten());
    for b in blocks {
        let end = usize::try_from(b.offset())
            .ok()
            .and_then(|o| o.checked_add(usize::try_from(b.metaDataLength()).ok()?))
            .and_then(|o| o.checked_add(usize::try_from(b.bodyLength()).ok()?));
        if end.is_none_or(|end| end > len) {
            return Err(format!(
                "a block at offset {} of {} + {} bytes in a file of {len}",
                b.offset(),
                b.metaDataLength(),
                b.bodyLength()
            ));
        }
    }
    Ok(footer)
}

/// The message a panic carried.
fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Decodes a shuffle stream of Flight messages into record batches. arrow-flight's
/// decoder panics on some malformed messages (a header and body that disagree): such
/// a panic ends the stream with a decode error, never the reducer.
pub fn decode_shuffle_stream(
    messages: impl futures::Stream<Item = std::result::Result<arrow_flight::FlightData, FlightError>>
        + Send
        + 'static,
) -> BoxStream<'static, std::result::Result<RecordBatch, FlightError>> {
    std::panic::AssertUnwindSafe(FlightRecordBatchStream::new_from_flight_data(messages))
        .catch_unwind()
        .map(|r| {
            r.unwrap_or_else(|p| {
                Err(FlightError::DecodeError(format!(
                    "corrupt shuffle stream: {}",
                    panic_message(&*p)
                )))
            })
        })
        .boxed()
}

/// HTTP/2 receive window of one shuffle fetch stream.
const STREAM_WINDOW: u32 = 4 << 20;
/// HTTP/2's largest window: a connection never limits its streams.
const MAX_WINDOW: u32 = (1 << 31) - 1;

/// Map outputs one reduce task reads at the same time.
const FETCH_CONCURRENCY: usize = 8;

fn channel_pool() -> &'static Mutex<HashMap<String, Channel>> {
    static POOL: OnceLock<Mutex<HashMap<String, Channel>>> = OnceLock::new();
    POOL.get_or_init(Default::default)
}

/// HTTP/2 ping interval on every pooled channel.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// A ping unanswered this long closes the connection.
pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// A shuffle stream that delivers nothing for this long fails (its map output is
/// then recomputed): a map output is a file on disk, never slow to produce.
pub const FETCH_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest Flight message a reducer decodes (one record batch of a map output).
pub const MAX_FLIGHT_MESSAGE: usize = 256 << 20;

/// How a shuffle fetch notices a bad peer: a stream silent for `idle`, a message over
/// `max_message` bytes, an HTTP/2 ping unanswered for `keep_alive_timeout` (pings every
/// `keep_alive_interval`). Each fails the fetch, and the map output is recomputed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FetchLimits {
    /// longest silence of a started stream
    pub idle: Duration,
    /// largest Flight message decoded
    pub max_message: usize,
    /// HTTP/2 ping interval
    pub keep_alive_interval: Duration,
    /// longest wait for a ping's answer
    pub keep_alive_timeout: Duration,
}

impl FetchLimits {
    /// What every fetch uses (tests shorten them).
    pub const DEFAULT: Self = Self {
        idle: FETCH_IDLE_TIMEOUT,
        max_message: MAX_FLIGHT_MESSAGE,
        keep_alive_interval: KEEP_ALIVE_INTERVAL,
        keep_alive_timeout: KEEP_ALIVE_TIMEOUT,
    };
}

/// Longest wait for any RPC's response to start (streams then run unbounded).
pub const RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// A lazily connected, shared channel to `address` (`host:port` or `http://host:port`),
/// whose every call carries the process's auth token (`auth::ClientAuth`).
pub fn channel_to(address: &str) -> std::result::Result<AuthChannel, Error> {
    let url = crate::tls::url(address);
    let mut pool = channel_pool().lock().expect("channel pool lock poisoned");
    if let Some(c) = pool.get(&url) {
        return Ok(authed(c.clone()));
    }
    let ch = new_channel(address, &FetchLimits::DEFAULT)?;
    pool.insert(url, ch.clone());
    Ok(authed(ch))
}

/// A lazily connected channel to `address` with `limits`' keep-alive.
fn new_channel(address: &str, limits: &FetchLimits) -> std::result::Result<Channel, Error> {
    // with the process's TLS settings (`crate::tls`), if any
    Ok(crate::tls::endpoint(address)?
        .connect_timeout(Duration::from_secs(5))
        // tonic's timeout layer: every call's response must start within this (the
        // calls' own deadlines, set per request, are shorter)
        .timeout(RPC_TIMEOUT)
        .tcp_nodelay(true)
        // One connection carries every fetch from a worker, and a plan may open a
        // fetch it reads only later (the build side of an outer join waits while an
        // inner one is read; DataFusion's coalesce starts its inputs at once). Such a
        // stream's unread data counts against the connection's window and blocks every
        // other stream on the connection once the connection window is full (hyper's
        // default: 5 MiB for streams of 2 MiB each): a deadlock (TPC-H Q8, 1 run in 10).
        // Each stream now buffers at most its own window and never stalls the others.
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(MAX_WINDOW))
        // HTTP/2 pings notice a half-dead peer (machine gone, link cut) on an idle or
        // stalled connection, instead of waiting on it forever
        .http2_keep_alive_interval(limits.keep_alive_interval)
        .keep_alive_timeout(limits.keep_alive_timeout)
        .keep_alive_while_idle(true)
        .connect_lazy())
}

/// Retries of a fetch whose call failed before its stream started.
const FETCH_RETRY: RetryPolicy = RetryPolicy {
    base: Duration::from_millis(100),
    cap: Duration::from_secs(1),
    max_attempts: 4,
};

/// A failed read of map output `loc`, typed so the coordinator recomputes that map task.
fn fetch_failed(loc: &pb::MapOutputLocation, message: String) -> DataFusionError {
    DataFusionError::External(Box::new(Error::FetchFailed {
        stage_id: loc.stage_id,
        map_task: loc.map_task,
        worker_id: loc.worker_id.clone(),
        message,
    }))
}

async fn fetch_partition(
    job_id: &str,
    loc: &pb::MapOutputLocation,
    partition: u32,
) -> Result<BoxStream<'static, Result<RecordBatch>>> {
    fetch_partition_with(job_id, loc, partition, FetchLimits::DEFAULT).await
}

/// The batches of output partition `partition` of map output `loc`: read from the
/// local file when `loc` is on this host, else streamed over Flight `DoGet` under
/// `limits`. Any failure is a typed `FetchFailed` naming the map task.
pub async fn fetch_partition_with(
    job_id: &str,
    loc: &pb::MapOutputLocation,
    partition: u32,
    limits: FetchLimits,
) -> Result<BoxStream<'static, Result<RecordBatch>>> {
    let loc2 = loc.clone();
    let on_error = move |e: String| fetch_failed(&loc2, e);
    if !loc.shuffle_dir.is_empty() && loc.host_id == host_id() {
        let path = partition_file(
            Path::new(&loc.shuffle_dir),
            job_id,
            loc.stage_id,
            loc.map_task,
            loc.attempt,
            partition,
        );
        let (_, batches) = read_partition_file(&path)
            .map_err(|e| fetch_failed(loc, format!("local shuffle file: {e}")))?;
        return Ok(batches.map_err(move |e| on_error(e.to_string())).boxed());
    }
    let ticket = pb::ShuffleTicket {
        job_id: job_id.to_string(),
        stage_id: loc.stage_id,
        map_task: loc.map_task,
        attempt: loc.attempt,
        partition,
    };
    // A refused or reset connection is retried (backoff, retry budget) before the
    // fetch fails; a stream cut after it started fails at once (its batches were
    // already handed on), and the map output is recomputed.
    let resp = FETCH_RETRY
        .run(|| {
            let ticket = Ticket::new(ticket.encode_to_vec());
            async move {
                let channel = if limits == FetchLimits::DEFAULT {
                    channel_to(&loc.address)?
                } else {
                    authed(new_channel(&loc.address, &limits)?)
                };
                let mut client =
                    FlightServiceClient::new(channel).max_decoding_message_size(limits.max_message);
                client
                    .do_get(ticket)
                    .await
                    .map_err(|s| Error::from_status(&s))
            }
        })
        .await
        .map_err(|e| fetch_failed(loc, e.to_string()))?;
    let stream = idle_timeout(resp.into_inner(), limits.idle).map_err(FlightError::from);
    // a corrupt stream is a fetch failure: the map output is recomputed
    Ok(decode_shuffle_stream(stream)
        .map_err(move |e| on_error(e.to_string()))
        .boxed())
}

/// `stream`, failing with `DEADLINE_EXCEEDED` when no item arrives for `idle`.
fn idle_timeout<T: Send + 'static>(
    stream: impl futures::Stream<Item = std::result::Result<T, tonic::Status>> + Send + 'static,
    idle: Duration,
) -> impl futures::Stream<Item = std::result::Result<T, tonic::Status>> + Send + 'static {
    futures::stream::unfold(Some(Box::pin(stream)), move |s| async move {
        let mut s = s?;
        match tokio::time::timeout(idle, s.next()).await {
            Ok(Some(item)) => Some((item, Some(s))),
            Ok(None) => None,
            Err(_) => Some((
                Err(tonic::Status::deadline_exceeded(format!(
                    "shuffle stream idle for {idle:?}"
                ))),
                None,
            )),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field};

    #[test]
    fn a_job_id_never_leads_outside_the_shuffle_root() {
        let root = Path::new("/w/shuffle");
        for id in ["", ".", "..", "../..", "/etc", "a/../../b", "job\\..\\x"] {
            let d = job_dir(root, id);
            assert_eq!(d.parent(), Some(root), "{id:?} -> {}", d.display());
            assert!(!matches!(d.file_name().unwrap().to_str(), Some(".." | ".")));
        }
        assert_eq!(job_dir(root, "job-1_a"), root.join("job-1_a"));
    }

    #[test]
    fn schema_bytes_round_trip() {
        let s = Schema::new(vec![
            Field::new("a", DataType::Int64, false),
            Field::new("b", DataType::Utf8, true),
        ]);
        assert_eq!(schema_from_bytes(&schema_to_bytes(&s)).unwrap(), s);
    }

    fn reader(hash: bool, expected: Option<Vec<u32>>, located: &[u32]) -> ShuffleReaderExec {
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false)]));
        let mut r = ShuffleReaderExec::new(1, schema, 3, hash);
        r.expected_map_tasks = expected;
        r.locations = located
            .iter()
            .map(|&t| pb::MapOutputLocation {
                stage_id: 1,
                map_task: t,
                attempt: 1,
                ..Default::default()
            })
            .collect();
        r
    }

    fn tasks(f: &[(pb::MapOutputLocation, u32)]) -> Vec<(u32, u32)> {
        f.iter().map(|(l, p)| (l.map_task, *p)).collect()
    }

    #[test]
    fn a_reducer_reads_exactly_the_expected_map_outputs_or_fails_typed() {
        let all = Some(vec![0, 1, 2]);
        let ok = reader(true, all.clone(), &[2, 0, 1]).fetches(1).unwrap();
        assert_eq!(tasks(&ok), vec![(0, 1), (1, 1), (2, 1)]);
        let per_map = reader(false, all.clone(), &[0, 1, 2]).fetches(2).unwrap();
        assert_eq!(tasks(&per_map), vec![(2, 0)]);
        for (r, part, why) in [
            (
                reader(true, all.clone(), &[0, 2]),
                0,
                "no location for map task(s) [1]",
            ),
            (
                reader(false, all.clone(), &[0, 2]),
                1,
                "no location for map task(s) [1]",
            ),
            (reader(true, all.clone(), &[0, 1, 1, 2]), 0, "two locations"),
            (reader(true, all.clone(), &[0, 1, 2, 3]), 0, "not one of"),
            (reader(true, None, &[0, 1, 2]), 0, "does not say"),
        ] {
            match r.fetches(part) {
                Err(e @ Error::IncompleteInput { .. }) => {
                    assert!(e.to_string().contains(why), "{e}");
                    assert_eq!(e.class(), crate::error::ErrorClass::Transient);
                }
                other => panic!("{why}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_re_planned_reducer_reads_its_partition_range_of_its_map_tasks() {
        // coalesced: partitions [0, 3) of every map task, whichever partition it runs
        let mut r = reader(true, Some(vec![0, 1]), &[0, 1]);
        r.partition_range = Some((0, 3));
        let f: Vec<_> = r
            .fetches(0)
            .unwrap()
            .iter()
            .map(|(l, p)| (l.map_task, *p))
            .collect();
        assert_eq!(f, vec![(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]);
        // a skew split's side: partition 2 of map task 1 only
        let mut r = reader(true, Some(vec![1]), &[1]);
        r.partition_range = Some((2, 3));
        assert_eq!(tasks(&r.fetches(2).unwrap()), vec![(1, 2)]);
        // a per-map reader of a stage re-planned into fewer tasks: its last
        // partitions read nothing
        let fewer = reader(false, Some(vec![0]), &[0]);
        assert_eq!(tasks(&fewer.fetches(0).unwrap()), vec![(0, 0)]);
        assert!(fewer.fetches(2).unwrap().is_empty());
        // a range past the stage's partitions is refused, typed
        r.partition_range = Some((2, 4));
        assert!(matches!(r.fetches(2), Err(Error::IncompleteInput { .. })));
    }

    #[tokio::test]
    async fn a_silent_shuffle_stream_fails_after_its_idle_timeout() {
        let silent = futures::stream::pending::<std::result::Result<u32, tonic::Status>>();
        let mut s = Box::pin(idle_timeout(silent, Duration::from_millis(50)));
        let e = s.next().await.unwrap().unwrap_err();
        assert_eq!(e.code(), tonic::Code::DeadlineExceeded);
        assert!(s.next().await.is_none());
        let items = futures::stream::iter([Ok(1), Ok(2)]);
        let got: Vec<_> = idle_timeout(items, Duration::from_millis(50))
            .collect()
            .await;
        assert_eq!(got.len(), 2);
    }

    #[tokio::test]
    async fn a_reducer_given_partial_input_fails_instead_of_succeeding() {
        let r = reader(true, Some(vec![0, 1]), &[]);
        let ctx = Arc::new(TaskContext::default());
        let e = r.execute(0, ctx).err().expect("refused");
        assert!(e.to_string().contains("incomplete input"), "{e}");
    }
}

/// datafusion-proto codec for our extension nodes (shuffle reads, tolerant scans).
/// The coordinator encodes with an empty codec; a worker decodes with the job id and
/// locations of the task it runs, and collects its bad records in `dead_letters`.
#[derive(Debug, Default)]
pub struct ShuffleCodec {
    /// job of the task being decoded
    pub job_id: String,
    /// map output locations of the task being decoded
    pub locations: Vec<pb::MapOutputLocation>,
    /// the map tasks the task being decoded must read, per input stage
    pub input_stages: Vec<pb::InputStage>,
    /// where the task's tolerant scans collect bad records
    pub dead_letters: Arc<DeadLetters>,
}

/// Arrow IPC flatbuffer bytes of a schema.
pub fn schema_to_bytes(schema: &Schema) -> Vec<u8> {
    IpcSchemaEncoder::new()
        .schema_to_fb(schema)
        .finished_data()
        .to_vec()
}

/// Schema from Arrow IPC flatbuffer bytes.
pub fn schema_from_bytes(bytes: &[u8]) -> Result<Schema> {
    let fb = datafusion::arrow::ipc::root_as_schema(bytes)
        .map_err(|e| DataFusionError::Internal(format!("bad schema bytes: {e}")))?;
    Ok(fb_to_schema(fb))
}

impl PhysicalExtensionCodec for ShuffleCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        _inputs: &[Arc<dyn ExecutionPlan>],
        _ctx: &TaskContext,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let wrapper = pb::ExtensionNode::decode(buf)
            .map_err(|e| DataFusionError::Internal(format!("bad extension node: {e}")))?;
        match wrapper.node {
            Some(pb::extension_node::Node::Shuffle(node)) => {
                let schema = Arc::new(schema_from_bytes(&node.schema)?);
                let input = self
                    .input_stages
                    .iter()
                    .find(|i| i.stage_id == node.stage_id);
                // a skewed aggregation's merge task reads the partition from the
                // stage that pre-merged it (same schema and hash partitioning)
                let source = input.and_then(|i| i.via_stage).unwrap_or(node.stage_id);
                let mut exec =
                    ShuffleReaderExec::new(source, schema, node.partitions as usize, node.hash);
                exec.job_id = self.job_id.clone();
                exec.locations = self
                    .locations
                    .iter()
                    .filter(|l| l.stage_id == source)
                    .cloned()
                    .collect();
                exec.expected_map_tasks = input.map(|i| i.map_tasks.clone());
                exec.partition_range = input
                    .filter(|i| i.partition_end > 0)
                    .map(|i| (i.partition_start, i.partition_end));
                Ok(Arc::new(exec))
            }
            Some(pb::extension_node::Node::Scan(node)) => {
                let format = match node.format.as_str() {
                    "csv" => RecordFormat::Csv {
                        has_header: node.has_header,
                        delimiter: node.delimiter as u8,
                    },
                    "ndjson" => RecordFormat::Ndjson,
                    other => {
                        return Err(DataFusionError::Internal(format!(
                            "unknown tolerant scan format '{other}'"
                        )))
                    }
                };
                let groups = node
                    .groups
                    .into_iter()
                    .map(|g| {
                        g.ranges
                            .into_iter()
                            .map(|r| FileRange {
                                location: r.location,
                                start: r.start,
                                end: r.end,
                                size: r.size,
                            })
                            .collect()
                    })
                    .collect();
                Ok(Arc::new(TolerantScanExec::new(
                    node.source,
                    node.store_url,
                    format,
                    Arc::new(schema_from_bytes(&node.file_schema)?),
                    node.projected
                        .then(|| node.projection.iter().map(|&i| i as usize).collect()),
                    groups,
                    self.dead_letters.clone(),
                )?))
            }
            None => Err(DataFusionError::Internal("empty extension node".into())),
        }
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        let node = if let Some(r) = node.downcast_ref::<ShuffleReaderExec>() {
            pb::extension_node::Node::Shuffle(pb::ShuffleReaderNode {
                stage_id: r.stage_id,
                schema: schema_to_bytes(&r.schema()),
                partitions: r.partitions as u32,
                hash: r.hash,
            })
        } else if let Some(t) = node.downcast_ref::<TolerantScanExec>() {
            let (format, has_header, delimiter) = match t.format {
                RecordFormat::Csv {
                    has_header,
                    delimiter,
                } => ("csv", has_header, delimiter),
                RecordFormat::Ndjson => ("ndjson", false, b','),
            };
            pb::extension_node::Node::Scan(pb::TolerantScanNode {
                source: t.source.clone(),
                store_url: t.store_url.clone(),
                format: format.to_string(),
                has_header,
                delimiter: delimiter as u32,
                file_schema: schema_to_bytes(&t.file_schema),
                projected: t.projection.is_some(),
                projection: t.projection.iter().flatten().map(|&i| i as u32).collect(),
                groups: t
                    .groups
                    .iter()
                    .map(|g| pb::FileGroupNode {
                        ranges: g
                            .iter()
                            .map(|r| pb::FileRangeNode {
                                location: r.location.clone(),
                                start: r.start,
                                end: r.end,
                                size: r.size,
                            })
                            .collect(),
                    })
                    .collect(),
            })
        } else {
            return Err(DataFusionError::NotImplemented(format!(
                "autopipe cannot ship plan node {} to workers",
                node.name()
            )));
        };
        pb::ExtensionNode { node: Some(node) }
            .encode(buf)
            .map_err(|e| DataFusionError::Internal(format!("encode extension node: {e}")))
    }
}
