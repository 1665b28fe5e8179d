//! DataFusion sessions as autopipe configures them, and registration of a spec's
//! sources as tables. The coordinator plans with this, and the single-process
//! oracle (tests, benchmarks) runs the same SQL through the same registration.

use crate::error::{Error, Result};
use crate::spec::{Format, PipelineSpec};
use crate::splits::{InputSplits, SplitTable};
use crate::store::{glob_prefix, is_glob, list_glob, register_stores};
use crate::tolerant::{record_format, TolerantTable};
use datafusion::arrow::datatypes::Schema;
use datafusion::common::plan_err;
use datafusion::datasource::listing::{ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::error::DataFusionError;
use datafusion::execution::options::ReadOptions;
use datafusion::prelude::{
    CsvReadOptions, JsonReadOptions, ParquetReadOptions, SessionConfig, SessionContext,
};
use std::sync::Arc;

/// Session config: `partitions` target partitions; no dynamic filters, because a
/// filter produced by a join in one stage could not reach a scan in another process;
/// no file-stream work stealing, because sibling partitions run as separate tasks.
pub fn session_config(partitions: usize) -> SessionConfig {
    let mut c = SessionConfig::new()
        .with_target_partitions(partitions.max(1))
        .with_information_schema(false);
    let o = c.options_mut();
    o.optimizer.enable_dynamic_filter_pushdown = false;
    o.optimizer.enable_join_dynamic_filter_pushdown = false;
    o.optimizer.enable_topk_dynamic_filter_pushdown = false;
    o.optimizer.enable_aggregate_dynamic_filter_pushdown = false;
    o.optimizer.enable_round_robin_repartition = false;
    // DataFusion 55 runs uncorrelated scalar subqueries in a `ScalarSubqueryExec` that
    // hands its value to expressions elsewhere in the plan through shared memory, which
    // cannot cross stages. Rewritten as joins (DataFusion's escape hatch for distributed
    // engines) they split into stages like any join. A subquery that returns more than
    // one row is then not reported as an error.
    o.optimizer.enable_physical_uncorrelated_scalar_subquery = false;
    // A task runs one partition alone; with work stealing its scan would take the files
    // of its sibling partitions (which run as other tasks) and read them twice.
    o.execution.enable_file_stream_work_stealing = false;
    c
}

/// A context with the spec's sources registered as tables (CSV and NDJSON tolerant:
/// bad records go to the dead letters).
pub async fn context_for(spec: &PipelineSpec, partitions: usize) -> Result<SessionContext> {
    context_with(spec, partitions, true).await
}

/// Like `context_for`; `tolerant = false` registers CSV and NDJSON with DataFusion's
/// own readers (the test oracle, which must not share the code it checks).
pub async fn context_with(
    spec: &PipelineSpec,
    partitions: usize,
    tolerant: bool,
) -> Result<SessionContext> {
    context_inner(spec, partitions, tolerant, None).await
}

/// Like `context_for`, with each source's scan reading exactly its groups in `splits`
/// (one partition, so one task, per group; see `splits`); `partitions` is then the
/// width of the plan's exchanges. DataFusion does not split the scans further.
pub async fn context_for_splits(
    spec: &PipelineSpec,
    partitions: usize,
    splits: &InputSplits,
) -> Result<SessionContext> {
    context_inner(spec, partitions, true, Some(splits)).await
}

async fn context_inner(
    spec: &PipelineSpec,
    partitions: usize,
    tolerant: bool,
    splits: Option<&InputSplits>,
) -> Result<SessionContext> {
    let mut config = session_config(partitions);
    if splits.is_some() {
        // the scans' partitions are the splits: no byte-range repartitioning on top
        config.options_mut().optimizer.repartition_file_scans = false;
    }
    // Broadcast joins by estimated size only: DataFusion's row-count fallback (128k rows)
    // would broadcast wide rows far past the byte limit.
    let o = config.options_mut();
    o.optimizer.hash_join_single_partition_threshold =
        spec.job.params.broadcast_join_max_bytes() as usize;
    o.optimizer.hash_join_single_partition_threshold_rows = 0;
    let ctx = SessionContext::new_with_config(config);
    register_sources(&ctx, spec, tolerant, splits).await?;
    Ok(ctx)
}

/// Registers every `[[sources]]` entry but a kafka source; errors name the source key. Parquet is read
/// by DataFusion; CSV and NDJSON through `TolerantTable`, whose bad records go to the
/// dead-letter sink, with the spec's schema or DataFusion's inferred one (`tolerant =
/// false`: by DataFusion's readers, which fail on a bad record). A source named in
/// `splits` scans its groups there, one partition per group.
pub async fn register_sources(
    ctx: &SessionContext,
    spec: &PipelineSpec,
    tolerant: bool,
    splits: Option<&InputSplits>,
) -> Result<()> {
    let files = |s: &&crate::spec::SourceSpec| s.format != Format::Kafka;
    let urls: Vec<String> = spec
        .sources
        .iter()
        .filter(files)
        .map(|s| s.path.clone())
        .collect();
    register_stores(&ctx.runtime_env(), &urls)?;
    for (i, s) in spec.sources.iter().enumerate() {
        if s.format == Format::Kafka {
            continue; // a streaming job's micro-batch table (`kafka::stream_context`)
        }
        let key = format!("sources[{i}]");
        let ext = file_extension(&s.path, s.format);
        let name = s.name.as_str();
        let delim = s
            .delimiter
            .as_deref()
            .and_then(|d| d.bytes().next())
            .unwrap_or(b',');
        let has_header = s.has_header.unwrap_or(true);
        let cannot_read = |e: &dyn std::fmt::Display| {
            Error::plan(
                format!("{key}.path"),
                format!("cannot read {} as {}: {e}", s.path, s.format.name()),
            )
        };
        let groups = splits.and_then(|sp| sp.sources.get(name));
        if s.format == Format::Delta {
            let table: Arc<dyn datafusion::catalog::TableProvider> = Arc::new(
                crate::delta::DeltaScan::new(crate::delta::source_snapshot(s, &key).await?),
            );
            let table = match groups {
                Some(g) => Arc::new(SplitTable::new(table, g.clone())),
                None => table,
            };
            ctx.register_table(name, table)?;
            continue;
        }
        let Some(records) = record_format(s.format, has_header, delim) else {
            let o = ParquetReadOptions::default().file_extension(&ext);
            register_files(ctx, name, &s.path, &o, None)
                .await
                .map_err(|e| cannot_read(&e))?;
            if let Some(groups) = groups {
                let listing = ctx
                    .deregister_table(name)?
                    .ok_or_else(|| cannot_read(&"the table did not register"))?;
                ctx.register_table(name, Arc::new(SplitTable::new(listing, groups.clone())))?;
            }
            continue;
        };
        let given = match &s.schema {
            Some(text) => Some(
                text.to_schema()
                    .map_err(|m| Error::plan(format!("{key}.schema"), m))?,
            ),
            None => None,
        };
        if given.is_none() || !tolerant {
            // DataFusion's reader: the table itself, or a listing registered to infer
            // the schema
            let r = match s.format {
                Format::Csv => {
                    let o = CsvReadOptions::new()
                        .has_header(has_header)
                        .delimiter(delim)
                        .file_extension(&ext);
                    register_files(ctx, name, &s.path, &o, given.as_ref()).await
                }
                _ => {
                    let o = JsonReadOptions::default().file_extension(&ext);
                    register_files(ctx, name, &s.path, &o, given.as_ref()).await
                }
            };
            r.map_err(|e| cannot_read(&e))?;
            if !tolerant {
                continue;
            }
        }
        let schema = match given {
            Some(g) => Arc::new(g),
            None => {
                let t = ctx.deregister_table(name)?;
                t.map(|t| t.schema())
                    .ok_or_else(|| cannot_read(&"the table did not register"))?
            }
        };
        let mut table = TolerantTable::try_new(&ctx.state(), name, &s.path, &ext, records, schema)
            .await
            .map_err(|e| cannot_read(&e))?;
        if let Some(groups) = groups {
            table = table.with_groups(groups.clone());
        }
        ctx.register_table(name, Arc::new(table))?;
    }
    Ok(())
}

/// Registers the files at `path` (a file, directory or glob) read with `options`, as
/// a listing table with `schema` (else inferred), as `register_parquet`,
/// `register_csv` and `register_json` do. A glob becomes the list of the files it
/// matches, listed below its literal prefix (`store::list_glob`): DataFusion would
/// take a glob URL for one file's name.
async fn register_files<'a>(
    ctx: &SessionContext,
    name: &str,
    path: &str,
    options: &impl ReadOptions<'a>,
    schema: Option<&Schema>,
) -> datafusion::error::Result<()> {
    let listing = options.to_listing_options(&ctx.copied_config(), ctx.copied_table_options());
    let schema = schema.map(|s| Arc::new(s.clone()));
    let Some((prefix, _)) = glob_prefix(path) else {
        return ctx
            .register_listing_table(name, path, listing, schema, None)
            .await;
    };
    let store_url = ListingTableUrl::parse(prefix)?.object_store();
    let store = ctx.runtime_env().object_store(&store_url)?;
    let files = list_glob(store.as_ref(), path, &listing.file_extension)
        .await
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
    if files.is_empty() {
        return plan_err!("no file matches {path}");
    }
    let mut urls = Vec::with_capacity(files.len());
    for f in &files {
        let mut url = AsRef::<url::Url>::as_ref(&store_url).clone();
        url.path_segments_mut()
            .map_err(|()| DataFusionError::Plan(format!("{store_url} cannot hold paths")))?
            .clear()
            .extend(f.location.as_ref().split('/'));
        urls.push(ListingTableUrl::try_new(url, None)?);
    }
    let schema = match schema {
        Some(s) => s,
        None => {
            // empty files cannot affect the schema but may fail to be read for it
            let nonempty: Vec<_> = files.into_iter().filter(|f| f.size > 0).collect();
            listing
                .format
                .infer_schema(&ctx.state(), &store, &nonempty)
                .await?
        }
    };
    let config = ListingTableConfig::new_with_multi_paths(urls)
        .with_listing_options(listing)
        .with_schema(schema);
    let table = ListingTable::try_new(config)?
        .with_cache(ctx.runtime_env().cache_manager.get_file_statistic_cache());
    ctx.register_table(name, Arc::new(table))?;
    Ok(())
}

