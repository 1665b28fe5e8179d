//! The worker's id, kept in its work dir (`<work_dir>/worker-id`) so that a restarted
//! worker registers under the id it had: the coordinator then shows one entry for it,
//! not a dead one beside a new one. The coordinator assigns the id at the first
//! registration; the worker saves it and sends it with every later registration.
//!
//! Two workers must not share a work dir (they would share this id, and their shuffle
//! files).

use std::path::{Path, PathBuf};

/// The file that holds the id.
pub fn id_file(work_dir: &Path) -> PathBuf {
    work_dir.join("worker-id")
}

/// The saved id, if there is a usable one (a missing, unreadable or malformed file is
/// no id: the coordinator assigns a new one, and it is saved again).
pub fn load(work_dir: &Path) -> Option<String> {
    let path = id_file(work_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), "cannot read the saved worker id, registering as a new worker: {e}");
            return None;
        }
    };
    let id = text.trim();
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        tracing::warn!(path = %path.display(), "the saved worker id is malformed, registering as a new worker");
        return None;
    }
    Some(id.to_string())
}

/// Saves `id` (written to a temporary file and renamed, so a crash never leaves half an
/// id). A failure is logged: the worker runs on, and registers anew after a restart.
pub fn save(work_dir: &Path, id: &str) {
    let path = id_file(work_dir);
    let tmp = work_dir.join(".worker-id.tmp");
    let r = std::fs::write(&tmp, format!("{id}\n")).and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = r {
        tracing::warn!(path = %path.display(), "cannot save the worker id; a restart will register a new worker: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_id_is_loaded_back_and_a_malformed_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()), None);
        save(dir.path(), "w-1a2b3c4d");
        assert_eq!(load(dir.path()).as_deref(), Some("w-1a2b3c4d"));
        save(dir.path(), "w-other");
        assert_eq!(load(dir.path()).as_deref(), Some("w-other"));
        for bad in ["", "../../etc", "a b", "x".repeat(65).as_str()] {
            std::fs::write(id_file(dir.path()), bad).unwrap();
            assert_eq!(load(dir.path()), None, "{bad:?}");
        }
    }
}
