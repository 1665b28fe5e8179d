//! The leader's side of adaptive compaction (issue 15 §2; the rule is
//! `optimizer::compaction`). Each pass, off the scheduler's own loop:
//!
//! 1. observes every delta table a job committed to whose log moved on (a listing
//!    of `_delta_log/`, then the new snapshot's files), proposed as
//!    `TableObserved`;
//! 2. fills in the effect of compaction decisions whose job ended (files and bytes
//!    after, the table's write amplification);
//! 3. asks the rule for each table and submits the compaction job it returns: an
//!    ordinary batch job (scan the chosen files of the observed version, write
//!    target-sized files into the same partition) marked as a compaction, so it runs
//!    in the background and its commit replaces the files it read; recorded as a
//!    `compaction` decision.

use crate::api::grpc::plan_batch;
use crate::core::Core;
use crate::optimizer::compaction::{self, Compact, CompactionJob, Settings, TableFiles};
use crate::state::decision::inputs;
use crate::state::{Command, Decision, DecisionKind, JobState};
use autopipe_common::error::{Error, Result};
use autopipe_common::spec::{Format, PipelineSpec};
use autopipe_common::util::now_ms;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often one table's log is looked at.
const OBSERVE_EVERY: Duration = Duration::from_millis(500);

/// The leader loop's compaction state: one pass at a time, and when each table's
/// log was last looked at.
#[derive(Default)]
pub struct Watch {
    busy: Arc<AtomicBool>,
    checked: Arc<Mutex<HashMap<String, Instant>>>,
}

/// Starts a pass unless one runs.
pub fn run(core: &Arc<Core>, w: &Watch) {
    if w.busy.swap(true, Ordering::SeqCst) {
        return;
    }
    let (core, busy, checked) = (core.clone(), w.busy.clone(), w.checked.clone());
    tokio::spawn(async move {
        pass(&core, &checked).await;
        busy.store(false, Ordering::SeqCst);
    });
}

async fn pass(core: &Arc<Core>, checked: &Mutex<HashMap<String, Instant>>) {
    for (url, settings) in core.read(watched) {
        let due = {
            let mut c = checked.lock().expect("lock");
            let due = c.get(&url).is_none_or(|t| t.elapsed() >= OBSERVE_EVERY);
            if due {
                c.insert(url.clone(), Instant::now());
            }
            due
        };
        if due {
            if let Err(e) = observe(core, &url, settings).await {
                tracing::debug!(table = %url, "cannot observe the table: {e}");
            }
        }
    }
    record_effects(core).await;
    let plans: Vec<(Compact, TableFiles)> = core.read(|s| {
        s.tables
            .values()
            .filter_map(|t| {
                let c = compaction::plan(t, compaction::busy(&s.jobs, t))?;
                Some((c, t.clone()))
            })
            .collect()
    });
    for (c, t) in plans {
        if let Err(e) = start(core, &c, &t).await {
            tracing::warn!(table = %c.table, partition = %c.partition, "compaction not started: {e}");
        }
    }
}

/// The delta tables user jobs committed to, with the compaction settings of the
/// last one that did.
fn watched(s: &crate::state::State) -> BTreeMap<String, Settings> {
    let mut out: BTreeMap<String, Settings> = BTreeMap::new();
    for id in &s.job_order {
        let j = &s.jobs[id];
        if j.spec.sink.format != Format::Delta
            || j.state != JobState::Succeeded
            || j.compaction.is_some()
        {
            continue;
        }
        let p = &j.spec.job.params;
        out.insert(
            j.spec.sink.path.clone(),
            Settings {
                enabled: p.compaction(),
                min_files: p.compaction_min_files(),
                target_file_bytes: p.compaction_target_file_bytes(),
            },
        );
    }
    out
}

/// Proposes what table `url` holds when its log moved on since it was observed (or
/// its settings changed).
async fn observe(core: &Core, url: &str, settings: Settings) -> Result<()> {
    let Some(version) = autopipe_common::delta::latest_version(url).await? else {
        return Ok(());
    };
    let known = core.read(|s| {
        s.tables
            .get(url)
            .filter(|t| t.observed_ms > 0)
            .map(|t| (t.version, t.settings))
    });
    if known == Some((version, settings)) {
        return Ok(());
    }
    let table = table_files(url, version, settings).await?;
    core.propose(Command::TableObserved {
        table: Box::new(table),
    })
    .await
    .map_err(|e| Error::Transient(e.to_string()))?;
    Ok(())
}

