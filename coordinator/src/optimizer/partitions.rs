//! Partitions of a job at submit: its scan tasks (input splits) and its shuffle width.
//!
//! **Input splits** (issue 12 §2.1). Trigger: every batch job with file sources, at
//! submit. Action: each source's files (listed in path order, with the row groups of
//! the Parquet footers) become scan tasks of about `split` bytes, where `split` =
//! the source's bytes / alive slots, at least `min_partition_bytes` (default 1 MiB)
//! and at most `target_partition_bytes` (default 64 MiB): a Parquet file larger than
//! `split` is cut at row-group boundaries, a CSV/NDJSON file at byte offsets (its
//! reader keeps whole records), and the pieces are packed greedily in file order
//! while at least half of the next fits in `split`. Anchor: Spark's FilePartition
//! (`maxSplitBytes = min(maxPartitionBytes, max(openCost, bytes / parallelism))`,
//! files split and packed by size); unlike Spark a file open costs no extra bytes
//! here, because a task's own cost (launch, plan decode, report) is far larger than
//! a file open, so 2,000 tiny files are one or two tasks, not 125. Off with
//! `adaptive_splits = false`, or when `shuffle_partitions` is pinned (unless
//! `adaptive_splits = true` is set): then DataFusion cuts the scans into as many
//! partitions as the shuffle has, as before.
//!
//! **Shuffle width** (§2.2). The number of partitions of every exchange: the pinned
//! `shuffle_partitions`, else input bytes / `target_partition_bytes` rounded down to
//! whole waves of the alive slots (at least one wave, at most 256 or one wave).
//!
//! Both are pure functions of the listing and the alive slots; the result enters the
//! log as the planned stages and an `input_splits` decision, so a changed rule never
//! changes how an old log replays.

use crate::state::decision::inputs;
use autopipe_common::spec::{Format, JobParams};
use autopipe_common::splits::{InputFile, InputSplits, SourceFiles};
use autopipe_common::tolerant::FileRange;
use std::collections::BTreeMap;

/// Largest shuffle width derived from input size (a pinned one may go to
/// `MAX_SHUFFLE_PARTITIONS`).
pub const MAX_DERIVED_PARTITIONS: u64 = 256;

/// Slots planned for when fewer are alive at submit (workers may still be starting).
pub const MIN_PLANNING_SLOTS: u32 = 2;

/// Partitions from the input size, at least one per slot and a whole number of waves:
/// 5 tasks on 4 slots take two task-lengths where 4 take one (TPC-H SF1 on 4 slots
/// derived 5 from the size of all its sources). Rounding down keeps the task count
/// (and each task's fixed cost) lowest; rounding up to 8 made TPC-H SF1 slower.
pub fn derived_partitions(by_size: u64, slots: u64) -> usize {
    let slots = slots.max(1);
    let n = (by_size / slots).max(1) * slots;
    n.min(MAX_DERIVED_PARTITIONS.max(slots)) as usize
}

/// The shuffle width of a job reading `input_bytes` with `alive_slots` alive: the
/// pinned `shuffle_partitions`, else `derived_partitions` of input bytes / target.
pub fn shuffle_width(params: &JobParams, input_bytes: u64, alive_slots: u32) -> usize {
    if let Some(n) = params.shuffle_partitions {
        return n as usize;
    }
    let by_size = input_bytes.div_ceil(params.target_partition_bytes().max(1));
    derived_partitions(by_size, alive_slots.max(MIN_PLANNING_SLOTS) as u64)
}

/// The bytes a scan task of a source of `total` bytes reads: enough tasks for every
/// slot, each at least `min` and at most `target` bytes.
pub fn split_bytes(total: u64, slots: u32, target: u64, min: u64) -> u64 {
    let target = target.max(1);
    total
        .div_ceil(slots.max(1) as u64)
        .clamp(min.clamp(1, target), target)
}

/// The pieces one file is read in: whole when it fits `split`; else a Parquet file at
/// row-group starts (about `split` bytes of row groups each, at least one; a row
/// group joins the piece before it when at least half of it fits), a
/// CSV/NDJSON file in `split`-byte ranges (its reader keeps whole records), and a
/// Parquet file whose row groups are unknown whole.
fn pieces(f: &InputFile, format: Format, split: u64) -> Vec<FileRange> {
    let range = |start, end| FileRange {
        location: f.location.clone(),
        start,
        end,
        size: f.size,
    };
    if f.size <= split {
        return vec![range(0, f.size)];
    }
    match format {
        Format::Parquet => {
            let mut out = vec![];
            let (mut start, mut filled) = (0u64, 0u64);
            for rg in &f.row_groups {
                // a row group goes where most of it fits
                if filled > 0 && filled + rg.bytes / 2 > split && rg.start > start {
                    out.push(range(start, rg.start));
                    start = rg.start;
                    filled = 0;
                }
                filled += rg.bytes;
            }
            out.push(range(start, f.size));
            out
        }
        Format::Csv | Format::Ndjson | Format::Kafka | Format::Delta => (0..f.size.div_ceil(split))
            .map(|i| range(i * split, ((i + 1) * split).min(f.size)))
            .collect(),
    }
}

