//! Hot keys of a map task's output: every `STRIDE`-th row of each hash partition is
//! sampled, its key (the hash exchange's expressions) counted in a small Misra-Gries
//! summary per partition, so the coordinator can name the key behind a skewed
//! partition (`optimizer::skew`). Bounded: `COUNTERS` keys per partition while
//! sampling, and only keys holding at least `MIN_SHARE` of their partition, at most
//! `KEYS_PER_PARTITION` of them in at most `MAX_PARTITIONS` partitions, are reported.

use datafusion::arrow::array::UInt32Array;
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::ScalarValue;
use datafusion::error::Result;
use datafusion::physical_expr::{Partitioning, PhysicalExpr};
use std::collections::HashMap;
use std::sync::Arc;

/// One row in this many is sampled.
const STRIDE: usize = 64;
/// Keys a partition's summary tracks at once.
const COUNTERS: usize = 8;
/// Reported keys hold at least this share of their partition's rows.
const MIN_SHARE: f64 = 0.05;
/// Keys reported per partition.
const KEYS_PER_PARTITION: usize = 3;
/// Partitions reported per task (the largest).
const MAX_PARTITIONS: usize = 16;

/// Samples the keys of one map task's hash partitions.
pub struct KeySampler {
    exprs: Vec<Arc<dyn PhysicalExpr>>,
    names: Vec<String>,
    /// offset of the next sampled row in the partition's next batch
    next: Vec<usize>,
    counters: Vec<HashMap<String, u64>>,
}

impl KeySampler {
    /// A sampler for a hash exchange; `None` for any other partitioning.
    pub fn new(partitioning: &Partitioning) -> Option<Self> {
        let Partitioning::Hash(exprs, n) = partitioning else {
            return None;
        };
        let names = exprs
            .iter()
            .map(|e| {
                let s = e.to_string();
                // a column prints as `name@index`
                s.split_once('@').map_or(s.clone(), |(n, _)| n.to_string())
            })
            .collect();
        Some(Self {
            exprs: exprs.clone(),
            names,
            next: vec![0; *n],
            counters: vec![HashMap::new(); *n],
        })
    }

    /// Counts the sampled rows of `batch`, a piece of partition `p`.
    pub fn observe(&mut self, p: usize, batch: &RecordBatch) -> Result<()> {
        let n = batch.num_rows();
        let Some(next) = self.next.get_mut(p) else {
            return Ok(());
        };
        if *next >= n {
            *next -= n;
            return Ok(());
        }
        let rows: Vec<u32> = (*next..n).step_by(STRIDE).map(|i| i as u32).collect();
        *next = (*next + rows.len() * STRIDE) - n;
        let sample = take_record_batch(batch, &UInt32Array::from(rows))?;
        let keys = self
            .exprs
            .iter()
            .map(|e| e.evaluate(&sample)?.into_array(sample.num_rows()))
            .collect::<Result<Vec<_>>>()?;
        for row in 0..sample.num_rows() {
            let mut key = String::new();
            for (i, (name, col)) in self.names.iter().zip(&keys).enumerate() {
                if i > 0 {
                    key.push_str(", ");
                }
                let v = ScalarValue::try_from_array(col, row)?;
                key.push_str(&format!("{name}={v}"));
            }
            misra_gries(&mut self.counters[p], key);
        }
        Ok(())
    }

    /// The hot keys of each partition with `rows[p]` rows: (partition, [(key,
    /// estimated rows)]), largest first, bounded as the module says.
    pub fn hot_keys(&self, rows: &[u64]) -> Vec<(u32, Vec<(String, u64)>)> {
        let mut out: Vec<(u32, Vec<(String, u64)>)> = self
            .counters
            .iter()
            .enumerate()
            .filter_map(|(p, c)| {
                let total = *rows.get(p)?;
                let mut keys: Vec<(String, u64)> = c
                    .iter()
                    .map(|(k, n)| (k.clone(), (n * STRIDE as u64).min(total)))
                    .filter(|(_, est)| total > 0 && *est as f64 >= MIN_SHARE * total as f64)
                    .collect();
                keys.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                keys.truncate(KEYS_PER_PARTITION);
                (!keys.is_empty()).then_some((p as u32, keys))
            })
            .collect();
        out.sort_by_key(|(p, _)| std::cmp::Reverse(rows[*p as usize]));
        out.truncate(MAX_PARTITIONS);
        out.sort_by_key(|(p, _)| *p);
        out
    }
}

/// Adds one sighting of `key` to a Misra-Gries summary of `COUNTERS` counters: a key
/// seen more than 1 / (COUNTERS + 1) of the time is always among them.
fn misra_gries(c: &mut HashMap<String, u64>, key: String) {
    if let Some(n) = c.get_mut(&key) {
        *n += 1;
    } else if c.len() < COUNTERS {
        c.insert(key, 1);
    } else {
        c.retain(|_, n| {
            *n -= 1;
            *n > 0
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::physical_expr::expressions::Column;

    fn batch(values: impl IntoIterator<Item = i64>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "user_id",
            DataType::Int64,
            false,
        )]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from_iter_values(values))]).unwrap()
    }

    #[test]
    fn a_key_holding_a_third_of_a_partition_is_named_with_its_share() {
        let col: Arc<dyn PhysicalExpr> = Arc::new(Column::new("user_id", 0));
        let mut s = KeySampler::new(&Partitioning::Hash(vec![col], 2)).unwrap();
        // partition 1: 30% of 100k rows are user 1, the rest spread over 10k users
        let mut rows = 0;
        for chunk in 0..100 {
            let b = batch((0..1000).map(|i| {
                if i % 10 < 3 {
                    1
                } else {
                    2 + (chunk * 1000 + i) % 10_000
                }
            }));
            rows += b.num_rows() as u64;
            s.observe(1, &b).unwrap();
        }
        let hot = s.hot_keys(&[0, rows]);
        let [(1, keys)] = hot.as_slice() else {
            panic!("{hot:?}")
        };
        assert_eq!(keys[0].0, "user_id=1");
        let share = keys[0].1 as f64 / rows as f64;
        assert!((0.2..=0.35).contains(&share), "{share}");
        assert_eq!(keys.len(), 1, "no other key holds 5%: {keys:?}");
    }

    #[test]
    fn uniform_keys_and_empty_partitions_report_nothing() {
        let col: Arc<dyn PhysicalExpr> = Arc::new(Column::new("user_id", 0));
        let mut s = KeySampler::new(&Partitioning::Hash(vec![col], 3)).unwrap();
        for chunk in 0..50 {
            s.observe(0, &batch((0..1000).map(|i| chunk * 1000 + i)))
                .unwrap();
        }
        s.observe(2, &batch([])).unwrap();
        assert!(s.hot_keys(&[50_000, 0, 0]).is_empty());
        assert!(KeySampler::new(&Partitioning::RoundRobinBatch(4)).is_none());
    }

    #[test]
    fn sampling_continues_across_small_batches() {
        let col: Arc<dyn PhysicalExpr> = Arc::new(Column::new("user_id", 0));
        let mut s = KeySampler::new(&Partitioning::Hash(vec![col], 1)).unwrap();
        // 640 one-row batches of key 7: every 64th row is sampled, 10 in all
        for _ in 0..640 {
            s.observe(0, &batch([7])).unwrap();
        }
        assert_eq!(
            s.hot_keys(&[640]),
            vec![(0, vec![("user_id=7".into(), 640)])]
        );
    }
}
