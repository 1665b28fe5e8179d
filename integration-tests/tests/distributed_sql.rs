//! 1 coordinator + 3 workers as real processes run a suite of queries over generated
//! data (8 Parquet files, plus CSV and NDJSON copies); each job's output must equal
//! single-process DataFusion on the same files. Also checks /metrics on the
//! coordinator and a worker, that a failing job writes nothing, and that a restarted
//! coordinator still knows its jobs.

use anyhow::{Context, Result};
use autopipe_common::spec::PipelineSpec;
use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use integration_tests::oracle::{actual, assert_same, expected};
use integration_tests::{cli, files_under, http_get, metric_sum, spawn_server, Cluster};
use std::path::{Path, PathBuf};
use std::time::Duration;

struct Case {
    name: &'static str,
    sql: &'static str,
    format: &'static str,
    partition_by: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        name: "filter_projection",
        sql: "SELECT event_id, user_id, amount FROM events WHERE kind = 'purchase' AND amount > 100",
        format: "parquet",
        partition_by: &[],
    },
    Case {
        name: "revenue_by_country",
        sql: "SELECT u.country, count(DISTINCT e.session_id) AS sessions, sum(e.amount) AS revenue FROM events e JOIN users u ON e.user_id = u.id WHERE e.kind = 'purchase' GROUP BY u.country",
        format: "parquet",
        partition_by: &["country"],
    },
    Case {
        name: "left_join",
        sql: "SELECT u.id, u.country, count(e.event_id) AS purchases FROM users u LEFT JOIN events e ON u.id = e.user_id AND e.kind = 'purchase' GROUP BY u.id, u.country",
        format: "csv",
        partition_by: &[],
    },
    Case {
        name: "semi_join",
        sql: "SELECT id, country FROM users WHERE id IN (SELECT user_id FROM events WHERE kind = 'add_to_cart')",
        format: "ndjson",
        partition_by: &[],
    },
    Case {
        name: "anti_join",
        sql: "SELECT id, plan FROM users u WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.user_id = u.id AND e.kind = 'purchase')",
        format: "parquet",
        partition_by: &[],
    },
    Case {
        name: "multi_way_join",
        sql: "SELECT u.plan, c.users_in_country, count(*) AS events, sum(e.amount) AS revenue FROM events e JOIN users u ON e.user_id = u.id JOIN (SELECT country, count(*) AS users_in_country FROM users GROUP BY country) c ON u.country = c.country GROUP BY u.plan, c.users_in_country",
        format: "parquet",
        partition_by: &[],
    },
    Case {
        name: "distinct_dedup",
        sql: "SELECT DISTINCT user_id, kind FROM events",
        format: "parquet",
        partition_by: &[],
    },
    Case {
        name: "row_number_dedup",
        sql: "SELECT user_id, event_id, amount FROM (SELECT user_id, event_id, amount, ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY ts DESC, event_id DESC) AS rn FROM events) t WHERE rn = 1",
        format: "parquet",
        partition_by: &[],
    },
    Case {
        name: "window_functions",
        sql: "SELECT user_id, event_id, sum(amount) OVER (PARTITION BY user_id ORDER BY event_id ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS running, rank() OVER (PARTITION BY session_id ORDER BY event_id) AS r FROM events WHERE kind IN ('purchase', 'add_to_cart')",
        format: "parquet",
        partition_by: &[],
    },
    Case {
        name: "order_by_limit",
        sql: "SELECT event_id, amount FROM events ORDER BY amount DESC, event_id LIMIT 100",
        format: "csv",
        partition_by: &[],
    },
    Case {
        name: "union_all",
        sql: "SELECT user_id, 'purchase' AS src FROM events WHERE kind = 'purchase' UNION ALL SELECT id AS user_id, 'pro_user' AS src FROM users WHERE plan = 'pro'",
        format: "ndjson",
        partition_by: &[],
    },
    Case {
        name: "csv_source",
        sql: "SELECT kind, count(*) AS n, sum(amount) AS total FROM events_csv GROUP BY kind",
        format: "parquet",
        partition_by: &[],
    },
    Case {
        name: "ndjson_source",
        sql: "SELECT user_id, count(*) AS n, max(amount) AS biggest FROM events_json WHERE amount > 0 GROUP BY user_id",
        format: "csv",
        partition_by: &[],
    },
    Case {
        name: "partitioned_csv_sink",
        sql: "SELECT u.plan, u.country, count(*) AS n FROM events e JOIN users u ON e.user_id = u.id GROUP BY u.plan, u.country",
        format: "csv",
        partition_by: &["plan"],
    },
];

