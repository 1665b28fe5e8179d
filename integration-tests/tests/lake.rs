//! Delta Lake sinks (issue 15), read back by an independent reader: Python's
//! `deltalake` (delta-rs). A job's output is one Delta version with its job id in the
//! commit info; an append adds a version, an overwrite replaces every file in one
//! version while time travel still reads the old one; a failed job adds nothing.

use anyhow::{Context, Result};
use integration_tests::kafka::{deltalake_path, python};
use integration_tests::Cluster;
use std::path::{Path, PathBuf};

/// Reads the table at argv[1] (at version argv[2] when given) with delta-rs.
const READ: &str = r#"
import json, sys
from deltalake import DeltaTable, QueryBuilder
dt = DeltaTable(sys.argv[1]) if len(sys.argv) < 3 else DeltaTable(sys.argv[1], version=int(sys.argv[2]))
def rows(sql):
    t = QueryBuilder().register("t", dt).execute(sql).read_all()
    return [dict(zip(t.column_names, r)) for r in zip(*(t.column(c).to_pylist() for c in t.column_names))]
agg = rows("SELECT count(*) AS n, sum(amount) AS s FROM t")[0]
per = rows("SELECT country, count(*) AS n FROM t GROUP BY country ORDER BY country")
info = dt.history(1)[0]
print(json.dumps({
    "version": dt.version(),
    "rows": agg["n"], "sum": agg["s"],
    "countries": {r["country"]: r["n"] for r in per},
    "partition_columns": dt.metadata().partition_columns,
    "job_id": info.get("autopipe.job_id"),
    "operation": info.get("operation"),
}))
"#;

/// `n` sales rows: id 1..=n, country DE, FR, IT in turn, amount = id.
fn sales(dir: &Path, n: i64) -> Result<PathBuf> {
    let f = dir.join("sales.csv");
    let mut text = String::from("id,country,amount\n");
    for i in 1..=n {
        let c = ["DE", "FR", "IT"][(i % 3) as usize];
        text += &format!("{i},{c},{i}\n");
    }
    std::fs::write(&f, text)?;
    Ok(f)
}

fn spec(dir: &Path, name: &str, mode: &str, sql: &str) -> Result<PathBuf> {
    let f = dir.join(format!("{name}.toml"));
    std::fs::write(
        &f,
        format!(
            r#"[job]
name = "{name}"
[[sources]]
name = "sales"
format = "csv"
path = "sales.csv"
schema = "id BIGINT, country VARCHAR, amount BIGINT"
[transform]
sql = "{sql}"
[sink]
format = "delta"
path = "lake/sales"
partition_by = ["country"]
mode = "{mode}"
"#
        ),
    )?;
    Ok(f)
}

fn read(table: &Path, version: Option<u64>) -> Result<serde_json::Value> {
    let t = table.to_str().context("utf8")?;
    let v = version.map(|v| v.to_string());
    let mut args = vec![t];
    args.extend(v.as_deref());
    let out = python(&deltalake_path()?, READ, &args)?;
    serde_json::from_str(out.trim()).context(out)
}

#[test]
fn delta_versions_as_an_independent_reader_sees_them() -> Result<()> {
    let dir = tempfile::tempdir()?;
    sales(dir.path(), 300)?;
    let table = dir.path().join("lake/sales");
    let c = Cluster::start(2, 2)?;
    let all = "SELECT id, country, amount FROM sales";

    // the first job creates the table: version 0, its rows, its partitions
    let (v, _) = c.run(&spec(dir.path(), "load", "append", all)?)?;
    assert_eq!(v["state"], "succeeded", "{v}");
    let t = read(&table, None)?;
    assert_eq!(t["version"], 0, "{t}");
    assert_eq!(t["rows"], 300, "{t}");
    assert_eq!(t["sum"], 300 * 301 / 2, "{t}");
    assert_eq!(t["countries"]["DE"], 100, "{t}");
    assert_eq!(
        t["partition_columns"],
        serde_json::json!(["country"]),
        "{t}"
    );
    assert_eq!(t["job_id"], v["job_id"], "the commit names its job: {t}");

    // an append is the next version
    let de = "SELECT id, country, amount FROM sales WHERE country = 'DE'";
    let (v, _) = c.run(&spec(dir.path(), "more", "append", de)?)?;
    assert_eq!(v["state"], "succeeded", "{v}");
    let t = read(&table, None)?;
    assert_eq!(
        (t["version"].as_u64(), t["rows"].as_u64()),
        (Some(1), Some(400)),
        "{t}"
    );
    assert_eq!(t["countries"]["DE"], 200, "{t}");

    // an overwrite replaces every file in one version; the old one still reads
    let big = "SELECT id, country, amount FROM sales WHERE amount > 250";
    let (v, _) = c.run(&spec(dir.path(), "replace", "overwrite", big)?)?;
    assert_eq!(v["state"], "succeeded", "{v}");
    let t = read(&table, None)?;
    assert_eq!(
        (t["version"].as_u64(), t["rows"].as_u64()),
        (Some(2), Some(50)),
        "{t}"
    );
    assert_eq!(t["operation"], "WRITE", "{t}");
    let old = read(&table, Some(1))?;
    assert_eq!(old["rows"], 400, "time travel to version 1: {old}");

    // a job that fails adds nothing
    let bad = "SELECT id, country, CAST(country AS BIGINT) AS amount FROM sales";
    let (v, _) = c.run(&spec(dir.path(), "broken", "append", bad)?)?;
    assert_eq!(v["state"], "failed", "{v}");
    let t = read(&table, None)?;
    assert_eq!(
        (t["version"].as_u64(), t["rows"].as_u64()),
        (Some(2), Some(50)),
        "{t}"
    );
    Ok(())
}
