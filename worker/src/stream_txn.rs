//! An exactly-once kafka sink (`[sink] delivery_guarantee = "exactly-once"`): each
//! source partition's share of a micro-batch goes to Kafka in its own transaction,
//! which also commits the partition's next offset to the job's consumer group
//! (`send_offsets_to_transaction`), so output and offset are visible together or
//! not at all. The transactional id is per source partition
//! (`SinkSpec::transactional_id`): whoever reads a partition next fences the
//! previous owner's producer (a crashed or cut-off worker) and aborts its open
//! transaction.
//!
//! The coordinator's committed offset (`CommitBatch`, after the transactions) can
//! lag the group's by one batch: a worker that dies between the two leaves its
//! output committed in Kafka but not in the coordinator. The next owner replays the
//! partition from the coordinator's offset — the batch's dead letters and state
//! (dedup keys) are rebuilt and committed with its own batch — but sends no row for
//! the records below the group's offset: their output is already in the topic.

use autopipe_common::error::{Error, Result};
use autopipe_common::kafka::{self, SinkProducer};
use autopipe_common::spec::{PipelineSpec, SinkSpec};
use autopipe_common::task::TaskResult;
use datafusion::arrow::array::{BooleanArray, Int32Array, Int64Array};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::SessionContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerGroupMetadata};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The transactions of a consumer task's partitions.
pub struct Transactions {
    job_id: String,
    sink: SinkSpec,
    sql: String,
    /// the job's consumer group, whose offsets the transactions commit
    group: Arc<ConsumerGroupMetadata>,
    producers: BTreeMap<i32, Arc<SinkProducer>>,
    /// per partition: the offset its committed transactions reached (its group
    /// offset); records below it have their output in the topic already
    sent_until: BTreeMap<i32, i64>,
}

impl Transactions {
    /// The transactions of an exactly-once kafka sink's job, none if the job's sink
    /// is not one. `consumer` belongs to the job's consumer group.
    pub fn of<C: rdkafka::consumer::ConsumerContext>(
        spec: &PipelineSpec,
        job_id: &str,
        consumer: &BaseConsumer<C>,
    ) -> Result<Option<Self>> {
        if spec.sink.transactional_id(job_id, 0).is_none() {
            return Ok(None);
        }
        let group = consumer.group_metadata().ok_or_else(|| {
            Error::Permanent("the consumer has no group for the sink's transactions".into())
        })?;
        Ok(Some(Transactions {
            job_id: job_id.to_string(),
            sink: spec.sink.clone(),
            sql: spec.transform.sql.clone(),
            group: Arc::new(group),
            producers: BTreeMap::new(),
            sent_until: BTreeMap::new(),
        }))
    }

