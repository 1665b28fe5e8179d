//! Object stores. All file I/O (sources, sinks, staging, commit) goes through
//! `object_store`. `file://` is the local filesystem; `memory://NAME` is a
//! process-wide in-memory store (useful for `autopipe local` and tests); `s3://BUCKET`
//! is Amazon S3 or any S3-compatible store, configured by the standard AWS_* variables.

use crate::error::{Error, Result};
use datafusion::execution::runtime_env::RuntimeEnv;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as StorePath;
use object_store::ObjectStore;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use url::Url;

fn memory_stores() -> &'static Mutex<HashMap<String, Arc<InMemory>>> {
    static M: OnceLock<Mutex<HashMap<String, Arc<InMemory>>>> = OnceLock::new();
    M.get_or_init(Default::default)
}

fn s3_stores() -> &'static Mutex<HashMap<String, Arc<dyn ObjectStore>>> {
    static M: OnceLock<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> = OnceLock::new();
    M.get_or_init(Default::default)
}

/// Parses a URL, naming it in the error.
pub fn parse_url(s: &str) -> Result<Url> {
    Url::parse(s).map_err(|e| Error::Permanent(format!("'{s}' is not a valid URL: {e}")))
}

/// The store that serves `url`, and the path of `url` inside it.
pub fn store_for(url: &Url) -> Result<(Arc<dyn ObjectStore>, StorePath)> {
    match url.scheme() {
        "file" => {
            let path = StorePath::from_url_path(url.path())
                .map_err(|e| Error::Permanent(format!("bad path in '{url}': {e}")))?;
            Ok((Arc::new(LocalFileSystem::new()), path))
        }
        "memory" => {
            let host = url.host_str().unwrap_or("").to_string();
            let store = memory_stores()
                .lock()
                .expect("memory store lock poisoned")
                .entry(host)
                .or_insert_with(|| Arc::new(InMemory::new()))
                .clone();
            let path = StorePath::from_url_path(url.path())
                .map_err(|e| Error::Permanent(format!("bad path in '{url}': {e}")))?;
            Ok((store, path))
        }
        "s3" => {
            // (the S3 client's HTTPS needs rustls' provider chosen)
            crate::tls::install_crypto_provider();
            let bucket = url
                .host_str()
                .ok_or_else(|| Error::Permanent(format!("'{url}' names no bucket")))?
                .to_string();
            let mut cache = s3_stores().lock().expect("s3 store lock poisoned");
            let store = match cache.get(&bucket) {
                Some(s) => s.clone(),
                None => {
                    // Credentials, region and endpoint come from the standard AWS_*
                    // environment (AWS_ENDPOINT and AWS_ALLOW_HTTP for S3-compatible stores).
                    let s: Arc<dyn ObjectStore> = Arc::new(
                        AmazonS3Builder::from_env()
                            .with_bucket_name(&bucket)
                            .build()
                            .map_err(|e| {
                                Error::Permanent(format!("cannot configure S3 for '{url}': {e}"))
                            })?,
                    );
                    cache.insert(bucket, s.clone());
                    s
                }
            };
            let path = StorePath::from_url_path(url.path())
                .map_err(|e| Error::Permanent(format!("bad path in '{url}': {e}")))?;
            Ok((store, path))
        }
        other => Err(Error::Permanent(format!(
            "object store scheme '{other}://' is not supported (use file://, memory:// or s3://)"
        ))),
    }
}

/// Registers the store for each URL with a DataFusion runtime (file:// is built in).
pub fn register_stores(runtime: &RuntimeEnv, urls: &[String]) -> Result<()> {
    for u in urls {
        let url = parse_url(u)?;
        if url.scheme() == "file" {
            continue;
        }
        let (store, _) = store_for(&url)?;
        let base = Url::parse(&format!(
            "{}://{}",
            url.scheme(),
            url.host_str().unwrap_or("")
        ))
        .map_err(|e| Error::Permanent(e.to_string()))?;
        runtime.register_object_store(&base, store);
    }
    Ok(())
}

