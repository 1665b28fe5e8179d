//! Bounded state and disk (issue 11, section 5). A worker keeps its id across restarts,
//! so a restart leaves one entry, not a dead one beside a new one, and at start it
//! deletes the shuffle directories of jobs the coordinator no longer runs. Finished
//! jobs past `--job-retention` and lost workers past `--lost-worker-retention` leave
//! the coordinator's state. The tests wait on conditions, never on sleeps.

use anyhow::{Context, Result};
use integration_tests::{aggregation_job, cli, gen_clickstream, Cluster};
use std::time::Duration;

/// The coordinator's workers as (id, address, state).
fn workers(c: &Cluster) -> Result<Vec<(String, String, String)>> {
    let v = c.cli_json(&["workers"])?;
    Ok(v.as_array()
        .context("a list of workers")?
        .iter()
        .map(|w| {
            let s = |k: &str| w[k].as_str().unwrap_or_default().to_string();
            (s("worker_id"), s("address"), s("state"))
        })
        .collect())
}

#[test]
fn a_restarted_worker_keeps_its_id_and_deletes_shuffle_files_of_jobs_that_no_longer_run(
) -> Result<()> {
    let mut c = Cluster::start_full(2, 2, &[], &["--heartbeat-timeout", "2"])?;
    let id_of = |c: &Cluster, i: usize| -> Result<String> {
        let addr = &c.workers[i].addr;
        workers(c)?
            .into_iter()
            .find(|(_, a, _)| a == addr)
            .map(|(id, _, _)| id)
            .with_context(|| format!("worker {i} at {addr} is not listed"))
    };
    let id = id_of(&c, 0)?;
    // what a job that ended while the worker was down left behind
    let orphan = c.worker_dir(0).join("shuffle/orphan-job");
    std::fs::create_dir_all(orphan.join("0/0-1"))?;
    std::fs::write(orphan.join("0/0-1/0.arrow"), b"old map output")?;

    // killed and restarted at once (still alive in the state, or just declared lost)
    c.restart_worker(0, 2, &[])?;
    let one_entry_alive_at_new_address = |c: &Cluster| -> Result<bool> {
        let ws = workers(c)?;
        let mine: Vec<_> = ws.iter().filter(|(i, _, _)| *i == id).collect();
        Ok(ws.len() == 2
            && mine.len() == 1
            && mine[0].1 == c.workers[0].addr
            && mine[0].2 == "alive")
    };
    c.wait_for(
        Duration::from_secs(30),
        "the restarted worker under its old id, alive at its new address",
        one_entry_alive_at_new_address,
    )?;
    c.wait_for(
        Duration::from_secs(30),
        "the orphaned shuffle directory to be deleted",
        |_| Ok(!orphan.exists()),
    )?;

    // killed, declared lost, then restarted: alive again, still one entry
    c.workers[0].kill();
    c.wait_for(
        Duration::from_secs(30),
        "the killed worker to be lost",
        |c| Ok(workers(c)?.iter().any(|(i, _, s)| *i == id && s == "lost")),
    )?;
    c.restart_worker(0, 2, &[])?;
    c.wait_for(
        Duration::from_secs(30),
        "the lost worker back under its old id",
        one_entry_alive_at_new_address,
    )?;
    assert_eq!(id_of(&c, 0)?, id);
    Ok(())
}

#[test]
fn finished_jobs_past_the_retention_and_long_lost_workers_leave_the_state() -> Result<()> {
    let dir = tempfile::tempdir()?;
    gen_clickstream(&dir.path().join("data"), 2_000, 2)?;
    let mut c = Cluster::start_full(
        1,
        2,
        &[],
        &[
            "--job-retention",
            "1,7d",
            "--lost-worker-retention",
            "1s",
            "--heartbeat-timeout",
            "2",
        ],
    )?;
    let mut ids = vec![];
    for name in ["first", "second"] {
        let spec = aggregation_job(dir.path(), name, "")?;
        let (v, _) = c.run(&spec)?;
        assert_eq!(v["state"], "succeeded", "{v}");
        ids.push(v["job_id"].as_str().context("job id")?.to_string());
    }
    c.wait_for(
        Duration::from_secs(30),
        "only the newest finished job to be listed",
        |c| {
            let v = c.cli_json(&["jobs"])?;
            let listed: Vec<&str> = v
                .as_array()
                .context("a list of jobs")?
                .iter()
                .filter_map(|j| j["job_id"].as_str())
                .collect();
            Ok(listed == [ids[1].as_str()])
        },
    )?;
    let url = c.url();
    let out = cli(&["status", &ids[0], "--coordinator", &url])?;
    assert!(!out.status.success(), "the forgotten job is gone");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not exist"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // a worker lost for longer than the retention is pruned; the other stays
    c.add_worker(1)?;
    c.wait_for(Duration::from_secs(30), "two alive workers", |c| {
        Ok(c.alive_workers()? == 2)
    })?;
    c.workers[1].kill();
    c.wait_for(
        Duration::from_secs(30),
        "the killed worker to be pruned",
        |c| Ok(workers(c)?.len() == 1 && c.alive_workers()? == 1),
    )?;
    Ok(())
}
