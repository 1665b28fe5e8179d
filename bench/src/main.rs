//! Benchmarks. `bench clickstream`: the clickstream example on `autopipe local
//! --workers 2` against the same SQL on single-process DataFusion over the same files,
//! each writing its result as Parquet. Engines alternate per repetition (A B A B …) so
//! machine drift hits both; prints median/min/max and the ratio.
//!
//! Run: `cargo build --release -p autopipe -p bench && target/release/bench clickstream --rows 10000000`
//!
//! `bench tpch`: TPC-H against DataFusion, Spark, DuckDB, Ballista (see `tpch`).
//!
//! `bench raft`: proposals/s and leader failover of the replicated coordinator (see `raft`).
//!
//! `bench recovery`: a job with a worker SIGKILLed mid-job against it undisturbed.
//!
//! `bench scan`: tolerant CSV reading (dead letters) against DataFusion's CSV reader.
//!
//! `bench stragglers`: a job with a slow worker, with speculation against without.
//!
//! `bench autoscale`: a backlog job with `--autoscale 1..4` against one fixed worker.
//!
//! `bench tiny-files`: 2,000 tiny Parquet files with the input splits rule on and off.
//!
//! `bench skew`: a join with one hot key, the skew-join rule on and off (with
//! `--aggregate`: an aggregation, the skewed-aggregation rule on and off).
//!
//! `bench distinct`: per-session count(DISTINCT) against DataFusion and DuckDB.
//!
//! `bench kafka`: Kafka -> Parquet, a streaming job against a bare rdkafka loop.
//!
//! `bench kafka-latency`: produce-to-visible latency at a steady rate, against a bare
//! loop; `bench kafka-burst`: lag recovery after a 10x burst, scaling on and off;
//! `bench kafka-sink`: an exactly-once kafka sink against an at-least-once one.
//! Run: `cargo build --release --workspace && target/release/bench tpch --sf 1 --queries all`

use anyhow::{bail, Result};
use autopipe_common::session::context_for;
use autopipe_common::spec::PipelineSpec;
use clap::{Parser, Subcommand};
use datafusion::dataframe::DataFrameWriteOptions;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod autoscale;
mod distinct;
mod kafka;
mod kafka_latency;
mod lake;
mod raft;
mod recovery;
mod scan;
mod skew;
mod stragglers;
mod tiny_files;
mod tpch;

