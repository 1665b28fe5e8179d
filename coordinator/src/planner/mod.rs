//! Planner: spec → DataFusion logical plan → physical plan → stages.
//!
//! The physical plan is split at every exchange: a hash `RepartitionExec` becomes a
//! map stage (whose root is that `RepartitionExec`; the worker runs its input and
//! hash-partitions the output into shuffle files) and a `ShuffleReaderExec` in the
//! consumer; a `CoalescePartitionsExec` / `SortPreservingMergeExec` over several
//! partitions makes its input a pass-through map stage read back one partition per
//! map task. The last stage is the sink stage: one task per output partition.

mod distinct;
pub mod stream;

pub use distinct::{share_exchange, DistinctToGroupBy};

use crate::state::{BroadcastPlan, PreMergePlan, ReducePlan, StageJoin, StagePlan};
use autopipe_common::error::{Error, Result};
use autopipe_common::session::{context_for, context_for_splits};
use autopipe_common::shuffle::{ShuffleCodec, ShuffleReaderExec};
use autopipe_common::spec::PipelineSpec;
use autopipe_common::splits::InputSplits;
use autopipe_common::tolerant::TolerantScanExec;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::JoinType;
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::context::SQLOptions;
use datafusion::logical_expr::{DdlStatement, LogicalPlan, Statement, WriteOp};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::combine_partial_final_agg::CombinePartialFinalAggregate;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::joins::{HashJoinExec, NestedLoopJoinExec, PartitionMode};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::Partitioning;
use datafusion::physical_plan::{
    displayable, replace_children_if_necessary, ExecutionPlan, ExecutionPlanProperties,
};
use datafusion::prelude::{DataFrame, SessionContext};
use datafusion_proto::bytes::physical_plan_to_bytes_with_extension_codec;
use std::sync::Arc;

/// A planned job.
#[derive(Debug)]
pub struct PlannedJob {
    /// stages in dependency order (inputs before consumers); the last is the sink stage
    pub stages: Vec<StagePlan>,
    /// the stages that scan sources (their tasks are the input splits)
    pub scan_stages: Vec<u32>,
    /// the rows the job outputs (partition columns included)
    pub output_schema: datafusion::arrow::datatypes::SchemaRef,
}

/// Plans `spec` with `partitions` target partitions (DataFusion splits the scans).
pub async fn plan_job(spec: &PipelineSpec, partitions: usize) -> Result<PlannedJob> {
    plan_job_with(spec, partitions, None).await
}

/// Plans `spec` with exchanges `partitions` wide and, when given, each source's
/// scan reading its groups in `splits` (one task per group); without `splits`,
/// DataFusion splits the scans into `partitions` partitions.
pub async fn plan_job_with(
    spec: &PipelineSpec,
    partitions: usize,
    splits: Option<&InputSplits>,
) -> Result<PlannedJob> {
    let ctx = match splits {
        Some(sp) => context_for_splits(spec, partitions, sp).await?,
        None => context_for(spec, partitions).await?,
    };
    // after DataFusion's rules (its single-distinct rewrite goes first)
    ctx.add_optimizer_rule(Arc::new(DistinctToGroupBy));
    let physical = plan_query(&ctx, spec).await?;
    // one exchange for a rewritten distinct aggregate's two group-bys; its outer
    // partial and final aggregates, now adjacent, run as one (DataFusion's rule)
    let shared = share_exchange(distribute_joins(physical)?)?;
    let combined = CombinePartialFinalAggregate::new()
        .optimize(shared, &ConfigOptions::default())
        .map_err(|e| Error::plan("transform.sql", e))?;
    split_into_stages(combined, spec.job.params.broadcast_join_max_bytes())
}

/// The physical plan of `spec`'s transform in `ctx`, its output checked against the
/// sink's `partition_by` columns.
pub async fn plan_query(
    ctx: &SessionContext,
    spec: &PipelineSpec,
) -> Result<Arc<dyn ExecutionPlan>> {
    let df = plan_transform(ctx, &spec.transform.sql).await?;
    let physical = df
        .create_physical_plan()
        .await
        .map_err(|e| Error::plan("transform.sql", e))?;
    let schema = physical.schema();
    for (i, col) in spec.sink.partition_by.iter().enumerate() {
        if schema.field_with_name(col).is_err() {
            let names: Vec<_> = schema.fields().iter().map(|f| f.name().clone()).collect();
            return Err(Error::plan(
                format!("sink.partition_by[{i}]"),
                format!(
                    "column '{col}' is not in the query's output (columns: {})",
                    names.join(", ")
                ),
            ));
        }
    }
    if !spec.sink.partition_by.is_empty() && spec.sink.partition_by.len() == schema.fields().len() {
        return Err(Error::plan(
            "sink.partition_by",
            "every output column is a partition column; at least one must remain in the files",
        ));
    }
    Ok(physical)
}

/// Plans the user's transform, which may only query: DDL (`CREATE EXTERNAL TABLE`,
/// `DROP TABLE`, …), DML (`INSERT`, …), `COPY … TO` and statements (`SET`, …) are
/// refused with the statement named, before anything runs (a `COPY` would write
/// wherever its workers can, a `SET` would change the session). These are the steps
/// of DataFusion's `SessionContext::sql_with_options` with DDL, DML and statements
/// disallowed, with the plan looked at in between to name what was refused.
pub async fn plan_transform(ctx: &SessionContext, sql: &str) -> Result<DataFrame> {
    let plan = ctx
        .state()
        .create_logical_plan(sql)
        .await
        .map_err(|e| Error::plan("transform.sql", e))?;
    if let Some(what) = refused_statement(&plan) {
        return Err(Error::plan(
            "transform.sql",
            format!(
                "the transform may only query: {what} is not allowed (the job writes its result to [sink])"
            ),
        ));
    }
    let query_only = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    query_only.verify_plan(&plan).map_err(|e| {
        Error::plan(
            "transform.sql",
            format!("the transform may only query: {e}"),
        )
    })?;
    ctx.execute_logical_plan(plan)
        .await
        .map_err(|e| Error::plan("transform.sql", e))
}

