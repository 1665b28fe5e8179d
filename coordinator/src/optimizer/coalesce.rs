//! Post-shuffle coalescing. Trigger: a stage whose hash-shuffled inputs are complete
//! and none of whose tasks has run (`optimizer::replan`). Action: contiguous reducer
//! partitions are packed greedily into tasks of about the target size, and a pack
//! below `min_partition_bytes` merges into its smaller neighbour (Spark's one pass). Anchor: Spark AQE's
//! `CoalesceShufflePartitions` (advisory size 64 MiB, minimum 1 MiB, and a target no
//! larger than the input spread over the cluster's parallelism, so coalescing never
//! leaves slots idle). Default: on; `coalesce = false` turns it off.

use std::ops::Range;

/// The size one coalesced task aims at: `advisory` (target_partition_bytes), but no
/// more than the whole input spread over `parallelism` tasks, and at least `min`.
pub fn target_size(total: u64, parallelism: u32, advisory: u64, min: u64) -> u64 {
    let spread = total.div_ceil(u64::from(parallelism.max(1)));
    advisory.min(spread).max(min).max(1)
}

/// Packs partitions `0..sizes.len()` into contiguous ranges of about `target` bytes
/// in one pass, as Spark's `ShufflePartitionsUtil.coalescePartitions` does: a range
/// closes when the next partition would take it past the target, unless it is still
/// below `min` bytes; then it joins the range before it when that one is smaller
/// than the next partition, else it takes the next partition in. A last range below
/// `min` joins the one before it. A merge never cascades: a range that reached `min`
/// takes no more small neighbours, so small partitions of equal size still make
/// several tasks. Empty partitions join the range they fall in (every partition is
/// read by one task). `sizes` is each reducer partition's bytes summed over every
/// input it reads. Empty input: no ranges.
pub fn coalesce(sizes: &[u64], target: u64, min: u64) -> Vec<Range<u32>> {
    let n = sizes.len() as u32;
    let mut ranges: Vec<Range<u32>> = vec![];
    // the open range starts at `start` and holds `bytes`; the last closed one `last`
    let (mut start, mut bytes, mut last) = (0u32, 0u64, 0u64);
    for (i, &size) in sizes.iter().enumerate() {
        let i = i as u32;
        if i == start || size == 0 || bytes + size <= target {
            bytes += size;
        } else if bytes >= min {
            ranges.push(start..i);
            (start, last, bytes) = (i, bytes, size);
        } else if last > 0 && last < size {
            // below the minimum: into the previous range, the smaller neighbour
            let prev = ranges
                .last_mut()
                .expect("a closed range holds `last` bytes");
            prev.end = i;
            (start, last, bytes) = (i, last + bytes, size);
        } else {
            // below the minimum: the next partition joins it
            bytes += size;
        }
    }
    match ranges.last_mut() {
        _ if n == 0 => {}
        Some(prev) if bytes < min && last > 0 => prev.end = n,
        _ => ranges.push(start..n),
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    #[test]
    fn small_partitions_pack_up_to_the_target() {
        let sizes = [10 * MB, 20 * MB, 30 * MB, 40 * MB, 5 * MB, 5 * MB];
        assert_eq!(coalesce(&sizes, 64 * MB, MB), vec![0..3, 3..6]);
    }

    #[test]
    fn a_giant_partition_stays_alone() {
        let sizes = [MB * 2, 500 * MB, MB * 2];
        assert_eq!(coalesce(&sizes, 64 * MB, MB), vec![0..1, 1..2, 2..3]);
    }

    #[test]
    fn all_empty_partitions_make_one_task() {
        assert_eq!(coalesce(&[0; 200], 64 * MB, MB), vec![0..200]);
        assert_eq!(coalesce(&[], 64 * MB, MB), Vec::<Range<u32>>::new());
    }

    #[test]
    fn a_pack_below_the_minimum_merges_into_its_smaller_neighbour() {
        let half = MB / 2;
        // a tiny pack between two full ones: into the smaller (here the right)
        let sizes = [64 * MB, half, 63 * MB + half];
        assert_eq!(coalesce(&sizes, 64 * MB, MB), vec![0..1, 1..3]);
        // equal neighbours: the next partition joins it
        let sizes = [64 * MB, half, 64 * MB];
        assert_eq!(coalesce(&sizes, 64 * MB, MB), vec![0..1, 1..3]);
        // a tiny first or last pack joins its only neighbour
        assert_eq!(coalesce(&[half, 64 * MB], 64 * MB, MB), vec![0..2]);
        assert_eq!(
            coalesce(&[64 * MB, 64 * MB, half], 64 * MB, MB),
            vec![0..1, 1..3]
        );
        // packs at or above the minimum stay
        let sizes = [64 * MB, MB, 64 * MB];
        assert_eq!(coalesce(&sizes, 64 * MB, MB), vec![0..1, 1..2, 2..3]);
    }

    /// TPC-H Q2's aggregation stage: four partitions of about 0.7 MiB with a 1 MiB
    /// target and minimum run as two tasks. (Merging the smallest pack first, again
    /// and again, made one task of all four, which then took four times as long.)
    #[test]
    fn small_packs_merge_once_and_never_cascade_into_one_task() {
        let sizes = [708_068, 712_164, 706_852, 712_676];
        assert_eq!(coalesce(&sizes, MB, MB), vec![0..2, 2..4]);
        // eight equal small partitions: pairs
        assert_eq!(
            coalesce(&[MB * 6 / 10; 8], MB, MB),
            vec![0..2, 2..4, 4..6, 6..8]
        );
        // empty partitions ride along with their neighbours
        assert_eq!(
            coalesce(&[0, 0, 2 * MB, 0, 2 * MB, 0], MB, MB),
            vec![0..4, 4..6]
        );
    }

    #[test]
    fn the_target_never_leaves_slots_idle_and_respects_the_minimum() {
        // 40 MiB over 8 slots: 5 MiB tasks, not one 40 MiB task
        assert_eq!(target_size(40 * MB, 8, 64 * MB, MB), 5 * MB);
        assert_eq!(target_size(10 * MB, 1000, 64 * MB, MB), MB);
        assert_eq!(target_size(10_000 * MB, 8, 64 * MB, MB), 64 * MB);
        assert_eq!(target_size(0, 0, 64 * MB, 0), 1);
    }
}
