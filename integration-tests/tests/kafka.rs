//! Kafka streaming (issue 13) against a real Kafka-protocol broker (tansu, started
//! here) with test data produced by an independent client (Python's
//! confluent-kafka): a streaming job's Parquet output holds every record exactly
//! once, also when a worker is SIGKILLed mid-stream; malformed records land in the
//! dead letters with their topic, partition and offset; lag shows per partition.

use anyhow::{Context, Result};
use integration_tests::kafka::Broker;
use integration_tests::{http_get, metric_sum, wait_until, write_spec, Cluster, Group};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

const LOST_AFTER: &[&str] = &["--heartbeat-timeout", "2"];

/// A click as JSON; every `bad_every`-th (if any) is malformed instead.
fn clicks(from: u64, to: u64, bad_every: Option<u64>) -> Vec<(i32, String)> {
    (from..to)
        .map(|i| {
            let p = (i % 4) as i32;
            let bad = bad_every.is_some_and(|n| i % n == n - 1);
            let v = match (bad, (i / 100) % 2) {
                (true, 0) => format!("{{\"user_id\": \"u{i}\", \"url\": \"/p/{i}\"}}"),
                (true, _) => format!("not json {i}"),
                _ => format!(
                    "{{\"user_id\": {i}, \"url\": \"/p/{}\", \"amount\": {}.5}}",
                    i % 7,
                    i % 100
                ),
            };
            (p, v)
        })
        .collect()
}

fn streaming_spec(dir: &Path, broker: &Broker, params: &str) -> Result<std::path::PathBuf> {
    let spec = dir.join("stream.toml");
    write_spec(
        &spec,
        &format!(
            r#"
[job]
name = "clicks_stream"
mode = "streaming"
[job.params]
batch_interval = "200ms"
max_batch_rows = 100
{params}

[[sources]]
name = "clicks"
format = "kafka"
brokers = "{b}"
topic = "clicks"
schema = {{ user_id = "int64", url = "utf8", amount = "float64" }}
start = "earliest"

[transform]
sql = "SELECT user_id, url, amount, _partition AS part, _offset AS off FROM clicks"

[sink]
format = "parquet"
path = "{out}"
"#,
            b = broker.address,
            out = dir.join("out").display()
        ),
    )?;
    Ok(spec)
}

/// (user_id, partition, offset) of every row in the sink's Parquet files.
fn output_rows(dir: &Path) -> Result<Vec<(i64, i32, i64)>> {
    let out = dir.join("out");
    if !out.exists() {
        return Ok(vec![]);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        use datafusion::arrow::array::{Int32Array, Int64Array};
        let ctx = datafusion::prelude::SessionContext::new();
        let files = integration_tests::files_under(&out);
        let mut rows = vec![];
        for f in files.iter().filter(|f| f.ends_with(".parquet")) {
            let df = ctx
                .read_parquet(out.join(f).to_str().context("utf8")?, Default::default())
                .await?;
            for b in df.collect().await? {
                let col = |n: &str| b.column_by_name(n).cloned().context("column");
                let (u, p, o) = (col("user_id")?, col("part")?, col("off")?);
                let u = u.as_any().downcast_ref::<Int64Array>().context("i64")?;
                let p = p.as_any().downcast_ref::<Int32Array>().context("i32")?;
                let o = o.as_any().downcast_ref::<Int64Array>().context("i64")?;
                for i in 0..b.num_rows() {
                    rows.push((u.value(i), p.value(i), o.value(i)));
                }
            }
        }
        Ok(rows)
    })
}

/// With records 0..3000 in the topic and a job streaming them: once at least 500
/// rows are in the sink, runs `kill`, produces records 3000..6000, and checks that the
/// sink then holds each of the 6000 exactly once.
fn kill_mid_stream(dir: &Path, broker: &Broker, kill: impl FnOnce() -> Result<()>) -> Result<()> {
    wait_until(
        Duration::from_secs(60),
        "the first batches in the sink",
        || Ok(output_rows(dir)?.len() >= 500),
    )?;
    kill()?;
    let at_kill = output_rows(dir)?.len();
    broker.produce("clicks", &clicks(3000, 6000, None))?;
    wait_until(
        Duration::from_secs(90),
        "all 6000 records in the sink",
        || Ok(output_rows(dir)?.len() >= 6000),
    )?;
    // the consumers keep running; nothing more may appear
    std::thread::sleep(Duration::from_millis(1500));
    assert_exactly_once(dir, 6000, &format!("{at_kill} rows at the kill"))
}

/// The sink holds users 0..n, each once, at distinct (partition, offset).
fn assert_exactly_once(dir: &Path, n: i64, when: &str) -> Result<()> {
    let rows = output_rows(dir)?;
    let positions: BTreeSet<(i32, i64)> = rows.iter().map(|r| (r.1, r.2)).collect();
    let users: BTreeSet<i64> = rows.iter().map(|r| r.0).collect();
    assert_eq!(rows.len() as i64, n, "every record exactly once ({when})");
    assert_eq!(positions.len() as i64, n, "no (partition, offset) twice");
    assert_eq!(users, (0..n).collect::<BTreeSet<i64>>());
    Ok(())
}

