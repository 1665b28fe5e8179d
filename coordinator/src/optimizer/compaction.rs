//! Adaptive compaction of the Delta tables autopipe writes (issue 15 §2).
//!
//! **Trigger.** After every commit to a table the leader records what the table
//! holds (`Command::TableObserved`: per partition the files below
//! `compaction_target_file_bytes`). A partition is compacted when one *size tier*
//! of it holds `compaction_min_files` files (default 50, Delta's auto-compaction
//! threshold; target 128 MiB, Delta's `optimize` target).
//!
//! **Size tiers** (as in size-tiered LSM compaction, Cassandra's STCS): with F =
//! `compaction_min_files` and T the target, tier k holds the files of
//! [T / F^(k+1), T / F^k). F files of one tier merge into about one file of a
//! higher tier, so a byte is rewritten once per tier it climbs: write amplification
//! grows with log_F(T / file size), not with the number of appends, and each
//! partition keeps at most F - 1 files per tier. Delta's fixed rule (compact all
//! small files at 50) rewrites the same accumulated file on every round instead.
//!
//! **Action.** The files of the fullest qualifying tier are rewritten by an ordinary
//! job of the cluster (its scan reads exactly those files of the observed version,
//! its sink writes target-sized files into the same partition). The job is a
//! background job: its tasks launch only on slots no user job is waiting for. Its
//! commit is a `dataChange = false` Delta transaction removing exactly the files it
//! read and adding the new ones; when a concurrent writer removed one of them
//! (an overwrite, another compaction) it is skipped, never a lost append.
//!
//! **Decision.** Each compaction is a `compaction` decision: the partition, the files
//! and bytes before, the tier; its effect is the files and bytes after and the
//! table's write amplification (bytes compaction wrote / bytes appended).
//! `compaction = false` (job param or `coordinator --param`) turns it off for the
//! tables a job writes.

use crate::state::{Job, JobState};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What the leader last saw of a delta table that jobs committed to.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TableFiles {
    /// the table root URL
    pub url: String,
    /// the version observed
    pub version: u64,
    /// when (0: not observed yet, only counted by commits)
    #[serde(default)]
    pub observed_ms: u64,
    /// per partition (its hive directory, `country=DE/`; "" unpartitioned): the
    /// files below the target size, (path relative to the table root, bytes)
    pub small: BTreeMap<String, Vec<(String, u64)>>,
    /// per partition: the files at or above the target size
    pub large: BTreeMap<String, u64>,
    /// the partition columns
    pub partition_by: Vec<String>,
    /// the table's columns in order (a compaction writes them so)
    pub columns: Vec<String>,
    /// the compaction settings of the last job that wrote the table
    pub settings: Settings,
    /// bytes user jobs added to the table since autopipe watches it
    pub appended_bytes: u64,
    /// bytes compaction jobs wrote to it
    pub compacted_bytes: u64,
    /// compactions committed
    pub compactions: u64,
}

impl TableFiles {
    /// Files in `partition` now (small and large).
    pub fn files_in(&self, partition: &str) -> usize {
        self.small.get(partition).map_or(0, Vec::len)
            + self.large.get(partition).copied().unwrap_or(0) as usize
    }

    /// Bytes compaction wrote per byte appended (1 + rewritten / appended: every
    /// appended byte is written once by its job).
    pub fn write_amplification(&self) -> f64 {
        if self.appended_bytes == 0 {
            return 1.0;
        }
        1.0 + self.compacted_bytes as f64 / self.appended_bytes as f64
    }
}

/// A table's compaction settings (`[job.params]` of the job that wrote it).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Settings {
    /// `compaction`
    pub enabled: bool,
    /// `compaction_min_files`
    pub min_files: u32,
    /// `compaction_target_file_bytes`
    pub target_file_bytes: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            enabled: true,
            min_files: 50,
            target_file_bytes: 128 << 20,
        }
    }
}

/// A compaction to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Compact {
    /// the table root URL
    pub table: String,
    /// the version whose files it reads
    pub version: u64,
    /// the partition (hive directory; "" unpartitioned)
    pub partition: String,
    /// the files it rewrites (relative to the table root)
    pub files: Vec<String>,
    /// their bytes
    pub bytes: u64,
    /// their size tier
    pub tier: u32,
    /// files in the partition before
    pub partition_files: usize,
}

/// The size tier of a file of `size` bytes below `target` (see the module docs):
/// the k with target / f^(k+1) <= size < target / f^k.
pub fn tier(size: u64, target: u64, f: u32) -> u32 {
    let f = f.max(2) as u128;
    let (size, mut bound) = (size.max(1) as u128, target.max(1) as u128);
    let mut k = 0;
    while bound / f > size && bound / f > 0 {
        bound /= f;
        k += 1;
    }
    k
}