/// The scan tasks of one source: its files' pieces packed greedily in file order, a
/// task closed when less than half of the next piece would fit in `split` bytes.
pub fn scan_splits(source: &SourceFiles, split: u64) -> Vec<Vec<FileRange>> {
    let mut groups = vec![];
    let (mut group, mut filled): (Vec<FileRange>, u64) = (vec![], 0);
    for f in &source.files {
        for p in pieces(f, source.format, split) {
            let len = p.end - p.start;
            // a piece joins the task when at least half of it fits: tasks end near
            // `split` on either side, so bytes / slots per task makes one wave of
            // tasks, not one more for the rest
            if !group.is_empty() && filled + len / 2 > split {
                groups.push(std::mem::take(&mut group));
                filled = 0;
            }
            filled += len;
            group.push(p);
        }
    }
    if !group.is_empty() {
        groups.push(group);
    }
    groups
}

/// What the rule decided for a job.
#[derive(Debug, Clone, PartialEq)]
pub struct InputPlan {
    /// the scan tasks per source; `None` when the rule is off (DataFusion splits the
    /// scans into `shuffle_partitions` partitions)
    pub splits: Option<InputSplits>,
    /// the width of every exchange (DataFusion's target partitions)
    pub shuffle_partitions: usize,
    /// the decision to record (when the rule is on): what, why, inputs
    pub decision: Option<(String, String, BTreeMap<String, String>)>,
}

