//! Tolerant scans of CSV and NDJSON sources: a record that fails to parse or convert
//! to the table's schema goes to the dead-letter sink, with its source, file, byte
//! offset (and line, where the task read the file from its start) and the error;
//! every other record is read. Nothing is dropped silently.
//!
//! `TolerantTable` is the table provider a CSV/NDJSON source is registered as; its
//! scan is a `TolerantScanExec` whose partitions are groups of file byte ranges, like
//! DataFusion's own file scans (a record belongs to the range it starts in). A range is
//! read in 8 MiB blocks and decoded with arrow's CSV/JSON decoders, a batch at a time
//! from the bytes of whole records. When a batch fails, a CSV decoder's error names
//! the failing record: the records before it are decoded, it goes to the dead letters.
//! Otherwise (NDJSON) the next records are split one by one and decoded in chunks, and
//! a failing chunk is bisected until its bad records stand alone. A value is checked
//! against its type where the query reads its column (the CSV decoder skips the
//! others), as in Spark's permissive mode.

use crate::spec::Format;
use async_trait::async_trait;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::Statistics;
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{
    Boundedness, ChildrenPropertiesMode, EmissionType, ReplaceChildrenOptions,
};
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::StatisticsArgs;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

/// Bytes read from the store at a time.
const READ_BLOCK: u64 = 8 << 20;
/// Records per batch on the fast path.
const FAST_BATCH: usize = 8192;
/// The smallest fast batch (after failures).
const MIN_FAST_BATCH: usize = 64;
/// Records per chunk on the slow path (after a batch failed).
const CHUNK_RECORDS: usize = 256;
/// A dead-letter record keeps at most this much of the raw record.
const MAX_RECORD_BYTES: usize = 64 << 10;

/// How a tolerant scan parses records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordFormat {
    /// CSV with its header flag and delimiter
    Csv {
        /// first line of each file is a header
        has_header: bool,
        /// field delimiter
        delimiter: u8,
    },
    /// one JSON object per line
    Ndjson,
}

/// One bad record, as the dead-letter sink stores it (one JSON object per line).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeadRecord {
    /// the `[[sources]]` name
    pub source: String,
    /// the file's URL (empty for a Kafka record)
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub file: String,
    /// a Kafka record's topic
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// a Kafka record's partition
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    /// byte offset of the record in the file, or a Kafka record's offset in its
    /// partition
    pub offset: u64,
    /// 1-based line of the record, when the task read the file from its start
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// the raw record (lossy UTF-8, at most 64 KiB)
    pub record: String,
    /// why it was rejected
    pub error: String,
}

/// Bad records of one task, collected while it runs: in memory (`default`, for
/// tests and the oracle), or streamed as NDJSON lines to a local file (`to_file`, a
/// worker's task), so a source full of bad records never fills the worker's memory.
#[derive(Debug, Default)]
pub struct DeadLetters {
    records: Mutex<Vec<DeadRecord>>,
    file: Option<Mutex<DeadFile>>,
}

/// The file a task's bad records stream to.
#[derive(Debug)]
struct DeadFile {
    path: std::path::PathBuf,
    out: std::io::BufWriter<std::fs::File>,
    count: u64,
    /// the first write that failed: the task fails rather than lose a record
    error: Option<String>,
}

impl DeadLetters {
    /// Bad records stream to a new file at `path`.
    pub fn to_file(path: &std::path::Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let out = std::io::BufWriter::new(std::fs::File::create(path)?);
        Ok(Self {
            records: Mutex::default(),
            file: Some(Mutex::new(DeadFile {
                path: path.to_path_buf(),
                out,
                count: 0,
                error: None,
            })),
        })
    }

    /// Adds one bad record.
    pub fn push(&self, r: DeadRecord) {
        let Some(file) = &self.file else {
            self.records.lock().expect("dead letters lock").push(r);
            return;
        };
        let mut f = file.lock().expect("dead letters lock");
        if f.error.is_some() {
            return;
        }
        use std::io::Write;
        let written = serde_json::to_writer(&mut f.out, &r)
            .map_err(|e| e.to_string())
            .and_then(|()| f.out.write_all(b"\n").map_err(|e| e.to_string()));
        match written {
            Ok(()) => f.count += 1,
            Err(e) => f.error = Some(format!("{}: {e}", f.path.display())),
        }
    }

    /// Takes what was collected in memory.
    pub fn take(&self) -> Vec<DeadRecord> {
        std::mem::take(&mut *self.records.lock().expect("dead letters lock"))
    }

    /// Ends a streamed collection: the file and how many records it holds (`None`
    /// for an in-memory collection), or the write that failed.
    pub fn finish(&self) -> std::result::Result<Option<(std::path::PathBuf, u64)>, String> {
        let Some(file) = &self.file else {
            return Ok(None);
        };
        let mut f = file.lock().expect("dead letters lock");
        if let Some(e) = &f.error {
            return Err(format!("cannot write a dead-letter record to {e}"));
        }
        use std::io::Write;
        f.out
            .flush()
            .map_err(|e| format!("cannot write dead letters to {}: {e}", f.path.display()))?;
        Ok(Some((f.path.clone(), f.count)))
    }
}

/// A byte range of one file; the range owns the records that start in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRange {
    /// object path in the store
    pub location: String,
    /// first byte
    pub start: u64,
    /// one past the last byte
    pub end: u64,
    /// file size
    pub size: u64,
}

impl FileRange {
    /// Its wire form.
    pub fn to_node(&self) -> autopipe_proto::FileRangeNode {
        autopipe_proto::FileRangeNode {
            location: self.location.clone(),
            start: self.start,
            end: self.end,
            size: self.size,
        }
    }
    /// From its wire form.
    pub fn from_node(n: &autopipe_proto::FileRangeNode) -> Self {
        FileRange {
            location: n.location.clone(),
            start: n.start,
            end: n.end,
            size: n.size,
        }
    }
}

