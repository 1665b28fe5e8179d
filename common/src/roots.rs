//! Path confinement (`--allowed-roots ROOT,...`): the local directories and object
//! store prefixes a cluster may read and write. The coordinator refuses, at submit, a
//! spec whose source, sink, staging or dead-letter location lies outside every root;
//! a worker refuses a task whose staging or dead-letter URL does. Without roots every
//! path is allowed, as before.
//!
//! Matching is on path components after lexical normalization (`.` dropped, `..`
//! applied, percent-escapes decoded), never on string prefixes: `/data` allows
//! `/data/x`, not `/data2/x` nor `/data/../etc`. A URL matches a root of the same
//! scheme and authority (the bucket of `s3://`, the store of `memory://`) whose path
//! components it starts with. Symbolic links are not resolved: a link under a root
//! that points outside it is followed (the paths may not exist yet, and the
//! coordinator and workers need not share a filesystem).

use crate::error::{Error, Result};
use crate::spec::PipelineSpec;
use std::path::{Component, Path};

/// Where a cluster may read and write; empty: anywhere.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedRoots {
    roots: Vec<Location>,
    shown: Vec<String>,
}

/// A normalized local path or URL: scheme, authority and path components.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Location {
    scheme: String,
    authority: String,
    segments: Vec<String>,
}

impl AllowedRoots {
    /// Roots from a comma-separated list of local paths (relative ones are taken from
    /// the current directory) and URLs; an empty list restricts nothing.
    pub fn parse(list: &str) -> Result<Self> {
        let roots: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(str::to_string)
            .collect();
        Self::new(&roots)
    }

    /// Roots from a list of local paths and URLs.
    pub fn new(roots: &[String]) -> Result<Self> {
        let mut out = Self::default();
        for r in roots {
            let loc = Location::parse(r).map_err(|e| {
                Error::Permanent(format!("--allowed-roots: '{r}' is not a path or URL: {e}"))
            })?;
            out.shown.push(loc.to_string());
            out.roots.push(loc);
        }
        Ok(out)
    }

    /// Whether any root is set (without one, every path is allowed).
    pub fn is_restricted(&self) -> bool {
        !self.roots.is_empty()
    }

    /// The roots as given, normalized, comma-separated.
    pub fn display(&self) -> String {
        self.shown.join(",")
    }

    /// Whether `path` (a local path or URL) lies under some root.
    pub fn allows(&self, path: &str) -> bool {
        if self.roots.is_empty() {
            return true;
        }
        match Location::parse(path) {
            Ok(p) => self.roots.iter().any(|r| r.contains(&p)),
            Err(_) => false,
        }
    }

    /// `Ok` when `path` lies under some root; otherwise a message naming the path and
    /// the roots.
    pub fn check(&self, path: &str) -> std::result::Result<(), String> {
        if self.allows(path) {
            return Ok(());
        }
        Err(format!(
            "'{path}' lies outside every allowed root (--allowed-roots {}); use a path under one of them",
            self.display()
        ))
    }

    /// Checks every location a job of `spec` reads or writes: each source, the sink,
    /// the sink's staging directory (a hidden sibling of it) and the dead-letter
    /// directory. The error is a spec error naming the key.
    pub fn check_spec(&self, spec: &PipelineSpec, origin: &str) -> Result<()> {
        if self.roots.is_empty() {
            return Ok(());
        }
        let err = |key: String, message: String| Error::Spec {
            origin: origin.to_string(),
            key,
            message,
        };
        for (i, s) in spec.sources.iter().enumerate() {
            if s.format == crate::spec::Format::Kafka {
                continue; // brokers, not a path
            }
            self.check(&s.path)
                .map_err(|m| err(format!("sources[{i}].path"), m))?;
        }
        let kafka_sink = spec.sink.format == crate::spec::Format::Kafka;
        if !kafka_sink {
            self.check(&spec.sink.path)
                .map_err(|m| err("sink.path".into(), m))?;
        }
        let staging = spec.sink.staging_dir();
        self.check(&staging).map_err(|m| {
            err(
                "sink.path".into(),
                format!(
                    "the sink's staging directory (a hidden sibling of the sink): {m}; \
                     put the sink at least one level below a root"
                ),
            )
        })?;
        let dead = spec.sink.dead_letter_root();
        self.check(&dead).map_err(|m| {
            let default = if spec.sink.dead_letter_path.is_none() {
                " (the default: the sink path with \".dead-letter\" appended)"
            } else {
                ""
            };
            err(
                "sink.dead_letter_path".into(),
                format!("the dead-letter directory{default}: {m}"),
            )
        })?;
        Ok(())
    }
}

impl Location {
    fn parse(s: &str) -> std::result::Result<Self, String> {
        if s.contains("://") {
            let url = url::Url::parse(s).map_err(|e| e.to_string())?;
            let scheme = url.scheme().to_ascii_lowercase();
            let mut authority = url.host_str().unwrap_or("").to_string();
            if scheme == "file" && authority.eq_ignore_ascii_case("localhost") {
                authority.clear();
            }
            if let Some(port) = url.port() {
                authority = format!("{authority}:{port}");
            }
            let decoded = percent_decode(url.path())?;
            Ok(Self {
                scheme,
                authority,
                segments: normalize(decoded.split('/')),
            })
        } else {
            let abs = std::path::absolute(Path::new(s)).map_err(|e| e.to_string())?;
            let mut segments: Vec<String> = vec![];
            for c in abs.components() {
                match c {
                    Component::Normal(n) => segments.push(
                        n.to_str()
                            .ok_or_else(|| "the path is not UTF-8".to_string())?
                            .to_string(),
                    ),
                    Component::ParentDir => {
                        segments.pop();
                    }
                    Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
                }
            }
            Ok(Self {
                scheme: "file".into(),
                authority: String::new(),
                segments,
            })
        }
    }

