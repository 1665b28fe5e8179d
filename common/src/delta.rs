//! Delta Lake tables (issue 15): opening a table's log through autopipe's object
//! stores, and reading a table as a source.
//!
//! A `[[sources]] format = "delta"` reads one snapshot of the table: the coordinator
//! pins the source's `version` at submit (the latest, or the last version committed
//! at or before `timestamp`), so the planner, every scan task and any re-plan see the
//! same files whatever is committed meanwhile. `DeltaScan` is the source's table:
//! its scan reads exactly the snapshot's files (never a file the log does not name,
//! so a half-written or vacuumed file is never read) with DataFusion's Parquet
//! reader, with
//! - the partition values from the log (not from the paths), so filters on
//!   partition columns prune files at planning, before any task starts;
//! - each file's row count and integer/date min/max from its `add` statistics, so
//!   DataFusion skips files a predicate rules out without reading their footers.
//!
//! The coordinator's Delta sink commits (`coordinator/src/lake/delta.rs`) open the
//! log with the same [`open`].

use crate::error::{Error, Result};
use crate::store::{parse_url, store_for};
use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::stats::Precision;
use datafusion::common::{ColumnStatistics, DFSchema, ScalarValue, Statistics};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::listing::helpers::{expr_applicable_for_cols, filter_partitioned_file};
use datafusion::datasource::listing::{ListingTableUrl, PartitionedFile};
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder};
use datafusion::datasource::table_schema::TableSchema;
use datafusion::datasource::TableType;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::ExecutionPlan;
use deltalake_core::logstore::LogStoreRef;
use deltalake_core::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use object_store::ObjectStore;
use std::sync::Arc;

/// Registers a plain log store for `s3://` tables (deltalake registers `file` and
/// `memory` only); autopipe's S3 store commits with conditional puts. Idempotent.
fn register_log_stores() {
    use deltalake_core::logstore::{
        default_logstore, logstore_factories, LogStore, LogStoreFactory, ObjectStoreRef,
        StorageConfig,
    };
    struct Plain;
    impl LogStoreFactory for Plain {
        fn with_options(
            &self,
            prefixed: ObjectStoreRef,
            root: ObjectStoreRef,
            location: &url::Url,
            options: &StorageConfig,
        ) -> deltalake_core::DeltaResult<Arc<dyn LogStore>> {
            Ok(default_logstore(prefixed, root, location, options))
        }
    }
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let s3 = url::Url::parse("s3://").expect("a URL");
        logstore_factories().insert(s3, Arc::new(Plain));
    });
}

/// A deltalake error as ours: storage errors by their class; I/O, log reading and
/// commit races transient (the commit runs again); the rest (a protocol feature we
/// lack, a malformed log) permanent, so the job fails with the reason instead of
/// retrying forever.
pub fn delta_err(table: &str) -> impl Fn(DeltaTableError) -> Error + '_ {
    move |e| match e {
        DeltaTableError::ObjectStore { source } => Error::from(source),
        e @ (DeltaTableError::Io { .. }
        | DeltaTableError::KernelError(_)
        | DeltaTableError::Kernel { .. }
        | DeltaTableError::Transaction { .. }
        | DeltaTableError::VersionAlreadyExists(_)
        | DeltaTableError::VersionMismatch(..)) => {
            Error::Transient(format!("delta table {table}: {e}"))
        }
        e => Error::Permanent(format!("delta table {table}: {e}")),
    }
}