/// A CSV/NDJSON table whose bad records go to the dead-letter sink.
#[derive(Debug)]
pub struct TolerantTable {
    source: String,
    store_url: String,
    format: RecordFormat,
    schema: SchemaRef,
    files: Vec<(String, u64)>,
    /// the scan's partitions when given (`with_groups`); else `split_ranges` over
    /// the session's target partitions
    groups: Option<Vec<Vec<FileRange>>>,
}

impl TolerantTable {
    /// Lists the files of `url` (a file, directory or glob) with extension `ext`.
    pub async fn try_new(
        state: &dyn Session,
        source: &str,
        url: &str,
        ext: &str,
        format: RecordFormat,
        schema: SchemaRef,
    ) -> Result<Self> {
        // a glob is listed below its literal prefix (DataFusion would take it for a file)
        let glob = crate::store::glob_prefix(url);
        let table_url = ListingTableUrl::parse(glob.map_or(url, |(prefix, _)| prefix))?;
        let store_url = table_url.object_store();
        let store = state.runtime_env().object_store(&store_url)?;
        let mut files: Vec<(String, u64)> = match glob {
            Some(_) => crate::store::list_glob(store.as_ref(), url, ext)
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))?
                .into_iter()
                .map(|m| (m.location.to_string(), m.size))
                .collect(),
            None => {
                table_url
                    .list_all_files(state, store.as_ref(), ext)
                    .await?
                    .map_ok(|m| (m.location.to_string(), m.size))
                    .try_collect()
                    .await?
            }
        };
        files.sort();
        Ok(Self {
            source: source.to_string(),
            store_url: store_url.as_str().to_string(),
            format,
            schema,
            files,
            groups: None,
        })
    }

    /// The scan reads `groups`, one partition each. Ranges of files this table did
    /// not list are left out; listed files that no group names form one more group.
    pub fn with_groups(mut self, groups: Vec<Vec<FileRange>>) -> Self {
        let listed: std::collections::HashSet<&str> =
            self.files.iter().map(|f| f.0.as_str()).collect();
        let mut named = std::collections::HashSet::new();
        let mut out: Vec<Vec<FileRange>> = groups
            .into_iter()
            .map(|g| {
                g.into_iter()
                    .filter(|r| listed.contains(r.location.as_str()))
                    .inspect(|r| {
                        named.insert(r.location.clone());
                    })
                    .collect::<Vec<_>>()
            })
            .filter(|g| !g.is_empty())
            .collect();
        let rest: Vec<FileRange> = self
            .files
            .iter()
            .filter(|(l, _)| !named.contains(l))
            .map(|(l, size)| FileRange {
                location: l.clone(),
                start: 0,
                end: *size,
                size: *size,
            })
            .collect();
        if !rest.is_empty() {
            out.push(rest);
        }
        self.groups = Some(out);
        self
    }
}

/// Splits files into at most `n` groups of about equal bytes (cutting large files
/// into ranges), in file order.
pub fn split_ranges(files: &[(String, u64)], n: usize) -> Vec<Vec<FileRange>> {
    let total: u64 = files.iter().map(|f| f.1).sum();
    let n = n.max(1) as u64;
    let target = total.div_ceil(n).max(1);
    let mut groups: Vec<Vec<FileRange>> = vec![vec![]];
    let mut filled = 0u64;
    for (location, size) in files {
        let mut start = 0;
        loop {
            if filled >= target && (groups.len() as u64) < n {
                groups.push(vec![]);
                filled = 0;
            }
            let take = (size - start).min(target.saturating_sub(filled).max(1));
            // the last group takes whatever is left
            let end = if groups.len() as u64 == n {
                *size
            } else {
                start + take
            };
            groups.last_mut().expect("one group").push(FileRange {
                location: location.clone(),
                start,
                end,
                size: *size,
            });
            filled += end - start;
            start = end;
            if start >= *size {
                break;
            }
        }
    }
    groups
}

#[async_trait]
impl TableProvider for TolerantTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    fn table_type(&self) -> TableType {
        TableType::Base
    }
    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let groups = match &self.groups {
            Some(g) => g.clone(),
            None => split_ranges(&self.files, state.config().target_partitions()),
        };
        Ok(Arc::new(TolerantScanExec::new(
            self.source.clone(),
            self.store_url.clone(),
            self.format.clone(),
            self.schema.clone(),
            projection.cloned(),
            groups,
            Arc::default(),
        )?))
    }
}

/// Scans file ranges record by record tolerance (see the module docs).
#[derive(Debug)]
pub struct TolerantScanExec {
    /// the source's name
    pub source: String,
    /// the object store URL (`file:///`, `s3://bucket/`)
    pub store_url: String,
    /// how records parse
    pub format: RecordFormat,
    /// the table's schema
    pub file_schema: SchemaRef,
    /// columns read, as indexes into `file_schema`
    pub projection: Option<Vec<usize>>,
    /// file ranges per partition
    pub groups: Vec<Vec<FileRange>>,
    /// where bad records are collected
    pub dead: Arc<DeadLetters>,
    metrics: ExecutionPlanMetricsSet,
    properties: Arc<PlanProperties>,
}

