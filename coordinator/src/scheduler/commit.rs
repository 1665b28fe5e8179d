//! Sink commit: publishes the staged files of each sink task's winning attempt in the
//! sink directory, never destroying or half-publishing output:
//!
//! 1. an intent (`_commit.json` in the job's staging directory) records, once, the
//!    manifest found in the sink and the files the commit will replace;
//! 2. the old `_SUCCESS` marker goes, so readers see the output is in flux;
//! 3. every staged file is renamed into place (new files have fresh names);
//! 4. only then the replaced files are deleted: in overwrite mode what earlier
//!    autopipe commits listed in their manifest (or, with `overwrite_foreign = true`,
//!    everything else in the directory);
//! 5. `_SUCCESS` is written last: a JSON manifest of the job and its files (as
//!    Hadoop's S3A committers write it), which the next commit reads.
//!
//! Every step is idempotent, so a commit interrupted by a crash, a leader change or a
//! transient error is simply run again; a commit that finds its own manifest in place
//! is done. Each mutation first asks `fence` whether this coordinator still leads in
//! the term the commit started in. A permanent error rolls back what was published.
//! Losing attempts and failed jobs never reach the sink directory.

use super::{job_staging_root, staging_prefix};
use crate::state::{Job, PendingBatch, TaskState};
use autopipe_common::error::{Error, Result};
use autopipe_common::spec::{Format, SinkMode};
use autopipe_common::store::{delete_prefix, parse_url, store_for};
use autopipe_common::util::now_ms;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The marker (and manifest) of a finished output, written last.
pub const SUCCESS: &str = "_SUCCESS";

/// What `_SUCCESS` says: the job that committed the directory and its files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// always "autopipe"
    pub committer: String,
    /// the job that committed
    pub job_id: String,
    /// when
    pub committed_ms: u64,
    /// every file of the output, relative to the sink directory
    pub files: Vec<String>,
}

/// A commit's plan, written once before anything in the sink changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Intent {
    /// the manifest in place before the commit
    previous: Option<Manifest>,
    /// files (relative) the commit deletes once the new ones are in place
    replace: Vec<String>,
}

/// Checked before every change to the sink: an error stops the commit (a deposed
/// leader's commit must not race its successor's).
pub type Fence<'a> = &'a (dyn Fn() -> Result<()> + Send + Sync);

/// Moves the dead-letter files of every task's winning attempt into the job's
/// dead-letter directory (`s{stage}-t{task}.ndjson`); idempotent like the sink commit.
/// Files are renamed within one store and streamed between stores, never read whole.
pub async fn commit_dead_letters(job: &Job, fence: Fence<'_>) -> Result<Vec<String>> {
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
            fence()?;
            move_object(&result.dead_letter_file, &dst_url).await?;
            out.push(dst_url);
        }
    }
    Ok(out)
}

