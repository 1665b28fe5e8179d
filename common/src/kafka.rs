//! Kafka sources (issue 13): the table a topic becomes (the value's columns, then
//! `_key`, `_partition`, `_offset`, `_timestamp`), JSON values decoded to Arrow with
//! every malformed record sent to the dead letters with its topic, partition, offset
//! and reason, and librdkafka clients configured from a source spec.
//!
//! Offsets are never committed to a consumer group: a streaming task reads the
//! partitions the coordinator assigned it (`assign`, not group rebalancing) from the
//! offsets the coordinator committed together with the output they produced.

use crate::error::{Error, Result};
use crate::spec::{Format, PipelineSpec, SchemaSpec, SourceSpec};
use crate::tolerant::{DeadLetters, DeadRecord};
use datafusion::arrow::array::{
    ArrayRef, Int32Array, Int64Array, StringArray, TimestampMillisecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::json::ReaderBuilder;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::sync::Arc;
use std::time::Duration;

/// The record's key (UTF-8, lossy), partition, offset and timestamp, after the
/// value's columns.
pub const META_COLUMNS: [&str; 4] = ["_key", "_partition", "_offset", "_timestamp"];

/// The most bytes of a malformed record kept in its dead letter.
const MAX_DEAD_RECORD_BYTES: usize = 64 << 10;

/// The table a kafka source becomes: its schema's columns, then `META_COLUMNS`.
pub fn table_schema(source: &SourceSpec) -> Result<SchemaRef> {
    let value = value_schema(source)?;
    let mut fields: Vec<Field> = value.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("_key", DataType::Utf8, true));
    fields.push(Field::new("_partition", DataType::Int32, false));
    fields.push(Field::new("_offset", DataType::Int64, false));
    fields.push(Field::new(
        "_timestamp",
        DataType::Timestamp(TimeUnit::Millisecond, None),
        true,
    ));
    Ok(Arc::new(Schema::new(fields)))
}

/// The columns of a kafka source's values.
fn value_schema(source: &SourceSpec) -> Result<SchemaRef> {
    let schema = source
        .schema
        .as_ref()
        .ok_or_else(|| Error::plan("sources.schema", "a kafka source needs its schema"))?;
    schema
        .to_schema()
        .map(Arc::new)
        .map_err(|m| Error::plan(format!("source '{}' schema", source.name), m))
}

/// A librdkafka client configuration for `source`: its brokers and its
/// `[sources.options]` passed through.
pub fn client_config(source: &SourceSpec) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set(
        "bootstrap.servers",
        source.brokers.clone().unwrap_or_default(),
    );
    for (k, v) in &source.options {
        c.set(k, v.to_string());
    }
    c
}

/// The topic's partition ids, from the brokers' metadata (blocking: call it off the
/// async runtime). A missing topic or unreachable brokers is an error naming them.
pub fn topic_partitions(source: &SourceSpec, timeout: Duration) -> Result<Vec<i32>> {
    let topic = source.topic.clone().unwrap_or_default();
    let brokers = source.brokers.clone().unwrap_or_default();
    let consumer: BaseConsumer = client_config(source)
        .create()
        .map_err(|e| Error::plan(format!("source '{}' options", source.name), e.to_string()))?;
    let md = consumer
        .fetch_metadata(Some(&topic), timeout)
        .map_err(|e| {
            Error::Transient(format!(
                "cannot read the metadata of topic '{topic}' from {brokers}: {e}"
            ))
        })?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| {
            Error::plan(
                "sources.topic",
                format!("topic '{topic}' not found at {brokers}"),
            )
        })?;
    if let Some(e) = t.error() {
        return Err(Error::plan(
            "sources.topic",
            format!(
                "topic '{topic}' at {brokers}: {}",
                rdkafka::error::RDKafkaErrorCode::from(e)
            ),
        ));
    }
    let mut ids: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    ids.sort_unstable();
    if ids.is_empty() {
        return Err(Error::plan(
            "sources.topic",
            format!("topic '{topic}' at {brokers} has no partitions"),
        ));
    }
    Ok(ids)
}

/// High watermarks per partition, from a consumer's statistics: the Fetch
/// responses' high watermark (which the test broker reports right where its
/// ListOffsets does not).
#[derive(Default)]
pub struct FetchWatermarks {
    /// partition → high watermark
    pub high: std::sync::Mutex<std::collections::HashMap<i32, i64>>,
}