/// The first node of `plan` (subqueries included) that is not part of a query, as the
/// user would name it.
fn refused_statement(plan: &LogicalPlan) -> Option<String> {
    let mut found = None;
    let _ = plan.apply_with_subqueries(|p| {
        found = match p {
            LogicalPlan::Copy(_) => Some("COPY ... TO".to_string()),
            LogicalPlan::Ddl(d) => Some(match d {
                DdlStatement::CreateExternalTable(_) => "CREATE EXTERNAL TABLE".to_string(),
                DdlStatement::CreateMemoryTable(_) => "CREATE TABLE".to_string(),
                DdlStatement::CreateView(_) => "CREATE VIEW".to_string(),
                DdlStatement::DropTable(_) => "DROP TABLE".to_string(),
                DdlStatement::DropView(_) => "DROP VIEW".to_string(),
                other => format!("DDL ({})", other.name()),
            }),
            LogicalPlan::Dml(d) => Some(match &d.op {
                WriteOp::Insert(_) => "INSERT".to_string(),
                WriteOp::Delete => "DELETE".to_string(),
                WriteOp::Update => "UPDATE".to_string(),
                WriteOp::Ctas => "CREATE TABLE ... AS".to_string(),
                WriteOp::Truncate => "TRUNCATE".to_string(),
                other => format!("DML ({})", other.name()),
            }),
            LogicalPlan::Statement(st) => Some(match st {
                Statement::SetVariable(_) => "SET".to_string(),
                Statement::ResetVariable(_) => "RESET".to_string(),
                other => format!("statement ({})", other.name()),
            }),
            _ => None,
        };
        Ok(if found.is_some() {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    found
}

/// Join types whose output includes build-side rows decided only after every probe
/// partition ran (unmatched, semi, anti, mark rows).
fn emits_build_rows_at_end(t: JoinType) -> bool {
    matches!(
        t,
        JoinType::Left
            | JoinType::LeftAnti
            | JoinType::LeftSemi
            | JoinType::LeftMark
            | JoinType::Full
    )
}

/// Makes joins correct when their partitions run as separate tasks. DataFusion's
/// collect-left joins share one build side, and one bitmap of matched build rows,
/// between all probe partitions of a process; the last partition to finish emits the
/// build-side rows. Here each probe partition is a task of its own, in its own process,
/// so no task would see every match. Such joins become partitioned hash joins (both
/// sides hash-exchanged on the keys, so each task owns its build rows); a nested-loop
/// join of that kind reads its probe side as one partition.
pub fn distribute_joins(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    let out = plan.transform_up(|p| {
        if let Some(j) = p.downcast_ref::<HashJoinExec>() {
            let n = j.right().output_partitioning().partition_count();
            if *j.partition_mode() != PartitionMode::CollectLeft
                || !emits_build_rows_at_end(*j.join_type())
                || n < 2
            {
                return Ok(Transformed::no(p));
            }
            let left_input = match j.left().downcast_ref::<CoalescePartitionsExec>() {
                Some(c) => Arc::clone(c.input()),
                None => Arc::clone(j.left()),
            };
            let (lkeys, rkeys): (Vec<_>, Vec<_>) = j
                .on()
                .iter()
                .map(|(l, r)| (Arc::clone(l), Arc::clone(r)))
                .unzip();
            let left: Arc<dyn ExecutionPlan> = Arc::new(RepartitionExec::try_new(
                left_input,
                Partitioning::Hash(lkeys, n),
            )?);
            let right = match j.right().output_partitioning() {
                Partitioning::Hash(e, m) if *m == n && *e == rkeys => Arc::clone(j.right()),
                _ => Arc::new(RepartitionExec::try_new(
                    Arc::clone(j.right()),
                    Partitioning::Hash(rkeys, n),
                )?) as Arc<dyn ExecutionPlan>,
            };
            let join = j
                .builder()
                .with_partition_mode(PartitionMode::Partitioned)
                .with_new_children(vec![left, right])?
                .recompute_properties()
                .reset_state()
                .build_exec()?;
            return Ok(Transformed::yes(join));
        }
        if let Some(j) = p.downcast_ref::<NestedLoopJoinExec>() {
            if emits_build_rows_at_end(*j.join_type())
                && j.right().output_partitioning().partition_count() > 1
            {
                let right: Arc<dyn ExecutionPlan> =
                    Arc::new(CoalescePartitionsExec::new(Arc::clone(j.right())));
                let left = Arc::clone(j.left());
                return Ok(Transformed::yes(replace_children_if_necessary(
                    p,
                    vec![left, right],
                )?));
            }
        }
        Ok(Transformed::no(p))
    })?;
    Ok(out.data)
}

struct Draft {
    plan: Arc<dyn ExecutionPlan>,
    tasks: usize,
    shuffle_partitions: Option<usize>,
    inputs: Vec<u32>,
}

/// Splits a physical plan into stages at its exchanges. A partitioned join whose
/// build side may turn out small at run time (at most `broadcast_max` bytes) gets a
/// broadcast alternative (`broadcast_alternative`).
pub fn split_into_stages(plan: Arc<dyn ExecutionPlan>, broadcast_max: u64) -> Result<PlannedJob> {
    let output_schema = plan.schema();
    let mut drafts = Vec::new();
    let root = split(plan, &mut drafts)?;
    let inputs = reader_stages(&root);
    drafts.push(Draft {
        tasks: root.output_partitioning().partition_count(),
        plan: root,
        shuffle_partitions: None,
        inputs,
    });
    let codec = ShuffleCodec::default();
    let encode = |id: usize, plan: &Arc<dyn ExecutionPlan>| {
        physical_plan_to_bytes_with_extension_codec(Arc::clone(plan), &codec)
            .map(|b| Arc::new(b.to_vec()))
            .map_err(|e| Error::plan("transform.sql", format!("cannot ship stage {id} plan: {e}")))
    };
    let mut alternatives = vec![];
    for id in 0..drafts.len() {
        let alt = match broadcast_alternative(&drafts, id, broadcast_max)? {
            Some(alt) => Some(Box::new(BroadcastPlan {
                plan: encode(id, &alt.plan)?,
                display: displayable(alt.plan.as_ref()).indent(false).to_string(),
                tasks: alt.tasks as u32,
                inputs: alt.inputs,
                build: alt.build,
                fused: alt.fused,
            })),
            None => None,
        };
        alternatives.push(alt);
    }
    let mut reduces: Vec<Option<Box<ReducePlan>>> = vec![None; drafts.len()];
    for (id, alternative) in alternatives.iter().enumerate() {
        // a join with a broadcast plan fuses its probe side instead
        let own = alternative.is_none();
        for alt in reduce_alternative(&drafts, id, broadcast_max, own)? {
            reduces[alt.probe as usize] = Some(Box::new(ReducePlan {
                plan: encode(alt.probe as usize, &alt.plan)?,
                display: displayable(alt.plan.as_ref()).indent(false).to_string(),
                inputs: reader_stages(&alt.plan),
                build: alt.build,
                join: id as u32,
            }));
        }
    }
    let mut pre_merges = vec![];
    for id in 0..drafts.len() {
        pre_merges.push(match pre_merge_alternative(&drafts, id)? {
            Some((plan, input)) => Some(Box::new(PreMergePlan {
                plan: encode(id, &plan)?,
                display: displayable(plan.as_ref()).indent(false).to_string(),
                input,
            })),
            None => None,
        });
    }
    let mut stages = Vec::with_capacity(drafts.len());
    let mut scan_stages = vec![];
    for ((((id, d), broadcast), pre_merge), reduce) in drafts
        .into_iter()
        .enumerate()
        .zip(alternatives)
        .zip(pre_merges)
        .zip(reduces)
    {
        if scans_sources(&d.plan) {
            scan_stages.push(id as u32);
        }
        let bytes = physical_plan_to_bytes_with_extension_codec(Arc::clone(&d.plan), &codec)
            .map_err(|e| {
                Error::plan("transform.sql", format!("cannot ship stage {id} plan: {e}"))
            })?;
        stages.push(StagePlan {
            id: id as u32,
            plan: Arc::new(bytes.to_vec()),
            display: displayable(d.plan.as_ref()).indent(false).to_string(),
            tasks: d.tasks as u32,
            shuffle_partitions: d.shuffle_partitions.map(|n| n as u32),
            join: stage_join(&d.plan),
            inputs: d.inputs,
            broadcast,
            pre_merge,
            reduce,
        });
    }
    Ok(PlannedJob {
        stages,
        scan_stages,
        output_schema,
    })
}

/// Whether `plan` (one stage) reads a source's files (not in-memory `VALUES`).
fn scans_sources(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.downcast_ref::<DataSourceExec>()
        .is_some_and(|ds| ds.data_source().downcast_ref::<FileScanConfig>().is_some())
        || plan.is::<TolerantScanExec>()
        || plan.children().into_iter().any(scans_sources)
}

fn split(plan: Arc<dyn ExecutionPlan>, drafts: &mut Vec<Draft>) -> Result<Arc<dyn ExecutionPlan>> {
    let children = plan
        .children()
        .into_iter()
        .map(|c| split(Arc::clone(c), drafts))
        .collect::<Result<Vec<_>>>()?;
    let plan = replace_children_if_necessary(plan, children)?;

    if let Some(rep) = plan.downcast_ref::<RepartitionExec>() {
        let n = rep.partitioning().partition_count();
        let input = Arc::clone(rep.input());
        let id = drafts.len() as u32;
        drafts.push(Draft {
            tasks: input.output_partitioning().partition_count(),
            inputs: reader_stages(&input),
            plan: Arc::clone(&plan),
            shuffle_partitions: Some(n),
        });
        return Ok(Arc::new(ShuffleReaderExec::new(id, plan.schema(), n, true)));
    }
    let merges = plan.is::<CoalescePartitionsExec>() || plan.is::<SortPreservingMergeExec>();
    if merges {
        let input = Arc::clone(plan.children()[0]);
        let n = input.output_partitioning().partition_count();
        if n > 1 {
            let id = drafts.len() as u32;
            drafts.push(Draft {
                tasks: n,
                inputs: reader_stages(&input),
                plan: Arc::clone(&input),
                shuffle_partitions: Some(1),
            });
            let reader: Arc<dyn ExecutionPlan> =
                Arc::new(ShuffleReaderExec::new(id, input.schema(), n, false));
            return Ok(replace_children_if_necessary(plan, vec![reader])?);
        }
    }
    Ok(plan)
}

/// A join that maps each row of its probe (right) side to output rows on its own,
/// reading its whole build side in every task: a collect-left hash join that emits
/// no build-side rows of its own (inner, right, right semi/anti/mark; the others were
/// made partitioned by `distribute_joins`). Dividing its probe side's rows between
/// tasks divides its output the same way, and it needs no partitioning of them.
fn probe_local_join(p: &Arc<dyn ExecutionPlan>) -> Option<&HashJoinExec> {
    let j = p.downcast_ref::<HashJoinExec>()?;
    (*j.partition_mode() == PartitionMode::CollectLeft && !emits_build_rows_at_end(*j.join_type()))
        .then_some(j)
}

/// The stage's one partitioned hash join, when every other join of the stage is a
/// probe-local join (`probe_local_join`) that reads it on its probe side, and each
/// side of it reads one hash-shuffled input: which sides a skew split may divide
/// (`StageJoin`).
fn stage_join(plan: &Arc<dyn ExecutionPlan>) -> Option<StageJoin> {
    let mut joins = vec![];
    let mut other_joins = 0;
    // `build`: under the build side of a probe-local join (which every task reads
    // whole, so a partitioned join there would run all its partitions in each task)
    fn walk(
        p: &Arc<dyn ExecutionPlan>,
        build: bool,
        joins: &mut Vec<Arc<dyn ExecutionPlan>>,
        others: &mut u32,
    ) {
        if let Some(j) = probe_local_join(p) {
            walk(j.left(), true, joins, others);
            walk(j.right(), build, joins, others);
            return;
        }
        match p.downcast_ref::<HashJoinExec>() {
            Some(j) if *j.partition_mode() == PartitionMode::Partitioned && !build => {
                joins.push(Arc::clone(p))
            }
            Some(_) => *others += 1,
            None if p.name().contains("Join") => *others += 1,
            None => {}
        }
        for c in p.children() {
            walk(c, build, joins, others);
        }
    }
    walk(plan, false, &mut joins, &mut other_joins);
    let [join] = joins.as_slice() else {
        return None;
    };
    let j = join.downcast_ref::<HashJoinExec>()?;
    if other_joins > 0 {
        return None;
    }
    let side = |child: &Arc<dyn ExecutionPlan>| -> Option<(u32, bool)> {
        let reader = row_local_reader(child)?;
        reader.hash.then_some((reader.stage_id, true))
    };
    let (left, left_local) = side(j.left())?;
    let (right, right_local) = side(j.right())?;
    if left == right {
        return None;
    }
    // DataFusion builds on the left: a task holding part of the left side and all of
    // the right's matching partition emits each left row's matches and non-matches
    // once; the right side may be divided only where no left row is emitted for lack
    // of a match (and the other way round).
    let t = *j.join_type();
    Some(StageJoin {
        join_type: format!("{t:?}"),
        left,
        right,
        split_left: left_local
            && matches!(
                t,
                JoinType::Inner
                    | JoinType::Left
                    | JoinType::LeftSemi
                    | JoinType::LeftAnti
                    | JoinType::LeftMark
            ),
        split_right: right_local
            && matches!(
                t,
                JoinType::Inner
                    | JoinType::Right
                    | JoinType::RightSemi
                    | JoinType::RightAnti
                    | JoinType::RightMark
            ),
    })
}

/// Whether stage `plan`'s output may turn out at most `limit` bytes at run time: not
/// when DataFusion knows it larger (an exact size above the limit, or an estimate 8x
/// above it). A probe side waits for such a stage only then (`optimizer::broadcast`).
fn may_be_small(plan: &Arc<dyn ExecutionPlan>, limit: u64) -> Result<bool> {
    use datafusion::common::stats::Precision;
    let stats = datafusion::physical_plan::StatisticsContext::new().compute(
        plan.as_ref(),
        &datafusion::physical_plan::StatisticsArgs::new(),
    )?;
    let limit = limit as usize;
    Ok(match stats.total_byte_size {
        Precision::Exact(b) => b <= limit,
        Precision::Inexact(b) => b <= limit.saturating_mul(8),
        Precision::Absent => true,
    })
}

/// A stage's plan as a broadcast join, and what it reads.
struct Alternative {
    plan: Arc<dyn ExecutionPlan>,
    tasks: usize,
    inputs: Vec<u32>,
    build: u32,
    fused: u32,
}

/// Stage `id` planned as a broadcast join, for the case its join's build side turns
/// out at most `broadcast_max` bytes at run time (`optimizer::broadcast`): the build
/// side's whole output is read by every task (a collect-left hash join), and the
/// probe side's map stage is fused into this one (its input runs here, unshuffled).
///
/// Only when the swap keeps every row's result: the join emits no build-side rows of
/// its own (inner, right, right semi/anti/mark), DataFusion did not already know the
/// build side to be larger (an exact estimate above the limit, or an inexact one 8x
/// above), the probe side's stage feeds nothing else, and the operators above the
/// join in this stage work on any partitioning (projections, filters, partial
/// aggregates, probe-local joins reading it on their probe side, the stage's own
/// exchange).
fn broadcast_alternative(
    drafts: &[Draft],
    id: usize,
    broadcast_max: u64,
) -> Result<Option<Alternative>> {
    let d = &drafts[id];
    let Some(j) = stage_join(&d.plan) else {
        return Ok(None);
    };
    let probe_only = matches!(
        j.join_type.as_str(),
        "Inner" | "Right" | "RightSemi" | "RightAnti" | "RightMark"
    );
    if broadcast_max == 0 || !probe_only {
        return Ok(None);
    }
    let (build, fused) = (j.left as usize, j.right as usize);
    let Some(fused_input) = drafts
        .get(fused)
        .and_then(|f| f.plan.downcast_ref::<RepartitionExec>())
        .map(|r| Arc::clone(r.input()))
    else {
        return Ok(None);
    };
    if drafts
        .iter()
        .filter(|x| x.inputs.contains(&j.right))
        .count()
        != 1
    {
        return Ok(None);
    }
    if !may_be_small(&drafts[build].plan, broadcast_max)? {
        return Ok(None);
    }
    if !partition_agnostic_above_join(&d.plan, true) {
        return Ok(None);
    }
    let right_stage = j.right;
    let plan = Arc::clone(&d.plan)
        .transform_down(|p| {
            // the stage's partitioned join (probe-local joins above it stay)
            let Some(hj) = p
                .downcast_ref::<HashJoinExec>()
                .filter(|j| *j.partition_mode() == PartitionMode::Partitioned)
            else {
                return Ok(Transformed::no(p));
            };
            let left: Arc<dyn ExecutionPlan> =
                Arc::new(CoalescePartitionsExec::new(Arc::clone(hj.left())));
            let right = Arc::clone(hj.right())
                .transform_up(|c| {
                    Ok(match c.downcast_ref::<ShuffleReaderExec>() {
                        Some(r) if r.stage_id == right_stage => {
                            Transformed::yes(Arc::clone(&fused_input))
                        }
                        _ => Transformed::no(c),
                    })
                })?
                .data;
            let join = hj
                .builder()
                .with_partition_mode(PartitionMode::CollectLeft)
                .with_new_children(vec![left, right])?
                .recompute_properties()
                .reset_state()
                .build_exec()?;
            Ok(Transformed::new(join, true, TreeNodeRecursion::Jump))
        })?
        .data;
    let tasks = match plan.downcast_ref::<RepartitionExec>() {
        Some(r) => r.input().output_partitioning().partition_count(),
        None => plan.output_partitioning().partition_count(),
    };
    let inputs = reader_stages(&plan);
    Ok(Some(Alternative {
        plan,
        tasks,
        inputs,
        build: j.left,
        fused: j.right,
    }))
}

/// A map stage that stage `id`'s join reads, filtered by a small stage's keys.
struct Reduction {
    plan: Arc<dyn ExecutionPlan>,
    probe: u32,
    build: u32,
}

/// The map stages stage `id`'s partitioned join reads, as filtered plans for the case
/// a small stage's output (at most `broadcast_max` bytes at run time,
/// `optimizer::broadcast`) decides which of their rows can produce anything: before
/// its hash exchange, such a stage keeps only the rows whose join keys occur in that
/// output (a collect-left `RightSemi` join against it), so it shuffles only rows that
/// can match. Anchor: the semi-join reduction of distributed databases, and the
/// runtime filters Spark (`InjectRuntimeFilter`) and DataFusion (dynamic filters) push
/// from a join's build side into its probe side's scan; here the filter is exact, the
/// build side being small. Two cases:
/// - the partitioned join's probe side, filtered by its own build side (unless the
///   case below filters it already), when its
///   unmatched probe rows produce nothing: inner, left, left semi/anti/mark (no
///   broadcast alternative of its own; keys compared with `NULL` matching nothing, no
///   null-aware `NOT IN`, where one `NULL` probe key empties the result);
/// - both its sides, filtered by the build side of a probe-local inner or right-semi
///   join right above it whose keys are the partitioned join's keys (TPC-H Q18: the
///   57 order keys of the `IN` subquery filter both orders and lineitem, instead of
///   semi-joining the whole orders ⋈ lineitem join).
///
/// Only when both sides are read straight from their shuffles, the filtered stage
/// feeds nothing else, and the small stage is not known to be larger.
fn reduce_alternative(
    drafts: &[Draft],
    id: usize,
    broadcast_max: u64,
    own: bool,
) -> Result<Vec<Reduction>> {
    use datafusion::common::NullEquality;
    let d = &drafts[id];
    let Some(sj) = stage_join(&d.plan) else {
        return Ok(vec![]);
    };
    if broadcast_max == 0 {
        return Ok(vec![]);
    }
    // the partitioned join, and the probe-local join right above it (if any)
    fn find<'a>(
        p: &'a Arc<dyn ExecutionPlan>,
        above: Option<&'a HashJoinExec>,
    ) -> Option<(&'a HashJoinExec, Option<&'a HashJoinExec>)> {
        match p.downcast_ref::<HashJoinExec>() {
            Some(j) if *j.partition_mode() == PartitionMode::Partitioned => Some((j, above)),
            Some(j) if probe_local_join(p).is_some() => find(j.right(), Some(j)),
            _ => p.children().into_iter().find_map(|c| find(c, None)),
        }
    }
    let Some((join, above)) = find(&d.plan, None) else {
        return Ok(vec![]);
    };
    let reader = |p: &Arc<dyn ExecutionPlan>, stage: u32| {
        p.downcast_ref::<ShuffleReaderExec>()
            .is_some_and(|r| r.stage_id == stage && r.hash)
    };
    if join.null_equality() != NullEquality::NullEqualsNothing
        || !reader(join.left(), sj.left)
        || !reader(join.right(), sj.right)
    {
        return Ok(vec![]);
    }
    let small_enough = |stage: usize| may_be_small(&drafts[stage].plan, broadcast_max);
    // `stage` (one of the join's sides) filtered by `build` (read whole, as the
    // `build_keys` of its rows) on `keys` (over `stage`'s output)
    let filtered = |stage: u32,
                    build: Arc<dyn ExecutionPlan>,
                    build_keys: Vec<Arc<dyn PhysicalExpr>>,
                    keys: Vec<Arc<dyn PhysicalExpr>>|
     -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(exchange) = drafts
            .get(stage as usize)
            .and_then(|p| p.plan.downcast_ref::<RepartitionExec>())
        else {
            return Ok(None);
        };
        if drafts.iter().filter(|x| x.inputs.contains(&stage)).count() != 1 {
            return Ok(None);
        }
        let semi = datafusion::physical_plan::joins::HashJoinExecBuilder::new(
            build,
            Arc::clone(exchange.input()),
            build_keys.into_iter().zip(keys).collect(),
            JoinType::RightSemi,
        )
        .with_partition_mode(PartitionMode::CollectLeft)
        .with_null_equality(NullEquality::NullEqualsNothing)
        .build_exec()?;
        Ok(Some(Arc::new(RepartitionExec::try_new(
            semi,
            exchange.partitioning().clone(),
        )?)))
    };
    let mut out: Vec<Reduction> = vec![];
    'above: {
        let Some(above) = above.filter(|a| {
            matches!(a.join_type(), JoinType::Inner | JoinType::RightSemi)
                && a.null_equality() == NullEquality::NullEqualsNothing
        }) else {
            break 'above;
        };
        // the small stage the join above reads whole
        let small = match above.left().downcast_ref::<CoalescePartitionsExec>() {
            Some(c) => c.input().downcast_ref::<ShuffleReaderExec>(),
            None => above.left().downcast_ref::<ShuffleReaderExec>(),
        };
        let Some(small) = small.map(|r| r.stage_id) else {
            break 'above;
        };
        if !small_enough(small as usize)? || !sj.join_type.eq("Inner") {
            break 'above;
        }
        // each key of the join above, a column of the partitioned join's output, as the
        // join's key on each side
        let left_len = join.left().schema().fields().len();
        let (mut left_keys, mut right_keys, mut build_keys) = (vec![], vec![], vec![]);
        for (b, k) in above.on() {
            let Some(c) = k.downcast_ref::<datafusion::physical_expr::expressions::Column>() else {
                break 'above;
            };
            let col = match join.projection.as_ref() {
                Some(p) => p.get(c.index()).copied(),
                None => Some(c.index()),
            };
            let pair = col.and_then(|col| {
                join.on().iter().find(|(l, r)| {
                    let is = |e: &Arc<dyn PhysicalExpr>, i: usize| {
                        e.downcast_ref::<datafusion::physical_expr::expressions::Column>()
                            .is_some_and(|c| c.index() == i)
                    };
                    if col < left_len {
                        is(l, col)
                    } else {
                        is(r, col - left_len)
                    }
                })
            });
            let Some((l, r)) = pair else {
                break 'above;
            };
            left_keys.push(Arc::clone(l));
            right_keys.push(Arc::clone(r));
            build_keys.push(Arc::clone(b));
        }
        for (stage, keys) in [(sj.left, left_keys), (sj.right, right_keys)] {
            if out.iter().any(|r| r.probe == stage) {
                continue;
            }
            if let Some(plan) = filtered(stage, Arc::clone(above.left()), build_keys.clone(), keys)?
            {
                out.push(Reduction {
                    plan,
                    probe: stage,
                    build: small,
                });
            }
        }
    }
    let probe_rows_unused = matches!(
        sj.join_type.as_str(),
        "Inner" | "Left" | "LeftSemi" | "LeftAnti" | "LeftMark"
    );
    if own && probe_rows_unused && !join.null_aware && small_enough(sj.left as usize)? {
        let (build_keys, keys) = join
            .on()
            .iter()
            .map(|(l, r)| (Arc::clone(l), Arc::clone(r)))
            .unzip();
        let build: Arc<dyn ExecutionPlan> =
            Arc::new(CoalescePartitionsExec::new(Arc::clone(join.left())));
        let free = !out.iter().any(|r: &Reduction| r.probe == sj.right);
        if let Some(plan) = free
            .then(|| filtered(sj.right, build, build_keys, keys))
            .transpose()?
            .flatten()
        {
            out.push(Reduction {
                plan,
                probe: sj.right,
                build: sj.left,
            });
        }
    }
    Ok(out)
}

/// The pre-merge step of stage `id`, for the case a partition of its aggregation's
/// input turns out skewed (`optimizer::skew`), and the input it pre-merges: when the
/// stage holds exactly one aggregate that merges partial states (`FinalPartitioned`),
/// reading (through row-by-row operators only) a hash-shuffled input that no other
/// operator of the stage reads, the step is that aggregate in DataFusion's
/// `PartialReduce` mode (partial states in, merged partial states out) under the
/// input's own hash exchange: its output is partitioned exactly as the input's was.
fn pre_merge_alternative(
    drafts: &[Draft],
    id: usize,
) -> Result<Option<(Arc<dyn ExecutionPlan>, u32)>> {
    use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
    fn walk(p: &Arc<dyn ExecutionPlan>, aggs: &mut Vec<Arc<dyn ExecutionPlan>>) {
        if p.downcast_ref::<AggregateExec>()
            .is_some_and(|a| *a.mode() == AggregateMode::FinalPartitioned)
        {
            aggs.push(Arc::clone(p));
        }
        for c in p.children() {
            walk(c, aggs);
        }
    }
    let d = &drafts[id];
    let mut aggs = vec![];
    walk(&d.plan, &mut aggs);
    let [agg] = aggs.as_slice() else {
        return Ok(None);
    };
    let agg = agg
        .downcast_ref::<AggregateExec>()
        .expect("collected as an AggregateExec");
    let Some(reader) = row_local_reader(agg.input()).filter(|r| r.hash) else {
        return Ok(None);
    };
    let input = reader.stage_id;
    let readers_of_input = {
        fn count(p: &Arc<dyn ExecutionPlan>, stage: u32) -> usize {
            let here = p
                .downcast_ref::<ShuffleReaderExec>()
                .is_some_and(|r| r.stage_id == stage) as usize;
            here + p
                .children()
                .into_iter()
                .map(|c| count(c, stage))
                .sum::<usize>()
        }
        count(&d.plan, input)
    };
    let Some(rep) = drafts
        .get(input as usize)
        .and_then(|x| x.plan.downcast_ref::<RepartitionExec>())
    else {
        return Ok(None);
    };
    if readers_of_input != 1
        || agg.group_expr().is_empty()
        || !matches!(rep.partitioning(), Partitioning::Hash(..))
    {
        return Ok(None);
    }
    let reduce = AggregateExec::try_new(
        AggregateMode::PartialReduce,
        agg.group_expr().clone(),
        agg.aggr_expr().to_vec(),
        agg.filter_expr().to_vec(),
        Arc::clone(agg.input()),
        agg.input_schema(),
    )?;
    // the merged states must be what the input's map tasks wrote, column for column
    if reduce.schema().fields() != rep.schema().fields() {
        return Ok(None);
    }
    let plan = RepartitionExec::try_new(Arc::new(reduce), rep.partitioning().clone())?;
    Ok(Some((Arc::new(plan), input)))
}

/// Whether every operator between `plan` (a stage's root) and its hash join works on
/// any partitioning of its input: a broadcast join's output is not hash-partitioned
/// on the join keys as a partitioned join's is.
fn partition_agnostic_above_join(plan: &Arc<dyn ExecutionPlan>, root: bool) -> bool {
    if let Some(j) = probe_local_join(plan) {
        // row by row on its probe side, wherever its rows are
        return partition_agnostic_above_join(j.right(), false);
    }
    if plan.is::<HashJoinExec>() {
        return true;
    }
    let agnostic = match plan.name() {
        "ProjectionExec" | "FilterExec" | "CoalesceBatchesExec" | "CooperativeExec" => true,
        "RepartitionExec" => root,
        "AggregateExec" => plan
            .downcast_ref::<datafusion::physical_plan::aggregates::AggregateExec>()
            .is_some_and(|a| {
                *a.mode() == datafusion::physical_plan::aggregates::AggregateMode::Partial
            }),
        _ => false,
    };
    match plan.children().as_slice() {
        [child] if agnostic => partition_agnostic_above_join(child, false),
        _ => false,
    }
}

/// The shuffle reader under `plan` when only row-by-row operators (projections,
/// filters, batch coalescing) lie between them: dividing that reader's rows between
/// tasks divides `plan`'s output the same way.
fn row_local_reader(plan: &Arc<dyn ExecutionPlan>) -> Option<&ShuffleReaderExec> {
    if let Some(r) = plan.downcast_ref::<ShuffleReaderExec>() {
        return Some(r);
    }
    let row_local = matches!(
        plan.name(),
        "ProjectionExec" | "FilterExec" | "CoalesceBatchesExec" | "CooperativeExec"
    );
    match plan.children().as_slice() {
        [child] if row_local => row_local_reader(child),
        _ => None,
    }
}

/// Stage ids read by the `ShuffleReaderExec` leaves of `plan` (within one stage).
fn reader_stages(plan: &Arc<dyn ExecutionPlan>) -> Vec<u32> {
    let mut out = Vec::new();
    fn walk(p: &Arc<dyn ExecutionPlan>, out: &mut Vec<u32>) {
        if let Some(r) = p.downcast_ref::<ShuffleReaderExec>() {
            if !out.contains(&r.stage_id) {
                out.push(r.stage_id);
            }
        }
        for c in p.children() {
            walk(c, out);
        }
    }
    walk(plan, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::record_batch::RecordBatch;

    fn write_parquet(dir: &std::path::Path, files: usize) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("v", DataType::Utf8, false),
        ]));
        for f in 0..files {
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from_iter_values((0..100).map(|i| i % 7))),
                    Arc::new(StringArray::from_iter_values(
                        (0..100).map(|i| format!("v{i}")),
                    )),
                ],
            )
            .unwrap();
            let file = std::fs::File::create(dir.join(format!("part-{f}.parquet"))).unwrap();
            let mut w = parquet::arrow::ArrowWriter::try_new(file, schema.clone(), None).unwrap();
            w.write(&batch).unwrap();
            w.close().unwrap();
        }
    }

    fn spec(dir: &std::path::Path, sql: &str) -> PipelineSpec {
        let text = format!(
            r#"
[job]
name = "t"
[[sources]]
name = "t"
format = "parquet"
path = "{}"
[transform]
sql = "{sql}"
[sink]
format = "parquet"
path = "{}/out"
"#,
            dir.display(),
            dir.display()
        );
        PipelineSpec::parse(&text, "t.toml")
            .unwrap()
            .normalize(dir, "t.toml")
            .unwrap()
    }

    #[tokio::test]
    async fn group_by_is_split_at_the_hash_exchange() {
        let dir = tempfile::tempdir().unwrap();
        write_parquet(dir.path(), 4);
        let s = spec(dir.path(), "SELECT k, count(*) AS n FROM t GROUP BY k");
        let job = plan_job(&s, 4).await.unwrap();
        assert_eq!(
            job.stages.len(),
            2,
            "{:#?}",
            job.stages.iter().map(|s| &s.display).collect::<Vec<_>>()
        );
        assert_eq!(job.stages[0].shuffle_partitions, Some(4));
        assert_eq!(job.stages[1].inputs, vec![0]);
        assert_eq!(job.scan_stages, vec![0], "only the map stage reads files");
        assert_eq!(job.stages[1].tasks, 4);
        assert!(job.stages[1].display.contains("ShuffleReaderExec"));
        // its aggregation has a pre-merge step for skewed partitions: the merge of
        // partial states into partial states, shuffled as stage 0 was
        let pm = job.stages[1].pre_merge.as_ref().expect("a pre-merge plan");
        assert_eq!(pm.input, 0);
        assert!(
            pm.display.starts_with("RepartitionExec: partitioning=Hash"),
            "{}",
            pm.display
        );
        assert!(pm.display.contains("mode=PartialReduce"), "{}", pm.display);
        assert!(job.stages[0].pre_merge.is_none());
    }

    /// Issue 12: the probe side of a partitioned semi or anti join gets a filtered
    /// plan (rows whose keys the build side lacks dropped before the shuffle); a
    /// null-aware `NOT IN` gets none (one NULL probe key empties its result).
    #[tokio::test]
    async fn a_semi_or_anti_joins_probe_side_may_be_filtered_by_the_build_sides_keys() {
        let dir = tempfile::tempdir().unwrap();
        // CSV: no statistics, so the joins are planned partitioned
        for t in ["a", "b"] {
            std::fs::create_dir_all(dir.path().join(t)).unwrap();
            for f in 0..4 {
                let rows: String = (0..100).map(|i| format!("{},v{i}\n", i % 7)).collect();
                std::fs::write(
                    dir.path().join(t).join(format!("part-{f}.csv")),
                    format!("k,v\n{rows}"),
                )
                .unwrap();
            }
        }
        let plan = |sql: String| {
            let text = format!(
                r#"
[job]
name = "t"
[[sources]]
name = "a"
format = "csv"
path = "{d}/a"
[[sources]]
name = "b"
format = "csv"
path = "{d}/b"
[transform]
sql = "{sql}"
[sink]
format = "parquet"
path = "{d}/out"
"#,
                d = dir.path().display()
            );
            let s = PipelineSpec::parse(&text, "t.toml")
                .unwrap()
                .normalize(dir.path(), "t.toml")
                .unwrap();
            async move { plan_job(&s, 4).await.unwrap() }
        };
        for sql in [
            "SELECT v FROM a WHERE k < 3 AND EXISTS (SELECT 1 FROM b WHERE b.k = a.k)",
            "SELECT v FROM a WHERE k < 3 AND NOT EXISTS (SELECT 1 FROM b WHERE b.k = a.k)",
        ] {
            let job = plan(sql.to_string()).await;
            let shown: Vec<_> = job.stages.iter().map(|s| &s.display).collect();
            let (id, j) = job
                .stages
                .iter()
                .enumerate()
                .find_map(|(i, s)| s.join.as_ref().map(|j| (i, j)))
                .unwrap_or_else(|| panic!("{sql}: no partitioned join in {shown:#?}"));
            assert!(j.join_type.starts_with("Left"), "{sql}: {j:?}");
            let probe = &job.stages[j.right as usize];
            let r = probe
                .reduce
                .as_ref()
                .unwrap_or_else(|| panic!("{sql}: {shown:#?}"));
            assert_eq!((r.build, r.join), (j.left, id as u32), "{sql}");
            assert!(r.inputs.contains(&j.left), "{sql}: {:?}", r.inputs);
            assert!(
                r.display.starts_with("RepartitionExec: partitioning=Hash")
                    && r.display.contains("mode=CollectLeft, join_type=RightSemi"),
                "{sql}: {}",
                r.display
            );
            assert!(job.stages[j.left as usize].reduce.is_none());
        }
        let job = plan("SELECT v FROM a WHERE k NOT IN (SELECT k FROM b)".to_string()).await;
        assert!(
            job.stages.iter().all(|s| s.reduce.is_none()),
            "null-aware anti join: {:#?}",
            job.stages.iter().map(|s| &s.display).collect::<Vec<_>>()
        );
    }

    /// Issue 12: `count(DISTINCT)` next to `count(*)` plans as two group-bys (no
    /// per-group distinct sets in any stage), the dedup `GROUP BY k, v` first.
    #[tokio::test]
    async fn count_distinct_with_count_plans_as_two_group_bys() {
        let dir = tempfile::tempdir().unwrap();
        write_parquet(dir.path(), 4);
        for sql in [
            "SELECT k, count(DISTINCT v) AS n FROM t GROUP BY k",
            "SELECT k, count(DISTINCT v) AS n, count(*) AS c FROM t GROUP BY k",
        ] {
            let job = plan_job(&spec(dir.path(), sql), 4).await.unwrap();
            let all: Vec<_> = job.stages.iter().map(|s| s.display.as_str()).collect();
            let text = all.join("\n");
            assert!(!text.contains("DISTINCT"), "{sql}\n{text}");
            let dedup = text
                .lines()
                .position(|l| l.contains("AggregateExec: mode=Partial, gby=[k@0 as k, v@1"));
            // one exchange, and the per-key aggregate in one step over it
            let per_key = text
                .lines()
                .position(|l| l.contains("AggregateExec: mode=SinglePartitioned, gby=[k@0 as k]"));
            assert!(dedup.is_some() && per_key.is_some(), "{sql}\n{text}");
            assert_eq!(job.stages.len(), 2, "{sql}\n{text}");
            // a skewed key's deduplication can be pre-merged: the dedup aggregate in
            // PartialReduce mode, shuffled on the key alone as stage 0 is
            let pm = job.stages[1].pre_merge.as_ref().expect("a pre-merge plan");
            assert!(
                pm.display.contains("mode=PartialReduce, gby=[k@0 as k, ")
                    && pm
                        .display
                        .starts_with("RepartitionExec: partitioning=Hash([k@0], 4)"),
                "{sql}\n{}",
                pm.display
            );
        }
    }

    #[tokio::test]
    async fn order_by_limit_merges_into_a_single_sink_task() {
        let dir = tempfile::tempdir().unwrap();
        write_parquet(dir.path(), 4);
        let s = spec(dir.path(), "SELECT v FROM t ORDER BY v LIMIT 3");
        let job = plan_job(&s, 4).await.unwrap();
        let last = job.stages.last().unwrap();
        assert_eq!(last.tasks, 1);
        assert!(
            last.display.contains("SortPreservingMergeExec"),
            "{}",
            last.display
        );
    }

    #[tokio::test]
    async fn sql_errors_name_the_transform_key() {
        let dir = tempfile::tempdir().unwrap();
        write_parquet(dir.path(), 1);
        let e = plan_job(&spec(dir.path(), "SELECT nope FROM t"), 2)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("transform.sql"), "{e}");
        let e = plan_job(&spec(dir.path(), "SELECT * FROM missing"), 2)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        let e = plan_job(&spec(dir.path(), "SELEC k FROM t"), 2)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("transform.sql"), "{e}");
    }

    #[tokio::test]
    async fn a_transform_that_does_more_than_query_is_refused_with_the_statement_named() {
        let dir = tempfile::tempdir().unwrap();
        write_parquet(dir.path(), 1);
        let before = listing(dir.path());
        let copied = dir.path().join("copied.csv");
        let table_dir = dir.path().join("ext");
        let cases = [
            (
                format!("COPY (SELECT 1) TO '{}'", copied.display()),
                "COPY ... TO",
            ),
            (
                format!("COPY (SELECT k, v FROM t) TO '{}'", copied.display()),
                "COPY ... TO",
            ),
            (
                format!("EXPLAIN COPY (SELECT k FROM t) TO '{}'", copied.display()),
                "COPY ... TO",
            ),
            (
                format!(
                    "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '{}'",
                    table_dir.display()
                ),
                "CREATE EXTERNAL TABLE",
            ),
            ("INSERT INTO t SELECT k, v FROM t".to_string(), "INSERT"),
            ("SET datafusion.execution.batch_size = 1".to_string(), "SET"),
            ("DROP TABLE x".to_string(), "DROP TABLE"),
            ("DROP TABLE t".to_string(), "DROP TABLE"),
            (
                "CREATE VIEW w AS SELECT k FROM t".to_string(),
                "CREATE VIEW",
            ),
        ];
        for (sql, what) in cases {
            let e = plan_job(&spec(dir.path(), &sql), 2).await.unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains("[transform.sql]")
                    && msg.contains("the transform may only query")
                    && msg.contains(&format!("{what} is not allowed")),
                "{sql}: {msg}"
            );
        }
        assert!(!copied.exists(), "COPY wrote {}", copied.display());
        assert!(!table_dir.exists());
        assert_eq!(listing(dir.path()), before, "nothing may be written");
    }

    #[tokio::test]
    async fn a_refused_statement_leaves_the_session_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        write_parquet(dir.path(), 1);
        let s = spec(dir.path(), "SELECT k FROM t");
        let ctx = context_for(&s, 2).await.unwrap();
        let batch_size = ctx.state().config().batch_size();
        for sql in [
            "SET datafusion.execution.batch_size = 1",
            "DROP TABLE t",
            "CREATE VIEW w AS SELECT k FROM t",
        ] {
            assert!(plan_transform(&ctx, sql).await.is_err(), "{sql}");
        }
        assert_eq!(ctx.state().config().batch_size(), batch_size);
        assert!(ctx.table_exist("t").unwrap());
        assert!(!ctx.table_exist("w").unwrap());
        // a query still plans
        let n = plan_transform(&ctx, "SELECT count(*) FROM t")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(n[0].num_rows(), 1);
    }

    /// Every file and directory under `dir`, relative, sorted.
    fn listing(dir: &std::path::Path) -> Vec<String> {
        let mut out = vec![];
        let mut todo = vec![dir.to_path_buf()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
                if p.is_dir() {
                    todo.push(p);
                }
            }
        }
        out.sort();
        out
    }
}