/// The table at `url` through `store` (rooted at the URL's root), or `None` when
/// there is none yet; and its log store. `version`: that version instead of the
/// latest.
pub async fn open(
    url: &str,
    store: Arc<dyn ObjectStore>,
    version: Option<u64>,
) -> Result<(Option<DeltaTable>, LogStoreRef)> {
    register_log_stores();
    let u = url::Url::parse(url).map_err(|e| Error::Permanent(format!("'{url}': {e}")))?;
    let mut builder = DeltaTableBuilder::from_url(u.clone())
        .map_err(delta_err(url))?
        .with_storage_backend(store, u);
    if let Some(v) = version {
        builder = builder.with_version(v);
    }
    let log_store = builder.build_storage().map_err(delta_err(url))?;
    let exists = log_store
        .is_delta_table_location()
        .await
        .map_err(delta_err(url))?;
    if !exists {
        return Ok((None, log_store));
    }
    let table = builder.load().await.map_err(delta_err(url))?;
    Ok((Some(table), log_store))
}

/// The latest version of the table at `url`, without reading its files (`None`:
/// no table there).
pub async fn latest_version(url: &str) -> Result<Option<u64>> {
    register_log_stores();
    let (store, _) = store_for(&parse_url(url)?)?;
    let u = url::Url::parse(url).map_err(|e| Error::Permanent(format!("'{url}': {e}")))?;
    let log_store = DeltaTableBuilder::from_url(u.clone())
        .map_err(delta_err(url))?
        .with_storage_backend(store, u)
        .build_storage()
        .map_err(delta_err(url))?;
    if !log_store
        .is_delta_table_location()
        .await
        .map_err(delta_err(url))?
    {
        return Ok(None);
    }
    let v = log_store
        .get_latest_version(0)
        .await
        .map_err(delta_err(url))?;
    Ok(Some(v))
}

/// The table at `url` (a source: it must exist), at `version` or the latest; errors
/// name `key`.
pub async fn open_source(url: &str, version: Option<u64>, key: &str) -> Result<DeltaTable> {
    if let Some(v) = version {
        match latest_version(url).await? {
            Some(latest) if v > latest => {
                return Err(Error::plan(
                    format!("{key}.version"),
                    format!("{url} has versions up to {latest}, not {v}"),
                ))
            }
            _ => {}
        }
    }
    let (store, _) = store_for(&parse_url(url)?)?;
    match open(url, store, version).await {
        Ok((Some(t), _)) => Ok(t),
        Ok((None, _)) => Err(Error::plan(
            format!("{key}.path"),
            format!("{url} is no delta table (it has no _delta_log)"),
        )),
        Err(e) if e.class() == crate::error::ErrorClass::Permanent => Err(Error::plan(
            format!(
                "{key}.{}",
                if version.is_some() { "version" } else { "path" }
            ),
            e.to_string(),
        )),
        Err(e) => Err(e),
    }
}

/// The version a delta source reads: `version` as given (it must exist), the last
/// one committed at or before `timestamp` (RFC 3339), else the latest. Errors name
/// the source's key (`sources[i]`).
pub async fn pin_version(
    url: &str,
    version: Option<u64>,
    timestamp: Option<&str>,
    key: &str,
) -> Result<u64> {
    let mut table = open_source(url, version, key).await?;
    if let Some(ts) = timestamp {
        let at = chrono::DateTime::parse_from_rfc3339(ts)
            .map_err(|e| Error::plan(format!("{key}.timestamp"), format!("'{ts}': {e}")))?
            .with_timezone(&chrono::Utc);
        let none_before = |why: String| {
            Error::plan(
                format!("{key}.timestamp"),
                format!("{url} has no version committed at or before {ts}{why}"),
            )
        };
        table
            .load_with_datetime(at)
            .await
            .map_err(|e| none_before(format!(": {e}")))?;
        // (delta-rs settles on the first version when every one is later)
        let first = table
            .version()
            .and_then(|v| table.snapshot().ok()?.version_timestamp(v));
        if let Some(committed) = first {
            if committed > at.timestamp_millis() {
                return Err(none_before(String::new()));
            }
        }
    }
    let v = table.version().ok_or_else(|| {
        Error::plan(
            format!("{key}.path"),
            format!("{url} has no committed version"),
        )
    })?;
    Ok(v as u64)
}

