//! Delta Lake sink commits (issue 15): a job's sink tasks write Parquet files as for a
//! parquet sink; the commit renames the winning attempts' files into the table
//! directory (where no reader looks until the log names them) and adds them to the
//! table in one Delta transaction:
//!
//! - an `add` per file, with its partition values from its hive directory;
//! - in overwrite mode a `remove` per file of the version it replaces, in the same
//!   commit (readers see the old rows or the new ones, never a mix);
//! - a `txn` action with application id `autopipe-JOB_ID`: a commit run again (a
//!   crash, a leader change, a transient error) finds its own transaction in the log
//!   and adds nothing twice;
//! - the job id in the commit info.
//!
//! The first commit creates the table (version 0) with the job's output schema and
//! `partition_by` as its partition columns. Delta's optimistic concurrency makes
//! concurrent writers safe: a conflicting commit is retried by deltalake at the next
//! version. A failed or cancelled job commits nothing.

use autopipe_common::delta::{delta_err, open};
use autopipe_common::error::{Error, Result};
use autopipe_common::spec::SinkMode;
use datafusion::arrow::datatypes::Schema;
use deltalake_core::kernel::engine::arrow_conversion::TryIntoKernel as _;
use deltalake_core::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake_core::kernel::{Action, Add, StructType, Transaction};
use deltalake_core::operations::create::CreateBuilder;
use deltalake_core::protocol::{DeltaOperation, SaveMode};
use deltalake_core::DeltaTable;
use object_store::ObjectStore;
use std::collections::HashMap;
use std::sync::Arc;

/// The Delta schema (its JSON) of a job's output rows, partition columns included.
pub fn schema_json(schema: &Schema) -> std::result::Result<String, String> {
    let st: StructType = schema
        .try_into_kernel()
        .map_err(|e| format!("the output's columns have no Delta type: {e}"))?;
    serde_json::to_string(&st).map_err(|e| e.to_string())
}

/// A file to add: its path relative to the table root and its size in bytes.
#[derive(Debug, Clone)]
pub struct NewFile {
    /// relative to the table root, `/`-separated (hive directories for partitions)
    pub path: String,
    /// bytes
    pub size: u64,
    /// the `add` action's statistics (JSON, [`file_stats`]), when its footer was read
    pub stats: Option<String>,
}

/// Longest string bound written (Delta writers' default, 32 characters); a longer
/// value gives no bound rather than a truncated one.
const MAX_STRING_BOUND: usize = 32;

/// The Delta statistics of the Parquet file `meta` in `store`, from its footer:
/// `numRecords`, and per top-level column its `nullCount` and, for integers, dates
/// and short strings, `minValues`/`maxValues` (a column whose row groups lack
/// statistics has none). Readers (DataFusion here, Spark, delta-rs) skip files by
/// them without opening the files.
pub async fn file_stats(
    store: &dyn ObjectStore,
    meta: &object_store::ObjectMeta,
) -> Result<String> {
    use datafusion::datasource::physical_plan::parquet::metadata::DFParquetMetadata;
    use datafusion::parquet::arrow::arrow_reader::statistics::StatisticsConverter;
    use datafusion::parquet::arrow::parquet_to_arrow_schema;
    let md = DFParquetMetadata::new(store, meta)
        .fetch_metadata()
        .await
        .map_err(|e| Error::Transient(format!("reading the footer of {}: {e}", meta.location)))?;
    let file = md.file_metadata();
    let schema = parquet_to_arrow_schema(file.schema_descr(), file.key_value_metadata())
        .map_err(|e| Error::Permanent(format!("{}: {e}", meta.location)))?;
    let groups = md.row_groups();
    let rows: i64 = groups.iter().map(|g| g.num_rows()).sum();
    let (mut mins, mut maxes, mut nulls) = (
        serde_json::Map::new(),
        serde_json::Map::new(),
        serde_json::Map::new(),
    );
    for f in schema.fields() {
        let Ok(conv) = StatisticsConverter::try_new(f.name(), &schema, file.schema_descr()) else {
            continue;
        };
        let Ok(null_counts) = conv.row_group_null_counts(groups.iter()) else {
            continue;
        };
        if datafusion::arrow::array::Array::null_count(&null_counts) > 0 {
            continue;
        }
        let col_nulls: u64 = null_counts.values().iter().sum();
        nulls.insert(f.name().clone(), col_nulls.into());
        let dt = f.data_type();
        let bounded = dt.is_integer()
            || matches!(dt, datafusion::arrow::datatypes::DataType::Date32)
            || matches!(
                dt,
                datafusion::arrow::datatypes::DataType::Utf8
                    | datafusion::arrow::datatypes::DataType::LargeUtf8
                    | datafusion::arrow::datatypes::DataType::Utf8View
            );
        if !bounded {
            continue;
        }
        let (Ok(lo), Ok(hi)) = (
            conv.row_group_mins(groups.iter()),
            conv.row_group_maxes(groups.iter()),
        ) else {
            continue;
        };
        if let Some((lo, hi)) = bounds(&lo, &hi, &null_counts, groups) {
            mins.insert(f.name().clone(), lo);
            maxes.insert(f.name().clone(), hi);
        }
    }
    let stats = serde_json::json!({
        "numRecords": rows,
        "minValues": mins,
        "maxValues": maxes,
        "nullCount": nulls,
    });
    Ok(stats.to_string())
}

