//! A streaming job's state between micro-batches (issue 13): event-time windows with
//! a watermark, and dedup. The state is kept per Kafka partition, so it moves with
//! its partition when the coordinator deals the partitions anew, and it is
//! checkpointed with the partition's offsets: each commit names the partition's
//! latest checkpoint file (Arrow IPC, written before the commit), as Flink and
//! Arroyo checkpoint operator state with the source offsets.
//!
//! - **Event time.** `event_time` (a timestamp column, or integer milliseconds), else
//!   the record's Kafka timestamp.
//! - **Watermark.** Per partition: the largest event time it has seen less
//!   `watermark_delay`. The job's watermark is the smallest over its partitions
//!   (`job_watermark`), as a Flink operator's is the smallest over its inputs.
//! - **Windows.** Window `k` covers `[k·slide, k·slide + size)` (tumbling when the
//!   slide is the size). A record admitted into a partition counts only in its windows
//!   that end after the partition's watermark at that moment (its `_open_from`); a
//!   record none of whose windows is still open is late and goes to the dead letters.
//!   The buffered records of windows whose end the job's watermark has passed are
//!   emitted once, by the task that reads the lowest partition, through the job's SQL
//!   (with `window_start` and `window_end` columns), in the same commit as its offsets:
//!   a window is emitted exactly once, whatever moved or failed.
//! - **Dedup.** A record whose `dedup_key` values were seen in its partition within
//!   `dedup_window` of event time is dropped; the keys expire a window behind the
//!   partition's largest event time.

use crate::error::{Error, Result};
use crate::spec::JobParams;
use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray, UInt32Array,
};
use datafusion::arrow::compute::{cast, concat_batches, filter_record_batch, take};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::FileWriter;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The columns a windowed job's SQL sees after the kafka table's.
pub const WINDOW_COLUMNS: [&str; 2] = ["window_start", "window_end"];

/// The hidden column of buffered rows: the earliest window end a row counts in.
const OPEN_FROM: &str = "_open_from";

/// What a stateful streaming job keeps between batches.
#[derive(Debug, Clone, PartialEq)]
pub struct StateParams {
    /// the event-time column (`None`: `_timestamp`)
    pub event_time: Option<String>,
    /// (size, slide) of the windows, in ms
    pub window: Option<(i64, i64)>,
    /// how far the watermark trails the largest event time (ms)
    pub watermark_delay_ms: i64,
    /// the dedup key's columns (empty: no dedup)
    pub dedup: Vec<String>,
    /// how long a key is remembered (ms of event time)
    pub dedup_window_ms: i64,
}

impl StateParams {
    /// The job's state parameters, `None` for a stateless job (no windows, no dedup).
    pub fn of(p: &JobParams) -> Option<StateParams> {
        let dedup = p.dedup_columns();
        if p.window().is_none() && dedup.is_empty() {
            return None;
        }
        Some(StateParams {
            event_time: p.event_time.clone(),
            window: p.window().map(|(s, l)| (s as i64, l as i64)),
            watermark_delay_ms: p.watermark_delay_ms() as i64,
            dedup,
            dedup_window_ms: p.dedup_window_ms() as i64,
        })
    }