/// The median of some run times.
pub(crate) fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The same allocator as the `autopipe` binary, so the in-process DataFusion baseline
/// runs on it too.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// autopipe local vs single-process DataFusion on the clickstream example
    Clickstream {
        /// events to generate (data is cached per row count)
        #[arg(long, default_value_t = 10_000_000)]
        rows: u64,
        /// repetitions per engine
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// workers for autopipe local
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// where data and outputs go
        #[arg(long, default_value = "target/bench-data")]
        dir: PathBuf,
    },
    /// TPC-H on autopipe (local and cluster), DataFusion, Spark local[N] and DuckDB
    Tpch {
        /// scale factor (data is generated once per scale factor and cached)
        #[arg(long, default_value_t = 1.0)]
        sf: f64,
        /// `all` or a list like `1,3,5-7`
        #[arg(long, default_value = "all")]
        queries: String,
        /// engines in run order (autopipe-local, autopipe-cluster, datafusion, spark, duckdb, ballista)
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "autopipe-local,autopipe-cluster,datafusion,spark,duckdb"
        )]
        engines: Vec<String>,
        /// timed repetitions per query and engine (after one checked, untimed run)
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// skip the untimed first run of each query (and with it the answer check)
        #[arg(long)]
        no_warmup: bool,
        /// threads for DataFusion, DuckDB and Spark local[N]
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// autopipe workers
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// task slots per autopipe worker
        #[arg(long, default_value_t = 2)]
        slots: u32,
        /// where data, the Python venv and outputs go
        #[arg(long, default_value = "target/bench-data")]
        dir: PathBuf,
        /// also write the result table (markdown) to this file
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// The replicated coordinator on 3 processes: committed proposals/s (against a
    /// lone coordinator) and the time from SIGKILL of the leader to a new leader
    /// accepting a job
    Raft {
        /// seconds of proposals per configuration
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        /// concurrent proposing clients
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// leader kills
        #[arg(long, default_value_t = 3)]
        failovers: usize,
    },
    /// One job's wall time with a worker SIGKILLed mid-job against the same job
    /// undisturbed, and the ratio
    Recovery {
        /// TPC-H scale factor of the data
        #[arg(long, default_value_t = 10.0)]
        sf: f64,
        /// TPC-H query number
        #[arg(long, default_value_t = 18)]
        query: usize,
        /// repetitions of each run
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// the coordinator's --heartbeat-timeout, in seconds
        #[arg(long, default_value_t = 10.0)]
        heartbeat_timeout: f64,
        /// where data and outputs go
        #[arg(long, default_value = "target/bench-data")]
        dir: PathBuf,
    },
    /// Tolerant CSV reading (dead letters) against DataFusion's CSV reader on the same
    /// file, and over a copy with 1% bad rows
    Scan {
        /// rows of CSV (data is cached per row count)
        #[arg(long, default_value_t = 5_000_000)]
        rows: u64,
        /// repetitions per reader
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// scan partitions (and threads)
        #[arg(long, default_value_t = 2)]
        partitions: usize,
        /// where data goes
        #[arg(long, default_value = "target/bench-data")]
        dir: PathBuf,
    },
    /// Many tiny Parquet files: the same job with adaptive_splits on and off
    TinyFiles {
        /// Parquet files to spread the events over
        #[arg(long, default_value_t = 2_000)]
        files: usize,
        /// clickstream events (10 per file by default: about 2 KB files)
        #[arg(long, default_value_t = 20_000)]
        rows: u64,
        /// repetitions per setting
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// workers (processes)
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// task slots per worker
        #[arg(long, default_value_t = 4)]
        slots: u32,
        /// where data and outputs go
        #[arg(long, default_value = "target/bench-data")]
        dir: PathBuf,
    },
    /// Delta Lake: the delta sink against a Parquet directory, and a query over a
    /// table of many small appends before and after automatic compaction
    Lake {
        /// clickstream events for the sink throughput run
        #[arg(long, default_value_t = 2_000_000)]
        rows: u64,
        /// small appends before compaction
        #[arg(long, default_value_t = 2_000)]
        appends: usize,
        /// rows per append
        #[arg(long, default_value_t = 10)]
        rows_per_append: usize,
        /// repetitions per measurement
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// workers (processes)
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// task slots per worker
        #[arg(long, default_value_t = 2)]
        slots: u32,
        /// where data and outputs go
        #[arg(long, default_value = "target/bench-data")]
        dir: PathBuf,
    },
    /// Kafka -> Parquet: a streaming job against a bare rdkafka consumer loop
    Kafka {
        /// records in the topic
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
        /// topic partitions
        #[arg(long, default_value_t = 4)]
        partitions: u32,
        /// records per micro-batch (and per baseline Parquet file)
        #[arg(long, default_value_t = 100_000)]
        batch_rows: u64,
        /// autopipe workers (one consumer task each)
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// timed repetitions of each
        #[arg(long, default_value_t = 3)]
        reps: usize,
    },
    /// Kafka -> Kafka: an exactly-once kafka sink against an at-least-once one
    KafkaSink {
        /// records in the topic
        #[arg(long, default_value_t = 300_000)]
        records: u64,
        /// partitions of the source and sink topics
        #[arg(long, default_value_t = 4)]
        partitions: u32,
        /// records per micro-batch
        #[arg(long, default_value_t = 10_000)]
        batch_rows: u64,
        /// timed repetitions of each
        #[arg(long, default_value_t = 3)]
        reps: usize,
    },
    /// Kafka produce-to-visible latency at a steady rate, against a bare rdkafka loop
    KafkaLatency {
        /// records per second
        #[arg(long, default_value_t = 2_000)]
        rate: u64,
        /// seconds of producing
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// first seconds left out of the figures
        #[arg(long, default_value_t = 5)]
        warmup: u64,
        /// topic partitions
        #[arg(long, default_value_t = 4)]
        partitions: u32,
        /// autopipe workers
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// task slots per worker
        #[arg(long, default_value_t = 2)]
        slots: u32,
    },
    /// Kafka lag recovery after a 10x burst, consumer scaling on against off
    KafkaBurst {
        /// steady records per second (the burst is 10x)
        #[arg(long, default_value_t = 10_000)]
        rate: u64,
        /// most records per micro-batch: with small batches a task is bound by its
        /// per-batch round trips, which more tasks overlap
        #[arg(long, default_value_t = 2_000)]
        batch_rows: u64,
        /// per-record work: the job repeats each url this many times, reverses and
        /// upper-cases it (0: none)
        #[arg(long, default_value_t = 0)]
        work: u32,
        /// seconds of producing in all
        #[arg(long, default_value_t = 40)]
        seconds: u64,
        /// seconds of the burst, in the middle
        #[arg(long, default_value_t = 5)]
        burst_seconds: u64,
        /// topic partitions
        #[arg(long, default_value_t = 4)]
        partitions: u32,
        /// autopipe workers (the job starts with one consumer task per worker)
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// task slots per worker (room for the scaled-up tasks)
        #[arg(long, default_value_t = 4)]
        slots: u32,
    },
    /// Per-session count(DISTINCT kind) on autopipe local, DataFusion and DuckDB
    Distinct {
        /// clickstream events of the alternating runs
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        /// events of the one run per query on 2 workers that must finish (0: none)
        #[arg(long, default_value_t = 10_000_000)]
        big_rows: u64,
        /// Parquet files of events
        #[arg(long, default_value_t = 8)]
        files: usize,
        #[arg(long, default_value_t = 5)]
        reps: usize,
        #[arg(long, default_value_t = 2)]
        workers: usize,
        #[arg(long, default_value_t = 2)]
        slots: u32,
        /// threads (target partitions) of DataFusion and DuckDB
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// where data, outputs and the Python venv go
        #[arg(long, default_value = "target/bench-data")]
        dir: PathBuf,
    },
    /// A join with one hot key: the same job with the skew-join rule on and off
    Skew {
        /// clickstream events
        #[arg(long, default_value_t = 10_000_000)]
        rows: u64,
        /// Parquet files of events (one scan task each, at most)
        #[arg(long, default_value_t = 8)]
        files: usize,
        /// share of the events on one user
        #[arg(long, default_value_t = 0.3)]
        skew: f64,
        /// shuffle partitions of both join sides (enough that a 30% key stands out
        /// as 5x the median partition; the small ones are coalesced)
        #[arg(long, default_value_t = 32)]
        partitions: u32,
        /// skew_threshold_bytes of both runs (Spark's 256 MiB is above this data's
        /// hot partition)
        #[arg(long, default_value = "16MiB")]
        threshold: String,
        /// target_partition_bytes of both runs (default: the param's default); a
        /// skewed partition is split into pieces of the stage's task target, so one
        /// below it is left whole
        #[arg(long)]
        target: Option<String>,
        /// repetitions per setting
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// workers (processes)
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// task slots per worker
        #[arg(long, default_value_t = 2)]
        slots: u32,
        /// where data and outputs go
        #[arg(long, default_value = "target/bench-data")]
        dir: PathBuf,
        /// an aggregation by a key on which the hot user's events share one value
        /// and every other event has its own (the map tasks' partial aggregation
        /// gives up), with skew_aggregation on and off, instead of the join
        #[arg(long)]
        aggregate: bool,
    },
    /// Speculation against a slow worker: the same job with speculation on and off
    Stragglers {
        /// clickstream events
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        /// repetitions per setting
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// the slow worker's delay before every task
        #[arg(long, default_value_t = 5_000)]
        delay_ms: u64,
        /// where data and outputs go
        #[arg(long, default_value = "target/bench-data")]
        dir: PathBuf,
    },
    /// A backlog job on a coordinator with `--autoscale 1..4` against one fixed worker
    /// (workers of 1 slot), alternating per repetition
    Autoscale {
        /// clickstream events
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        /// repetitions per setting
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// a test-only delay before every task (an I/O-bound task); 0: CPU only
        #[arg(long, default_value_t = 0)]
        task_delay_ms: u64,
        /// the autoscaler's --backlog-timeout
        #[arg(long, default_value = "1s")]
        backlog_timeout: String,
        /// where data and outputs go
        #[arg(long, default_value = "target/bench-data")]
        dir: PathBuf,
    },
    /// (internal) a Ballista scheduler process for `tpch --engines ballista`
    #[command(hide = true)]
    BallistaScheduler {
        #[arg(long)]
        port: u16,
    },
    /// (internal) a Ballista executor process for `tpch --engines ballista`
    #[command(hide = true)]
    BallistaExecutor {
        #[arg(long)]
        scheduler_port: u16,
        #[arg(long)]
        port: u16,
        #[arg(long)]
        grpc_port: u16,
        #[arg(long)]
        slots: usize,
        #[arg(long)]
        work_dir: PathBuf,
    },
}