    /// Takes partitions over: fences their earlier owners' producers (aborting an
    /// open transaction), then reads how far those owners' committed transactions
    /// reached. Fencing comes first, so no transaction commits after the read.
    pub async fn acquire<C: rdkafka::consumer::ConsumerContext + 'static>(
        &mut self,
        consumer: &Arc<BaseConsumer<C>>,
        topic: &str,
        partitions: &[i32],
    ) -> Result<()> {
        if partitions.is_empty() {
            return Ok(());
        }
        for &p in partitions {
            let id = self
                .sink
                .transactional_id(&self.job_id, p)
                .expect("an exactly-once sink");
            let sink = self.sink.clone();
            let producer = tokio::task::spawn_blocking(move || {
                kafka::transactional_producer(&sink, &id, TXN_TIMEOUT)
            })
            .await
            .map_err(|e| Error::Transient(format!("starting transactions: {e}")))??;
            self.producers.insert(p, Arc::new(producer));
        }
        let (c, t, ps) = (consumer.clone(), topic.to_string(), partitions.to_vec());
        let committed = tokio::task::spawn_blocking(move || {
            let mut tpl = TopicPartitionList::new();
            for p in &ps {
                tpl.add_partition(&t, *p);
            }
            c.committed_offsets(tpl, TXN_TIMEOUT)
        })
        .await
        .map_err(|e| Error::Transient(format!("reading group offsets: {e}")))?
        .map_err(|e| {
            Error::Transient(format!(
                "cannot read the sink's committed source offsets of '{topic}': {e}"
            ))
        })?;
        for e in committed.elements() {
            if let Offset::Offset(o) = e.offset() {
                self.sent_until.insert(e.partition(), o);
            }
        }
        Ok(())
    }

    /// Gives a partition up (its next owner fences the producer anyway).
    pub fn release(&mut self, p: i32) {
        self.producers.remove(&p);
        self.sent_until.remove(&p);
    }

    /// Runs the job's SQL over each partition's rows of the batch (`rows`; its
    /// records reach `progress`' end offsets) and sends the output with the
    /// partition's next offset in one transaction per partition. Rows below a
    /// partition's `sent_until` are skipped: an earlier owner sent their output.
    pub async fn produce(
        &mut self,
        ctx: &SessionContext,
        sql_options: SQLOptions,
        source: &str,
        topic: &str,
        rows: &RecordBatch,
        progress: &BTreeMap<i32, (i64, i64)>,
    ) -> Result<TaskResult> {
        let mut out = TaskResult::default();
        for (&p, &(_, to)) in progress {
            let from = self.sent_until.get(&p).copied().unwrap_or(-1);
            if to <= from {
                continue;
            }
            let part = rows_of(rows, p, from)?;
            if part.num_rows() == 0 {
                continue;
            }
            kafka::set_batch(ctx, source, &part.schema(), vec![part])?;
            let batches = ctx
                .sql_with_options(&self.sql, sql_options)
                .await
                .map_err(|e| Error::plan("transform.sql", e))?
                .collect()
                .await?;
            let producer = self
                .producers
                .get(&p)
                .ok_or_else(|| Error::Transient(format!("partition {p} has no producer")))?
                .clone();
            let (sink, group, source_topic) =
                (self.sink.clone(), self.group.clone(), topic.to_string());
            let (rows_out, bytes_out) = tokio::task::spawn_blocking(move || {
                kafka::produce_transaction(
                    &producer,
                    sink.topic.as_deref().unwrap_or_default(),
                    sink.key.as_deref(),
                    &batches,
                    (&source_topic, p, to),
                    &group,
                    TXN_TIMEOUT,
                )
            })
            .await
            .map_err(|e| Error::Transient(format!("producing: {e}")))??;
            self.sent_until.insert(p, to);
            out.rows_out += rows_out;
            out.bytes_out += bytes_out;
        }
        Ok(out)
    }
}

/// The longest a transaction step (start, commit, abort) may take.
const TXN_TIMEOUT: Duration = Duration::from_secs(60);

/// The rows of `rows` from partition `p` at offsets from `from` on.
fn rows_of(rows: &RecordBatch, p: i32, from: i64) -> Result<RecordBatch> {
    let column = |name: &str| {
        rows.column_by_name(name)
            .ok_or_else(|| Error::Permanent(format!("the batch has no {name} column")))
    };
    let parts = column("_partition")?;
    let offsets = column("_offset")?;
    let (Some(parts), Some(offsets)) = (
        parts.as_any().downcast_ref::<Int32Array>(),
        offsets.as_any().downcast_ref::<Int64Array>(),
    ) else {
        return Err(Error::Permanent(
            "the batch's _partition or _offset column has another type".into(),
        ));
    };
    let keep: BooleanArray = parts
        .iter()
        .zip(offsets.iter())
        .map(|(q, o)| Some(q == Some(p) && o.is_some_and(|o| o >= from)))
        .collect();
    Ok(datafusion::arrow::compute::filter_record_batch(
        rows, &keep,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::StringArray;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    #[test]
    fn a_partitions_rows_from_an_offset_on() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("v", DataType::Utf8, false),
            Field::new("_partition", DataType::Int32, false),
            Field::new("_offset", DataType::Int64, false),
        ]));
        let rows = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["a", "b", "c", "d", "e"])),
                Arc::new(Int32Array::from(vec![0, 1, 0, 1, 0])),
                Arc::new(Int64Array::from(vec![7, 3, 8, 4, 9])),
            ],
        )
        .unwrap();
        let values = |b: &RecordBatch| -> Vec<String> {
            let v = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
            v.iter().map(|s| s.unwrap().to_string()).collect()
        };
        assert_eq!(values(&rows_of(&rows, 0, -1).unwrap()), ["a", "c", "e"]);
        assert_eq!(values(&rows_of(&rows, 0, 8).unwrap()), ["c", "e"]);
        assert_eq!(values(&rows_of(&rows, 1, 4).unwrap()), ["d"]);
        assert_eq!(rows_of(&rows, 2, 0).unwrap().num_rows(), 0);
    }
}