/// One entry of a table's history (`autopipe table history`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct HistoryEntry {
    /// the version
    pub version: u64,
    /// when it was committed (ms since the epoch)
    pub timestamp_ms: i64,
    /// WRITE, OPTIMIZE, VACUUM START, ...
    pub operation: String,
    /// the autopipe job that committed it, if one did
    pub job_id: Option<String>,
    /// the writer (`autopipe/0.1.0`, `delta-rs.py-1.6.6`, ...)
    pub engine: Option<String>,
    /// the operation's parameters and metrics as the commit recorded them
    pub parameters: serde_json::Value,
}

/// The newest `limit` commits of the table at `url`, newest first.
pub async fn history(url: &str, limit: Option<usize>) -> Result<Vec<HistoryEntry>> {
    use futures::TryStreamExt;
    let table = open_source(url, None, "table").await?;
    let latest = table.version().unwrap_or(0);
    let infos: Vec<_> = table
        .history(limit)
        .try_collect()
        .await
        .map_err(delta_err(url))?;
    Ok(infos
        .into_iter()
        .enumerate()
        .map(|(i, c)| HistoryEntry {
            version: latest.saturating_sub(i as u64),
            timestamp_ms: c.timestamp.unwrap_or(0),
            operation: c.operation.clone().unwrap_or_default(),
            job_id: c
                .info
                .get("autopipe.job_id")
                .and_then(|v| v.as_str())
                .map(str::to_string),
            engine: c.engine_info.clone(),
            parameters: serde_json::json!({
                "operation_parameters": c.operation_parameters,
                "operation_metrics": c.info.get("operationMetrics"),
            }),
        })
        .collect())
}

/// What a vacuum did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Vacuumed {
    /// the files deleted (or that would be, on a dry run), relative to the table root
    pub files: Vec<String>,
    /// a dry run deleted nothing
    pub dry_run: bool,
}

/// Deletes the files of the table at `url` that no version committed within
/// `retain` of now still references: the files removed before the retention window
/// (Delta's lite vacuum) and, with `full`, also files in the table directory no
/// version names (a commit that never happened). Time travel to every version in
/// the window keeps working. A window shorter than the table's
/// `delta.deletedFileRetentionDuration` (7 days by default) is refused unless
/// `force`.
pub async fn vacuum(
    url: &str,
    retain: std::time::Duration,
    full: bool,
    dry_run: bool,
    force: bool,
) -> Result<Vacuumed> {
    use deltalake_core::operations::vacuum::VacuumMode;
    let table = open_source(url, None, "table").await?;
    let retain = chrono::Duration::from_std(retain)
        .map_err(|e| Error::Permanent(format!("--retain: {e}")))?;
    let (_, m) = table
        .vacuum()
        .with_retention_period(retain)
        .with_enforce_retention_duration(!force)
        .with_mode(if full {
            VacuumMode::Full
        } else {
            VacuumMode::Lite
        })
        .with_dry_run(dry_run)
        .await
        .map_err(|e| {
            let text = e.to_string();
            if text.contains("retention period") {
                Error::Permanent(format!(
                    "{url}: {text} (pass --force to vacuum within the table's retention)"
                ))
            } else {
                delta_err(url)(e)
            }
        })?;
    Ok(Vacuumed {
        files: m.files_deleted,
        dry_run,
    })
}

/// One snapshot of a table as a source reads it.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// the table version
    pub version: u64,
    /// the data files' columns (the table's, partition columns left out)
    pub file_schema: SchemaRef,
    /// the partition columns, in the table's order (their values come from the log)
    pub partition_fields: Vec<FieldRef>,
    /// the files, with their partition values and statistics, sorted by location
    pub files: Vec<PartitionedFile>,
    /// the store the file locations are in (`file://`, `s3://bucket`, ...)
    pub store_url: datafusion::execution::object_store::ObjectStoreUrl,
}

