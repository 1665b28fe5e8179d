//! `bench distinct` (issue 12): per-session `count(DISTINCT kind)` over the
//! clickstream events, on `autopipe local` (the whole process: embedded cluster
//! start, plan, stages, commit), single-process DataFusion (stock configuration,
//! `--threads` partitions) and DuckDB (Python, `SET threads`, `COPY … TO` Parquet;
//! the query alone is timed), alternating per repetition. Three queries: the
//! issue's (`count(DISTINCT kind)` alone, which DataFusion's single-distinct rule
//! rewrites), the same with `count(*)` and `avg(amount)` beside it, and distinct
//! counts of two columns (both of which only autopipe's rule rewrites). Each query
//! also runs as a job on a cluster started once (`--workers` worker processes): its
//! time from submission to commit as the coordinator recorded it, without the
//! embedded cluster's start. Then, once each, the queries over `--big-rows` events
//! on `autopipe local --workers 2`, which must finish.
//!
//! Run: `cargo build --release --workspace && target/release/bench distinct`

use crate::median;
use anyhow::{bail, Context, Result};
use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Options of `bench distinct`.
pub struct Args {
    pub rows: u64,
    pub big_rows: u64,
    pub files: usize,
    pub reps: usize,
    pub workers: usize,
    pub slots: u32,
    pub threads: usize,
    pub dir: PathBuf,
}

const QUERIES: [(&str, &str); 3] = [
    (
        "distinct",
        "SELECT session_id, count(DISTINCT kind) AS kinds FROM events GROUP BY session_id",
    ),
    (
        "distinct_count_avg",
        "SELECT session_id, count(DISTINCT kind) AS kinds, count(*) AS events, \
         avg(amount) AS avg_amount FROM events GROUP BY session_id",
    ),
    (
        "two_distincts",
        "SELECT session_id, count(DISTINCT kind) AS kinds, count(DISTINCT user_id) AS users \
         FROM events GROUP BY session_id",
    ),
];

fn data(dir: &Path, rows: u64, files: usize) -> Result<PathBuf> {
    let data = dir.join(format!("clickstream-{rows}-{files}"));
    if !data.join("users.csv").exists() {
        eprintln!("generating {rows} events into {} ...", data.display());
        let g = integration_tests::cli(&[
            "gen",
            "clickstream",
            "--rows",
            &rows.to_string(),
            "--files",
            &files.to_string(),
            "--out",
            data.to_str().context("utf8 path")?,
        ])?;
        if !g.status.success() {
            bail!("gen failed: {}", String::from_utf8_lossy(&g.stderr));
        }
    }
    Ok(data)
}

fn spec(dir: &Path, name: &str, events: &Path, sql: &str) -> Result<PathBuf> {
    let path = dir.join(format!("{name}.toml"));
    integration_tests::write_spec(
        &path,
        &format!(
            r#"
[job]
name = "{name}"
[[sources]]
name = "events"
format = "parquet"
path = "{events}"
[transform]
sql = "{sql}"
[sink]
format = "parquet"
path = "{out}"
mode = "overwrite"
"#,
            events = events.display(),
            out = dir.join(format!("out-{name}")).display(),
        ),
    )?;
    Ok(path)
}

/// `spec` as a job on the running cluster `c`: the time from its submission to its
/// commit, as the coordinator recorded them.
fn job_time(c: &integration_tests::Cluster, spec: &Path) -> Result<Duration> {
    let (v, _) = c.run(spec)?;
    if v["state"] != "succeeded" {
        bail!("job {} failed: {v}", spec.display());
    }
    let s = v["wall_time_s"]
        .as_f64()
        .with_context(|| format!("no wall_time_s in {v}"))?;
    Ok(Duration::from_secs_f64(s))
}

