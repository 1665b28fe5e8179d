//! Runs one task: decodes the stage plan (datafusion-proto + our shuffle codec), runs
//! the task's partition with DataFusion, and writes the result either as hash (or
//! pass-through) shuffle partitions in Arrow IPC files, or through a DataFusion file
//! sink into the task attempt's staging prefix. Reports rows, bytes and files.

use crate::key_sample::KeySampler;
use crate::liquid;
use crate::shuffle_store::{PartitionWriters, ShuffleStore};
use autopipe_common::error::{Error, Result};
use autopipe_common::session::session_config;
use autopipe_common::shuffle::ShuffleCodec;
use autopipe_common::spec::Format;
use autopipe_common::store::{delete_prefix, parse_url, register_stores, store_for};
use autopipe_common::task::TaskResult;
use autopipe_common::tolerant::{DeadLetters, TolerantScanExec};
use autopipe_proto as pb;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::config::{CsvOptions, JsonOptions, TableParquetOptions};
use datafusion::common::file_options::csv_writer::CsvWriterOptions;
use datafusion::common::file_options::json_writer::JsonWriterOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::file_format::csv::CsvSink;
use datafusion::datasource::file_format::json::JsonSink;
use datafusion::datasource::file_format::parquet::ParquetSink;
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::datasource::physical_plan::{
    FileGroup, FileOutputMode, FileScanConfig, FileSinkConfig,
};
use datafusion::datasource::sink::DataSink;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::{FairSpillPool, TrackConsumersPool};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::physical_expr::Partitioning;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::repartition::{BatchPartitioner, RepartitionExec};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::{metrics, ExecutionPlan, ExecutionPlanProperties};
use datafusion::prelude::SessionContext;
use datafusion_proto::bytes::physical_plan_from_bytes_with_extension_codec;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// An attempt's part in dynamic rebalancing: the control of its unit-by-unit scan
/// (used when its definition says `dynamic_split`), and a test-only delay per unit.
#[derive(Default, Clone)]
pub struct Splitting {
    /// which unit comes next; the split points agreed
    pub control: Arc<liquid::SplitControl>,
    /// test-only: wait this long before each unit
    pub unit_delay: std::time::Duration,
}

/// The memory an attempt may use, and where it spills beyond that.
#[derive(Debug, Clone)]
pub struct TaskMemory {
    /// bytes of its memory pool
    pub bytes: usize,
    /// spill files go here
    pub spill_dir: std::path::PathBuf,
}

