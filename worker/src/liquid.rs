//! The worker's side of dynamic work rebalancing (the protocol is in the
//! coordinator's `optimizer::liquid`): a map task of a scan stage launched with
//! `dynamic_split` runs its scan unit by unit through the same operators into the
//! same shuffle writers, and a `SplitControl` decides which unit comes next. A unit
//! is about 1/`MAX_UNITS` of the task's input: a Parquet range larger than that is
//! cut at its row groups (its footer read for it), a CSV/NDJSON range into chunks
//! (at least `MIN_CHUNK_BYTES`), and small consecutive pieces (tiny files) are packed
//! into one unit, so a task of 500 tiny files does not run 500 scans. On a `SplitTask` request the control reserves a split point (half-way
//! through the units not started yet), answers with the prefix and the remainder, and
//! starts no unit past the point until the coordinator confirms the split; then the
//! attempt ends there. It never drops the remainder on its own.
//!
//! A unit is a list of file ranges: a Parquet range holds the row groups whose first page
//! starts in it (DataFusion's rule, `RowGroupAccessPlanFilter::prune_by_range`), so
//! ranges cut at row-group starts read each row group exactly once; a CSV/NDJSON range
//! holds the records that start in it (`TolerantScanExec`). Prefix and remainder are
//! the units' ranges merged, so the two tasks read disjoint parts that cover the
//! attempt's input. Only a plain scan pipeline is cut (scan, filter, projection,
//! partial aggregation over one partition); any other plan runs whole and refuses
//! splits.

use autopipe_common::error::{Error, Result};
use autopipe_common::tolerant::{FileRange, TolerantScanExec};
use autopipe_proto as pb;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::metadata::DFParquetMetadata;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfig, FileScanConfigBuilder};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::execution_plan::ReplaceChildrenOptions;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};
use futures::TryStreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// A task's input is cut into at most about this many units.
pub const MAX_UNITS: u64 = 64;
/// Smallest CSV/NDJSON chunk.
pub const MIN_CHUNK_BYTES: u64 = 1 << 20;

/// One unit: file ranges read by one run of the scan.
pub type Unit = Vec<FileRange>;

/// Which unit an attempt reads next, and the split points it agreed to.
#[derive(Default)]
pub struct SplitControl {
    ctl: Mutex<Ctl>,
    changed: Notify,
}

#[derive(Default)]
struct Ctl {
    /// the attempt's units, in reading order (`None` until the scan listed them)
    units: Option<Vec<Unit>>,
    /// the plan partition it scans
    partition: u32,
    /// units started (the next unit to start)
    next: usize,
    /// units it reads: `[0, end)`
    end: usize,
    /// splits confirmed so far
    seq: u32,
    /// the reserved split point awaiting confirmation
    pending: Option<usize>,
}

impl SplitControl {
    /// Sets the attempt's units (all of them are read unless a split is confirmed).
    pub fn set_units(&self, partition: u32, units: Vec<Unit>) {
        let mut c = self.ctl.lock().expect("lock");
        c.end = units.len();
        c.units = Some(units);
        c.partition = partition;
    }

    /// The next unit to read, waiting while it lies at or past a reserved split
    /// point; `None` once the attempt's units are read.
    pub async fn next_unit(&self) -> Option<Unit> {
        loop {
            let changed = self.changed.notified();
            {
                let mut c = self.ctl.lock().expect("lock");
                if c.next >= c.end {
                    return None;
                }
                if c.pending.is_none_or(|at| c.next < at) {
                    let unit = c.units.as_ref()?.get(c.next).cloned();
                    c.next += 1;
                    return unit;
                }
            }
            changed.await;
        }
    }

    /// Reserves a split point for attempt `key` and describes it; the same offer
    /// while one awaits confirmation. Refused before the scan started, and when
    /// no unit is left to give away.
    pub fn offer(&self, key: &pb::TaskKey) -> std::result::Result<pb::SplitOffer, String> {
        let mut c = self.ctl.lock().expect("lock");
        if c.units.is_none() {
            return Err("the scan has not listed its units yet".into());
        }
        if c.pending.is_none() {
            if c.next == 0 {
                return Err("the scan has not started".into());
            }
            // half of the units not started yet go; the one in progress stays
            let at = c.next + (c.end - c.next) / 2;
            if at >= c.end {
                return Err(format!(
                    "{} of its {} units started: nothing left to give away",
                    c.next, c.end
                ));
            }
            c.pending = Some(at);
        }
        Ok(describe(&c, key))
    }