impl Snapshot {
    /// The table's columns as SQL sees them: the data columns, then the partition
    /// columns.
    pub fn schema(&self) -> SchemaRef {
        let mut fields: Vec<FieldRef> = self.file_schema.fields().iter().cloned().collect();
        fields.extend(self.partition_fields.iter().cloned());
        Arc::new(Schema::new(fields))
    }
}

/// Reads version `version` of the table at `url` (the source `key`): its files with
/// their partition values and statistics; only those named in `only` (relative
/// paths) when it is not empty, each of which must be in the version. A table this
/// reader cannot read correctly (deletion vectors, column mapping) is refused naming
/// the feature.
pub async fn snapshot(url: &str, version: u64, key: &str, only: &[String]) -> Result<Snapshot> {
    let table = open_source(url, Some(version), key).await?;
    let state = table.snapshot().map_err(delta_err(url))?;
    let cannot = |what: String| Error::plan(format!("{key}.path"), format!("{url}: {what}"));
    let config = state.metadata().configuration();
    if let Some(mode) = config.get("delta.columnMapping.mode") {
        if mode != "none" {
            return Err(cannot(format!(
                "the table uses column mapping (mode '{mode}'), which autopipe cannot read yet"
            )));
        }
    }
    let partition_columns: Vec<String> = state.metadata().partition_columns().to_vec();
    let arrow = state.snapshot().arrow_schema();
    let mut data = vec![];
    let mut partition_fields = vec![];
    for f in arrow.fields() {
        if !partition_columns.contains(f.name()) {
            data.push(f.clone());
        }
    }
    for c in &partition_columns {
        let f = arrow
            .field_with_name(c)
            .map_err(|_| cannot(format!("partition column '{c}' is not in the schema")))?;
        partition_fields.push(Arc::new(Field::new(c, f.data_type().clone(), true)));
    }
    let file_schema = Arc::new(Schema::new(data));
    let table_url = parse_url(url)?;
    let (_, root) = store_for(&table_url)?;
    let store_url = ListingTableUrl::parse(url)
        .map_err(|e| cannot(e.to_string()))?
        .object_store();
    let wanted: std::collections::BTreeSet<&str> = only.iter().map(String::as_str).collect();
    let mut found = std::collections::BTreeSet::new();
    let mut files = vec![];
    for f in state.log_data().iter() {
        if !wanted.is_empty() {
            let path = f.path();
            let Some(w) = wanted.get(path.as_ref()) else {
                continue;
            };
            found.insert(*w);
        }
        if f.deletion_vector_descriptor().is_some() {
            return Err(cannot(format!(
                "file {} has a deletion vector, which autopipe cannot read yet",
                f.path()
            )));
        }
        let rel = f.path();
        let location = if rel.contains("://") {
            let u = parse_url(&rel)?;
            store_for(&u)?.1
        } else {
            let mut p = root.clone();
            for part in rel.split('/').filter(|s| !s.is_empty()) {
                p = p.clone().join(part);
            }
            p
        };
        let values = f.partition_values_map();
        let mut pf = PartitionedFile::new(location.to_string(), f.size().max(0) as u64);
        pf.object_meta.last_modified =
            chrono::DateTime::from_timestamp_millis(f.modification_time()).unwrap_or_default();
        let mut any_null = false;
        for field in &partition_fields {
            let v = match values.get(field.name()).cloned().flatten() {
                Some(text) => ScalarValue::try_from_string(text.clone(), field.data_type())
                    .map_err(|e| {
                        cannot(format!(
                            "file {rel}: partition value '{text}' of {}: {e}",
                            field.name()
                        ))
                    })?,
                None => {
                    any_null = true;
                    ScalarValue::try_from(field.data_type()).map_err(|e| cannot(e.to_string()))?
                }
            };
            pf.partition_values.push(v);
        }
        // (a null partition value's statistics would claim no nulls)
        if !any_null {
            let stats = file_statistics(f.stats().as_deref(), &file_schema, f.size());
            pf = pf.with_statistics(Arc::new(stats));
        }
        files.push(pf);
    }
    if let Some(missing) = wanted.iter().find(|w| !found.contains(*w)) {
        return Err(Error::plan(
            format!("{key}.files"),
            format!("{url} has no file {missing} in version {version}"),
        ));
    }
    files.sort_by(|a, b| a.object_meta.location.cmp(&b.object_meta.location));
    Ok(Snapshot {
        version,
        file_schema,
        partition_fields,
        files,
        store_url,
    })
}