fn spec_text(data: &Path, out: &Path, c: &Case) -> String {
    let parts = c
        .partition_by
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
[job]
name = "{name}"

[[sources]]
name = "events"
format = "parquet"
path = "{d}/events"

[[sources]]
name = "users"
format = "csv"
path = "{d}/users.csv"

[[sources]]
name = "events_csv"
format = "csv"
path = "{d}/events_csv"

[[sources]]
name = "events_json"
format = "ndjson"
path = "{d}/events_json"

[transform]
sql = "{sql}"

[sink]
format = "{fmt}"
path = "{o}/{name}"
partition_by = [{parts}]
"#,
        name = c.name,
        d = data.display(),
        o = out.display(),
        sql = c.sql.replace('"', "\\\""),
        fmt = c.format,
    )
}

async fn write_copies(data: &Path) -> Result<()> {
    let ctx = SessionContext::new();
    let events = data.join("events");
    let df = ctx
        .read_parquet(
            events.to_str().expect("utf8"),
            ParquetReadOptions::default(),
        )
        .await?;
    let df = df.select_columns(&["event_id", "user_id", "session_id", "kind", "amount"])?;
    df.clone()
        .write_csv(
            data.join("events_csv/").to_str().expect("utf8"),
            DataFrameWriteOptions::new(),
            None,
        )
        .await?;
    df.write_json(
        data.join("events_json/").to_str().expect("utf8"),
        DataFrameWriteOptions::new(),
        None,
    )
    .await?;
    Ok(())
}

/// Copies of some of `dir/data`'s Parquet and CSV event files into `data/globbed/`,
/// beside files and a subdirectory that the globs `data/globbed/keep-*.parquet` and
/// `data/globbed/keep-*.csv` must skip, and the matching files alone into
/// `data/glob_oracle_*/`. Returns a spec that reads the globs and one that reads
/// the oracle directories, with the same query.
fn glob_specs(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let data = dir.join("data");
    let sorted = |d: &Path, ext: &str| -> Result<Vec<PathBuf>> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(d)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == ext))
            .collect();
        v.sort();
        Ok(v)
    };
    let parquet = sorted(&data.join("events"), "parquet")?;
    let csv = sorted(&data.join("events_csv"), "csv")?;
    let globbed = data.join("globbed");
    let (op, oc) = (
        data.join("glob_oracle_parquet"),
        data.join("glob_oracle_csv"),
    );
    for d in [globbed.join("sub"), op.clone(), oc.clone()] {
        std::fs::create_dir_all(d)?;
    }
    for (from, to) in [
        (&parquet[0], globbed.join("keep-0.parquet")),
        (&parquet[1], globbed.join("keep-1.parquet")),
        (&parquet[2], globbed.join("skip-2.parquet")),
        (&parquet[3], globbed.join("sub/keep-3.parquet")),
        (&parquet[4], globbed.join("keep-4.parquet.bak")),
        (&parquet[0], op.join("keep-0.parquet")),
        (&parquet[1], op.join("keep-1.parquet")),
        (&csv[0], globbed.join("keep-0.csv")),
        (&csv[0], globbed.join("skip-0.csv")),
        (&csv[0], globbed.join("sub/keep-0.csv")),
        (&csv[0], oc.join("keep-0.csv")),
    ] {
        std::fs::copy(from, to)?;
    }
    let spec = |name: &str, events: &str, events_csv: &str| -> Result<PathBuf> {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                r#"
[job]
name = "{name}"
[[sources]]
name = "events"
format = "parquet"
path = "{events}"
[[sources]]
name = "events_csv"
format = "csv"
path = "{events_csv}"
[transform]
sql = "SELECT event_id, amount, 'parquet' AS src FROM events UNION ALL SELECT event_id, amount, 'csv' AS src FROM events_csv"
[sink]
format = "parquet"
path = "out/{name}"
"#
            ),
        )?;
        Ok(path)
    };
    Ok((
        spec(
            "glob_sources",
            "data/globbed/keep-*.parquet",
            "data/globbed/keep-*.csv",
        )?,
        spec(
            "glob_oracle",
            "data/glob_oracle_parquet",
            "data/glob_oracle_csv",
        )?,
    ))
}