/// Plans the partitions of a job over `sources` (as `splits::list_sources` listed
/// them) with `alive_slots` task slots alive.
pub fn plan_inputs(sources: &[SourceFiles], params: &JobParams, alive_slots: u32) -> InputPlan {
    let bytes: u64 = sources
        .iter()
        .flat_map(|s| s.files.iter())
        .map(|f| f.size)
        .sum();
    let width = shuffle_width(params, bytes, alive_slots);
    if !params.adaptive_splits() {
        return InputPlan {
            splits: None,
            shuffle_partitions: width,
            decision: None,
        };
    }
    let (target, min) = (
        params.target_partition_bytes(),
        params.min_partition_bytes(),
    );
    let slots = alive_slots.max(MIN_PLANNING_SLOTS);
    let mut splits = InputSplits::default();
    let (mut files, mut row_groups, mut tasks) = (0usize, 0usize, 0usize);
    let mut per_source = vec![];
    for s in sources {
        let total: u64 = s.files.iter().map(|f| f.size).sum();
        let split = split_bytes(total, slots, target, min);
        let groups = scan_splits(s, split);
        let rgs: usize = s.files.iter().map(|f| f.row_groups.len()).sum();
        per_source.push((
            format!("source.{}", s.name),
            format!(
                "{} files, {total} bytes, {rgs} row groups read -> {} tasks of <= {split} bytes",
                s.files.len(),
                groups.len()
            ),
        ));
        files += s.files.len();
        row_groups += rgs;
        tasks += groups.len();
        splits.sources.insert(s.name.clone(), groups);
    }
    let what = format!(
        "planned {tasks} scan task(s) from {files} file(s) ({bytes} bytes) and a shuffle width of {width}"
    );
    let pinned = if params.shuffle_partitions.is_some() {
        " (pinned by shuffle_partitions)"
    } else {
        " (input bytes / target, whole waves of the alive slots)"
    };
    let why = format!(
        "input_splits: Parquet files over a task's share split at row-group boundaries, CSV/NDJSON files at byte offsets, small files packed in path order; a task reads about min(target_partition_bytes {target}, max(min_partition_bytes {min}, source bytes / {slots} slots)) bytes (Spark's FilePartition); shuffle width {width}{pinned}"
    );
    let mut seen = inputs([
        ("files", files.to_string()),
        ("bytes", bytes.to_string()),
        ("row_groups", row_groups.to_string()),
        ("target_partition_bytes", target.to_string()),
        ("min_partition_bytes", min.to_string()),
        ("alive_slots", alive_slots.to_string()),
        ("scan_tasks", tasks.to_string()),
        ("shuffle_partitions", width.to_string()),
    ]);
    seen.extend(per_source);
    InputPlan {
        splits: Some(splits),
        shuffle_partitions: width,
        decision: Some((what, why, seen)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use autopipe_common::splits::RowGroup;

    const MIB: u64 = 1 << 20;

    fn source(format: Format, files: Vec<InputFile>) -> SourceFiles {
        SourceFiles {
            name: "t".into(),
            format,
            files,
        }
    }

    fn file(i: usize, size: u64) -> InputFile {
        InputFile {
            location: format!("data/part-{i:05}"),
            size,
            row_groups: vec![],
        }
    }

    /// A Parquet file of `n` row groups of `rg` bytes each after the 4-byte magic,
    /// and a 1 KiB footer.
    fn parquet(n: u64, rg: u64) -> InputFile {
        InputFile {
            location: "data/big.parquet".into(),
            size: 4 + n * rg + 1024,
            row_groups: (0..n)
                .map(|i| RowGroup {
                    start: 4 + i * rg,
                    bytes: rg,
                })
                .collect(),
        }
    }

    /// Every byte of every file is in exactly one range, ranges in file order.
    fn assert_covers(sources: &SourceFiles, groups: &[Vec<FileRange>]) {
        let ranges: Vec<&FileRange> = groups.iter().flatten().collect();
        let mut i = 0;
        for f in &sources.files {
            let mut at = 0;
            while at < f.size || (f.size == 0 && at == 0) {
                let r = ranges[i];
                assert_eq!((r.location.as_str(), r.start), (f.location.as_str(), at));
                at = r.end;
                i += 1;
                if f.size == 0 {
                    break;
                }
            }
        }
        assert_eq!(i, ranges.len());
    }

    fn params(text: &str) -> JobParams {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn all_empty_inputs_plan_no_scan_task_and_one_wave_of_shuffle() {
        let p = plan_inputs(&[source(Format::Parquet, vec![])], &JobParams::default(), 4);
        assert_eq!(p.splits.unwrap().sources["t"], Vec::<Vec<FileRange>>::new());
        assert_eq!(p.shuffle_partitions, 4);
        // empty files: one task reads them all
        let empty = source(Format::Csv, (0..5).map(|i| file(i, 0)).collect());
        let p = plan_inputs(std::slice::from_ref(&empty), &JobParams::default(), 4);
        let groups = &p.splits.unwrap().sources["t"];
        assert_eq!(groups.len(), 1);
        assert_covers(&empty, groups);
        let (what, _, seen) = p.decision.unwrap();
        assert!(what.contains("1 scan task(s) from 5 file(s)"), "{what}");
        assert_eq!(seen["bytes"], "0");
    }

    #[test]
    fn many_tiny_files_are_packed_into_few_tasks_in_file_order() {
        let s = source(Format::Parquet, (0..2000).map(|i| file(i, 1000)).collect());
        let p = plan_inputs(std::slice::from_ref(&s), &JobParams::default(), 8);
        let groups = &p.splits.as_ref().unwrap().sources["t"];
        // 2 MB over 8 slots is below the 1 MiB floor: 2 tasks of about 1 MiB
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].len(), 1049);
        assert_covers(&s, groups);
        assert_eq!(p.shuffle_partitions, 8);
        let (_, why, seen) = p.decision.unwrap();
        assert_eq!(seen["scan_tasks"], "2");
        assert_eq!(seen["files"], "2000");
        assert!(why.contains("target_partition_bytes 67108864"), "{why}");
    }

    #[test]
    fn one_giant_parquet_file_is_split_at_row_group_boundaries() {
        // 1 GiB in 64 row groups of 16 MiB, 4 slots: 64 MiB tasks of 4 row groups
        let big = parquet(64, 16 * MIB);
        let s = source(Format::Parquet, vec![big.clone()]);
        let groups = scan_splits(&s, split_bytes(big.size, 4, 64 * MIB, MIB));
        assert_eq!(groups.len(), 16);
        assert_covers(&s, &groups);
        for (i, g) in groups.iter().enumerate() {
            assert_eq!(g.len(), 1);
            // every cut is a row group's first page: each row group starts in one range
            let starts = big
                .row_groups
                .iter()
                .filter(|rg| g[0].start <= rg.start && rg.start < g[0].end);
            assert_eq!(starts.count(), 4, "task {i}: {:?}", g[0]);
        }
        // one row group larger than a task's share stays whole
        let huge = parquet(1, 512 * MIB);
        let s = source(Format::Parquet, vec![huge]);
        assert_eq!(scan_splits(&s, 64 * MIB).len(), 1);
        // a giant file fills all slots: 100 MiB on 8 slots is 8 tasks, not 2
        let mid = parquet(100, MIB);
        let s = source(Format::Parquet, vec![mid.clone()]);
        let groups = scan_splits(&s, split_bytes(mid.size, 8, 64 * MIB, MIB));
        assert_eq!(groups.len(), 8);
        assert_covers(&s, &groups);
    }

    #[test]
    fn large_csv_files_split_at_byte_offsets_and_small_tails_are_packed() {
        let s = source(
            Format::Csv,
            vec![file(0, 150 * MIB), file(1, 10 * MIB), file(2, 10 * MIB)],
        );
        let groups = scan_splits(&s, 64 * MIB);
        assert_covers(&s, &groups);
        let sizes: Vec<u64> = groups
            .iter()
            .map(|g| g.iter().map(|r| r.end - r.start).sum())
            .collect();
        assert_eq!(sizes, [64 * MIB, 64 * MIB, 42 * MIB]);
    }

    #[test]
    fn the_split_size_lies_between_the_floor_and_the_target() {
        assert_eq!(split_bytes(0, 4, 64 * MIB, MIB), MIB);
        assert_eq!(split_bytes(10 * 1024 * MIB, 4, 64 * MIB, MIB), 64 * MIB);
        assert_eq!(split_bytes(80 * MIB, 8, 64 * MIB, MIB), 10 * MIB);
        // a floor above the target is the target
        assert_eq!(split_bytes(80 * MIB, 8, 4 * MIB, 8 * MIB), 4 * MIB);
    }

    #[test]
    fn the_shuffle_width_follows_input_and_slots_unless_pinned() {
        let p = JobParams::default();
        assert_eq!(shuffle_width(&p, 0, 6), 6);
        assert_eq!(shuffle_width(&p, 0, 0), MIN_PLANNING_SLOTS as usize);
        assert_eq!(shuffle_width(&p, 13 * 64 * MIB, 6), 12);
        assert_eq!(
            shuffle_width(&p, 1 << 50, 4),
            MAX_DERIVED_PARTITIONS as usize
        );
        assert_eq!(
            shuffle_width(&params(r#"{"shuffle_partitions": 7}"#), 1 << 40, 4),
            7
        );
        let small = params(r#"{"target_partition_bytes": "1MiB"}"#);
        assert_eq!(shuffle_width(&small, 9 * MIB, 4), 8);
    }

    #[test]
    fn derived_partitions_fill_whole_waves_of_slots() {
        assert_eq!(derived_partitions(5, 4), 4);
        assert_eq!(derived_partitions(1, 4), 4);
        assert_eq!(derived_partitions(8, 4), 8);
        assert_eq!(derived_partitions(13, 6), 12);
        assert_eq!(
            derived_partitions(1_000_000, 4),
            MAX_DERIVED_PARTITIONS as usize
        );
    }

    #[test]
    fn the_rule_is_off_when_switched_off_or_when_the_partitions_are_pinned() {
        let s = source(Format::Parquet, (0..10).map(|i| file(i, 1000)).collect());
        let off = plan_inputs(
            std::slice::from_ref(&s),
            &params(r#"{"adaptive_splits": false}"#),
            4,
        );
        assert_eq!(
            (off.splits, off.decision, off.shuffle_partitions),
            (None, None, 4)
        );
        let pinned = plan_inputs(
            std::slice::from_ref(&s),
            &params(r#"{"shuffle_partitions": 6}"#),
            4,
        );
        assert_eq!((pinned.splits, pinned.shuffle_partitions), (None, 6));
        // both: splits on, shuffle width pinned
        let both = plan_inputs(
            std::slice::from_ref(&s),
            &params(r#"{"shuffle_partitions": 6, "adaptive_splits": true}"#),
            4,
        );
        assert_eq!(both.splits.unwrap().sources["t"].len(), 1);
        assert_eq!(both.shuffle_partitions, 6);
        assert!(both
            .decision
            .unwrap()
            .1
            .contains("pinned by shuffle_partitions"));
        // a pinned target: 10 files of 1000 bytes at 2500 bytes a task
        let small = plan_inputs(
            std::slice::from_ref(&s),
            &params(r#"{"target_partition_bytes": 2500, "min_partition_bytes": 1}"#),
            1,
        );
        assert_eq!(small.splits.unwrap().sources["t"].len(), 4);
    }
}