    /// The offer awaiting confirmation, if any.
    pub fn pending(&self, key: &pb::TaskKey) -> Option<pb::SplitOffer> {
        let c = self.ctl.lock().expect("lock");
        c.pending.map(|_| describe(&c, key))
    }

    /// The coordinator recorded split `seq`: the attempt ends at its point. False
    /// when no such offer waits (a repeated confirmation).
    pub fn confirm(&self, seq: u32) -> bool {
        let mut c = self.ctl.lock().expect("lock");
        let Some(at) = c.pending.filter(|_| c.seq == seq) else {
            return false;
        };
        c.end = at;
        c.seq += 1;
        c.pending = None;
        drop(c);
        self.changed.notify_waiters();
        true
    }

    /// Bytes of the units the attempt reads (after it ended: those it read).
    pub fn bytes_read(&self) -> u64 {
        let c = self.ctl.lock().expect("lock");
        c.units
            .iter()
            .flat_map(|u| u[..c.end.min(u.len())].iter().flatten())
            .map(|r| r.end - r.start)
            .sum()
    }
}

fn describe(c: &Ctl, key: &pb::TaskKey) -> pb::SplitOffer {
    let at = c.pending.expect("described while pending");
    let units = c.units.as_deref().unwrap_or(&[]);
    let group = |us: &[Unit]| pb::FileGroupNode {
        ranges: merge(&us.concat()).iter().map(FileRange::to_node).collect(),
    };
    pb::SplitOffer {
        key: Some(key.clone()),
        seq: c.seq,
        partition: c.partition,
        units_started: c.next as u32,
        split_unit: at as u32,
        units_total: c.end as u32,
        prefix: Some(group(&units[..at])),
        remainder: Some(group(&units[at..c.end])),
    }
}

/// Adjacent ranges of the same file joined.
pub fn merge(units: &[FileRange]) -> Vec<FileRange> {
    let mut out: Vec<FileRange> = vec![];
    for u in units {
        match out.last_mut() {
            Some(l) if l.location == u.location && l.end == u.start => l.end = u.end,
            _ => out.push(u.clone()),
        }
    }
    out
}

/// The units of a Parquet file range: one per row group whose first page starts in
/// it (`starts`, the row groups' first-page offsets in file order), cut at those
/// starts, the first from the range's start and the last to its end; none when no
/// row group starts in it (the range reads nothing).
pub fn parquet_units(r: &FileRange, starts: &[u64]) -> Vec<FileRange> {
    let inside: Vec<u64> = starts
        .iter()
        .copied()
        .filter(|s| *s >= r.start && *s < r.end)
        .collect();
    let mut out = Vec::with_capacity(inside.len());
    for (i, _) in inside.iter().enumerate() {
        let start = if i == 0 { r.start } else { inside[i] };
        let end = inside.get(i + 1).copied().unwrap_or(r.end);
        out.push(FileRange {
            start,
            end,
            ..r.clone()
        });
    }
    out
}

/// `pieces` packed in order into units of at least `target` bytes (a piece that is
/// larger is a unit alone).
pub fn pack(pieces: Vec<FileRange>, target: u64) -> Vec<Unit> {
    let mut out = vec![];
    let (mut unit, mut bytes) = (vec![], 0);
    for p in pieces {
        bytes += p.end - p.start;
        unit.push(p);
        if bytes >= target {
            out.push(std::mem::take(&mut unit));
            bytes = 0;
        }
    }
    if !unit.is_empty() {
        out.push(unit);
    }
    out
}

/// The units of a CSV/NDJSON range: `chunk`-byte pieces (a record belongs to the
/// piece it starts in).
pub fn chunk_units(r: &FileRange, chunk: u64) -> Vec<FileRange> {
    let chunk = chunk.max(1);
    let mut out = vec![];
    let mut start = r.start;
    while start < r.end {
        let end = (start + chunk).min(r.end);
        out.push(FileRange {
            start,
            end,
            ..r.clone()
        });
        start = end;
    }
    out
}

/// The scan at the bottom of a map task's input that it can run unit by unit.
enum Leaf {
    Parquet(Box<FileScanConfig>),
    Tolerant(Arc<TolerantScanExec>),
}

