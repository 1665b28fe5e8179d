//! Distinct aggregates as two group-bys, for the cases DataFusion's own rule leaves.
//!
//! DataFusion's `SingleDistinctToGroupBy` turns `SELECT g, count(DISTINCT d), sum(x)
//! … GROUP BY g` into `GROUP BY g, d` (deduplicating, with partial sums) followed by
//! `count(d') … GROUP BY g`, but only while every other aggregate is `sum`, `min` or
//! `max`. One `count(*)` or `avg(x)` next to the distinct aggregate leaves it to
//! DataFusion's distinct accumulators: a hash set per group, kept whole in the partial
//! aggregate (which cannot spill), shipped through the shuffle as one list per group
//! and merged again in the final one. For strings (no specialised accumulator) that is
//! an `Accumulator` object and a set per group: issue 12 measured 53 s and 17.7 GB for
//! 1M events in 200k sessions, against 0.5 s for the two group-bys.
//!
//! Rule (Spark's `RewriteDistinctAggregates` and DuckDB always rewrite; so does this):
//! - trigger: an aggregate whose distinct aggregates (`count`, `sum`, `avg`, `min`,
//!   `max`) each take a single argument that is not a group key, without `FILTER`
//!   or `ORDER BY`, and whose other aggregates are `count`, `sum`, `min`, `max` or
//!   `avg` over a non-decimal number (no grouping sets). Anything else (other
//!   functions) is left as it was: correct, with per-group sets.
//! - action: an inner aggregate grouped by the group keys and the distinct argument
//!   computes the other aggregates' partial values (`count` → count, `avg` → sum and
//!   count); the outer aggregate, grouped by the keys, runs the distinct aggregates
//!   without `DISTINCT` over the deduplicated argument and merges the partials
//!   (`count` → sum, empty → 0; `avg` → sum / count). NULLs of the argument form one
//!   inner group that the distinct aggregates skip, as `count(DISTINCT)` does.
//! - several distinct arguments (Spark's `Expand`, here DataFusion's grouping sets):
//!   the inner aggregate groups by `GROUPING SETS ((keys, d1), (keys, d2), …)`, one
//!   deduplicating set per argument; each outer distinct aggregate reads its own
//!   set's rows (`FILTER` on the grouping id), and the other aggregates merge the
//!   first set's partials. 1M events, `count(DISTINCT kind), count(DISTINCT
//!   user_id)` per session: 54 s and 17 GB peak before (per-group sets), see
//!   BENCHMARKS.md for after.
//! - no statistics threshold: the rewrite costs one more hash aggregation over at
//!   most as many rows as the input, and both aggregations hold plain group keys
//!   that spill under the memory pool; the per-group sets it replaces cost more
//!   whenever groups are many (the case that hurts), and little less when they are
//!   few. DataFusion's rule applies the same way, unconditionally.
//!
//! The two group-bys share one exchange (`share_exchange`): DataFusion hash-partitions
//! the dedup aggregate on (keys, d) and the outer one again on the keys; partitioned
//! on the keys alone, each task holds whole groups for both, and the second shuffle
//! (and its stage barrier) goes.

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::Transformed;
use datafusion::common::{DFSchema, Result};
use datafusion::logical_expr::builder::project;
use datafusion::logical_expr::expr::{AggregateFunction, AggregateFunctionParams};
use datafusion::logical_expr::{
    cast, col, lit, when, Aggregate, AggregateUDF, Expr, ExprSchemable, LogicalPlan,
};
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::{
    replace_children_if_necessary, ExecutionPlan, Partitioning, PhysicalExpr,
};
use std::sync::Arc;

/// The rule (see the module comment).
#[derive(Debug, Default)]
pub struct DistinctToGroupBy;

/// The inner aggregate's deduplicated argument.
const DISTINCT_ALIAS: &str = "__distinct_arg";

fn is_distinct_func(name: &str) -> bool {
    matches!(name, "count" | "sum" | "avg" | "min" | "max")
}

/// How a non-distinct aggregate splits into an inner (partial) and an outer (merge)
/// part; `None` if it does not.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Split {
    /// sum, min, max: the same function twice
    Same,
    /// count: count, then sum (0 for no rows)
    Count,
    /// avg over a non-decimal number: sum and count, then their quotient
    Avg,
}

fn split_of(f: &AggregateFunction, input: &DFSchema, out_type: &DataType) -> Option<Split> {
    match f.func.name() {
        "sum" | "min" | "max" => Some(Split::Same),
        "count" => Some(Split::Count),
        "avg" if f.params.args.len() == 1 && *out_type == DataType::Float64 => {
            let t = f.params.args[0].get_type(input).ok()?;
            (t.is_integer() || t.is_floating()).then_some(Split::Avg)
        }
        _ => None,
    }
}

