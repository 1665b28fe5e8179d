//! High-cardinality `count(DISTINCT)` (issue 12): per-session distinct event kinds
//! over 200k events (40k sessions) on 2 worker processes whose tasks get 4 MiB of
//! memory each. Planned as two group-bys sharing one exchange, the job spills where
//! it must and writes exactly the oracle's rows; the old plan kept a hash set per
//! session in every task. Distinct aggregates over two columns plan as grouping
//! sets, one per column, under the same limit.

use anyhow::Result;
use integration_tests::oracle::check_spec_output;
use integration_tests::{gen_clickstream, metric_sum, write_spec, Cluster};

const QUERIES: &[(&str, &str)] = &[
    (
        "kinds",
        "SELECT session_id, count(DISTINCT kind) AS kinds FROM events GROUP BY session_id",
    ),
    (
        "kinds_events",
        "SELECT session_id, count(DISTINCT kind) AS kinds, count(*) AS events, \
         avg(amount) AS avg_amount, min(DISTINCT kind) AS first_kind \
         FROM events GROUP BY session_id",
    ),
    (
        "kinds_users",
        "SELECT session_id % 1000 AS bucket, count(DISTINCT kind) AS kinds, \
         count(DISTINCT user_id) AS users, count(*) AS events, avg(amount) AS avg_amount \
         FROM events GROUP BY session_id % 1000",
    ),
];

#[test]
fn count_distinct_per_session_under_a_small_memory_limit_matches_the_oracle() -> Result<()> {
    let dir = tempfile::tempdir()?;
    gen_clickstream(&dir.path().join("data"), 200_000, 4)?;
    // 16 MiB per worker, 4 MiB per task (4 slots)
    let c = Cluster::start_with(2, 4, &["--memory-limit", "16MiB"])?;
    for (name, sql) in QUERIES {
        let spec = dir.path().join(format!("{name}.toml"));
        write_spec(
            &spec,
            &format!(
                r#"
[job]
name = "{name}"
[job.params]
shuffle_partitions = 4
[[sources]]
name = "events"
format = "parquet"
path = "data/events"
[transform]
sql = "{sql}"
[sink]
format = "parquet"
path = "out/{name}"
"#
            ),
        )?;
        let (v, took) = c.run(&spec)?;
        assert_eq!(v["state"], "succeeded", "{name}: {v}");
        check_spec_output(dir.path(), &spec)?;
        eprintln!("{name}: {took:?}");
    }
    let spilled: f64 = c
        .workers
        .iter()
        .map(|w| metric_sum(&w.http, "autopipe_worker_spilled_bytes_total").unwrap_or(0.0))
        .sum();
    eprintln!("spilled {spilled} bytes");
    Ok(())
}