/// Runs `def` to completion, or until `cancel` (checked between batches), under a
/// memory pool of `memory.bytes` that makes DataFusion's sorts, aggregates and joins
/// spill to `memory.spill_dir` rather than exceed it.
pub async fn run_task(
    def: &pb::TaskDefinition,
    shuffle: &ShuffleStore,
    cancel: &CancellationToken,
    memory: &TaskMemory,
    split: &Splitting,
) -> Result<TaskResult> {
    let started = Instant::now();
    let key = def
        .key
        .clone()
        .ok_or_else(|| Error::Permanent("task definition without a key".into()))?;
    let pool = TrackConsumersPool::new(
        FairSpillPool::new(memory.bytes),
        NonZeroUsize::new(5).expect("5 is not zero"),
    );
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(pool))
        .with_temp_file_path(&memory.spill_dir)
        .build_arc()?;
    let ctx = SessionContext::new_with_config_rt(session_config(1), runtime);
    register_stores(&ctx.runtime_env(), &def.store_urls)?;
    let task_ctx = ctx.task_ctx();
    // bad records stream to a local file (named by the attempt; `job_dir` makes the
    // job id safe as a file name) and are uploaded when the task ends
    let dead_path = memory.spill_dir.join(format!(
        "dead-{}-s{}-t{}-a{}.ndjson",
        autopipe_common::shuffle::job_dir(std::path::Path::new(""), &key.job_id).display(),
        key.stage_id,
        key.task,
        key.attempt
    ));
    let dead_letters =
        Arc::new(DeadLetters::to_file(&dead_path).map_err(|e| {
            Error::Transient(format!("cannot create {}: {e}", dead_path.display()))
        })?);
    let _remove = RemoveOnDrop(dead_path.clone());
    let codec = ShuffleCodec {
        job_id: key.job_id.clone(),
        locations: def.inputs.clone(),
        input_stages: def.input_stages.clone(),
        dead_letters: dead_letters.clone(),
    };
    let plan = physical_plan_from_bytes_with_extension_codec(&def.plan, &task_ctx, &codec)
        .map_err(|e| Error::Permanent(format!("cannot decode stage plan: {e}")))?;
    let plan = cooperative(plan)?;
    let decoded_ms = started.elapsed().as_millis() as u64;
    // a re-planned stage's task names the partition it runs (its readers widen it)
    let partition = def.partition.unwrap_or(key.task) as usize;
    // a scan run unit by unit (dynamic rebalancing, `liquid`): its rows and bytes read
    let units_read: Option<Arc<liquid::UnitScan>>;
    let mut out = match &def.output {
        Some(pb::task_definition::Output::Shuffle(s)) => {
            let map_in = map_input(&plan).0;
            let input;
            (input, units_read) =
                scan_input(&map_in, partition, def, &task_ctx, cancel, split).await?;
            run_map(
                &plan,
                input,
                partition,
                s.partitions as usize,
                &key,
                shuffle,
            )
            .await?
        }
        Some(pb::task_definition::Output::Sink(s)) => {
            let input;
            (input, units_read) =
                scan_input(&plan, partition, def, &task_ctx, cancel, split).await?;
            // an empty result still gets one (empty) file, so readers see its schema
            run_sink(plan.schema(), input, s, task_ctx.clone(), partition == 0).await?
        }
        None => return Err(Error::Permanent("task definition without an output".into())),
    };
    shuffle.metrics.spilled_bytes.inc_by(spilled_bytes(&plan));
    out.rows_in = source_rows(&plan);
    out.bytes_in = source_bytes(&plan, partition);
    if let Some(units) = units_read {
        out.rows_in = units.rows_read();
        out.bytes_in = split.control.bytes_read();
    }
    match dead_letters.finish().map_err(Error::Transient)? {
        Some((file, n)) if n > 0 => {
            out.bad_records = n;
            out.dead_letter_file = upload_dead_letters(&def.dead_letter_url, &file, n).await?;
        }
        _ => {}
    }
    out.duration_ms = started.elapsed().as_millis() as u64;
    tracing::debug!(
        job = %key.job_id,
        stage = key.stage_id,
        task = key.task,
        attempt = key.attempt,
        decoded_ms,
        total_ms = out.duration_ms,
        rows_in = out.rows_in,
        "task ran"
    );
    Ok(out)
}

/// The stream a task reads: partition `partition` of `input` (a map stage's input
/// below its exchange, or a sink stage's whole plan), or, for a scan that may be
/// split (`dynamic_split`, dynamic rebalancing) or is a split task's slice, that scan
/// run unit by unit (`liquid`), with the unit scan whose metrics count what it read.
async fn scan_input(
    input: &Arc<dyn ExecutionPlan>,
    partition: usize,
    def: &pb::TaskDefinition,
    task_ctx: &Arc<TaskContext>,
    cancel: &CancellationToken,
    split: &Splitting,
) -> Result<(SendableRecordBatchStream, Option<Arc<liquid::UnitScan>>)> {
    let units = match def.dynamic_split || def.scan.is_some() {
        true => liquid::UnitScan::new(input, partition),
        false => None,
    };
    match units {
        Some(units) => {
            let slice = def.scan.as_ref().map(|g| {
                g.ranges
                    .iter()
                    .map(autopipe_common::tolerant::FileRange::from_node)
                    .collect()
            });
            let group = units.group(slice);
            let list = units.units(&group, task_ctx).await?;
            split.control.set_units(partition as u32, list);
            let units = Arc::new(units);
            let plan = Arc::clone(&units).plan(split.control.clone(), split.unit_delay)?;
            let stream = cancellable(&plan, partition, task_ctx.clone(), cancel)?;
            Ok((stream, Some(units)))
        }
        None if def.scan.is_some() => Err(Error::Permanent(
            "the task reads a slice of a split scan, but its stage plan cannot be cut into units"
                .into(),
        )),
        None => Ok((
            cancellable(input, partition, task_ctx.clone(), cancel)?,
            None,
        )),
    }
}