impl rdkafka::client::ClientContext for FetchWatermarks {
    fn stats(&self, statistics: rdkafka::statistics::Statistics) {
        let mut high = self.high.lock().expect("watermarks lock");
        for t in statistics.topics.values() {
            for (p, st) in &t.partitions {
                if *p >= 0 && st.hi_offset >= 0 {
                    high.insert(*p, st.hi_offset);
                }
            }
        }
    }
}

impl rdkafka::consumer::ConsumerContext for FetchWatermarks {}

/// The high watermarks of `partitions` (each with the offset to read from) of the
/// source's topic, for partitions no consumer task reads: a probe consumer fetches
/// from those offsets for up to `timeout` and reports what its Fetch responses said
/// (ListOffsets answers a batch's base offset on some brokers). A partition with no
/// answer is left out.
pub fn high_watermarks(
    source: &SourceSpec,
    partitions: &[(i32, i64)],
    timeout: Duration,
) -> Result<Vec<(i32, i64)>> {
    let topic = source.topic.clone().unwrap_or_default();
    let consumer: BaseConsumer<FetchWatermarks> = client_config(source)
        .set("group.id", "autopipe.probe")
        .set("enable.auto.commit", "false")
        .set("statistics.interval.ms", "100")
        .create_with_context(FetchWatermarks::default())
        .map_err(|e| Error::plan(format!("source '{}' options", source.name), e.to_string()))?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for &(p, o) in partitions {
        tpl.add_partition_offset(&topic, p, rdkafka::Offset::Offset(o.max(0)))
            .map_err(|e| Error::Transient(format!("{topic}/{p}: {e}")))?;
    }
    consumer
        .assign(&tpl)
        .map_err(|e| Error::Transient(format!("cannot assign {topic}: {e}")))?;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let _ = consumer.poll(Duration::from_millis(100));
        let high = consumer.context().high.lock().expect("lock").clone();
        let all = partitions.iter().all(|(p, _)| high.contains_key(p));
        if all || std::time::Instant::now() >= deadline {
            return Ok(partitions
                .iter()
                .filter_map(|(p, _)| high.get(p).map(|h| (*p, *h)))
                .collect());
        }
    }
}

/// A session for a streaming job's SQL: its file sources registered as tables (read
/// whole by every micro-batch) and its kafka source as an empty in-memory table that
/// `set_batch` fills (with `window_start` and `window_end` for a windowed job).
/// Returns the session, the kafka source and the schema its records decode to.
pub async fn stream_context(
    spec: &PipelineSpec,
) -> Result<(SessionContext, SourceSpec, SchemaRef)> {
    let source = spec
        .sources
        .iter()
        .find(|s| s.format == Format::Kafka)
        .cloned()
        .ok_or_else(|| Error::plan("sources", "a streaming job needs a kafka source"))?;
    let schema = table_schema(&source)?;
    // a stateful job's columns are checked here, at submit and on every worker; a
    // windowed job's SQL reads the window's bounds too
    let state = crate::stream_state::StateParams::of(&spec.job.params);
    if let Some(p) = &state {
        p.check(&schema)?;
    }
    let ctx = crate::session::context_for(spec, 1).await?;
    let table = crate::stream_state::sql_schema(&schema, state.as_ref());
    set_batch(&ctx, &source.name, &table, vec![])?;
    Ok((ctx, source, schema))
}

/// Makes table `name` hold `batches` (and only them).
pub fn set_batch(
    ctx: &SessionContext,
    name: &str,
    schema: &SchemaRef,
    batches: Vec<RecordBatch>,
) -> Result<()> {
    ctx.deregister_table(name)?;
    let table = MemTable::try_new(schema.clone(), vec![batches])?;
    ctx.register_table(name, Arc::new(table))?;
    Ok(())
}

/// Records read from the start of a topic to infer its schema from.
pub const INFER_RECORDS: usize = 1000;