    /// Whether `other` is this location or lies below it.
    fn contains(&self, other: &Location) -> bool {
        self.scheme == other.scheme
            && self.authority == other.authority
            && other.segments.starts_with(&self.segments)
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.scheme == "file" && self.authority.is_empty() {
            return write!(f, "/{}", self.segments.join("/"));
        }
        write!(
            f,
            "{}://{}/{}",
            self.scheme,
            self.authority,
            self.segments.join("/")
        )
    }
}

/// Path components with `.` and empty ones dropped and `..` applied (at the top it
/// stays at the top, as a filesystem does).
fn normalize<'a>(parts: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    for p in parts {
        match p {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            other => out.push(other.to_string()),
        }
    }
    out
}

/// `%XX` escapes decoded (so `%2e%2e` is `..` and `%2f` a separator, as the stores
/// read them); invalid UTF-8 is refused.
fn percent_decode(s: &str) -> std::result::Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).map_err(|_| "the path is not UTF-8 once decoded".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roots(list: &str) -> AllowedRoots {
        AllowedRoots::parse(list).unwrap()
    }

    #[test]
    fn a_local_root_allows_paths_below_it_by_component() {
        let r = roots("/data");
        assert!(r.allows("/data"));
        assert!(r.allows("/data/x"));
        assert!(r.allows("/data/x/y.parquet"));
        assert!(r.allows("file:///data/x/"));
        assert!(r.allows("/data/./x"));
        assert!(r.allows("/data/x/../y"));
        assert!(!r.allows("/data2/x"));
        assert!(!r.allows("file:///data2/x"));
        assert!(!r.allows("/etc/passwd"));
        assert!(!r.allows("/"));
    }

    #[test]
    fn dot_dot_and_escapes_cannot_leave_a_root() {
        let r = roots("/data");
        assert!(!r.allows("/data/../etc"));
        assert!(!r.allows("/data/x/../../etc"));
        assert!(!r.allows("file:///data/../etc"));
        assert!(!r.allows("file:///data/%2e%2e/etc"));
        assert!(!r.allows("file:///data/x%2f..%2f..%2fetc"));
        // a root given with dots is normalized too
        let r = roots("/srv/in/../data/");
        assert!(r.allows("/srv/data/x"));
        assert!(!r.allows("/srv/in/x"));
    }

    #[test]
    fn urls_match_by_scheme_bucket_and_prefix() {
        let r = roots("s3://bucket/in,memory://mem");
        assert!(r.allows("s3://bucket/in/x.parquet"));
        assert!(r.allows("s3://bucket/in"));
        assert!(!r.allows("s3://bucket/input/x"));
        assert!(!r.allows("s3://bucket/other/x"));
        assert!(!r.allows("s3://bucket2/in/x"));
        assert!(!r.allows("s3://bucket/in/../out/x"));
        assert!(!r.allows("file:///in/x"));
        assert!(!r.allows("/bucket/in/x"));
        assert!(r.allows("memory://mem/anything"));
        assert!(!r.allows("memory://other/x"));
    }

    #[test]
    fn without_roots_everything_is_allowed() {
        let r = roots("");
        assert!(!r.is_restricted());
        assert!(r.allows("/etc/passwd"));
        assert!(r.allows("s3://any/x"));
    }

    #[test]
    fn the_refusal_names_the_path_and_the_roots() {
        let r = roots("/data,s3://b/p");
        let m = r.check("/etc/x").unwrap_err();
        assert!(
            m.contains("'/etc/x'") && m.contains("/data,s3://b/p"),
            "{m}"
        );
    }

    #[test]
    fn a_spec_is_checked_at_every_location_with_its_key() {
        let spec = |sink: &str, dead: Option<&str>| {
            let dead = dead
                .map(|d| format!("dead_letter_path = \"{d}\"\n"))
                .unwrap_or_default();
            PipelineSpec::parse(
                &format!(
                    "[job]\nname = \"j\"\n[[sources]]\nname = \"t\"\nformat = \"csv\"\npath = \"file:///data/in/t.csv\"\n\
                     [transform]\nsql = \"SELECT * FROM t\"\n[sink]\nformat = \"csv\"\npath = \"{sink}\"\n{dead}"
                ),
                "t.toml",
            )
            .unwrap()
        };
        let r = roots("/data");
        r.check_spec(&spec("file:///data/out/", None), "t.toml")
            .unwrap();
        let e = r
            .check_spec(&spec("file:///tmp/out/", None), "t.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("[sink.path]") && e.contains("file:///tmp/out/"),
            "{e}"
        );
        // the sink is a root itself: its staging sibling lies outside
        let e = roots("/data/out")
            .check_spec(&spec("file:///data/out/", None), "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("[sources[0].path]"), "{e}");
        let e = roots("/data/in,/data/out")
            .check_spec(&spec("file:///data/out/", None), "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("[sink.path]") && e.contains("staging"), "{e}");
        let e = r
            .check_spec(
                &spec("file:///data/out/", Some("file:///var/bad")),
                "t.toml",
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("[sink.dead_letter_path]") && e.contains("/var/bad"),
            "{e}"
        );
    }
}