impl TolerantScanExec {
    /// A scan of `groups` (one partition each; at least one).
    pub fn new(
        source: String,
        store_url: String,
        format: RecordFormat,
        file_schema: SchemaRef,
        projection: Option<Vec<usize>>,
        mut groups: Vec<Vec<FileRange>>,
        dead: Arc<DeadLetters>,
    ) -> Result<Self> {
        if groups.is_empty() {
            groups.push(vec![]);
        }
        let out_schema = match &projection {
            Some(p) => Arc::new(file_schema.project(p)?),
            None => file_schema.clone(),
        };
        let properties = PlanProperties::new(
            EquivalenceProperties::new(out_schema),
            Partitioning::UnknownPartitioning(groups.len()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Self {
            source,
            store_url,
            format,
            file_schema,
            projection,
            groups,
            dead,
            metrics: ExecutionPlanMetricsSet::new(),
            properties: Arc::new(properties),
        })
    }

    /// Bytes of the ranges of `partition`.
    pub fn partition_bytes(&self, partition: usize) -> u64 {
        self.groups
            .get(partition)
            .map(|g| g.iter().map(|r| r.end - r.start).sum())
            .unwrap_or(0)
    }
}

impl DisplayAs for TolerantScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let files: usize = self.groups.iter().map(Vec::len).sum();
        write!(
            f,
            "TolerantScanExec: source={}, format={}, partitions={}, ranges={files}",
            self.source,
            match self.format {
                RecordFormat::Csv { .. } => "csv",
                RecordFormat::Ndjson => "ndjson",
            },
            self.groups.len()
        )
    }
}

impl ExecutionPlan for TolerantScanExec {
    fn name(&self) -> &str {
        "TolerantScanExec"
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
    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
    fn statistics_from_inputs(
        &self,
        _input_stats: &[Arc<Statistics>],
        args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        let bytes = match args.partition() {
            Some(p) => self.partition_bytes(p),
            None => (0..self.groups.len())
                .map(|p| self.partition_bytes(p))
                .sum(),
        };
        let mut s = Statistics::new_unknown(&self.schema());
        s.total_byte_size = Precision::Inexact(bytes as usize);
        Ok(Arc::new(s))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let ranges = self.groups.get(partition).cloned().ok_or_else(|| {
            DataFusionError::Internal(format!(
                "TolerantScanExec: partition {partition} out of {}",
                self.groups.len()
            ))
        })?;
        let store_url = ObjectStoreUrl::parse(&self.store_url)?;
        let store = context.runtime_env().object_store(&store_url)?;
        let reader = Arc::new(RangeReader {
            source: self.source.clone(),
            store_url: self.store_url.trim_end_matches('/').to_string(),
            format: self.format.clone(),
            file_schema: self.file_schema.clone(),
            out_schema: self.schema(),
            projection: self.projection.clone(),
            dead: self.dead.clone(),
        });
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        // one range's bytes at a time; its batches are decoded as they are pulled
        let stream = futures::stream::iter(ranges)
            .then(move |r| {
                let (store, reader) = (store.clone(), reader.clone());
                async move { RangeDecode::open(reader, store, r).await }
            })
            .map_ok(|st| {
                futures::stream::try_unfold(st, |mut st| async move {
                    Ok(st.next_batch().await?.map(|b| (b, st)))
                })
            })
            .try_flatten()
            .inspect_ok(move |b: &RecordBatch| baseline.record_output(b.num_rows()));
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema(),
            stream,
        )))
    }
}

/// Reads and decodes ranges for one partition.
struct RangeReader {
    source: String,
    store_url: String,
    format: RecordFormat,
    file_schema: SchemaRef,
    out_schema: SchemaRef,
    projection: Option<Vec<usize>>,
    dead: Arc<DeadLetters>,
}

/// One record: where it starts in the file and its bytes (with its terminator).
struct Rec {
    offset: u64,
    line: Option<u64>,
    start: usize,
    end: usize,
}

/// Finds where one CSV record ends with one reusable csv-core reader (building a
/// reader costs more than splitting a record).
struct Splitter {
    rdr: csv_core::Reader,
    out: Vec<u8>,
    ends: Vec<usize>,
}

impl Splitter {
    fn new(delimiter: u8) -> Self {
        Self {
            rdr: csv_core::ReaderBuilder::new().delimiter(delimiter).build(),
            out: vec![0; 64 << 10],
            ends: vec![0; 1024],
        }
    }

    /// The end of the record at `pos` when it is whole (terminated) in `data`.
    fn complete(&mut self, data: &[u8], pos: usize) -> Option<usize> {
        if pos >= data.len() {
            return None;
        }
        self.rdr.reset();
        let mut at = pos;
        loop {
            let (res, nin, _, _) = self
                .rdr
                .read_record(&data[at..], &mut self.out, &mut self.ends);
            at += nin;
            match res {
                csv_core::ReadRecordResult::Record => return Some(at),
                csv_core::ReadRecordResult::InputEmpty | csv_core::ReadRecordResult::End => {
                    return None
                }
                _ => {}
            }
        }
    }

    /// Start and end (past its terminator) of the record at `pos`, after any blank
    /// lines; `None` when only blank lines are left.
    fn one(&mut self, data: &[u8], pos: usize) -> Option<(usize, usize)> {
        let start = pos
            + data[pos..]
                .iter()
                .take_while(|&&b| b == b'\n' || b == b'\r')
                .count();
        if start >= data.len() {
            return None;
        }
        self.rdr.reset();
        let mut at = start;
        loop {
            let input = &data[at..];
            let (res, nin, _, _) = self.rdr.read_record(input, &mut self.out, &mut self.ends);
            at += nin;
            match res {
                csv_core::ReadRecordResult::Record | csv_core::ReadRecordResult::End => {
                    return Some((start, at))
                }
                csv_core::ReadRecordResult::InputEmpty if input.is_empty() => {
                    return Some((start, at))
                }
                _ => {}
            }
        }
    }
}

/// A decoder for the fast path.
enum FastDecoder {
    Csv(Box<datafusion::arrow::csv::reader::Decoder>),
    Json(Box<datafusion::arrow::json::reader::Decoder>),
}

impl FastDecoder {
    /// Decodes one batch from the start of `buf`; returns it and the bytes used.
    fn run(
        &mut self,
        rd: &RangeReader,
        buf: &[u8],
        eof: bool,
    ) -> std::result::Result<(Option<RecordBatch>, usize), ArrowError> {
        match self {
            FastDecoder::Csv(d) => {
                let used = feed(buf, eof, |b| d.decode(b))?;
                Ok((d.flush()?, used))
            }
            FastDecoder::Json(d) => {
                let used = feed(buf, eof, |b| d.decode(b))?;
                Ok((rd.project_json(d.flush()?), used))
            }
        }
    }
}

