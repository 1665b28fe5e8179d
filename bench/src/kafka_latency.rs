//! `bench kafka-latency` and `bench kafka-burst` (issue 13), on a real Kafka-protocol
//! broker (tansu, memory storage, on 127.0.0.1) and a local cluster.
//!
//! **kafka-latency**: end-to-end latency at a steady rate, produce time → visible in
//! a committed file. A producer in this process (rdkafka) sends `--rate` records/s for
//! `--seconds`; each record's Kafka timestamp is its create time. A watcher lists the
//! sink directory every 20 ms, and a record's latency is the time its file was first
//! seen less its timestamp (the job writes `_timestamp`). The first `--warmup`
//! seconds are left out. Baseline, in the same run: a bare rdkafka consumer loop that
//! writes one Parquet file per `batch_interval` (the job's default, 1 s) and renames
//! it into place (so a file is visible whole, as the job's are). Printed: p50, p99
//! and max of each, and autopipe's p99 against the goal (≤ 2 s) and the baseline's.
//!
//! **kafka-burst**: lag recovery after a burst. `--rate` records/s for `--seconds`,
//! of which `--burst-seconds` in the middle at 10× the rate. Measured: from the
//! burst's start until the job's lag (status, polled every 200 ms) is back under the
//! threshold of two batch intervals at the steady rate, with `kafka_autoscale` on
//! and off (`catch_up_target` 2 s, `max_batch_rows` `--batch-rows`), on fresh topics. The
//! job starts with one consumer task per worker (default: one worker of 4 slots,
//! room for 4 tasks). Printed: both recovery times and their ratio, and the most
//! consumer tasks the scaled run had.
//!
//! Run: `cargo build --release --workspace && target/release/bench kafka-latency`
//! and `target/release/bench kafka-burst`.

use anyhow::{bail, Context, Result};
use autopipe_common::kafka::{self, Record};
use autopipe_common::tolerant::DeadLetters;
use datafusion::arrow::array::{Array, TimestampMillisecondArray};
use integration_tests::kafka::Broker;
use integration_tests::{write_spec, Cluster};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Options of both benchmarks.
pub struct Args {
    pub rate: u64,
    pub seconds: u64,
    pub warmup: u64,
    pub burst_seconds: u64,
    pub batch_rows: u64,
    pub work: u32,
    pub partitions: u32,
    pub workers: usize,
    pub slots: u32,
}

const PARTITIONS_SCHEMA: &str = r#"{ user_id = "int64", url = "utf8", amount = "float64" }"#;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

fn spec_text(broker: &str, topic: &str, out: &Path, params: &str) -> String {
    spec_with_work(broker, topic, out, params, 0)
}

/// The job's spec; `rounds` > 0 adds a column that repeats the url that many times,
/// reverses and upper-cases it (per-record work, to make the consumers the
/// bottleneck).
fn spec_with_work(broker: &str, topic: &str, out: &Path, params: &str, rounds: u32) -> String {
    let extra = if rounds > 0 {
        format!(", length(upper(reverse(repeat(url, {rounds})))) AS work")
    } else {
        String::new()
    };
    format!(
        r#"
[job]
name = "kafka_latency"
mode = "streaming"
[job.params]
{params}
[[sources]]
name = "clicks"
format = "kafka"
brokers = "{broker}"
topic = "{topic}"
schema = {PARTITIONS_SCHEMA}
[transform]
sql = "SELECT user_id, url, amount, _timestamp AS produced{extra} FROM clicks"
[sink]
format = "parquet"
path = "{out}"
"#,
        out = out.display()
    )
}

