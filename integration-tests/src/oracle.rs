//! The correctness oracle: the same SQL on single-process DataFusion over the same
//! files, compared with what the job wrote — order-insensitive, floats with a
//! relative tolerance, hive partition columns read back from the paths.

use anyhow::{bail, Result};
use autopipe_common::session::context_with;
use autopipe_common::spec::{Format, PipelineSpec};
use autopipe_common::store::register_stores;
use datafusion::arrow::array::Array;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::prelude::{
    col, CsvReadOptions, JsonReadOptions, ParquetReadOptions, SessionContext,
};

/// A value normalized for comparison.
#[derive(Debug, Clone, PartialEq, PartialOrd)]
pub enum Cell {
    /// non-float values as text
    Text(String),
    /// floats
    Float(f64),
    /// NULL
    Null,
}

/// Runs the spec's SQL on single-process DataFusion (with DataFusion's own readers).
pub async fn expected(spec: &PipelineSpec) -> Result<(Vec<String>, Vec<DataType>, Vec<Vec<Cell>>)> {
    let ctx = context_with(spec, 4, false).await?;
    let df = ctx.sql(&spec.transform.sql).await?;
    let schema = df.schema().as_arrow().clone();
    let batches = df.collect().await?;
    let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let types: Vec<DataType> = schema
        .fields()
        .iter()
        .map(|f| f.data_type().clone())
        .collect();
    Ok((names.clone(), types.clone(), rows(&batches, &types)?))
}

/// Reads what the job wrote to the sink, in the oracle's column order.
pub async fn actual(
    spec: &PipelineSpec,
    names: &[String],
    types: &[DataType],
) -> Result<Vec<Vec<Cell>>> {
    let ctx = SessionContext::new();
    let path = &spec.sink.path;
    register_stores(&ctx.runtime_env(), std::slice::from_ref(path))?;
    let parts: Vec<(String, DataType)> = spec
        .sink
        .partition_by
        .iter()
        .map(|c| (c.clone(), DataType::Utf8))
        .collect();
    let df = match spec.sink.format {
        Format::Parquet => {
            ctx.read_parquet(
                path,
                ParquetReadOptions::default().table_partition_cols(parts),
            )
            .await?
        }
        Format::Csv => {
            ctx.read_csv(path, CsvReadOptions::new().table_partition_cols(parts))
                .await?
        }
        Format::Ndjson => {
            ctx.read_json(path, JsonReadOptions::default().table_partition_cols(parts))
                .await?
        }
        Format::Kafka => bail!("a kafka sink cannot be read back"),
        Format::Delta => bail!("a delta table is read back by delta-rs (tests/lake.rs)"),
    };
    let df = df.select(
        names
            .iter()
            .map(|n| col(format!("\"{n}\"")))
            .collect::<Vec<_>>(),
    )?;
    let batches = df.collect().await?;
    rows(&batches, types)
}

/// Numbers compare as floats, so that engines that type a result differently (a
/// decimal average against a double, an INT year against a BIGINT) still agree.
fn is_numeric(t: &DataType) -> bool {
    t.is_numeric()
}

fn rows(batches: &[RecordBatch], types: &[DataType]) -> Result<Vec<Vec<Cell>>> {
    let mut out = Vec::new();
    for b in batches {
        for r in 0..b.num_rows() {
            let mut row = Vec::with_capacity(b.num_columns());
            for (c, t) in types.iter().enumerate() {
                let a = b.column(c);
                if a.is_null(r) {
                    row.push(Cell::Null);
                    continue;
                }
                let s = array_value_to_string(a, r)?;
                if is_numeric(t) {
                    row.push(Cell::Float(s.parse::<f64>().unwrap_or(f64::NAN)));
                } else {
                    row.push(Cell::Text(s));
                }
            }
            out.push(row);
        }
    }
    Ok(out)
}

/// Every row of the Parquet files under `dir`, columns in file order.
pub async fn parquet_rows(dir: &std::path::Path) -> Result<Vec<Vec<Cell>>> {
    let ctx = SessionContext::new();
    let df = ctx
        .read_parquet(format!("{}/", dir.display()), ParquetReadOptions::default())
        .await?;
    let types: Vec<DataType> = df
        .schema()
        .fields()
        .iter()
        .map(|f| f.data_type().clone())
        .collect();
    rows(&df.collect().await?, &types)
}

fn sort(rows: &mut [Vec<Cell>]) {
    rows.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
}

fn close(a: &Cell, b: &Cell) -> bool {
    match (a, b) {
        (Cell::Float(x), Cell::Float(y)) => {
            (x - y).abs() <= 1e-6 * x.abs().max(y.abs()).max(1.0) || (x.is_nan() && y.is_nan())
        }
        _ => a == b,
    }
}

/// Order-insensitive comparison with float tolerance.
pub fn assert_same(
    name: &str,
    mut expected: Vec<Vec<Cell>>,
    mut actual: Vec<Vec<Cell>>,
) -> Result<()> {
    if expected.len() != actual.len() {
        bail!(
            "{name}: expected {} rows, job wrote {} rows",
            expected.len(),
            actual.len()
        );
    }
    sort(&mut expected);
    sort(&mut actual);
    for (i, (e, a)) in expected.iter().zip(actual.iter()).enumerate() {
        if e.len() != a.len() || !e.iter().zip(a.iter()).all(|(x, y)| close(x, y)) {
            bail!("{name}: row {i} differs:\n  expected {e:?}\n  actual   {a:?}");
        }
    }
    Ok(())
}

/// Checks what the job of the spec file `path` (relative paths against `base`) wrote
/// against the oracle: every row exactly once.
pub fn check_spec_output(base: &std::path::Path, path: &std::path::Path) -> Result<()> {
    let spec = PipelineSpec::from_file(path)?.normalize(base, "oracle")?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let (names, types, exp) = expected(&spec).await?;
        let act = actual(&spec, &names, &types).await?;
        assert_same(&spec.job.name, exp, act)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparison_ignores_order_and_tiny_float_error_but_not_real_differences() {
        let e = vec![
            vec![Cell::Text("a".into()), Cell::Float(1.0)],
            vec![Cell::Text("b".into()), Cell::Float(2.0)],
        ];
        let a = vec![
            vec![Cell::Text("b".into()), Cell::Float(2.0 + 1e-12)],
            vec![Cell::Text("a".into()), Cell::Float(1.0)],
        ];
        assert_same("t", e.clone(), a).unwrap();
        let wrong = vec![
            vec![Cell::Text("b".into()), Cell::Float(2.1)],
            vec![Cell::Text("a".into()), Cell::Float(1.0)],
        ];
        assert!(assert_same("t", e.clone(), wrong).is_err());
        let dup = vec![e[0].clone(), e[0].clone()];
        assert!(assert_same("t", e, dup).is_err());
    }
}