/// The decoding of one fetched range, a batch at a time.
struct RangeDecode {
    reader: Arc<RangeReader>,
    range: FileRange,
    store: Arc<dyn ObjectStore>,
    path: StorePath,
    /// file offset of `data[0]`
    base: u64,
    /// a window of the file: read blocks, consumed bytes dropped on refill
    data: Vec<u8>,
    pos: usize,
    /// `data[..visible]` holds whole records only
    visible: usize,
    /// file offset one past the last byte read
    fetched: u64,
    /// the range's last record is in `data` (and ends at `visible`)
    complete: bool,
    /// whether lines are known (the window started at the file's start)
    lines_known: bool,
    /// lines before `counted`
    counted: usize,
    lines: u64,
    /// records per fast batch: shrinks after a failure, grows back after successes
    fast: usize,
    pending: std::collections::VecDeque<RecordBatch>,
    /// the decoder of full-size fast batches, and the rows it has flushed
    cached: Option<FastDecoder>,
    cached_rows: usize,
    /// splits single CSV records after a failed batch
    splitter: Option<Splitter>,
    /// bytes read per block
    block: u64,
}

impl RangeDecode {
    async fn open(
        reader: Arc<RangeReader>,
        store: Arc<dyn ObjectStore>,
        r: FileRange,
    ) -> Result<Self> {
        Self::open_with_block(reader, store, r, READ_BLOCK).await
    }

    async fn open_with_block(
        reader: Arc<RangeReader>,
        store: Arc<dyn ObjectStore>,
        r: FileRange,
        block: u64,
    ) -> Result<Self> {
        // one byte before the range tells whether a record starts at r.start
        let lo = r.start.saturating_sub(1);
        let mut st = Self {
            reader,
            path: StorePath::from(r.location.as_str()),
            range: r,
            store,
            base: lo,
            data: vec![],
            pos: 0,
            visible: 0,
            fetched: lo,
            complete: false,
            lines_known: lo == 0,
            counted: 0,
            lines: 0,
            fast: FAST_BATCH,
            pending: Default::default(),
            cached: None,
            cached_rows: 0,
            splitter: None,
            block: block.max(1),
        };
        // the first record that starts in the range (after the header, if any)
        let header = matches!(
            st.reader.format,
            RecordFormat::Csv {
                has_header: true,
                ..
            }
        );
        let skip_line = st.range.start > 0 || header;
        if skip_line {
            loop {
                if let Some(nl) = st.data.iter().position(|&b| b == b'\n') {
                    st.pos = nl + 1;
                    break;
                }
                if st.fetched >= st.range.size {
                    st.pos = st.data.len();
                    break;
                }
                st.read_block().await?;
            }
        }
        if st.base + st.pos as u64 >= st.range.end {
            // no record starts in the range (the header may cover all of range 0)
            st.complete = true;
            st.visible = st.pos;
            return Ok(st);
        }
        st.settle();
        Ok(st)
    }

    async fn read_block(&mut self) -> Result<()> {
        let hi = (self.fetched + self.block).min(self.range.size);
        if hi > self.fetched {
            let bytes = self.store.get_range(&self.path, self.fetched..hi).await?;
            self.data.extend_from_slice(&bytes);
            self.fetched = hi;
        }
        Ok(())
    }

    /// Sets `visible` and `complete` from what has been read.
    fn settle(&mut self) {
        let end = self.range.end;
        let eof = self.fetched >= self.range.size;
        if end < self.range.size {
            // the last record is the one that crosses `end`: it ends at the first
            // newline at or after end - 1
            let from = (end.saturating_sub(1).saturating_sub(self.base) as usize)
                .max(self.pos)
                .min(self.data.len());
            if let Some(nl) = self.data[from..].iter().position(|&b| b == b'\n') {
                self.visible = from + nl + 1;
                self.data.truncate(self.visible);
                self.complete = true;
                return;
            }
        }
        if eof {
            self.visible = self.data.len();
            self.complete = true;
            return;
        }
        self.visible = match self.data[self.pos..].iter().rposition(|&b| b == b'\n') {
            Some(nl) => self.pos + nl + 1,
            None => self.pos,
        };
        // a newline inside a quoted CSV field is no record boundary: where the block
        // has quotes, the window ends after its last whole record instead
        if let RecordFormat::Csv { delimiter, .. } = self.reader.format {
            if self.data[self.pos..self.visible].contains(&b'"') {
                let splitter = self
                    .splitter
                    .get_or_insert_with(|| Splitter::new(delimiter));
                let mut at = self.pos;
                while let Some(end) = splitter.complete(&self.data[..self.visible], at) {
                    at = end;
                }
                self.visible = at;
            }
        }
    }

    /// Drops what was consumed and reads the next block.
    async fn refill(&mut self) -> Result<()> {
        if self.lines_known {
            self.lines += count_lines(&self.data[self.counted..self.pos]);
        }
        self.counted = 0;
        self.data.drain(..self.pos);
        self.base += self.pos as u64;
        self.visible -= self.pos;
        self.pos = 0;
        self.read_block().await?;
        self.settle();
        Ok(())
    }

