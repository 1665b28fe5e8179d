//! Planning a streaming job (issue 13): the topic's partitions from its brokers, the
//! job's SQL checked against the kafka table's schema (each micro-batch runs it on
//! its worker), and the partitions dealt to the consumer tasks.

use crate::planner::plan_query;
use crate::state::{StagePlan, StreamPlan};
use autopipe_common::error::{Error, Result};
use autopipe_common::kafka;
use autopipe_common::spec::PipelineSpec;
use std::sync::Arc;
use std::time::Duration;

/// How long the coordinator waits for a topic's metadata at submit.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// A streaming job's one stage (its tasks are the consumer tasks; the plan is empty,
/// the display shows the SQL's plan over one micro-batch) and its stream plan: the
/// topic's partitions dealt round-robin to `consumers` tasks (at most one task per
/// partition, at least one task).
pub async fn plan_stream(
    spec: &PipelineSpec,
    consumers: u32,
) -> Result<(Vec<StagePlan>, StreamPlan)> {
    let (ctx, source, _) = kafka::stream_context(spec).await?;
    let physical = plan_query(&ctx, spec).await?;
    let topic = source.topic.clone().unwrap_or_default();
    let partitions =
        tokio::task::spawn_blocking(move || kafka::topic_partitions(&source, METADATA_TIMEOUT))
            .await
            .map_err(|e| Error::Transient(format!("topic metadata: {e}")))??;
    let assignment = deal(&partitions, consumers);
    let display = format!(
        "StreamConsumers: topic={topic}, partitions={}, tasks={}\n{}",
        partitions.len(),
        assignment.len(),
        datafusion::physical_plan::displayable(physical.as_ref()).indent(true)
    );
    let stage = StagePlan {
        id: 0,
        plan: Arc::new(vec![]),
        display,
        tasks: assignment.len() as u32,
        shuffle_partitions: None,
        inputs: vec![],
        join: None,
        broadcast: None,
        pre_merge: None,
        reduce: None,
    };
    Ok((vec![stage], StreamPlan { topic, assignment }))
}

/// Gives a kafka source without a schema the one inferred from the first records of
/// its topic (`kafka::infer_schema`), so every consumer task decodes with the same.
pub async fn infer_missing_schema(spec: &mut PipelineSpec) -> Result<()> {
    for s in spec.sources.iter_mut() {
        if s.format != autopipe_common::spec::Format::Kafka || s.schema.is_some() {
            continue;
        }
        let source = s.clone();
        let inferred = tokio::task::spawn_blocking(move || {
            kafka::infer_schema(&source, kafka::INFER_RECORDS, METADATA_TIMEOUT)
        })
        .await
        .map_err(|e| Error::Transient(format!("schema inference: {e}")))??;
        tracing::info!(source = %s.name, schema = ?inferred, "kafka source schema inferred");
        s.schema = Some(inferred);
    }
    Ok(())
}

/// `partitions` dealt round-robin to `tasks` tasks (no more tasks than partitions,
/// at least one).
pub fn deal(partitions: &[i32], tasks: u32) -> Vec<Vec<i32>> {
    let n = (tasks as usize).clamp(1, partitions.len().max(1));
    let mut out = vec![vec![]; n];
    for (i, &p) in partitions.iter().enumerate() {
        out[i % n].push(p);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::deal;

    #[test]
    fn partitions_are_dealt_round_robin_with_no_idle_task() {
        assert_eq!(deal(&[0, 1, 2, 3, 4], 2), vec![vec![0, 2, 4], vec![1, 3]]);
        assert_eq!(deal(&[0, 1], 8), vec![vec![0], vec![1]]);
        assert_eq!(deal(&[0, 1, 2], 0), vec![vec![0, 1, 2]]);
    }
}
