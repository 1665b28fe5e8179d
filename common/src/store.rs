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

/// Joins a directory URL and a relative path.
pub fn join_url(dir: &str, rel: &str) -> String {
    let mut d = dir.to_string();
    if !d.ends_with('/') {
        d.push('/');
    }
    d + rel.trim_start_matches('/')
}