#[test]
fn a_streaming_job_writes_every_record_exactly_once_across_a_worker_kill() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = Broker::start()?;
    broker.create_topic("clicks", 4)?;
    broker.produce("clicks", &clicks(0, 3000, None))?;
    let mut c = Cluster::start_full(2, 2, &[], LOST_AFTER)?;
    let spec = streaming_spec(dir.path(), &broker, "")?;
    let id = c.submit(&spec)?;
    kill_mid_stream(dir.path(), &broker, || {
        let busy = c.busy_worker()?.unwrap_or(0);
        c.workers[busy].kill();
        Ok(())
    })?;
    // lag and progress are in the status
    let st = c.cli_json(&["status", &id])?;
    assert!(
        st["task_attempts"].as_u64() >= Some(3),
        "the killed worker's consumer task ran again elsewhere: {st}"
    );
    let stream = &st["stream"];
    assert_eq!(stream["topic"], "clicks", "{st}");
    let parts = stream["partitions"].as_array().context("partitions")?;
    assert_eq!(parts.len(), 4);
    for p in parts {
        assert_eq!(p["offset"], 1500, "{p}");
        assert_eq!(p["lag"], 0, "{p}");
    }
    let lag = metric_sum(&c.coordinator.http, "autopipe_kafka_lag_records")?;
    assert_eq!(lag, 0.0);
    let published = metric_sum(
        &c.coordinator.http,
        "autopipe_kafka_end_to_end_seconds_count",
    )?;
    assert!(
        published > 0.0,
        "produce-to-visible latency is measured per batch"
    );
    let offsets = metric_sum(&c.coordinator.http, "autopipe_kafka_committed_offset")?;
    assert_eq!(offsets, 6000.0, "4 partitions at offset 1500");
    let api: serde_json::Value =
        serde_json::from_str(&http_get(&c.coordinator.http, &format!("/api/jobs/{id}"))?)?;
    assert_eq!(api["stream"]["partitions"][3]["offset"], 1500, "{api}");
    let tasks = api["stream"]["tasks"].as_array().context("tasks")?;
    assert_eq!(tasks.len(), 2, "one consumer task per worker at submit");
    assert!(
        tasks
            .iter()
            .all(|t| t["records_per_s"].as_f64() > Some(0.0)),
        "each task's processing rate is measured: {api}"
    );
    let cancelled = c.cli_json(&["cancel", &id])?;
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    assert_eq!(output_rows(dir.path())?.len(), 6000);
    Ok(())
}

#[test]
fn malformed_records_go_to_the_dead_letters_with_their_offsets() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = Broker::start()?;
    broker.create_topic("clicks", 4)?;
    // every 100th record is malformed: 20 of 2000
    broker.produce("clicks", &clicks(0, 2000, Some(100)))?;
    let c = Cluster::start(2, 2)?;
    let spec = streaming_spec(dir.path(), &broker, "max_bad_record_ratio = 0.05")?;
    let id = c.submit(&spec)?;
    let dead_dir = dir.path().join(format!("out.dead-letter/{id}"));
    let dead = || -> Result<Vec<serde_json::Value>> {
        let mut out = vec![];
        for f in integration_tests::files_under(&dead_dir) {
            for line in std::fs::read_to_string(dead_dir.join(f))?.lines() {
                out.push(serde_json::from_str(line)?);
            }
        }
        Ok(out)
    };
    wait_until(
        Duration::from_secs(60),
        "1980 rows and 20 dead letters",
        || Ok(output_rows(dir.path())?.len() >= 1980 && dead()?.len() >= 20),
    )?;
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(output_rows(dir.path())?.len(), 1980);
    let dead = dead()?;
    assert_eq!(dead.len(), 20);
    let mut at: Vec<(i64, i64)> = dead
        .iter()
        .map(|d| {
            (
                d["partition"].as_i64().unwrap(),
                d["offset"].as_i64().unwrap(),
            )
        })
        .collect();
    at.sort();
    // record i went to partition i % 4 at offset i / 4
    let mut want: Vec<(i64, i64)> = (0..2000i64)
        .filter(|i| i % 100 == 99)
        .map(|i| (i % 4, i / 4))
        .collect();
    want.sort();
    assert_eq!(at, want);
    assert!(dead
        .iter()
        .all(|d| d["topic"] == "clicks" && d["source"] == "clicks"));
    assert!(dead
        .iter()
        .all(|d| !d["error"].as_str().unwrap_or("").is_empty()));
    let st = c.cli_json(&["status", &id])?;
    assert_eq!(st["stream"]["bad_records"], 20, "{st}");
    c.cli_json(&["cancel", &id])?;
    Ok(())
}

#[test]
fn a_streaming_job_writes_every_record_exactly_once_across_a_leader_kill() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = Broker::start()?;
    broker.create_topic("clicks", 4)?;
    broker.produce("clicks", &clicks(0, 3000, None))?;
    let mut g = Group::start(3, 2, 2, &[])?;
    let spec = streaming_spec(dir.path(), &broker, "")?;
    let v = g.cli_json(&["submit", spec.to_str().context("utf8")?])?;
    let id = v["job_id"].as_str().context("job id")?.to_string();
    let old = g.leader()?.context("a leader")?;
    kill_mid_stream(dir.path(), &broker, || {
        g.kill(old);
        Ok(())
    })?;
    assert!(g.leader()?.is_some_and(|l| l != old), "a new leader");
    let st = g.cli_json(&["status", &id])?;
    assert_eq!(st["state"], "running", "{st}");
    assert_eq!(st["stream"]["lag"], 0, "{st}");
    assert_eq!(
        st["stream"]["pending_batches"], 0,
        "every committed batch published: {st}"
    );
    g.cli_json(&["cancel", &id])?;
    Ok(())
}

