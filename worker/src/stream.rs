//! A streaming job's consumer task (issue 13). It reads the Kafka partitions the
//! coordinator assigned it (`assign`, never consumer-group rebalancing) from the
//! offsets the coordinator committed, and repeats until cancelled:
//!
//! 1. poll records for up to `batch_interval`, or until `max_batch_rows`;
//! 2. decode the JSON values to Arrow (malformed records to the batch's dead letters
//!    with their topic, partition, offset and reason);
//! 3. a stateful job (`stream_state`): refuse late records (dead letters), drop
//!    repeats (`dedup_key`), buffer a windowed job's rows in their partition's state;
//! 4. run the job's SQL over the batch (joined with the job's file sources), or, for
//!    a windowed job's task that reads the lowest partition, over the windows the
//!    job's watermark closed (its own partitions' rows from memory, the others' from
//!    their committed checkpoints);
//! 5. write the result into the attempt's staging (`b{N}/`), and the changed
//!    partitions' state checkpoints under the job's `state/`;
//! 6. commit the batch's files, its partitions' new offsets, largest event times and
//!    checkpoints (and the windows it emitted) in one coordinator proposal
//!    (`CommitBatch`), which the coordinator then publishes in the sink.
//!
//! The next poll waits for the commit: a slow sink slows consumption (back-pressure),
//! and at most one batch is in memory. A commit the coordinator refuses (the attempt
//! lost its partitions) ends the attempt; what it staged is discarded with the job's
//! staging, and the partitions' new owner re-reads from the committed offsets.

use crate::control::{call_leader, WorkerShared};
use crate::executor::{run_sink, upload_dead_letters, RemoveOnDrop};
use crate::stream_txn::Transactions;
use autopipe_common::error::{Error, Result};
use autopipe_common::kafka::{self, Record};
use autopipe_common::spec::{Format, KafkaStart, PipelineSpec};
use autopipe_common::store::{get_url, put_url, register_stores};
use autopipe_common::stream_state::{self, PartitionState, StateParams};
use autopipe_common::task::TaskResult;
use autopipe_common::tolerant::DeadLetters;
use autopipe_proto as pb;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::execution::context::SQLOptions;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tonic::Request;

type KafkaConsumer = BaseConsumer<kafka::FetchWatermarks>;