/// Moves one object: renamed within one store, streamed between stores (never read
/// whole). Idempotent: a source already moved (by an earlier, interrupted run) whose
/// destination exists is done.
async fn move_object(src_url: &str, dst_url: &str) -> Result<()> {
    let (src_u, dst_u) = (parse_url(src_url)?, parse_url(dst_url)?);
    let (src_store, src) = store_for(&src_u)?;
    let (dst_store, dst) = store_for(&dst_u)?;
    let same_store = src_u.scheme() == dst_u.scheme() && src_u.host() == dst_u.host();
    let r = if same_store {
        src_store.rename(&src, &dst).await
    } else {
        stream_copy(src_store.as_ref(), &src, dst_store.as_ref(), &dst).await
    };
    match r {
        Ok(()) => {
            if !same_store {
                delete_if_present(src_store.as_ref(), &src).await?;
            }
            Ok(())
        }
        Err(object_store::Error::NotFound { .. }) if dst_store.head(&dst).await.is_ok() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Publishes committed micro-batches of a streaming job (`Stream::pending`): every
/// staged file moves to its final name in the sink (or the dead-letter directory).
/// Idempotent, so a publish interrupted by a crash or a leader change runs again.
pub async fn publish_batches(batches: &[PendingBatch], fence: Fence<'_>) -> Result<()> {
    for b in batches {
        for (src, dst) in &b.moves {
            fence()?;
            move_object(src, dst).await?;
        }
    }
    Ok(())
}

/// Copies one object between stores as a stream of chunks (multipart upload).
async fn stream_copy(
    src_store: &dyn ObjectStore,
    src: &StorePath,
    dst_store: &dyn ObjectStore,
    dst: &StorePath,
) -> object_store::Result<()> {
    let mut body = src_store.get(src).await?.into_stream();
    let upload = dst_store.put_multipart(dst).await?;
    let mut w = object_store::WriteMultipart::new(upload);
    while let Some(chunk) = body.try_next().await? {
        w.write(&chunk);
    }
    w.finish().await?;
    Ok(())
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
pub async fn commit_job(job: &Job, fence: Fence<'_>) -> Result<Vec<String>> {
    commit_dead_letters(job, fence).await?;
    if let Err(e) = check_bad_records(job) {
        discard_staging(job).await?;
        return Err(e);
    }
    let sink_url = parse_url(&job.spec.sink.path)?;
    let (store, sink_path) = store_for(&sink_url)?;
    if job.spec.sink.format == Format::Delta {
        let files = commit_delta(store, &sink_path, job, fence).await?;
        discard_staging(job).await?;
        return Ok(files);
    }
    let (files, replaced) = commit_to(store.as_ref(), &sink_path, job, fence).await?;
    remove_empty_dirs(&sink_url, &replaced);
    discard_staging(job).await?;
    Ok(files)
}

/// The sink commit proper, on the sink's store: returns the committed files and the
/// files it replaced (both relative to the sink).
pub async fn commit_to(
    store: &dyn ObjectStore,
    sink: &StorePath,
    job: &Job,
    fence: Fence<'_>,
) -> Result<(Vec<String>, Vec<String>)> {
    let moves = staged_moves(job)?;
    let marker = join(sink, SUCCESS);
    let current = read_manifest(store, &marker).await?;
    if current.as_ref().is_some_and(|m| m.job_id == job.id) {
        // already committed
        return Ok((moves.into_iter().map(|(_, rel)| rel).collect(), vec![]));
    }
    let staging = parse_url(&job_staging_root(job))?;
    let (_, staging_root) = store_for(&staging)?;
    let intent_path = join(&staging_root, "_commit.json");
    let new: BTreeSet<String> = moves.iter().map(|(_, rel)| rel.clone()).collect();
    let intent = match store.get(&intent_path).await {
        Ok(r) => serde_json::from_slice::<Intent>(&r.bytes().await?).map_err(|e| {
            Error::Permanent(format!("job {}: unreadable commit intent: {e}", job.id))
        })?,
        Err(object_store::Error::NotFound { .. }) => {
            let replace = match job.spec.sink.mode {
                SinkMode::Append => vec![],
                _ if job.spec.sink.overwrite_foreign => {
                    let all: Vec<object_store::ObjectMeta> =
                        store.list(Some(sink)).try_collect().await?;
                    all.iter()
                        .filter_map(|m| relative(sink, &m.location))
                        .filter(|rel| rel != SUCCESS)
                        .collect()
                }
                _ => current.iter().flat_map(|m| m.files.clone()).collect(),
            };
            let intent = Intent {
                previous: current.clone(),
                replace,
            };
            fence()?;
            let body = serde_json::to_vec(&intent).expect("an intent serializes");
            store.put(&intent_path, PutPayload::from(body)).await?;
            intent
        }
        Err(e) => return Err(e.into()),
    };
    let published = publish(store, sink, &moves, &intent, fence).await;
    if let Err(e) = published {
        if e.class() == autopipe_common::error::ErrorClass::Permanent && fence().is_ok() {
            roll_back(store, sink, &moves, &intent).await;
        }
        return Err(e);
    }
    let mut files: Vec<String> = match job.spec.sink.mode {
        SinkMode::Append => intent
            .previous
            .iter()
            .flat_map(|m| m.files.iter().cloned())
            .filter(|f| !new.contains(f.as_str()))
            .collect(),
        _ => vec![],
    };
    let committed: Vec<String> = moves.into_iter().map(|(_, rel)| rel).collect();
    files.extend(committed.iter().cloned());
    let manifest = Manifest {
        committer: "autopipe".into(),
        job_id: job.id.clone(),
        committed_ms: now_ms(),
        files,
    };
    fence()?;
    let body = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
    store.put(&marker, PutPayload::from(body)).await?;
    let replaced = intent
        .replace
        .into_iter()
        .filter(|r| !new.contains(r.as_str()))
        .collect();
    Ok((committed, replaced))
}

/// A delta sink's commit: the winning attempts' files move into the table directory
/// (invisible to readers until the log names them; a move already made is skipped),
/// then one Delta transaction adds them (`crate::lake::delta::commit`, idempotent).
async fn commit_delta(
    store: std::sync::Arc<dyn ObjectStore>,
    table: &StorePath,
    job: &Job,
    fence: Fence<'_>,
) -> Result<Vec<String>> {
    let mut placed = vec![];
    for (src, rel) in staged_moves(job)? {
        let dst = join(table, &rel);
        fence()?;
        move_into_place(store.as_ref(), &src, &dst).await?;
        placed.push((rel, dst));
    }
    // each file's statistics from its footer, a few footers at a time
    let files: Vec<crate::lake::delta::NewFile> = futures::stream::iter(placed)
        .map(|(rel, dst)| {
            let store = store.clone();
            async move {
                let meta = store.head(&dst).await?;
                let stats = crate::lake::delta::file_stats(store.as_ref(), &meta).await?;
                Ok::<_, Error>(crate::lake::delta::NewFile {
                    path: rel,
                    size: meta.size,
                    stats: Some(stats),
                })
            }
        })
        .buffered(16)
        .try_collect()
        .await?;
    let schema = job
        .sink_schema
        .as_deref()
        .ok_or_else(|| Error::Permanent(format!("job {}: no table schema was planned", job.id)))?;
    let rels = files.iter().map(|f| f.path.clone()).collect();
    fence()?;
    // (fault tests: a leader killed with the files in place, the log not written)
    autopipe_common::failpoint::hit("delta.before_log_commit");
    let committed = crate::lake::delta::commit(crate::lake::delta::Commit {
        table_url: &job.spec.sink.path,
        store: store.clone(),
        job_id: &job.id,
        name: &job.spec.job.name,
        schema_json: schema,
        partition_by: &job.spec.sink.partition_by,
        mode: job.spec.sink.mode,
        files,
        now_ms: now_ms(),
        replaces: job.compaction.as_ref().map(|c| c.files.as_slice()),
    })
    .await?;
    match committed {
        crate::lake::delta::Committed::Version(version) => {
            tracing::info!(job = %job.id, version, "delta commit");
            // (fault tests: a leader killed with the version written, the job's
            // success not recorded)
            autopipe_common::failpoint::hit("delta.after_log_commit");
            Ok(rels)
        }
        crate::lake::delta::Committed::Skipped(why) => {
            // a compaction that lost to another commit: its files are no one's
            tracing::info!(job = %job.id, "compaction skipped: {why}");
            for rel in &rels {
                fence()?;
                delete_if_present(store.as_ref(), &join(table, rel)).await?;
            }
            Ok(vec![])
        }
    }
}

/// Steps 2 to 4: marker out, new files in, replaced files out.
async fn publish(
    store: &dyn ObjectStore,
    sink: &StorePath,
    moves: &[(StorePath, String)],
    intent: &Intent,
    fence: Fence<'_>,
) -> Result<()> {
    fence()?;
    delete_if_present(store, &join(sink, SUCCESS)).await?;
    for (src, rel) in moves {
        fence()?;
        move_into_place(store, src, &join(sink, rel)).await?;
    }
    let new: BTreeSet<&str> = moves.iter().map(|(_, rel)| rel.as_str()).collect();
    for rel in intent.replace.iter().filter(|r| !new.contains(r.as_str())) {
        fence()?;
        delete_if_present(store, &join(sink, rel)).await?;
    }
    Ok(())
}

/// Renames staged `src` to `dst`; done already when `src` is gone and `dst` is there
/// (moved by an earlier, interrupted commit).
async fn move_into_place(store: &dyn ObjectStore, src: &StorePath, dst: &StorePath) -> Result<()> {
    match store.rename(src, dst).await {
        Ok(()) => Ok(()),
        Err(object_store::Error::NotFound { .. }) if store.head(dst).await.is_ok() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// After a permanent error: the new files go back to staging and the previous marker
/// is restored, so the directory is what it was (best effort; logged).
async fn roll_back(
    store: &dyn ObjectStore,
    sink: &StorePath,
    moves: &[(StorePath, String)],
    intent: &Intent,
) {
    for (src, rel) in moves {
        let dst = join(sink, rel);
        if store.head(&dst).await.is_ok() && store.head(src).await.is_err() {
            if let Err(e) = store.rename(&dst, src).await {
                tracing::warn!("commit rollback: cannot move {dst} back to staging: {e}");
            }
        }
    }
    if let Some(m) = &intent.previous {
        let body = serde_json::to_vec_pretty(m).expect("a manifest serializes");
        if let Err(e) = store
            .put(&join(sink, SUCCESS), PutPayload::from(body))
            .await
        {
            tracing::warn!("commit rollback: cannot restore {SUCCESS}: {e}");
        }
    }
}

/// (staged file, path relative to the sink) of every sink task's winning attempt.
fn staged_moves(job: &Job) -> Result<Vec<(StorePath, String)>> {
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
            moves.push((join(&staged, rel), rel.clone()));
        }
    }
    Ok(moves)
}

/// The manifest in `_SUCCESS`, if there is one that autopipe wrote.
pub async fn read_manifest(
    store: &dyn ObjectStore,
    marker: &StorePath,
) -> Result<Option<Manifest>> {
    match store.get(marker).await {
        // an empty or foreign marker (Spark's) lists nothing autopipe committed
        Ok(r) => Ok(serde_json::from_slice::<Manifest>(&r.bytes().await?)
            .ok()
            .filter(|m| m.committer == "autopipe")),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn delete_if_present(store: &dyn ObjectStore, p: &StorePath) -> Result<()> {
    match store.delete(p).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
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

fn relative(base: &StorePath, p: &StorePath) -> Option<String> {
    p.prefix_match(base).map(|parts| {
        parts
            .map(|x| x.as_ref().to_string())
            .collect::<Vec<_>>()
            .join("/")
    })
}

/// Local filesystems keep empty hive directories after deletes: drop the directories
/// that deleting `removed` (relative paths) left empty, and no other.
fn remove_empty_dirs(url: &url::Url, removed: &[String]) {
    if url.scheme() != "file" {
        return;
    }
    let root = std::path::Path::new(url.path());
    for rel in removed {
        let mut dir = root.join(rel);
        while dir.pop() && dir.starts_with(root) && dir != root {
            if std::fs::remove_dir(&dir).is_err() {
                break; // not empty (or gone): its parents are not empty either
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{test_job, Command, State};
    use async_trait::async_trait;
    use futures::stream::BoxStream;
    use object_store::local::LocalFileSystem;
    use object_store::{
        CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta,
        PutMultipartOptions, PutOptions, PutResult, RenameOptions,
    };
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The local filesystem, except that rename number `fail_at` (from 1) fails once
    /// with `error`.
    #[derive(Debug)]
    struct FlakyStore {
        inner: LocalFileSystem,
        renames: AtomicUsize,
        fail_at: usize,
        permanent: bool,
    }

    impl FlakyStore {
        fn new(fail_at: usize, permanent: bool) -> Self {
            Self {
                inner: LocalFileSystem::new(),
                renames: AtomicUsize::new(0),
                fail_at,
                permanent,
            }
        }
    }

    impl std::fmt::Display for FlakyStore {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "FlakyStore")
        }
    }

    #[async_trait]
    impl ObjectStore for FlakyStore {
        async fn put_opts(
            &self,
            p: &StorePath,
            payload: PutPayload,
            o: PutOptions,
        ) -> object_store::Result<PutResult> {
            self.inner.put_opts(p, payload, o).await
        }
        async fn put_multipart_opts(
            &self,
            p: &StorePath,
            o: PutMultipartOptions,
        ) -> object_store::Result<Box<dyn MultipartUpload>> {
            self.inner.put_multipart_opts(p, o).await
        }
        async fn get_opts(&self, p: &StorePath, o: GetOptions) -> object_store::Result<GetResult> {
            self.inner.get_opts(p, o).await
        }
        fn delete_stream(
            &self,
            locations: BoxStream<'static, object_store::Result<StorePath>>,
        ) -> BoxStream<'static, object_store::Result<StorePath>> {
            self.inner.delete_stream(locations)
        }
        fn list(
            &self,
            p: Option<&StorePath>,
        ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
            self.inner.list(p)
        }
        async fn list_with_delimiter(
            &self,
            p: Option<&StorePath>,
        ) -> object_store::Result<ListResult> {
            self.inner.list_with_delimiter(p).await
        }
        async fn copy_opts(
            &self,
            a: &StorePath,
            b: &StorePath,
            o: CopyOptions,
        ) -> object_store::Result<()> {
            self.inner.copy_opts(a, b, o).await
        }
        async fn rename_opts(
            &self,
            a: &StorePath,
            b: &StorePath,
            o: RenameOptions,
        ) -> object_store::Result<()> {
            if self.renames.fetch_add(1, Ordering::SeqCst) + 1 == self.fail_at {
                let source = "injected fault".into();
                return Err(if self.permanent {
                    object_store::Error::PermissionDenied {
                        path: a.to_string(),
                        source,
                    }
                } else {
                    object_store::Error::Generic {
                        store: "flaky",
                        source,
                    }
                });
            }
            self.inner.rename_opts(a, b, o).await
        }
    }

    /// A finished job `id` whose 2 sink tasks staged `files` (one list each) for a
    /// sink in `dir/out`.
    fn finished_job(dir: &Path, id: &str, files: [&[&str]; 2], extra: &str) -> Job {
        let mut s = State::default();
        let Command::SubmitJob {
            spec,
            stages,
            at_ms,
            ..
        } = test_job(1)
        else {
            unreachable!()
        };
        let mut spec = *spec;
        spec.sink.path = format!("file://{}/out", dir.display());
        if extra == "append" {
            spec.sink.mode = SinkMode::Append;
        }
        spec.sink.overwrite_foreign = extra == "foreign";
        s.apply(&Command::SubmitJob {
            job_id: id.into(),
            spec: Box::new(spec),
            stages,
            at_ms,
            request_id: String::new(),
            request_hash: 0,
            stream: None,
            sink_schema: None,
            compaction: None,
        })
        .unwrap();
        let mut job = s.jobs.remove(id).unwrap();
        for (ti, names) in files.iter().enumerate() {
            let staged = staging_prefix(&job, ti, 1);
            let dir = staged.trim_start_matches("file://");
            for n in *names {
                let p = Path::new(dir).join(n);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, format!("{id} {n}")).unwrap();
            }
            job.stages[1].tasks[ti].state = TaskState::Succeeded {
                attempt: 1,
                worker_id: "w".into(),
                result: crate::state::TaskResult {
                    files: names.iter().map(|n| n.to_string()).collect(),
                    ..Default::default()
                },
                started_ms: 0,
                finished_ms: 0,
            };
        }
        job
    }

    fn ok() -> Result<()> {
        Ok(())
    }

    fn sink(dir: &Path) -> StorePath {
        StorePath::from_filesystem_path(dir.join("out")).unwrap()
    }

    /// Files under `dir/out`, relative, sorted.
    fn listing(dir: &Path) -> Vec<String> {
        let mut out = vec![];
        fn walk(root: &Path, d: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    out.push(format!("{}/", p.strip_prefix(root).unwrap().display()));
                    walk(root, &p, out);
                } else {
                    out.push(p.strip_prefix(root).unwrap().display().to_string());
                }
            }
        }
        walk(&dir.join("out"), &dir.join("out"), &mut out);
        out.sort();
        out
    }

    async fn manifest(dir: &Path) -> Option<Manifest> {
        let store = LocalFileSystem::new();
        read_manifest(&store, &join(&sink(dir), SUCCESS))
            .await
            .unwrap()
    }

    fn foreign(dir: &Path) {
        std::fs::create_dir_all(dir.join("out/sub")).unwrap();
        std::fs::create_dir_all(dir.join("out/empty")).unwrap();
        std::fs::write(dir.join("out/notes.txt"), "mine").unwrap();
        std::fs::write(dir.join("out/sub/x.csv"), "mine too").unwrap();
    }

    #[tokio::test]
    async fn an_overwrite_replaces_what_autopipe_committed_and_keeps_foreign_files() {
        let d = tempfile::tempdir().unwrap();
        foreign(d.path());
        let store = LocalFileSystem::new();
        let j1 = finished_job(d.path(), "j1", [&["a.csv"], &["k=1/b.csv"]], "");
        commit_job(&j1, &ok).await.unwrap();
        let m = manifest(d.path()).await.unwrap();
        assert_eq!(
            (m.job_id.as_str(), m.files.clone()),
            ("j1", vec!["a.csv".to_string(), "k=1/b.csv".into()])
        );
        let j2 = finished_job(d.path(), "j2", [&["c.csv"], &[]], "");
        let (files, replaced) = commit_to(&store, &sink(d.path()), &j2, &ok).await.unwrap();
        assert_eq!(files, vec!["c.csv"]);
        assert_eq!(replaced, vec!["a.csv", "k=1/b.csv"]);
        remove_empty_dirs(&parse_url(&j2.spec.sink.path).unwrap(), &replaced);
        assert_eq!(
            listing(d.path()),
            vec![
                "_SUCCESS",
                "c.csv",
                "empty/",
                "notes.txt",
                "sub/",
                "sub/x.csv"
            ],
            "j1's files and its emptied k=1/ are gone; the user's files stay"
        );
        assert_eq!(manifest(d.path()).await.unwrap().files, vec!["c.csv"]);
        // asked for, foreign files go too
        let j3 = finished_job(d.path(), "j3", [&["e.csv"], &[]], "foreign");
        commit_job(&j3, &ok).await.unwrap();
        assert_eq!(listing(d.path()), vec!["_SUCCESS", "e.csv", "empty/"]);
    }

    #[tokio::test]
    async fn an_append_keeps_earlier_output_and_its_manifest_lists_both() {
        let d = tempfile::tempdir().unwrap();
        commit_job(&finished_job(d.path(), "j1", [&["a.csv"], &[]], ""), &ok)
            .await
            .unwrap();
        commit_job(
            &finished_job(d.path(), "j2", [&["b.csv"], &[]], "append"),
            &ok,
        )
        .await
        .unwrap();
        assert_eq!(listing(d.path()), vec!["_SUCCESS", "a.csv", "b.csv"]);
        assert_eq!(
            manifest(d.path()).await.unwrap().files,
            vec!["a.csv", "b.csv"]
        );
    }

    #[tokio::test]
    async fn a_transient_error_mid_commit_keeps_the_old_output_and_a_rerun_finishes() {
        let d = tempfile::tempdir().unwrap();
        commit_job(
            &finished_job(d.path(), "j1", [&["a.csv"], &["b.csv"]], ""),
            &ok,
        )
        .await
        .unwrap();
        let j2 = finished_job(d.path(), "j2", [&["c.csv"], &["d.csv"]], "");
        // the second rename fails: c.csv is in place, d.csv is not
        let flaky = FlakyStore::new(2, false);
        let e = commit_to(&flaky, &sink(d.path()), &j2, &ok)
            .await
            .unwrap_err();
        assert_eq!(
            e.class(),
            autopipe_common::error::ErrorClass::Transient,
            "{e}"
        );
        assert_eq!(
            listing(d.path()),
            vec!["a.csv", "b.csv", "c.csv"],
            "the old output is whole; no marker while the new one is incomplete"
        );
        // run again (the retry, or the next leader): it finishes
        commit_to(&flaky, &sink(d.path()), &j2, &ok).await.unwrap();
        assert_eq!(listing(d.path()), vec!["_SUCCESS", "c.csv", "d.csv"]);
        assert_eq!(manifest(d.path()).await.unwrap().job_id, "j2");
        // and once more: already committed, nothing changes
        let (files, _) = commit_to(&flaky, &sink(d.path()), &j2, &ok).await.unwrap();
        assert_eq!(files, vec!["c.csv", "d.csv"]);
        assert_eq!(listing(d.path()), vec!["_SUCCESS", "c.csv", "d.csv"]);
    }

    #[tokio::test]
    async fn a_permanent_error_mid_commit_restores_the_old_output() {
        let d = tempfile::tempdir().unwrap();
        commit_job(&finished_job(d.path(), "j1", [&["a.csv"], &[]], ""), &ok)
            .await
            .unwrap();
        let j2 = finished_job(d.path(), "j2", [&["c.csv"], &["d.csv"]], "");
        let e = commit_to(&FlakyStore::new(2, true), &sink(d.path()), &j2, &ok)
            .await
            .unwrap_err();
        assert_eq!(
            e.class(),
            autopipe_common::error::ErrorClass::Permanent,
            "{e}"
        );
        assert_eq!(listing(d.path()), vec!["_SUCCESS", "a.csv"]);
        assert_eq!(manifest(d.path()).await.unwrap().job_id, "j1");
    }

    #[tokio::test]
    async fn a_deposed_leaders_commit_stops_and_its_successor_finishes_it() {
        let d = tempfile::tempdir().unwrap();
        commit_job(&finished_job(d.path(), "j1", [&["a.csv"], &[]], ""), &ok)
            .await
            .unwrap();
        let j2 = finished_job(d.path(), "j2", [&["c.csv"], &["d.csv"]], "");
        // deposed after 3 checks: intent written, marker removed, c.csv moved
        let checks = AtomicUsize::new(0);
        let fence = || {
            if checks.fetch_add(1, Ordering::SeqCst) < 3 {
                Ok(())
            } else {
                Err(Error::Transient("deposed".into()))
            }
        };
        let store = LocalFileSystem::new();
        let e = commit_to(&store, &sink(d.path()), &j2, &fence)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("deposed"), "{e}");
        assert_eq!(listing(d.path()), vec!["a.csv", "c.csv"]);
        commit_to(&store, &sink(d.path()), &j2, &ok).await.unwrap();
        assert_eq!(listing(d.path()), vec!["_SUCCESS", "c.csv", "d.csv"]);
    }
}
