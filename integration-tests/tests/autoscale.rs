//! Scaling the fleet (issue 12 §2.8): a coordinator with `--autoscale 1..3
//! --provisioner local` starts its one worker itself; a job of 20 slow tasks (a
//! test-only delay per task) makes a backlog on that worker's one slot, and workers
//! are added (`scale_up`); the job's result is the oracle's; once idle past
//! `--idle-timeout` the added workers are released down to MIN (`scale_down`), and
//! a graceful stop of the coordinator leaves no worker process behind.

use anyhow::{bail, Result};
use integration_tests::oracle::check_spec_output;
use integration_tests::{aggregation_job, gen_clickstream, wait_until, Cluster};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Pids of the processes whose command line names a path under `dir`.
fn processes_under(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(false)
        })
        .collect()
}

/// Kills what `processes_under(dir)` finds when the test ends, pass or fail (the
/// coordinator's started workers are not children of this test).
struct Reaper(PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in processes_under(&self.0) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

fn alive_and_released(c: &Cluster) -> Result<(usize, usize)> {
    let ws = c.cli_json(&["workers"])?;
    let count = |s: &str| {
        ws.as_array()
            .map(|a| a.iter().filter(|w| w["state"] == s).count())
            .unwrap_or(0)
    };
    Ok((count("alive"), count("released")))
}

fn cluster_decisions(c: &Cluster, kind: &str) -> Result<Vec<serde_json::Value>> {
    Ok(c.cli_json(&["decisions"])?
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|d| d["kind"] == kind && d["job_id"] == "")
        .collect())
}

#[test]
fn autoscale_adds_workers_under_backlog_and_releases_them_when_idle() -> Result<()> {
    let dir = tempfile::tempdir()?;
    gen_clickstream(&dir.path().join("data"), 20_000, 10)?;
    // 10 map + 10 reduce tasks, 600 ms each on a 1-slot worker: a backlog of seconds
    let spec = aggregation_job(dir.path(), "scaled", "")?;
    let mut c = Cluster::start_full(
        0,
        1,
        &[],
        &[
            "--autoscale",
            "1..3",
            "--provisioner",
            "local",
            "--worker-slots",
            "1",
            "--backlog-timeout",
            "200ms",
            "--idle-timeout",
            "2s",
            "--worker-arg=--test-task-delay-ms=600",
        ],
    )?;
    let reaper = Reaper(c.dir.path().to_path_buf());

    // MIN: the coordinator starts one worker itself
    c.wait_for(Duration::from_secs(30), "the MIN worker", |c| {
        Ok(alive_and_released(c)?.0 == 1)
    })?;
    let up = cluster_decisions(&c, "scale_up")?;
    assert_eq!(up.len(), 1, "{up:?}");
    assert_eq!(up[0]["inputs"]["min"], "1", "{up:?}");

    let id = c.submit(&spec)?;
    let mut most = 1;
    c.wait_for(
        Duration::from_secs(30),
        "workers added for the backlog",
        |c| {
            most = most.max(alive_and_released(c)?.0);
            Ok(most >= 2)
        },
    )?;
    let v = c.wait_done(&id, Duration::from_secs(120))?;
    assert_eq!(v["state"], "succeeded", "{v}");
    check_spec_output(dir.path(), &spec)?;

    // the backlog's requests: 1, then 2 capped by MAX 3 (1 + 1 + 1)
    let up = cluster_decisions(&c, "scale_up")?;
    let backlog: Vec<_> = up
        .iter()
        .filter(|d| d["inputs"]["backlog_tasks"].is_string())
        .collect();
    assert!(!backlog.is_empty(), "{up:?}");
    let added: u64 = backlog
        .iter()
        .map(|d| {
            d["inputs"]["workers_added"]
                .as_str()
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum();
    assert!((1..=2).contains(&added), "MAX 3 caps what is added: {up:?}");
    for d in &backlog {
        assert!(
            d["why"].as_str().unwrap_or("").contains("backlog_timeout"),
            "{d}"
        );
        let ms: u64 = d["inputs"]["backlog_ms"].as_str().unwrap_or("0").parse()?;
        assert!(ms >= 200, "requested before the backlog_timeout: {d}");
    }
    // the effect is measured once the backlog drained
    c.wait_for(Duration::from_secs(10), "the scale_up's effect", |c| {
        Ok(cluster_decisions(c, "scale_up")?
            .iter()
            .filter(|d| d["inputs"]["backlog_tasks"].is_string())
            .all(|d| {
                d["effect"]
                    .as_str()
                    .unwrap_or("")
                    .contains("backlog drained")
            }))
    })?;

    // idle past --idle-timeout: released down to MIN, recorded with why it was safe
    c.wait_for(Duration::from_secs(30), "the fleet back at MIN", |c| {
        let (alive, released) = alive_and_released(c)?;
        Ok(alive == 1 && released >= 1)
    })?;
    c.wait_for(
        Duration::from_secs(20),
        "the released workers stopped",
        |c| {
            let down = cluster_decisions(c, "scale_down")?;
            Ok(!down.is_empty()
                && down
                    .iter()
                    .all(|d| d["effect"].as_str().unwrap_or("").contains("stopped")))
        },
    )?;
    let down = cluster_decisions(&c, "scale_down")?;
    assert_eq!(down.len() as u64, added, "{down:?}");
    for d in &down {
        assert!(d["why"].as_str().unwrap_or("").contains("safe"), "{d}");
        let idle: u64 = d["inputs"]["idle_ms"].as_str().unwrap_or("0").parse()?;
        assert!(idle >= 2_000, "released before the idle_timeout: {d}");
    }
    for d in cluster_decisions(&c, "scale_up")?.iter().chain(&down) {
        eprintln!(
            "{} {}: {}\n  why: {}\n  effect: {}",
            d["kind"], d["inputs"], d["what"], d["why"], d["effect"]
        );
    }
    // a release is not a loss
    let (alive, _) = alive_and_released(&c)?;
    assert_eq!(alive, 1);
    let ws = c.cli_json(&["workers"])?;
    assert!(
        ws.as_array().unwrap().iter().all(|w| w["state"] != "lost"),
        "{ws}"
    );

    // a graceful stop of the coordinator stops the worker it started
    let pid = c.coordinator.child.id();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    wait_until(Duration::from_secs(30), "the coordinator to exit", || {
        Ok(c.coordinator.child.try_wait()?.is_some())
    })?;
    let left = processes_under(c.dir.path());
    if !left.is_empty() {
        bail!("processes left behind: {left:?}");
    }
    drop(reaper);
    Ok(())
}

#[test]
fn a_reversed_autoscale_range_is_refused_with_the_value_named() -> Result<()> {
    let out = integration_tests::cli(&["coordinator", "--autoscale", "3..1"])?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("'3..1'") && err.contains("MIN 3 is above MAX 1"),
        "{err}"
    );
    Ok(())
}
