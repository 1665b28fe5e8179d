//! Adaptive execution (issue 12): a stage is re-planned from its inputs' real
//! statistics before it runs. A skewed join partition (one hot user holding 30% of
//! the events) is split into several tasks; a skewed aggregation partition is
//! pre-merged in pieces, then merged once; small reducer partitions are coalesced.
//! Each job ends with exactly the oracle's rows, and the decisions say what was done,
//! why, and what it measured.

use anyhow::Result;
use integration_tests::oracle::check_spec_output;
use integration_tests::{
    aggregation_job, cli, gen_clickstream, gen_clickstream_skewed, write_spec, Cluster,
};
use std::path::Path;

/// Runs `spec` to its end on `c`: it succeeded with the oracle's rows; its status.
fn run_checked(c: &Cluster, dir: &Path, spec: &Path) -> Result<serde_json::Value> {
    let (v, _) = c.run(spec)?;
    assert_eq!(v["state"], "succeeded", "{v}");
    check_spec_output(dir, spec)?;
    Ok(v)
}

fn decisions(c: &Cluster, job: &str, kind: &str) -> Result<Vec<serde_json::Value>> {
    Ok(c.cli_json(&["decisions", job])?
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|d| d["kind"] == kind)
        .collect())
}

/// events ⋈ users on the user id, shuffled on both sides (no broadcast) into 8
/// partitions, with `params` added to `[job.params]`.
fn skewed_join(dir: &Path, name: &str, params: &str) -> Result<std::path::PathBuf> {
    clickstream_job(
        dir,
        name,
        &format!("shuffle_partitions = 8\nbroadcast_join_max_bytes = 0\n{params}"),
        true,
        "SELECT e.session_id, e.user_id, u.country, e.amount FROM events e JOIN users u ON e.user_id = u.id",
    )
}

/// A job over the clickstream events (and, with `users`, the users) that runs `sql`
/// with `params` in `[job.params]` and writes Parquet to `out/NAME`.
fn clickstream_job(
    dir: &Path,
    name: &str,
    params: &str,
    users: bool,
    sql: &str,
) -> Result<std::path::PathBuf> {
    let spec = dir.join(format!("{name}.toml"));
    let users = match users {
        true => "[[sources]]\nname = \"users\"\nformat = \"csv\"\npath = \"data/users.csv\"\n",
        false => "",
    };
    write_spec(
        &spec,
        &format!(
            r#"
[job]
name = "{name}"
[job.params]
{params}
[[sources]]
name = "events"
format = "parquet"
path = "data/events"
{users}[transform]
sql = "{sql}"
[sink]
format = "parquet"
path = "out/{name}"
"#
        ),
    )?;
    Ok(spec)
}

#[test]
fn a_skewed_join_partition_is_split_by_map_outputs_and_the_rows_are_exact() -> Result<()> {
    let dir = tempfile::tempdir()?;
    gen_clickstream_skewed(&dir.path().join("data"), 200_000, 4, 0.3)?;
    // thresholds scaled to the test's data: the hot partition is several times the
    // median and a few hundred KiB; pieces of 64 KiB hold one map output each
    let skew =
        "skew_factor = 2\nskew_threshold_bytes = \"64KiB\"\ntarget_partition_bytes = \"64KiB\"";
    let spec = skewed_join(dir.path(), "skewed", skew)?;
    let c = Cluster::start(2, 2)?;
    let v = run_checked(&c, dir.path(), &spec)?;
    let id = v["job_id"].as_str().expect("id");
    let splits = decisions(&c, id, "skew_split")?;
    let [d] = splits.as_slice() else {
        panic!("one skewed partition, split once: {splits:?}");
    };
    // the map tasks' key samples name the hot user
    assert_eq!(d["inputs"]["hot_key"], "user_id=1", "{d}");
    let pieces: u64 = d["inputs"]["tasks"].as_str().unwrap_or("0").parse()?;
    assert!(pieces >= 2, "{d}");
    let effect = d["effect"].as_str().unwrap_or_default();
    assert!(effect.contains("max/median"), "the measured effect: {d}");
    // the join stage ran the split partition's pieces as tasks of their own
    let status = c.cli_json(&["status", id])?;
    let join = status["stages"]
        .as_array()
        .and_then(|s| s.last().cloned())
        .expect("a join stage");
    assert!(
        join["tasks_total"].as_u64().unwrap_or(0) >= pieces,
        "{join}"
    );

    // skew_join = false: the same rows, no split
    let off = skewed_join(dir.path(), "unsplit", &format!("{skew}\nskew_join = false"))?;
    let v = run_checked(&c, dir.path(), &off)?;
    let id = v["job_id"].as_str().expect("id");
    assert!(decisions(&c, id, "skew_split")?.is_empty());
    Ok(())
}