/// A map task's input run one unit of its scan at a time.
pub struct UnitScan {
    input: Arc<dyn ExecutionPlan>,
    partition: usize,
    leaf: Leaf,
    /// rows the units' scans returned so far (counted here: the scans of one task
    /// share their file source's metrics, so those count every unit in each)
    rows: AtomicU64,
}

impl UnitScan {
    /// `input` (the map side of a stage plan) as a unit scan of `partition`, when it
    /// is a chain of operators that keep partitions and may run per unit (scan,
    /// filter, projection, partial aggregate) over a Parquet or CSV/NDJSON scan.
    pub fn new(input: &Arc<dyn ExecutionPlan>, partition: usize) -> Option<Self> {
        let n = input.output_partitioning().partition_count();
        let mut node = Arc::clone(input);
        loop {
            if node.output_partitioning().partition_count() != n {
                return None;
            }
            let children = node.children();
            if children.is_empty() {
                break;
            }
            if children.len() > 1 || !per_unit_operator(&node) {
                return None;
            }
            let child = Arc::clone(children[0]);
            node = child;
        }
        let leaf = if let Some(t) = node.downcast_ref::<TolerantScanExec>() {
            Leaf::Tolerant(Arc::new(
                TolerantScanExec::new(
                    t.source.clone(),
                    t.store_url.clone(),
                    t.format.clone(),
                    t.file_schema.clone(),
                    t.projection.clone(),
                    t.groups.clone(),
                    t.dead.clone(),
                )
                .ok()?,
            ))
        } else {
            let ds = node.downcast_ref::<DataSourceExec>()?;
            let fsc = ds.data_source().downcast_ref::<FileScanConfig>()?;
            if fsc.file_source().file_type() != "parquet" {
                return None;
            }
            Leaf::Parquet(Box::new(fsc.clone()))
        };
        (partition < n).then(|| UnitScan {
            input: Arc::clone(input),
            partition,
            leaf,
            rows: AtomicU64::new(0),
        })
    }

