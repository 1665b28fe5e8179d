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

use autopipe_common::error::{Error, Result};
use autopipe_common::spec::SinkMode;
use datafusion::arrow::datatypes::Schema;
use deltalake_core::kernel::engine::arrow_conversion::TryIntoKernel as _;
use deltalake_core::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake_core::kernel::{Action, Add, StructType, Transaction};
use deltalake_core::logstore::LogStoreRef;
use deltalake_core::operations::create::CreateBuilder;
use deltalake_core::protocol::{DeltaOperation, SaveMode};
use deltalake_core::{DeltaTable, DeltaTableBuilder, DeltaTableError};
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
}

/// The transaction's application id for job `job_id`.
pub fn app_id(job_id: &str) -> String {
    format!("autopipe-{job_id}")
}

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
fn delta_err(table: &str) -> impl Fn(DeltaTableError) -> Error + '_ {
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

/// The table at `url` through `store`, or `None` when there is none yet; and its log
/// store.
pub async fn open(
    url: &str,
    store: Arc<dyn ObjectStore>,
) -> Result<(Option<DeltaTable>, LogStoreRef)> {
    register_log_stores();
    let u = url::Url::parse(url).map_err(|e| Error::Permanent(format!("'{url}': {e}")))?;
    let builder = DeltaTableBuilder::from_url(u.clone())
        .map_err(delta_err(url))?
        .with_storage_backend(store, u);
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
pub async fn commit(c: Commit<'_>) -> Result<u64> {
    let (table, log_store) = open(c.table_url, c.store.clone()).await?;
    let app = app_id(c.job_id);
    let adds: Vec<Action> = c
        .files
        .iter()
        .map(|f| {
            Action::Add(Add {
                path: f.path.clone(),
                partition_values: partition_values(&f.path, c.partition_by),
                size: f.size as i64,
                modification_time: c.now_ms as i64,
                data_change: true,
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
            Ok(t) => Ok(t.version().unwrap_or(0)),
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
        return Ok(state.version());
    }
    check_schema(&table, c.schema_json, c.table_url)?;
    let overwrite = c.mode == SinkMode::Overwrite;
    let mut actions: Vec<Action> = vec![];
    if overwrite {
        actions.extend(
            state
                .log_data()
                .iter()
                .map(|f| Action::Remove(f.remove_action(true))),
        );
    }
    actions.extend(adds);
    actions.push(txn);
    let op = DeltaOperation::Write {
        mode: if overwrite {
            SaveMode::Overwrite
        } else {
            SaveMode::Append
        },
        partition_by: (!c.partition_by.is_empty()).then(|| c.partition_by.to_vec()),
        predicate: None,
    };
    let done = CommitBuilder::from(CommitProperties::default())
        .with_actions(actions)
        .with_app_metadata(meta)
        .build(Some(state), table.log_store(), op)
        .await
        .map_err(delta_err(c.table_url))?;
    Ok(done.version())
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
        }
    }

    async fn files_of(url: &str) -> Vec<String> {
        let (t, _) = open(url, Arc::new(object_store::local::LocalFileSystem::new()))
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
            0
        );
        // the same job again (a commit run after a crash) adds nothing
        assert_eq!(
            commit(commit_of("j1", SinkMode::Append, f1)).await.unwrap(),
            0
        );
        assert_eq!(
            files_of(&url).await,
            ["country=DE/a.parquet", "country=FR/b.parquet"]
        );
        let f2 = vec![file(&root, "country=DE/c.parquet", &[4])];
        assert_eq!(
            commit(commit_of("j2", SinkMode::Append, f2)).await.unwrap(),
            1
        );
        assert_eq!(files_of(&url).await.len(), 3);
        let f3 = vec![file(&root, "country=IT/d.parquet", &[5])];
        assert_eq!(
            commit(commit_of("j3", SinkMode::Overwrite, f3))
                .await
                .unwrap(),
            2
        );
        assert_eq!(files_of(&url).await, ["country=IT/d.parquet"]);
        // another schema is refused, naming the sink
        let other = schema_json(&Schema::new(vec![Field::new("x", DataType::Utf8, true)])).unwrap();
        let mut c = commit_of("j4", SinkMode::Append, vec![]);
        c.schema_json = &other;
        let e = commit(c).await.unwrap_err().to_string();
        assert!(e.contains("sink.path") && e.contains("columns"), "{e}");
    }
}