/// A kafka source's value schema inferred from up to `max` records at the start of
/// its partitions (blocking: call it off the async runtime). Values that are not
/// JSON objects are skipped (they will go to the dead letters); an empty topic, or a
/// column of nested JSON, is an error that asks for the schema.
pub fn infer_schema(source: &SourceSpec, max: usize, timeout: Duration) -> Result<SchemaSpec> {
    use rdkafka::message::Message;
    let topic = source.topic.clone().unwrap_or_default();
    let partitions = topic_partitions(source, timeout)?;
    let consumer: BaseConsumer = client_config(source)
        .set("group.id", "autopipe.schema-inference")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .map_err(|e| Error::plan(format!("source '{}' options", source.name), e.to_string()))?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(&topic, *p, rdkafka::Offset::Beginning)
            .map_err(|e| Error::Transient(format!("{topic}/{p}: {e}")))?;
    }
    consumer
        .assign(&tpl)
        .map_err(|e| Error::Transient(format!("cannot read topic '{topic}': {e}")))?;
    let deadline = std::time::Instant::now() + timeout;
    let (mut values, mut ended) = (vec![], std::collections::BTreeSet::new());
    while values.len() < max && ended.len() < partitions.len() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        match consumer.poll(left.min(Duration::from_millis(200))) {
            Some(Ok(m)) => {
                let v = m.payload().and_then(|b| serde_json::from_slice(b).ok());
                if let Some(v @ serde_json::Value::Object(_)) = v {
                    values.push(v);
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                ended.insert(p);
            }
            Some(Err(e)) => return Err(Error::Transient(format!("reading topic '{topic}': {e}"))),
            None => {}
        }
    }
    let ask = |why: String| {
        Error::plan(
            "sources.schema",
            format!("{why}; give the source's schema, e.g. schema = {{ id = \"int64\", name = \"utf8\" }}"),
        )
    };
    if values.is_empty() {
        return Err(ask(format!(
            "topic '{topic}' has no JSON object to infer a schema from"
        )));
    }
    let schema =
        datafusion::arrow::json::reader::infer_json_schema_from_iterator(values.iter().map(Ok))
            .map_err(|e| ask(format!("cannot infer the schema of topic '{topic}': {e}")))?;
    let mut cols = vec![];
    for f in schema.fields() {
        let ty = match f.data_type() {
            DataType::Int64 => "int64",
            DataType::Float64 => "float64",
            DataType::Utf8 => "utf8",
            DataType::Boolean => "bool",
            // only nulls seen: text takes any value later
            DataType::Null => "utf8",
            other => {
                return Err(ask(format!(
                    "column '{}' of topic '{topic}' holds nested JSON ({other})",
                    f.name()
                )))
            }
        };
        if f.name().starts_with('_') {
            return Err(ask(format!(
                "column '{}' of topic '{topic}' starts with '_', kept for _key, _partition, _offset and _timestamp",
                f.name()
            )));
        }
        cols.push((f.name().clone(), ty.to_string()));
    }
    Ok(SchemaSpec::Columns(cols))
}

/// One consumed record, owned.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// partition
    pub partition: i32,
    /// offset in the partition
    pub offset: i64,
    /// key bytes
    pub key: Option<Vec<u8>>,
    /// value bytes (`None`: a tombstone)
    pub value: Option<Vec<u8>>,
    /// the record's timestamp (ms since the epoch), if it has one
    pub timestamp_ms: Option<i64>,
}

impl Record {
    /// An owned copy of a consumed message.
    pub fn from_message(m: &impl rdkafka::message::Message) -> Record {
        Record {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            timestamp_ms: m.timestamp().to_millis(),
        }
    }
}

/// Decodes `records` into one batch of `schema` (`table_schema`). A record whose
/// value is not exactly one JSON object of the schema's types goes to `dead` (source
/// `source`, topic `topic`, its partition and offset, and the reason) and is left
/// out. Returns the batch and how many records went to `dead`.
pub fn decode(
    source: &str,
    topic: &str,
    schema: &SchemaRef,
    records: &[Record],
    dead: &DeadLetters,
) -> Result<(RecordBatch, u64)> {
    let n_value = schema.fields().len() - META_COLUMNS.len();
    let value_schema = Arc::new(Schema::new(schema.fields()[..n_value].to_vec()));
    // the fast path: every value decodes, one row each
    let good: Vec<&Record> = match decode_values(&value_schema, records.iter()) {
        Ok(batch) if batch.num_rows() == records.len() => {
            return Ok((with_meta(schema, batch, records.iter())?, 0));
        }
        _ => {
            // find the bad ones, one by one
            let mut good = vec![];
            for r in records {
                let reason = match &r.value {
                    None => Some("the record has no value (a tombstone)".to_string()),
                    Some(_) => match decode_values(&value_schema, std::iter::once(r)) {
                        Ok(b) if b.num_rows() == 1 => None,
                        Ok(b) if b.num_rows() == 0 => {
                            Some("the value holds no JSON object".to_string())
                        }
                        Ok(b) => Some(format!(
                            "the value holds {} JSON values, not one object",
                            b.num_rows()
                        )),
                        Err(e) => Some(e.to_string()),
                    },
                };
                match reason {
                    None => good.push(r),
                    Some(error) => dead.push(dead_record(source, topic, r, error)),
                }
            }
            good
        }
    };
    let bad = (records.len() - good.len()) as u64;
    let batch = decode_values(&value_schema, good.iter().copied())
        .map_err(|e| Error::Data(format!("topic '{topic}': {e}")))?;
    Ok((with_meta(schema, batch, good.into_iter())?, bad))
}

