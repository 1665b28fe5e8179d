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

/// Writes the table at argv[1] with delta-rs (an independent writer, its own file
/// layout and statistics): version 0 holds `sales(dir, 300)`'s rows, version 1 adds
/// 100 more DE rows (ids 1001..=1100, amount 1).
const WRITE: &str = r#"
import sys
from arro3.core import Table, Array, DataType
from deltalake import write_deltalake
def rows(ids, countries, amounts):
    return Table.from_pydict({
        "id": Array(ids, DataType.int64()),
        "country": Array(countries, DataType.string()),
        "amount": Array(amounts, DataType.int64()),
    })
ids = list(range(1, 301))
write_deltalake(sys.argv[1], rows(ids, [["DE", "FR", "IT"][i % 3] for i in ids], ids),
                partition_by=["country"])
more = list(range(1001, 1101))
write_deltalake(sys.argv[1], rows(more, ["DE"] * 100, [1] * 100), mode="append")
"#;

/// A job reading the delta table `lake/sales` (`source_extra`: more keys of the
/// source) with `sql` into `out/NAME` as NDJSON.
fn read_spec(dir: &Path, name: &str, source_extra: &str, sql: &str) -> Result<PathBuf> {
    let f = dir.join(format!("{name}.toml"));
    std::fs::write(
        &f,
        format!(
            r#"[job]
name = "{name}"
[[sources]]
name = "sales"
format = "delta"
path = "lake/sales"
{source_extra}
[transform]
sql = "{sql}"
[sink]
format = "ndjson"
path = "out/{name}"
"#
        ),
    )?;
    Ok(f)
}

/// The rows a job wrote as NDJSON under `dir`.
fn ndjson_rows(dir: &Path) -> Result<Vec<serde_json::Value>> {
    let mut rows = vec![];
    for f in integration_tests::files_under(dir) {
        if f.ends_with(".ndjson") || f.ends_with(".json") {
            for line in std::fs::read_to_string(dir.join(&f))?.lines() {
                if !line.trim().is_empty() {
                    rows.push(serde_json::from_str(line)?);
                }
            }
        }
    }
    Ok(rows)
}

/// Per country: (rows, sum of amount), from a `GROUP BY country` job's output.
fn per_country(dir: &Path) -> Result<std::collections::BTreeMap<String, (i64, i64)>> {
    let mut out = std::collections::BTreeMap::new();
    for r in ndjson_rows(dir)? {
        let c = r["country"].as_str().context("country")?.to_string();
        out.insert(
            c,
            (r["n"].as_i64().context("n")?, r["s"].as_i64().context("s")?),
        );
    }
    Ok(out)
}

#[test]
fn a_delta_source_reads_one_version_of_a_table_another_engine_wrote_and_prunes_its_partitions(
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let table = dir.path().join("lake/sales");
    std::fs::create_dir_all(&table)?;
    python(
        &deltalake_path()?,
        WRITE,
        &[table.to_str().context("utf8")?],
    )?;
    let c = Cluster::start(2, 2)?;
    let by_country = "SELECT country, count(*) AS n, sum(amount) AS s FROM sales GROUP BY country";
    let de_300: i64 = (1..=300).filter(|i| i % 3 == 0).sum();

    // the latest version: both writes
    let (v, _) = c.run(&read_spec(dir.path(), "latest", "", by_country)?)?;
    assert_eq!(v["state"], "succeeded", "{v}");
    let got = per_country(&dir.path().join("out/latest"))?;
    assert_eq!(got["DE"], (200, de_300 + 100), "{got:?}");
    assert_eq!(got["FR"].0, 100, "{got:?}");
    assert_eq!(got["IT"].0, 100, "{got:?}");
    assert_eq!(v["rows_in"], 400, "{v}");

    // time travel: version 0 is the first write alone
    let (v, _) = c.run(&read_spec(dir.path(), "first", "version = 0", by_country)?)?;
    assert_eq!(v["state"], "succeeded", "{v}");
    let got = per_country(&dir.path().join("out/first"))?;
    assert_eq!(got["DE"], (100, de_300), "{got:?}");
    assert_eq!(v["rows_in"], 300, "{v}");

    // a filter on the partition column reads the FR files only
    let fr = "SELECT country, count(*) AS n, sum(amount) AS s FROM sales WHERE country = 'FR' GROUP BY country";
    let (v, _) = c.run(&read_spec(dir.path(), "fr", "", fr)?)?;
    assert_eq!(v["state"], "succeeded", "{v}");
    let got = per_country(&dir.path().join("out/fr"))?;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got["FR"].0, 100, "{got:?}");
    assert_eq!(v["rows_in"], 100, "only the FR partition is read: {v}");

    // a version the table does not have is refused, naming the key; so is a time
    // before the table existed
    let bad = read_spec(dir.path(), "future", "version = 7", by_country)?;
    let err = c.submit(&bad).unwrap_err().to_string();
    assert!(err.contains("sources[0].version"), "{err}");
    let early = read_spec(
        dir.path(),
        "early",
        "timestamp = \"2001-01-01T00:00:00Z\"",
        by_country,
    )?;
    let err = c.submit(&early).unwrap_err().to_string();
    assert!(err.contains("sources[0].timestamp"), "{err}");
    Ok(())
}

