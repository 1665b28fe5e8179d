//! DataFusion sessions as autopipe configures them, and registration of a spec's
//! sources as tables. The coordinator plans with this, and the single-process
//! oracle (tests, benchmarks) runs the same SQL through the same registration.

use crate::error::{Error, Result};
use crate::spec::{Format, PipelineSpec};
use crate::store::register_stores;
use datafusion::prelude::{
    CsvReadOptions, JsonReadOptions, ParquetReadOptions, SessionConfig, SessionContext,
};

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

/// A context with the spec's sources registered as tables.
pub async fn context_for(spec: &PipelineSpec, partitions: usize) -> Result<SessionContext> {
    let mut config = session_config(partitions);
    // Broadcast joins by estimated size only: DataFusion's row-count fallback (128k rows)
    // would broadcast wide rows far past the byte limit.
    let o = config.options_mut();
    o.optimizer.hash_join_single_partition_threshold =
        spec.job.params.broadcast_join_max_bytes() as usize;
    o.optimizer.hash_join_single_partition_threshold_rows = 0;
    let ctx = SessionContext::new_with_config(config);
    register_sources(&ctx, spec).await?;
    Ok(ctx)
}

/// Registers every `[[sources]]` entry; errors name the source key.
pub async fn register_sources(ctx: &SessionContext, spec: &PipelineSpec) -> Result<()> {
    let urls: Vec<String> = spec.sources.iter().map(|s| s.path.clone()).collect();
    register_stores(&ctx.runtime_env(), &urls)?;
    for (i, s) in spec.sources.iter().enumerate() {
        let key = format!("sources[{i}]");
        let ext = file_extension(&s.path, s.format);
        let r = match s.format {
            Format::Parquet => {
                let o = ParquetReadOptions::default().file_extension(&ext);
                ctx.register_parquet(s.name.as_str(), &s.path, o).await
            }
            Format::Csv => {
                let delim = s
                    .delimiter
                    .as_deref()
                    .and_then(|d| d.bytes().next())
                    .unwrap_or(b',');
                let o = CsvReadOptions::new()
                    .has_header(s.has_header.unwrap_or(true))
                    .delimiter(delim)
                    .file_extension(&ext);
                ctx.register_csv(s.name.as_str(), &s.path, o).await
            }
            Format::Ndjson => {
                let o = JsonReadOptions::default().file_extension(&ext);
                ctx.register_json(s.name.as_str(), &s.path, o).await
            }
        };
        r.map_err(|e| {
            Error::plan(
                format!("{key}.path"),
                format!("cannot read {} as {}: {e}", s.path, s.format.name()),
            )
        })?;
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
    format!(".{}", format.extension())
}