#[test]
fn a_kafka_sources_schema_is_inferred_from_its_first_records() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = Broker::start()?;
    broker.create_topic("clicks", 4)?;
    broker.produce("clicks", &clicks(0, 400, None))?;
    let c = Cluster::start(1, 2)?;
    let spec = streaming_spec(dir.path(), &broker, "")?;
    let text = std::fs::read_to_string(&spec)?;
    let without = text.replace(
        "schema = { user_id = \"int64\", url = \"utf8\", amount = \"float64\" }\n",
        "",
    );
    assert_ne!(text, without);
    std::fs::write(&spec, without)?;
    let id = c.submit(&spec)?;
    wait_until(Duration::from_secs(60), "400 rows in the sink", || {
        Ok(output_rows(dir.path())?.len() >= 400)
    })?;
    // the inferred types reach the output: user_id is read back as Int64 above, and
    // amount as a double
    let out = dir.path().join("out");
    let f = integration_tests::files_under(&out)
        .into_iter()
        .find(|f| f.ends_with(".parquet"))
        .context("a parquet file")?;
    let meta = parquet::file::reader::FileReader::metadata(
        &parquet::file::reader::SerializedFileReader::new(std::fs::File::open(out.join(f))?)?,
    )
    .clone();
    let schema = parquet::arrow::parquet_to_arrow_schema(
        meta.file_metadata().schema_descr(),
        meta.file_metadata().key_value_metadata(),
    )?;
    let ty = |n: &str| schema.field_with_name(n).map(|f| f.data_type().to_string());
    assert_eq!(ty("amount")?, "Float64");
    assert_eq!(ty("user_id")?, "Int64");
    assert_exactly_once(dir.path(), 400, "inferred schema")?;
    c.cli_json(&["cancel", &id])?;
    Ok(())
}

/// The job's decisions of `kind`, oldest first.
fn decisions_of(c: &Cluster, job: &str, kind: &str) -> Result<Vec<serde_json::Value>> {
    let ds = c.cli_json(&["decisions", job])?;
    let mut out: Vec<serde_json::Value> = ds
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|d| d["kind"] == kind)
        .collect();
    out.sort_by_key(|d| d["id"].as_u64());
    Ok(out)
}

/// Consumer tasks reading partitions now, by the status.
fn consumer_tasks(c: &Cluster, job: &str) -> Result<usize> {
    let st = c.cli_json(&["status", job])?;
    Ok(st["stream"]["tasks"].as_array().map_or(0, Vec::len))
}

#[test]
fn a_burst_scales_the_consumers_up_and_the_quiet_after_it_scales_them_down() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = Broker::start()?;
    broker.create_topic("clicks", 4)?;
    broker.produce("clicks", &clicks(0, 200, None))?;
    // 4 slots: up to one task per partition
    let c = Cluster::start_full(2, 2, &[], &[])?;
    // any lag at all asks for more tasks (catch_up_target 10 ms); a quiet stretch of
    // 2 s gives them back
    let spec = streaming_spec(
        dir.path(),
        &broker,
        "catch_up_target = \"10ms\"\nscale_down_delay = \"2s\"",
    )?;
    let id = c.submit(&spec)?;
    wait_until(Duration::from_secs(60), "the first 200 records", || {
        Ok(output_rows(dir.path())?.len() >= 200)
    })?;
    // quiet: the job settles on one task
    wait_until(Duration::from_secs(60), "one consumer task", || {
        Ok(consumer_tasks(&c, &id)? == 1 && !decisions_of(&c, &id, "kafka_scale_down")?.is_empty())
    })?;
    let before = decisions_of(&c, &id, "kafka_scale_up")?.len();
    // a burst: 20000 records as fast as the producer goes, after 200
    broker.produce("clicks", &clicks(200, 20_200, None))?;
    wait_until(Duration::from_secs(60), "a scale-up for the burst", || {
        Ok(decisions_of(&c, &id, "kafka_scale_up")?.len() > before)
    })
    .with_context(|| {
        format!(
            "status {:?}\ndecisions {:?}",
            c.cli_json(&["status", &id]).map(|v| v["stream"].clone()),
            c.cli_json(&["decisions", &id])
        )
    })?;
    let up = decisions_of(&c, &id, "kafka_scale_up")?
        .pop()
        .context("scale-up")?;
    // it saw the burst: its lag, or (a consumer as fast as the producer) its rate; the
    // job was quiet before it (every record read, one task), so any of either is the
    // burst's (how much depends on how far the producer got when the rule looked)
    let num = |k: &str| up["inputs"][k].as_str().and_then(|v| v.parse::<f64>().ok());
    assert!(
        num("required_records_per_s") > num("task_records_per_s")
            && num("input_records_per_s").unwrap_or(0.0) + num("lag_records").unwrap_or(0.0) > 0.0,
        "{up}"
    );
    assert!(
        up["inputs"]["tasks_after"].as_str() > up["inputs"]["tasks_before"].as_str(),
        "{up}"
    );
    wait_until(
        Duration::from_secs(90),
        "all 20200 records in the sink",
        || Ok(output_rows(dir.path())?.len() >= 20_200),
    )?;
    // the scale-up's effect: how long until the lag was back under the threshold
    wait_until(Duration::from_secs(30), "the scale-up's effect", || {
        let up = decisions_of(&c, &id, "kafka_scale_up")?;
        Ok(up.last().is_some_and(|d| {
            d["effect"]
                .as_str()
                .is_some_and(|e| e.contains("lag back under the threshold"))
        }))
    })?;
    // after the burst, fewer tasks again once the window has passed
    let up_id = up["id"].as_u64().context("id")?;
    wait_until(
        Duration::from_secs(60),
        "a scale-down after the burst",
        || {
            Ok(decisions_of(&c, &id, "kafka_scale_down")?
                .iter()
                .any(|d| d["id"].as_u64() > Some(up_id)))
        },
    )?;
    let down = decisions_of(&c, &id, "kafka_scale_down")?
        .pop()
        .context("scale-down")?;
    assert!(
        down["why"]
            .as_str()
            .is_some_and(|w| w.contains("scale_down_delay 2000 ms")),
        "{down}"
    );
    std::thread::sleep(Duration::from_millis(1000));
    assert_exactly_once(dir.path(), 20_200, "after the scale-up and the scale-down")?;
    c.cli_json(&["cancel", &id])?;
    Ok(())
}