/// Per-key totals where one key (the hot user's events, all on key -1) holds 15% of
/// the rows and every other event is a key of its own: the map tasks' partial
/// aggregation gives up (DataFusion skips it when most rows are distinct groups), so
/// the hot key's rows reach one reducer partition unmerged.
fn skewed_aggregation(dir: &Path, name: &str, params: &str) -> Result<std::path::PathBuf> {
    clickstream_job(
        dir,
        name,
        &format!("shuffle_partitions = 32\n{params}"),
        false,
        "SELECT k, count(*) AS n, sum(amount) AS total, max(session_id) AS last_session FROM (SELECT CASE WHEN user_id = 1 THEN -1 ELSE event_id END AS k, amount, session_id FROM events) GROUP BY k",
    )
}

#[test]
fn a_skewed_aggregation_partition_is_pre_merged_in_pieces_and_the_rows_are_exact() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // map tasks of 150k-300k events: past DataFusion's 100k-row probe, their partial
    // aggregates pass rows through
    gen_clickstream_skewed(&dir.path().join("data"), 600_000, 2, 0.15)?;
    let skew =
        "skew_factor = 2\nskew_threshold_bytes = \"64KiB\"\ntarget_partition_bytes = \"64KiB\"";
    let spec = skewed_aggregation(dir.path(), "skewed_agg", skew)?;
    let c = Cluster::start(2, 2)?;
    let v = run_checked(&c, dir.path(), &spec)?;
    let id = v["job_id"].as_str().expect("id");
    let splits = decisions(&c, id, "skew_split")?;
    let [d] = splits.as_slice() else {
        panic!("one skewed partition, pre-merged once: {splits:?}");
    };
    assert_eq!(d["inputs"]["hot_key"], "k=-1", "{d}");
    let pieces: u64 = d["inputs"]["pre_merge_tasks"]
        .as_str()
        .unwrap_or("0")
        .parse()?;
    assert!(pieces >= 2, "{d}");
    assert!(
        d["effect"]
            .as_str()
            .unwrap_or_default()
            .contains("max/median"),
        "the measured effect: {d}"
    );
    // the pre-merge step ran as a stage of its own, after the planned ones
    let status = c.cli_json(&["status", id])?;
    let stages = status["stages"].as_array().expect("stages");
    assert_eq!(stages.len(), 3, "{status}");
    assert_eq!(stages[2]["tasks_total"], pieces, "{status}");
    assert_eq!(
        stages[1]["input_stages"],
        serde_json::json!([0, 2]),
        "{status}"
    );

    // skew_aggregation = false: the same rows, no pre-merge
    let off = skewed_aggregation(
        dir.path(),
        "unmerged",
        &format!("{skew}\nskew_aggregation = false"),
    )?;
    let v = run_checked(&c, dir.path(), &off)?;
    let id = v["job_id"].as_str().expect("id");
    assert!(decisions(&c, id, "skew_split")?.is_empty());
    let status = c.cli_json(&["status", id])?;
    assert_eq!(status["stages"].as_array().map(Vec::len), Some(2));
    Ok(())
}

#[test]
fn small_reducer_partitions_are_coalesced_into_fewer_tasks() -> Result<()> {
    let dir = tempfile::tempdir()?;
    gen_clickstream(&dir.path().join("data"), 20_000, 4)?;
    let on = aggregation_job(dir.path(), "coalesced", "")?;
    let off = aggregation_job(dir.path(), "uncoalesced", "coalesce = false")?;
    let c = Cluster::start(2, 2)?;

    let v = run_checked(&c, dir.path(), &on)?;
    let id = v["job_id"].as_str().expect("id");
    let ds = decisions(&c, id, "coalesce")?;
    let [d] = ds.as_slice() else {
        panic!("one coalesced stage: {ds:?}");
    };
    assert_eq!(d["inputs"]["tasks_before"], "10", "{d}");
    let after: u64 = d["inputs"]["tasks_after"].as_str().unwrap_or("0").parse()?;
    assert!(after < 10, "{d}");
    assert!(
        d["effect"].as_str().unwrap_or_default().contains("ran"),
        "{d}"
    );
    let status = c.cli_json(&["status", id])?;
    assert_eq!(status["stages"][1]["tasks_total"], after, "{status}");

    let v = run_checked(&c, dir.path(), &off)?;
    let id = v["job_id"].as_str().expect("id");
    assert!(decisions(&c, id, "coalesce")?.is_empty());
    let status = c.cli_json(&["status", id])?;
    assert_eq!(status["stages"][1]["tasks_total"], 10, "{status}");
    Ok(())
}

