//! The command log on sled: key = big-endian u64 index, value = JSON command.
//! Each append is flushed before the command is applied.

use super::commands::Command;
use std::path::Path;

/// Append-only command log.
pub struct CommandLog {
    tree: sled::Tree,
    _db: sled::Db,
    next: u64,
}

/// Log I/O or decoding failure.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// sled failed
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// an entry could not be (de)serialized
    #[error("entry {index}: {message}")]
    Codec {
        /// log index
        index: u64,
        /// serde's message
        message: String,
    },
}

impl CommandLog {
    /// Opens the log under `dir/state`.
    pub fn open(dir: &Path) -> Result<Self, LogError> {
        let db = sled::open(dir.join("state"))?;
        let tree = db.open_tree("commands")?;
        let next = match tree.last()? {
            Some((k, _)) => u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8])) + 1,
            None => 0,
        };
        Ok(Self {
            tree,
            _db: db,
            next,
        })
    }

    /// Appends and flushes one command.
    pub fn append(&mut self, cmd: &Command) -> Result<u64, LogError> {
        let index = self.next;
        let bytes = serde_json::to_vec(cmd).map_err(|e| LogError::Codec {
            index,
            message: e.to_string(),
        })?;
        self.tree.insert(index.to_be_bytes(), bytes)?;
        self.tree.flush()?;
        self.next += 1;
        Ok(index)
    }

    /// All commands in order.
    pub fn replay(&self) -> Result<Vec<Command>, LogError> {
        let mut out = Vec::new();
        for kv in self.tree.iter() {
            let (k, v) = kv?;
            let index = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8]));
            out.push(serde_json::from_slice(&v).map_err(|e| LogError::Codec {
                index,
                message: e.to_string(),
            })?);
        }
        Ok(out)
    }

    /// Number of entries.
    pub fn len(&self) -> u64 {
        self.next
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.next == 0
    }
}