/// Produces at `rate(t)` records/s (t: seconds since the start) for `seconds`,
/// round-robin over `partitions`, in 10 ms ticks.
fn produce(
    broker: &str,
    topic: &str,
    partitions: u32,
    seconds: f64,
    rate: impl Fn(f64) -> u64,
) -> Result<u64> {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("linger.ms", "2")
        .set("enable.idempotence", "false")
        .create()?;
    let started = Instant::now();
    let (mut sent, mut due) = (0u64, 0.0f64);
    let mut tick = started;
    while started.elapsed().as_secs_f64() < seconds {
        let t = started.elapsed().as_secs_f64();
        due += rate(t) as f64 / 100.0;
        while (sent as f64) < due.floor() {
            let value = format!(
                r#"{{"user_id": {sent}, "url": "/page/{}", "amount": {}.5}}"#,
                sent % 1000,
                sent % 100
            );
            let part = (sent % partitions as u64) as i32;
            let key = part.to_string();
            let mut rec = BaseRecord::to(topic)
                .payload(&value)
                .key(&key)
                .partition(part);
            loop {
                match p.send(rec) {
                    Ok(()) => break,
                    Err((e, r)) => {
                        if !matches!(
                            e.rdkafka_error_code(),
                            Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                        ) {
                            bail!("produce: {e}");
                        }
                        rec = r;
                        p.poll(Duration::from_millis(5));
                    }
                }
            }
            sent += 1;
        }
        p.poll(Duration::ZERO);
        tick += Duration::from_millis(10);
        if let Some(wait) = tick.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    p.flush(Duration::from_secs(30))?;
    Ok(sent)
}

/// Watches `dir` for Parquet files until `stop`; returns each record's
/// (produce ms, visible ms).
fn watch(dir: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Result<Vec<(i64, i64)>>> {
    std::thread::spawn(move || {
        let mut seen = HashSet::new();
        let mut out = vec![];
        loop {
            let done = stop.load(Ordering::SeqCst);
            let at = now_ms();
            for f in integration_tests::files_under(&dir) {
                if !f.ends_with(".parquet") || !seen.insert(f.clone()) {
                    continue;
                }
                let file = std::fs::File::open(dir.join(&f))?;
                let reader =
                    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)?
                        .build()?;
                for b in reader {
                    let b = b?;
                    let col = b.column_by_name("produced").context("produced")?;
                    let ts = col
                        .as_any()
                        .downcast_ref::<TimestampMillisecondArray>()
                        .context("produced is a ms timestamp")?;
                    for i in 0..ts.len() {
                        if ts.is_valid(i) {
                            out.push((ts.value(i), at));
                        }
                    }
                }
            }
            if done {
                return Ok(out);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

fn percentile(sorted: &[i64], q: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// (p50, p99, max, n) of the latencies of records produced `warmup_ms` after `t0`.
fn latencies(pairs: &[(i64, i64)], t0: i64, warmup_ms: i64) -> (i64, i64, i64, usize) {
    let mut l: Vec<i64> = pairs
        .iter()
        .filter(|(p, _)| *p >= t0 + warmup_ms)
        .map(|(p, v)| (v - p).max(0))
        .collect();
    l.sort_unstable();
    (
        percentile(&l, 0.5),
        percentile(&l, 0.99),
        l.last().copied().unwrap_or(0),
        l.len(),
    )
}

/// The bare loop: every `interval` it writes what it polled as one Parquet file
/// (the same columns), renamed into `out` when closed.
fn baseline_loop(
    broker: &str,
    topic: &str,
    partitions: u32,
    out: PathBuf,
    interval: Duration,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<()>> {
    let (broker, topic) = (broker.to_string(), topic.to_string());
    std::thread::spawn(move || {
        let spec = spec_text(&broker, &topic, &out, "");
        let source = autopipe_common::spec::PipelineSpec::parse(&spec, "bench")?.sources[0].clone();
        let schema = kafka::table_schema(&source)?;
        let consumer: BaseConsumer = kafka::client_config(&source)
            .set("group.id", "bench.latency")
            .set("enable.auto.commit", "false")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions as i32 {
            tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        let tmp = out.with_extension("tmp");
        std::fs::create_dir_all(&tmp)?;
        std::fs::create_dir_all(&out)?;
        let dead = DeadLetters::default();
        let mut n = 0;
        while !stop.load(Ordering::SeqCst) {
            let deadline = Instant::now() + interval;
            let mut batch = vec![];
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                if let Some(m) = consumer.poll(left.min(Duration::from_millis(100))) {
                    let m = m?;
                    batch.push(Record::from_message(&m));
                }
            }
            if batch.is_empty() {
                continue;
            }
            let (rb, _) = kafka::decode(&source.name, &topic, &schema, &batch, &dead)?;
            let rb = rb.project(&[0, 1, 2, 6])?;
            let rb = datafusion::arrow::record_batch::RecordBatch::try_new(
                Arc::new(datafusion::arrow::datatypes::Schema::new(vec![
                    rb.schema().field(0).clone(),
                    rb.schema().field(1).clone(),
                    rb.schema().field(2).clone(),
                    rb.schema().field(3).clone().with_name("produced"),
                ])),
                rb.columns().to_vec(),
            )?;
            let name = format!("part-{n}.parquet");
            let f = std::fs::File::create(tmp.join(&name))?;
            let mut w = parquet::arrow::ArrowWriter::try_new(f, rb.schema(), None)?;
            w.write(&rb)?;
            w.close()?;
            std::fs::rename(tmp.join(&name), out.join(&name))?;
            n += 1;
        }
        Ok(())
    })
}

/// Waits until the job's status says its consumers committed (they are reading).
fn wait_reading(c: &Cluster, id: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = c.cli_json(&["status", id])?;
        let reading = st["stream"]["partitions"]
            .as_array()
            .is_some_and(|ps| !ps.is_empty() && ps.iter().all(|p| p["offset"].as_i64() >= Some(0)));
        if reading {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the job's consumers did not start: {st}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `bench kafka-latency`.
pub fn latency(a: Args) -> Result<()> {
    let broker = Broker::start()?;
    let cluster = Cluster::start(a.workers, a.slots)?;
    let dir = tempfile::tempdir()?;
    let secs = a.seconds as f64;
    let warmup = a.warmup as i64 * 1000;
    // autopipe, default batch interval
    let topic = "lat_autopipe";
    broker.create_topic(topic, a.partitions)?;
    let out = dir.path().join("autopipe");
    let spec = dir.path().join("lat.toml");
    write_spec(&spec, &spec_text(&broker.address, topic, &out, ""))?;
    let id = cluster.submit(&spec)?;
    wait_reading(&cluster, &id)?;
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch(out.clone(), stop.clone());
    let t0 = now_ms();
    let sent = produce(&broker.address, topic, a.partitions, secs, |_| a.rate)?;
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::SeqCst);
    let job = watcher.join().expect("watcher")?;
    cluster.cli_json(&["cancel", &id])?;
    eprintln!("autopipe: {sent} sent, {} seen", job.len());
    // the bare loop, same rate
    let topic = "lat_baseline";
    broker.create_topic(topic, a.partitions)?;
    let out = dir.path().join("baseline");
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch(out.clone(), stop.clone());
    let stop_loop = Arc::new(AtomicBool::new(false));
    let looped = baseline_loop(
        &broker.address,
        topic,
        a.partitions,
        out.clone(),
        Duration::from_millis(autopipe_common::spec::DEFAULT_BATCH_INTERVAL_MS),
        stop_loop.clone(),
    );
    std::thread::sleep(Duration::from_secs(2));
    let t1 = now_ms();
    let sent_b = produce(&broker.address, topic, a.partitions, secs, |_| a.rate)?;
    std::thread::sleep(Duration::from_secs(4));
    stop_loop.store(true, Ordering::SeqCst);
    looped.join().expect("baseline loop")?;
    stop.store(true, Ordering::SeqCst);
    let base = watcher.join().expect("watcher")?;
    eprintln!("baseline: {sent_b} sent, {} seen", base.len());
    let (j50, j99, jmax, jn) = latencies(&job, t0, warmup);
    let (b50, b99, bmax, bn) = latencies(&base, t1, warmup);
    if jn == 0 || bn == 0 {
        bail!("no records measured (autopipe {jn}, baseline {bn})");
    }
    println!(
        "| engine ({} records/s, {} s, first {} s left out) | records | p50 ms | p99 ms | max ms |\n| --- | --- | --- | --- | --- |\n| bare rdkafka loop, a Parquet file per 1 s | {bn} | {b50} | {b99} | {bmax} |\n| autopipe streaming job, batch_interval 1 s ({} worker(s)) | {jn} | {j50} | {j99} | {jmax} |",
        a.rate, a.seconds, a.warmup, a.workers
    );
    println!(
        "autopipe p99 {:.2} s (goal <= 2 s); autopipe / baseline p99: {:.2}",
        j99 as f64 / 1000.0,
        j99 as f64 / b99.max(1) as f64
    );
    Ok(())
}

/// One burst run: seconds from the burst's start until the lag is under the
/// threshold, and the most consumer tasks seen.
fn burst_run(
    c: &Cluster,
    broker: &Broker,
    topic: &str,
    out: &Path,
    a: &Args,
    autoscale: bool,
) -> Result<(f64, usize)> {
    broker.create_topic(topic, a.partitions)?;
    let spec = out.with_extension("toml");
    let params = format!(
        "kafka_autoscale = {autoscale}\ncatch_up_target = \"2s\"\nscale_down_delay = \"10s\"\nmax_batch_rows = {}",
        a.batch_rows
    );
    write_spec(
        &spec,
        &spec_with_work(&broker.address, topic, out, &params, a.work),
    )?;
    let id = c.submit(&spec)?;
    wait_reading(c, &id)?;
    let burst_at = (a.seconds.saturating_sub(a.burst_seconds) / 2) as f64;
    let burst_end = burst_at + a.burst_seconds as f64;
    let rate = a.rate;
    let (b, t) = (broker.address.clone(), topic.to_string());
    let parts = a.partitions;
    let secs = a.seconds as f64;
    let producer = std::thread::spawn(move || {
        produce(&b, &t, parts, secs, |t| {
            if t >= burst_at && t < burst_end {
                rate * 10
            } else {
                rate
            }
        })
    });
    let started = Instant::now();
    let threshold = (2 * rate) as i64; // two 1 s batch intervals at the steady rate
    let (mut recovered, mut most) = (None, 0usize);
    let deadline = Duration::from_secs(a.seconds + 120);
    loop {
        let st = c.cli_json(&["status", &id])?;
        let lag = st["stream"]["lag"].as_i64().unwrap_or(0);
        let tasks = st["stream"]["tasks"].as_array().map_or(0, Vec::len);
        let t = started.elapsed().as_secs_f64();
        if t >= burst_at {
            most = most.max(tasks);
        }
        // recovered: under the threshold once the burst has ended
        if t >= burst_end && lag <= threshold {
            recovered = Some(t - burst_at);
            break;
        }
        if started.elapsed() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    producer.join().expect("producer")?;
    c.cli_json(&["cancel", &id])?;
    let r = recovered.context("the lag never came back under the threshold")?;
    Ok((r, most))
}

/// Runs `bench kafka-burst`.
pub fn burst(a: Args) -> Result<()> {
    let broker = Broker::start()?;
    let cluster = Cluster::start(a.workers, a.slots)?;
    let dir = tempfile::tempdir()?;
    let (on, tasks) = burst_run(
        &cluster,
        &broker,
        "burst_on",
        &dir.path().join("on"),
        &a,
        true,
    )?;
    eprintln!("scaling on: lag recovered {on:.1} s after the burst began ({tasks} tasks at most)");
    let (off, _) = burst_run(
        &cluster,
        &broker,
        "burst_off",
        &dir.path().join("off"),
        &a,
        false,
    )?;
    eprintln!("scaling off: lag recovered {off:.1} s after the burst began");
    println!(
        "| kafka_autoscale (catch_up_target 2 s, max_batch_rows {}, work {}) | lag back under {} records, s after the burst began | consumer tasks at most |\n| --- | --- | --- |\n| off | {off:.1} | {} |\n| on | {on:.1} | {tasks} |",
        a.batch_rows,
        a.work,
        2 * a.rate,
        a.workers
    );
    println!(
        "recovery time, scaling on / off: {:.2}",
        on / off.max(0.001)
    );
    Ok(())
}
