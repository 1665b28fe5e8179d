//! raft-rs `Storage` on sled: the Raft log, hard state, conf state and the latest
//! snapshot of one coordinator, under `<data-dir>/raft`.
//!
//! Layout: tree `log` maps a big-endian index to an `Entry` (protobuf bytes); tree
//! `meta` holds `hard_state`, `conf_state` and `snapshot` (metadata + state-machine
//! bytes). The log always holds the contiguous entries `snapshot.index + 1 ..= last`,
//! so `first_index` is `snapshot.index + 1` and the term of `first_index - 1` is the
//! snapshot's term. Writes of one `Ready` are made durable by one `flush` (group commit);
//! sled recovers a prefix of its writes after `kill -9`, and raft-rs re-sends whatever
//! was not acknowledged.

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage as _, StorageError};
use std::path::Path;

const HARD_STATE: &[u8] = b"hard_state";
const CONF_STATE: &[u8] = b"conf_state";
const SNAPSHOT: &[u8] = b"snapshot";

/// What a leader's snapshot for a follower is made of: the applied index and the
/// state machine's bytes at that index.
pub type SnapshotSource = Box<dyn Fn() -> raft::Result<(u64, Vec<u8>)> + Send>;

/// The durable Raft state of one node.
pub struct SledStorage {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    /// cached: the latest snapshot's metadata (index, term, conf state)
    snap_meta: SnapshotMetadata,
    /// cached: last index in the log (or the snapshot index when the log is empty)
    last: u64,
    /// makes a snapshot of the current applied state for a follower behind the log
    source: Option<SnapshotSource>,
}

/// A sled or codec failure, as raft-rs's error type (it aborts the node: a coordinator
/// that cannot read its own log must not vote).
fn store_err(e: impl std::fmt::Display) -> raft::Error {
    raft::Error::Store(StorageError::Other(e.to_string().into()))
}

fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl SledStorage {
    /// Opens (or creates) the storage in `dir`. The directory's lock is waited for
    /// up to 5 s: a coordinator restarted in the same process (tests, `autopipe
    /// local`) may find its previous instance's last tasks still letting go of it.
    pub fn open(dir: &Path) -> raft::Result<Self> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let db = loop {
            match sled::open(dir) {
                Ok(db) => break db,
                // sled reports a held lock as ErrorKind::Other with this text
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => return Err(store_err(e)),
            }
        };
        let log = db.open_tree("log").map_err(store_err)?;
        let meta = db.open_tree("meta").map_err(store_err)?;
        let snap_meta = match meta.get(SNAPSHOT).map_err(store_err)? {
            Some(b) => Snapshot::parse_from_bytes(&b)
                .map_err(store_err)?
                .take_metadata(),
            None => SnapshotMetadata::default(),
        };
        let last = match log.last().map_err(store_err)? {
            Some((k, _)) => u64::from_be_bytes(k.as_ref().try_into().map_err(store_err)?),
            None => snap_meta.index,
        };
        Ok(Self {
            db,
            log,
            meta,
            snap_meta,
            last,
            source: None,
        })
    }

    /// Where snapshots for followers come from: without it, the latest stored one.
    pub fn set_snapshot_source(&mut self, source: SnapshotSource) {
        self.source = Some(source);
    }

    /// True when the node has never been part of a group (no voters, no snapshot).
    pub fn is_empty(&self) -> raft::Result<bool> {
        Ok(!self.initial_state()?.initialized())
    }

    /// Bootstraps a new group: a snapshot at index 1, term 1, with `voters` and the
    /// state-machine bytes `data`. Every founding member writes the same one, so a
    /// member added later (whose log is empty) is sent this snapshot or a later one and
    /// learns the founding membership from it.
    pub fn bootstrap(&mut self, voters: Vec<u64>, data: Vec<u8>) -> raft::Result<()> {
        let mut snap = Snapshot::default();
        snap.set_data(data.into());
        let m = snap.mut_metadata();
        m.index = 1;
        m.term = 1;
        m.mut_conf_state().voters = voters;
        self.apply_snapshot(snap)?;
        self.flush()
    }

    /// Appends `entries`, replacing any conflicting suffix (entries at or after the
    /// first new index). Not durable until `flush`.
    pub fn append(&mut self, entries: &[Entry]) -> raft::Result<()> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        if first.index <= self.snap_meta.index {
            return Err(store_err(format!(
                "append at {} overwrites the snapshot at {}",
                first.index, self.snap_meta.index
            )));
        }
        if first.index > self.last + 1 {
            return Err(store_err(format!(
                "append at {} leaves a gap after {}",
                first.index, self.last
            )));
        }
        let mut batch = sled::Batch::default();
        for i in first.index..=self.last {
            batch.remove(&key(i)[..]);
        }
        for e in entries {
            batch.insert(&key(e.index)[..], e.write_to_bytes().map_err(store_err)?);
        }
        self.log.apply_batch(batch).map_err(store_err)?;
        self.last = entries.last().map(|e| e.index).unwrap_or(self.last);
        Ok(())
    }

    /// Stores the hard state. Not durable until `flush`.
    pub fn set_hard_state(&mut self, hs: &HardState) -> raft::Result<()> {
        self.meta
            .insert(HARD_STATE, hs.write_to_bytes().map_err(store_err)?)
            .map_err(store_err)?;
        Ok(())
    }

    /// Updates only the commit index of the hard state.
    pub fn set_commit(&mut self, commit: u64) -> raft::Result<()> {
        let mut hs = self.hard_state()?;
        hs.commit = commit;
        self.set_hard_state(&hs)
    }

    /// Stores the conf state (after a conf change was applied). Not durable until `flush`.
    pub fn set_conf_state(&mut self, cs: &ConfState) -> raft::Result<()> {
        self.meta
            .insert(CONF_STATE, cs.write_to_bytes().map_err(store_err)?)
            .map_err(store_err)?;
        Ok(())
    }

    /// Replaces everything with `snap` (a leader's snapshot, or a bootstrap one): the
    /// log is dropped, the conf state and commit index come from its metadata.
    pub fn apply_snapshot(&mut self, snap: Snapshot) -> raft::Result<()> {
        let m = snap.get_metadata().clone();
        if m.index < self.snap_meta.index {
            return Err(raft::Error::Store(StorageError::SnapshotOutOfDate));
        }
        let mut hs = self.hard_state()?;
        hs.term = hs.term.max(m.term);
        hs.commit = m.index;
        self.log.clear().map_err(store_err)?;
        self.meta
            .insert(SNAPSHOT, snap.write_to_bytes().map_err(store_err)?)
            .map_err(store_err)?;
        self.set_conf_state(m.get_conf_state())?;
        self.set_hard_state(&hs)?;
        self.last = m.index;
        self.snap_meta = m;
        Ok(())
    }

    /// Takes a snapshot of the state machine at `index` (applied, so in the log or the
    /// snapshot) with `data`, and drops the log up to it. Not durable until `flush`.
    pub fn compact(&mut self, index: u64, data: Vec<u8>) -> raft::Result<()> {
        if index <= self.snap_meta.index {
            return Ok(());
        }
        if index > self.last {
            return Err(store_err(format!(
                "compact to {index} beyond the last entry {}",
                self.last
            )));
        }
        let term = raft::Storage::term(self, index)?;
        let mut snap = Snapshot::default();
        snap.set_data(data.into());
        let m = snap.mut_metadata();
        m.index = index;
        m.term = term;
        m.set_conf_state(self.conf_state()?);
        self.meta
            .insert(SNAPSHOT, snap.write_to_bytes().map_err(store_err)?)
            .map_err(store_err)?;
        let mut batch = sled::Batch::default();
        for i in self.snap_meta.index + 1..=index {
            batch.remove(&key(i)[..]);
        }
        self.log.apply_batch(batch).map_err(store_err)?;
        self.snap_meta = snap.take_metadata();
        Ok(())
    }

    /// Makes every earlier write durable.
    pub fn flush(&self) -> raft::Result<()> {
        self.db.flush().map_err(store_err)?;
        Ok(())
    }

    /// The stored hard state (default when none).
    pub fn hard_state(&self) -> raft::Result<HardState> {
        self.meta
            .get(HARD_STATE)
            .map_err(store_err)?
            .map(|b| HardState::parse_from_bytes(&b).map_err(store_err))
            .transpose()
            .map(Option::unwrap_or_default)
    }

    /// The stored conf state (default when none).
    pub fn conf_state(&self) -> raft::Result<ConfState> {
        self.meta
            .get(CONF_STATE)
            .map_err(store_err)?
            .map(|b| ConfState::parse_from_bytes(&b).map_err(store_err))
            .transpose()
            .map(Option::unwrap_or_default)
    }

    /// The latest snapshot (default when none was taken).
    pub fn latest_snapshot(&self) -> raft::Result<Snapshot> {
        self.meta
            .get(SNAPSHOT)
            .map_err(store_err)?
            .map(|b| Snapshot::parse_from_bytes(&b).map_err(store_err))
            .transpose()
            .map(Option::unwrap_or_default)
    }

    /// Index of the latest snapshot (0 when none).
    pub fn snapshot_index(&self) -> u64 {
        self.snap_meta.index
    }
}