/// The snapshot a delta source `s` (the source `key`) reads: its pinned version (the
/// latest, or the last at or before its timestamp, when it is not pinned yet), only
/// its `files` when it names some.
pub async fn source_snapshot(s: &crate::spec::SourceSpec, key: &str) -> Result<Snapshot> {
    let version = match s.version {
        Some(v) => v,
        None => pin_version(&s.path, None, s.timestamp.as_deref(), key).await?,
    };
    snapshot(&s.path, version, key, &s.files).await
}

/// A file's statistics from its `add` action's JSON (`numRecords`, `minValues`,
/// `maxValues`, `nullCount`), for `schema`'s columns. Only integer and date bounds
/// are taken: Delta writers truncate string bounds and timestamps to milliseconds,
/// and float bounds leave NaN out, so those could rule out a file wrongly.
fn file_statistics(json: Option<&str>, schema: &Schema, size: i64) -> Statistics {
    let mut s = Statistics::new_unknown(schema);
    s.total_byte_size = Precision::Inexact(size.max(0) as usize);
    let Some(v) = json.and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok()) else {
        return s;
    };
    if let Some(n) = v.get("numRecords").and_then(|n| n.as_u64()) {
        s.num_rows = Precision::Exact(n as usize);
    }
    let bound = |kind: &str, name: &str, dt: &DataType| -> Precision<ScalarValue> {
        let usable = dt.is_integer() || matches!(dt, DataType::Date32 | DataType::Date64);
        let text = match v.get(kind).and_then(|m| m.get(name)) {
            Some(serde_json::Value::Number(n)) => n.to_string(),
            Some(serde_json::Value::String(t)) => t.clone(),
            _ => return Precision::Absent,
        };
        match usable.then(|| ScalarValue::try_from_string(text, dt)) {
            Some(Ok(x)) if !x.is_null() => Precision::Exact(x),
            _ => Precision::Absent,
        }
    };
    s.column_statistics = schema
        .fields()
        .iter()
        .map(|f| {
            let nulls = v
                .get("nullCount")
                .and_then(|m| m.get(f.name()))
                .and_then(|n| n.as_u64());
            ColumnStatistics {
                null_count: nulls.map_or(Precision::Absent, |n| Precision::Exact(n as usize)),
                min_value: bound("minValues", f.name(), f.data_type()),
                max_value: bound("maxValues", f.name(), f.data_type()),
                ..ColumnStatistics::new_unknown()
            }
        })
        .collect();
    s
}

/// A delta source's table: one snapshot (see the module docs).
#[derive(Debug)]
pub struct DeltaScan {
    snapshot: Snapshot,
    schema: SchemaRef,
}

impl DeltaScan {
    /// The table over `snapshot`.
    pub fn new(snapshot: Snapshot) -> Self {
        let schema = snapshot.schema();
        Self { snapshot, schema }
    }

    fn partition_names(&self) -> Vec<&str> {
        self.snapshot
            .partition_fields
            .iter()
            .map(|f| f.name().as_str())
            .collect()
    }

    /// Whether `e` reads partition columns only (so the log's values decide it).
    fn on_partitions(&self, e: &Expr) -> bool {
        let names = self.partition_names();
        !names.is_empty() && expr_applicable_for_cols(&names, e)
    }
}