/// Runs the consumer task `def` until `cancel` fires, or its commit is refused, or
/// an error (then the coordinator retries it from the committed offsets).
pub async fn run_stream(
    def: &pb::TaskDefinition,
    shared: &Arc<WorkerShared>,
    cancel: &CancellationToken,
    spill_dir: &std::path::Path,
) -> Result<TaskResult> {
    let st = def
        .stream
        .as_ref()
        .ok_or_else(|| Error::Permanent("not a streaming task".into()))?;
    let key = def
        .key
        .clone()
        .ok_or_else(|| Error::Permanent("task definition without a key".into()))?;
    let spec: PipelineSpec = serde_json::from_str(&st.spec_json)
        .map_err(|e| Error::Permanent(format!("cannot read the job's spec: {e}")))?;
    let (ctx, source, schema) = kafka::stream_context(&spec).await?;
    register_stores(&ctx.runtime_env(), &def.store_urls)?;
    let topic = source.topic.clone().unwrap_or_default();
    let params = &spec.job.params;
    let interval = Duration::from_millis(params.batch_interval_ms());
    let max_rows = params.max_batch_rows() as usize;
    // back-pressure: the next poll waits for the batch's commit, and librdkafka
    // prefetches at most PREFETCH_KIB (unless [sources.options] says otherwise), so a
    // slow sink slows consumption and memory stays bounded
    let mut config = kafka::client_config(&source);
    if !source.options.contains_key("queued.max.messages.kbytes") {
        config.set("queued.max.messages.kbytes", PREFETCH_KIB.to_string());
    }
    let consumer: Arc<KafkaConsumer> = Arc::new(
        config
            // librdkafka's assign() needs a group id; the group is never joined and
            // nothing is committed to it (offsets live in the coordinator)
            .set("group.id", format!("autopipe.{}", key.job_id))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // the high watermarks in the statistics measure the lag (the test broker's
            // ListOffsets answers a batch's base offset, its Fetch responses are right)
            .set(
                "statistics.interval.ms",
                params.batch_interval_ms().clamp(100, 1000).to_string(),
            )
            .create_with_context(kafka::FetchWatermarks::default())
            .map_err(|e| Error::Permanent(format!("source '{}': {e}", source.name)))?,
    );
    // where each partition stands: the committed offset, or (none committed yet) the
    // source's start, resolved and committed first so a restart never re-resolves it
    let mut position: BTreeMap<i32, i64> = BTreeMap::new();
    let mut unresolved = vec![];
    for p in &st.partitions {
        match p.offset {
            o if o >= 0 => {
                position.insert(p.partition, o);
            }
            _ => unresolved.push(p.partition),
        }
    }
    let mut batch = 0u64;
    if !unresolved.is_empty() {
        let start = source.start.unwrap_or_default();
        let (c, t) = (consumer.clone(), topic.clone());
        let resolved =
            tokio::task::spawn_blocking(move || resolve_start(&c, &t, &unresolved, start))
                .await
                .map_err(|e| Error::Transient(format!("resolving offsets: {e}")))??;
        batch += 1;
        let progress = resolved
            .iter()
            .map(|(&p, &o)| pb::PartitionProgress {
                partition: p,
                from_offset: -1,
                to_offset: o,
                high_watermark: -1,
                ..Default::default()
            })
            .collect();
        let req = pb::CommitBatchRequest {
            worker_id: def.worker_id.clone(),
            key: Some(key.clone()),
            batch,
            partitions: progress,
            ..Default::default()
        };
        commit(shared, req).await?;
        position.extend(resolved);
    }
    let mut tpl = TopicPartitionList::new();
    for (&p, &o) in &position {
        tpl.add_partition_offset(&topic, p, Offset::Offset(o))
            .map_err(|e| Error::Permanent(format!("partition {p}: {e}")))?;
    }
    consumer
        .assign(&tpl)
        .map_err(|e| Error::Transient(format!("cannot assign partitions of '{topic}': {e}")))?;
    let sql_options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let mut state = Stateful::load(&spec, st).await?;
    // an exactly-once kafka sink: a transaction per partition; else an idempotent
    // producer (at-least-once) or files
    let mut txns = Transactions::of(&spec, &key.job_id, &consumer)?;
    if let Some(t) = txns.as_mut() {
        let reading: Vec<i32> = position.keys().copied().collect();
        t.acquire(&consumer, &topic, &reading).await?;
    }
    let producer = match spec.sink.format {
        Format::Kafka if txns.is_none() => Some(Arc::new(kafka::sink_producer(&spec.sink)?)),
        _ => None,
    };
    let mut total = TaskResult::default();
    // the high watermarks the last commit reported, and when it was sent
    let mut reported: HashMap<i32, i64> = HashMap::new();
    let mut last_commit = Instant::now();
    while !cancel.is_cancelled() {
        let (c, stop) = (consumer.clone(), cancel.clone());
        let (mut records, error) =
            tokio::task::spawn_blocking(move || poll_batch(&c, interval, max_rows, &stop))
                .await
                .map_err(|e| Error::Transient(format!("polling: {e}")))?;
        if let Some(e) = error {
            return Err(e);
        }
        // (records prefetched for a partition handed over are not this task's)
        records.retain(|r| position.contains_key(&r.partition));
        if cancel.is_cancelled() {
            continue;
        }
        let emit = state.closable(&position);
        if records.is_empty() && emit.is_none() && state.dirty.is_empty() {
            // no records: the lag the coordinator sees (it scales on it) is kept fresh
            // by a commit of the high watermarks alone when they moved (a stalled
            // fetch) or every PROGRESS_EVERY
            let high = consumer.context().high.lock().expect("lock").clone();
            // (a task reading nothing yet asks at every interval for what to read)
            let moved =
                position.is_empty() || position.keys().any(|p| high.get(p) != reported.get(p));
            if moved || last_commit.elapsed() >= PROGRESS_EVERY {
                batch += 1;
                let req = pb::CommitBatchRequest {
                    worker_id: def.worker_id.clone(),
                    key: Some(key.clone()),
                    batch,
                    partitions: position
                        .iter()
                        .map(|(&p, &o)| pb::PartitionProgress {
                            partition: p,
                            from_offset: o,
                            to_offset: o,
                            high_watermark: high.get(&p).copied().unwrap_or(-1),
                            max_event_ms: state.max_event(p),
                            state_url: String::new(),
                            min_open_end: None,
                        })
                        .collect(),
                    oldest_record_ms: -1,
                    ..Default::default()
                };
                let resp = commit(shared, req).await?;
                let mut s = Settle {
                    position: &mut position,
                    state: &mut state,
                    txns: &mut txns,
                };
                s.settle(resp, None, &consumer, &source).await?;
                reported = high;
                last_commit = Instant::now();
            }
            continue;
        }
        let started = Instant::now();
        batch += 1;
        // each partition's progress: from where it stood to after its last record
        let mut progress: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
        for r in &records {
            let from = position.get(&r.partition).copied().unwrap_or(r.offset);
            let e = progress.entry(r.partition).or_insert((from, from));
            e.1 = e.1.max(r.offset + 1);
        }
        let dead_path = spill_dir.join(format!(
            "dead-{}-t{}-a{}-b{batch}.ndjson",
            autopipe_common::shuffle::job_dir(std::path::Path::new(""), &key.job_id).display(),
            key.task,
            key.attempt
        ));
        let dead = DeadLetters::to_file(&dead_path)
            .map_err(|e| Error::Transient(format!("cannot create {}: {e}", dead_path.display())))?;
        let _remove = RemoveOnDrop(dead_path.clone());
        let (rows, bad) = kafka::decode(&source.name, &topic, &schema, &records, &dead)?;
        // a stateful job: late records refused, repeats dropped, windows buffered
        let (rows, late, duplicates) = state.admit(rows, &records, &source.name, &topic, &dead)?;
        let sink = pb::SinkOutput {
            format: spec.sink.format.name().to_string(),
            staging_url: format!("{}b{batch}/", st.staging_url),
            partition_by: spec.sink.partition_by.clone(),
        };
        // the SQL runs over the batch, or (windows) over the windows the watermark closed
        let table = match (&state.params, emit) {
            (Some(p), Some((after, until))) if p.window.is_some() => {
                Some(state.window_rows(&schema, after, until).await?)
            }
            (Some(p), _) if p.window.is_some() => None,
            _ => Some(rows),
        };
        // (a fault test freezes a worker here: records read, nothing sent yet)
        autopipe_common::failpoint::hit("stream.before_send");
        let out = match (table, txns.as_mut()) {
            (Some(rows), Some(t)) => {
                t.produce(&ctx, sql_options, &source.name, &topic, &rows, &progress)
                    .await?
            }
            (Some(rows), None) => {
                kafka::set_batch(&ctx, &source.name, &rows.schema(), vec![rows])?;
                let df = ctx
                    .sql_with_options(&spec.transform.sql, sql_options)
                    .await
                    .map_err(|e| Error::plan("transform.sql", e))?;
                match &producer {
                    // a kafka sink: every row acknowledged before the offsets commit
                    Some(p) => {
                        let batches = df.collect().await?;
                        let (p, sink) = (p.clone(), spec.sink.clone());
                        let (rows_out, bytes_out) = tokio::task::spawn_blocking(move || {
                            kafka::produce_rows(
                                &p,
                                sink.topic.as_deref().unwrap_or_default(),
                                sink.key.as_deref(),
                                &batches,
                                SINK_ACK_TIMEOUT,
                            )
                        })
                        .await
                        .map_err(|e| Error::Transient(format!("producing: {e}")))??;
                        TaskResult {
                            rows_out,
                            bytes_out,
                            ..Default::default()
                        }
                    }
                    None => {
                        let out_schema = Arc::new(df.schema().as_arrow().clone());
                        let stream = df.execute_stream().await?;
                        run_sink(out_schema, stream, &sink, ctx.task_ctx(), false).await?
                    }
                }
            }
            (None, _) => TaskResult::default(),
        };
        let mut dead_letter_file = String::new();
        if let Some((file, n)) = dead.finish().map_err(Error::Transient)? {
            if n > 0 {
                let url = format!("{}b{batch}.ndjson", st.dead_letter_url);
                dead_letter_file = upload_dead_letters(&url, &file, n).await?;
            }
        }
        // the state of every partition it changed, checkpointed before the commit
        let checkpoints = state
            .checkpoint(&st.state_url, key.task, key.attempt, batch)
            .await?;
        // every partition of the task is reported, with the high watermark it sees:
        // one without records in this batch is then measured (its lag, idleness) too
        for (p, at) in &position {
            progress.entry(*p).or_insert((*at, *at));
        }
        let high = high_watermarks(&consumer, &topic, progress.keys().copied()).await;
        let req = pb::CommitBatchRequest {
            worker_id: def.worker_id.clone(),
            key: Some(key.clone()),
            batch,
            partitions: progress
                .iter()
                .map(|(&p, &(from, to))| pb::PartitionProgress {
                    partition: p,
                    from_offset: from,
                    to_offset: to,
                    high_watermark: high.get(&p).copied().unwrap_or(-1),
                    max_event_ms: state.max_event(p),
                    state_url: checkpoints.get(&p).cloned().unwrap_or_default(),
                    min_open_end: state.open_ends.get(&p).copied(),
                })
                .collect(),
            files: out.files.iter().map(|f| format!("b{batch}/{f}")).collect(),
            dead_letter_file,
            records: records.len() as u64,
            rows_out: out.rows_out,
            bad_records: bad,
            bytes_out: out.bytes_out,
            duration_ms: started.elapsed().as_millis() as u64,
            oldest_record_ms: records
                .iter()
                .filter_map(|r| r.timestamp_ms)
                .min()
                .unwrap_or(-1),
            emitted: emit.map(|(after, until)| pb::WindowEmit { after, until }),
            duplicates,
            late_records: late,
        };
        // (a fault test crashes a worker here: output sent, offsets not committed)
        autopipe_common::failpoint::hit("stream.before_commit");
        let resp = commit(shared, req).await?;
        for (p, (_, to)) in progress {
            position.insert(p, to);
        }
        let emitted = emit.map(|e| e.1);
        let mut s = Settle {
            position: &mut position,
            state: &mut state,
            txns: &mut txns,
        };
        s.settle(resp, emitted, &consumer, &source).await?;
        last_commit = Instant::now();
        reported.extend(high);
        total.rows_in += records.len() as u64;
        total.rows_out += out.rows_out;
        total.bytes_out += out.bytes_out;
        total.bad_records += bad + late;
        tracing::debug!(job = %key.job_id, task = key.task, attempt = key.attempt, batch, records = records.len(), rows_out = out.rows_out, ms = started.elapsed().as_millis() as u64, "micro-batch committed");
    }
    Ok(total)
}