/// `plan` with every operator's input wrapped in DataFusion's `CooperativeExec`: each
/// batch that crosses an edge spends the task's tokio budget, so an operator that
/// loops over a child that never waits (a join building from another join's output)
/// still yields to the runtime every 128 batches, where a cancel (an abort) lands.
fn cooperative(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    let wrapped = plan.transform_up(|node| {
        if node.children().is_empty() || node.is::<CooperativeExec>() {
            return Ok(Transformed::no(node));
        }
        let children = node
            .children()
            .into_iter()
            .map(|c| match c.is::<CooperativeExec>() {
                true => Arc::clone(c),
                false => Arc::new(CooperativeExec::new(Arc::clone(c))) as Arc<dyn ExecutionPlan>,
            })
            .collect();
        // a CooperativeExec has its input's properties: nothing to recompute
        let keep = ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep);
        Ok(Transformed::yes(node.replace_children(children, keep)?))
    })?;
    Ok(wrapped.data)
}

/// The map side of `plan`: the input of its root repartition, if it has one.
fn map_input(plan: &Arc<dyn ExecutionPlan>) -> (Arc<dyn ExecutionPlan>, Option<Partitioning>) {
    match plan.downcast_ref::<RepartitionExec>() {
        Some(rep) => (Arc::clone(rep.input()), Some(rep.partitioning().clone())),
        None => (Arc::clone(plan), None),
    }
}

/// Runs `partition` of `plan` as a stream that ends with an error once `cancel`
/// fires, and yields to the runtime whenever its cooperative budget is spent: a busy
/// join or aggregate that never waits on I/O still stops within a batch of a cancel
/// (or an abort).
fn cancellable(
    plan: &Arc<dyn ExecutionPlan>,
    partition: usize,
    ctx: Arc<TaskContext>,
    cancel: &CancellationToken,
) -> Result<SendableRecordBatchStream> {
    Ok(cancellable_stream(plan.execute(partition, ctx)?, cancel))
}

/// `stream`, ending with an error once `cancel` fires (see `cancellable`).
fn cancellable_stream(
    stream: SendableRecordBatchStream,
    cancel: &CancellationToken,
) -> SendableRecordBatchStream {
    let schema = stream.schema();
    let cancel = cancel.clone();
    let checked = stream.then(move |batch| {
        let cancel = cancel.clone();
        async move {
            tokio::task::consume_budget().await;
            if cancel.is_cancelled() {
                return Err(DataFusionError::External(Box::new(Error::Transient(
                    "the attempt was cancelled".into(),
                ))));
            }
            batch
        }
    });
    Box::pin(RecordBatchStreamAdapter::new(schema, checked))
}

async fn run_map(
    plan: &Arc<dyn ExecutionPlan>,
    mut stream: SendableRecordBatchStream,
    partition: usize,
    partitions: usize,
    key: &pb::TaskKey,
    shuffle: &ShuffleStore,
) -> Result<TaskResult> {
    let (input, partitioning) = map_input(plan);
    let n_in = input.output_partitioning().partition_count();
    let mut sampler = partitioning.as_ref().and_then(KeySampler::new);
    let mut partitioner = match partitioning {
        Some(p) => Some(BatchPartitioner::try_new(
            p,
            metrics::Time::new(),
            partition,
            n_in,
        )?),
        None => None,
    };
    let schema = input.schema();
    let dir = shuffle.task_dir(&key.job_id, key.stage_id, key.task, key.attempt);
    let mut writers = PartitionWriters::create(dir, partitions.max(1), &schema)?;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        match &mut partitioner {
            Some(p) => p.partition(batch, |i, b| {
                if let Some(s) = &mut sampler {
                    s.observe(i, &b)?;
                }
                writers.write(i, &b)
            })?,
            None => writers.write(0, &batch)?,
        }
    }
    let stats = writers.finish()?;
    let rows: Vec<u64> = stats.iter().map(|s| s.0).collect();
    let hot_keys = sampler.map(|s| s.hot_keys(&rows)).unwrap_or_default();
    shuffle
        .metrics
        .rows_written
        .inc_by(stats.iter().map(|s| s.0).sum());
    Ok(TaskResult {
        rows_out: stats.iter().map(|s| s.0).sum(),
        bytes_out: stats.iter().map(|s| s.1).sum(),
        partitions: stats,
        hot_keys,
        ..Default::default()
    })
}