#[test]
fn a_delta_source_pins_its_version_at_submit_and_reads_by_timestamp() -> Result<()> {
    let dir = tempfile::tempdir()?;
    sales(dir.path(), 300)?;
    let c = Cluster::start(1, 2)?;
    let all = "SELECT id, country, amount FROM sales";
    let (v, _) = c.run(&spec(dir.path(), "load", "append", all)?)?;
    assert_eq!(v["state"], "succeeded", "{v}");
    // a time after version 0's commit and before version 1's
    let between = std::time::SystemTime::now();
    integration_tests::wait_until(
        std::time::Duration::from_secs(5),
        "the clock to move",
        || {
            Ok(std::time::SystemTime::now().duration_since(between)?
                > std::time::Duration::from_millis(5))
        },
    )?;
    let stamp = chrono::DateTime::<chrono::Utc>::from(between)
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let de = "SELECT id, country, amount FROM sales WHERE country = 'DE'";
    let (v, _) = c.run(&spec(dir.path(), "more", "append", de)?)?;
    assert_eq!(v["state"], "succeeded", "{v}");
    let by_country = "SELECT country, count(*) AS n, sum(amount) AS s FROM sales GROUP BY country";
    let extra = format!("timestamp = \"{stamp}\"");
    let (v, _) = c.run(&read_spec(dir.path(), "then", &extra, by_country)?)?;
    assert_eq!(v["state"], "succeeded", "{v}");
    let got = per_country(&dir.path().join("out/then"))?;
    assert_eq!(got["DE"].0, 100, "as of {stamp}, version 0: {got:?}");
    let (v, _) = c.run(&read_spec(dir.path(), "now", "", by_country)?)?;
    let got = per_country(&dir.path().join("out/now"))?;
    assert_eq!(got["DE"].0, 200, "the latest, version 1: {got:?} {v}");
    Ok(())
}

/// Counts and sums the rows of the table at argv[1] per partition with delta-rs, and
/// lists its files and operations.
const TALLY: &str = r#"
import json, sys
from deltalake import DeltaTable, QueryBuilder
dt = DeltaTable(sys.argv[1])
t = QueryBuilder().register("t", dt).execute(
    "SELECT country, count(*) AS n, sum(amount) AS s FROM t GROUP BY country").read_all()
rows = {c: [n, s] for c, n, s in zip(*(t.column(x).to_pylist() for x in ["country", "n", "s"]))}
files = {}
for f in dt.file_uris():
    part = f.rsplit("/", 2)[-2]
    files[part] = files.get(part, 0) + 1
ops = [h.get("operation") for h in dt.history()]
print(json.dumps({"version": dt.version(), "rows": rows, "files": files, "ops": ops}))
"#;

