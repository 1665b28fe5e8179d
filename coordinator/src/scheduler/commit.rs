//! Sink commit: moves the staged files of each sink task's winning attempt into the
//! sink directory. Idempotent, so a coordinator that restarts mid-commit redoes it:
//! in overwrite mode every object under the sink path that is not one of the new
//! files is deleted, then every staged file still in staging is renamed into place.
//! Losing attempts and failed jobs never reach the sink directory.

use super::{job_staging_root, staging_prefix};
use crate::state::{Job, TaskState};
use autopipe_common::error::{Error, Result};
use autopipe_common::spec::SinkMode;
use autopipe_common::store::{delete_prefix, parse_url, store_for};
use futures::TryStreamExt;
use object_store::path::Path as StorePath;
use object_store::ObjectStoreExt;
use std::collections::HashSet;

/// Moves the dead-letter files of every task's winning attempt into the job's
/// dead-letter directory (`s{stage}-t{task}.ndjson`); idempotent like the sink commit.
pub async fn commit_dead_letters(job: &Job) -> Result<Vec<String>> {
    let dir = job.dead_letter_dir();
    let mut out = vec![];
    for (si, st) in job.stages.iter().enumerate() {
        for (ti, t) in st.tasks.iter().enumerate() {
            let TaskState::Succeeded { result, .. } = &t.state else {
                continue;
            };
            if result.dead_letter_file.is_empty() {
                continue;
            }
            let dst_url = format!("{dir}s{si}-t{ti}.ndjson");
            let (src_store, src) = store_for(&parse_url(&result.dead_letter_file)?)?;
            let (dst_store, dst) = store_for(&parse_url(&dst_url)?)?;
            match src_store.get(&src).await {
                Ok(r) => {
                    let bytes = r.bytes().await?;
                    dst_store.put(&dst, bytes.into()).await?;
                }
                // already moved by an earlier, interrupted commit
                Err(object_store::Error::NotFound { .. }) if dst_store.head(&dst).await.is_ok() => {
                }
                Err(e) => return Err(e.into()),
            }
            out.push(dst_url);
        }
    }
    Ok(out)
}

/// Fails when the job's share of bad records is above its `max_bad_record_ratio`.
pub fn check_bad_records(job: &Job) -> Result<()> {
    let (read, bad) = job.record_counts();
    if bad == 0 {
        return Ok(());
    }
    let max = job.spec.job.params.max_bad_record_ratio();
    let ratio = bad as f64 / (read + bad) as f64;
    if ratio > max {
        return Err(Error::Data(format!(
            "bad-record ratio {ratio:.4} ({bad} of {} source records failed to parse or convert) exceeds max_bad_record_ratio = {max}; the bad records are in {}",
            read + bad,
            job.dead_letter_dir()
        )));
    }
    Ok(())
}

/// Commits `job`'s sink output; returns the committed files relative to the sink path.
/// The dead letters are committed first, and also when the bad-record ratio fails
/// the job (then nothing reaches the sink).
pub async fn commit_job(job: &Job) -> Result<Vec<String>> {
    commit_dead_letters(job).await?;
    if let Err(e) = check_bad_records(job) {
        discard_staging(job).await?;
        return Err(e);
    }
    let sink_url = parse_url(&job.spec.sink.path)?;
    let (store, sink_path) = store_for(&sink_url)?;
    let mut moves = Vec::new();
    for (ti, t) in job.sink_stage().tasks.iter().enumerate() {
        let TaskState::Succeeded {
            attempt, result, ..
        } = &t.state
        else {
            return Err(Error::Permanent(format!(
                "job {}: sink task {ti} has not succeeded",
                job.id
            )));
        };
        let (_, staged) = store_for(&parse_url(&staging_prefix(job, ti, *attempt))?)?;
        for rel in &result.files {
            moves.push((join(&staged, rel), join(&sink_path, rel), rel.clone()));
        }
    }
    let new: HashSet<String> = moves.iter().map(|(_, d, _)| d.to_string()).collect();
    if job.spec.sink.mode == SinkMode::Overwrite {
        let existing: Vec<StorePath> = store
            .list(Some(&sink_path))
            .map_ok(|m| m.location)
            .try_collect()
            .await?;
        for p in existing {
            if !new.contains(p.as_ref()) {
                store.delete(&p).await?;
            }
        }
        remove_empty_dirs(&sink_url);
    }
    for (src, dst, _) in &moves {
        match store.rename(src, dst).await {
            Ok(()) => {}
            // already moved by an earlier, interrupted commit
            Err(object_store::Error::NotFound { .. }) if store.head(dst).await.is_ok() => {}
            Err(e) => return Err(e.into()),
        }
    }
    discard_staging(job).await?;
    Ok(moves.into_iter().map(|(_, _, rel)| rel).collect())
}

/// Deletes the job's staging directory.
pub async fn discard_staging(job: &Job) -> Result<()> {
    let url = parse_url(&job_staging_root(job))?;
    let (store, root) = store_for(&url)?;
    delete_prefix(store.as_ref(), &root).await?;
    if url.scheme() == "file" {
        let dir = std::path::Path::new(url.path());
        let _ = std::fs::remove_dir_all(dir);
        if let Some(parent) = dir.parent() {
            let _ = std::fs::remove_dir(parent); // only if no other job stages there
        }
    }
    Ok(())
}

fn join(base: &StorePath, rel: &str) -> StorePath {
    rel.split('/')
        .filter(|s| !s.is_empty())
        .fold(base.clone(), |p, part| p.join(part))
}

/// Local filesystems keep empty hive directories after deletes; drop them.
fn remove_empty_dirs(url: &url::Url) {
    if url.scheme() != "file" {
        return;
    }
    fn walk(d: &std::path::Path) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            if e.path().is_dir() {
                walk(&e.path());
                let _ = std::fs::remove_dir(e.path());
            }
        }
    }
    walk(std::path::Path::new(url.path()));
}