/// What a commit's answer changes: where the task's partitions stand, their state,
/// and an exactly-once sink's transactions.
struct Settle<'a> {
    position: &'a mut BTreeMap<i32, i64>,
    state: &'a mut Stateful,
    txns: &'a mut Option<Transactions>,
}

impl Settle<'_> {
    /// After a commit (`position` moved past it): the state takes the coordinator's
    /// answer (the job's watermark, the windows emitted, `emitted` by this batch). When
    /// the coordinator dealt partitions anew (its answer lists others), the task stops
    /// reading those it gave up (their new owners start from the offsets it just
    /// committed), and starts reading those it gained from their committed offsets and
    /// checkpoints.
    async fn settle(
        &mut self,
        resp: pb::CommitBatchResponse,
        emitted: Option<i64>,
        consumer: &Arc<KafkaConsumer>,
        source: &autopipe_common::spec::SourceSpec,
    ) -> Result<()> {
        let (position, state) = (&mut *self.position, &mut *self.state);
        let topic = source.topic.clone().unwrap_or_default();
        let starts: Vec<pb::PartitionStart> = resp
            .view
            .as_ref()
            .map(|v| v.partitions.clone())
            .unwrap_or_default();
        state.committed(resp.view, emitted)?;
        let keep = &resp.partitions;
        let gone: Vec<i32> = position
            .keys()
            .filter(|p| !keep.contains(p))
            .copied()
            .collect();
        let gained: Vec<i32> = keep
            .iter()
            .filter(|p| !position.contains_key(p))
            .copied()
            .collect();
        if gone.is_empty() && gained.is_empty() {
            return Ok(());
        }
        for p in &gone {
            position.remove(p);
            state.drop_partition(*p);
            if let Some(t) = self.txns.as_mut() {
                t.release(*p);
            }
        }
        if let Some(t) = self.txns.as_mut() {
            t.acquire(consumer, &topic, &gained).await?;
        }
        let mut unresolved = vec![];
        for p in &gained {
            let ps = starts.iter().find(|s| s.partition == *p).ok_or_else(|| {
                Error::Transient(format!("partition {p} is not in the coordinator's answer"))
            })?;
            state.adopt(ps).await?;
            match ps.offset {
                o if o >= 0 => {
                    position.insert(*p, o);
                }
                _ => unresolved.push(*p),
            }
        }
        if !unresolved.is_empty() {
            // (a partition that never committed: where the source starts)
            let (c, t, start) = (
                consumer.clone(),
                topic.clone(),
                source.start.unwrap_or_default(),
            );
            let resolved =
                tokio::task::spawn_blocking(move || resolve_start(&c, &t, &unresolved, start))
                    .await
                    .map_err(|e| Error::Transient(format!("resolving offsets: {e}")))??;
            position.extend(resolved);
        }
        let mut tpl = TopicPartitionList::new();
        for (&p, &o) in position.iter() {
            tpl.add_partition_offset(&topic, p, Offset::Offset(o))
                .map_err(|e| Error::Permanent(format!("partition {p}: {e}")))?;
        }
        consumer
            .assign(&tpl)
            .map_err(|e| Error::Transient(format!("cannot assign partitions of '{topic}': {e}")))?;
        tracing::info!(gave_up = ?gone, gained = ?gained, reading = ?position.keys().collect::<Vec<_>>(), "consumer task's partitions dealt anew");
        Ok(())
    }
}