    /// Checks the columns it names against the kafka table's `schema`.
    pub fn check(&self, schema: &Schema) -> Result<()> {
        if let Some(c) = &self.event_time {
            let f = schema.field_with_name(c).map_err(|_| {
                Error::plan(
                    "job.params.event_time",
                    format!("no column '{c}' in the kafka table"),
                )
            })?;
            if !matches!(
                f.data_type(),
                DataType::Timestamp(..) | DataType::Int64 | DataType::Int32
            ) {
                return Err(Error::plan(
                    "job.params.event_time",
                    format!(
                        "column '{c}' is {}: an event time is a timestamp or integer milliseconds",
                        f.data_type()
                    ),
                ));
            }
        }
        for c in &self.dedup {
            if schema.field_with_name(c).is_err() {
                return Err(Error::plan(
                    "job.params.dedup_key",
                    format!("no column '{c}' in the kafka table"),
                ));
            }
        }
        if self.window.is_some() {
            for c in WINDOW_COLUMNS {
                if schema.field_with_name(c).is_ok() {
                    return Err(Error::plan(
                        "job.params.window_size",
                        format!("the kafka table already has a column '{c}', which windows add"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The last window containing event time `t`: its end.
    fn last_end(&self, t: i64) -> Option<i64> {
        let (size, slide) = self.window?;
        Some(t.div_euclid(slide) * slide + size)
    }
}

/// The table a windowed job's SQL reads: the kafka table and the window's bounds.
pub fn sql_schema(schema: &SchemaRef, p: Option<&StateParams>) -> SchemaRef {
    if p.is_none_or(|p| p.window.is_none()) {
        return schema.clone();
    }
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    for c in WINDOW_COLUMNS {
        fields.push(Field::new(
            c,
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ));
    }
    Arc::new(Schema::new(fields))
}

/// One partition's state.
#[derive(Debug, Clone, Default)]
pub struct PartitionState {
    /// the largest event time seen (replicated with the offsets, not in the file)
    pub max_event_ms: Option<i64>,
    /// dedup: key → event time it was last seen
    pub keys: HashMap<String, i64>,
    /// windows: the admitted rows of windows not emitted yet (the kafka table's
    /// columns and `_open_from`)
    pub rows: Vec<RecordBatch>,
}

impl PartitionState {
    /// Its watermark: the largest event time less the delay.
    pub fn watermark(&self, p: &StateParams) -> Option<i64> {
        self.max_event_ms.map(|m| m - p.watermark_delay_ms)
    }

    /// Buffered rows.
    pub fn buffered(&self) -> usize {
        self.rows.iter().map(RecordBatch::num_rows).sum()
    }
}

/// The job's watermark: the smallest of its partitions' (`None` while one has none).
pub fn job_watermark(partitions: impl IntoIterator<Item = Option<i64>>, delay: i64) -> Option<i64> {
    let mut out: Option<i64> = None;
    for m in partitions {
        let w = m? - delay;
        out = Some(out.map_or(w, |o: i64| o.min(w)));
    }
    out
}

/// The largest window end at or before `watermark`: windows ending there or
/// earlier are complete.
pub fn closed_until(watermark: i64, size: i64, slide: i64) -> i64 {
    (watermark - size).div_euclid(slide) * slide + size
}

/// A record the state refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    /// partition
    pub partition: i32,
    /// offset
    pub offset: i64,
    /// why
    pub reason: String,
}

/// What `admit` did with a batch.
#[derive(Debug)]
pub struct Admitted {
    /// the rows the job's SQL reads now (none for a windowed job: its rows wait in
    /// the state for their windows)
    pub rows: RecordBatch,
    /// late records (and windowed records without an event time)
    pub refused: Vec<Refused>,
    /// records dropped as repeats
    pub duplicates: u64,
    /// partitions whose state changed (their checkpoint is written anew)
    pub changed: Vec<i32>,
    /// a windowed job: per partition, the earliest window end an admitted record
    /// counts in (the coordinator refuses it if that window was emitted meanwhile)
    pub open_ends: BTreeMap<i32, i64>,
}

/// Each row's event time (ms), `None` where it has none.
pub fn event_times(batch: &RecordBatch, p: &StateParams) -> Result<Vec<Option<i64>>> {
    let name = p.event_time.as_deref().unwrap_or("_timestamp");
    let col = batch
        .column_by_name(name)
        .ok_or_else(|| Error::Data(format!("the batch has no event-time column '{name}'")))?;
    let ms: ArrayRef = match col.data_type() {
        DataType::Timestamp(TimeUnit::Millisecond, _) => col.clone(),
        DataType::Timestamp(..) => cast(col, &DataType::Timestamp(TimeUnit::Millisecond, None))?,
        _ => col.clone(),
    };
    let ms = cast(&ms, &DataType::Int64)?;
    let a = ms
        .as_any()
        .downcast_ref::<Int64Array>()
        .ok_or_else(|| Error::Data(format!("event time '{name}' is not integer milliseconds")))?;
    Ok((0..a.len())
        .map(|i| a.is_valid(i).then(|| a.value(i)))
        .collect())
}

/// Each row's dedup key: its key columns as text, joined.
fn dedup_keys(batch: &RecordBatch, cols: &[String]) -> Result<Vec<String>> {
    let texts: Vec<ArrayRef> = cols
        .iter()
        .map(|c| {
            let a = batch
                .column_by_name(c)
                .ok_or_else(|| Error::Data(format!("the batch has no dedup column '{c}'")))?;
            Ok(cast(a, &DataType::Utf8)?)
        })
        .collect::<Result<_>>()?;
    let texts: Vec<&StringArray> = texts
        .iter()
        .map(|a| {
            a.as_any()
                .downcast_ref::<StringArray>()
                .expect("cast to utf8")
        })
        .collect();
    Ok((0..batch.num_rows())
        .map(|i| {
            texts
                .iter()
                .map(|a| if a.is_valid(i) { a.value(i) } else { "\u{0}" })
                .collect::<Vec<_>>()
                .join("\u{1f}")
        })
        .collect())
}

/// Runs a decoded batch (the kafka table's rows, each partition's in offset order)
/// through the partitions' state: late records refused, repeats dropped, a windowed
/// job's rows buffered in their partition's state. A record counts only in windows
/// that end after its partition's watermark and after `emitted_until` (the windows
/// the job emitted, as this task last heard).
pub fn admit(
    batch: &RecordBatch,
    p: &StateParams,
    states: &mut BTreeMap<i32, PartitionState>,
    emitted_until: Option<i64>,
) -> Result<Admitted> {
    let times = event_times(batch, p)?;
    let keys = if p.dedup.is_empty() {
        vec![]
    } else {
        dedup_keys(batch, &p.dedup)?
    };
    let col = |n: &str| batch.column_by_name(n).cloned();
    let parts = col("_partition").ok_or_else(|| Error::Data("no _partition".into()))?;
    let parts = parts
        .as_any()
        .downcast_ref::<Int32Array>()
        .ok_or_else(|| Error::Data("_partition is not int32".into()))?
        .clone();
    let offs = col("_offset").ok_or_else(|| Error::Data("no _offset".into()))?;
    let offs = offs
        .as_any()
        .downcast_ref::<Int64Array>()
        .ok_or_else(|| Error::Data("_offset is not int64".into()))?
        .clone();
    let mut keep = vec![false; batch.num_rows()];
    let mut open_from = vec![0i64; batch.num_rows()];
    let mut refused = vec![];
    let mut duplicates = 0;
    let mut changed = std::collections::BTreeSet::new();
    let mut open_ends: BTreeMap<i32, i64> = BTreeMap::new();
    for i in 0..batch.num_rows() {
        let part = parts.value(i);
        let st = states.entry(part).or_default();
        let wm = st.watermark(p);
        // windows ending at or before this are closed for the record
        let closed = match (wm, emitted_until) {
            (Some(w), Some(e)) => Some(w.max(e)),
            (w, e) => w.or(e),
        };
        let t = match times[i] {
            Some(t) => t,
            None if p.window.is_some() => {
                refused.push(Refused {
                    partition: part,
                    offset: offs.value(i),
                    reason: format!(
                        "no event time: '{}' is null",
                        p.event_time.as_deref().unwrap_or("_timestamp")
                    ),
                });
                continue;
            }
            None => st.max_event_ms.unwrap_or(0),
        };
        if let (Some(end), Some(closed)) = (p.last_end(t), closed) {
            if end <= closed {
                let (size, _) = p.window.expect("windowed");
                let reason = match wm {
                    Some(wm) if wm >= end => format!(
                        "late: event time {t} is behind partition {part}'s watermark {wm} (largest event time {} less watermark_delay {} ms); its last window [{}, {end}) has closed",
                        st.max_event_ms.unwrap_or_default(),
                        p.watermark_delay_ms,
                        end - size
                    ),
                    _ => format!(
                        "late: event time {t} falls in windows the job already emitted (until {closed}); its last window was [{}, {end})",
                        end - size
                    ),
                };
                refused.push(Refused {
                    partition: part,
                    offset: offs.value(i),
                    reason,
                });
                continue;
            }
        }
        if let Some(k) = keys.get(i) {
            if st
                .keys
                .get(k)
                .is_some_and(|&seen| (t - seen).abs() <= p.dedup_window_ms)
            {
                duplicates += 1;
                continue;
            }
            st.keys.insert(k.clone(), t);
            changed.insert(part);
        }
        keep[i] = true;
        // it counts in the windows still open in its partition
        open_from[i] = closed.map_or(i64::MIN, |c| c + 1);
        if let Some((size, slide)) = p.window {
            let mut end = (t - size).div_euclid(slide) * slide + slide + size;
            if let Some(c) = closed {
                if end <= c {
                    end += ((c - end).div_euclid(slide) + 1) * slide;
                }
            }
            let e = open_ends.entry(part).or_insert(end);
            *e = (*e).min(end);
        }
        if st.max_event_ms.is_none_or(|m| t > m) {
            st.max_event_ms = Some(t);
        }
    }
    // keys expire a dedup window behind their partition's largest event time
    if !p.dedup.is_empty() {
        for (part, st) in states.iter_mut() {
            let Some(max) = st.max_event_ms else { continue };
            let before = st.keys.len();
            st.keys.retain(|_, seen| *seen >= max - p.dedup_window_ms);
            if st.keys.len() != before {
                changed.insert(*part);
            }
        }
    }
    let kept = filter_record_batch(batch, &BooleanArray::from(keep.clone()))?;
    if p.window.is_none() {
        return Ok(Admitted {
            rows: kept,
            refused,
            duplicates,
            changed: changed.into_iter().collect(),
            open_ends,
        });
    }
    // a windowed job buffers each kept row, with its `_open_from`, in its partition
    let with_open = with_column(batch, OPEN_FROM, Arc::new(Int64Array::from(open_from)))?;
    let kept_rows = filter_record_batch(&with_open, &BooleanArray::from(keep))?;
    let kparts = kept_rows
        .column_by_name("_partition")
        .expect("kept _partition")
        .as_any()
        .downcast_ref::<Int32Array>()
        .expect("int32")
        .clone();
    let mut by_part: BTreeMap<i32, Vec<u32>> = BTreeMap::new();
    for i in 0..kept_rows.num_rows() {
        by_part.entry(kparts.value(i)).or_default().push(i as u32);
    }
    for (part, idx) in by_part {
        let rows = take_rows(&kept_rows, &idx)?;
        states.entry(part).or_default().rows.push(rows);
        changed.insert(part);
    }
    Ok(Admitted {
        rows: RecordBatch::new_empty(batch.schema()),
        refused,
        duplicates,
        changed: changed.into_iter().collect(),
        open_ends,
    })
}

fn with_column(batch: &RecordBatch, name: &str, a: ArrayRef) -> Result<RecordBatch> {
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(name, a.data_type().clone(), true));
    let mut cols = batch.columns().to_vec();
    cols.push(a);
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
}

fn take_rows(batch: &RecordBatch, idx: &[u32]) -> Result<RecordBatch> {
    let idx = UInt32Array::from(idx.to_vec());
    let cols = batch
        .columns()
        .iter()
        .map(|c| take(c.as_ref(), &idx, None))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(batch.schema(), cols)?)
}

/// The rows of the windows whose end is in `(after, until]`, one per (row, window),
/// as the SQL's table (`sql_schema`): the kafka table's columns, then
/// `window_start` and `window_end`.
pub fn window_rows(
    buffered: &[RecordBatch],
    p: &StateParams,
    table: &SchemaRef,
    after: Option<i64>,
    until: i64,
) -> Result<RecordBatch> {
    let (size, slide) = p
        .window
        .ok_or_else(|| Error::Data("not a windowed job".into()))?;
    let out_schema = sql_schema(table, Some(p));
    let (mut idx, mut starts) = (vec![], vec![]);
    for (bi, b) in buffered.iter().enumerate() {
        let times = event_times(b, p)?;
        let open = b
            .column_by_name(OPEN_FROM)
            .ok_or_else(|| Error::Data("buffered rows without _open_from".into()))?
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| Error::Data("_open_from is not int64".into()))?
            .clone();
        for (i, t) in times.iter().enumerate() {
            let Some(t) = *t else { continue };
            // windows containing t: starts k·slide in (t - size, t]
            let mut s = t.div_euclid(slide) * slide;
            while s > t - size {
                let end = s + size;
                if end > after.unwrap_or(i64::MIN) && end <= until && end >= open.value(i) {
                    idx.push((bi, i as u32));
                    starts.push(s);
                }
                s -= slide;
            }
        }
    }
    if idx.is_empty() {
        return Ok(RecordBatch::new_empty(out_schema));
    }
    let mut pieces = vec![];
    for (bi, b) in buffered.iter().enumerate() {
        let rows: Vec<u32> = idx
            .iter()
            .filter(|(x, _)| *x == bi)
            .map(|(_, i)| *i)
            .collect();
        if rows.is_empty() {
            continue;
        }
        let taken = take_rows(b, &rows)?;
        // the table's columns, in its order
        let cols = table
            .fields()
            .iter()
            .map(|f| {
                taken
                    .column_by_name(f.name())
                    .cloned()
                    .ok_or_else(|| Error::Data(format!("buffered rows lack '{}'", f.name())))
            })
            .collect::<Result<Vec<_>>>()?;
        pieces.push(RecordBatch::try_new(table.clone(), cols)?);
    }
    // `idx` (and `starts`) run through the buffers in order, as `pieces` does
    let rows = concat_batches(table, &pieces)?;
    let end = TimestampMillisecondArray::from(starts.iter().map(|s| s + size).collect::<Vec<_>>());
    let start = TimestampMillisecondArray::from(starts);
    let mut cols = rows.columns().to_vec();
    cols.push(Arc::new(start));
    cols.push(Arc::new(end));
    Ok(RecordBatch::try_new(out_schema, cols)?)
}

/// Drops the buffered rows whose every window ended at or before `until` (emitted).
pub fn prune(st: &mut PartitionState, p: &StateParams, until: i64) -> Result<bool> {
    let before = st.buffered();
    let mut kept = vec![];
    for b in &st.rows {
        let times = event_times(b, p)?;
        let mask: Vec<bool> = times
            .iter()
            .map(|t| t.and_then(|t| p.last_end(t)).is_some_and(|e| e > until))
            .collect();
        let f = filter_record_batch(b, &BooleanArray::from(mask))?;
        if f.num_rows() > 0 {
            kept.push(f);
        }
    }
    st.rows = kept;
    Ok(st.buffered() != before)
}

/// A partition's checkpoint: its buffered rows, then its dedup keys, each an Arrow
/// IPC file, length-prefixed in one object.
pub fn encode(st: &PartitionState) -> Result<Vec<u8>> {
    let mut out = vec![];
    let rows = match st.rows.first() {
        Some(first) => Some(concat_batches(&first.schema(), &st.rows)?),
        None => None,
    };
    let keys: Vec<(&String, &i64)> = st.keys.iter().collect();
    let keys = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("key", DataType::Utf8, false),
            Field::new("seen_ms", DataType::Int64, false),
        ])),
        vec![
            Arc::new(StringArray::from_iter_values(
                keys.iter().map(|k| k.0.as_str()),
            )),
            Arc::new(Int64Array::from_iter_values(keys.iter().map(|k| *k.1))),
        ],
    )?;
    for b in [rows, Some(keys)] {
        let bytes = match b {
            Some(b) => {
                let mut buf = vec![];
                let mut w = FileWriter::try_new(&mut buf, &b.schema())?;
                w.write(&b)?;
                w.finish()?;
                drop(w);
                buf
            }
            None => vec![],
        };
        out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    Ok(out)
}