    /// The ranges the task reads: `slice` (a split task's), else the plan's group.
    pub fn group(&self, slice: Option<Vec<FileRange>>) -> Vec<FileRange> {
        if let Some(s) = slice {
            return s;
        }
        match &self.leaf {
            Leaf::Tolerant(t) => t.groups.get(self.partition).cloned().unwrap_or_default(),
            Leaf::Parquet(fsc) => fsc
                .file_groups
                .get(self.partition)
                .map(|g| {
                    g.files()
                        .iter()
                        .map(|f| {
                            let size = f.object_meta.size;
                            let (start, end) = f
                                .range
                                .as_ref()
                                .map(|r| (r.start.max(0) as u64, r.end.max(0) as u64))
                                .unwrap_or((0, size));
                            FileRange {
                                location: f.object_meta.location.to_string(),
                                start,
                                end,
                                size,
                            }
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// The units of `group`, in reading order (see the module docs).
    pub async fn units(&self, group: &[FileRange], ctx: &TaskContext) -> Result<Vec<Unit>> {
        let total: u64 = group.iter().map(|r| r.end - r.start).sum();
        let target = total.div_ceil(MAX_UNITS).max(1);
        let mut pieces = vec![];
        match &self.leaf {
            Leaf::Tolerant(_) => {
                for r in group {
                    pieces.extend(chunk_units(r, target.max(MIN_CHUNK_BYTES)));
                }
            }
            Leaf::Parquet(fsc) => {
                let store = ctx.runtime_env().object_store(&fsc.object_store_url)?;
                let files = self.parquet_files(fsc);
                for r in group {
                    if r.end - r.start <= target {
                        pieces.push(r.clone());
                        continue;
                    }
                    let f = files.get(r.location.as_str()).ok_or_else(|| {
                        Error::Permanent(format!(
                            "the split scan names {}, which the stage's scan does not read",
                            r.location
                        ))
                    })?;
                    let md = DFParquetMetadata::new(store.as_ref(), &f.object_meta)
                        .fetch_metadata()
                        .await?;
                    // the offset DataFusion tests against a file range
                    let starts: Vec<u64> = md
                        .row_groups()
                        .iter()
                        .filter(|rg| rg.num_columns() > 0)
                        .map(|rg| {
                            let c = rg.column(0);
                            c.dictionary_page_offset()
                                .unwrap_or_else(|| c.data_page_offset())
                                .max(0) as u64
                        })
                        .collect();
                    pieces.extend(parquet_units(r, &starts));
                }
            }
        }
        Ok(pack(pieces, target))
    }

    fn parquet_files<'a>(&self, fsc: &'a FileScanConfig) -> HashMap<String, &'a PartitionedFile> {
        fsc.file_groups
            .iter()
            .flat_map(|g| g.files().iter())
            .map(|f| (f.object_meta.location.to_string(), f))
            .collect()
    }

    /// The scan reading only `unit` in the task's partition.
    fn leaf_for(&self, unit: &[FileRange]) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(match &self.leaf {
            Leaf::Tolerant(t) => {
                let mut groups = t.groups.clone();
                groups[self.partition] = unit.to_vec();
                Arc::new(TolerantScanExec::new(
                    t.source.clone(),
                    t.store_url.clone(),
                    t.format.clone(),
                    t.file_schema.clone(),
                    t.projection.clone(),
                    groups,
                    t.dead.clone(),
                )?)
            }
            Leaf::Parquet(fsc) => {
                let files = self.parquet_files(fsc);
                let mut group = Vec::with_capacity(unit.len());
                for r in unit {
                    let mut f = (*files.get(r.location.as_str()).ok_or_else(|| {
                        Error::Permanent(format!("no file {} in the scan", r.location))
                    })?)
                    .clone();
                    f.range = None;
                    group.push(f.with_range(r.start as i64, r.end as i64));
                }
                let mut groups = fsc.file_groups.clone();
                groups[self.partition] = FileGroup::new(group);
                let config = FileScanConfigBuilder::from(fsc.as_ref().clone())
                    .with_file_groups(groups)
                    .build();
                DataSourceExec::from_data_source(config)
            }
        })
    }

    /// The task's input with its scan replaced by a `UnitScanExec`: the operators
    /// above run once, over the units `control` hands out one after another (each
    /// after `delay`, test-only: a slow scan).
    pub fn plan(
        self: Arc<Self>,
        control: Arc<SplitControl>,
        delay: Duration,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let leaf = self.leaf_for(&[]).map(|l| Arc::clone(l.properties()))?;
        let exec: Arc<dyn ExecutionPlan> = Arc::new(UnitScanExec {
            scan: Arc::clone(&self),
            control,
            delay,
            properties: leaf,
        });
        let replaced = Arc::clone(&self.input).transform_up(|node| {
            if node.children().is_empty() {
                Ok(Transformed::yes(Arc::clone(&exec)))
            } else {
                Ok(Transformed::no(node))
            }
        })?;
        Ok(replaced.data)
    }

    /// Rows read from the units so far.
    pub fn rows_read(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }
}

/// The scan of a unit-by-unit task: its partition `scan.partition` reads the units
/// `control` hands out, one scan after another (`UnitScan::plan`).
struct UnitScanExec {
    scan: Arc<UnitScan>,
    control: Arc<SplitControl>,
    delay: Duration,
    properties: Arc<PlanProperties>,
}

impl std::fmt::Debug for UnitScanExec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UnitScanExec(partition {})", self.scan.partition)
    }
}

impl DisplayAs for UnitScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "UnitScanExec: partition={}", self.scan.partition)
    }
}

impl ExecutionPlan for UnitScanExec {
    fn name(&self) -> &str {
        "UnitScanExec"
    }
    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }
    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }
    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }
    fn replace_children(
        self: Arc<Self>,
        _: Vec<Arc<dyn ExecutionPlan>>,
        _: ReplaceChildrenOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }
    fn with_new_children(
        self: Arc<Self>,
        _: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }
    fn execute(
        &self,
        partition: usize,
        ctx: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        if partition != self.scan.partition {
            return Err(DataFusionError::Internal(format!(
                "UnitScanExec runs partition {}, not {partition}",
                self.scan.partition
            )));
        }
        let (scan, control, delay) = (self.scan.clone(), self.control.clone(), self.delay);
        let counted = self.scan.clone();
        let units = futures::stream::unfold((), move |_| {
            let (scan, control, ctx) = (scan.clone(), control.clone(), ctx.clone());
            async move {
                let unit = control.next_unit().await?;
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let run = scan
                    .leaf_for(&unit)
                    .map_err(|e| DataFusionError::External(Box::new(e)))
                    .and_then(|p| p.execute(partition, ctx));
                Some((run, ()))
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema(),
            units.try_flatten().inspect_ok(move |b| {
                counted
                    .rows
                    .fetch_add(b.num_rows() as u64, Ordering::Relaxed);
            }),
        )))
    }
}