/// What one aggregate of a qualifying `Aggregate` becomes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Part {
    /// a distinct aggregate over distinct argument number `.0`
    Distinct(usize),
    /// a non-distinct aggregate, split so
    Split(Split),
}

/// The distinct arguments (in order of appearance) and each aggregate's part, if
/// `agg` qualifies.
fn qualifies(agg: &Aggregate) -> Option<(Vec<Expr>, Vec<Part>)> {
    if matches!(agg.group_expr.first(), Some(Expr::GroupingSet(_))) {
        return None;
    }
    let input = agg.input.schema();
    let groups = agg.group_expr.len();
    let mut args: Vec<Expr> = vec![];
    let mut parts = Vec::with_capacity(agg.aggr_expr.len());
    for (i, e) in agg.aggr_expr.iter().enumerate() {
        let Expr::AggregateFunction(f) = e else {
            return None;
        };
        let p = &f.params;
        if p.filter.is_some() || !p.order_by.is_empty() {
            return None;
        }
        if p.distinct {
            if p.args.len() != 1 || !is_distinct_func(f.func.name()) {
                return None;
            }
            // an argument that is also a group key is left to DataFusion
            if agg.group_expr.contains(&p.args[0]) {
                return None;
            }
            let k = match args.iter().position(|a| *a == p.args[0]) {
                Some(k) => k,
                None => {
                    args.push(p.args[0].clone());
                    args.len() - 1
                }
            };
            parts.push(Part::Distinct(k));
        } else {
            let out_type = agg.schema.field(groups + i).data_type();
            parts.push(Part::Split(split_of(f, input, out_type)?));
        }
    }
    // grouping sets number their columns in a 64-bit id
    (!args.is_empty() && groups + args.len() <= 64).then_some((args, parts))
}

fn call(func: &Arc<AggregateUDF>, args: Vec<Expr>) -> Expr {
    call_where(func, args, None)
}

/// `func(args) FILTER (WHERE filter)`.
fn call_where(func: &Arc<AggregateUDF>, args: Vec<Expr>, filter: Option<Expr>) -> Expr {
    Expr::AggregateFunction(AggregateFunction::new_udf(
        Arc::clone(func),
        args,
        false,
        filter.map(Box::new),
        vec![],
        None,
    ))
}

fn sum_udaf() -> Arc<AggregateUDF> {
    datafusion::functions_aggregate::sum::sum_udaf()
}

fn count_udaf() -> Arc<AggregateUDF> {
    datafusion::functions_aggregate::count::count_udaf()
}