impl raft::Storage for SledStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard_state()?, self.conf_state()?))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.snap_meta.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last + 1 {
            return Err(store_err(format!(
                "entries up to {high} asked, the log ends at {}",
                self.last
            )));
        }
        let max = max_size.into().unwrap_or(u64::MAX);
        let mut out = Vec::new();
        let mut size = 0u64;
        for kv in self.log.range(key(low)..key(high)) {
            let (_, v) = kv.map_err(store_err)?;
            let e = Entry::parse_from_bytes(&v).map_err(store_err)?;
            size += u64::from(e.compute_size());
            // at least one entry, as the trait asks
            if !out.is_empty() && size > max {
                break;
            }
            out.push(e);
        }
        if out.is_empty() && low < high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snap_meta.index {
            return Ok(self.snap_meta.term);
        }
        if idx < self.snap_meta.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        match self.log.get(key(idx)).map_err(store_err)? {
            Some(v) => Ok(Entry::parse_from_bytes(&v).map_err(store_err)?.term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.snap_meta.index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last)
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // A follower behind the log gets the state as applied now, with the current
        // conf state: the stored snapshot may predate its own membership, and raft-rs
        // refuses a snapshot whose conf state does not name the receiver.
        if let Some(source) = &self.source {
            let (index, data) = source()?;
            if index > self.snap_meta.index && index <= self.last {
                let mut snap = Snapshot::default();
                snap.set_data(data.into());
                let m = snap.mut_metadata();
                m.index = index;
                m.term = self.term(index)?;
                m.set_conf_state(self.conf_state()?);
                return Ok(snap);
            }
        }
        let snap = self.latest_snapshot()?;
        if snap.get_metadata().index < request_index {
            // a newer one is taken at the next compaction
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_waits_for_a_previous_instance_to_let_go_of_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let first = SledStorage::open(dir.path()).unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(first);
        });
        // sled's lock is held for another 300 ms: the second open waits for it
        let second = SledStorage::open(dir.path());
        release.join().unwrap();
        assert!(second.is_ok(), "{:?}", second.err());
    }

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: format!("{index}/{term}").into_bytes().into(),
            ..Default::default()
        }
    }

    fn ctx() -> GetEntriesContext {
        GetEntriesContext::empty(false)
    }

    /// Opens the storage in `dir`. A `SledStorage` just dropped releases its file
    /// lock once sled's flusher thread has stopped: a reopen waits for that (at most
    /// 10 s) instead of failing on a busy machine.
    fn open(dir: &Path) -> SledStorage {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match SledStorage::open(dir) {
                Ok(s) => return s,
                Err(e)
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("cannot open the storage: {e}"),
            }
        }
    }

    #[test]
    fn indexes_terms_and_entries_follow_appends() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path());
        assert!(s.is_empty().unwrap());
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (1, 0));
        s.append(&[entry(1, 1), entry(2, 1), entry(3, 2)]).unwrap();
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (1, 3));
        assert_eq!(s.term(0).unwrap(), 0);
        assert_eq!(s.term(3).unwrap(), 2);
        assert!(matches!(
            s.term(4),
            Err(raft::Error::Store(StorageError::Unavailable))
        ));
        let got = s.entries(2, 4, None, ctx()).unwrap();
        assert_eq!(got, vec![entry(2, 1), entry(3, 2)]);
        // a size limit still returns at least one entry
        let one = s.entries(1, 4, 1, ctx()).unwrap();
        assert_eq!(one, vec![entry(1, 1)]);
    }

    #[test]
    fn a_conflicting_append_truncates_the_suffix() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path());
        s.append(&[entry(1, 1), entry(2, 1), entry(3, 1), entry(4, 1)])
            .unwrap();
        s.append(&[entry(3, 2)]).unwrap();
        assert_eq!(s.last_index().unwrap(), 3);
        assert_eq!(s.term(3).unwrap(), 2);
        assert_eq!(
            s.entries(1, 4, None, ctx()).unwrap(),
            vec![entry(1, 1), entry(2, 1), entry(3, 2)]
        );
        // a gap is refused
        assert!(s.append(&[entry(9, 2)]).is_err());
    }

    #[test]
    fn compaction_keeps_the_term_of_the_compaction_point() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path());
        let cs = ConfState {
            voters: vec![1, 2, 3],
            ..Default::default()
        };
        s.set_conf_state(&cs).unwrap();
        s.append(&(1..=10).map(|i| entry(i, 1 + i / 5)).collect::<Vec<_>>())
            .unwrap();
        s.compact(6, b"state@6".to_vec()).unwrap();
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (7, 10));
        assert_eq!(s.term(6).unwrap(), 2);
        assert!(matches!(
            s.term(5),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert!(matches!(
            s.entries(5, 8, None, ctx()),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert_eq!(s.entries(7, 9, None, ctx()).unwrap().len(), 2);
        let snap = s.snapshot(0, 2).unwrap();
        assert_eq!(snap.get_metadata().index, 6);
        assert_eq!(snap.get_metadata().term, 2);
        assert_eq!(snap.get_metadata().get_conf_state().voters, vec![1, 2, 3]);
        assert_eq!(snap.get_data(), b"state@6");
        // appends after the snapshot still work, and survive a reopen
        s.append(&[entry(11, 3)]).unwrap();
        s.flush().unwrap();
        drop(s);
        let s = open(dir.path());
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (7, 11));
        assert_eq!(s.term(6).unwrap(), 2);
    }

    #[test]
    fn applying_a_snapshot_replaces_log_conf_and_commit() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path());
        s.append(&[entry(1, 1), entry(2, 1)]).unwrap();
        let hs = HardState {
            term: 1,
            vote: 2,
            commit: 2,
            ..Default::default()
        };
        s.set_hard_state(&hs).unwrap();
        let mut snap = Snapshot::default();
        snap.set_data(b"leader state".to_vec().into());
        snap.mut_metadata().index = 20;
        snap.mut_metadata().term = 3;
        snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3, 4];
        s.apply_snapshot(snap).unwrap();
        s.flush().unwrap();
        drop(s);
        let s = open(dir.path());
        let st = s.initial_state().unwrap();
        assert_eq!(st.hard_state.commit, 20);
        assert_eq!(st.hard_state.term, 3);
        assert_eq!(st.hard_state.vote, 2);
        assert_eq!(st.conf_state.voters, vec![1, 2, 3, 4]);
        assert_eq!(
            (s.first_index().unwrap(), s.last_index().unwrap()),
            (21, 20)
        );
        assert_eq!(s.term(20).unwrap(), 3);
        assert_eq!(s.snapshot(0, 1).unwrap().get_data(), b"leader state");
        // an older snapshot is refused
        let mut old = Snapshot::default();
        old.mut_metadata().index = 5;
        let mut s = s;
        assert!(s.apply_snapshot(old).is_err());
    }

    #[test]
    fn bootstrap_starts_every_founder_at_the_same_point() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path());
        s.bootstrap(vec![1, 2, 3], b"{}".to_vec()).unwrap();
        assert!(!s.is_empty().unwrap());
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (2, 1));
        assert_eq!(s.term(1).unwrap(), 1);
        assert_eq!(s.initial_state().unwrap().hard_state.commit, 1);
    }
}