/// Operators known to read only their own partition of their one input, so that
/// narrowing the scan's partition narrows the task's input and nothing else.
fn per_unit_operator(node: &Arc<dyn ExecutionPlan>) -> bool {
    if let Some(a) = node.downcast_ref::<AggregateExec>() {
        return *a.mode() == AggregateMode::Partial;
    }
    matches!(
        node.name(),
        "CooperativeExec" | "ProjectionExec" | "FilterExec" | "CoalesceBatchesExec"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, end: u64) -> FileRange {
        FileRange {
            location: "f".into(),
            start,
            end,
            size: 1000,
        }
    }

    fn key() -> pb::TaskKey {
        pb::TaskKey {
            job_id: "j".into(),
            stage_id: 0,
            task: 0,
            attempt: 1,
        }
    }

    #[test]
    fn parquet_units_cut_at_the_row_groups_that_start_in_the_range() {
        // row groups start at 4, 300, 600, 900; the range [250, 1000) holds the last 3
        let units = parquet_units(&r(250, 1000), &[4, 300, 600, 900]);
        assert_eq!(units, vec![r(250, 600), r(600, 900), r(900, 1000)]);
        assert_eq!(merge(&units), vec![r(250, 1000)]);
        assert!(parquet_units(&r(301, 599), &[4, 300, 600, 900]).is_empty());
        assert_eq!(
            chunk_units(&r(0, 25), 10),
            vec![r(0, 10), r(10, 20), r(20, 25)]
        );
    }

    #[tokio::test]
    async fn a_scan_stops_exactly_at_the_confirmed_split_unit() {
        let c = Arc::new(SplitControl::default());
        let units: Vec<Unit> = (0..8).map(|i| vec![r(i * 100, (i + 1) * 100)]).collect();
        c.set_units(3, units.clone());
        assert!(c.offer(&key()).is_err(), "nothing started yet");
        let mut read = vec![c.next_unit().await.unwrap(), c.next_unit().await.unwrap()];
        // 2 started, 6 left: it keeps 3 more, gives away the last 3
        let o = c.offer(&key()).unwrap();
        assert_eq!((o.units_started, o.split_unit, o.units_total), (2, 5, 8));
        assert_eq!(o.prefix.as_ref().unwrap().ranges, vec![r(0, 500).to_node()]);
        assert_eq!(
            o.remainder.as_ref().unwrap().ranges,
            vec![r(500, 800).to_node()]
        );
        assert_eq!(o.partition, 3);
        // asked again: the same offer
        assert_eq!(c.offer(&key()).unwrap(), o);
        assert_eq!(c.pending(&key()), Some(o.clone()));
        read.push(c.next_unit().await.unwrap());
        read.push(c.next_unit().await.unwrap());
        read.push(c.next_unit().await.unwrap());
        // unit 5 waits for the confirmation
        let waiting = {
            let c = c.clone();
            tokio::spawn(async move { c.next_unit().await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "it must not read past the reserved point"
        );
        assert!(!c.confirm(7), "another split's confirmation");
        assert!(c.confirm(0));
        assert_eq!(waiting.await.unwrap(), None);
        assert_eq!(read, units[..5].to_vec());
        assert_eq!(c.pending(&key()), None);
        assert_eq!(c.bytes_read(), 500);
        // its last unit was read: nothing to give
        assert!(c.offer(&key()).is_err());
    }

    #[tokio::test]
    async fn a_second_split_cuts_the_prefix_and_the_last_unit_is_given_away() {
        let c = SplitControl::default();
        c.set_units(0, (0..4).map(|i| vec![r(i * 10, (i + 1) * 10)]).collect());
        c.next_unit().await.unwrap();
        let o = c.offer(&key()).unwrap();
        assert_eq!((o.seq, o.split_unit), (0, 2));
        assert!(c.confirm(0));
        c.next_unit().await.unwrap();
        // units [0, 2) now; 2 started: nothing left
        assert!(c.offer(&key()).is_err());
        let c = SplitControl::default();
        c.set_units(0, (0..2).map(|i| vec![r(i * 10, (i + 1) * 10)]).collect());
        c.next_unit().await.unwrap();
        let o = c.offer(&key()).unwrap();
        assert_eq!((o.split_unit, o.units_total), (1, 2));
        assert!(c.confirm(0));
        assert_eq!(c.next_unit().await, None);
    }
}
