//! `autopipe gen clickstream`: writes the example dataset — `events/` as Parquet files
//! (event_id, user_id, session_id, ts, kind, amount) and `users.csv` (id, country,
//! signup_ts, plan). `--skew S` puts that share of events on user_id 1.

use anyhow::{bail, Context, Result};
use datafusion::arrow::array::{Float64Array, Int64Array, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

/// Generator options.
#[derive(Debug, Clone)]
pub struct GenOptions {
    /// total events
    pub rows: u64,
    /// share of events on the hot user (0..1)
    pub skew: f64,
    /// number of event files
    pub files: usize,
    /// RNG seed (same seed, same data)
    pub seed: u64,
}

const COUNTRIES: [&str; 20] = [
    "US", "DE", "FR", "GB", "IN", "BR", "JP", "CN", "CA", "AU", "ES", "IT", "NL", "SE", "PL", "MX",
    "KR", "ZA", "NG", "AR",
];
const PLANS: [&str; 3] = ["free", "pro", "enterprise"];
const KINDS: [&str; 4] = ["view", "click", "add_to_cart", "purchase"];
/// 2024-01-01T00:00:00Z in microseconds
const T0_US: i64 = 1_704_067_200_000_000;

/// Number of users for `rows` events.
pub fn user_count(rows: u64) -> u64 {
    (rows / 100).max(1000)
}

/// Writes the dataset under `out`.
pub fn clickstream(out: &Path, o: &GenOptions) -> Result<()> {
    if !(0.0..1.0).contains(&o.skew) {
        bail!("--skew must be in [0, 1), got {}", o.skew);
    }
    if o.files == 0 {
        bail!("--files must be at least 1");
    }
    let events_dir = out.join("events");
    if events_dir.exists() {
        std::fs::remove_dir_all(&events_dir)
            .with_context(|| format!("cannot clear {}", events_dir.display()))?;
    }
    std::fs::create_dir_all(&events_dir)
        .with_context(|| format!("cannot create {}", events_dir.display()))?;
    let users = user_count(o.rows);
    let schema = Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::Int64, false),
        Field::new("user_id", DataType::Int64, false),
        Field::new("session_id", DataType::Int64, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("kind", DataType::Utf8, false),
        Field::new("amount", DataType::Float64, false),
    ]));
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let per_file = o.rows.div_ceil(o.files as u64);
    let mut next_id = 0u64;
    for f in 0..o.files {
        let mut rng = StdRng::seed_from_u64(o.seed.wrapping_mul(1_000_003).wrapping_add(f as u64));
        let n = per_file.min(o.rows - next_id.min(o.rows));
        let path = events_dir.join(format!("part-{f:05}.parquet"));
        let file = std::fs::File::create(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let mut w = ArrowWriter::try_new(file, schema.clone(), Some(props.clone()))?;
        let mut left = n;
        while left > 0 {
            let b = left.min(65_536) as usize;
            let mut ids = Vec::with_capacity(b);
            let mut uids = Vec::with_capacity(b);
            let mut sids = Vec::with_capacity(b);
            let mut ts = Vec::with_capacity(b);
            let mut kinds = Vec::with_capacity(b);
            let mut amounts = Vec::with_capacity(b);
            for _ in 0..b {
                let uid = if o.skew > 0.0 && rng.random_bool(o.skew) {
                    1
                } else {
                    rng.random_range(1..=users as i64)
                };
                let kind_roll: f64 = rng.random();
                let k = if kind_roll < 0.6 {
                    0
                } else if kind_roll < 0.85 {
                    1
                } else if kind_roll < 0.95 {
                    2
                } else {
                    3
                };
                ids.push(next_id as i64);
                uids.push(uid);
                sids.push(uid * 1000 + rng.random_range(0..20));
                ts.push(T0_US + rng.random_range(0..(90i64 * 86_400 * 1_000_000)));
                kinds.push(KINDS[k]);
                amounts.push(if k == 3 {
                    (rng.random_range(100..50_000) as f64) / 100.0
                } else {
                    0.0
                });
                next_id += 1;
            }
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from(ids)),
                    Arc::new(Int64Array::from(uids)),
                    Arc::new(Int64Array::from(sids)),
                    Arc::new(TimestampMicrosecondArray::from(ts).with_timezone("UTC")),
                    Arc::new(StringArray::from(kinds)),
                    Arc::new(Float64Array::from(amounts)),
                ],
            )?;
            w.write(&batch)?;
            left -= b as u64;
        }
        w.close()?;
    }
    let users_path = out.join("users.csv");
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(&users_path)
            .with_context(|| format!("cannot create {}", users_path.display()))?,
    );
    writeln!(f, "id,country,signup_ts,plan")?;
    let mut rng = StdRng::seed_from_u64(o.seed ^ 0x5eed);
    for id in 1..=users {
        let day = rng.random_range(0..1000);
        let d = chrono::DateTime::from_timestamp(1_600_000_000 + day * 86_400, 0)
            .expect("in range")
            .format("%Y-%m-%dT%H:%M:%S");
        writeln!(
            f,
            "{id},{},{d},{}",
            COUNTRIES[rng.random_range(0..COUNTRIES.len())],
            PLANS[rng.random_range(0..PLANS.len())]
        )?;
    }
    f.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_the_requested_rows_in_the_requested_files_with_skew() {
        let dir = tempfile::tempdir().unwrap();
        let o = GenOptions {
            rows: 10_000,
            skew: 0.3,
            files: 8,
            seed: 7,
        };
        clickstream(dir.path(), &o).unwrap();
        let files: Vec<_> = std::fs::read_dir(dir.path().join("events"))
            .unwrap()
            .collect();
        assert_eq!(files.len(), 8);
        let mut rows = 0;
        let mut hot = 0;
        for f in files {
            let file = std::fs::File::open(f.unwrap().path()).unwrap();
            let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                .unwrap()
                .build()
                .unwrap();
            for b in r {
                let b = b.unwrap();
                rows += b.num_rows();
                let u = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
                hot += u.iter().filter(|v| *v == Some(1)).count();
            }
        }
        assert_eq!(rows, 10_000);
        let share = hot as f64 / rows as f64;
        assert!((0.25..0.35).contains(&share), "hot share {share}");
        let users = std::fs::read_to_string(dir.path().join("users.csv")).unwrap();
        assert_eq!(users.lines().count() as u64, 1 + user_count(10_000));
    }
}