/// A consumer task's state (`stream_state`): its partitions' windows and dedup
/// keys, which of them changed since their last checkpoint, and what the last
/// commit said of the job's watermark and emitted windows.
struct Stateful {
    params: Option<StateParams>,
    states: BTreeMap<i32, PartitionState>,
    /// partitions whose state changed since their last checkpoint
    dirty: BTreeSet<i32>,
    /// the job's committed state, as the last commit answered
    view: Option<pb::StreamView>,
    emitted_until: Option<i64>,
    /// the batch's earliest window end per partition (the coordinator checks it)
    open_ends: BTreeMap<i32, i64>,
}

impl Stateful {
    /// The task's partitions' state, read from their committed checkpoints.
    async fn load(spec: &PipelineSpec, st: &pb::StreamTask) -> Result<Self> {
        let mut state = Stateful {
            params: StateParams::of(&spec.job.params),
            states: BTreeMap::new(),
            dirty: BTreeSet::new(),
            view: None,
            emitted_until: st.emitted_until_ms,
            open_ends: BTreeMap::new(),
        };
        for ps in &st.partitions {
            state.adopt(ps).await?;
        }
        Ok(state)
    }

    /// Takes a partition over: its committed checkpoint, as `ps` names it.
    async fn adopt(&mut self, ps: &pb::PartitionStart) -> Result<()> {
        let Some(p) = &self.params else {
            return Ok(());
        };
        let mut s = if ps.state_url.is_empty() {
            PartitionState::default()
        } else {
            let bytes = get_url(&ps.state_url).await.map_err(|e| {
                Error::Transient(format!(
                    "cannot read partition {}'s state checkpoint {}: {e}",
                    ps.partition, ps.state_url
                ))
            })?;
            stream_state::decode(&bytes, ps.max_event_ms)?
        };
        s.max_event_ms = ps.max_event_ms;
        if let Some(u) = self.emitted_until {
            stream_state::prune(&mut s, p, u)?;
        }
        self.states.insert(ps.partition, s);
        Ok(())
    }