/// The compaction to run on `t` now, if any: none while it is off, while the table
/// is `busy` (a compaction of it runs or is not observed yet), or while no tier of a partition holds
/// `min_files` files. Of several candidates the partition and tier with the most
/// files go first.
pub fn plan(t: &TableFiles, busy: bool) -> Option<Compact> {
    let s = t.settings;
    if !s.enabled || busy || s.min_files < 2 {
        return None;
    }
    let mut best: Option<Compact> = None;
    for (partition, files) in &t.small {
        let mut tiers: BTreeMap<u32, Vec<&(String, u64)>> = BTreeMap::new();
        for f in files {
            tiers
                .entry(tier(f.1, s.target_file_bytes, s.min_files))
                .or_default()
                .push(f);
        }
        for (k, members) in tiers {
            if members.len() < s.min_files as usize {
                continue;
            }
            if best
                .as_ref()
                .is_some_and(|b| b.files.len() >= members.len())
            {
                continue;
            }
            best = Some(Compact {
                table: t.url.clone(),
                version: t.version,
                partition: partition.clone(),
                files: members.iter().map(|f| f.0.clone()).collect(),
                bytes: members.iter().map(|f| f.1).sum(),
                tier: k,
                partition_files: t.files_in(partition),
            });
        }
    }
    best
}

/// The compactions `autopipe table compact` asks for: in every partition with at
/// least two small files, all of them, whatever their tiers.
pub fn plan_manual(t: &TableFiles) -> Vec<Compact> {
    t.small
        .iter()
        .filter(|(_, files)| files.len() >= 2)
        .map(|(partition, files)| Compact {
            table: t.url.clone(),
            version: t.version,
            partition: partition.clone(),
            files: files.iter().map(|f| f.0.clone()).collect(),
            bytes: files.iter().map(|f| f.1).sum(),
            tier: files
                .iter()
                .map(|f| tier(f.1, t.settings.target_file_bytes, t.settings.min_files))
                .min()
                .unwrap_or(0),
            partition_files: t.files_in(partition),
        })
        .collect()
}

/// Whether the rule must wait on `t`: a compaction job of the table is running (or
/// committing), or one read the observed version or a later one (its commit is not
/// observed yet, so the observation still lists the files it replaced).
pub fn busy(jobs: &BTreeMap<String, Job>, t: &TableFiles) -> bool {
    jobs.values().any(|j| {
        j.compaction.as_ref().is_some_and(|c| {
            c.table == t.url
                && (matches!(j.state, JobState::Running | JobState::Committing)
                    || c.version >= t.version)
        })
    })
}

