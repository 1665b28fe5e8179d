//! Dead letters (issue 5, test 6): CSV and NDJSON input with 1% malformed records
//! (wrong field counts, values that do not convert, broken JSON). Exactly those
//! records land in the job's dead-letter directory, with source, file, byte offset
//! and line; the sink gets the oracle's result over the good records only; status,
//! summary and metrics show the count. With `max_bad_record_ratio` below 1% the job
//! fails with that reason, its dead letters still written and nothing in the sink.

use anyhow::Result;
use autopipe_common::spec::PipelineSpec;
use integration_tests::oracle::{actual, assert_same, expected};
use integration_tests::{cli, http_get, metric_sum, Cluster};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// A bad record as the test wrote it: (file name, byte offset, line, raw text).
type Bad = (String, u64, u64, String);

/// Writes `lines` (after an optional header) to `path`, returning the offsets and
/// 1-based line numbers of the lines `bad` marks.
fn write_lines(path: &Path, header: Option<&str>, lines: &[(String, bool)]) -> Result<Vec<Bad>> {
    let name = path
        .file_name()
        .expect("file")
        .to_string_lossy()
        .to_string();
    let mut text = String::new();
    let mut line = 1;
    if let Some(h) = header {
        text.push_str(h);
        text.push('\n');
        line += 1;
    }
    let mut bad = vec![];
    for (l, is_bad) in lines {
        if *is_bad {
            bad.push((name.clone(), text.len() as u64, line, l.clone()));
        }
        text.push_str(l);
        text.push('\n');
        line += 1;
    }
    std::fs::write(path, text)?;
    Ok(bad)
}