    /// The next batch of good records (bad ones go to the dead letters on the way).
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            if let Some(b) = self.pending.pop_front() {
                return Ok(Some(b));
            }
            if self.pos >= self.visible {
                if self.complete {
                    return Ok(None);
                }
                self.refill().await?;
                continue;
            }
            if !self.step()? {
                // only blank lines up to `visible`
                self.pos = self.visible;
            }
        }
    }

    /// Decodes the next stretch of `data[pos..visible]`; false when it holds no record.
    fn step(&mut self) -> Result<bool> {
        let (rd, pos) = (&self.reader, self.pos);
        let data = &self.data[..self.visible];
        let eof = self.complete;
        // fast path: a batch straight from the bytes; full-size batches reuse one
        // decoder (as DataFusion's reader does), smaller ones after a failure take a
        // fresh one, whose errors count records from the batch's start
        let reuse = self.fast == FAST_BATCH;
        let res = if reuse {
            if self.cached.is_none() {
                self.cached = Some(rd.fast_decoder(FAST_BATCH)?);
            }
            self.cached
                .as_mut()
                .expect("set above")
                .run(rd, &data[pos..], eof)
        } else {
            rd.fast_decoder(self.fast)?.run(rd, &data[pos..], eof)
        };
        // rows the reused decoder flushed before this batch (its errors count from
        // its creation)
        let earlier = if reuse { self.cached_rows } else { 0 };
        let err = match res {
            Ok((batch, used)) if used > 0 => {
                if reuse {
                    self.cached_rows += batch.as_ref().map_or(0, |b| b.num_rows());
                }
                self.pending.extend(batch);
                self.pos += used;
                self.fast = (self.fast * 2).min(FAST_BATCH);
                return Ok(true);
            }
            Ok(_) => return Ok(false),
            Err(e) => {
                if reuse {
                    // an error spoils a decoder
                    self.cached = None;
                    self.cached_rows = 0;
                }
                e
            }
        };
        let first_line = self.lines_known.then(|| {
            self.lines += count_lines(&data[self.counted..pos]);
            self.counted = pos;
            1 + self.lines
        });
        // CSV errors name the failing record: the ones before it are decoded on the
        // fast path, it goes to the dead letters
        let failing = failing_record(&err).and_then(|i| i.checked_sub(earlier));
        if let (RecordFormat::Csv { delimiter, .. }, Some(i)) = (&rd.format, failing) {
            if i > 0 && i < self.fast {
                self.fast = i;
                return Ok(true);
            }
            if i == 0 {
                let splitter = self
                    .splitter
                    .get_or_insert_with(|| Splitter::new(*delimiter));
                let Some((start, end)) = splitter.one(data, pos) else {
                    return Ok(false);
                };
                let rec = Rec {
                    offset: self.base + start as u64,
                    line: first_line.map(|l| l + count_lines(&data[pos..start])),
                    start,
                    end,
                };
                rd.dead_letter(data, &rec, &self.range, record_error(&err));
                self.pos = end;
                self.fast = FAST_BATCH;
                return Ok(true);
            }
        }
        self.fast = (self.fast / 8).max(MIN_FAST_BATCH);
        // otherwise the next records one chunk at a time, bisected
        let recs = match &rd.format {
            RecordFormat::Csv { delimiter, .. } => {
                csv_records(data, pos, self.base, *delimiter, CHUNK_RECORDS, first_line)?
            }
            RecordFormat::Ndjson => ndjson_records(data, pos, self.base, CHUNK_RECORDS, first_line),
        };
        let Some(last) = recs.last() else {
            return Ok(false);
        };
        let end = last.end;
        let mut out = vec![];
        rd.decode_tolerant(data, &recs, &self.range, &mut out)?;
        self.pending.extend(out);
        self.pos = end;
        Ok(true)
    }
}

impl RangeReader {
    fn dead_letter(&self, data: &[u8], rec: &Rec, r: &FileRange, error: String) {
        let raw = &data[rec.start..rec.end.min(rec.start + MAX_RECORD_BYTES)];
        self.dead.push(DeadRecord {
            source: self.source.clone(),
            file: format!("{}/{}", self.store_url, r.location),
            offset: rec.offset,
            line: rec.line,
            record: String::from_utf8_lossy(raw)
                .trim_end_matches(['\r', '\n'])
                .to_string(),
            error,
            topic: None,
            partition: None,
        });
    }

    /// A decoder of up to `batch` records per batch.
    fn fast_decoder(&self, batch: usize) -> Result<FastDecoder> {
        Ok(match &self.format {
            RecordFormat::Csv { delimiter, .. } => {
                FastDecoder::Csv(Box::new(self.csv_decoder(*delimiter, batch)))
            }
            RecordFormat::Ndjson => FastDecoder::Json(Box::new(self.json_decoder(batch)?)),
        })
    }

    fn csv_decoder(&self, delimiter: u8, batch: usize) -> datafusion::arrow::csv::reader::Decoder {
        let mut b = datafusion::arrow::csv::ReaderBuilder::new(self.file_schema.clone())
            .with_header(false)
            .with_delimiter(delimiter)
            .with_batch_size(batch);
        if let Some(p) = &self.projection {
            b = b.with_projection(p.clone());
        }
        b.build_decoder()
    }

    /// A JSON decoder of the read columns (of every column when none is read, so
    /// that rows still count).
    fn json_decoder(
        &self,
        batch: usize,
    ) -> std::result::Result<datafusion::arrow::json::reader::Decoder, ArrowError> {
        let schema = if self.out_schema.fields().is_empty() {
            self.file_schema.clone()
        } else {
            self.out_schema.clone()
        };
        datafusion::arrow::json::ReaderBuilder::new(schema)
            .with_batch_size(batch)
            .build_decoder()
    }

    fn project_json(&self, batch: Option<RecordBatch>) -> Option<RecordBatch> {
        let b = batch?;
        if !self.out_schema.fields().is_empty() {
            return Some(b);
        }
        RecordBatch::try_new_with_options(
            Arc::new(Schema::empty()),
            vec![],
            &datafusion::arrow::record_batch::RecordBatchOptions::new()
                .with_row_count(Some(b.num_rows())),
        )
        .ok()
    }

