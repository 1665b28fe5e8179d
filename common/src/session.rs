//! DataFusion sessions as autopipe configures them, and registration of a spec's
//! sources as tables. The coordinator plans with this, and the single-process
//! oracle (tests, benchmarks) runs the same SQL through the same registration.

use crate::error::{Error, Result};
use crate::spec::{parse_schema, Format, PipelineSpec};
use crate::store::register_stores;
use crate::tolerant::{record_format, TolerantTable};
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
    let mut config = session_config(partitions);
    // Broadcast joins by estimated size only: DataFusion's row-count fallback (128k rows)
    // would broadcast wide rows far past the byte limit.
    let o = config.options_mut();
    o.optimizer.hash_join_single_partition_threshold =
        spec.job.params.broadcast_join_max_bytes() as usize;
    o.optimizer.hash_join_single_partition_threshold_rows = 0;
    let ctx = SessionContext::new_with_config(config);
    register_sources(&ctx, spec, tolerant).await?;
    Ok(ctx)
}

/// Registers every `[[sources]]` entry; errors name the source key. Parquet is read
/// by DataFusion; CSV and NDJSON through `TolerantTable`, whose bad records go to the
/// dead-letter sink, with the spec's schema or DataFusion's inferred one (`tolerant =
/// false`: by DataFusion's readers, which fail on a bad record).
pub async fn register_sources(
    ctx: &SessionContext,
    spec: &PipelineSpec,
    tolerant: bool,
) -> Result<()> {
    let urls: Vec<String> = spec.sources.iter().map(|s| s.path.clone()).collect();
    register_stores(&ctx.runtime_env(), &urls)?;
    for (i, s) in spec.sources.iter().enumerate() {
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
        let Some(records) = record_format(s.format, has_header, delim) else {
            let o = ParquetReadOptions::default().file_extension(&ext);
            ctx.register_parquet(name, &s.path, o)
                .await
                .map_err(|e| cannot_read(&e))?;
            continue;
        };
        let given = match &s.schema {
            Some(text) => {
                Some(parse_schema(text).map_err(|m| Error::plan(format!("{key}.schema"), m))?)
            }
            None => None,
        };
        if given.is_none() || !tolerant {
            // DataFusion's reader: the table itself, or a listing registered to infer
            // the schema
            let r = match s.format {
                Format::Csv => {
                    let mut o = CsvReadOptions::new()
                        .has_header(has_header)
                        .delimiter(delim)
                        .file_extension(&ext);
                    if let Some(g) = &given {
                        o = o.schema(g);
                    }
                    ctx.register_csv(name, &s.path, o).await
                }
                _ => {
                    let mut o = JsonReadOptions::default().file_extension(&ext);
                    if let Some(g) = &given {
                        o = o.schema(g);
                    }
                    ctx.register_json(name, &s.path, o).await
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
        let table = TolerantTable::try_new(&ctx.state(), name, &s.path, &ext, records, schema)
            .await
            .map_err(|e| cannot_read(&e))?;
        ctx.register_table(name, Arc::new(table))?;
    }
    Ok(())
}

/// For a single file, its own extension; for a directory or glob, the format's default.
fn file_extension(path: &str, format: Format) -> String {
    let last = path.rsplit('/').next().unwrap_or("");
    if !path.ends_with('/') && !last.contains(['*', '?']) {
        if let Some((_, ext)) = last.rsplit_once('.') {
            let is_file = match path.strip_prefix("file://") {
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