/// The values of `records` decoded as JSON into a batch of `schema` (keys not in the
/// schema are ignored).
fn decode_values<'a>(
    schema: &SchemaRef,
    records: impl ExactSizeIterator<Item = &'a Record>,
) -> std::result::Result<RecordBatch, datafusion::arrow::error::ArrowError> {
    // one batch for all: a value holding several JSON objects shows as extra rows
    let mut decoder = ReaderBuilder::new(schema.clone())
        .with_batch_size(records.len() * 2 + 1)
        .build_decoder()?;
    for r in records {
        let value = r.value.as_deref().unwrap_or_default();
        let mut rest = value;
        while !rest.is_empty() {
            let n = decoder.decode(rest)?;
            if n == 0 {
                break;
            }
            rest = &rest[n..];
        }
        // records are separate documents even without whitespace between them
        decoder.decode(b"\n")?;
    }
    Ok(decoder
        .flush()?
        .unwrap_or_else(|| RecordBatch::new_empty(schema.clone())))
}

/// `values` with the records' key, partition, offset and timestamp appended.
fn with_meta<'a>(
    schema: &SchemaRef,
    values: RecordBatch,
    records: impl Iterator<Item = &'a Record>,
) -> Result<RecordBatch> {
    let (mut keys, mut parts, mut offsets, mut times) = (vec![], vec![], vec![], vec![]);
    for r in records {
        keys.push(r.key.as_deref().map(lossy));
        parts.push(r.partition);
        offsets.push(r.offset);
        times.push(r.timestamp_ms);
    }
    let mut columns: Vec<ArrayRef> = values.columns().to_vec();
    columns.push(Arc::new(StringArray::from(keys)));
    columns.push(Arc::new(Int32Array::from(parts)));
    columns.push(Arc::new(Int64Array::from(offsets)));
    columns.push(Arc::new(TimestampMillisecondArray::from(times)));
    RecordBatch::try_new(schema.clone(), columns)
        .map_err(|e| Error::Data(format!("kafka batch: {e}")))
}

/// Bytes as text for a dead letter: lossy UTF-8, at most 64 KiB.
/// Collects a producer's failed deliveries.
#[derive(Default)]
pub struct DeliveryErrors {
    failed: std::sync::Mutex<Vec<String>>,
}

impl rdkafka::client::ClientContext for DeliveryErrors {}

impl rdkafka::producer::ProducerContext for DeliveryErrors {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &rdkafka::message::DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = r {
            self.failed.lock().expect("lock").push(e.to_string());
        }
    }
}

/// A kafka sink's producer.
pub type SinkProducer = rdkafka::producer::BaseProducer<DeliveryErrors>;

/// The producer of a kafka sink: idempotent (its own retries never duplicate a
/// record) and acknowledged by every in-sync replica; `[sink.options]` pass through.
pub fn sink_producer(sink: &crate::spec::SinkSpec) -> Result<SinkProducer> {
    sink_config(sink)
        .create_with_context(DeliveryErrors::default())
        .map_err(|e| Error::Permanent(format!("sink: {e}")))
}

/// The producer of an exactly-once kafka sink for one source partition:
/// `sink_producer`'s settings with `transactional.id` = `id`. Its
/// `init_transactions` fences the id's earlier producer (a crashed or cut-off owner
/// of the partition: its commits fail from then on) and aborts that one's open
/// transaction, so what it sent there is never read by `read_committed` readers.
pub fn transactional_producer(
    sink: &crate::spec::SinkSpec,
    id: &str,
    timeout: Duration,
) -> Result<SinkProducer> {
    use rdkafka::producer::Producer;
    let p: SinkProducer = sink_config(sink)
        .set("transactional.id", id)
        .create_with_context(DeliveryErrors::default())
        .map_err(|e| Error::Permanent(format!("sink: {e}")))?;
    p.init_transactions(timeout).map_err(|e| {
        Error::Transient(format!(
            "sink: cannot start the transactions of '{id}': {e}"
        ))
    })?;
    Ok(p)
}