    /// Decodes `recs`; on failure bisects down to single records, which go to the
    /// dead letters with the decoder's error.
    fn decode_tolerant(
        &self,
        data: &[u8],
        recs: &[Rec],
        r: &FileRange,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        if recs.is_empty() {
            return Ok(());
        }
        match self.decode(data, recs) {
            Ok(Some(b)) => out.push(b),
            Ok(None) => {}
            Err(e) if recs.len() == 1 => self.dead_letter(data, &recs[0], r, record_error(&e)),
            Err(_) => {
                let (a, b) = recs.split_at(recs.len() / 2);
                self.decode_tolerant(data, a, r, out)?;
                self.decode_tolerant(data, b, r, out)?;
            }
        }
        Ok(())
    }

    fn decode(
        &self,
        data: &[u8],
        recs: &[Rec],
    ) -> std::result::Result<Option<RecordBatch>, ArrowError> {
        let mut buf = Vec::with_capacity(recs.iter().map(|r| r.end - r.start + 1).sum());
        for r in recs {
            buf.extend_from_slice(&data[r.start..r.end]);
            if buf.last() != Some(&b'\n') {
                buf.push(b'\n');
            }
        }
        let batch = match &self.format {
            RecordFormat::Csv { delimiter, .. } => {
                let mut d = self.csv_decoder(*delimiter, recs.len() + 1);
                feed(&buf, true, |b| d.decode(b))?;
                d.flush()?
            }
            RecordFormat::Ndjson => {
                let mut d = self.json_decoder(recs.len() + 1)?;
                feed(&buf, true, |b| d.decode(b))?;
                self.project_json(d.flush()?)
            }
        };
        // a record that did not decode as exactly one row
        let rows = batch.as_ref().map(|b| b.num_rows()).unwrap_or(0);
        if rows != recs.len() {
            return Err(ArrowError::ParseError(format!(
                "expected {} records, decoded {rows}",
                recs.len()
            )));
        }
        Ok(batch)
    }
}

/// Feeds `buf` (whole records) to a decoder until it stops taking bytes (its batch
/// is full) or `buf` ends (then, at the end of the input, once more with nothing);
/// returns the bytes used.
fn feed(
    buf: &[u8],
    eof: bool,
    mut decode: impl FnMut(&[u8]) -> std::result::Result<usize, ArrowError>,
) -> std::result::Result<usize, ArrowError> {
    let mut used = 0;
    while used < buf.len() {
        let n = decode(&buf[used..])?;
        if n == 0 {
            return Ok(used);
        }
        used += n;
    }
    if eof {
        decode(&[])?;
    }
    Ok(used)
}

/// The index (in its batch) of the record an arrow CSV error is about: "incorrect
/// number of fields for line N" counts records from 1, "Error while parsing value …
/// at line N" (for one flush of a fresh decoder) from 0.
fn failing_record(e: &ArrowError) -> Option<usize> {
    let msg = e.to_string();
    if msg.contains("incorrect number of fields") {
        // no record data in this message
        let at = msg.find("for line ")? + "for line ".len();
        let digits: String = msg[at..].chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<usize>().ok()?.checked_sub(1)
    } else if msg.contains("Error while parsing value") {
        line_marker(&msg).map(|(_, _, n)| n)
    } else {
        None
    }
}

/// In "… for column C at line N. Row data: …", where the value before and the row
/// after are the user's data: the first " for column <digits> at line <digits>"
/// followed by ". Row data: ", as (its start, its end, N).
fn line_marker(msg: &str) -> Option<(usize, usize, usize)> {
    const COL: &str = " for column ";
    const LINE: &str = " at line ";
    let mut from = 0;
    while let Some(i) = msg[from..].find(COL).map(|i| i + from) {
        let rest = &msg[i + COL.len()..];
        let col = rest.chars().take_while(char::is_ascii_digit).count();
        if col > 0 && rest[col..].starts_with(LINE) {
            let num = &rest[col + LINE.len()..];
            let n = num.chars().take_while(char::is_ascii_digit).count();
            // the real one is followed by the row data
            if let (Ok(line), true) = (num[..n].parse(), num[n..].starts_with(". Row data: ")) {
                let end = i + COL.len() + col + LINE.len() + n;
                return Some((i + COL.len() + col, end, line));
            }
        }
        from = i + COL.len();
    }
    None
}

/// An arrow decode error as a dead letter's reason: without the decoder's batch-
/// relative line (the dead letter has the record's own line and offset).
fn record_error(e: &ArrowError) -> String {
    let msg = e.to_string();
    if msg.contains("incorrect number of fields") {
        if let Some(i) = msg.find(" for line ") {
            let rest = &msg[i + " for line ".len()..];
            let tail = rest.trim_start_matches(|c: char| c.is_ascii_digit());
            return format!("{}{}", &msg[..i], tail);
        }
    }
    if let Some((start, _, _)) = line_marker(&msg) {
        // "... for column C" (the row data after it repeats the record)
        return msg[..start].to_string();
    }
    msg
}

#[cfg(test)]
#[test]
fn error_positions_are_found_past_user_data() {
    let e = ArrowError::ParseError(
        "Error while parsing value 'x for column 1 at line 9' as type 'Int64' for column 0 at line 3. Row data: '[x]'".into(),
    );
    assert_eq!(failing_record(&e), Some(3));
    assert_eq!(
        record_error(&e),
        "Parser error: Error while parsing value 'x for column 1 at line 9' as type 'Int64' for column 0"
    );
    let e = ArrowError::CsvError("incorrect number of fields for line 2, expected 3 got 1".into());
    assert_eq!(failing_record(&e), Some(1));
    assert_eq!(
        record_error(&e),
        "Csv error: incorrect number of fields, expected 3 got 1"
    );
}

fn count_lines(data: &[u8]) -> u64 {
    data.iter().filter(|&&b| b == b'\n').count() as u64
}