/// The dead letters of job `id` whose sink is `dir/out`.
fn dead_letters(dir: &Path, id: &str) -> Result<Vec<serde_json::Value>> {
    let dead_dir = dir.join(format!("out.dead-letter/{id}"));
    let mut out = vec![];
    for f in integration_tests::files_under(&dead_dir) {
        for line in std::fs::read_to_string(dead_dir.join(f))?.lines() {
            out.push(serde_json::from_str(line)?);
        }
    }
    Ok(out)
}

#[test]
fn repeats_are_dropped_across_batches_and_a_worker_kill() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = Broker::start()?;
    broker.create_topic("clicks", 4)?;
    // users 0..2000, then users 0..200 again (a repeat lands in its user's partition)
    let mut first = clicks(0, 2000, None);
    first.extend(clicks(0, 200, None));
    broker.produce("clicks", &first)?;
    let mut c = Cluster::start_full(2, 2, &[], LOST_AFTER)?;
    let spec = streaming_spec(dir.path(), &broker, "dedup_key = \"user_id\"")?;
    let id = c.submit(&spec)?;
    wait_until(Duration::from_secs(60), "the first batches", || {
        Ok(output_rows(dir.path())?.len() >= 500)
    })?;
    let busy = c.busy_worker()?.unwrap_or(0);
    c.workers[busy].kill();
    // the moved partitions' tasks must remember the keys committed before the kill
    let mut second = clicks(0, 1000, None);
    second.extend(clicks(2000, 3000, None));
    broker.produce("clicks", &second)?;
    wait_until(Duration::from_secs(90), "3000 users in the sink", || {
        Ok(output_rows(dir.path())?.len() >= 3000)
    })?;
    wait_until(Duration::from_secs(30), "every record read", || {
        let st = c.cli_json(&["status", &id])?;
        Ok(st["stream"]["lag"] == 0 && st["stream"]["records"] == 4200)
    })?;
    std::thread::sleep(Duration::from_millis(1000));
    // every user once, at its first (partition, offset)
    assert_exactly_once(dir.path(), 3000, "after the repeats")?;
    let rows = output_rows(dir.path())?;
    assert!(
        rows.iter()
            .all(|&(u, _, off)| if u < 2000 { off == u / 4 } else { off >= 800 }),
        "each user's first record was kept"
    );
    let st = c.cli_json(&["status", &id])?;
    assert_eq!(st["stream"]["duplicates"], 1200, "{st}");
    c.cli_json(&["cancel", &id])?;
    Ok(())
}

/// Event time of record `i` in the window test: 10 ms apart from a fixed origin.
const ORIGIN_MS: i64 = 1_700_000_000_000;

/// Clicks with an event time `ts`: record i at ORIGIN + 10 i ms, url /p/{i % 3}.
fn timed_clicks(from: i64, to: i64) -> Vec<(i32, String)> {
    (from..to)
        .map(|i| {
            (
                (i % 4) as i32,
                format!(
                    "{{\"user_id\": {i}, \"url\": \"/p/{}\", \"ts\": {}}}",
                    i % 3,
                    ORIGIN_MS + 10 * i
                ),
            )
        })
        .collect()
}

/// (window_start ms, url) -> n of every row in the sink.
fn window_counts(dir: &Path) -> Result<Vec<(i64, String, i64)>> {
    let out = dir.join("out");
    if !out.exists() {
        return Ok(vec![]);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        use datafusion::arrow::array::{Int64Array, StringArray, TimestampMillisecondArray};
        let ctx = datafusion::prelude::SessionContext::new();
        let mut rows = vec![];
        for f in integration_tests::files_under(&out)
            .iter()
            .filter(|f| f.ends_with(".parquet"))
        {
            let df = ctx
                .read_parquet(out.join(f).to_str().context("utf8")?, Default::default())
                .await?;
            for b in df.collect().await? {
                let col = |n: &str| b.column_by_name(n).cloned().context("column");
                let (w, u, n) = (col("window_start")?, col("url")?, col("n")?);
                let w = w
                    .as_any()
                    .downcast_ref::<TimestampMillisecondArray>()
                    .context("ts")?;
                // (DataFusion reads Parquet strings as Utf8View)
                let u = datafusion::arrow::compute::cast(
                    &u,
                    &datafusion::arrow::datatypes::DataType::Utf8,
                )?;
                let u = u.as_any().downcast_ref::<StringArray>().context("utf8")?;
                let n = n.as_any().downcast_ref::<Int64Array>().context("i64")?;
                for i in 0..b.num_rows() {
                    rows.push((w.value(i), u.value(i).to_string(), n.value(i)));
                }
            }
        }
        rows.sort();
        Ok(rows)
    })
}