#[test]
fn a_cluster_param_switches_a_rule_off_unless_the_job_pins_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    gen_clickstream(&dir.path().join("data"), 20_000, 4)?;
    let plain = aggregation_job(dir.path(), "plain", "")?;
    let pinned = aggregation_job(dir.path(), "pinned", "coalesce = true")?;
    let c = Cluster::start_full(2, 2, &[], &["--param", "coalesce=false"])?;

    let v = run_checked(&c, dir.path(), &plain)?;
    let id = v["job_id"].as_str().expect("id");
    assert!(
        decisions(&c, id, "coalesce")?.is_empty(),
        "off for the cluster"
    );
    assert_eq!(v["stages"][1]["tasks_total"], 10, "{v}");

    let v = run_checked(&c, dir.path(), &pinned)?;
    let id = v["job_id"].as_str().expect("id");
    assert_eq!(
        decisions(&c, id, "coalesce")?.len(),
        1,
        "the job's pin wins"
    );

    // a cluster default that is not a param is refused at start, naming it
    let out = cli(&[
        "coordinator",
        "--param",
        "colaesce=false",
        "--data-dir",
        dir.path().join("bad").to_str().expect("utf8"),
    ])?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("colaesce"), "{err}");
    Ok(())
}

/// Few users (1 in 100) join the events: DataFusion estimates the filtered user side
/// at a fifth of its file, above the 16 KiB broadcast limit, and plans a shuffled
/// join; at run time the side is a few KiB, so the join runs as a broadcast join and
/// the events are never shuffled.
fn small_build_side(dir: &Path, name: &str, params: &str) -> Result<std::path::PathBuf> {
    small_build_side_where(dir, name, params, "")
}

/// `small_build_side` with `filter` added to the join's `WHERE`.
fn small_build_side_where(
    dir: &Path,
    name: &str,
    params: &str,
    filter: &str,
) -> Result<std::path::PathBuf> {
    clickstream_job(
        dir,
        name,
        &format!("shuffle_partitions = 4\nbroadcast_join_max_bytes = \"16KiB\"\n{params}"),
        true,
        &format!("SELECT u.country, count(*) AS n, sum(e.amount) AS total FROM (SELECT id, country FROM users WHERE id % 100 = 0) u JOIN events e ON u.id = e.user_id {filter} GROUP BY u.country"),
    )
}