fn stats(mut v: Vec<Duration>) -> (f64, f64, f64) {
    v.sort();
    let s = |d: &Duration| d.as_secs_f64();
    (s(&v[v.len() / 2]), s(&v[0]), s(&v[v.len() - 1]))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Clickstream {
            rows,
            reps,
            workers,
            dir,
        } => clickstream(rows, reps, workers, &dir),
        Cmd::Tpch {
            sf,
            queries,
            engines,
            reps,
            no_warmup,
            threads,
            workers,
            slots,
            dir,
            report,
        } => tpch::run(tpch::Args {
            sf,
            queries: tpch::parse_queries(&queries)?,
            engines,
            reps,
            warmup: !no_warmup,
            threads,
            workers,
            slots,
            dir,
            report,
        }),
        Cmd::Raft {
            secs,
            clients,
            failovers,
        } => raft::run(raft::Args {
            secs,
            clients,
            failovers: failovers.max(1),
        }),
        Cmd::Recovery {
            sf,
            query,
            reps,
            heartbeat_timeout,
            dir,
        } => recovery::run(recovery::Args {
            sf,
            query,
            reps: reps.max(1),
            heartbeat_timeout,
            dir,
        }),
        Cmd::TinyFiles {
            files,
            rows,
            reps,
            workers,
            slots,
            dir,
        } => tiny_files::run(tiny_files::Args {
            files,
            rows,
            reps: reps.max(1),
            workers: workers.max(1),
            slots: slots.max(1),
            dir,
        }),
        Cmd::Lake {
            rows,
            appends,
            rows_per_append,
            reps,
            workers,
            slots,
            dir,
        } => lake::run(lake::Args {
            rows,
            appends: appends.max(1),
            rows_per_append: rows_per_append.max(1),
            reps: reps.max(1),
            workers: workers.max(1),
            slots: slots.max(1),
            dir,
        }),
        Cmd::Kafka {
            records,
            partitions,
            batch_rows,
            workers,
            reps,
        } => kafka::run(kafka::Args {
            records,
            partitions: partitions.max(1),
            batch_rows: batch_rows.max(1),
            workers: workers.max(1),
            reps: reps.max(1),
        }),
        Cmd::KafkaSink {
            records,
            partitions,
            batch_rows,
            reps,
        } => kafka::run_sink(kafka::SinkArgs {
            records,
            partitions: partitions.max(1),
            batch_rows: batch_rows.max(1),
            reps: reps.max(1),
        }),
        Cmd::KafkaLatency {
            rate,
            seconds,
            warmup,
            partitions,
            workers,
            slots,
        } => kafka_latency::latency(kafka_latency::Args {
            rate: rate.max(1),
            seconds: seconds.max(1),
            warmup,
            burst_seconds: 0,
            batch_rows: 0,
            work: 0,
            partitions: partitions.max(1),
            workers: workers.max(1),
            slots: slots.max(1),
        }),
        Cmd::KafkaBurst {
            rate,
            batch_rows,
            work,
            seconds,
            burst_seconds,
            partitions,
            workers,
            slots,
        } => kafka_latency::burst(kafka_latency::Args {
            rate: rate.max(1),
            seconds: seconds.max(1),
            warmup: 0,
            burst_seconds,
            batch_rows: batch_rows.max(1),
            work,
            partitions: partitions.max(1),
            workers: workers.max(1),
            slots: slots.max(1),
        }),
        Cmd::Distinct {
            rows,
            big_rows,
            files,
            reps,
            workers,
            slots,
            threads,
            dir,
        } => distinct::run(distinct::Args {
            rows,
            big_rows,
            files,
            reps: reps.max(1),
            workers: workers.max(1),
            slots: slots.max(1),
            threads: threads.max(1),
            dir,
        }),
        Cmd::Skew {
            rows,
            files,
            skew,
            partitions,
            threshold,
            target,
            reps,
            workers,
            slots,
            dir,
            aggregate,
        } => skew::run(skew::Args {
            rows,
            files,
            skew,
            partitions,
            threshold,
            target,
            reps: reps.max(1),
            workers: workers.max(1),
            slots: slots.max(1),
            dir,
            aggregate,
        }),
        Cmd::Stragglers {
            rows,
            reps,
            delay_ms,
            dir,
        } => stragglers::run(stragglers::Args {
            rows,
            reps: reps.max(1),
            delay_ms,
            dir,
        }),
        Cmd::Autoscale {
            rows,
            reps,
            task_delay_ms,
            backlog_timeout,
            dir,
        } => autoscale::run(autoscale::Args {
            rows,
            reps: reps.max(1),
            task_delay_ms,
            backlog_timeout,
            dir,
        }),
        Cmd::Scan {
            rows,
            reps,
            partitions,
            dir,
        } => scan::run(scan::Args {
            rows,
            reps: reps.max(1),
            partitions,
            dir,
        }),
        #[cfg(feature = "ballista")]
        Cmd::BallistaScheduler { port } => tpch::ballista::scheduler(port),
        #[cfg(feature = "ballista")]
        Cmd::BallistaExecutor {
            scheduler_port,
            port,
            grpc_port,
            slots,
            work_dir,
        } => tpch::ballista::executor(scheduler_port, port, grpc_port, slots, &work_dir),
        #[cfg(not(feature = "ballista"))]
        Cmd::BallistaScheduler { .. } | Cmd::BallistaExecutor { .. } => {
            bail!("this bench was built without `--features ballista`")
        }
    }
}