#[test]
fn a_tumbling_window_count_equals_the_oracle_across_a_worker_kill() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = Broker::start()?;
    // partition 4 never gets a record: idle, it must not hold the watermark back
    broker.create_topic("clicks", 5)?;
    broker.produce("clicks", &timed_clicks(0, 3000))?;
    let mut c = Cluster::start_full(2, 2, &[], LOST_AFTER)?;
    let spec = dir.path().join("windows.toml");
    write_spec(
        &spec,
        &format!(
            r#"
[job]
name = "clicks_per_window"
mode = "streaming"
[job.params]
batch_interval = "200ms"
max_batch_rows = 500
event_time = "ts"
window_size = "10s"
watermark_delay = "5s"
watermark_idle_timeout = "5s"

[[sources]]
name = "clicks"
format = "kafka"
brokers = "{b}"
topic = "clicks"
schema = {{ user_id = "int64", url = "utf8", ts = "int64" }}

[transform]
sql = "SELECT window_start, window_end, url, COUNT(*) AS n FROM clicks GROUP BY window_start, window_end, url"

[sink]
format = "parquet"
path = "{out}"
"#,
            b = broker.address,
            out = dir.path().join("out").display()
        ),
    )?;
    let id = c.submit(&spec)?;
    // records up to 30 s of event time: the windows ending by 25 s are emitted
    wait_until(Duration::from_secs(60), "the first windows", || {
        Ok(!window_counts(dir.path())?.is_empty())
    })
    .with_context(|| format!("{:?}", c.cli_json(&["status", &id])))?;
    let busy = c.busy_worker()?.unwrap_or(0);
    c.workers[busy].kill();
    // the rest, then one record per partition far ahead: every window closes
    let mut rest = timed_clicks(3000, 6000);
    for p in 0..4 {
        rest.push((
            p,
            format!(
                "{{\"user_id\": -1, \"url\": \"/end\", \"ts\": {}}}",
                ORIGIN_MS + 1_000_000
            ),
        ));
    }
    broker.produce("clicks", &rest)?;
    wait_until(Duration::from_secs(90), "six windows of three urls", || {
        Ok(window_counts(dir.path())?.len() >= 18)
    })?;
    // a record for a window long closed is late
    broker.produce(
        "clicks",
        &[(
            0,
            format!(
                "{{\"user_id\": -2, \"url\": \"/late\", \"ts\": {}}}",
                ORIGIN_MS + 5
            ),
        )],
    )?;
    wait_until(
        Duration::from_secs(30),
        "the late record's dead letter",
        || Ok(!dead_letters(dir.path(), &id)?.is_empty()),
    )?;
    std::thread::sleep(Duration::from_millis(1000));
    // the origin is not window-aligned: compute the oracle by each record's window
    let mut oracle: std::collections::BTreeMap<(i64, String), i64> = Default::default();
    for i in 0..6000i64 {
        let ts = ORIGIN_MS + 10 * i;
        *oracle
            .entry((ts.div_euclid(10_000) * 10_000, format!("/p/{}", i % 3)))
            .or_default() += 1;
    }
    let want: Vec<(i64, String, i64)> = oracle.into_iter().map(|((w, u), n)| (w, u, n)).collect();
    assert_eq!(
        window_counts(dir.path())?,
        want,
        "each window once, with the oracle's counts; dead letters {:?}",
        dead_letters(dir.path(), &id)?
    );
    let dead = dead_letters(dir.path(), &id)?;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("late")),
        "{dead:?}"
    );
    assert_eq!(dead[0]["partition"], 0);
    let st = c.cli_json(&["status", &id])?;
    assert_eq!(st["stream"]["late_records"], 1, "{st}");
    assert!(
        st["stream"]["watermark_ms"].as_i64() > Some(ORIGIN_MS + 900_000),
        "{st}"
    );
    c.cli_json(&["cancel", &id])?;
    Ok(())
}