#[test]
fn small_appends_to_a_delta_table_are_compacted_in_the_background_and_no_row_is_lost() -> Result<()>
{
    let dir = tempfile::tempdir()?;
    let table = dir.path().join("lake/sales");
    let c = Cluster::start(2, 2)?;
    let min_files = 4;
    let appends = 14;
    for i in 0..appends {
        // three rows, one per country: a file in each partition
        let csv = dir.path().join("sales.csv");
        let mut text = String::from("id,country,amount\n");
        for (k, country) in ["DE", "FR", "IT"].iter().enumerate() {
            text += &format!("{},{country},{}\n", i * 3 + k as i64, i + 1);
        }
        std::fs::write(&csv, text)?;
        let f = spec(
            dir.path(),
            &format!("append-{i}"),
            "append",
            "SELECT id, country, amount FROM sales",
        )?;
        let t = std::fs::read_to_string(&f)?.replace(
            "[[sources]]",
            &format!("[job.params]\ncompaction_min_files = {min_files}\n[[sources]]"),
        );
        std::fs::write(&f, t)?;
        let (v, _) = c.run(&f)?;
        assert_eq!(v["state"], "succeeded", "append {i}: {v}");
    }
    // every compaction the rule starts ends, and the partitions settle below the bound
    let settled = |c: &Cluster| -> Result<bool> {
        let jobs = c.cli_json(&["jobs"])?;
        let busy = jobs.as_array().context("jobs")?.iter().any(|j| {
            j["state"] != "succeeded" && j["state"] != "failed" && j["state"] != "cancelled"
        });
        let d = c.cli_json(&["decisions"])?;
        let open =
            d.as_array().context("decisions")?.iter().any(|d| {
                d["kind"] == "compaction" && d["effect"].as_str().unwrap_or("").is_empty()
            });
        Ok(!busy && !open)
    };
    c.wait_for(
        std::time::Duration::from_secs(120),
        "compactions to finish",
        |c| {
            let t = read_tally(&table)?;
            let files = t["files"].as_object().context("files")?;
            // (tiny files are all of one size tier: fewer than min_files leave the rule
            // nothing to do)
            Ok(files
                .values()
                .all(|n| n.as_u64().unwrap_or(99) < min_files as u64)
                && settled(c)?)
        },
    )?;
    let t = read_tally(&table)?;
    // every appended row once: 14 per country, amounts 1..=14
    for country in ["country=DE", "country=FR", "country=IT"] {
        assert!(
            t["files"][country].as_u64().unwrap() < min_files as u64,
            "{t}"
        );
    }
    for country in ["DE", "FR", "IT"] {
        assert_eq!(
            t["rows"][country],
            serde_json::json!([appends, appends * (appends + 1) / 2]),
            "{t}"
        );
    }
    let ops: Vec<&str> = t["ops"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.as_str())
        .collect();
    assert!(ops.contains(&"OPTIMIZE"), "{t}");
    // each compaction is a decision with its inputs and measured effect
    let d = c.cli_json(&["decisions"])?;
    let compactions: Vec<&serde_json::Value> = d
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["kind"] == "compaction")
        .collect();
    assert!(compactions.len() >= 3, "one per partition at least: {d}");

    for x in &compactions {
        assert!(
            x["inputs"]["files_compacted"]
                .as_str()
                .unwrap()
                .parse::<u32>()?
                >= min_files,
            "{x}"
        );
        let effect = x["effect"].as_str().unwrap_or("");
        assert!(effect.contains("write amplification"), "{x}");
    }
    Ok(())
}

fn read_tally(table: &Path) -> Result<serde_json::Value> {
    let out = python(
        &deltalake_path()?,
        TALLY,
        &[table.to_str().context("utf8")?],
    )?;
    serde_json::from_str(out.trim()).context(out)
}

