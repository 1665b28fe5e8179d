//! `bench skew`: a join where one key holds `--skew` of the events (one hot user, from
//! `autopipe gen clickstream --skew`), with the skew-join rule (issue 12 §2.4) on and
//! off, alternating per repetition on one cluster. Both sides are shuffled (no
//! broadcast) into `--partitions` partitions; the join feeds an aggregation, so the
//! join stage is the bottleneck. Prints the wall time and the join stage's max /
//! median task time of each, and the ratios.
//!
//! `--aggregate`: per-key totals where the hot user's events share one key and
//! every other event has a key of its own, so the map tasks' partial aggregation
//! passes rows through (DataFusion gives it up once most rows are distinct groups)
//! and the hot key's rows reach one reducer partition; the skewed-aggregation rule
//! (`skew_aggregation`) on and off.
//!
//! Run: `cargo build --release --workspace && target/release/bench skew [--aggregate]`

use crate::median;
use anyhow::{bail, Context, Result};
use integration_tests::{gen_clickstream_skewed, write_spec, Cluster};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Options of `bench skew`.
pub struct Args {
    pub rows: u64,
    pub files: usize,
    pub skew: f64,
    pub partitions: u32,
    pub threshold: String,
    pub target: Option<String>,
    pub reps: usize,
    pub workers: usize,
    pub slots: u32,
    pub dir: PathBuf,
    pub aggregate: bool,
}

const JOIN_SQL: &str = "SELECT u.country, e.kind, count(*) AS n, sum(e.amount) AS total FROM events e JOIN users u ON e.user_id = u.id GROUP BY u.country, e.kind";
const AGGREGATE_SQL: &str = "SELECT k, count(*) AS n, sum(amount) AS total, max(session_id) AS last_session FROM (SELECT CASE WHEN user_id = 1 THEN -1 ELSE event_id END AS k, amount, session_id FROM events) GROUP BY k";

fn spec(dir: &Path, name: &str, a: &Args, params: &str) -> Result<PathBuf> {
    let path = dir.join(format!("{name}.toml"));
    let sql = if a.aggregate { AGGREGATE_SQL } else { JOIN_SQL };
    write_spec(
        &path,
        &format!(
            r#"
[job]
name = "{name}"
[job.params]
shuffle_partitions = {partitions}
broadcast_join_max_bytes = 0
skew_threshold_bytes = "{threshold}"
{target}
{params}
[[sources]]
name = "events"
format = "parquet"
path = "data/events"
[[sources]]
name = "users"
format = "csv"
path = "data/users.csv"
[transform]
sql = "{sql}"
[sink]
format = "parquet"
path = "out/{name}"
mode = "overwrite"
"#,
            partitions = a.partitions,
            threshold = a.threshold,
            target = a
                .target
                .as_ref()
                .map(|t| format!("target_partition_bytes = \"{t}\""))
                .unwrap_or_default(),
        ),
    )?;
    Ok(path)
}

/// Wall time, the join (or aggregation) stage's (max, median) task time in ms, and
/// the `skew_split` decisions, of one run.
fn run_job(c: &Cluster, spec: &Path, aggregate: bool) -> Result<(Duration, u64, u64, usize)> {
    let (v, t) = c.run(spec)?;
    if v["state"] != "succeeded" {
        bail!("job failed: {v}");
    }
    let id = v["job_id"].as_str().context("job id")?;
    let splits = c
        .cli_json(&["decisions", id])?
        .as_array()
        .map(|ds| ds.iter().filter(|d| d["kind"] == "skew_split").count())
        .unwrap_or(0);
    // the join stage reads both sides; the aggregation stage is the one after the
    // scan (a pre-merge stage is appended after it)
    let join = v["stages"]
        .as_array()
        .and_then(|s| match aggregate {
            true => s.get(1),
            false => s
                .iter()
                .find(|st| st["input_stages"].as_array().is_some_and(|i| i.len() == 2)),
        })
        .context("the join or aggregation stage")?;
    let max = join["task_ms_max"].as_u64().unwrap_or(0);
    let med = join["task_ms_median"].as_u64().unwrap_or(0);
    Ok((t, max, med, splits))
}

pub fn run(a: Args) -> Result<()> {
    let dir = a
        .dir
        .join(format!("skew-{}-{}-{}", a.rows, a.files, a.skew));
    std::fs::create_dir_all(&dir)?;
    let dir = std::fs::canonicalize(&dir)?;
    if !dir.join("data/events").exists() {
        gen_clickstream_skewed(&dir.join("data"), a.rows, a.files, a.skew)?;
    }
    let rule = if a.aggregate {
        "skew_aggregation"
    } else {
        "skew_join"
    };
    let on = spec(&dir, "skew_on", &a, &format!("{rule} = true"))?;
    let off = spec(&dir, "skew_off", &a, &format!("{rule} = false"))?;
    let c = Cluster::start(a.workers, a.slots)?;
    let (mut t_on, mut t_off) = (vec![], vec![]);
    let (mut r_on, mut r_off) = (vec![], vec![]);
    let mut fired = 0;
    for _ in 0..a.reps {
        let (t, max, med, _) = run_job(&c, &off, a.aggregate)?;
        t_off.push(t);
        r_off.push(max as f64 / med.max(1) as f64);
        let (t, max, med, splits) = run_job(&c, &on, a.aggregate)?;
        t_on.push(t);
        r_on.push(max as f64 / med.max(1) as f64);
        fired += usize::from(splits > 0);
    }
    let mid = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "{} events in {} files, {:.0}% on one user; {} partitions, skew_threshold_bytes = {}; {} workers x {} slots; {} reps (alternating)",
        a.rows,
        a.files,
        a.skew * 100.0,
        a.partitions,
        a.threshold,
        a.workers,
        a.slots,
        a.reps
    );
    println!(
        "| {rule} | median wall (s) | min (s) | max (s) | {} stage max/median task time |",
        if a.aggregate { "aggregation" } else { "join" }
    );
    println!("| --- | --- | --- | --- | --- |");
    for (name, t, r) in [("false", &t_off, &r_off), ("true", &t_on, &r_on)] {
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} | {:.1} |",
            median(t.clone()).as_secs_f64(),
            t.iter().min().copied().unwrap_or_default().as_secs_f64(),
            t.iter().max().copied().unwrap_or_default().as_secs_f64(),
            mid(r.clone())
        );
    }
    println!(
        "the rule split a partition in {fired} of {} runs with it on{}",
        a.reps,
        if fired == 0 {
            " (nothing skewed past the task target: both settings ran the same plan)"
        } else {
            ""
        }
    );
    println!(
        "rule on / off: {:.2}x wall time (off / on = {:.2}x faster)",
        median(t_on.clone()).as_secs_f64() / median(t_off.clone()).as_secs_f64(),
        median(t_off).as_secs_f64() / median(t_on).as_secs_f64()
    );
    Ok(())
}