fn clickstream(rows: u64, reps: usize, workers: usize, dir: &Path) -> Result<()> {
    let bin = integration_tests::autopipe_bin();
    std::fs::create_dir_all(dir)?;
    let dir = &std::fs::canonicalize(dir)?;
    let data = dir.join(format!("clickstream-{rows}"));
    if !data.join("users.csv").exists() {
        eprintln!("generating {rows} events into {} ...", data.display());
        let s = Command::new(&bin)
            .args([
                "gen",
                "clickstream",
                "--rows",
                &rows.to_string(),
                "--files",
                "8",
            ])
            .arg("--out")
            .arg(&data)
            .status()?;
        if !s.success() {
            bail!("gen failed");
        }
    }
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/clickstream.toml"),
    )?;
    let spec_path = dir.join("clickstream-bench.toml");
    let text = example
        .replace(
            "path = \"data/events\"",
            &format!("path = \"{}\"", data.join("events").display()),
        )
        .replace(
            "path = \"data/users.csv\"",
            &format!("path = \"{}\"", data.join("users.csv").display()),
        )
        .replace(
            "path = \"out/revenue_by_country\"",
            &format!("path = \"{}\"", dir.join("out-autopipe").display()),
        );
    std::fs::write(&spec_path, &text)?;
    let spec = PipelineSpec::from_file(&spec_path)?.normalize(dir, "bench")?;
    let rt = tokio::runtime::Runtime::new()?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);

    let mut ap = Vec::new();
    let mut df = Vec::new();
    for rep in 0..reps {
        let t = Instant::now();
        let out = Command::new(&bin)
            .arg("local")
            .arg(&spec_path)
            .args(["--workers", &workers.to_string(), "-o", "json"])
            .output()?;
        let d = t.elapsed();
        if !out.status.success() {
            bail!(
                "autopipe local failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        ap.push(d);
        let t = Instant::now();
        let out_dir = dir.join("out-datafusion");
        let _ = std::fs::remove_dir_all(&out_dir);
        rt.block_on(async {
            let ctx = context_for(&spec, cores).await?;
            let frame = ctx.sql(&spec.transform.sql).await?;
            frame
                .write_parquet(
                    &format!("{}/", out_dir.display()),
                    DataFrameWriteOptions::new().with_partition_by(spec.sink.partition_by.clone()),
                    None,
                )
                .await?;
            anyhow::Ok(())
        })?;
        let d2 = t.elapsed();
        df.push(d2);
        eprintln!(
            "rep {rep}: autopipe {:.2}s, datafusion {:.2}s",
            d.as_secs_f64(),
            d2.as_secs_f64()
        );
    }
    let (am, amin, amax) = stats(ap);
    let (dm, dmin, dmax) = stats(df);
    println!("clickstream {rows} rows, {reps} reps, {cores} cores");
    println!(
        "{:<36} {:>9} {:>9} {:>9} {:>7}",
        "engine", "median s", "min s", "max s", "ratio"
    );
    println!(
        "{:<36} {:>9.2} {:>9.2} {:>9.2} {:>7.2}",
        format!("autopipe local --workers {workers}"),
        am,
        amin,
        amax,
        1.0
    );
    println!(
        "{:<36} {:>9.2} {:>9.2} {:>9.2} {:>7.2}",
        "datafusion single process",
        dm,
        dmin,
        dmax,
        dm / am
    );
    println!("autopipe / datafusion = {:.2}x", am / dm);
    Ok(())
}