/// For a single file, its own extension; for a glob whose last segment ends in a
/// literal extension (`*.ndjson`), that one; otherwise (a directory, `part-*`) the
/// format's default.
pub(crate) fn file_extension(path: &str, format: Format) -> String {
    let last = path.rsplit('/').next().unwrap_or("");
    if !path.ends_with('/') {
        if let Some((_, ext)) = last.rsplit_once('.') {
            let is_file = match path.strip_prefix("file://") {
                _ if is_glob(last) => !is_glob(ext),
                Some(p) => std::path::Path::new(p).is_file(),
                None => true,
            };
            if is_file {
                return format!(".{ext}");
            }
        }
    }
    // NDJSON files are named .json or .ndjson: a local directory holding only the
    // latter is read as such
    if format == Format::Ndjson {
        if let Some(dir) = path.strip_prefix("file://") {
            let has = |ext: &str| {
                std::fs::read_dir(dir).is_ok_and(|rd| {
                    rd.flatten()
                        .any(|e| e.path().extension().is_some_and(|x| x == ext))
                })
            };
            if !has("json") && has("ndjson") {
                return ".ndjson".into();
            }
        }
    }
    format!(".{}", format.extension())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tolerant::FileRange;
    use datafusion::arrow::array::{Array, Int64Array};
    use datafusion::arrow::datatypes::{DataType, Field};
    use datafusion::arrow::record_batch::RecordBatch;
    use std::path::Path;

    /// A Parquet file of one Int64 column `k` with `values`.
    fn parquet(path: &Path, values: &[i64]) {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from(values.to_vec()))],
        )
        .unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let file = std::fs::File::create(path).unwrap();
        let mut w = datafusion::parquet::arrow::ArrowWriter::try_new(file, schema, None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }

    fn text(path: &Path, body: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, body).unwrap();
    }

    /// `sum(k)` and `count(*)` of source `t` at `path` in `format`, read with the
    /// tolerant readers and with DataFusion's own.
    async fn sum_and_count(dir: &Path, format: &str, path: &str) -> Vec<(i64, i64)> {
        let text = format!(
            r#"
[job]
name = "glob"
[[sources]]
name = "t"
format = "{format}"
path = "{path}"
[transform]
sql = "SELECT sum(k) AS s, count(*) AS n FROM t"
[sink]
format = "parquet"
path = "out"
"#
        );
        let spec = PipelineSpec::parse(&text, "glob.toml")
            .unwrap()
            .normalize(dir, "glob.toml")
            .unwrap();
        let mut out = vec![];
        for tolerant in [true, false] {
            let ctx = context_with(&spec, 4, tolerant).await.unwrap();
            let batches = ctx
                .sql(&spec.transform.sql)
                .await
                .unwrap()
                .collect()
                .await
                .unwrap();
            let col = |i: usize| {
                batches[0]
                    .column(i)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .map(|a| if a.is_null(0) { 0 } else { a.value(0) })
                    .unwrap()
            };
            out.push((col(0), col(1)));
        }
        out
    }

    /// The scan partitions of `sql` planned over `spec` with `splits`, and its result
    /// as `(sum(k), count(*))`.
    async fn with_splits(spec: &PipelineSpec, splits: &InputSplits) -> (usize, (i64, i64)) {
        let ctx = context_for_splits(spec, 2, splits).await.unwrap();
        let df = ctx.sql(&spec.transform.sql).await.unwrap();
        let plan = df.clone().create_physical_plan().await.unwrap();
        fn scan_partitions(p: &Arc<dyn datafusion::physical_plan::ExecutionPlan>) -> usize {
            use datafusion::physical_plan::ExecutionPlanProperties;
            let name = p.name();
            if name == "DataSourceExec" || name == "TolerantScanExec" {
                return p.output_partitioning().partition_count();
            }
            p.children().into_iter().map(scan_partitions).sum()
        }
        let batches = df.collect().await.unwrap();
        let col = |i: usize| {
            batches[0]
                .column(i)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .value(0)
        };
        (scan_partitions(&plan), (col(0), col(1)))
    }

    fn sum_spec(dir: &Path, format: &str) -> PipelineSpec {
        let text = format!(
            "[job]\nname = \"s\"\n[[sources]]\nname = \"t\"\nformat = \"{format}\"\npath = \"data\"\n[transform]\nsql = \"SELECT sum(k) AS s, count(*) AS n FROM t\"\n[sink]\nformat = \"parquet\"\npath = \"out\"\n"
        );
        PipelineSpec::parse(&text, "s.toml")
            .unwrap()
            .normalize(dir, "s.toml")
            .unwrap()
    }

    #[tokio::test]
    async fn parquet_scans_read_the_given_splits_row_groups_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        // one file of 10 row groups of 100 rows, and three small files
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let props = datafusion::parquet::file::properties::WriterProperties::builder()
            .set_max_row_group_row_count(Some(100))
            .build();
        let file = std::fs::File::create(data.join("a-big.parquet")).unwrap();
        let mut w =
            datafusion::parquet::arrow::ArrowWriter::try_new(file, schema.clone(), Some(props))
                .unwrap();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from_iter_values(0..1000))],
        )
        .unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        for i in 0..3 {
            parquet(&data.join(format!("b-{i}.parquet")), &[10_000 + i]);
        }
        let spec = sum_spec(dir.path(), "parquet");
        let listed = crate::splits::list_sources(&spec, 0).await.unwrap();
        let files = &listed[0].files;
        assert_eq!(files.len(), 4);
        assert_eq!(files[0].row_groups.len(), 10);
        // the big file in 3 ranges cut at row-group starts; the small ones packed
        let big = &files[0];
        let cut = |i: usize| big.row_groups[i].start;
        let r = |f: &crate::splits::InputFile, start, end| FileRange {
            location: f.location.clone(),
            start,
            end,
            size: f.size,
        };
        let groups = vec![
            vec![r(big, 0, cut(3))],
            vec![r(big, cut(3), cut(7))],
            vec![r(big, cut(7), big.size), r(&files[1], 0, files[1].size)],
            vec![
                r(&files[2], 0, files[2].size),
                r(&files[3], 0, files[3].size),
            ],
        ];
        let splits = InputSplits {
            sources: [("t".to_string(), groups)].into(),
        };
        let want = (999 * 1000 / 2 + 30_003, 1003);
        assert_eq!(with_splits(&spec, &splits).await, (4, want));
        // the oracle agrees
        let ctx = context_with(&spec, 3, false).await.unwrap();
        let b = ctx
            .sql(&spec.transform.sql)
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let n = b[0]
            .column(1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0);
        assert_eq!(n, want.1);
    }

    #[tokio::test]
    async fn csv_scans_read_the_given_splits_records_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let body: String = std::iter::once("k\n".to_string())
            .chain((1..=500).map(|i| format!("{i}\n")))
            .collect();
        text(&dir.path().join("data/a.csv"), &body);
        text(&dir.path().join("data/b.csv"), "k\n7\n");
        let spec = sum_spec(dir.path(), "csv");
        let listed = crate::splits::list_sources(&spec, 0).await.unwrap();
        let (a, b) = (&listed[0].files[0], &listed[0].files[1]);
        let r = |f: &crate::splits::InputFile, start, end| FileRange {
            location: f.location.clone(),
            start,
            end,
            size: f.size,
        };
        // cut mid-record: each record is read by the range it starts in
        let groups = vec![
            vec![r(a, 0, 501)],
            vec![r(a, 501, 1300)],
            vec![r(a, 1300, a.size), r(b, 0, b.size)],
        ];
        let splits = InputSplits {
            sources: [("t".to_string(), groups)].into(),
        };
        assert_eq!(
            with_splits(&spec, &splits).await,
            (3, (500 * 501 / 2 + 7, 501))
        );
    }

    #[tokio::test]
    async fn a_parquet_glob_reads_exactly_its_matching_files() {
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("data/events");
        parquet(&events.join("a.parquet"), &[1, 2]);
        parquet(&events.join("b.parquet"), &[10]);
        // not matched by `*.parquet` in `data/events/`
        parquet(&events.join("sub/c.parquet"), &[100]);
        parquet(&dir.path().join("data/other/d.parquet"), &[1000]);
        text(&events.join("notes.txt"), "not parquet");
        text(&events.join("_SUCCESS"), "");
        let root = dir.path().display().to_string();
        // relative, as the README's example
        assert_eq!(
            sum_and_count(dir.path(), "parquet", "data/events/*.parquet").await,
            [(13, 3), (13, 3)]
        );
        // absolute
        assert_eq!(
            sum_and_count(
                dir.path(),
                "parquet",
                &format!("{root}/data/events/*.parquet")
            )
            .await,
            [(13, 3), (13, 3)]
        );
        // `**` and a glob in a directory name
        assert_eq!(
            sum_and_count(dir.path(), "parquet", "data/events/**/*.parquet").await,
            [(113, 4), (113, 4)]
        );
        assert_eq!(
            sum_and_count(dir.path(), "parquet", "data/*/?.parquet").await,
            [(1013, 4), (1013, 4)]
        );
        assert_eq!(
            sum_and_count(
                dir.path(),
                "parquet",
                &format!("file://{root}/data/events/[b]*")
            )
            .await,
            [(10, 1), (10, 1)]
        );
    }

    #[tokio::test]
    async fn csv_and_ndjson_globs_read_exactly_their_matching_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("data");
        text(&d.join("part-1.csv"), "k\n1\n2\n");
        text(&d.join("part-2.csv"), "k\n10\n");
        text(&d.join("other.csv"), "k\n100\n");
        text(&d.join("part-3.txt"), "k\n1000\n");
        text(&d.join("old/part-4.csv"), "k\n10000\n");
        assert_eq!(
            sum_and_count(dir.path(), "csv", "data/part-*.csv").await,
            [(13, 3), (13, 3)]
        );
        assert_eq!(
            sum_and_count(dir.path(), "csv", "data/**/part-*.csv").await,
            [(10013, 4), (10013, 4)]
        );
        text(&d.join("e1.ndjson"), "{\"k\": 1}\n{\"k\": 2}\n");
        text(&d.join("e2.ndjson"), "{\"k\": 10}\n");
        text(&d.join("e3.json"), "{\"k\": 100}\n");
        assert_eq!(
            sum_and_count(dir.path(), "ndjson", "data/e*.ndjson").await,
            [(13, 3), (13, 3)]
        );
    }
}