/// Sends every row of `batches` (as `produce_rows`) and the source's next offset
/// `next` of partition `partition` (committed for `group`) in one Kafka transaction:
/// both are visible, or neither. A failure aborts the transaction.
#[allow(clippy::too_many_arguments)]
pub fn produce_transaction(
    p: &SinkProducer,
    topic: &str,
    key: Option<&str>,
    batches: &[RecordBatch],
    (source_topic, partition, next): (&str, i32, i64),
    group: &rdkafka::consumer::ConsumerGroupMetadata,
    timeout: Duration,
) -> Result<(u64, u64)> {
    use rdkafka::producer::Producer;
    let txn = |e: rdkafka::error::KafkaError| {
        Error::Transient(format!("sink topic '{topic}': transaction: {e}"))
    };
    p.begin_transaction().map_err(txn)?;
    let sent = (|| {
        let sent = produce_rows(p, topic, key, batches, timeout)?;
        let mut offsets = rdkafka::TopicPartitionList::new();
        offsets
            .add_partition_offset(source_topic, partition, rdkafka::Offset::Offset(next))
            .map_err(txn)?;
        p.send_offsets_to_transaction(&offsets, group, timeout)
            .map_err(txn)?;
        p.commit_transaction(timeout).map_err(txn)?;
        Ok(sent)
    })();
    if sent.is_err() {
        if let Err(e) = p.abort_transaction(timeout) {
            tracing::warn!("sink topic '{topic}': cannot abort a failed transaction: {e}");
        }
    }
    sent
}

/// The settings every kafka sink producer shares: idempotent, acks=all, and the
/// `[sink.options]`.
fn sink_config(sink: &crate::spec::SinkSpec) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set(
        "bootstrap.servers",
        sink.brokers.clone().unwrap_or_default(),
    );
    for (k, v) in &sink.options {
        c.set(k, v.to_string());
    }
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5");
    c
}

/// Sends every row of `batches` to `topic` as one JSON record (its key: column
/// `key` as text, if set), and waits until each is acknowledged. Returns the rows and
/// bytes sent. Run again after a failure, it sends them again: the sink is
/// at-least-once (a batch's offsets are committed only after this returns).
pub fn produce_rows(
    p: &SinkProducer,
    topic: &str,
    key: Option<&str>,
    batches: &[RecordBatch],
    timeout: Duration,
) -> Result<(u64, u64)> {
    use rdkafka::producer::{BaseRecord, Producer};
    let (mut rows, mut bytes) = (0u64, 0u64);
    for b in batches {
        if b.num_rows() == 0 {
            continue;
        }
        let keys: Option<ArrayRef> = match key {
            Some(k) => {
                let col = b.column_by_name(k).ok_or_else(|| {
                    Error::plan("sink.key", format!("the SQL's output has no column '{k}'"))
                })?;
                Some(datafusion::arrow::compute::cast(col, &DataType::Utf8)?)
            }
            None => None,
        };
        let keys = keys
            .as_ref()
            .and_then(|k| k.as_any().downcast_ref::<StringArray>());
        let mut json = vec![];
        {
            let mut w = datafusion::arrow::json::LineDelimitedWriter::new(&mut json);
            w.write(b)?;
            w.finish()?;
        }
        // JSON escapes newlines inside values: one line per row
        for (i, line) in json
            .split(|c| *c == b'\n')
            .filter(|l| !l.is_empty())
            .enumerate()
        {
            let k = keys
                .filter(|k| datafusion::arrow::array::Array::is_valid(*k, i))
                .map(|k| k.value(i));
            let mut rec = BaseRecord::<str, [u8]>::to(topic).payload(line);
            if let Some(k) = k {
                rec = rec.key(k);
            }
            loop {
                match p.send(rec) {
                    Ok(()) => break,
                    Err((e, r))
                        if e.rdkafka_error_code()
                            == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
                    {
                        rec = r;
                        p.poll(Duration::from_millis(10));
                    }
                    Err((e, _)) => {
                        return Err(Error::Transient(format!("sink topic '{topic}': {e}")))
                    }
                }
            }
            rows += 1;
            bytes += line.len() as u64;
        }
        p.poll(Duration::ZERO);
    }
    p.flush(timeout)
        .map_err(|e| Error::Transient(format!("sink topic '{topic}': not acknowledged: {e}")))?;
    let failed = std::mem::take(&mut *p.context().failed.lock().expect("lock"));
    if let Some(e) = failed.first() {
        return Err(Error::Transient(format!(
            "sink topic '{topic}': {} record(s) not delivered, e.g. {e}",
            failed.len()
        )));
    }
    Ok((rows, bytes))
}