/// Orders (CSV, 2 files x 2,500 rows) and refunds (NDJSON, 2 files x 500 lines),
/// every 100th record malformed; the good records also go to `clean/`.
fn write_inputs(dir: &Path) -> Result<Vec<Bad>> {
    let mut all_bad = vec![];
    for sub in [
        "dirty/orders",
        "dirty/refunds",
        "clean/orders",
        "clean/refunds",
    ] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    for f in 0..2 {
        let mut dirty = vec![];
        let mut clean = vec![];
        for i in 0..2_500u64 {
            let id = f * 10_000 + i;
            let good = format!("{id},c{},{}.{:02}", id % 13, id % 500, id % 100);
            let rec = match i % 300 {
                99 => Some(format!("{id},c{}", id % 13)), // a field short
                199 => Some(format!("{id},c{},{}.5,extra", id % 13, id % 7)), // one too many
                299 => Some(format!("{id},c{},lots", id % 13)), // not a DOUBLE
                _ => None,
            };
            match rec {
                Some(r) => dirty.push((r, true)),
                None => {
                    dirty.push((good.clone(), false));
                    clean.push((good, false));
                }
            }
        }
        let header = Some("id,customer,amount");
        all_bad.extend(write_lines(
            &dir.join(format!("dirty/orders/part-{f}.csv")),
            header,
            &dirty,
        )?);
        write_lines(
            &dir.join(format!("clean/orders/part-{f}.csv")),
            header,
            &clean,
        )?;

        let mut dirty = vec![];
        let mut clean = vec![];
        for i in 0..500u64 {
            let good = format!(r#"{{"customer":"c{}","amount":-{}.25}}"#, i % 13, i % 40);
            let rec = match (i % 100, i / 100 % 2) {
                (49, 0) => Some(format!(r#"{{"customer":"c{}","amount":"#, i % 13)), // broken JSON
                (49, _) => Some(format!(r#"{{"customer":"c{}","amount":"n/a"}}"#, i % 13)), // not a DOUBLE
                _ => None,
            };
            match rec {
                Some(r) => dirty.push((r, true)),
                None => {
                    dirty.push((good.clone(), false));
                    clean.push((good, false));
                }
            }
        }
        all_bad.extend(write_lines(
            &dir.join(format!("dirty/refunds/part-{f}.ndjson")),
            None,
            &dirty,
        )?);
        write_lines(
            &dir.join(format!("clean/refunds/part-{f}.ndjson")),
            None,
            &clean,
        )?;
    }
    Ok(all_bad)
}

fn spec(dir: &Path, name: &str, input: &str, params: &str) -> Result<PathBuf> {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"
[job]
name = "{name}"
[job.params]
shuffle_partitions = 4
{params}
[[sources]]
name = "orders"
format = "csv"
path = "{input}/orders"
schema = "id BIGINT, customer VARCHAR, amount DOUBLE"
[[sources]]
name = "refunds"
format = "ndjson"
path = "{input}/refunds"
schema = "customer VARCHAR, amount DOUBLE"
[transform]
sql = "SELECT customer, count(*) AS n, sum(amount) AS total FROM (SELECT customer, amount FROM orders UNION ALL SELECT customer, amount FROM refunds) GROUP BY customer"
[sink]
format = "parquet"
path = "out/{name}"
"#
        ),
    )?;
    Ok(path)
}

fn run(c: &Cluster, spec: &Path) -> Result<serde_json::Value> {
    Ok(c.run(spec)?.0)
}

/// The dead letters of a job, as (file name, offset, line, record), checking that
/// each names its source and error.
fn dead_letters(status: &serde_json::Value) -> Result<Vec<Bad>> {
    let dir = status["dead_letter_path"]
        .as_str()
        .expect("dead_letter_path");
    let dir = dir.strip_prefix("file://").expect("local dead letters");
    let mut out = vec![];
    for e in std::fs::read_dir(dir)? {
        for line in std::fs::read_to_string(e?.path())?.lines() {
            let r: serde_json::Value = serde_json::from_str(line)?;
            let file = r["file"].as_str().expect("file");
            let source = r["source"].as_str().expect("source");
            assert!(
                (source == "orders" && file.ends_with(".csv"))
                    || (source == "refunds" && file.ends_with(".ndjson")),
                "{r}"
            );
            assert!(!r["error"].as_str().unwrap_or("").is_empty(), "{r}");
            out.push((
                file.rsplit('/').next().expect("name").to_string(),
                r["offset"].as_u64().expect("offset"),
                // a task that read its file from the start knows the line
                r["line"].as_u64().unwrap_or(0),
                r["record"].as_str().expect("record").to_string(),
            ));
        }
    }
    Ok(out)
}

#[test]
fn malformed_records_go_to_the_dead_letters_and_the_ratio_limit_fails_the_job() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let bad = write_inputs(dir.path())?;
    assert_eq!(bad.len(), 60, "1% of 6,000 records");
    let c = Cluster::start(2, 2)?;

    // within the limit: the job succeeds on the good records
    let ok = spec(
        dir.path(),
        "tolerant",
        "dirty",
        "max_bad_record_ratio = 0.02",
    )?;
    let v = run(&c, &ok)?;
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(v["bad_records"], 60, "{v}");
    let mut got = dead_letters(&v)?;
    assert_eq!(got.len(), 60, "each bad record exactly once: {got:?}");
    // where a task knew the line, it is the right one
    let want: BTreeSet<(String, u64, String)> = bad
        .iter()
        .map(|b| (b.0.clone(), b.1, b.3.clone()))
        .collect();
    for g in &mut got {
        let b = bad
            .iter()
            .find(|b| b.0 == g.0 && b.1 == g.1)
            .unwrap_or_else(|| panic!("not a bad record: {g:?}"));
        assert!(g.2 == 0 || g.2 == b.2, "line of {g:?}, expected {}", b.2);
    }
    let got: BTreeSet<(String, u64, String)> = got.into_iter().map(|g| (g.0, g.1, g.3)).collect();
    assert_eq!(got, want);
    // the result is the oracle's over the good records only
    let clean = spec(dir.path(), "clean", "clean", "")?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let clean = PipelineSpec::from_file(&clean)?.normalize(dir.path(), "oracle")?;
        let job = PipelineSpec::from_file(&ok)?.normalize(dir.path(), "job")?;
        let (names, types, exp) = expected(&clean).await?;
        let act = actual(&job, &names, &types).await?;
        assert_same("tolerant", exp, act)
    })?;
    // the summary and the metrics show the count
    let url = c.url();
    let id = v["job_id"].as_str().expect("id");
    let text = cli(&["status", id, "--coordinator", &url])?;
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("bad records: 60"), "{text}");
    assert_eq!(
        metric_sum(&c.coordinator.http, "autopipe_bad_records_total")?,
        60.0
    );

    // below 1%: the job fails with that reason; the dead letters are still written
    let strict = spec(
        dir.path(),
        "strict",
        "dirty",
        "max_bad_record_ratio = 0.005",
    )?;
    let v = run(&c, &strict)?;
    assert_eq!(v["state"], "failed", "{v}");
    assert_eq!(v["error"]["class"], "data", "{v}");
    let msg = v["error"]["message"].as_str().unwrap_or("");
    assert!(
        msg.contains("max_bad_record_ratio") && msg.contains("60 of 6000"),
        "{msg}"
    );
    assert_eq!(dead_letters(&v)?.len(), 60);
    assert!(
        !dir.path().join("out/strict").exists()
            || std::fs::read_dir(dir.path().join("out/strict"))?
                .next()
                .is_none(),
        "nothing reached the sink"
    );
    let alerts = http_get(&c.coordinator.http, "/metrics")?;
    assert!(
        alerts.contains("autopipe_alerts_total{kind=\"bad_record_ratio_exceeded\"} 1"),
        "{alerts}"
    );
    Ok(())
}
