//! `bench kafka` (issue 13): Kafka → Parquet throughput of a streaming job against a
//! bare rdkafka consumer loop writing the same Parquet, in one run, over the same
//! topic on a real Kafka-protocol broker (tansu, memory storage, on 127.0.0.1).
//!
//! - The topic gets `--records` JSON clicks over `--partitions` partitions, produced
//!   once by Python's confluent-kafka (not timed).
//! - **baseline**: one rdkafka consumer in this process assigns every partition from
//!   the beginning and polls; every `--batch-rows` records it decodes the JSON values
//!   with the same decoder the workers use (`kafka::decode`) and writes one Parquet
//!   file with arrow's `ArrowWriter`. Timed from the assign to the last file closed.
//! - **autopipe**: a streaming job `SELECT * FROM clicks` into a Parquet sink on a
//!   cluster of one coordinator and `--workers` workers (one consumer task per worker),
//!   `max_batch_rows = --batch-rows`. Timed from the submission until the job's
//!   committed rows reach `--records` (every batch committed and published).
//!
//! Both run `--reps` times, alternating; the median records/s and the ratio are
//! printed. Run: `cargo build --release --workspace && target/release/bench kafka`

use crate::median;
use anyhow::{bail, Context, Result};
use autopipe_common::kafka::{self, Record};
use autopipe_common::tolerant::DeadLetters;
use integration_tests::kafka::Broker;
use integration_tests::{write_spec, Cluster};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use std::path::Path;
use std::time::{Duration, Instant};

/// Options of `bench kafka`.
pub struct Args {
    pub records: u64,
    pub partitions: u32,
    pub batch_rows: u64,
    pub workers: usize,
    pub reps: usize,
}

const SCHEMA: &str = r#"{ user_id = "int64", url = "utf8", amount = "float64", ts = "int64" }"#;

fn spec_text(broker: &str, topic: &str, out: &Path, batch_rows: u64) -> String {
    let sink = format!("format = \"parquet\"\npath = \"{}\"", out.display());
    job_text(broker, topic, &sink, batch_rows)
}

/// The benchmark's streaming job from `topic`, its `[sink]` lines `sink`.
fn job_text(broker: &str, topic: &str, sink: &str, batch_rows: u64) -> String {
    format!(
        r#"
[job]
name = "kafka_bench"
mode = "streaming"
[job.params]
max_batch_rows = {batch_rows}
[[sources]]
name = "clicks"
format = "kafka"
brokers = "{broker}"
topic = "{topic}"
schema = {SCHEMA}
[transform]
sql = "SELECT * FROM clicks"
[sink]
{sink}
"#
    )
}

/// Creates `topic` with `partitions` partitions and produces `records` JSON clicks
/// to it with Python's confluent-kafka (not timed).
fn produce_clicks(broker: &Broker, topic: &str, partitions: u32, records: u64) -> Result<()> {
    broker.create_topic(topic, partitions)?;
    eprintln!("producing {records} records ...");
    let chunk = 200_000u64;
    let mut i = 0;
    while i < records {
        let to = (i + chunk).min(records);
        let recs: Vec<(i32, String)> = (i..to)
            .map(|n| {
                (
                    (n % partitions as u64) as i32,
                    format!(
                        r#"{{"user_id": {n}, "url": "/page/{}", "amount": {}.25, "ts": {}}}"#,
                        n % 1000,
                        n % 500,
                        1_700_000_000_000u64 + n
                    ),
                )
            })
            .collect();
        broker.produce(topic, &recs)?;
        i = to;
    }
    Ok(())
}

/// Runs the benchmark and prints the table.
pub fn run(a: Args) -> Result<()> {
    let broker = Broker::start()?;
    let topic = "clicks";
    produce_clicks(&broker, topic, a.partitions, a.records)?;
    let dir = tempfile::tempdir()?;
    let spec = spec_text(&broker.address, topic, &dir.path().join("unused"), 1);
    let source = autopipe_common::spec::PipelineSpec::parse(&spec, "bench")?.sources[0].clone();
    let cluster = Cluster::start(a.workers, 2)?;
    let (mut base, mut auto) = (vec![], vec![]);
    for rep in 0..a.reps {
        let out = dir.path().join(format!("baseline-{rep}"));
        let t = baseline(&source, a.partitions, a.records, a.batch_rows, &out)?;
        eprintln!("rep {rep}: baseline {:.2} s", t.as_secs_f64());
        base.push(t);
        let out = dir.path().join(format!("autopipe-{rep}"));
        let t = streaming_job(
            &cluster,
            &broker.address,
            topic,
            &out,
            a.records,
            a.batch_rows,
        )?;
        eprintln!("rep {rep}: autopipe {:.2} s", t.as_secs_f64());
        auto.push(t);
    }
    let (b, s) = (median(base).as_secs_f64(), median(auto).as_secs_f64());
    let rate = |secs: f64| a.records as f64 / secs;
    println!(
        "| engine | median s | records/s |\n| --- | --- | --- |\n| bare rdkafka loop + ArrowWriter | {b:.3} | {:.0} |\n| autopipe streaming job ({} worker(s)) | {s:.3} | {:.0} |",
        rate(b),
        a.workers,
        rate(s)
    );
    println!(
        "autopipe / baseline throughput: {:.2} (goal >= 0.80)",
        rate(s) / rate(b)
    );
    Ok(())
}

