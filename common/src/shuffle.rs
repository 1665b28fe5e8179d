//! Shuffle reads. `ShuffleReaderExec` is the leaf that replaces a stage boundary in
//! the consuming stage's plan: on the coordinator it is a placeholder (no locations);
//! the worker's codec fills in the map output locations of the task it runs, and
//! executing a partition streams that partition from every producing map task over
//! Arrow Flight `DoGet` (ticket = job, stage, map task, attempt, partition).

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
use datafusion::arrow::ipc::reader::FileReader;
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
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

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
        let mut fetches: Vec<(pb::MapOutputLocation, u32)> = if self.hash {
            self.locations
                .iter()
                .map(|l| (l.clone(), partition as u32))
                .collect()
        } else {
            self.locations
                .iter()
                .filter(|l| l.map_task as usize == partition)
                .map(|l| (l.clone(), 0))
                .collect()
        };
        fetches.sort_by_key(|(l, _)| l.map_task);
        let job_id = self.job_id.clone();
        let schema = self.schema();
        // Map outputs are fetched concurrently and their batches interleave: a hash
        // partition's rows have no order across map tasks (and a per-map reader has one
        // map task).
        let stream = futures::stream::iter(fetches)
            .map(move |(loc, part)| {
                let job_id = job_id.clone();
                async move { fetch_partition(&job_id, &loc, part).await }
            })
            .buffer_unordered(FETCH_CONCURRENCY)
            .try_flatten_unordered(FETCH_CONCURRENCY);
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// Directory of a job's shuffle files under a worker's shuffle root.
pub fn job_dir(root: &Path, job: &str) -> PathBuf {
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
/// a missing or unreadable file is an error before any batch; the IPC reader is
/// synchronous, so a blocking task feeds the batches through a small channel. The Flight
/// server streams them to remote reducers; a reducer on the same machine reads them
/// directly, as Spark reads host-local shuffle blocks.
pub fn read_partition_file(
    path: &Path,
) -> std::result::Result<
    (
        SchemaRef,
        BoxStream<'static, std::result::Result<RecordBatch, ArrowError>>,
    ),
    ArrowError,
> {
    let file = std::fs::File::open(path)
        .map_err(|e| ArrowError::IoError(format!("{}: {e}", path.display()), e))?;
    let reader = FileReader::try_new(std::io::BufReader::new(file), None)?;
    let schema = reader.schema();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        for b in reader {
            if tx.blocking_send(b).is_err() {
                return;
            }
        }
    });
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
    Ok((schema, stream.boxed()))
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

/// Longest wait for any RPC's response to start (streams then run unbounded).
pub const RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// A lazily connected, shared channel to `address` (`host:port` or `http://host:port`).
pub fn channel_to(address: &str) -> std::result::Result<Channel, Error> {
    let url = if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    };
    let mut pool = channel_pool().lock().expect("channel pool lock poisoned");
    if let Some(c) = pool.get(&url) {
        return Ok(c.clone());
    }
    let ch = Endpoint::from_shared(url.clone())
        .map_err(|e| Error::Permanent(format!("bad address '{address}': {e}")))?
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
        .connect_lazy();
    pool.insert(url, ch.clone());
    Ok(ch)
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
                let channel = channel_to(&loc.address)?;
                let mut client = FlightServiceClient::new(channel)
                    .max_decoding_message_size(usize::MAX)
                    .max_encoding_message_size(usize::MAX);
                client
                    .do_get(ticket)
                    .await
                    .map_err(|s| Error::from_status(&s))
            }
        })
        .await
        .map_err(|e| fetch_failed(loc, e.to_string()))?;
    let stream = resp.into_inner().map_err(FlightError::from);
    Ok(FlightRecordBatchStream::new_from_flight_data(stream)
        .map_err(move |e| on_error(e.to_string()))
        .boxed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field};

    #[test]
    fn schema_bytes_round_trip() {
        let s = Schema::new(vec![
            Field::new("a", DataType::Int64, false),
            Field::new("b", DataType::Utf8, true),
        ]);
        assert_eq!(schema_from_bytes(&schema_to_bytes(&s)).unwrap(), s);
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
                let mut exec = ShuffleReaderExec::new(
                    node.stage_id,
                    schema,
                    node.partitions as usize,
                    node.hash,
                );
                exec.job_id = self.job_id.clone();
                exec.locations = self
                    .locations
                    .iter()
                    .filter(|l| l.stage_id == node.stage_id)
                    .cloned()
                    .collect();
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