/// A column's bounds over row groups, as Delta's JSON: `None` when a row group with
/// non-null values has no bound, or a string bound is too long to keep whole.
fn bounds(
    lo: &datafusion::arrow::array::ArrayRef,
    hi: &datafusion::arrow::array::ArrayRef,
    nulls: &datafusion::arrow::array::UInt64Array,
    groups: &[datafusion::parquet::file::metadata::RowGroupMetaData],
) -> Option<(serde_json::Value, serde_json::Value)> {
    use datafusion::common::ScalarValue;
    let (mut min, mut max): (Option<ScalarValue>, Option<ScalarValue>) = (None, None);
    for (i, g) in groups.iter().enumerate() {
        let all_null = nulls.value(i) as i64 >= g.num_rows();
        if all_null {
            continue;
        }
        let a = ScalarValue::try_from_array(lo, i)
            .ok()
            .filter(|v| !v.is_null())?;
        let b = ScalarValue::try_from_array(hi, i)
            .ok()
            .filter(|v| !v.is_null())?;
        if min
            .as_ref()
            .is_none_or(|m| a.partial_cmp(m) == Some(std::cmp::Ordering::Less))
        {
            min = Some(a);
        }
        if max
            .as_ref()
            .is_none_or(|m| b.partial_cmp(m) == Some(std::cmp::Ordering::Greater))
        {
            max = Some(b);
        }
    }
    Some((to_json(&min?)?, to_json(&max?)?))
}

/// A bound in Delta's statistics JSON: integers as numbers, dates and strings as text.
fn to_json(v: &datafusion::common::ScalarValue) -> Option<serde_json::Value> {
    use datafusion::common::ScalarValue as S;
    Some(match v {
        S::Int8(Some(x)) => (*x).into(),
        S::Int16(Some(x)) => (*x).into(),
        S::Int32(Some(x)) => (*x).into(),
        S::Int64(Some(x)) => (*x).into(),
        S::UInt8(Some(x)) => (*x).into(),
        S::UInt16(Some(x)) => (*x).into(),
        S::UInt32(Some(x)) => (*x).into(),
        S::UInt64(Some(x)) => (*x).into(),
        S::Date32(Some(_)) => v.to_string().into(),
        S::Utf8(Some(t)) | S::LargeUtf8(Some(t)) | S::Utf8View(Some(t))
            if t.chars().count() <= MAX_STRING_BOUND =>
        {
            t.clone().into()
        }
        _ => return None,
    })
}

/// What a commit is about.
pub struct Commit<'a> {
    /// the table root URL (ends in '/')
    pub table_url: &'a str,
    /// the store that serves it, rooted at the URL's root
    pub store: Arc<dyn ObjectStore>,
    /// the committing job (its id makes the transaction's application id)
    pub job_id: &'a str,
    /// the table's name when the commit creates it
    pub name: &'a str,
    /// the output's Delta schema ([`schema_json`])
    pub schema_json: &'a str,
    /// partition columns
    pub partition_by: &'a [String],
    /// append, overwrite or error_if_exists (as append on a new table)
    pub mode: SinkMode,
    /// the files, already in the table directory
    pub files: Vec<NewFile>,
    /// when, ms since the epoch (the files' modification time and the txn's)
    pub now_ms: u64,
    /// a compaction's commit: it removes these files (relative to the table root)
    /// and adds `files`, both with `dataChange = false` (an `OPTIMIZE`); `None`: a
    /// write
    pub replaces: Option<&'a [String]>,
}