/// The bare consumer loop: decode + write one Parquet file per `batch_rows` records.
fn baseline(
    source: &autopipe_common::spec::SourceSpec,
    partitions: u32,
    records: u64,
    batch_rows: u64,
    out: &Path,
) -> Result<Duration> {
    std::fs::create_dir_all(out)?;
    let schema = kafka::table_schema(source)?;
    let consumer: BaseConsumer = kafka::client_config(source)
        .set("group.id", "bench.baseline")
        .set("enable.auto.commit", "false")
        .create()?;
    let started = Instant::now();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition_offset(
            source.topic.as_deref().unwrap_or_default(),
            p,
            Offset::Beginning,
        )?;
    }
    consumer.assign(&tpl)?;
    let (mut seen, mut files) = (0u64, 0);
    let mut batch: Vec<Record> = Vec::with_capacity(batch_rows as usize);
    let dead = DeadLetters::default();
    let deadline = Instant::now() + Duration::from_secs(600);
    while seen < records {
        if Instant::now() > deadline {
            bail!("the baseline read {seen} of {records} records in 600 s");
        }
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m?;
            batch.push(Record::from_message(&m));
            seen += 1;
        }
        if batch.len() as u64 >= batch_rows || (seen == records && !batch.is_empty()) {
            let (rb, _) = kafka::decode(&source.name, "clicks", &schema, &batch, &dead)?;
            let f = std::fs::File::create(out.join(format!("part-{files}.parquet")))?;
            let mut w = parquet::arrow::ArrowWriter::try_new(f, schema.clone(), None)?;
            w.write(&rb)?;
            w.close()?;
            files += 1;
            batch.clear();
        }
    }
    Ok(started.elapsed())
}

/// A streaming job over the whole topic: time until every record is committed.
fn streaming_job(
    c: &Cluster,
    broker: &str,
    topic: &str,
    out: &Path,
    records: u64,
    batch_rows: u64,
) -> Result<Duration> {
    let spec = out.with_extension("toml");
    write_spec(&spec, &spec_text(broker, topic, out, batch_rows))?;
    timed_job(c, &spec, records)
}

/// Submits `spec` and times it until its committed rows reach `records`.
fn timed_job(c: &Cluster, spec: &Path, records: u64) -> Result<Duration> {
    let started = Instant::now();
    let id = c.submit(spec)?;
    // polled every 200 ms: each poll is a CLI process, CPU the job would otherwise get
    let t = loop {
        let st = c.cli_json(&["status", &id])?;
        if st["state"] != "queued" && st["state"] != "running" {
            bail!("the job ended: {st}");
        }
        if st["stream"]["rows_out"].as_u64().context("rows_out")? >= records {
            break started.elapsed();
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!(
                "the job committed {} of {records} rows in 600 s",
                st["stream"]["rows_out"]
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    c.cli_json(&["cancel", &id])?;
    Ok(t)
}

/// Options of `bench kafka-sink`.
pub struct SinkArgs {
    pub records: u64,
    pub partitions: u32,
    pub batch_rows: u64,
    pub reps: usize,
}

/// `bench kafka-sink`: what exactly-once costs. The same streaming job (`SELECT *`
/// of `--records` clicks) into a kafka sink, at-least-once (an idempotent producer)
/// against exactly-once (a transaction per source partition and batch), alternating,
/// each into a fresh topic, on one worker; timed from submission until the job's
/// committed rows reach `--records`.
pub fn run_sink(a: SinkArgs) -> Result<()> {
    let broker = Broker::start()?;
    let topic = "clicks";
    produce_clicks(&broker, topic, a.partitions, a.records)?;
    let dir = tempfile::tempdir()?;
    let cluster = Cluster::start(1, 2)?;
    let (mut alo, mut eos) = (vec![], vec![]);
    for rep in 0..a.reps {
        for (name, delivery, times) in [
            ("at-least-once", "at-least-once", &mut alo),
            ("exactly-once", "exactly-once", &mut eos),
        ] {
            let out = format!("out-{name}-{rep}");
            broker.create_topic(&out, a.partitions)?;
            let sink = format!(
                "format = \"kafka\"\nbrokers = \"{b}\"\ntopic = \"{out}\"\nkey = \"url\"\ndead_letter_path = \"{dead}\"\ndelivery_guarantee = \"{delivery}\"",
                b = broker.address,
                dead = dir.path().join(format!("{out}.dead-letter")).display()
            );
            let spec = dir.path().join(format!("{out}.toml"));
            write_spec(
                &spec,
                &job_text(&broker.address, topic, &sink, a.batch_rows),
            )?;
            let t = timed_job(&cluster, &spec, a.records)?;
            eprintln!("rep {rep}: {name} {:.2} s", t.as_secs_f64());
            times.push(t);
        }
    }
    let (l, e) = (median(alo).as_secs_f64(), median(eos).as_secs_f64());
    let rate = |secs: f64| a.records as f64 / secs;
    println!(
        "| kafka sink ({} partitions, {} records per batch) | median s | records/s |\n| --- | --- | --- |\n| at-least-once (idempotent producer) | {l:.3} | {:.0} |\n| exactly-once (a transaction per partition and batch) | {e:.3} | {:.0} |",
        a.partitions,
        a.batch_rows,
        rate(l),
        rate(e)
    );
    println!("exactly-once / at-least-once throughput: {:.2}", l / e);
    Ok(())
}
