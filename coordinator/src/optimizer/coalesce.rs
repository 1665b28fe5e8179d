//! Post-shuffle coalescing. Trigger: a stage whose hash-shuffled inputs are complete
//! and none of whose tasks has run (`optimizer::replan`). Action: contiguous reducer
//! partitions are packed greedily into tasks of about the target size, and a pack
//! below `min_partition_bytes` merges into its smaller neighbour. Anchor: Spark AQE's
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
/// (a partition larger than the target is a range of its own), then merges every
/// range below `min` bytes into its smaller neighbour. `sizes` is each reducer
/// partition's bytes summed over every input it reads. Empty input: no ranges.
pub fn coalesce(sizes: &[u64], target: u64, min: u64) -> Vec<Range<u32>> {
    let mut packs: Vec<(Range<u32>, u64)> = vec![];
    for (p, &size) in sizes.iter().enumerate() {
        let p = p as u32;
        match packs.last_mut() {
            Some((r, bytes)) if *bytes + size <= target || *bytes == 0 => {
                r.end = p + 1;
                *bytes += size;
            }
            _ => packs.push((p..p + 1, size)),
        }
    }
    // merge small packs into their smaller neighbour, smallest first
    while packs.len() > 1 {
        let Some((i, _)) = packs
            .iter()
            .enumerate()
            .filter(|(_, (_, b))| *b < min)
            .min_by_key(|(_, (_, b))| *b)
        else {
            break;
        };
        let left = i.checked_sub(1).map(|j| packs[j].1);
        let right = packs.get(i + 1).map(|p| p.1);
        let into = match (left, right) {
            (Some(l), Some(r)) if r < l => i + 1,
            (Some(_), _) => i - 1,
            (None, _) => i + 1,
        };
        let (a, b) = (i.min(into), i.max(into));
        let merged = (packs[a].0.start..packs[b].0.end, packs[a].1 + packs[b].1);
        packs[a] = merged;
        packs.remove(b);
    }
    packs.into_iter().map(|(r, _)| r).collect()
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
        // equal neighbours: into the left
        let sizes = [64 * MB, half, 64 * MB];
        assert_eq!(coalesce(&sizes, 64 * MB, MB), vec![0..2, 2..3]);
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

    #[test]
    fn the_target_never_leaves_slots_idle_and_respects_the_minimum() {
        // 40 MiB over 8 slots: 5 MiB tasks, not one 40 MiB task
        assert_eq!(target_size(40 * MB, 8, 64 * MB, MB), 5 * MB);
        assert_eq!(target_size(10 * MB, 1000, 64 * MB, MB), MB);
        assert_eq!(target_size(10_000 * MB, 8, 64 * MB, MB), 64 * MB);
        assert_eq!(target_size(0, 0, 64 * MB, 0), 1);
    }
}