#[test]
fn vacuum_deletes_only_files_no_retained_version_references_and_history_lists_the_commits(
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    sales(dir.path(), 300)?;
    let table = dir.path().join("lake/sales");
    let t = table.to_str().context("utf8")?;
    let c = Cluster::start(1, 2)?;
    let all = "SELECT id, country, amount FROM sales";
    let (v0, _) = c.run(&spec(dir.path(), "load", "append", all)?)?;
    let big = "SELECT id, country, amount FROM sales WHERE amount > 250";
    let (v1, _) = c.run(&spec(dir.path(), "replace", "overwrite", big)?)?;
    assert_eq!(
        (&v0["state"], &v1["state"]),
        (&"succeeded".into(), &"succeeded".into())
    );
    let before = integration_tests::files_under(&table);
    // a file no version names (a commit that never happened)
    std::fs::write(table.join("country=DE/orphan.parquet"), b"not parquet")?;

    // the history names each version's job and operation, newest first
    let h = integration_tests::cli(&["table", "history", t, "-o", "json"])?;
    assert!(h.status.success(), "{}", String::from_utf8_lossy(&h.stderr));
    let h: serde_json::Value = serde_json::from_slice(&h.stdout)?;
    assert_eq!(h[0]["version"], 1, "{h}");
    assert_eq!(h[0]["job_id"], v1["job_id"], "{h}");
    assert_eq!(h[1]["version"], 0, "{h}");
    assert_eq!(h[1]["job_id"], v0["job_id"], "{h}");

    // within the default retention (7 days) nothing goes: version 0 still reads
    let out = integration_tests::cli(&["table", "vacuum", t, "-o", "json"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v["files"], serde_json::json!([]), "{v}");
    assert_eq!(read(&table, Some(0))?["rows"], 300);
    // a shorter window than the table's retention needs --force
    let out = integration_tests::cli(&["table", "vacuum", t, "--retain", "0s"])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));

    // with none retained, the removed files go (and, --full, the orphan), never a
    // file of the current version
    let out = integration_tests::cli(&[
        "table", "vacuum", t, "--retain", "0s", "--force", "--full", "-o", "json",
    ])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let deleted: Vec<&str> = v["files"]
        .as_array()
        .context("files")?
        .iter()
        .filter_map(|f| f.as_str())
        .collect();
    assert!(deleted.iter().any(|f| f.ends_with("orphan.parquet")), "{v}");
    let after = integration_tests::files_under(&table);
    let now = read(&table, None)?;
    // (the vacuum itself is recorded as VACUUM START and END versions)
    assert_eq!(now["rows"], 50, "the current version reads whole: {now}");
    assert_eq!(now["sum"], (251..=300).sum::<i64>(), "{now}");
    // exactly version 0's files and the orphan went
    let gone: Vec<&String> = before.iter().filter(|f| !after.contains(f)).collect();
    assert_eq!(gone.len() + 1, deleted.len(), "{gone:?} vs {deleted:?}");
    assert!(
        gone.iter().all(|f| !f.starts_with("_delta_log")),
        "{gone:?}"
    );
    Ok(())
}

/// Restarts every coordinator of `g` with `env`, then waits for a leader.
fn restart_all(g: &mut integration_tests::Group, env: &[(&str, &str)]) -> Result<()> {
    let ids: Vec<u64> = g.peers.keys().copied().collect();
    for &id in &ids {
        g.kill(id);
    }
    for &id in &ids {
        g.start_coordinator_env(id, &[], env)?;
    }
    integration_tests::wait_until(std::time::Duration::from_secs(30), "a leader", || {
        Ok(g.leader()?.is_some())
    })
}

