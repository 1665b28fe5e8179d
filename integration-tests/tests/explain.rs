//! Re-planning made visible (issue 12 §3): `autopipe explain --analyze JOB` shows the
//! plan as a job ran — the reduce stage of `aggregation_job`, planned with 10 tasks,
//! coalesced into fewer on small data, with the `coalesce` decision and its measured
//! effect — in JSON and text, `/api/jobs/{id}/explain` serves the same JSON, and the
//! summary of `submit --wait` lists the job's decisions.

use anyhow::{bail, Result};
use integration_tests::{aggregation_job, cli_env, gen_clickstream, http_get, Cluster};

#[test]
fn explain_analyze_shows_the_coalesced_stage_and_its_decision() -> Result<()> {
    let dir = tempfile::tempdir()?;
    gen_clickstream(&dir.path().join("data"), 20_000, 4)?;
    let spec = aggregation_job(dir.path(), "explained", "")?;
    let spec = spec.to_str().expect("utf8 path");
    let c = Cluster::start(2, 2)?;
    let url = c.url();

    // submit --wait: the summary lists what the system changed
    let out = cli_env(&["submit", spec, "--wait", "--coordinator", &url], &[])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "submit --wait failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("submitted "))
        .expect("the job id")
        .trim()
        .to_string();
    assert!(stdout.contains("  decisions: "), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.contains(" coalesce: "))
        .unwrap_or_else(|| panic!("a coalesce line: {stdout}"));
    assert!(line.contains("; effect: the stage ran"), "{line}");
    assert!(stdout.contains("re-planned: 10 → "), "{stdout}");

    // explain --analyze -o json: the re-planned stage, planned 10 vs actual, the decision
    let v = c.cli_json(&["explain", "--analyze", &id])?;
    assert_eq!(v["job_id"], id.as_str(), "{v}");
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(v["replanned_stages"], serde_json::json!([1]), "{v}");
    let st = &v["stages"][1];
    assert_eq!(st["replanned"], true, "{st}");
    assert_eq!(st["tasks_planned"], 10, "{st}");
    let actual = st["tasks_actual"].as_u64().expect("tasks_actual");
    assert!((1..10).contains(&actual), "{st}");
    let by = st["replanned_by"].as_array().expect("replanned_by");
    let d = by
        .iter()
        .find(|d| d["kind"] == "coalesce")
        .unwrap_or_else(|| panic!("a coalesce decision: {st}"));
    assert_eq!(d["inputs"]["tasks_before"], "10", "{d}");
    let effect = d["effect"].as_str().unwrap_or_default();
    assert!(
        effect.contains(&format!("ran {actual} tasks (planned 10)")),
        "{d}"
    );
    // each task's partition range, together covering the 10 partitions once
    let reads = st["task_reads"].as_array().expect("task_reads");
    assert_eq!(reads.len() as u64, actual, "{st}");
    assert_eq!(reads[0]["start"], 0, "{st}");
    assert_eq!(reads[reads.len() - 1]["end"], 10, "{st}");
    // rows in and out, and the task time spread
    assert!(st["rows_in"].as_u64().unwrap_or(0) > 0, "{st}");
    assert_eq!(st["rows_in"], v["stages"][0]["rows_out"], "{v}");
    assert!(
        st["task_ms"]["min"].as_u64() <= st["task_ms"]["median"].as_u64()
            && st["task_ms"]["median"].as_u64() <= st["task_ms"]["max"].as_u64(),
        "{st}"
    );
    assert_eq!(v["stages"][0]["replanned"], false, "{v}");
    assert_eq!(v["stages"][0]["rows_in"], 20_000, "{v}");

    // the text form says the same
    let out = cli_env(&["explain", "--analyze", &id, "--coordinator", &url], &[])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("{actual} tasks (planned 10): RE-PLANNED")),
        "{text}"
    );
    assert!(
        text.contains(&format!("re-planned by #{} coalesce", d["id"])),
        "{text}"
    );
    assert!(text.contains("    effect: the stage ran"), "{text}");

    // the admin API: the same view, and the stage fields on the job
    let http = c.coordinator.http.as_str();
    let api: serde_json::Value =
        serde_json::from_str(&http_get(http, &format!("/api/jobs/{id}/explain"))?)?;
    assert_eq!(api["stages"], v["stages"], "{api}");
    let job: serde_json::Value =
        serde_json::from_str(&http_get(http, &format!("/api/jobs/{id}"))?)?;
    assert_eq!(job["stages"][1]["tasks_planned"], 10, "{job}");
    assert_eq!(job["stages"][1]["replanned_by"][0], d["id"], "{job}");

    // the dashboard shows each job's re-planned stages and decisions
    let page = http_get(http, "/")?;
    assert!(
        page.contains("replanned_by") && page.contains("tasks_planned"),
        "{page}"
    );

    // without --analyze, the plan of a spec, not run (JSON too)
    let out = cli_env(&["explain", spec, "-o", "json"], &[])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let planned: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(planned.as_array().map(Vec::len), Some(2), "{planned}");
    assert_eq!(
        planned[1]["input_stages"],
        serde_json::json!([0]),
        "{planned}"
    );

    // a job that does not exist is named
    let out = cli_env(
        &["explain", "--analyze", "no-such-job", "--coordinator", &url],
        &[],
    )?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no-such-job"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