#[test]
fn a_join_side_small_at_run_time_is_broadcast_and_the_other_is_not_shuffled() -> Result<()> {
    let dir = tempfile::tempdir()?;
    gen_clickstream(&dir.path().join("data"), 400_000, 4)?;
    let on = small_build_side(dir.path(), "broadcast", "")?;
    let off = small_build_side(dir.path(), "shuffled", "runtime_broadcast = false")?;
    let c = Cluster::start(2, 2)?;

    let v = run_checked(&c, dir.path(), &on)?;
    let id = v["job_id"].as_str().expect("id");
    let ds = decisions(&c, id, "broadcast")?;
    let [d] = ds.as_slice() else {
        panic!("one join broadcast at run time: {ds:?}");
    };
    let fused = d["inputs"]["fused_stage"].as_str().expect("fused stage");
    let fused: usize = fused.parse()?;
    // the probe side's stage never ran: no task, nothing shuffled
    assert_eq!(v["stages"][fused]["tasks_total"], 0, "{v}");
    assert_eq!(v["stages"][fused]["bytes_out"], 0, "{v}");
    assert!(
        d["effect"].as_str().unwrap_or_default().contains("ran"),
        "{d}"
    );

    let v = run_checked(&c, dir.path(), &off)?;
    let id = v["job_id"].as_str().expect("id");
    assert!(decisions(&c, id, "broadcast")?.is_empty());
    assert!(v["stages"][fused]["tasks_total"].as_u64() > Some(0), "{v}");

    // a NOT IN over a constant list joins above it (DataFusion: a collect-left anti
    // join reading the shuffled join on its probe side, row by row): broadcast all
    // the same, the anti join kept above it
    let anti = small_build_side_where(
        dir.path(),
        "broadcast_under_anti",
        "",
        "WHERE e.kind NOT IN (SELECT k FROM (VALUES ('view'), ('click')) t(k))",
    )?;
    let v = run_checked(&c, dir.path(), &anti)?;
    let id = v["job_id"].as_str().expect("id");
    let ds = decisions(&c, id, "broadcast")?;
    let [d] = ds.as_slice() else {
        panic!("one join broadcast at run time: {ds:?}");
    };
    let fused: usize = d["inputs"]["fused_stage"]
        .as_str()
        .expect("fused")
        .parse()?;
    assert_eq!(v["stages"][fused]["tasks_total"], 0, "{v}");
    let plans: Vec<&str> = v["stages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["plan"].as_str())
        .collect();
    assert!(
        plans.iter().any(|p| p.contains("join_type=RightAnti")
            && p.contains("mode=CollectLeft, join_type=Inner")),
        "the anti join stays above the broadcast join: {plans:#?}"
    );
    Ok(())
}

/// Users who signed up in the first 10 of 1,000 days with (or without) events (a
/// filter DataFusion cannot carry over to the events): a semi (anti) join whose build side, the
/// users, is estimated above the 16 KiB broadcast limit and turns out a few KiB. The
/// events (probe side) are then filtered by those users' ids before their shuffle:
/// the rows are the oracle's, the `broadcast` decision says so, and the events'
/// stage shuffles a fraction of what it does with `runtime_broadcast = false`.
#[test]
fn a_semi_or_anti_joins_probe_side_is_filtered_by_a_small_build_side() -> Result<()> {
    let dir = tempfile::tempdir()?;
    gen_clickstream(&dir.path().join("data"), 200_000, 4)?;
    let c = Cluster::start(2, 2)?;
    for (name, exists) in [("semi", "EXISTS"), ("anti", "NOT EXISTS")] {
        let job = |name: &str, params: &str| {
            clickstream_job(
                dir.path(),
                name,
                &format!("shuffle_partitions = 4\nbroadcast_join_max_bytes = \"16KiB\"\n{params}"),
                true,
                &format!("SELECT u.id, u.country FROM users u WHERE u.signup_ts < '2020-09-23' AND {exists} (SELECT 1 FROM events e WHERE e.user_id = u.id)"),
            )
        };
        let on = run_checked(&c, dir.path(), &job(name, "")?)?;
        let id = on["job_id"].as_str().expect("id");
        let ds: Vec<_> = decisions(&c, id, "broadcast")?
            .into_iter()
            .filter(|d| {
                d["what"]
                    .as_str()
                    .unwrap_or("")
                    .contains("keeps only the rows")
            })
            .collect();
        let [d] = ds.as_slice() else {
            panic!("{name}: one probe side filtered: {ds:?}");
        };
        let stage: usize = d["inputs"]["stage"].as_str().expect("stage").parse()?;
        assert!(
            d["inputs"]["join_type"]
                .as_str()
                .unwrap_or("")
                .starts_with("Left"),
            "{d}"
        );
        assert!(
            d["effect"].as_str().unwrap_or_default().contains("ran"),
            "{d}"
        );
        let off = run_checked(
            &c,
            dir.path(),
            &job(&format!("{name}_off"), "runtime_broadcast = false")?,
        )?;
        let off_id = off["job_id"].as_str().expect("id");
        assert!(decisions(&c, off_id, "broadcast")?.is_empty());
        let (filtered, whole) = (
            on["stages"][stage]["bytes_out"].as_u64().expect("bytes"),
            off["stages"][stage]["bytes_out"].as_u64().expect("bytes"),
        );
        assert!(
            filtered * 10 < whole,
            "{name}: the events' stage shuffled {filtered} bytes filtered, {whole} not: {d}\n{}\n{}", on["stages"][stage], off["stages"][stage]
        );
    }
    Ok(())
}