#[test]
fn a_kafka_sink_gets_every_joined_record_at_least_once_across_a_worker_kill() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = Broker::start()?;
    broker.create_topic("clicks", 4)?;
    broker.create_topic("big_clicks", 2)?;
    broker.produce("clicks", &clicks(0, 3000, None))?;
    let mut c = Cluster::start_full(2, 2, &[], LOST_AFTER)?;
    // a static dimension the SQL joins every micro-batch with
    let pages = dir.path().join("pages.csv");
    let mut csv = String::from("url,section\n");
    for n in 0..7 {
        csv.push_str(&format!("/p/{n},section-{}\n", n % 3));
    }
    std::fs::write(&pages, csv)?;
    let spec = dir.path().join("to_kafka.toml");
    write_spec(
        &spec,
        &format!(
            r#"
[job]
name = "clicks_to_kafka"
mode = "streaming"
[job.params]
batch_interval = "200ms"
max_batch_rows = 100

[[sources]]
name = "clicks"
format = "kafka"
brokers = "{b}"
topic = "clicks"
schema = {{ user_id = "int64", url = "utf8", amount = "float64" }}

[[sources]]
name = "pages"
format = "csv"
path = "{pages}"
has_header = true

[transform]
sql = "SELECT c.user_id, c.url, c.amount * 2 AS doubled, p.section FROM clicks c JOIN pages p ON c.url = p.url WHERE c.amount >= 0"

[sink]
format = "kafka"
brokers = "{b}"
topic = "big_clicks"
key = "url"
dead_letter_path = "{dead}"
"#,
            b = broker.address,
            dead = dir.path().join("dead").display(),
            pages = pages.display()
        ),
    )?;
    let id = c.submit(&spec)?;
    wait_until(Duration::from_secs(60), "the first batches", || {
        let st = c.cli_json(&["status", &id])?;
        Ok(st["stream"]["rows_out"].as_u64() >= Some(500))
    })?;
    let busy = c.busy_worker()?.unwrap_or(0);
    c.workers[busy].kill();
    broker.produce("clicks", &clicks(3000, 6000, None))?;
    wait_until(Duration::from_secs(90), "every record read", || {
        let st = c.cli_json(&["status", &id])?;
        Ok(st["stream"]["records"] == 6000 && st["stream"]["lag"] == 0)
    })?;
    // an independent consumer reads the sink topic: every user at least once, as
    // JSON rows of the SQL's columns, keyed by url
    let got = broker.consume("big_clicks", 2, 6000, Duration::from_secs(30))?;
    let mut users = BTreeSet::new();
    for (key, value) in &got {
        let v: serde_json::Value = serde_json::from_str(value)?;
        let u = v["user_id"].as_i64().context("user_id")?;
        assert_eq!(key.as_deref(), v["url"].as_str(), "keyed by url: {value}");
        assert_eq!(v["doubled"].as_f64(), Some(((u % 100) as f64 + 0.5) * 2.0));
        let section = format!("section-{}", (u % 7) % 3);
        assert_eq!(
            v["section"].as_str(),
            Some(section.as_str()),
            "joined: {value}"
        );
        users.insert(u);
    }
    let missing: Vec<i64> = (0..6000).filter(|u| !users.contains(u)).collect();
    assert!(
        missing.is_empty(),
        "no record lost: {} missing of {} read, e.g. {:?}",
        missing.len(),
        got.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(got.len() >= 6000);
    let st = c.cli_json(&["status", &id])?;
    assert!(
        st["output_path"]
            .as_str()
            .is_some_and(|p| p.ends_with("/big_clicks")),
        "{st}"
    );
    c.cli_json(&["cancel", &id])?;
    Ok(())
}

#[test]
fn lag_stays_measured_when_no_consumer_runs() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = Broker::start()?;
    broker.create_topic("clicks", 4)?;
    broker.produce("clicks", &clicks(0, 200, None))?;
    let mut c = Cluster::start_full(1, 2, &[], LOST_AFTER)?;
    let spec = streaming_spec(dir.path(), &broker, "")?;
    let id = c.submit(&spec)?;
    wait_until(Duration::from_secs(60), "200 rows", || {
        Ok(output_rows(dir.path())?.len() >= 200)
    })?;
    // the only worker dies: nobody reads, yet the lag grows with what is produced
    c.workers[0].kill();
    broker.produce("clicks", &clicks(200, 1200, None))?;
    wait_until(
        Duration::from_secs(60),
        "the lag of the unread partitions",
        || {
            let st = c.cli_json(&["status", &id])?;
            Ok(st["stream"]["lag"].as_i64() >= Some(500))
        },
    )?;
    c.cli_json(&["cancel", &id])?;
    Ok(())
}

/// The peak resident memory of process `pid` (VmHWM), in bytes.
fn peak_rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .context("VmHWM")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kb * 1024)
}

#[test]
fn a_slow_job_reads_no_faster_than_it_writes_and_its_memory_stays_bounded() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = Broker::start()?;
    broker.create_topic("clicks", 1)?;
    // 480 MB of records (8 KB each): three times what the worker may grow by
    let pad = "x".repeat(8000);
    let records: Vec<(i32, String)> = (0..60_000)
        .map(|i| {
            (
                0,
                format!("{{\"user_id\": {i}, \"url\": \"/p/{pad}\", \"amount\": 1.5}}"),
            )
        })
        .collect();
    broker.produce("clicks", &records)?;
    let c = Cluster::start(1, 1)?;
    let baseline = peak_rss(c.workers[0].child.id())?;
    // a slow job: 10 records per batch, each batch written and committed
    let spec = streaming_spec(dir.path(), &broker, "kafka_autoscale = false")?;
    let text = std::fs::read_to_string(&spec)?;
    std::fs::write(
        &spec,
        text.replace("max_batch_rows = 100", "max_batch_rows = 10"),
    )?;
    let id = c.submit(&spec)?;
    // well under way: thousands of records through the worker, most still unread
    wait_until(Duration::from_secs(60), "the job under way", || {
        Ok(output_rows(dir.path())?.len() >= 5000)
    })?;
    let st = c.cli_json(&["status", &id])?;
    let lag = st["stream"]["lag"].as_i64().context("lag")?;
    let peak = peak_rss(c.workers[0].child.id())?;
    c.cli_json(&["cancel", &id])?;
    // most of the topic is still unread, and the worker never held it
    assert!(
        lag > 40_000,
        "the job is slower than the backlog: lag {lag}"
    );
    let grew = peak.saturating_sub(baseline);
    assert!(
        grew < 160 << 20,
        "the worker's peak memory grew by {} MiB with {} MiB unread",
        grew >> 20,
        lag * 8 / 1000
    );
    eprintln!(
        "peak RSS grew by {} MiB while {lag} records ({} MiB) waited",
        grew >> 20,
        lag * 8 / 1000
    );
    Ok(())
}

