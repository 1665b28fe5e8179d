//! Skewed joins. Trigger: a stage whose one partitioned hash join reads two
//! hash-shuffled inputs (`StageJoin`), complete, none of its tasks run yet
//! (`optimizer::replan`). A reducer partition of one side is skewed when it is larger
//! than both `skew_factor` x that side's median partition and `skew_threshold_bytes`.
//! Action: the skewed partition is divided along map-output boundaries into ranges of
//! map tasks of about the target size, and each range becomes a task that reads the
//! other side's whole matching partition (both sides skewed: every pair of ranges).
//! A side is divided only where the join type allows it (`StageJoin::split_left`,
//! `split_right`). Anchor: Spark AQE's `OptimizeSkewedJoin` (factor 5, threshold 256
//! MiB, pieces of max(advisory size, the non-skewed partitions' mean)); here a piece
//! aims at the stage's task target instead of the advisory size: the advisory size
//! capped by the input spread over the alive slots, so a hot partition smaller than
//! 64 MiB is still spread over the cluster. Default: on; `skew_join = false` turns
//! it off.
//!
//! Skewed aggregations. Trigger: a stage whose aggregation merges the partial states
//! of one hash-shuffled input (the planner gave it a `PreMergePlan`), re-planned as
//! above. A partition of that input skewed by the same test (say a hot key whose rows
//! the map tasks' partial aggregation passed through, as DataFusion does once most
//! rows are distinct groups) is divided into the same map-task ranges. Action: each
//! range becomes a task of a new pre-merge stage that merges its partial states into
//! partial states again (DataFusion's `PartialReduce`, hash-shuffled as the input
//! was); the partition's one merge task then reads their output instead, a few rows
//! per hot key. Default: on; `skew_aggregation = false` turns it off. Spark's AQE
//! has no such split (it relies on partial aggregation); neither has Ballista.

use std::ops::Range;

/// The median of `sizes` (0 when empty).
pub fn median(sizes: &[u64]) -> u64 {
    if sizes.is_empty() {
        return 0;
    }
    let mut v = sizes.to_vec();
    v.sort_unstable();
    v[v.len() / 2]
}

/// Which partitions of one side are skewed: larger than `factor` x the side's median
/// partition and than `threshold`.
pub fn skewed(sizes: &[u64], factor: f64, threshold: u64) -> Vec<bool> {
    let limit = (median(sizes) as f64 * factor).max(threshold as f64);
    sizes.iter().map(|&s| s as f64 > limit).collect()
}

/// The size a skewed partition's pieces aim at: `target` (the stage's task target,
/// `coalesce::target_size`), or the mean of the side's partitions that are not skewed
/// when larger.
pub fn split_target(sizes: &[u64], skewed: &[bool], target: u64) -> u64 {
    let normal: Vec<u64> = sizes
        .iter()
        .zip(skewed)
        .filter(|(_, &s)| !s)
        .map(|(&b, _)| b)
        .collect();
    let mean = if normal.is_empty() {
        0
    } else {
        normal.iter().sum::<u64>() / normal.len() as u64
    };
    target.max(mean).max(1)
}

/// Divides one partition, whose bytes in each map task's output are `per_map`, into
/// contiguous ranges of map tasks of about `target` bytes each (a map task is never
/// divided). Fewer than two ranges: the partition cannot be divided.
pub fn map_ranges(per_map: &[u64], target: u64) -> Vec<Range<u32>> {
    let mut out: Vec<(Range<u32>, u64)> = vec![];
    for (m, &b) in per_map.iter().enumerate() {
        let m = m as u32;
        match out.last_mut() {
            // an empty map output never starts a piece of its own
            Some((r, bytes)) if *bytes + b <= target || *bytes == 0 || b == 0 => {
                r.end = m + 1;
                *bytes += b;
            }
            _ => out.push((m..m + 1, b)),
        }
    }
    out.into_iter().map(|(r, _)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    #[test]
    fn one_giant_partition_is_skewed_and_the_rest_are_not() {
        let mut sizes = vec![10 * MB; 9];
        sizes.push(400 * MB);
        let s = skewed(&sizes, 5.0, 256 * MB);
        assert_eq!(s.iter().filter(|&&x| x).count(), 1);
        assert!(s[9]);
        // large but under the absolute threshold: not skewed
        let s = skewed(&sizes, 5.0, 512 * MB);
        assert!(s.iter().all(|&x| !x));
        // uniformly large: nothing is 5x the median
        assert!(skewed(&[300 * MB; 8], 5.0, 256 * MB).iter().all(|&x| !x));
    }

    #[test]
    fn all_empty_partitions_are_never_skewed() {
        assert!(skewed(&[0; 16], 5.0, 0).iter().all(|&x| !x));
        assert!(skewed(&[], 5.0, 0).is_empty());
        assert_eq!(median(&[]), 0);
    }

    #[test]
    fn a_skewed_partition_is_divided_along_map_outputs() {
        // 8 map tasks wrote 50 MiB each of the hot partition: 64 MiB pieces hold one
        // map output each (two would be 100 MiB)
        assert_eq!(map_ranges(&[50 * MB; 8], 64 * MB).len(), 8);
        assert_eq!(
            map_ranges(&[30 * MB; 8], 64 * MB),
            vec![0..2, 2..4, 4..6, 6..8]
        );
        // one map task holds it all: it cannot be divided
        assert_eq!(map_ranges(&[0, 400 * MB, 0], 64 * MB), vec![0..3]);
        assert_eq!(map_ranges(&[400 * MB], 64 * MB), vec![0..1]);
    }

    #[test]
    fn pieces_aim_at_the_larger_of_the_task_target_and_the_normal_mean() {
        let sizes = [100 * MB, 100 * MB, 2000 * MB];
        let s = skewed(&sizes, 5.0, 256 * MB);
        assert_eq!(split_target(&sizes, &s, 64 * MB), 100 * MB);
        assert_eq!(split_target(&sizes, &s, 128 * MB), 128 * MB);
        assert_eq!(split_target(&[0, 0], &[true, true], 0), 1);
    }
}