/// What a commit did.
#[derive(Debug, Clone, PartialEq)]
pub enum Committed {
    /// the files are in this version (or were already: a commit run again)
    Version(u64),
    /// a compaction found a file it replaces already removed by another commit (an
    /// overwrite, another compaction): it committed nothing, and why
    Skipped(String),
}

/// The transaction's application id for job `job_id`.
pub fn app_id(job_id: &str) -> String {
    format!("autopipe-{job_id}")
}

/// Partition values from a file's hive directories (`country=DE/part-0.parquet`).
fn partition_values(path: &str, partition_by: &[String]) -> HashMap<String, Option<String>> {
    let mut values: HashMap<String, Option<String>> =
        partition_by.iter().map(|c| (c.clone(), None)).collect();
    let dirs = path.rsplit_once('/').map_or("", |(d, _)| d);
    for part in dirs.split('/') {
        if let Some((k, v)) = part.split_once('=') {
            if values.contains_key(k) {
                let v = percent_encoding::percent_decode_str(v)
                    .decode_utf8_lossy()
                    .into_owned();
                let v = (v != "__HIVE_DEFAULT_PARTITION__").then_some(v);
                values.insert(k.to_string(), v);
            }
        }
    }
    values
}

/// Commits `c.files` to the table; returns the table version that holds them. A job
/// whose transaction the log already has is done (its version is returned as is).
pub async fn commit(c: Commit<'_>) -> Result<Committed> {
    let (table, log_store) = open(c.table_url, c.store.clone(), None).await?;
    let app = app_id(c.job_id);
    let data_change = c.replaces.is_none();
    let adds: Vec<Action> = c
        .files
        .iter()
        .map(|f| {
            Action::Add(Add {
                path: f.path.clone(),
                partition_values: partition_values(&f.path, c.partition_by),
                size: f.size as i64,
                modification_time: c.now_ms as i64,
                data_change,
                stats: f.stats.clone(),
                ..Default::default()
            })
        })
        .collect();
    let txn = Action::Txn(Transaction::new_with_last_update(
        app.clone(),
        1,
        Some(c.now_ms as i64),
    ));
    let meta = HashMap::from([
        (
            "autopipe.job_id".to_string(),
            serde_json::Value::String(c.job_id.to_string()),
        ),
        (
            "engineInfo".to_string(),
            serde_json::Value::String(format!("autopipe/{}", env!("CARGO_PKG_VERSION"))),
        ),
    ]);
    if let (None, Some(_)) = (&table, c.replaces) {
        return Ok(Committed::Skipped(format!(
            "{} is no delta table any more",
            c.table_url
        )));
    }
    let Some(table) = table else {
        let schema: StructType = serde_json::from_str(c.schema_json)
            .map_err(|e| Error::Permanent(format!("job {}: the table schema: {e}", c.job_id)))?;
        let created = CreateBuilder::new()
            .with_log_store(log_store)
            .with_table_name(c.name)
            .with_columns(schema.fields().cloned())
            .with_partition_columns(c.partition_by.to_vec())
            .with_save_mode(SaveMode::ErrorIfExists)
            .with_actions(adds.into_iter().chain([txn]))
            .with_commit_properties(CommitProperties::default().with_metadata(meta))
            .await;
        return match created {
            Ok(t) => Ok(Committed::Version(t.version().unwrap_or(0))),
            // another writer created it meanwhile: commit to it (boxed: recursion)
            Err(e) if e.to_string().contains("already exists") => Box::pin(commit(c)).await,
            Err(e) => Err(delta_err(c.table_url)(e)),
        };
    };
    let state = table.snapshot().map_err(delta_err(c.table_url))?;
    if state
        .transaction_version(&*table.log_store(), &app)
        .await
        .map_err(delta_err(c.table_url))?
        .is_some()
    {
        // committed before (a commit run again)
        return Ok(Committed::Version(state.version()));
    }
    check_schema(&table, c.schema_json, c.table_url)?;
    let overwrite = c.mode == SinkMode::Overwrite;
    let mut actions: Vec<Action> = vec![];
    if let Some(replaced) = c.replaces {
        // every file it rewrote must still be in the table: another commit that
        // removed one (an overwrite, a compaction) won, and this one is skipped
        let current: HashMap<String, Action> = state
            .log_data()
            .iter()
            .map(|f| {
                (
                    f.path().into_owned(),
                    Action::Remove(f.remove_action(false)),
                )
            })
            .collect();
        for r in replaced {
            match current.get(r) {
                Some(a) => actions.push(a.clone()),
                None => {
                    return Ok(Committed::Skipped(format!(
                        "file {r} is no longer in {} (version {} removed it)",
                        c.table_url,
                        state.version()
                    )))
                }
            }
        }
    } else if overwrite {
        actions.extend(
            state
                .log_data()
                .iter()
                .map(|f| Action::Remove(f.remove_action(true))),
        );
    }
    actions.extend(adds);
    actions.push(txn);
    let op = match c.replaces {
        Some(_) => DeltaOperation::Optimize {
            predicate: None,
            target_size: c.files.iter().map(|f| f.size as i64).max().unwrap_or(0),
        },
        None => DeltaOperation::Write {
            mode: if overwrite {
                SaveMode::Overwrite
            } else {
                SaveMode::Append
            },
            partition_by: (!c.partition_by.is_empty()).then(|| c.partition_by.to_vec()),
            predicate: None,
        },
    };
    let done = CommitBuilder::from(CommitProperties::default())
        .with_actions(actions)
        .with_app_metadata(meta)
        .build(Some(state), table.log_store(), op)
        .await
        .map_err(delta_err(c.table_url))?;
    Ok(Committed::Version(done.version()))
}