/// A streaming job from topic `clicks` into topic `out` (a kafka sink keyed by url,
/// `delivery` its delivery lines), its dead letters in `dir/out.dead-letter`.
fn kafka_sink_spec(
    dir: &Path,
    broker: &Broker,
    params: &str,
    delivery: &str,
) -> Result<std::path::PathBuf> {
    let spec = dir.join("to_out.toml");
    write_spec(
        &spec,
        &format!(
            r#"
[job]
name = "clicks_out"
mode = "streaming"
[job.params]
batch_interval = "200ms"
max_batch_rows = 100
{params}

[[sources]]
name = "clicks"
format = "kafka"
brokers = "{b}"
topic = "clicks"
schema = {{ user_id = "int64", url = "utf8", amount = "float64" }}

[transform]
sql = "SELECT user_id, url, _partition AS part, _offset AS off FROM clicks"

[sink]
format = "kafka"
brokers = "{b}"
topic = "out"
key = "url"
dead_letter_path = "{dead}"
{delivery}
"#,
            b = broker.address,
            dead = dir.join("out.dead-letter").display(),
        ),
    )?;
    Ok(spec)
}

/// The sink topic `out`'s records per user (at least `min` records read).
fn users_in_out(broker: &Broker, min: usize) -> Result<std::collections::BTreeMap<i64, usize>> {
    let got = broker.consume("out", 2, min, Duration::from_secs(30))?;
    let mut users = std::collections::BTreeMap::new();
    for (_, value) in &got {
        let v: serde_json::Value = serde_json::from_str(value)?;
        *users
            .entry(v["user_id"].as_i64().context("user_id")?)
            .or_default() += 1;
    }
    Ok(users)
}

/// How the consumer's worker is faulted in its third micro-batch.
#[derive(PartialEq)]
enum Fault {
    /// it crashes (aborts, as SIGKILL would end it) between sending the batch's
    /// output to the kafka sink and committing its offsets to the coordinator
    /// (crash point `stream.before_commit`)
    CrashBeforeCommit,
    /// it freezes (SIGSTOP) after reading the batch, before sending anything
    /// (`stream.before_send`); once another worker took its partitions over and read
    /// everything, it is resumed and sends as a zombie would
    FreezeBeforeSend,
}

/// A streaming job into a kafka sink whose worker is faulted (`fault`) and whose
/// consumer task another worker takes over. Returns the sink topic's records per
/// user, and the dead letters' offsets.
fn fault_a_kafka_sink(
    delivery: &str,
    fault: Fault,
) -> Result<(std::collections::BTreeMap<i64, usize>, Vec<i64>)> {
    let dir = tempfile::tempdir()?;
    let broker = Broker::start()?;
    broker.create_topic("clicks", 4)?;
    broker.create_topic("out", 2)?;
    // users 0..2000 (every 50th malformed), then 0..200 again: repeats to drop
    let mut records = clicks(0, 2000, Some(50));
    records.extend(clicks(0, 200, None));
    broker.produce("clicks", &records)?;
    let mut c = Cluster::start_full(0, 2, &[], LOST_AFTER)?;
    let point = match fault {
        Fault::CrashBeforeCommit => "stream.before_commit=3",
        Fault::FreezeBeforeSend => "stream.before_send=3:stop",
    };
    c.add_worker_env(2, &[], &[(autopipe_common::failpoint::ENV, point)])?;
    c.wait_for(Duration::from_secs(60), "the worker", |c| {
        Ok(c.alive_workers()? == 1)
    })?;
    let params = "kafka_autoscale = false\ndedup_key = \"user_id\"\nmax_bad_record_ratio = 0.05";
    let spec = kafka_sink_spec(dir.path(), &broker, params, delivery)?;
    let id = c.submit(&spec)?;
    // the crash point ends (or stops) the worker in its third batch
    // (its state in /proc: Z once dead and not reaped yet, T while stopped)
    let pid = c.workers[0].child.id();
    let state = match fault {
        Fault::CrashBeforeCommit => 'Z',
        Fault::FreezeBeforeSend => 'T',
    };
    wait_until(Duration::from_secs(60), "the crash point", || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        Ok(stat
            .rsplit(')')
            .next()
            .map(str::trim_start)
            .is_some_and(|s| s.starts_with(state)))
    })?;
    c.add_worker(2)?;
    wait_until(Duration::from_secs(90), "every record read", || {
        let st = c.cli_json(&["status", &id])?;
        Ok(st["stream"]["records"] == 2200 && st["stream"]["lag"] == 0)
    })?;
    if fault == Fault::FreezeBeforeSend {
        // the zombie wakes up and sends its batch; wait until its attempt ended
        c.workers[0].signal("CONT")?;
        wait_until(
            Duration::from_secs(60),
            "the zombie's attempt to end",
            || {
                Ok(
                    metric_sum(&c.workers[0].http, "autopipe_worker_tasks_total").unwrap_or(0.0)
                        >= 1.0,
                )
            },
        )?;
    }
    let users = users_in_out(&broker, 1964)?;
    let mut dead: Vec<i64> = dead_letters(dir.path(), &id)?
        .iter()
        .filter_map(|d| {
            d["offset"]
                .as_i64()
                .map(|o| d["partition"].as_i64().unwrap_or(-1) * 1_000_000 + o)
        })
        .collect();
    dead.sort_unstable();
    c.cli_json(&["cancel", &id])?;
    Ok((users, dead))
}