/// Reads a checkpoint written by `encode` (its `max_event_ms` comes with the offsets).
pub fn decode(bytes: &[u8], max_event_ms: Option<i64>) -> Result<PartitionState> {
    let bad = || Error::Data("a state checkpoint is truncated".into());
    let mut parts = vec![];
    let mut rest = bytes;
    for _ in 0..2 {
        let (len, tail) = rest.split_first_chunk::<8>().ok_or_else(bad)?;
        let len = u64::from_le_bytes(*len) as usize;
        if tail.len() < len {
            return Err(bad());
        }
        parts.push(&tail[..len]);
        rest = &tail[len..];
    }
    let read = |b: &[u8]| -> Result<Vec<RecordBatch>> {
        if b.is_empty() {
            return Ok(vec![]);
        }
        let r = FileReader::try_new(std::io::Cursor::new(b.to_vec()), None)?;
        Ok(r.collect::<std::result::Result<Vec<_>, _>>()?)
    };
    let rows = read(parts[0])?;
    let mut keys = HashMap::new();
    for b in read(parts[1])? {
        let k = b
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(bad)?;
        let s = b
            .column(1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(bad)?;
        for i in 0..b.num_rows() {
            keys.insert(k.value(i).to_string(), s.value(i));
        }
    }
    Ok(PartitionState {
        max_event_ms,
        keys,
        rows: rows.into_iter().filter(|b| b.num_rows() > 0).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Int64, true),
            Field::new("ts", DataType::Int64, true),
            Field::new("_key", DataType::Utf8, true),
            Field::new("_partition", DataType::Int32, false),
            Field::new("_offset", DataType::Int64, false),
            Field::new(
                "_timestamp",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                true,
            ),
        ]))
    }

    /// Rows (user, ts, partition, offset).
    fn batch(rows: &[(i64, i64, i32, i64)]) -> RecordBatch {
        RecordBatch::try_new(
            table(),
            vec![
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(StringArray::from(vec![None::<&str>; rows.len()])),
                Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.2))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.3))),
                Arc::new(TimestampMillisecondArray::from(vec![None; rows.len()])),
            ],
        )
        .unwrap()
    }

    fn params(window: Option<(i64, i64)>, dedup: &[&str]) -> StateParams {
        StateParams {
            event_time: Some("ts".into()),
            window,
            watermark_delay_ms: 5,
            dedup: dedup.iter().map(|s| s.to_string()).collect(),
            dedup_window_ms: 100,
        }
    }

    fn users(b: &RecordBatch) -> Vec<i64> {
        b.column_by_name("user_id")
            .unwrap()
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .values()
            .to_vec()
    }

    #[test]
    fn the_columns_it_names_are_checked_against_the_kafka_table() {
        let t = table();
        assert!(params(Some((10, 10)), &["user_id"]).check(&t).is_ok());
        let mut p = params(None, &["nope"]);
        let e = p.check(&t).unwrap_err().to_string();
        assert!(
            e.contains("job.params.dedup_key") && e.contains("nope"),
            "{e}"
        );
        p.event_time = Some("_key".into());
        let e = p.check(&t).unwrap_err().to_string();
        assert!(
            e.contains("job.params.event_time") && e.contains("Utf8"),
            "{e}"
        );
        assert_eq!(
            sql_schema(&t, Some(&params(Some((10, 5)), &[])))
                .fields()
                .len(),
            t.fields().len() + 2
        );
    }

    #[test]
    fn repeats_within_the_window_are_dropped_and_keys_survive_a_checkpoint() {
        let p = params(None, &["user_id"]);
        let mut states = BTreeMap::new();
        let a = admit(
            &batch(&[(1, 10, 0, 0), (2, 11, 0, 1), (1, 12, 0, 2)]),
            &p,
            &mut states,
            None,
        )
        .unwrap();
        assert_eq!(users(&a.rows), [1, 2]);
        assert_eq!((a.duplicates, a.changed.clone()), (1, vec![0]));
        // the state moves (a checkpoint, read back on another worker)
        let bytes = encode(&states[&0]).unwrap();
        let mut moved: BTreeMap<i32, PartitionState> =
            [(0, decode(&bytes, states[&0].max_event_ms).unwrap())].into();
        let a = admit(
            &batch(&[(2, 50, 0, 3), (3, 60, 0, 4)]),
            &p,
            &mut moved,
            None,
        )
        .unwrap();
        assert_eq!(users(&a.rows), [3], "user 2 was seen 39 ms before");
        // past the dedup window, the key is new again (and the old ones expired)
        let a = admit(&batch(&[(1, 500, 0, 5)]), &p, &mut moved, None).unwrap();
        assert_eq!(users(&a.rows), [1]);
        assert_eq!(moved[&0].keys.len(), 1, "keys older than 100 ms expired");
    }

    #[test]
    fn windows_close_at_the_watermark_and_late_records_are_refused() {
        // tumbling windows of 10 ms; the watermark trails by 5 ms
        let p = params(Some((10, 10)), &[]);
        let mut states = BTreeMap::new();
        let a = admit(
            &batch(&[
                (1, 1, 0, 0),
                (2, 9, 0, 1),
                (3, 12, 0, 2),
                (4, 3, 1, 0),
                (5, 26, 0, 3),
            ]),
            &p,
            &mut states,
            None,
        )
        .unwrap();
        assert_eq!(a.rows.num_rows(), 0, "rows wait for their windows");
        assert!(a.refused.is_empty());
        // partition 0 saw 26 (watermark 21): a record at 8 or 15 is late, at 22 not
        let a = admit(
            &batch(&[(6, 8, 0, 4), (7, 22, 0, 5), (8, 15, 0, 6)]),
            &p,
            &mut states,
            None,
        )
        .unwrap();
        assert_eq!(a.refused.len(), 2);
        assert!(a.refused[0].reason.contains("late"), "{:?}", a.refused);
        assert!(
            a.refused[1].reason.contains("[10, 20) has closed"),
            "{:?}",
            a.refused
        );
        assert_eq!((a.refused[0].partition, a.refused[0].offset), (0, 4));
        // the job's watermark is the lowest partition's: partition 1 saw 3 only
        let wm = job_watermark(states.values().map(|s| s.max_event_ms), 5).unwrap();
        assert_eq!(wm, -2);
        let wm = job_watermark([Some(26), Some(17)], 5).unwrap();
        let until = closed_until(wm, 10, 10);
        assert_eq!(until, 10, "window [0, 10) closed at watermark 12");
        let all: Vec<RecordBatch> = states.values().flat_map(|s| s.rows.clone()).collect();
        let w = window_rows(&all, &p, &table(), None, until).unwrap();
        let mut got = users(&w);
        got.sort();
        assert_eq!(got, [1, 2, 4]);
        assert_eq!(w.schema().field(w.num_columns() - 2).name(), "window_start");
        // after emitting it, the buffers keep only open windows
        for st in states.values_mut() {
            prune(st, &p, until).unwrap();
        }
        let left: usize = states.values().map(PartitionState::buffered).sum();
        assert_eq!(left, 3, "12, 26, 22");
        // nothing emitted twice
        let all: Vec<RecordBatch> = states.values().flat_map(|s| s.rows.clone()).collect();
        assert_eq!(
            window_rows(&all, &p, &table(), Some(10), 10)
                .unwrap()
                .num_rows(),
            0
        );
        let next = window_rows(&all, &p, &table(), Some(10), 20).unwrap();
        let mut got = users(&next);
        got.sort();
        assert_eq!(got, [3]);
    }

    #[test]
    fn a_record_for_a_window_the_job_emitted_is_late_and_open_ends_are_reported() {
        // tumbling 10 ms; partition 1 is behind (watermark 5) but the job emitted
        // windows until 20 (other partitions moved on)
        let p = params(Some((10, 10)), &[]);
        let mut states = BTreeMap::new();
        let a = admit(&batch(&[(1, 10, 1, 0)]), &p, &mut states, None).unwrap();
        assert_eq!(a.open_ends[&1], 20);
        let a = admit(
            &batch(&[(2, 15, 1, 1), (3, 27, 1, 2)]),
            &p,
            &mut states,
            Some(20),
        )
        .unwrap();
        assert_eq!(a.refused.len(), 1);
        assert!(
            a.refused[0].reason.contains("already emitted"),
            "{:?}",
            a.refused
        );
        assert_eq!(a.open_ends[&1], 30, "27 counts in [20, 30)");
        // hopping (10 every 5): t = 27 is in [20, 30) and [25, 35); with windows until
        // 30 emitted it counts in [25, 35) only
        let p = params(Some((10, 5)), &[]);
        let a = admit(&batch(&[(4, 27, 2, 0)]), &p, &mut BTreeMap::new(), Some(30)).unwrap();
        assert_eq!(a.open_ends[&2], 35);
    }

    #[test]
    fn hopping_windows_count_a_record_in_each_window_still_open() {
        // windows of 10 ms every 5 ms: t = 12 is in [5, 15) and [10, 20)
        let p = params(Some((10, 5)), &[]);
        let mut states = BTreeMap::new();
        admit(&batch(&[(1, 12, 0, 0)]), &p, &mut states, None).unwrap();
        let all = states[&0].rows.clone();
        let w = window_rows(&all, &p, &table(), None, 20).unwrap();
        assert_eq!(w.num_rows(), 2);
        // a record admitted after [5, 15) closed in its partition counts only in
        // [10, 20), whenever the window is emitted
        admit(
            &batch(&[(2, 22, 0, 1), (3, 13, 0, 2)]),
            &p,
            &mut states,
            None,
        )
        .unwrap();
        let all = states[&0].rows.clone();
        let w = window_rows(&all, &p, &table(), None, 20).unwrap();
        let mut got = users(&w);
        got.sort();
        assert_eq!(got, [1, 1, 3], "3 missed [5, 15), which had closed for it");
        // the checkpoint keeps what each row may count in
        let back = decode(&encode(&states[&0]).unwrap(), Some(22)).unwrap();
        let w2 = window_rows(&back.rows, &p, &table(), None, 20).unwrap();
        assert_eq!(w2.num_rows(), 3);
    }
}