/// The dead letter of record `r` of `topic` (source `source`), refused for `error`.
pub fn dead_record(source: &str, topic: &str, r: &Record, error: String) -> DeadRecord {
    DeadRecord {
        source: source.to_string(),
        file: String::new(),
        offset: r.offset.max(0) as u64,
        line: None,
        record: lossy(r.value.as_deref().unwrap_or_default()),
        error,
        topic: Some(topic.to_string()),
        partition: Some(r.partition),
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(MAX_DEAD_RECORD_BYTES)]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::SchemaSpec;

    fn source() -> SourceSpec {
        let spec = crate::spec::PipelineSpec::parse(
            r#"
[job]
name = "k"
mode = "streaming"
[[sources]]
name = "clicks"
format = "kafka"
brokers = "127.0.0.1:9092"
topic = "clicks"
schema = { user_id = "int64", url = "utf8", ts = "timestamp_ms" }
[transform]
sql = "SELECT * FROM clicks"
[sink]
format = "parquet"
path = "/tmp/out"
"#,
            "t.toml",
        )
        .unwrap();
        spec.sources[0].clone()
    }

    fn rec(offset: i64, value: &str) -> Record {
        Record {
            partition: 2,
            offset,
            key: Some(format!("k{offset}").into_bytes()),
            value: Some(value.as_bytes().to_vec()),
            timestamp_ms: Some(1_700_000_000_000 + offset),
        }
    }

    #[test]
    fn the_schema_table_keeps_its_order_and_gains_the_record_columns() {
        let s = source();
        assert!(matches!(s.schema, Some(SchemaSpec::Columns(_))));
        let schema = table_schema(&s).unwrap();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            [
                "user_id",
                "url",
                "ts",
                "_key",
                "_partition",
                "_offset",
                "_timestamp"
            ]
        );
    }

    #[test]
    fn good_records_decode_with_their_position_and_bad_ones_go_to_the_dead_letters() {
        let s = source();
        let schema = table_schema(&s).unwrap();
        let records = vec![
            rec(10, r#"{"user_id": 1, "url": "a", "ts": 5, "extra": true}"#),
            rec(11, r#"{"user_id": "not a number", "url": "b"}"#),
            rec(12, "not json"),
            rec(13, r#"{"user_id": 3}{"user_id": 4}"#),
            Record {
                value: None,
                ..rec(14, "")
            },
            rec(15, r#"{"user_id": 5, "url": "e"}"#),
        ];
        let dead = DeadLetters::default();
        let (batch, bad) = decode("clicks", "clicks", &schema, &records, &dead).unwrap();
        assert_eq!(bad, 4);
        assert_eq!(batch.num_rows(), 2);
        let offsets = batch
            .column(5)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(offsets.values(), &[10, 15]);
        let dead = dead.take();
        let at: Vec<(Option<i32>, u64)> = dead.iter().map(|d| (d.partition, d.offset)).collect();
        assert_eq!(
            at,
            [(Some(2), 11), (Some(2), 12), (Some(2), 13), (Some(2), 14)]
        );
        assert!(dead.iter().all(|d| d.topic.as_deref() == Some("clicks")));
        assert!(
            dead[0].error.contains("user_id") || dead[0].error.contains("Int64"),
            "{}",
            dead[0].error
        );
        assert!(dead[2].error.contains("2 JSON values"), "{}", dead[2].error);
        assert!(dead[3].error.contains("tombstone"));
    }

    #[test]
    fn a_clean_batch_takes_the_fast_path() {
        let s = source();
        let schema = table_schema(&s).unwrap();
        let records: Vec<Record> = (0..1000)
            .map(|i| {
                rec(
                    i,
                    &format!(r#"{{"user_id": {i}, "url": "u{i}", "ts": {i}}}"#),
                )
            })
            .collect();
        let dead = DeadLetters::default();
        let (batch, bad) = decode("clicks", "clicks", &schema, &records, &dead).unwrap();
        assert_eq!((batch.num_rows(), bad), (1000, 0));
        assert!(dead.take().is_empty());
    }
}
