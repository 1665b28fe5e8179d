//! `bench lake`: Delta Lake tables (issue 15), on one cluster (a coordinator and
//! `--workers` workers of `--slots` slots, as processes).
//!
//! 1. **Sink throughput.** The same job (every one of `--rows` clickstream events)
//!    into a Parquet directory and into a Delta table, both overwritten each time,
//!    alternating per repetition: median wall times and their ratio.
//! 2. **Compaction.** `--appends` small appends (`--rows-per-append` rows each)
//!    into a Delta table with `compaction = false`; the median time of an
//!    aggregation over the table; then one more append with compaction on (the
//!    default settings), the cluster's rule compacts in the background, and the
//!    query runs again: the ratio, the files before and after, and the write
//!    amplification the `compaction` decisions report.
//!
//! Run: `cargo build --release --workspace && target/release/bench lake`

use crate::median;
use anyhow::{bail, Context, Result};
use integration_tests::{events_job, gen_clickstream, Cluster};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Options of `bench lake`.
pub struct Args {
    pub rows: u64,
    pub appends: usize,
    pub rows_per_append: usize,
    pub reps: usize,
    pub workers: usize,
    pub slots: u32,
    pub dir: PathBuf,
}

fn run_ok(c: &Cluster, spec: &Path) -> Result<Duration> {
    let (v, t) = c.run(spec)?;
    if v["state"] != "succeeded" {
        bail!("job {} failed: {v}", spec.display());
    }
    Ok(t)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The files of the delta table at `url` now.
fn table_files(rt: &tokio::runtime::Runtime, url: &str) -> Result<usize> {
    rt.block_on(async {
        let v = autopipe_common::delta::latest_version(url)
            .await?
            .context("no table")?;
        let s = autopipe_common::delta::snapshot(url, v, "bench", &[]).await?;
        Ok(s.files.len())
    })
}

/// Writes an append job of rows `first..first + n` with `params`.
fn append_spec(dir: &Path, i: usize, n: usize, params: &str) -> Result<PathBuf> {
    let csv = dir.join("append.csv");
    let mut text = String::from("id,kind,amount\n");
    for k in 0..n {
        let id = i * n + k;
        text += &format!("{id},{},{}\n", ["view", "click", "buy"][id % 3], id % 100);
    }
    std::fs::write(&csv, text)?;
    let f = dir.join("append.toml");
    std::fs::write(
        &f,
        format!(
            r#"[job]
name = "append"
[job.params]
{params}
[[sources]]
name = "a"
format = "csv"
path = "append.csv"
schema = "id BIGINT, kind VARCHAR, amount BIGINT"
[transform]
sql = "SELECT id, kind, amount FROM a"
[sink]
format = "delta"
path = "lake/appends"
mode = "append"
"#
        ),
    )?;
    Ok(f)
}

fn query_spec(dir: &Path) -> Result<PathBuf> {
    let f = dir.join("query.toml");
    std::fs::write(
        &f,
        r#"[job]
name = "query"
[[sources]]
name = "t"
format = "delta"
path = "lake/appends"
[transform]
sql = "SELECT kind, count(*) AS n, sum(amount) AS s FROM t GROUP BY kind"
[sink]
format = "parquet"
path = "out/query"
"#,
    )?;
    Ok(f)
}

pub fn run(a: Args) -> Result<()> {
    let dir = a.dir.join(format!("lake-{}", a.rows));
    std::fs::create_dir_all(&dir)?;
    let dir = std::fs::canonicalize(&dir)?;
    if !dir.join("data/events").exists() {
        gen_clickstream(&dir.join("data"), a.rows, 8)?;
    }
    let rt = tokio::runtime::Runtime::new()?;
    let c = Cluster::start(a.workers, a.slots)?;

    // 1. sink throughput
    let parquet = events_job(&dir, "to_parquet", "", "SELECT * FROM events")?;
    let delta = events_job(
        &dir,
        "to_delta",
        "compaction = false",
        "SELECT * FROM events",
    )?;
    let text = std::fs::read_to_string(&delta)?.replace(
        "[sink]\nformat = \"parquet\"",
        "[sink]\nmode = \"overwrite\"\nformat = \"delta\"",
    );
    std::fs::write(&delta, text)?;
    let (mut t_parquet, mut t_delta) = (vec![], vec![]);
    for _ in 0..a.reps {
        t_parquet.push(run_ok(&c, &parquet)?);
        t_delta.push(run_ok(&c, &delta)?);
    }
    let (mp, md) = (median(t_parquet), median(t_delta));
    println!(
        "sink throughput, {} events, {} workers x {} slots, {} reps (alternating):",
        a.rows, a.workers, a.slots, a.reps
    );
    println!("| sink | median (s) | events/s |");
    println!("| --- | --- | --- |");
    println!(
        "| parquet directory | {:.2} | {:.0} |",
        secs(mp),
        a.rows as f64 / secs(mp)
    );
    println!(
        "| delta table | {:.2} | {:.0} |",
        secs(md),
        a.rows as f64 / secs(md)
    );
    println!("delta / parquet throughput: {:.2}x", secs(mp) / secs(md));

    // 2. compaction
    let table = dir.join("lake/appends");
    if table.exists() {
        std::fs::remove_dir_all(&table)?;
    }
    let url = format!("file://{}/", table.display());
    let started = Instant::now();
    for i in 0..a.appends {
        run_ok(
            &c,
            &append_spec(&dir, i, a.rows_per_append, "compaction = false")?,
        )?;
    }
    let append_s = started.elapsed();
    let query = query_spec(&dir)?;
    let before_files = table_files(&rt, &url)?;
    let before: Vec<Duration> = (0..a.reps)
        .map(|_| run_ok(&c, &query))
        .collect::<Result<_>>()?;
    // one more append, with compaction on: the rule takes it from there
    run_ok(
        &c,
        &append_spec(&dir, a.appends, a.rows_per_append, "compaction = true")?,
    )?;
    let t0 = Instant::now();
    let mut last = (usize::MAX, 0);
    loop {
        let files = table_files(&rt, &url)?;
        let d = c.cli_json(&["decisions"])?;
        let compactions: Vec<&serde_json::Value> = d
            .as_array()
            .context("decisions")?
            .iter()
            .filter(|d| d["kind"] == "compaction")
            .collect();
        let open = compactions
            .iter()
            .any(|d| d["effect"].as_str().unwrap_or("").is_empty());
        // settled: no compaction open and nothing changed for a second
        if !open && !compactions.is_empty() && (files, compactions.len()) == last {
            break;
        }
        last = (files, compactions.len());
        if t0.elapsed() > Duration::from_secs(1800) {
            bail!("compaction did not settle in 30 min");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let compact_s = t0.elapsed();
    let after_files = table_files(&rt, &url)?;
    let after: Vec<Duration> = (0..a.reps)
        .map(|_| run_ok(&c, &query))
        .collect::<Result<_>>()?;
    let d = c.cli_json(&["decisions"])?;
    let effects: Vec<String> = d
        .as_array()
        .context("decisions")?
        .iter()
        .filter(|d| d["kind"] == "compaction")
        .filter_map(|d| d["effect"].as_str().map(str::to_string))
        .collect();
    let amplification = effects
        .last()
        .and_then(|e| e.split("write amplification is ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or("?")
        .to_string();
    let (mb, ma) = (median(before), median(after));
    println!(
        "compaction: {} appends of {} rows ({:.1} s), then the rule on (defaults)",
        a.appends,
        a.rows_per_append,
        secs(append_s)
    );
    println!("| table | files | query median (s) |");
    println!("| --- | --- | --- |");
    println!("| before compaction | {before_files} | {:.3} |", secs(mb));
    println!(
        "| after {} compactions ({:.1} s) | {after_files} | {:.3} |",
        effects.len(),
        secs(compact_s),
        secs(ma)
    );
    println!(
        "query after / before: {:.2}x faster; write amplification {amplification}",
        secs(mb) / secs(ma)
    );
    Ok(())
}