/// Version `version` of table `url` as the compaction rule reads it.
pub async fn table_files(url: &str, version: u64, settings: Settings) -> Result<TableFiles> {
    let (store, _) = autopipe_common::store::store_for(&autopipe_common::store::parse_url(url)?)?;
    let (table, _) = autopipe_common::delta::open(url, store, Some(version)).await?;
    let table = table.ok_or_else(|| Error::Transient(format!("{url} is no delta table")))?;
    let state = table
        .snapshot()
        .map_err(autopipe_common::delta::delta_err(url))?;
    let mut t = TableFiles {
        url: url.to_string(),
        version,
        observed_ms: now_ms(),
        partition_by: state.metadata().partition_columns().to_vec(),
        columns: state
            .schema()
            .fields()
            .map(|f| f.name().to_string())
            .collect(),
        settings,
        ..Default::default()
    };
    for f in state.log_data().iter() {
        let rel = f.path().into_owned();
        let partition = rel
            .rsplit_once('/')
            .map_or(String::new(), |(d, _)| format!("{d}/"));
        let size = f.size().max(0) as u64;
        if size < settings.target_file_bytes {
            t.small.entry(partition).or_default().push((rel, size));
        } else {
            *t.large.entry(partition).or_default() += 1;
        }
    }
    Ok(t)
}

/// The spec of the job that carries out `c` on table `t`: it scans exactly the
/// chosen files of the observed version and appends target-sized files to the same
/// partition, with the table's columns in the table's order.
fn compaction_spec(core: &Core, c: &Compact, t: &TableFiles) -> Result<PipelineSpec> {
    let quoted: Vec<String> = t
        .columns
        .iter()
        .map(|c| format!("\"{}\"", c.replace('"', "\"\"")))
        .collect();
    let leaf = c
        .table
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or("table");
    let name: String = format!("compact-{leaf}")
        .to_lowercase()
        .chars()
        .map(|ch| {
            if ch.is_ascii_alphanumeric() || ch == '-' || ch == '_' {
                ch
            } else {
                '-'
            }
        })
        .collect();
    let spec = serde_json::json!({
        "job": {
            "name": name,
            "params": {
                "target_partition_bytes": t.settings.target_file_bytes,
            },
        },
        "sources": [{
            "name": "t",
            "format": "delta",
            "path": c.table,
            "version": c.version,
            "files": c.files,
        }],
        "transform": { "sql": format!("SELECT {} FROM t", quoted.join(", ")) },
        "sink": {
            "format": "delta",
            "path": c.table,
            "partition_by": t.partition_by,
            "mode": "append",
        },
    });
    let mut spec = PipelineSpec::parse(&spec.to_string(), "compaction")?;
    spec.job.params = std::mem::take(&mut spec.job.params).or_defaults(&core.config.default_params);
    Ok(spec)
}

/// Submits the compaction job of `c` and records its decision.
async fn start(core: &Core, c: &Compact, t: &TableFiles) -> Result<String> {
    let spec = compaction_spec(core, c, t)?;
    let planned = plan_batch(core, &spec).await?;
    let job_id = format!(
        "{}-{}-{}",
        spec.job.name,
        chrono::Utc::now().format("%Y%m%d%H%M%S"),
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    );
    // one job per table version and partition, whichever leader submits it
    let request_id = format!("compaction:{}@{}:{}", c.table, c.version, c.partition);
    let propose = |cmd| async {
        core.propose(cmd)
            .await
            .map_err(|e| Error::Transient(e.to_string()))
    };
    propose(Command::SubmitJob {
        job_id: job_id.clone(),
        spec: Box::new(spec),
        stages: planned.stages,
        at_ms: now_ms(),
        request_id,
        request_hash: 0,
        stream: None,
        sink_schema: planned.sink_schema,
        compaction: Some(Box::new(CompactionJob {
            table: c.table.clone(),
            version: c.version,
            partition: c.partition.clone(),
            files: c.files.clone(),
            bytes: c.bytes,
        })),
    })
    .await?;
    let s = t.settings;
    let partition = if c.partition.is_empty() {
        "(unpartitioned)"
    } else {
        c.partition.as_str()
    };
    propose(Command::RecordDecision {
        decision: Decision {
            id: 0,
            at_ms: now_ms(),
            job_id: job_id.clone(),
            kind: DecisionKind::Compaction,
            what: format!(
                "compact {} files ({} bytes) of partition {partition} of {} (version {}) into files of about {} bytes",
                c.files.len(), c.bytes, c.table, c.version, s.target_file_bytes
            ),
            why: format!(
                "size tier {} of the partition (files of {}..{} bytes) holds {} files, at least compaction_min_files = {}; the partition has {} files",
                c.tier,
                s.target_file_bytes / (s.min_files as u64).pow(c.tier + 1).max(1),
                s.target_file_bytes / (s.min_files as u64).pow(c.tier).max(1),
                c.files.len(),
                s.min_files,
                c.partition_files
            ),
            inputs: inputs([
                ("table", c.table.clone()),
                ("version", c.version.to_string()),
                ("partition", c.partition.clone()),
                ("files_before", c.partition_files.to_string()),
                ("files_compacted", c.files.len().to_string()),
                ("bytes_compacted", c.bytes.to_string()),
                ("tier", c.tier.to_string()),
                ("compaction_min_files", s.min_files.to_string()),
                ("compaction_target_file_bytes", s.target_file_bytes.to_string()),
                ("write_amplification", format!("{:.2}", t.write_amplification())),
            ]),
            effect: None,
        },
    })
    .await?;
    tracing::info!(job = %job_id, table = %c.table, partition, files = c.files.len(), "compaction started");
    Ok(job_id)
}