/// Writes `stream` through a DataFusion file sink into `sink.staging_url`; with
/// `empty_file`, an empty result (without partition columns) still writes one file.
/// Returns the rows, bytes and files (relative to the staging URL) written.
pub(crate) async fn run_sink(
    schema: SchemaRef,
    stream: SendableRecordBatchStream,
    sink: &pb::SinkOutput,
    ctx: Arc<TaskContext>,
    empty_file: bool,
) -> Result<TaskResult> {
    // (a delta table's files are Parquet; the coordinator commits them to its log)
    let format = Format::parse(&sink.format)
        .ok_or_else(|| Error::Permanent(format!("unknown sink format '{}'", sink.format)))?
        .file_format();
    let url = parse_url(&sink.staging_url)?;
    let (store, prefix) = store_for(&url)?;
    // A retried attempt never reuses a prefix, but clear leftovers of a crashed run anyway.
    delete_prefix(store.as_ref(), &prefix).await?;
    let mut part_cols = Vec::new();
    for c in &sink.partition_by {
        let f = schema.field_with_name(c).map_err(|_| {
            Error::plan(
                "sink.partition_by",
                format!("column '{c}' is not in the output"),
            )
        })?;
        part_cols.push((c.clone(), f.data_type().clone()));
    }
    let table_url = ListingTableUrl::parse(&sink.staging_url)?;
    let store_url = ObjectStoreUrl::parse(format!(
        "{}://{}",
        url.scheme(),
        url.host_str().unwrap_or("")
    ))?;
    let config = FileSinkConfig {
        original_url: sink.staging_url.clone(),
        object_store_url: store_url,
        file_group: FileGroup::new(vec![]),
        table_paths: vec![table_url],
        output_schema: schema.clone(),
        table_partition_cols: part_cols
            .iter()
            .map(|(n, t)| (n.clone(), partition_type(t)))
            .collect(),
        insert_op: InsertOp::Append,
        keep_partition_by_columns: false,
        file_extension: format.extension().to_string(),
        file_output_mode: FileOutputMode::Directory,
    };
    let data_sink: Arc<dyn DataSink> = match format {
        Format::Parquet => Arc::new(ParquetSink::new(config, TableParquetOptions::default())),
        Format::Csv => {
            let opts = CsvOptions {
                has_header: Some(true),
                ..Default::default()
            };
            Arc::new(CsvSink::new(config, CsvWriterOptions::try_from(&opts)?))
        }
        Format::Ndjson => Arc::new(JsonSink::new(
            config,
            JsonWriterOptions::try_from(&JsonOptions::default())?,
        )),
        Format::Kafka | Format::Delta => {
            return Err(Error::Permanent(format!(
                "a {} sink's rows are not written as files by a sink task",
                format.name()
            )))
        }
    };
    let rows = data_sink.write_all(stream, &ctx).await?;
    if rows == 0 && empty_file && part_cols.is_empty() {
        let empty = Ok(RecordBatch::new_empty(schema.clone()));
        let stream = RecordBatchStreamAdapter::new(schema.clone(), futures::stream::iter([empty]));
        data_sink.write_all(Box::pin(stream), &ctx).await?;
    }
    let mut files = Vec::new();
    let mut bytes = 0;
    let metas: Vec<_> = store.list(Some(&prefix)).try_collect().await?;
    for m in metas {
        let rel = m
            .location
            .prefix_match(&prefix)
            .map(|parts| {
                parts
                    .map(|p| p.as_ref().to_string())
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .unwrap_or_else(|| m.location.to_string());
        bytes += m.size;
        files.push(rel);
    }
    files.sort();
    Ok(TaskResult {
        rows_out: rows,
        bytes_out: bytes,
        files,
        ..Default::default()
    })
}

/// Uploads the attempt's dead-letter file (`n` NDJSON records) to `url` in parts,
/// never whole in memory; returns `url`.
pub(crate) async fn upload_dead_letters(
    url: &str,
    file: &std::path::Path,
    n: u64,
) -> Result<String> {
    if url.is_empty() {
        return Err(Error::Permanent(format!(
            "{n} bad records but the task has no dead-letter location"
        )));
    }
    let (store, path) = store_for(&parse_url(url)?)?;
    let mut upload = object_store::WriteMultipart::new(store.put_multipart(&path).await?);
    let mut f = tokio::fs::File::open(file)
        .await
        .map_err(|e| Error::Transient(format!("{}: {e}", file.display())))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let read = tokio::io::AsyncReadExt::read(&mut f, &mut buf)
            .await
            .map_err(|e| Error::Transient(format!("{}: {e}", file.display())))?;
        if read == 0 {
            break;
        }
        upload.wait_for_capacity(4).await?;
        upload.write(&buf[..read]);
    }
    upload.finish().await?;
    Ok(url.to_string())
}

/// Deletes a file when dropped (a task's local dead-letter file, however it ends).
pub(crate) struct RemoveOnDrop(pub(crate) std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Hive partition values are written as strings in paths; dictionary types are unwrapped.
fn partition_type(t: &DataType) -> DataType {
    match t {
        DataType::Dictionary(_, v) => v.as_ref().clone(),
        other => other.clone(),
    }
}

/// Bytes of the source files (or file ranges) that `partition` of `plan` scans.
fn source_bytes(plan: &Arc<dyn ExecutionPlan>, partition: usize) -> u64 {
    let mut total = 0;
    if let Some(t) = plan.downcast_ref::<TolerantScanExec>() {
        total += t.partition_bytes(partition);
    }
    if let Some(ds) = plan.downcast_ref::<DataSourceExec>() {
        if let Some(fsc) = ds.data_source().downcast_ref::<FileScanConfig>() {
            if let Some(group) = fsc.file_groups.get(partition) {
                total += group
                    .iter()
                    .map(|f| match &f.range {
                        Some(r) => (r.end - r.start).max(0) as u64,
                        None => f.object_meta.size,
                    })
                    .sum::<u64>();
            }
        }
    }
    // Inside a stage every exchange has been cut, so operators keep the partition
    // number, except a union, which concatenates its inputs' partitions.
    if plan.is::<UnionExec>() {
        let mut offset = 0;
        for c in plan.children() {
            let n = c.output_partitioning().partition_count();
            if partition < offset + n {
                return total + source_bytes(c, partition - offset);
            }
            offset += n;
        }
        return total;
    }
    for c in plan.children() {
        total += source_bytes(c, partition);
    }
    total
}

/// Bytes the operators of `plan` spilled to disk.
fn spilled_bytes(plan: &Arc<dyn ExecutionPlan>) -> u64 {
    let own = plan
        .metrics()
        .map(|m| {
            m.iter()
                .map(|x| match x.value() {
                    metrics::MetricValue::SpilledBytes(c) => c.value() as u64,
                    _ => 0,
                })
                .sum::<u64>()
        })
        .unwrap_or(0);
    own + plan
        .children()
        .iter()
        .map(|c| spilled_bytes(c))
        .sum::<u64>()
}

/// Rows produced by the scans in `plan` (DataFusion's `output_rows` of each source node).
fn source_rows(plan: &Arc<dyn ExecutionPlan>) -> u64 {
    let mut total = 0;
    if plan.children().is_empty() && plan.name() != "ShuffleReaderExec" {
        if let Some(m) = plan.metrics() {
            // A scan may carry more than one output_rows metric for the same partition
            // (file stream + batch splitter): count each partition once.
            let mut per_partition = std::collections::BTreeMap::<Option<usize>, u64>::new();
            for metric in m.iter() {
                if let metrics::MetricValue::OutputRows(c) = metric.value() {
                    let e = per_partition.entry(metric.partition()).or_default();
                    *e = (*e).max(c.value() as u64);
                }
            }
            total += per_partition.values().sum::<u64>();
        }
    }
    for c in plan.children() {
        total += source_rows(c);
    }
    total
}