fn rewrite(agg: Aggregate, args: Vec<Expr>, parts: Vec<Part>) -> Result<LogicalPlan> {
    let Aggregate {
        input,
        group_expr,
        aggr_expr,
        schema,
        ..
    } = agg;
    let groups = group_expr.len();
    // group keys: columns as they are, expressions under an alias the outer one reads
    let mut inner_groups = Vec::with_capacity(groups + args.len());
    let mut outer_groups = Vec::with_capacity(groups);
    let mut output = Vec::with_capacity(schema.fields().len());
    for (i, g) in group_expr.into_iter().enumerate() {
        let (qualifier, field) = schema.qualified_field(i);
        if let Expr::Column(_) = g {
            outer_groups.push(g.clone());
            output.push(g.clone().alias_qualified(qualifier.cloned(), field.name()));
            inner_groups.push(g);
        } else {
            let name = format!("__group_{i}");
            inner_groups.push(g.alias(&name));
            outer_groups.push(col(&name));
            output.push(col(&name).alias_qualified(qualifier.cloned(), field.name()));
        }
    }
    let m = args.len();
    let arg_name = |k: usize| match m {
        1 => DISTINCT_ALIAS.to_string(),
        _ => format!("{DISTINCT_ALIAS}_{k}"),
    };
    let args: Vec<Expr> = args
        .into_iter()
        .enumerate()
        .map(|(k, a)| a.alias(arg_name(k)))
        .collect();
    // one distinct argument: GROUP BY keys, d. Several: GROUPING SETS ((keys, d1),
    // (keys, d2), ...), each row of set k tagged by its grouping id (bit m-1-j set
    // for each argument j the set leaves out, the keys' bits clear), and the outer
    // aggregates each read their set alone
    let inner_group_expr = if m == 1 {
        inner_groups.extend(args);
        inner_groups
    } else {
        let sets = args
            .iter()
            .map(|a| {
                let mut set = inner_groups.clone();
                set.push(a.clone());
                set
            })
            .collect();
        vec![Expr::GroupingSet(
            datafusion::logical_expr::GroupingSet::GroupingSets(sets),
        )]
    };
    let in_set = |k: usize| set_filter(m, k);
    let mut inner_aggs = vec![];
    let mut outer_aggs = vec![];
    let mut values = vec![];
    for (i, (e, part)) in aggr_expr.into_iter().zip(parts).enumerate() {
        let Expr::AggregateFunction(AggregateFunction {
            func,
            params: AggregateFunctionParams { args, .. },
        }) = e
        else {
            unreachable!("qualifies() accepted only aggregate functions")
        };
        let inner = |k: &str| format!("__inner_{i}{k}");
        let outer = |k: &str| format!("__outer_{i}{k}");
        // the non-distinct aggregates' partial values: those of the first set
        let first = in_set(0);
        let value = match part {
            Part::Distinct(k) => {
                outer_aggs
                    .push(call_where(&func, vec![col(arg_name(k))], in_set(k)).alias(outer("")));
                col(outer(""))
            }
            Part::Split(Split::Same) => {
                inner_aggs.push(call(&func, args).alias(inner("")));
                outer_aggs.push(call_where(&func, vec![col(inner(""))], first).alias(outer("")));
                col(outer(""))
            }
            Part::Split(Split::Count) => {
                inner_aggs.push(call(&func, args).alias(inner("")));
                outer_aggs
                    .push(call_where(&sum_udaf(), vec![col(inner(""))], first).alias(outer("")));
                // a global aggregate over no rows: count is 0, the sum NULL
                when(col(outer("")).is_null(), lit(0i64)).otherwise(col(outer("")))?
            }
            Part::Split(Split::Avg) => {
                let x = args.into_iter().next().expect("avg has one argument");
                inner_aggs.push(
                    call(&sum_udaf(), vec![cast(x.clone(), DataType::Float64)]).alias(inner("s")),
                );
                inner_aggs.push(call(&count_udaf(), vec![x]).alias(inner("c")));
                outer_aggs.push(
                    call_where(&sum_udaf(), vec![col(inner("s"))], first.clone()).alias(outer("s")),
                );
                outer_aggs
                    .push(call_where(&sum_udaf(), vec![col(inner("c"))], first).alias(outer("c")));
                // no values: the sum is NULL, and so the quotient
                col(outer("s")) / cast(col(outer("c")), DataType::Float64)
            }
        };
        values.push(value);
    }
    let inner = LogicalPlan::Aggregate(Aggregate::try_new(input, inner_group_expr, inner_aggs)?);
    let outer = LogicalPlan::Aggregate(Aggregate::try_new(
        Arc::new(inner),
        outer_groups,
        outer_aggs,
    )?);
    // the original names and types (a sum of sums of decimals widens twice)
    for (i, value) in values.into_iter().enumerate() {
        let (qualifier, field) = schema.qualified_field(groups + i);
        let value = if value.get_type(outer.schema())? == *field.data_type() {
            value
        } else {
            cast(value, field.data_type().clone())
        };
        output.push(value.alias_qualified(qualifier.cloned(), field.name()));
    }
    project(outer, output)
}

/// With `m` distinct arguments in grouping sets, the filter that keeps set `k`'s rows:
/// its grouping id has bit `m-1-j` set for each argument `j` it leaves out (the
/// keys' bits clear; DataFusion numbers the grouping columns from the last, in the
/// order they first appear: the keys, then the arguments). `None` for one argument
/// (no grouping sets).
fn set_filter(m: usize, k: usize) -> Option<Expr> {
    (m > 1).then(|| {
        let id = ((1u64 << m) - 1) & !(1u64 << (m - 1 - k));
        cast(
            col(datafusion::logical_expr::Aggregate::INTERNAL_GROUPING_ID),
            DataType::UInt64,
        )
        .eq(lit(id))
    })
}

impl OptimizerRule for DistinctToGroupBy {
    fn name(&self) -> &str {
        "autopipe_distinct_to_group_by"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::TopDown)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Aggregate(agg) = plan else {
            return Ok(Transformed::no(plan));
        };
        match qualifies(&agg) {
            Some((args, parts)) => Ok(Transformed::yes(rewrite(agg, args, parts)?)),
            None => Ok(Transformed::no(LogicalPlan::Aggregate(agg))),
        }
    }
}

/// Whether `exprs` are the columns 0, 1, … of their input, in order.
fn leading_columns(exprs: &[Arc<dyn PhysicalExpr>]) -> bool {
    exprs
        .iter()
        .enumerate()
        .all(|(i, e)| e.downcast_ref::<Column>().is_some_and(|c| c.index() == i))
}