    /// Forgets a partition handed over (its committed checkpoint goes with it).
    fn drop_partition(&mut self, p: i32) {
        self.states.remove(&p);
        self.dirty.remove(&p);
        self.open_ends.remove(&p);
    }

    fn max_event(&self, p: i32) -> Option<i64> {
        self.states.get(&p).and_then(|s| s.max_event_ms)
    }

    /// Runs the decoded rows through the state: late records to `dead`, repeats
    /// dropped. Returns the rows the SQL reads now, and the late and repeated counts.
    fn admit(
        &mut self,
        rows: RecordBatch,
        records: &[Record],
        source: &str,
        topic: &str,
        dead: &DeadLetters,
    ) -> Result<(RecordBatch, u64, u64)> {
        self.open_ends.clear();
        let Some(p) = &self.params else {
            return Ok((rows, 0, 0));
        };
        let a = stream_state::admit(&rows, p, &mut self.states, self.emitted_until)?;
        self.open_ends = a.open_ends.clone();
        let by_pos: HashMap<(i32, i64), &Record> = records
            .iter()
            .map(|r| ((r.partition, r.offset), r))
            .collect();
        for r in &a.refused {
            if let Some(rec) = by_pos.get(&(r.partition, r.offset)) {
                dead.push(kafka::dead_record(source, topic, rec, r.reason.clone()));
            }
        }
        self.dirty.extend(a.changed);
        Ok((a.rows, a.refused.len() as u64, a.duplicates))
    }