/// `autopipe local SPEC`, timed as a whole; its peak RSS in KiB where GNU time is
/// there to measure it.
fn local(spec: &Path, workers: usize, slots: u32) -> Result<(Duration, Option<u64>)> {
    let bin = integration_tests::autopipe_bin();
    let rss_file = spec.with_extension("rss");
    let gnu_time = Path::new("/usr/bin/time").exists();
    let mut cmd = if gnu_time {
        let mut c = Command::new("/usr/bin/time");
        c.arg("-f").arg("%M").arg("-o").arg(&rss_file).arg(&bin);
        c
    } else {
        Command::new(&bin)
    };
    cmd.arg("local")
        .arg(spec)
        .args(["--workers", &workers.to_string()])
        .args(["--slots", &slots.to_string(), "-o", "json"]);
    let t = Instant::now();
    let out = cmd.output()?;
    let took = t.elapsed();
    if !out.status.success() {
        bail!(
            "autopipe local {} failed: {}",
            spec.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rss = std::fs::read_to_string(&rss_file)
        .ok()
        .and_then(|s| s.trim().lines().last()?.trim().parse().ok());
    Ok((took, rss))
}

fn datafusion(
    rt: &tokio::runtime::Runtime,
    events: &Path,
    sql: &str,
    threads: usize,
    out: &Path,
) -> Result<Duration> {
    let _ = std::fs::remove_dir_all(out);
    let t = Instant::now();
    rt.block_on(async {
        let ctx =
            SessionContext::new_with_config(SessionConfig::new().with_target_partitions(threads));
        ctx.register_parquet(
            "events",
            events.to_str().context("utf8")?,
            ParquetReadOptions::default(),
        )
        .await?;
        ctx.sql(sql)
            .await?
            .write_parquet(
                &format!("{}/", out.display()),
                DataFrameWriteOptions::new(),
                None,
            )
            .await?;
        anyhow::Ok(())
    })?;
    Ok(t.elapsed())
}

fn duckdb(py: &Path, events: &Path, sql: &str, threads: usize, out: &Path) -> Result<Duration> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("distinct_duckdb.py");
    let o = Command::new(py)
        .arg(script)
        .arg(events)
        .arg(threads.to_string())
        .arg(sql)
        .arg(out)
        .output()?;
    if !o.status.success() {
        bail!("duckdb failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    let secs: f64 = String::from_utf8_lossy(&o.stdout).trim().parse()?;
    Ok(Duration::from_secs_f64(secs))
}

fn row(name: &str, t: &[Duration], base: Duration) {
    let m = median(t.to_vec());
    println!(
        "| {name} | {:.3} | {:.3} | {:.3} | {:.2}x |",
        m.as_secs_f64(),
        t.iter().min().copied().unwrap_or_default().as_secs_f64(),
        t.iter().max().copied().unwrap_or_default().as_secs_f64(),
        m.as_secs_f64() / base.as_secs_f64()
    );
}

pub fn run(a: Args) -> Result<()> {
    std::fs::create_dir_all(&a.dir)?;
    let dir = std::fs::canonicalize(&a.dir)?.join("distinct");
    std::fs::create_dir_all(&dir)?;
    let py = crate::tpch::engines::venv_python(&a.dir, "duckdb", "duckdb")?;
    let rt = tokio::runtime::Runtime::new()?;
    let events = data(&dir, a.rows, a.files)?.join("events");
    println!(
        "{} events in {} files; autopipe local {} workers x {} slots; datafusion and duckdb {} threads; {} reps alternating",
        a.rows, a.files, a.workers, a.slots, a.threads, a.reps
    );
    let cluster = integration_tests::Cluster::start(a.workers, a.slots)?;
    for (name, sql) in QUERIES {
        let spec = spec(&dir, name, &events, sql)?;
        let (mut ap, mut df, mut dk, mut rss) = (vec![], vec![], vec![], vec![]);
        let mut jobs = vec![];
        for rep in 0..a.reps {
            let (t, r) = local(&spec, a.workers, a.slots)?;
            ap.push(t);
            rss.extend(r);
            jobs.push(job_time(&cluster, &spec)?);
            df.push(datafusion(
                &rt,
                &events,
                sql,
                a.threads,
                &dir.join("out-df"),
            )?);
            dk.push(duckdb(
                &py,
                &events,
                sql,
                a.threads,
                &dir.join("out-duckdb.parquet"),
            )?);
            eprintln!(
                "{name} rep {rep}: autopipe {:.3}s (job {:.3}s), datafusion {:.3}s, duckdb {:.3}s",
                ap[rep].as_secs_f64(),
                jobs[rep].as_secs_f64(),
                df[rep].as_secs_f64(),
                dk[rep].as_secs_f64()
            );
        }
        let base = median(dk.clone());
        println!("\n{name}: {sql}");
        println!("| engine | median s | min s | max s | ratio to duckdb |");
        println!("| --- | --- | --- | --- | --- |");
        row("autopipe local", &ap, base);
        row("autopipe cluster (job)", &jobs, base);
        row("datafusion", &df, base);
        row("duckdb", &dk, base);
        if let Some(max) = rss.iter().max() {
            println!(
                "autopipe local peak RSS: {} MiB (max over reps)",
                max / 1024
            );
        }
    }
    if a.big_rows > 0 {
        let events = data(&dir, a.big_rows, a.files)?.join("events");
        println!(
            "\n{} events, autopipe local --workers 2, once each:",
            a.big_rows
        );
        for (name, sql) in QUERIES {
            let spec = spec(&dir, &format!("{name}_big"), &events, sql)?;
            let (t, r) = local(&spec, 2, a.slots)?;
            println!(
                "{name}: finished in {:.2} s, peak RSS {}",
                t.as_secs_f64(),
                r.map(|k| format!("{} MiB", k / 1024)).unwrap_or("?".into())
            );
        }
    }
    Ok(())
}