/// The aggregate's group keys if it is in `mode` without grouping sets, and
/// they are the leading columns of its input.
fn plain_keys(p: &Arc<dyn ExecutionPlan>, mode: AggregateMode) -> Option<usize> {
    let a = p.downcast_ref::<AggregateExec>()?;
    let g = a.group_expr();
    if *a.mode() != mode || g.has_grouping_set() {
        return None;
    }
    let keys: Vec<_> = g.expr().iter().map(|(e, _)| Arc::clone(e)).collect();
    leading_columns(&keys).then_some(keys.len())
}

fn hash_exprs(p: &Arc<dyn ExecutionPlan>) -> Option<(&[Arc<dyn PhysicalExpr>], usize)> {
    match p.downcast_ref::<RepartitionExec>()?.partitioning() {
        Partitioning::Hash(e, n) => Some((e.as_slice(), *n)),
        _ => None,
    }
}

/// One exchange for both group-bys of a rewritten distinct aggregate:
///
/// ```text
/// FinalPartitioned(keys) ← Hash(keys) ← Partial(keys) ← FinalPartitioned(keys, d) ← Hash(keys, d) ← X
/// ```
///
/// becomes `FinalPartitioned(keys) ← Partial(keys) ← FinalPartitioned(keys, d) ←
/// Hash(keys) ← X`: rows hashed on the keys alone keep each (keys, d) group in one
/// partition, and each keys group too.
pub fn share_exchange(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    use datafusion::common::tree_node::TreeNode;
    let out = plan.transform_down(|top| {
        let Some(k) = plain_keys(&top, AggregateMode::FinalPartitioned) else {
            return Ok(Transformed::no(top));
        };
        let upper = Arc::clone(top.children()[0]);
        let Some((upper_keys, _)) = hash_exprs(&upper) else {
            return Ok(Transformed::no(top));
        };
        let partial = Arc::clone(upper.children()[0]);
        let inner = match partial.children().first() {
            Some(c) => Arc::clone(c),
            None => return Ok(Transformed::no(top)),
        };
        let lower = match inner.children().first() {
            Some(c) => Arc::clone(c),
            None => return Ok(Transformed::no(top)),
        };
        let Some((lower_keys, m)) = hash_exprs(&lower) else {
            return Ok(Transformed::no(top));
        };
        let shape = k > 0
            && upper_keys.len() == k
            && leading_columns(upper_keys)
            && plain_keys(&partial, AggregateMode::Partial) == Some(k)
            && plain_keys(&inner, AggregateMode::FinalPartitioned) == Some(k + 1)
            && lower_keys.len() == k + 1
            && leading_columns(lower_keys);
        if !shape {
            return Ok(Transformed::no(top));
        }
        let keys = lower_keys[..k].to_vec();
        let input = Arc::clone(lower.children()[0]);
        let lower: Arc<dyn ExecutionPlan> = Arc::new(RepartitionExec::try_new(
            input,
            Partitioning::Hash(keys, m),
        )?);
        let inner = replace_children_if_necessary(inner, vec![lower])?;
        let partial = replace_children_if_necessary(partial, vec![inner])?;
        Ok(Transformed::yes(replace_children_if_necessary(
            top,
            vec![partial],
        )?))
    })?;
    Ok(out.data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::prelude::SessionContext;

    /// `t(g, d, x)`: 300 rows in 7 groups, `d` a string with NULLs and `x` a float
    /// with NULLs; group 6 has only NULL `d`s and `x`s.
    fn context(with_rule: bool) -> SessionContext {
        let ctx = SessionContext::new();
        if with_rule {
            ctx.add_optimizer_rule(Arc::new(DistinctToGroupBy));
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("g", DataType::Int64, false),
            Field::new("d", DataType::Utf8, true),
            Field::new("x", DataType::Float64, true),
        ]));
        let g = Int64Array::from_iter_values((0..300).map(|i| i % 7));
        let d =
            StringArray::from_iter((0..300).map(|i| {
                (i % 7 != 6 && i % 5 != 0).then(|| format!("k{}", (i * 13) % (3 + i % 7)))
            }));
        let x = Float64Array::from_iter(
            (0..300).map(|i| (i % 7 != 6 && i % 4 != 0).then_some(i as f64 / 8.0)),
        );
        let batch =
            RecordBatch::try_new(schema, vec![Arc::new(g), Arc::new(d), Arc::new(x)]).unwrap();
        ctx.register_batch("t", batch).unwrap();
        ctx
    }

    async fn run(ctx: &SessionContext, sql: &str) -> (String, String) {
        let df = ctx.sql(sql).await.unwrap();
        let plan = df.clone().into_optimized_plan().unwrap();
        let schema = df.schema().as_arrow().clone();
        let batches = df.collect().await.unwrap();
        let types: Vec<_> = schema
            .fields()
            .iter()
            .map(|f| format!("{}: {}", f.name(), f.data_type()))
            .collect();
        let out = pretty_format_batches(&batches).unwrap().to_string();
        let plan = plan.display_indent().to_string();
        (plan, format!("{types:?}\n{out}"))
    }

    fn aggregates(plan: &str) -> usize {
        plan.lines()
            .filter(|l| l.trim().starts_with("Aggregate:"))
            .count()
    }

    /// Each query with the rule: two aggregates without DISTINCT, and the same
    /// result (same names, types and rows in sorted order) as DataFusion without it.
    #[tokio::test]
    async fn distinct_aggregates_with_count_and_avg_become_two_group_bys_with_equal_results() {
        let with = context(true);
        let without = context(false);
        for sql in [
            "SELECT g, count(DISTINCT d) AS n, count(*) AS c FROM t GROUP BY g ORDER BY g",
            "SELECT g, count(DISTINCT d) AS n, count(x) AS c, avg(x) AS a, sum(x) AS s, \
             min(x) AS lo, max(d) AS hi FROM t GROUP BY g ORDER BY g",
            // several distinct aggregates on the same column
            "SELECT g, count(DISTINCT d) AS n, min(DISTINCT d) AS m, max(DISTINCT d) AS mx, \
             count(d) AS c FROM t GROUP BY g ORDER BY g",
            // a grouping expression, and a distinct number with avg/sum of it
            "SELECT g % 3 AS h, count(DISTINCT x) AS n, sum(DISTINCT x) AS sd, \
             avg(DISTINCT x) AS ad, count(*) AS c FROM t GROUP BY g % 3 ORDER BY h",
            // global aggregates, over rows and over none
            "SELECT count(DISTINCT d) AS n, count(*) AS c, avg(x) AS a FROM t",
            "SELECT count(DISTINCT d) AS n, count(*) AS c, avg(x) AS a FROM t WHERE g > 100",
            // distinct aggregates over two or three columns: grouping sets, one per
            // column, each outer aggregate reading its own set
            "SELECT g, count(DISTINCT d) AS n, count(DISTINCT x) AS m FROM t GROUP BY g ORDER BY g",
            "SELECT g, count(DISTINCT d) AS n, sum(DISTINCT x) AS sx, count(*) AS c, \
             avg(x) AS a, max(d) AS hi FROM t GROUP BY g ORDER BY g",
            "SELECT g % 2 AS h, count(DISTINCT d) AS n, count(DISTINCT x) AS m, \
             count(DISTINCT g) AS k, min(DISTINCT x) AS lo FROM t GROUP BY g % 2 ORDER BY h",
            "SELECT count(DISTINCT d) AS n, count(DISTINCT x) AS m, count(*) AS c FROM t",
            "SELECT count(DISTINCT d) AS n, count(DISTINCT x) AS m, count(*) AS c, \
             avg(x) AS a FROM t WHERE g > 100",
        ] {
            let (plan, got) = run(&with, sql).await;
            assert_eq!(aggregates(&plan), 2, "{sql}\n{plan}");
            assert!(!plan.contains("DISTINCT"), "{sql}\n{plan}");
            let (_, want) = run(&without, sql).await;
            assert_eq!(got, want, "{sql}\n{plan}");
        }
    }

    /// Distinct aggregates next to an aggregate the rule cannot split, with a filter,
    /// or over a group key keep DataFusion's plan (and its result).
    #[tokio::test]
    async fn distinct_next_to_unsplittable_aggregates_is_left_alone() {
        let with = context(true);
        let without = context(false);
        for sql in [
            "SELECT g, count(DISTINCT d) AS n, stddev(x) AS s FROM t GROUP BY g ORDER BY g",
            "SELECT g, count(DISTINCT g) AS n, count(DISTINCT d) AS m FROM t GROUP BY g ORDER BY g",
            "SELECT g, count(DISTINCT d) FILTER (WHERE x > 1) AS n, count(*) AS c FROM t \
             GROUP BY g ORDER BY g",
        ] {
            let (plan, got) = run(&with, sql).await;
            let (plan_without, want) = run(&without, sql).await;
            assert_eq!(plan, plan_without, "{sql}");
            assert_eq!(got, want, "{sql}");
        }
    }
}
