//! `autopipe table …`: a Delta table's upkeep from the command line, straight on its
//! storage (the table's log is the only state) where it can be:
//! `history` lists its commits, `vacuum` deletes the files no retained version
//! references; `compact` asks the cluster that writes the table to compact it now.

use anyhow::{Context, Result};
use clap::Subcommand;
use std::time::Duration;

/// `autopipe table` subcommands.
#[derive(Subcommand)]
pub enum TableCmd {
    /// List a Delta table's commits, newest first: version, time, operation, the
    /// autopipe job that committed it
    History {
        /// the table's root: a local directory or an object-store URL
        path: String,
        /// at most this many commits
        #[arg(long)]
        limit: Option<usize>,
        /// output format
        #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
        output: super::OutputFormat,
    },
    /// Compact a Delta table now, on the cluster that writes it: every partition with
    /// two small files or more is rewritten by a background job (see `autopipe
    /// decisions`); prints the jobs started
    Compact {
        /// the table's root: a local directory or an object-store URL
        path: String,
        #[command(flatten)]
        client: super::ClientArgs,
    },
    /// Delete the files of a Delta table that no version committed within the
    /// retention window references; time travel to those versions keeps working
    Vacuum {
        /// the table's root: a local directory or an object-store URL
        path: String,
        /// keep every file a version committed within this long still references
        /// (ms, s, m, h or d)
        #[arg(long, default_value = "168h", value_parser = autopipe_common::util::parse_duration)]
        retain: Duration,
        /// also delete files in the table's directory that no version names (left
        /// by a commit that never happened)
        #[arg(long)]
        full: bool,
        /// list what would be deleted, delete nothing
        #[arg(long)]
        dry_run: bool,
        /// allow a window shorter than the table's delta.deletedFileRetentionDuration
        /// (7 days by default): a reader of an older version then fails
        #[arg(long)]
        force: bool,
        /// output format
        #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
        output: super::OutputFormat,
    },
}

/// A table PATH as a URL: URLs as they are, local paths made absolute.
fn table_url(path: &str) -> Result<String> {
    if path.contains("://") {
        return Ok(if path.ends_with('/') {
            path.to_string()
        } else {
            format!("{path}/")
        });
    }
    let abs = std::path::absolute(path).with_context(|| format!("table path {path}"))?;
    let u = url::Url::from_directory_path(&abs)
        .map_err(|()| anyhow::anyhow!("{} is no directory path", abs.display()))?;
    Ok(u.to_string())
}

/// Runs one `table` subcommand.
pub async fn run(cmd: TableCmd) -> Result<i32> {
    match cmd {
        TableCmd::History {
            path,
            limit,
            output,
        } => {
            let url = table_url(&path)?;
            let h = autopipe_common::delta::history(&url, limit).await?;
            if output == super::OutputFormat::Json {
                println!("{}", serde_json::to_string_pretty(&h)?);
                return Ok(0);
            }
            println!("{:>8}  {:<24}  {:<14}  JOB", "VERSION", "TIME", "OPERATION");
            for e in &h {
                let at = chrono::DateTime::from_timestamp_millis(e.timestamp_ms)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                    .unwrap_or_default();
                println!(
                    "{:>8}  {:<24}  {:<14}  {}",
                    e.version,
                    at,
                    e.operation,
                    e.job_id.as_deref().or(e.engine.as_deref()).unwrap_or("-")
                );
            }
            Ok(0)
        }
        TableCmd::Compact { path, client } => {
            let url = table_url(&path)?;
            let ch = super::client::connect(&client.coordinator).await?;
            let mut c = autopipe_proto::admin_service_client::AdminServiceClient::new(ch);
            let r = c
                .compact_table(autopipe_proto::CompactTableRequest { path: url.clone() })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                .into_inner();
            if client.output == super::OutputFormat::Json {
                println!(
                    "{}",
                    serde_json::json!({ "table": url, "job_ids": r.job_ids })
                );
            } else if r.job_ids.is_empty() {
                println!("{url}: no partition has two small files; nothing to compact");
            } else {
                println!("{url}: {} compaction jobs started", r.job_ids.len());
                for id in &r.job_ids {
                    println!("  {id}");
                }
            }
            Ok(0)
        }
        TableCmd::Vacuum {
            path,
            retain,
            full,
            dry_run,
            force,
            output,
        } => {
            let url = table_url(&path)?;
            let v = autopipe_common::delta::vacuum(&url, retain, full, dry_run, force).await?;
            if output == super::OutputFormat::Json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(0);
            }
            let verb = if dry_run { "would delete" } else { "deleted" };
            println!("{verb} {} files of {url}", v.files.len());
            for f in &v.files {
                println!("  {f}");
            }
            Ok(0)
        }
    }
}