/// The job-side record of a compaction job (`Job::compaction`): what its commit
/// removes, and for the decision's effect.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CompactionJob {
    /// the table root URL
    pub table: String,
    /// the version it read
    pub version: u64,
    /// the partition
    pub partition: String,
    /// the files it rewrites, relative to the table root (its commit removes them)
    pub files: Vec<String>,
    /// their bytes
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;

    fn table(small: &[(&str, &[u64])], min_files: u32, target: u64) -> TableFiles {
        TableFiles {
            url: "file:///t/".into(),
            version: 7,
            small: small
                .iter()
                .map(|(p, sizes)| {
                    let files = sizes
                        .iter()
                        .enumerate()
                        .map(|(i, s)| (format!("{p}f{i}.parquet"), *s))
                        .collect();
                    (p.to_string(), files)
                })
                .collect(),
            settings: Settings {
                enabled: true,
                min_files,
                target_file_bytes: target,
            },
            ..Default::default()
        }
    }

    #[test]
    fn tiers_divide_the_sizes_below_the_target_by_powers_of_the_file_count() {
        // F = 10, T = 100 MiB: tier 0 from 10 MiB, tier 1 from 1 MiB, tier 2 from 100 KiB
        assert_eq!(tier(50 * MIB, 100 * MIB, 10), 0);
        assert_eq!(tier(10 * MIB + 1, 100 * MIB, 10), 0);
        assert_eq!(tier(5 * MIB, 100 * MIB, 10), 1);
        assert_eq!(tier(500 * KIB, 100 * MIB, 10), 2);
        // empty files are in the last tier, not an error
        assert_eq!(tier(0, 100 * MIB, 10), tier(1, 100 * MIB, 10));
        assert_eq!(tier(1, 100 * MIB, 10), 7);
    }

    #[test]
    fn a_partition_compacts_when_one_tier_holds_min_files_files() {
        let sizes = [4 * KIB; 9];
        assert_eq!(
            plan(&table(&[("d=1/", &sizes)], 10, 128 * MIB), false),
            None
        );
        let sizes = [4 * KIB; 10];
        let c = plan(&table(&[("d=1/", &sizes)], 10, 128 * MIB), false).unwrap();
        assert_eq!(
            (c.partition.as_str(), c.files.len(), c.bytes),
            ("d=1/", 10, 40 * KIB)
        );
        assert_eq!(c.version, 7);
        // the same files spread over tiers do not qualify
        let mixed = [
            4 * KIB,
            4 * KIB,
            4 * KIB,
            4 * KIB,
            4 * KIB,
            2 * MIB,
            2 * MIB,
            2 * MIB,
            2 * MIB,
            2 * MIB,
        ];
        assert_eq!(
            plan(&table(&[("d=1/", &mixed)], 10, 128 * MIB), false),
            None
        );
    }

    #[test]
    fn the_fullest_tier_goes_first_and_nothing_runs_beside_a_running_compaction() {
        let t = table(&[("a/", &[KIB; 12]), ("b/", &[KIB; 20])], 10, 128 * MIB);
        let c = plan(&t, false).unwrap();
        assert_eq!((c.partition.as_str(), c.files.len()), ("b/", 20));
        assert_eq!(plan(&t, true), None);
        let mut off = t.clone();
        off.settings.enabled = false;
        assert_eq!(plan(&off, false), None);
    }

    #[test]
    fn a_manual_compaction_takes_every_partition_with_two_small_files_whatever_the_tiers() {
        let t = table(
            &[("a/", &[KIB]), ("b/", &[KIB, 3 * MIB]), ("c/", &[])],
            50,
            128 * MIB,
        );
        let c = plan_manual(&t);
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].partition.as_str(), c[0].files.len()), ("b/", 2));
        assert_eq!(c[0].bytes, KIB + 3 * MIB);
        // the automatic rule would wait for 50 files of one tier
        assert_eq!(plan(&t, false), None);
    }

    #[test]
    fn a_table_is_busy_while_its_compaction_runs_and_until_its_commit_is_observed() {
        use crate::state::{Command, State};
        let mut s = State::default();
        let mut t = table(&[("p/", &[KIB; 10])], 10, 128 * MIB);
        t.version = 0; // the version the test compaction read
        assert!(!busy(&s.jobs, &t));
        s.apply(&crate::state::test_job_as("c", 1, Some(&t.url)))
            .unwrap();
        assert!(busy(&s.jobs, &t), "running");
        s.apply(&Command::CancelJob {
            job_id: "c".into(),
            at_ms: 1,
        })
        .unwrap();
        // ended, but it read the version observed: the observation is stale
        assert!(busy(&s.jobs, &t));
        let mut later = t.clone();
        later.version += 1;
        assert!(!busy(&s.jobs, &later), "observed after it");
        let mut other = later.clone();
        other.url = "file:///other/".into();
        assert!(!busy(&s.jobs, &other));
    }

    #[test]
    fn empty_partitions_and_all_empty_files_are_handled() {
        assert_eq!(plan(&table(&[], 10, 128 * MIB), false), None);
        assert_eq!(plan(&table(&[("a/", &[])], 10, 128 * MIB), false), None);
        let c = plan(&table(&[("a/", &[0; 10])], 10, 128 * MIB), false).unwrap();
        assert_eq!((c.files.len(), c.bytes), (10, 0));
    }

    #[test]
    fn tiered_merging_bounds_files_and_rewrites_each_byte_once_per_tier() {
        // 1,000 appends of 4 KiB files with F = 10: simulate the rule, each
        // compaction's output one file of the inputs' total size
        let (f, target) = (10u32, 128 * MIB);
        let mut t = table(&[("p/", &[])], f, target);
        let (mut appended, mut rewritten, mut max_files) = (0u64, 0u64, 0usize);
        for i in 0..1000 {
            let files = t.small.get_mut("p/").unwrap();
            files.push((format!("a{i}"), 4 * KIB));
            appended += 4 * KIB;
            while let Some(c) = plan(&t, false) {
                let files = t.small.get_mut("p/").unwrap();
                files.retain(|x| !c.files.contains(&x.0));
                files.push((format!("c{i}-{}", c.tier), c.bytes));
                rewritten += c.bytes;
            }
            max_files = max_files.max(t.files_in("p/"));
        }
        // at most F - 1 files in each of the tiers 4 KiB .. 4 MiB climbs through
        assert!(max_files <= 4 * (f as usize - 1) + 1, "{max_files}");
        // 4 KiB -> 40 KiB -> 400 KiB -> 4 MiB: each byte rewritten at most 3 times
        let amplification = 1.0 + rewritten as f64 / appended as f64;
        assert!(amplification <= 4.0, "{amplification}");
        // Delta's fixed rule (all small files once there are F) rewrites far more
        let mut fixed: Vec<u64> = vec![];
        let mut fixed_rewritten = 0u64;
        for _ in 0..1000 {
            fixed.push(4 * KIB);
            if fixed.len() >= f as usize {
                let total: u64 = fixed.iter().sum();
                fixed_rewritten += total;
                fixed = vec![total];
            }
        }
        assert!(
            fixed_rewritten > 10 * rewritten,
            "{fixed_rewritten} vs {rewritten}"
        );
    }
}