/// `autopipe table compact`: observes table `url` (a table a job wrote, with that
/// job's settings) and starts a compaction of every partition with two small files
/// or more; the jobs started. Refused while a compaction of the table runs.
pub async fn compact_now(core: &Core, url: &str) -> Result<Vec<String>> {
    let settings = core.read(watched).get(url).copied().ok_or_else(|| {
        Error::plan(
            "path",
            format!("no job of this cluster wrote the delta table {url}"),
        )
    })?;
    let version = autopipe_common::delta::latest_version(url)
        .await?
        .ok_or_else(|| Error::plan("path", format!("{url} is no delta table")))?;
    let t = table_files(url, version, settings).await?;
    core.propose(Command::TableObserved {
        table: Box::new(t.clone()),
    })
    .await
    .map_err(|e| Error::Transient(e.to_string()))?;
    if core.read(|s| compaction::busy(&s.jobs, &t)) {
        return Err(Error::Transient(format!(
            "a compaction of {url} is running; try again when it ended"
        )));
    }
    let mut jobs = vec![];
    for c in compaction::plan_manual(&t) {
        jobs.push(start(core, &c, &t).await?);
    }
    Ok(jobs)
}

/// Fills in the effect of each compaction decision whose job ended: for a
/// committed one once the table was observed after its commit.
async fn record_effects(core: &Core) {
    let done: Vec<(u64, String)> = core.read(|s| {
        let mut out = vec![];
        for d in s.decisions.iter().filter(|d| d.kind == DecisionKind::Compaction && d.effect.is_none()) {
            let Some(j) = s.jobs.get(&d.job_id) else { continue };
            let Some(c) = &j.compaction else { continue };
            let effect = match j.state {
                JobState::Succeeded if j.committed_files.is_empty() => {
                    "skipped: another commit removed one of its files first; nothing was rewritten".to_string()
                }
                JobState::Succeeded => {
                    let Some(t) = s.tables.get(&c.table).filter(|t| t.version > c.version && t.observed_ms >= j.finished_ms) else {
                        continue;
                    };
                    let written = j.sink_stage().bytes_out();
                    format!(
                        "rewrote {} files ({} bytes) into {} ({} bytes written); partition {} has {} files now (observed at version {}); the table's write amplification is {:.2} ({} bytes compacted, {} appended, {} compactions)",
                        c.files.len(),
                        c.bytes,
                        j.committed_files.len(),
                        written,
                        if c.partition.is_empty() { "(unpartitioned)" } else { &c.partition },
                        t.files_in(&c.partition),
                        t.version,
                        t.write_amplification(),
                        t.compacted_bytes,
                        t.appended_bytes,
                        t.compactions
                    )
                }
                JobState::Failed => format!(
                    "failed: {}",
                    j.error.as_ref().map_or("", |e| e.message.as_str())
                ),
                JobState::Cancelled => "cancelled".to_string(),
                _ => continue,
            };
            out.push((d.id, effect));
        }
        out
    });
    for (decision_id, effect) in done {
        if let Err(e) = core
            .propose(Command::DecisionEffect {
                decision_id,
                effect,
            })
            .await
        {
            tracing::debug!("cannot record a compaction's effect: {e}");
        }
    }
}