#[test]
fn distributed_queries_match_single_process_datafusion() -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let out = dir.path().join("out");
    let g = cli(&[
        "gen",
        "clickstream",
        "--rows",
        "60000",
        "--files",
        "8",
        "--skew",
        "0.1",
        "--out",
        data.to_str().expect("utf8"),
    ])?;
    assert!(
        g.status.success(),
        "gen: {}",
        String::from_utf8_lossy(&g.stderr)
    );
    assert_eq!(std::fs::read_dir(data.join("events"))?.count(), 8);
    rt.block_on(write_copies(&data))?;

    // Every map output crosses Flight here (the TPC-H test covers host-local reads).
    let mut cluster = Cluster::start_with(3, 2, &["--no-host-local-shuffle"])?;
    let mut failures = Vec::new();
    for c in CASES {
        let spec_path = dir.path().join(format!("{}.toml", c.name));
        std::fs::write(&spec_path, spec_text(&data, &out, c))?;
        let res = cluster.cli_json(&["submit", spec_path.to_str().expect("utf8"), "--wait"]);
        let v = match res {
            Ok(v) => v,
            Err(e) => {
                failures.push(format!("{}: {e:#}", c.name));
                continue;
            }
        };
        if v["state"] != "succeeded" {
            failures.push(format!(
                "{}: job ended {}: {}",
                c.name, v["state"], v["error"]
            ));
            continue;
        }
        if v["bytes_in"].as_u64().unwrap_or(0) == 0 || v["rows_in"].as_u64().unwrap_or(0) == 0 {
            failures.push(format!("{}: no input accounted: {v}", c.name));
        }
        let spec = PipelineSpec::from_file(&spec_path)?.normalize(dir.path(), "t")?;
        let r = rt.block_on(async {
            let (names, types, exp) = expected(&spec).await?;
            let act = actual(&spec, &names, &types).await?;
            if v["rows_out"].as_u64() != Some(exp.len() as u64) {
                anyhow::bail!(
                    "{}: job reported rows_out {} but oracle has {}",
                    c.name,
                    v["rows_out"],
                    exp.len()
                );
            }
            assert_same(c.name, exp, act)
        });
        if let Err(e) = r {
            failures.push(format!("{e:#}"));
        }
        // no staging leftovers next to the output
        let leftovers: Vec<_> = std::fs::read_dir(&out)?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("autopipe-staging"))
            .collect();
        if !leftovers.is_empty() {
            failures.push(format!("{}: staging left behind: {leftovers:?}", c.name));
        }
    }
    let multi_stage = cluster.cli_json(&["jobs"])?;
    let stages: Vec<u64> = multi_stage
        .as_array()
        .expect("array")
        .iter()
        .map(|j| j["stages"].as_array().map_or(0, |s| s.len() as u64))
        .collect();
    assert!(
        stages.iter().any(|&s| s >= 3),
        "some queries must run as multi-stage plans: {stages:?}"
    );
    assert!(
        failures.is_empty(),
        "{} of {} queries failed:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );

    // partition_by wrote hive directories
    let files = files_under(&out.join("revenue_by_country"));
    // (and the commit's _SUCCESS manifest, written last)
    assert!(files.iter().any(|f| f == "_SUCCESS"), "{files:?}");
    assert!(
        files
            .iter()
            .all(|f| f == "_SUCCESS" || f.starts_with("country=")),
        "{files:?}"
    );

    // a glob source (relative, as in the README) reads exactly its matching files; the
    // oracle reads directories that hold only those files
    let (glob_spec, oracle_spec) = glob_specs(dir.path())?;
    let v = cluster.cli_json(&["submit", glob_spec.to_str().expect("utf8"), "--wait"])?;
    assert_eq!(v["state"], "succeeded", "{v}");
    rt.block_on(async {
        let spec = PipelineSpec::from_file(&glob_spec)?.normalize(dir.path(), "t")?;
        let oracle = PipelineSpec::from_file(&oracle_spec)?.normalize(dir.path(), "t")?;
        let (names, types, exp) = expected(&oracle).await?;
        let act = actual(&spec, &names, &types).await?;
        assert_same("glob_sources", exp, act)
    })?;

    // a run-time error fails the job and leaves no output
    let bad = dir.path().join("bad.toml");
    let text = spec_text(
        &data,
        &out,
        &Case {
            name: "runtime_error",
            sql: "SELECT CAST(kind AS INT) AS k FROM events",
            format: "parquet",
            partition_by: &[],
        },
    );
    std::fs::write(&bad, text)?;
    let v = cluster.cli_json(&["submit", bad.to_str().expect("utf8"), "--wait"]);
    // --wait exits 1 on a failed job, so cli_json reports an error; read the job list instead
    assert!(v.is_err(), "a failing job must exit non-zero");
    let jobs = cluster.cli_json(&["jobs"])?;
    let last = jobs
        .as_array()
        .and_then(|a| a.last())
        .cloned()
        .expect("a job");
    assert_eq!(last["state"], "failed", "{last}");
    assert!(
        files_under(&out.join("runtime_error")).is_empty(),
        "a failed job must write nothing"
    );

    // metrics on the coordinator and on a worker
    let m = http_get(&cluster.coordinator.http, "/metrics")?;
    assert!(m.contains("autopipe_task_duration_seconds_bucket"), "{m}");
    assert!(m.contains("autopipe_rows_read_total"), "{m}");
    assert!(m.contains("autopipe_bytes_read_total"), "{m}");
    assert!(m.contains("autopipe_bytes_written_total"), "{m}");
    assert!(m.contains("autopipe_rows_written_total"), "{m}");
    assert!(
        m.contains("autopipe_task_errors_total{class=\"permanent\"}"),
        "{m}"
    );
    assert!(m.contains("autopipe_tasks{state=\"running\"}"), "{m}");
    assert!(m.contains("autopipe_jobs{state=\"succeeded\"}"), "{m}");
    // Prometheus conventions: one gauge per raft figure, counters end in _total, a
    // build info, each pipeline's last success
    assert!(m.contains("\nautopipe_raft_term "), "{m}");
    assert!(m.contains("\nautopipe_raft_is_leader 1"), "{m}");
    assert!(!m.contains("autopipe_raft{"), "{m}");
    assert!(
        m.contains("autopipe_decisions_total{kind=\"coalesce\"}"),
        "{m}"
    );
    assert!(m.contains("autopipe_build_info{version=\""), "{m}");
    assert!(
        m.contains("autopipe_pipeline_last_success_timestamp_seconds{pipeline=\""),
        "{m}"
    );
    for line in m
        .lines()
        .filter(|l| l.starts_with("# TYPE ") && l.ends_with(" counter"))
    {
        let name = line.split_whitespace().nth(2).unwrap_or_default();
        assert!(
            m.contains(&format!("\n{name}_total")),
            "counter {name} without _total: {m}"
        );
    }
    let wm = http_get(&cluster.workers[0].http, "/metrics")?;
    assert!(wm.contains("autopipe_worker_tasks_total"), "{wm}");
    assert!(wm.contains("autopipe_worker_rows_written_total"), "{wm}");
    assert!(wm.contains("\nautopipe_worker_slots "), "{wm}");
    assert!(wm.contains("\nautopipe_worker_free_slots "), "{wm}");
    assert!(wm.contains("\nautopipe_worker_memory_limit_bytes "), "{wm}");
    assert!(
        wm.contains("\nautopipe_worker_memory_resident_bytes "),
        "{wm}"
    );
    assert!(wm.contains("\nautopipe_worker_disk_free_bytes "), "{wm}");
    assert!(wm.contains("autopipe_worker_build_info{version=\""), "{wm}");
    let mut served = 0.0;
    for w in &cluster.workers {
        served += metric_sum(&w.http, "autopipe_worker_shuffle_bytes_served_total")?;
    }
    assert!(served > 0.0, "no shuffle data crossed Flight");

    // a restarted coordinator still knows every job and its result
    let before = cluster.cli_json(&["jobs"])?;
    let addr = cluster.coordinator.addr.clone();
    cluster.coordinator.kill();
    let data_dir = cluster.dir.path().join("coord");
    let restarted = spawn_server(&[
        "coordinator",
        "--listen",
        &addr,
        "--http",
        "127.0.0.1:0",
        "--data-dir",
        data_dir.to_str().expect("utf8"),
    ])
    .context("restart coordinator on its old port")?;
    cluster.coordinator = restarted;
    let after = cluster.cli_json(&["jobs"])?;
    let strip = |v: &serde_json::Value| -> Vec<(String, String, u64)> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|j| {
                (
                    j["job_id"].as_str().unwrap_or("").to_string(),
                    j["state"].as_str().unwrap_or("").to_string(),
                    j["rows_out"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    };
    assert_eq!(strip(&before), strip(&after));
    // and keeps running jobs with the workers that reconnect to it
    cluster.wait_for(
        Duration::from_secs(30),
        "workers to heartbeat the restarted coordinator",
        |c| Ok(c.alive_workers()? == 3),
    )?;
    let again = dir.path().join(format!("{}.toml", CASES[1].name));
    let v = cluster.cli_json(&["submit", again.to_str().expect("utf8"), "--wait"])?;
    assert_eq!(v["state"], "succeeded", "{v}");
    // the re-run overwrote its output: still exactly the oracle's rows, no duplicates
    let spec = PipelineSpec::from_file(&again)?.normalize(dir.path(), "t")?;
    rt.block_on(async {
        let (names, types, exp) = expected(&spec).await?;
        let act = actual(&spec, &names, &types).await?;
        assert_same("re-run", exp, act)
    })?;
    Ok(())
}