#[async_trait]
impl TableProvider for DeltaScan {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    fn table_type(&self) -> TableType {
        TableType::Base
    }
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| {
                if self.on_partitions(f) {
                    TableProviderFilterPushDown::Exact
                } else {
                    TableProviderFilterPushDown::Inexact
                }
            })
            .collect())
    }
    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let partition_filters: Vec<Expr> = filters
            .iter()
            .filter(|f| self.on_partitions(f))
            .cloned()
            .collect();
        let partition_schema =
            DFSchema::try_from(Schema::new(self.snapshot.partition_fields.to_vec()))?;
        let mut files = Vec::with_capacity(self.snapshot.files.len());
        for f in &self.snapshot.files {
            if let Some(f) =
                filter_partitioned_file(f.clone(), &partition_filters, &partition_schema)?
            {
                files.push(f);
            }
        }
        if files.is_empty() {
            let schema = datafusion::physical_plan::project_schema(&self.schema, projection)?;
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        // one group per file up to the target partitions (a scan split into tasks
        // regroups them: `splits::SplitTable`)
        let n = state.config().target_partitions().clamp(1, files.len());
        let mut groups: Vec<Vec<PartitionedFile>> = vec![vec![]; n];
        for (i, f) in files.into_iter().enumerate() {
            groups[i % n].push(f);
        }
        // the table's statistics: the files' merged (unknown where one lacks them)
        let unknown = Arc::new(Statistics::new_unknown(&self.schema));
        let per_file: Vec<Arc<Statistics>> = groups
            .iter()
            .flatten()
            .map(|f| f.statistics.clone().unwrap_or_else(|| unknown.clone()))
            .collect();
        let statistics =
            Statistics::try_merge_iter(per_file.iter().map(|s| s.as_ref()), &self.schema)?;
        let groups: Vec<FileGroup> = groups.into_iter().map(FileGroup::new).collect();
        let format = ParquetFormat::default().with_options(state.table_options().parquet.clone());
        let table_schema = TableSchema::builder(self.snapshot.file_schema.clone())
            .with_table_partition_cols(self.snapshot.partition_fields.clone())
            .build();
        let config = FileScanConfigBuilder::new(
            self.snapshot.store_url.clone(),
            format.file_source(table_schema),
        )
        .with_file_groups(groups)
        .with_statistics(statistics)
        .with_projection_indices(projection.cloned())?
        .with_limit(limit)
        .build();
        format.create_physical_plan(state, config).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_and_date_bounds_are_taken_from_the_add_statistics_and_text_bounds_are_not() {
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("day", DataType::Date32, true),
            Field::new("name", DataType::Utf8, true),
            Field::new("x", DataType::Float64, true),
        ]);
        let json = r#"{"numRecords":3,"minValues":{"id":-2,"day":"2026-12-01","name":"a","x":0.5},
            "maxValues":{"id":9,"day":"2026-12-08","name":"zz","x":1.5},"nullCount":{"id":0,"name":1}}"#;
        let s = file_statistics(Some(json), &schema, 100);
        assert_eq!(s.num_rows, Precision::Exact(3));
        let c = &s.column_statistics;
        assert_eq!(
            c[0].min_value,
            Precision::Exact(ScalarValue::Int64(Some(-2)))
        );
        assert_eq!(
            c[0].max_value,
            Precision::Exact(ScalarValue::Int64(Some(9)))
        );
        assert_eq!(c[0].null_count, Precision::Exact(0));
        assert_eq!(
            c[1].max_value,
            ScalarValue::try_from_string("2026-12-08".into(), &DataType::Date32)
                .map(Precision::Exact)
                .unwrap()
        );
        assert_eq!(c[2].min_value, Precision::Absent);
        assert_eq!(c[2].null_count, Precision::Exact(1));
        assert_eq!(c[3].max_value, Precision::Absent);
        // no statistics: unknown, never wrong
        let s = file_statistics(None, &schema, 100);
        assert_eq!(s.num_rows, Precision::Absent);
        assert_eq!(s.column_statistics[0].min_value, Precision::Absent);
    }
}