/// An existing table must have the job's columns (names and types) and nothing else.
fn check_schema(table: &DeltaTable, schema_json: &str, url: &str) -> Result<()> {
    let want: StructType = serde_json::from_str(schema_json)
        .map_err(|e| Error::Permanent(format!("the job's table schema: {e}")))?;
    let have = table.snapshot().map_err(delta_err(url))?.schema();
    let names = |s: &StructType| -> Vec<(String, String)> {
        s.fields()
            .map(|f| (f.name().to_string(), format!("{:?}", f.data_type())))
            .collect()
    };
    if names(&want) != names(have.as_ref()) {
        return Err(Error::plan(
            "sink.path",
            format!(
                "the delta table {url} has columns {:?}, the job's output {:?}; write \
                 the table's columns (changing a table's schema is not supported yet)",
                names(have.as_ref()),
                names(&want)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_values_come_from_the_hive_directories() {
        let p = ["country".to_string(), "day".to_string()];
        let v = partition_values("country=DE/day=2026-11-30/part-1.parquet", &p);
        assert_eq!(v["country"].as_deref(), Some("DE"));
        assert_eq!(v["day"].as_deref(), Some("2026-11-30"));
        let v = partition_values("country=__HIVE_DEFAULT_PARTITION__/day=a%2Fb/x.parquet", &p);
        assert_eq!(v["country"], None);
        assert_eq!(v["day"].as_deref(), Some("a/b"));
        assert!(partition_values("part-1.parquet", &[]).is_empty());
    }
}

#[cfg(test)]
mod commit_tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field};

    fn schema() -> Schema {
        Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("country", DataType::Utf8, true),
        ])
    }

    /// Writes a Parquet file of `ids` (the data columns only: `country` is the
    /// partition's) at `rel` under `root`; returns it as a file to add.
    fn file(root: &std::path::Path, rel: &str, ids: &[i64]) -> NewFile {
        let data = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)]));
        let batch =
            RecordBatch::try_new(data.clone(), vec![Arc::new(Int64Array::from(ids.to_vec()))])
                .unwrap();
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut w =
            parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), data, None)
                .unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        NewFile {
            path: rel.into(),
            size: std::fs::metadata(&path).unwrap().len(),
            stats: None,
        }
    }

    async fn files_of(url: &str) -> Vec<String> {
        let (t, _) = open(
            url,
            Arc::new(object_store::local::LocalFileSystem::new()),
            None,
        )
        .await
        .unwrap();
        let mut f: Vec<String> = t
            .unwrap()
            .snapshot()
            .unwrap()
            .log_data()
            .iter()
            .map(|f| f.path().to_string())
            .collect();
        f.sort();
        f
    }

    #[tokio::test]
    async fn a_job_adds_its_files_once_and_an_overwrite_replaces_them_in_one_version() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/t/", dir.path().display());
        let root = dir.path().join("t");
        let schema = schema_json(&schema()).unwrap();
        let part = ["country".to_string()];
        let commit_of = |job: &'static str, mode, files| Commit {
            table_url: &url,
            store: Arc::new(object_store::local::LocalFileSystem::new()),
            job_id: job,
            name: "t",
            schema_json: &schema,
            partition_by: &part,
            mode,
            files,
            now_ms: 1,
            replaces: None,
        };
        let f1 = vec![
            file(&root, "country=DE/a.parquet", &[1, 2]),
            file(&root, "country=FR/b.parquet", &[3]),
        ];
        // the first commit creates the table
        assert_eq!(
            commit(commit_of("j1", SinkMode::Append, f1.clone()))
                .await
                .unwrap(),
            Committed::Version(0)
        );
        // the same job again (a commit run after a crash) adds nothing
        assert_eq!(
            commit(commit_of("j1", SinkMode::Append, f1)).await.unwrap(),
            Committed::Version(0)
        );
        assert_eq!(
            files_of(&url).await,
            ["country=DE/a.parquet", "country=FR/b.parquet"]
        );
        let f2 = vec![file(&root, "country=DE/c.parquet", &[4])];
        assert_eq!(
            commit(commit_of("j2", SinkMode::Append, f2)).await.unwrap(),
            Committed::Version(1)
        );
        assert_eq!(files_of(&url).await.len(), 3);
        let f3 = vec![file(&root, "country=IT/d.parquet", &[5])];
        assert_eq!(
            commit(commit_of("j3", SinkMode::Overwrite, f3))
                .await
                .unwrap(),
            Committed::Version(2)
        );
        assert_eq!(files_of(&url).await, ["country=IT/d.parquet"]);
        // another schema is refused, naming the sink
        let other = schema_json(&Schema::new(vec![Field::new("x", DataType::Utf8, true)])).unwrap();
        let mut c = commit_of("j4", SinkMode::Append, vec![]);
        c.schema_json = &other;
        let e = commit(c).await.unwrap_err().to_string();
        assert!(e.contains("sink.path") && e.contains("columns"), "{e}");
    }

    #[tokio::test]
    async fn a_compaction_replaces_its_files_without_a_data_change_and_skips_when_they_are_gone() {
        use object_store::ObjectStoreExt as _;
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/t/", dir.path().display());
        let root = dir.path().join("t");
        let schema = schema_json(&schema()).unwrap();
        let part = ["country".to_string()];
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::local::LocalFileSystem::new());
        let base = |job: &'static str, files: Vec<NewFile>| Commit {
            table_url: &url,
            store: store.clone(),
            job_id: job,
            name: "t",
            schema_json: &schema,
            partition_by: &part,
            mode: SinkMode::Append,
            files,
            now_ms: 1,
            replaces: None,
        };
        let small: Vec<NewFile> = (0..3)
            .map(|i| file(&root, &format!("country=DE/s{i}.parquet"), &[i]))
            .collect();
        commit(base("w1", small)).await.unwrap();
        // statistics from the footer
        let mut big = file(&root, "country=DE/big.parquet", &[0, 1, 2]);
        let meta = store
            .head(
                &object_store::path::Path::from_filesystem_path(
                    root.join("country=DE/big.parquet"),
                )
                .unwrap(),
            )
            .await
            .unwrap();
        big.stats = Some(file_stats(store.as_ref(), &meta).await.unwrap());
        let stats: serde_json::Value = serde_json::from_str(big.stats.as_ref().unwrap()).unwrap();
        assert_eq!(stats["numRecords"], 3, "{stats}");
        assert_eq!(
            (
                stats["minValues"]["id"].clone(),
                stats["maxValues"]["id"].clone()
            ),
            (0.into(), 2.into())
        );
        assert_eq!(stats["nullCount"]["id"], 0, "{stats}");
        let replaced: Vec<String> = (0..3).map(|i| format!("country=DE/s{i}.parquet")).collect();
        let mut c = base("c1", vec![big]);
        c.replaces = Some(&replaced);
        assert_eq!(commit(c).await.unwrap(), Committed::Version(1));
        assert_eq!(files_of(&url).await, ["country=DE/big.parquet"]);
        let (t, _) = open(&url, store.clone(), None).await.unwrap();
        let t = t.unwrap();
        let last: Vec<_> = futures::TryStreamExt::try_collect(t.history(Some(1)))
            .await
            .unwrap();
        assert_eq!(last[0].operation.as_deref(), Some("OPTIMIZE"));
        // the same files again (already replaced): skipped, nothing committed
        let again = vec![file(&root, "country=DE/big2.parquet", &[0, 1, 2])];
        let mut c = base("c2", again);
        c.replaces = Some(&replaced);
        let Committed::Skipped(why) = commit(c).await.unwrap() else {
            panic!("a compaction of removed files committed");
        };
        assert!(why.contains("s0.parquet"), "{why}");
        assert_eq!(files_of(&url).await, ["country=DE/big.parquet"]);
    }
}