/// Up to `limit` CSV records of `data` from `pos` (`data` starts at file offset
/// `base`; the line of `pos` is `first_line`, when known). Starts and ends are
/// indexes into `data`.
fn csv_records(
    data: &[u8],
    pos: usize,
    base: u64,
    delimiter: u8,
    limit: usize,
    first_line: Option<u64>,
) -> Result<Vec<Rec>> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(delimiter)
        .from_reader(&data[pos..]);
    let mut out = vec![];
    let mut rec = csv::ByteRecord::new();
    while out.len() < limit {
        let before = rdr.position().byte();
        match rdr.read_byte_record(&mut rec) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => return Err(DataFusionError::External(Box::new(e))),
        }
        // the record starts after the terminators csv skipped (blank lines, the
        // "\n" of a "\r\n")
        let from = pos + before as usize;
        let start = from
            + data[from..]
                .iter()
                .take_while(|&&b| b == b'\n' || b == b'\r')
                .count();
        out.push(Rec {
            offset: base + start as u64,
            line: first_line.map(|l| l + count_lines(&data[pos..start])),
            start,
            end: pos + rdr.position().byte() as usize,
        });
    }
    Ok(out)
}

/// Up to `limit` NDJSON records (non-blank lines) of `data` from `pos`, as for
/// `csv_records`.
fn ndjson_records(
    data: &[u8],
    pos: usize,
    base: u64,
    limit: usize,
    first_line: Option<u64>,
) -> Vec<Rec> {
    let mut out = vec![];
    let mut start = pos;
    let mut line = first_line;
    while start < data.len() && out.len() < limit {
        let end = data[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|i| start + i + 1)
            .unwrap_or(data.len());
        if !data[start..end].iter().all(u8::is_ascii_whitespace) {
            out.push(Rec {
                offset: base + start as u64,
                line,
                start,
                end,
            });
        }
        line = line.map(|l| l + 1);
        start = end;
    }
    out
}