    /// A windowed job's task that reads the lowest partition: the windows the job's
    /// watermark closed that are not emitted yet, as (after, until).
    fn closable(&self, position: &BTreeMap<i32, i64>) -> Option<(Option<i64>, i64)> {
        let (size, slide) = self.params.as_ref()?.window?;
        let view = self.view.as_ref()?;
        let lowest = view.partitions.iter().map(|p| p.partition).min()?;
        if !position.contains_key(&lowest) {
            return None;
        }
        let until = stream_state::closed_until(view.watermark_ms?, size, slide);
        let after = view.emitted_until_ms;
        (after.is_none_or(|a| until > a)).then_some((after, until))
    }

    /// The rows of the windows ending in (after, until], from every partition: this
    /// task's own in memory, the others' from their committed checkpoints.
    async fn window_rows(
        &self,
        table: &SchemaRef,
        after: Option<i64>,
        until: i64,
    ) -> Result<RecordBatch> {
        let p = self.params.as_ref().expect("a stateful job");
        let view = self.view.as_ref().expect("a view to emit from");
        let mut rows: Vec<RecordBatch> = vec![];
        for ps in &view.partitions {
            if let Some(own) = self.states.get(&ps.partition) {
                rows.extend(own.rows.iter().cloned());
            } else if !ps.state_url.is_empty() {
                let bytes = get_url(&ps.state_url).await.map_err(|e| {
                    Error::Transient(format!(
                        "cannot read partition {}'s state checkpoint {}: {e}",
                        ps.partition, ps.state_url
                    ))
                })?;
                rows.extend(stream_state::decode(&bytes, ps.max_event_ms)?.rows);
            }
        }
        stream_state::window_rows(&rows, p, table, after, until)
    }

    /// Writes the changed partitions' checkpoints; returns their URLs.
    async fn checkpoint(
        &mut self,
        root: &str,
        task: u32,
        attempt: u32,
        batch: u64,
    ) -> Result<BTreeMap<i32, String>> {
        let mut out = BTreeMap::new();
        for p in std::mem::take(&mut self.dirty) {
            let Some(s) = self.states.get(&p) else {
                continue;
            };
            let url = format!("{root}p{p}/t{task}-a{attempt}-b{batch}.state");
            put_url(&url, stream_state::encode(s)?).await?;
            out.insert(p, url);
        }
        Ok(out)
    }