#[test]
fn an_exactly_once_kafka_sink_sends_each_row_once_across_a_crash_between_send_and_commit(
) -> Result<()> {
    let (users, dead) = fault_a_kafka_sink(
        "delivery_guarantee = \"exactly-once\"",
        Fault::CrashBeforeCommit,
    )?;
    // 2000 users less the 40 malformed (4 of which come again well-formed), each
    // once: the crashed batch's output is not sent again, and the repeats are
    // dropped by the state its replay rebuilt
    let twice: Vec<_> = users.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "rows sent twice: {} e.g. {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
    let good: Vec<i64> = (0..2000).filter(|i| i % 50 != 49 || *i < 200).collect();
    assert_eq!(
        users.keys().copied().collect::<Vec<_>>(),
        good,
        "every row once"
    );
    // the crashed batch's dead letters were rebuilt by its replay: all 40, once each
    assert_eq!(dead.len(), 40, "{dead:?}");
    assert_eq!(dead.iter().collect::<BTreeSet<_>>().len(), 40, "{dead:?}");
    Ok(())
}

#[test]
fn an_at_least_once_kafka_sink_sends_the_crashed_batch_again() -> Result<()> {
    // the same crash without transactions: the batch sent but not committed is
    // read and sent again (this is what the exactly-once sink prevents)
    let (users, dead) = fault_a_kafka_sink("", Fault::CrashBeforeCommit)?;
    let twice = users.values().filter(|n| **n > 1).count();
    assert!(twice > 0, "the crash point sits between send and commit");
    assert_eq!(users.len(), 1964, "none lost");
    assert_eq!(dead.len(), 40, "{dead:?}");
    Ok(())
}

#[test]
fn an_exactly_once_kafka_sink_fences_a_frozen_worker_that_wakes_up() -> Result<()> {
    // the partitions' new owner fenced the frozen worker's transactional ids: what
    // it sends when it wakes up is refused, nothing reaches the topic twice
    let (users, dead) = fault_a_kafka_sink(
        "delivery_guarantee = \"exactly-once\"",
        Fault::FreezeBeforeSend,
    )?;
    let twice: Vec<_> = users.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "rows sent twice: {} e.g. {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
    assert_eq!(users.len(), 1964, "none lost");
    assert_eq!(dead.len(), 40, "{dead:?}");
    Ok(())
}

#[test]
fn an_exactly_once_kafka_sinks_partitions_move_between_tasks_without_a_repeat() -> Result<()> {
    // scaled down in the quiet start, up in a burst, down after it: each move hands a
    // partition's transactional id to its new task, and every row reaches the topic once
    let dir = tempfile::tempdir()?;
    let broker = Broker::start()?;
    broker.create_topic("clicks", 4)?;
    broker.create_topic("out", 2)?;
    broker.produce("clicks", &clicks(0, 200, None))?;
    let c = Cluster::start_full(2, 2, &[], &[])?;
    let spec = kafka_sink_spec(
        dir.path(),
        &broker,
        "catch_up_target = \"10ms\"\nscale_down_delay = \"2s\"",
        "delivery_guarantee = \"exactly-once\"",
    )?;
    let id = c.submit(&spec)?;
    wait_until(Duration::from_secs(60), "one consumer task", || {
        Ok(consumer_tasks(&c, &id)? == 1 && !decisions_of(&c, &id, "kafka_scale_down")?.is_empty())
    })?;
    broker.produce("clicks", &clicks(200, 20_200, None))?;
    wait_until(Duration::from_secs(60), "a scale-up for the burst", || {
        Ok(!decisions_of(&c, &id, "kafka_scale_up")?.is_empty())
    })?;
    wait_until(Duration::from_secs(90), "every record read", || {
        let st = c.cli_json(&["status", &id])?;
        Ok(st["stream"]["records"] == 20_200 && st["stream"]["lag"] == 0)
    })?;
    let users = users_in_out(&broker, 20_200)?;
    let twice: Vec<_> = users.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "rows sent twice: {} e.g. {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
    assert_eq!(users.len(), 20_200, "none lost");
    c.cli_json(&["cancel", &id])?;
    Ok(())
}

#[test]
fn a_sigterm_drains_a_consumers_worker_and_its_partitions_move_without_a_repeat() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = Broker::start()?;
    broker.create_topic("clicks", 4)?;
    broker.produce("clicks", &clicks(0, 3000, None))?;
    let mut c = Cluster::start_full(2, 2, &[], LOST_AFTER)?;
    let spec = streaming_spec(dir.path(), &broker, "kafka_autoscale = false")?;
    let id = c.submit(&spec)?;
    kill_mid_stream(dir.path(), &broker, || {
        let drained = c.busy_worker()?.unwrap_or(0);
        c.workers[drained].signal("TERM")?;
        // its consumer task stops; the worker is released and leaves by itself
        c.workers[drained].wait_exit(Duration::from_secs(60))?;
        Ok(())
    })?;
    let states = c.worker_states()?;
    assert!(
        states.contains(&"released".to_string()) && !states.contains(&"lost".to_string()),
        "{states:?}"
    );
    let m = http_get(&c.coordinator.http, "/metrics")?;
    assert!(!m.contains("kind=\"worker_lost\""), "no one paged: {m}");
    c.cli_json(&["cancel", &id])?;
    Ok(())
}