/// Deletes every object under `prefix`.
pub async fn delete_prefix(store: &dyn ObjectStore, prefix: &StorePath) -> Result<()> {
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;
    let objects: Vec<StorePath> = store
        .list(Some(prefix))
        .map_ok(|m| m.location)
        .try_collect()
        .await?;
    for p in objects {
        store.delete(&p).await?;
    }
    Ok(())
}

/// Writes `bytes` as the object at `url` (whole: a reader sees all of it or none).
pub async fn put_url(url: &str, bytes: Vec<u8>) -> Result<()> {
    use object_store::ObjectStoreExt;
    let (store, path) = store_for(&parse_url(url)?)?;
    store.put(&path, bytes.into()).await?;
    Ok(())
}

/// Reads the object at `url`.
pub async fn get_url(url: &str) -> Result<Vec<u8>> {
    use object_store::ObjectStoreExt;
    let (store, path) = store_for(&parse_url(url)?)?;
    Ok(store.get(&path).await?.bytes().await?.to_vec())
}

/// Deletes the object at `url`; one already gone is not an error.
pub async fn delete_url(url: &str) -> Result<()> {
    use object_store::ObjectStoreExt;
    let (store, path) = store_for(&parse_url(url)?)?;
    match store.delete(&path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The characters that make a source path a glob (as the `glob` crate reads them).
const GLOB_CHARS: [char; 3] = ['*', '?', '['];

/// Whether a source path or URL is a glob.
pub fn is_glob(path: &str) -> bool {
    path.contains(GLOB_CHARS)
}

/// A glob split at its longest literal directory prefix: `(prefix, pattern)`, the
/// prefix up to and including the last `/` before the first glob character
/// (`file:///a/b/*.parquet` → `file:///a/b/`, `/a/b*/c.csv` → `/a/`,
/// `s3://bucket/x/y/**/*.csv` → `s3://bucket/x/y/`). `None` when `path` is no glob.
pub fn glob_prefix(path: &str) -> Option<(&str, &str)> {
    let first = path.find(GLOB_CHARS)?;
    let cut = path[..first].rfind('/').map_or(0, |i| i + 1);
    Some(path.split_at(cut))
}

/// The files that the glob URL `url` names, ending in `ext`, sorted by path. Only the
/// glob's literal prefix is listed (one level when the pattern has no `/`), never the
/// whole store. The pattern matches paths relative to the prefix; `*`, `?` and `[…]`
/// stay within one path segment and `**` crosses segments, as in a shell.
pub async fn list_glob(
    store: &dyn ObjectStore,
    url: &str,
    ext: &str,
) -> Result<Vec<object_store::ObjectMeta>> {
    use futures::TryStreamExt;
    let Some((prefix, pattern)) = glob_prefix(url) else {
        return Err(Error::Permanent(format!("'{url}' is not a glob")));
    };
    let prefix_url = parse_url(prefix)
        .ok()
        .filter(|u| u.scheme() == "file" || !u.host_str().unwrap_or("").is_empty())
        .ok_or_else(|| {
            Error::Permanent(format!(
                "'{url}': a glob must come after the scheme and bucket (e.g. s3://bucket/dir/*.csv)"
            ))
        })?;
    let glob = glob::Pattern::new(pattern)
        .map_err(|e| Error::Permanent(format!("bad glob '{pattern}' in '{url}': {e}")))?;
    let base = StorePath::from_url_path(prefix_url.path())
        .map_err(|e| Error::Permanent(format!("bad path in '{url}': {e}")))?;
    let listed: Vec<object_store::ObjectMeta> = if pattern.contains('/') {
        store.list(Some(&base)).try_collect().await?
    } else {
        store.list_with_delimiter(Some(&base)).await?.objects
    };
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    };
    let mut files: Vec<_> = listed
        .into_iter()
        .filter(|m| {
            let loc = m.location.as_ref();
            let rel = match loc.strip_prefix(base.as_ref()) {
                Some(r) if base.as_ref().is_empty() => r,
                Some(r) => match r.strip_prefix('/') {
                    Some(r) => r,
                    None => return false,
                },
                None => return false,
            };
            loc.ends_with(ext) && glob.matches_with(rel, options)
        })
        .collect();
    files.sort_by(|a, b| a.location.cmp(&b.location));
    Ok(files)
}

/// Joins a directory URL and a relative path.
pub fn join_url(dir: &str, rel: &str) -> String {
    let mut d = dir.to_string();
    if !d.ends_with('/') {
        d.push('/');
    }
    d + rel.trim_start_matches('/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::{ObjectStoreExt, PutPayload};

    #[test]
    fn a_glob_is_split_at_its_longest_literal_directory() {
        assert_eq!(glob_prefix("/a/b/*.parquet"), Some(("/a/b/", "*.parquet")));
        assert_eq!(glob_prefix("/a/b*/c.csv"), Some(("/a/", "b*/c.csv")));
        assert_eq!(
            glob_prefix("s3://bucket/x/y/**/*.csv"),
            Some(("s3://bucket/x/y/", "**/*.csv"))
        );
        assert_eq!(
            glob_prefix("file:///data/events/part-?.parquet"),
            Some(("file:///data/events/", "part-?.parquet"))
        );
        assert_eq!(
            glob_prefix("file:///data/[ab]/x.csv"),
            Some(("file:///data/", "[ab]/x.csv"))
        );
        assert_eq!(glob_prefix("*.csv"), Some(("", "*.csv")));
        assert_eq!(glob_prefix("file:///data/events/"), None);
        assert_eq!(glob_prefix("s3://bucket/x.csv"), None);
        assert!(is_glob("data/*.csv") && !is_glob("data/x.csv"));
    }

    #[tokio::test]
    async fn a_glob_lists_the_matching_files_below_its_prefix() {
        let store = InMemory::new();
        for p in [
            "other/a.parquet",
            "data/a.parquet",
            "data/b.parquet",
            "data/b.parquet.bak",
            "data/notes.txt",
            "data/sub/c.parquet",
            "data/sub/deeper/d.parquet",
            "data2/e.parquet",
        ] {
            store
                .put(&StorePath::from(p), PutPayload::from_static(b"x"))
                .await
                .unwrap();
        }
        let names = |url: &'static str, ext: &'static str| {
            let store = &store;
            async move {
                list_glob(store, url, ext)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|m| m.location.to_string())
                    .collect::<Vec<_>>()
            }
        };
        // `*` stays within its directory
        assert_eq!(
            names("memory://t/data/*.parquet", ".parquet").await,
            ["data/a.parquet", "data/b.parquet"]
        );
        // `**` crosses directories
        assert_eq!(
            names("memory://t/data/**/*.parquet", ".parquet").await,
            [
                "data/a.parquet",
                "data/b.parquet",
                "data/sub/c.parquet",
                "data/sub/deeper/d.parquet"
            ]
        );
        // a glob in a directory name
        assert_eq!(
            names("memory://t/data?/*.parquet", ".parquet").await,
            ["data2/e.parquet"]
        );
        assert_eq!(
            names("memory://t/data*/*.parquet", ".parquet").await,
            ["data/a.parquet", "data/b.parquet", "data2/e.parquet"]
        );
        assert_eq!(
            names("memory://t/data/?.parquet", "").await,
            ["data/a.parquet", "data/b.parquet"]
        );
        assert_eq!(
            names("memory://t/data/b.*", "").await,
            ["data/b.parquet", "data/b.parquet.bak"]
        );
        assert_eq!(
            names("memory://t/data/b.*", ".parquet").await,
            ["data/b.parquet"]
        );
        assert!(names("memory://t/none/*.parquet", "").await.is_empty());
    }

    #[tokio::test]
    async fn a_glob_in_the_bucket_name_is_refused() {
        let e = list_glob(&InMemory::new(), "s3://bu*/x.csv", "")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("bucket"), "{e}");
    }
}