/// Submits `spec` and drives it to its end while coordinators die at an armed crash
/// point: each one that exits is started again, unarmed; the job's final status.
fn run_through_crashes(g: &mut integration_tests::Group, spec: &Path) -> Result<serde_json::Value> {
    let v = g.cli_json(&["submit", spec.to_str().context("utf8")?])?;
    let id = v["job_id"].as_str().context("job id")?.to_string();
    let mut crashed = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    loop {
        let dead: Vec<u64> = g
            .coordinators
            .iter_mut()
            .filter_map(|(id, p)| p.child.try_wait().ok().flatten().map(|_| *id))
            .collect();
        for d in dead {
            crashed += 1;
            g.kill(d);
            g.start_coordinator(d, &[])?;
        }
        if let Ok(s) = g.cli_json(&["status", &id]) {
            if s["state"] == "succeeded" || s["state"] == "failed" {
                assert!(crashed >= 1, "no coordinator reached the crash point: {s}");
                return Ok(s);
            }
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "job {id} did not end");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn a_leader_killed_mid_commit_leaves_one_version_with_each_file_once() -> Result<()> {
    let mut g = integration_tests::Group::start(3, 1, 2, &[])?;
    let dir = g.dir.path().to_path_buf();
    sales(&dir, 300)?;
    let table = dir.join("lake/sales");
    let all = "SELECT id, country, amount FROM sales";
    let s0 = spec(&dir, "load", "append", all)?;
    let v = g.cli_json(&["submit", s0.to_str().context("utf8")?])?;
    let id = v["job_id"].as_str().context("job id")?.to_string();
    integration_tests::wait_until(std::time::Duration::from_secs(120), "the load", || {
        Ok(g.cli_json(&["status", &id])?["state"] == "succeeded")
    })?;
    // killed with the files in the table's directory, the log not written yet; then
    // killed with the version written, the job's success not recorded yet
    let de = "SELECT id, country, amount FROM sales WHERE country = 'DE'";
    for (n, point) in ["delta.before_log_commit", "delta.after_log_commit"]
        .iter()
        .enumerate()
    {
        restart_all(&mut g, &[("AUTOPIPE_FAILPOINTS", &format!("{point}=1"))])?;
        let s = run_through_crashes(&mut g, &spec(&dir, &format!("more-{n}"), "append", de)?)?;
        assert_eq!(s["state"], "succeeded", "{point}: {s}");
        let t = read(&table, None)?;
        // exactly one more version, each of its files once: no row twice
        assert_eq!(t["version"], n as u64 + 1, "{point}: {t}");
        assert_eq!(t["rows"], 300 + 100 * (n as u64 + 1), "{point}: {t}");
        assert_eq!(t["countries"]["DE"], 100 * (n as u64 + 2), "{point}: {t}");
        assert_eq!(t["job_id"], s["job_id"], "{point}: {t}");
    }
    Ok(())
}

#[test]
fn table_compact_rewrites_every_partition_with_two_small_files_on_request() -> Result<()> {
    let dir = tempfile::tempdir()?;
    sales(dir.path(), 30)?;
    let table = dir.path().join("lake/sales");
    let c = Cluster::start(1, 2)?;
    let all = "SELECT id, country, amount FROM sales";
    for i in 0..3 {
        let f = spec(dir.path(), &format!("a{i}"), "append", all)?;
        let t = std::fs::read_to_string(&f)?.replace(
            "[[sources]]",
            "[job.params]\ncompaction = false\n[[sources]]",
        );
        std::fs::write(&f, t)?;
        assert_eq!(c.run(&f)?.0["state"], "succeeded");
    }
    let before = read_tally(&table)?;
    assert_eq!(before["files"]["country=DE"], 3, "{before}");
    let t = table.to_str().context("utf8")?;
    let v = c.cli_json(&["table", "compact", t])?;
    let jobs: Vec<String> = v["job_ids"]
        .as_array()
        .context("job_ids")?
        .iter()
        .filter_map(|j| j.as_str().map(str::to_string))
        .collect();
    assert_eq!(jobs.len(), 3, "one job per partition: {v}");
    for id in &jobs {
        let s = c.wait_done(id, std::time::Duration::from_secs(120))?;
        assert_eq!(s["state"], "succeeded", "{s}");
    }
    let after = read_tally(&table)?;
    for p in ["country=DE", "country=FR", "country=IT"] {
        assert_eq!(after["files"][p], 1, "{after}");
    }
    assert_eq!(after["rows"], before["rows"], "the same rows: {after}");
    let d = c.cli_json(&["decisions"])?;
    let n = d
        .as_array()
        .context("decisions")?
        .iter()
        .filter(|d| d["kind"] == "compaction" && jobs.iter().any(|j| d["job_id"] == j.as_str()))
        .count();
    assert_eq!(n, 3, "{d}");
    Ok(())
}
