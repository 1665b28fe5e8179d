//! Rebalancing from heartbeats (issue 12 §1 and §2.7): workers' load (CPU, memory,
//! free slots, queue, spilled bytes) reaches the replicated state and the CLI, and a
//! slow worker gets few of a job's tasks: once its first task shows it slow, the
//! fast worker takes the stage's remaining tasks wherever it can finish them sooner,
//! which is a recorded `rebalance` decision with its measured effect. The output is
//! still exactly the oracle's.

use anyhow::{Context, Result};
use integration_tests::oracle::check_spec_output;
use integration_tests::{events_job, gen_clickstream, Cluster, AGGREGATION_SQL};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A two-stage aggregation in 8 scan tasks and 8 reducer tasks (not coalesced, so
/// the second stage has tasks to place once the workers' speeds are known).
fn spec(dir: &Path, name: &str, params: &str) -> Result<PathBuf> {
    events_job(
        dir,
        name,
        &format!("shuffle_partitions = 8\ncoalesce = false\nspeculation = false\n{params}"),
        AGGREGATION_SQL,
    )
}

/// Tasks of the finished job `v` each worker ran (`autopipe status JOB` lists the
/// job's workers with their tasks and load).
fn tasks_done(v: &Value, worker: &str) -> Result<u64> {
    let workers = v["workers"].as_array().context("status workers")?;
    Ok(workers
        .iter()
        .find(|w| w["worker_id"] == worker)
        .and_then(|w| w["tasks_done"].as_u64())
        .unwrap_or(0))
}

fn rebalance_decisions(c: &Cluster, job: &str) -> Result<Vec<Value>> {
    Ok(c.cli_json(&["decisions", job])?
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|d| d["kind"] == "rebalance")
        .collect())
}

/// Worker id by the worker's gRPC address.
fn ids_by_address(c: &Cluster) -> Result<HashMap<String, String>> {
    let ws = c.cli_json(&["workers"])?;
    Ok(ws
        .as_array()
        .context("workers array")?
        .iter()
        .filter_map(|w| {
            Some((
                w["address"]
                    .as_str()?
                    .trim_start_matches("http://")
                    .to_string(),
                w["worker_id"].as_str()?.to_string(),
            ))
        })
        .collect())
}

#[test]
fn a_slow_worker_gets_few_tasks_and_the_placement_is_a_rebalance_decision() -> Result<()> {
    let dir = tempfile::tempdir()?;
    gen_clickstream(&dir.path().join("data"), 20_000, 8)?;
    let on = spec(dir.path(), "rebalanced", "")?;
    let off = spec(dir.path(), "spread", "load_aware_placement = false")?;
    // one slot each; every task takes 100 ms more on the fast worker, 4 s on the slow one
    let mut c = Cluster::start_with(1, 1, &["--test-task-delay-ms", "100"])?;
    c.add_worker_with(1, &["--test-task-delay-ms", "4000"])?;
    c.wait_for(Duration::from_secs(30), "2 workers", |c| {
        Ok(c.alive_workers()? == 2)
    })?;

    // the heartbeats' load is in the replicated state, shown by `autopipe workers`
    c.wait_for(Duration::from_secs(15), "recorded loads", |c| {
        let ws = c.cli_json(&["workers"])?;
        Ok(ws.as_array().is_some_and(|a| {
            a.iter().all(|w| {
                let l = &w["load"];
                l["cpu_cores"].as_u64().unwrap_or(0) >= 1
                    && l["memory_limit_bytes"].as_u64().unwrap_or(0) > 0
                    && l["memory_used_bytes"].as_u64().unwrap_or(0) > 0
                    && l["at_ms"].as_u64().unwrap_or(0) > 0
                    && l["queued"].is_u64()
                    && l["spilled_bytes"].is_u64()
            })
        }))
    })?;
    let ids = ids_by_address(&c)?;
    let fast = ids[c.workers[0].addr.trim_start_matches("http://")].clone();
    let slow = ids[c.workers[1].addr.trim_start_matches("http://")].clone();

    // placed by free slots alone: each stage starts one task on each worker
    let (v, took_off) = c.run(&off)?;
    assert_eq!(v["state"], "succeeded", "{v}");
    check_spec_output(dir.path(), &off)?;
    let job = v["job_id"].as_str().context("job id")?;
    assert!(tasks_done(&v, &slow)? >= 2, "{v}");
    assert!(rebalance_decisions(&c, job)?.is_empty());

    // by load: once the scan showed the slow worker 4 s a task, the fast one takes
    // every reducer, as it finishes all 8 before the slow one would finish one
    let (v, took) = c.run(&on)?;
    assert_eq!(v["state"], "succeeded", "{v}");
    check_spec_output(dir.path(), &on)?;
    let job = v["job_id"].as_str().context("job id")?.to_string();
    let (on_fast, on_slow) = (tasks_done(&v, &fast)?, tasks_done(&v, &slow)?);
    assert_eq!(on_fast + on_slow, 16, "{v}");
    assert!(
        on_fast > 3 * on_slow,
        "the fast worker ran {on_fast} tasks, the slow one {on_slow} (in {took:?})"
    );
    assert!(
        took < took_off,
        "by load it took {took:?}, by free slots {took_off:?}"
    );
    let workers = v["workers"].as_array().context("status workers")?;
    assert!(
        workers
            .iter()
            .all(|w| w["load"]["cpu_cores"].as_u64() >= Some(1)),
        "{workers:?}"
    );

    // one rebalance decision per stage at most, with every worker's load and speed,
    // and once its stage finished, what each worker ran
    let mut rebalances = vec![];
    c.wait_for(Duration::from_secs(15), "the rebalance effect", |c| {
        rebalances = rebalance_decisions(c, &job)?;
        Ok(!rebalances.is_empty()
            && rebalances
                .iter()
                .all(|d| d["effect"].as_str().is_some_and(|e| !e.is_empty())))
    })?;
    let stages: Vec<&str> = rebalances
        .iter()
        .filter_map(|d| d["inputs"]["stage"].as_str())
        .collect();
    let mut unique = stages.clone();
    unique.dedup();
    assert_eq!(stages, unique, "one per stage: {rebalances:?}");
    for d in &rebalances {
        let inputs = &d["inputs"];
        assert!(
            inputs[format!("worker.{slow}")]
                .as_str()
                .is_some_and(|s| s.contains("cores")),
            "{d}"
        );
        assert!(
            d["effect"]
                .as_str()
                .unwrap_or("")
                .contains("tasks per worker"),
            "{d}"
        );
    }
    // the reducer stage's: tasks held back from the slow worker for its speed
    let reducers = rebalances
        .iter()
        .find(|d| d["inputs"]["stage"] == "1")
        .context("a rebalance decision for stage 1")?;
    assert_ne!(reducers["inputs"]["held"], "0", "{reducers}");
    assert!(
        reducers["why"]
            .as_str()
            .is_some_and(|w| w.contains(&slow) && w.contains("fastest")),
        "{reducers}"
    );
    assert!(
        reducers["effect"]
            .as_str()
            .is_some_and(|e| e.contains(&format!("{fast} 8 "))),
        "{reducers}"
    );
    Ok(())
}