/// The record format of a source format (`None`: Parquet, read by DataFusion).
pub fn record_format(format: Format, has_header: bool, delimiter: u8) -> Option<RecordFormat> {
    match format {
        Format::Csv => Some(RecordFormat::Csv {
            has_header,
            delimiter,
        }),
        Format::Ndjson => Some(RecordFormat::Ndjson),
        Format::Kafka | Format::Delta => None,
        Format::Parquet => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, Int64Array};
    use datafusion::arrow::datatypes::{DataType, Field};
    use object_store::memory::InMemory;
    use object_store::PutPayload;

    /// Reads a range in small blocks (so records straddle them) and in one.
    async fn read(
        r: &Arc<RangeReader>,
        store: &Arc<InMemory>,
        range: &FileRange,
    ) -> Vec<RecordBatch> {
        let earlier = r.dead.take();
        let mut results = vec![];
        for block in [7, 64 << 20] {
            let store: Arc<dyn ObjectStore> = store.clone();
            let mut st = RangeDecode::open_with_block(r.clone(), store, range.clone(), block)
                .await
                .unwrap();
            let mut out = vec![];
            while let Some(b) = st.next_batch().await.unwrap() {
                out.push(b);
            }
            results.push(out);
        }
        let b = results.pop().unwrap();
        assert_eq!(ids(&results.pop().unwrap()), ids(&b), "block sizes agree");
        // each read collected the bad records once: keep one copy
        let mut dead = r.dead.take();
        let half = dead.len() / 2;
        assert_eq!(
            dead[..half],
            dead[half..],
            "both reads found the same bad records"
        );
        dead.truncate(half);
        for d in earlier.into_iter().chain(dead) {
            r.dead.push(d);
        }
        b
    }

    fn reader(format: RecordFormat) -> Arc<RangeReader> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
        ]));
        Arc::new(RangeReader {
            source: "t".into(),
            store_url: "memory://".into(),
            format,
            file_schema: schema.clone(),
            out_schema: schema,
            projection: None,
            dead: Arc::default(),
        })
    }

    async fn store_with(data: &str) -> Arc<InMemory> {
        let s = Arc::new(InMemory::new());
        s.put(
            &StorePath::from("f"),
            PutPayload::from(data.as_bytes().to_vec()),
        )
        .await
        .unwrap();
        s
    }

    fn ids(batches: &[RecordBatch]) -> Vec<i64> {
        batches
            .iter()
            .flat_map(|b| {
                let a = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                (0..a.len()).map(|i| a.value(i)).collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn streamed_dead_letters_go_to_their_file_one_line_each() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead/t0.ndjson");
        let d = DeadLetters::to_file(&path).unwrap();
        for i in 0..3 {
            d.push(DeadRecord {
                source: "s".into(),
                file: "f".into(),
                offset: i,
                line: None,
                record: format!("bad {i}"),
                error: "x".into(),
                topic: None,
                partition: None,
            });
        }
        assert!(d.take().is_empty(), "nothing is kept in memory");
        assert_eq!(d.finish().unwrap(), Some((path.clone(), 3)));
        let text = std::fs::read_to_string(&path).unwrap();
        let back: Vec<DeadRecord> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            back.iter().map(|r| r.offset).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert_eq!(DeadLetters::default().finish(), Ok(None));
    }

    #[tokio::test]
    async fn bad_csv_records_go_to_the_dead_letters_with_their_positions() {
        let text = "id,name\n1,a\n2,b\nx,c\n4,d\n5\n6,f\n";
        let store = store_with(text).await;
        let r = reader(RecordFormat::Csv {
            has_header: true,
            delimiter: b',',
        });
        let range = FileRange {
            location: "f".into(),
            start: 0,
            end: text.len() as u64,
            size: text.len() as u64,
        };
        let out = read(&r, &store, &range).await;
        assert_eq!(ids(&out), vec![1, 2, 4, 6]);
        let dead = r.dead.take();
        assert_eq!(dead.len(), 2);
        assert_eq!(
            (dead[0].offset, dead[0].line, dead[0].record.as_str()),
            (text.find("x,c").unwrap() as u64, Some(4), "x,c")
        );
        assert_eq!(
            (dead[1].offset, dead[1].line, dead[1].record.as_str()),
            (text.find("5\n").unwrap() as u64, Some(6), "5")
        );
        assert!(dead[0].error.contains("x"), "{}", dead[0].error);
    }

    #[tokio::test]
    async fn ranges_split_a_file_at_record_starts_and_lose_or_repeat_nothing() {
        let mut text = String::from("id,name\n");
        for i in 0..500 {
            if i % 97 == 3 {
                text.push_str(&format!("bad{i},x\n"));
            } else {
                text.push_str(&format!("{i},name-{i}\n"));
            }
        }
        let store = store_with(&text).await;
        let size = text.len() as u64;
        for n in [1, 2, 3, 7, 64] {
            let groups = split_ranges(&[("f".to_string(), size)], n);
            let r = reader(RecordFormat::Csv {
                has_header: true,
                delimiter: b',',
            });
            let mut all = vec![];
            for g in &groups {
                for range in g {
                    all.extend(ids(&read(&r, &store, range).await));
                }
            }
            let expected: Vec<i64> = (0..500).filter(|i| i % 97 != 3).collect();
            assert_eq!(all, expected, "{n} ranges");
            let mut dead: Vec<u64> = r.dead.take().iter().map(|d| d.offset).collect();
            dead.sort();
            let want: Vec<u64> = (0..500)
                .filter(|i| i % 97 == 3)
                .map(|i| text.find(&format!("bad{i},")).unwrap() as u64)
                .collect();
            assert_eq!(dead, want, "{n} ranges");
        }
    }

    #[tokio::test]
    async fn batches_around_rare_bad_records_keep_every_good_one_and_the_lines() {
        // 30,000 rows, 3 bad: most batches take the fast path
        let mut text = String::from("id,name\n");
        let bad_at = [5, 12_345, 29_999];
        for i in 0..30_000 {
            if bad_at.contains(&i) {
                text.push_str(&format!("{i},x,too-many\n"));
            } else {
                text.push_str(&format!("{i},name-{i}\n"));
            }
        }
        let store = store_with(&text).await;
        let r = reader(RecordFormat::Csv {
            has_header: true,
            delimiter: b',',
        });
        let range = FileRange {
            location: "f".into(),
            start: 0,
            end: text.len() as u64,
            size: text.len() as u64,
        };
        let got = ids(&read(&r, &store, &range).await);
        let want: Vec<i64> = (0..30_000).filter(|i| !bad_at.contains(i)).collect();
        assert_eq!(got, want);
        let dead: Vec<_> = r.dead.take().iter().map(|d| (d.offset, d.line)).collect();
        let want: Vec<_> = bad_at
            .iter()
            .map(|i| {
                let off = text.find(&format!("\n{i},x,")).unwrap() as u64 + 1;
                (off, Some(*i as u64 + 2))
            })
            .collect();
        assert_eq!(dead, want);
    }

    #[tokio::test]
    async fn tiny_ranges_crlf_and_quoted_newlines_lose_or_repeat_nothing() {
        // CRLF, a bad record, a quoted field with a newline; ranges smaller than the header
        let text = "id,name\r\n1,a\r\n2,\"multi\nline\"\r\nx,c\r\n4,d\r\n";
        let store = store_with(text).await;
        let size = text.len() as u64;
        for n in [1, 2, 8, 20] {
            let r = reader(RecordFormat::Csv {
                has_header: true,
                delimiter: b',',
            });
            let mut all = vec![];
            for g in split_ranges(&[("f".to_string(), size)], n) {
                for range in &g {
                    all.extend(ids(&read(&r, &store, range).await));
                }
            }
            if n == 1 {
                assert_eq!(all, vec![1, 2, 4], "{n} ranges");
            } else {
                // range splits assume no quoted newlines (as DataFusion's): only check
                // that nothing is read twice
                let mut dedup = all.clone();
                dedup.dedup();
                assert_eq!(all, dedup, "{n} ranges");
            }
            let dead = r.dead.take();
            if n == 1 {
                assert_eq!(dead.len(), 1, "{dead:?}");
                assert_eq!(dead[0].offset, text.find("x,c").unwrap() as u64);
                assert_eq!(dead[0].line, Some(5), "the physical line");
                assert_eq!(dead[0].record, "x,c");
            }
        }
    }

    #[tokio::test]
    async fn bad_ndjson_lines_go_to_the_dead_letters() {
        let text = "{\"id\":1,\"name\":\"a\"}\n{\"id\":2\n\n{\"id\":\"three\"}\n{\"id\":4}\n";
        let store = store_with(text).await;
        let r = reader(RecordFormat::Ndjson);
        let range = FileRange {
            location: "f".into(),
            start: 0,
            end: text.len() as u64,
            size: text.len() as u64,
        };
        let out = read(&r, &store, &range).await;
        assert_eq!(ids(&out), vec![1, 4]);
        let dead = r.dead.take();
        let lines: Vec<_> = dead.iter().map(|d| d.line).collect();
        assert_eq!(lines, vec![Some(2), Some(4)]);
    }

    #[test]
    fn ranges_cover_every_byte_once() {
        let files = vec![
            ("a".to_string(), 100),
            ("b".to_string(), 7),
            ("c".to_string(), 250),
        ];
        for n in 1..12 {
            let g = split_ranges(&files, n);
            assert!(g.len() <= n);
            for (name, size) in &files {
                let mut rs: Vec<_> = g.iter().flatten().filter(|r| &r.location == name).collect();
                rs.sort_by_key(|r| r.start);
                assert_eq!(rs.first().unwrap().start, 0);
                assert_eq!(rs.last().unwrap().end, *size);
                for w in rs.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                }
            }
        }
    }
}