    /// After a commit: what the coordinator answered; windows emitted up to a new
    /// end leave the buffers.
    fn committed(&mut self, view: Option<pb::StreamView>, emitted: Option<i64>) -> Result<()> {
        let Some(p) = &self.params else {
            return Ok(());
        };
        let until = emitted
            .or(view.as_ref().and_then(|v| v.emitted_until_ms))
            .max(self.emitted_until);
        if until != self.emitted_until {
            if let Some(u) = until {
                for (part, s) in self.states.iter_mut() {
                    if stream_state::prune(s, p, u)? {
                        self.dirty.insert(*part);
                    }
                }
            }
            self.emitted_until = until;
        }
        if view.is_some() {
            self.view = view;
        }
        Ok(())
    }
}

/// The most a consumer task prefetches ahead of its batches (KiB; librdkafka's
/// default is 64 MiB).
const PREFETCH_KIB: u32 = 16 * 1024;

/// The longest a kafka sink may take to acknowledge a batch's records.
const SINK_ACK_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest a consumer task with no records goes without reporting its
/// partitions' high watermarks.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// The partitions' high watermarks: from the consumer's statistics, or, for a
/// partition they do not cover yet (the first second), asked of the brokers.
async fn high_watermarks(
    consumer: &Arc<KafkaConsumer>,
    topic: &str,
    partitions: impl Iterator<Item = i32>,
) -> HashMap<i32, i64> {
    let mut high = consumer.context().high.lock().expect("lock").clone();
    let missing: Vec<i32> = partitions.filter(|p| !high.contains_key(p)).collect();
    if missing.is_empty() {
        return high;
    }
    let (c, t) = (consumer.clone(), topic.to_string());
    let asked = tokio::task::spawn_blocking(move || {
        missing
            .into_iter()
            .filter_map(|p| {
                let (_, hw) = c.fetch_watermarks(&t, p, Duration::from_secs(2)).ok()?;
                Some((p, hw))
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    high.extend(asked);
    high
}

/// Where partitions with no committed offset start: their low watermark (earliest)
/// or high watermark (latest), asked of the brokers.
fn resolve_start(
    consumer: &KafkaConsumer,
    topic: &str,
    partitions: &[i32],
    start: KafkaStart,
) -> Result<BTreeMap<i32, i64>> {
    let mut out = BTreeMap::new();
    for &p in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .map_err(|e| {
                Error::Transient(format!("cannot read the offsets of {topic}/{p}: {e}"))
            })?;
        out.insert(
            p,
            match start {
                KafkaStart::Earliest => low.max(0),
                KafkaStart::Latest => high.max(0),
            },
        );
    }
    Ok(out)
}

/// Polls for up to `interval` from the first wait (or until `max_rows` records, or
/// `cancel`); a consumer error other than reaching a partition's end is returned.
fn poll_batch(
    consumer: &KafkaConsumer,
    interval: Duration,
    max_rows: usize,
    cancel: &CancellationToken,
) -> (Vec<Record>, Option<Error>) {
    let deadline = Instant::now() + interval;
    let mut records = vec![];
    while records.len() < max_rows && !cancel.is_cancelled() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match consumer.poll(left.min(Duration::from_millis(100))) {
            None => {}
            Some(Ok(m)) => records.push(Record::from_message(&m)),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => return (records, Some(Error::Transient(format!("consuming: {e}")))),
        }
    }
    (records, None)
}

/// Sends a batch commit to the coordinators' leader, retrying transient failures
/// (leader changes, unreachable coordinators). A refusal ends the attempt.
async fn commit(
    shared: &WorkerShared,
    req: pb::CommitBatchRequest,
) -> Result<pb::CommitBatchResponse> {
    call_leader(shared, |mut c| {
        let mut r = Request::new(req.clone());
        r.set_timeout(Duration::from_secs(10));
        async move { c.commit_batch(r).await.map(|r| r.into_inner()) }
    })
    .await
    .map_err(|e| match e.class() {
        autopipe_common::ErrorClass::Permanent => Error::Permanent(format!(
            "the coordinator refused the batch, the attempt stops: {e}"
        )),
        _ => e,
    })
}
