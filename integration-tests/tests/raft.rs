//! Three coordinator processes in one raft group, three workers that know all of them.
//! The leader is SIGKILLed while a multi-stage job runs: a new leader is elected, the
//! job completes with exactly the oracle's rows (nothing lost, nothing duplicated),
//! and the killed member, restarted, catches up. Membership changes while a job runs.

use anyhow::Result;
use autopipe_common::spec::PipelineSpec;
use integration_tests::oracle::check_spec_output;
use integration_tests::{files_under, gen_clickstream, join_job, wait_until, Group};
use std::path::Path;
use std::time::Duration;

/// True when, in `autopipe cluster` output `c`, member `id` is a follower that has
/// applied everything the leader has committed.
fn follows(c: &serde_json::Value, id: u64) -> bool {
    let m = c["members"].as_array().cloned().unwrap_or_default();
    let commit = m
        .iter()
        .find(|m| m["role"] == "leader")
        .and_then(|m| m["commit"].as_u64());
    commit.is_some()
        && m.iter().any(|m| {
            m["id"].as_u64() == Some(id)
                && m["role"] == "follower"
                && m["applied"].as_u64() >= commit
        })
}

/// The voters the leader lists in `autopipe cluster` output `c`.
fn voters(c: &serde_json::Value) -> Vec<u64> {
    c["members"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["role"] == "leader")
        .and_then(|m| m["voters"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_u64())
        .collect()
}

fn job_state(g: &Group, id: &str) -> Result<serde_json::Value> {
    g.cli_json(&["status", id])
}

#[test]
fn the_leader_dies_mid_job_and_the_job_completes_exactly_once() -> Result<()> {
    let dir = tempfile::tempdir()?;
    gen_clickstream(&dir.path().join("data"), 20_000, 4)?;
    let spec = join_job(dir.path(), "failover")?;
    // every task takes at least 400 ms, so the job is still running at the kill
    let mut g = Group::start(3, 3, 2, &["--test-task-delay-ms", "400"])?;
    let v = g.cli_json(&["submit", spec.to_str().expect("utf8")])?;
    let id = v["job_id"].as_str().expect("job id").to_string();
    wait_until(Duration::from_secs(60), "the first finished task", || {
        let v = job_state(&g, &id)?;
        Ok(v["tasks_done"].as_u64().unwrap_or(0) > 0)
    })?;
    let v = job_state(&g, &id)?;
    assert_eq!(
        v["state"], "running",
        "the job must still run at the kill: {v}"
    );
    let old = g.leader()?.expect("a leader");
    g.kill(old);

    wait_until(Duration::from_secs(30), "a new leader", || {
        Ok(g.leader()?.is_some_and(|l| l != old))
    })?;
    wait_until(Duration::from_secs(120), "the job to finish", || {
        let v = job_state(&g, &id)?;
        Ok(v["state"] != "queued" && v["state"] != "running" && v["state"] != "committing")
    })?;
    let v = job_state(&g, &id)?;
    assert_eq!(v["state"], "succeeded", "{v}");
    check_spec_output(dir.path(), &spec)?;
    // one job, one copy of its files: no retry left extra output
    let jobs = g.cli_json(&["jobs"])?;
    assert_eq!(jobs.as_array().map(Vec::len), Some(1), "{jobs}");
    let files = files_under(&dir.path().join("out/failover"));
    assert!(files.iter().any(|f| f == "_SUCCESS"), "{files:?}");
    assert_eq!(
        files.len() as u64 - 1,
        v["files_out"].as_u64().unwrap_or(0),
        "{files:?}"
    );

    // the killed member comes back and catches up with the leader
    g.start_coordinator(old, &[])?;
    wait_until(
        Duration::from_secs(30),
        "the restarted member to catch up",
        || Ok(follows(&g.cluster()?, old)),
    )?;
    // it can lead again
    let c = g.cli_json(&["admin", "transfer-leader", &old.to_string()])?;
    assert_eq!(c["leader_id"].as_u64(), Some(old), "{c}");
    // and its state is the group's: it knows the finished job
    let out =
        integration_tests::cli(&["status", &id, "--coordinator", &g.peers[&old], "-o", "json"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn members_are_added_and_removed_while_a_job_runs() -> Result<()> {
    let dir = tempfile::tempdir()?;
    gen_clickstream(&dir.path().join("data"), 20_000, 4)?;
    let spec = join_job(dir.path(), "membership")?;
    let mut g = Group::start(3, 3, 2, &["--test-task-delay-ms", "300"])?;
    let v = g.cli_json(&["submit", spec.to_str().expect("utf8")])?;
    let id = v["job_id"].as_str().expect("job id").to_string();

    let st = job_state(&g, &id)?["state"].clone();
    assert!(st == "queued" || st == "running", "{st}");
    // add member 4, then start it joining the group
    let port = integration_tests::free_ports(1)?[0];
    let addr4 = format!("127.0.0.1:{port}");
    let c = g.cli_json(&["admin", "add-coordinator", "4", &addr4])?;
    assert!(
        c["members"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["id"] == 4)),
        "{c}"
    );
    // a learner until it has caught up: the quorum does not count it yet
    assert!(!voters(&g.cluster()?).contains(&4), "added as a voter");
    g.peers.insert(4, addr4);
    g.start_coordinator(4, &["--join"])?;
    wait_until(Duration::from_secs(30), "member 4 to catch up", || {
        Ok(follows(&g.cluster()?, 4))
    })?;
    wait_until(
        Duration::from_secs(30),
        "member 4 promoted to voter",
        || Ok(voters(&g.cluster()?).contains(&4)),
    )?;

    // remove a follower among the founders
    let leader = g.leader()?.expect("a leader");
    let gone = (1..=3).find(|i| *i != leader).expect("a follower");
    let c = g.cli_json(&["admin", "remove-coordinator", &gone.to_string()])?;
    assert!(
        c["members"]
            .as_array()
            .is_some_and(|m| m.iter().all(|m| m["id"] != gone)),
        "{c}"
    );
    g.kill(gone);
    g.peers.remove(&gone);

    wait_until(Duration::from_secs(120), "the job to finish", || {
        let v = job_state(&g, &id)?;
        Ok(v["state"] != "queued" && v["state"] != "running" && v["state"] != "committing")
    })?;
    assert_eq!(job_state(&g, &id)?["state"], "succeeded");
    check_spec_output(dir.path(), &spec)?;
    let c = g.cluster()?;
    let mut want: Vec<u64> = (1..=4).filter(|i| *i != gone).collect();
    want.sort_unstable();
    assert_eq!(voters(&c), want, "{c}");
    Ok(())
}

#[test]
fn a_wiped_follower_recovers_by_snapshot_after_thousands_of_commands() -> Result<()> {
    let dir = tempfile::tempdir()?;
    gen_clickstream(&dir.path().join("data"), 5_000, 2)?;
    let spec = dir.path().join("wide.toml");
    // 256 reduce tasks (not coalesced): each task is a launch and a success command
    std::fs::write(
        &spec,
        r#"
[job]
name = "wide"
[job.params]
shuffle_partitions = 256
coalesce = false
[[sources]]
name = "events"
format = "parquet"
path = "data/events"
[transform]
sql = "SELECT user_id, count(*) AS n FROM events GROUP BY user_id"
[sink]
format = "parquet"
path = "out/wide"
"#,
    )?;
    let mut g = Group::start_with(3, 3, 4, &[], &["--snapshot-entries", "300"])?;
    let leader_commit = |g: &Group| -> Result<u64> {
        let c = g.cluster()?;
        Ok(c["members"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["role"] == "leader"))
            .and_then(|m| m["commit"].as_u64())
            .unwrap_or(0))
    };
    let mut jobs = 0;
    while leader_commit(&g)? <= 2_000 {
        let v = g.cli_json(&["submit", spec.to_str().expect("utf8"), "--wait"])?;
        assert_eq!(v["state"], "succeeded", "{v}");
        jobs += 1;
        assert!(jobs < 20, "commands do not add up");
    }
    let leader = g.leader()?.expect("a leader");
    let victim = (1..=3).find(|i| *i != leader).expect("a follower");
    g.kill(victim);
    std::fs::remove_dir_all(g.dir.path().join(format!("coord-{victim}")))?;
    // restarted as it would be in production: without founding the group again
    g.start_coordinator(
        victim,
        &[
            "--snapshot-entries",
            "300",
            "--initial-cluster-state",
            "existing",
        ],
    )?;
    let mut last = serde_json::Value::Null;
    let caught_up = wait_until(
        Duration::from_secs(60),
        "the wiped member to catch up",
        || {
            last = g.cluster()?;
            Ok(follows(&last, victim))
        },
    );
    assert!(caught_up.is_ok(), "{caught_up:?}: {last:#}");
    let c = g.cluster()?;
    let back = c["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["id"].as_u64() == Some(victim)))
        .cloned()
        .expect("the member");
    assert!(
        back["snapshot_index"].as_u64().unwrap_or(0) > 1_000,
        "recovered from a snapshot: {back}"
    );
    // its own state (served locally over HTTP) has every job
    let http = &g.coordinators[&victim].http;
    let list: serde_json::Value =
        serde_json::from_str(&integration_tests::http_get(http, "/api/jobs")?)?;
    assert_eq!(list.as_array().map(Vec::len), Some(jobs), "{list}");
    Ok(())
}

/// A job submission sent to one coordinator, without following leader hints.
fn submit_directly(addr: &str, spec: &Path) -> Result<std::result::Result<String, tonic::Status>> {
    let spec = PipelineSpec::from_file(spec)?.normalize(spec.parent().expect("dir"), "t")?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let mut c =
            autopipe_proto::job_service_client::JobServiceClient::connect(format!("http://{addr}"))
                .await?;
        let r = c
            .submit_job(autopipe_proto::SubmitJobRequest {
                spec: Some(autopipe_proto::submit_job_request::Spec::SpecJson(
                    serde_json::to_string(&spec)?,
                )),
                spec_origin: "test".into(),
                ..Default::default()
            })
            .await;
        Ok(r.map(|r| r.into_inner().job_id))
    })
}

#[test]
fn a_partitioned_leader_steps_down_and_the_others_elect_a_new_one() -> Result<()> {
    let dir = tempfile::tempdir()?;
    gen_clickstream(&dir.path().join("data"), 1_000, 1)?;
    let spec = join_job(dir.path(), "partition")?;
    let (mut g, net) = Group::start_behind_proxies(3)?;
    let old = g.leader()?.expect("a leader");
    net.isolate(old as usize - 1, Group::member_ip(old));

    let others: Vec<u64> = (1..=3).filter(|i| *i != old).collect();
    wait_until(
        Duration::from_secs(30),
        "a new leader among the others",
        || {
            let c = g.cluster_at(others[0])?;
            let l = c["leader_id"].as_u64().unwrap_or(0);
            Ok(l != 0 && l != old)
        },
    )?;
    wait_until(
        Duration::from_secs(30),
        "the old leader to step down",
        || {
            let c = g.cluster_at(old)?;
            let me = c["members"]
                .as_array()
                .and_then(|m| m.iter().find(|m| m["id"].as_u64() == Some(old)))
                .cloned()
                .unwrap_or_default();
            Ok(!me["role"].is_null() && me["role"] != "leader")
        },
    )?;
    // a readiness probe takes it out of the API's load balancer; it is still live
    let health = |service: &str| integration_tests::grpc_health(&g.peers[&old], service);
    wait_until(Duration::from_secs(30), "JobService NOT_SERVING", || {
        Ok(health("autopipe.v1.JobService")? == "NOT_SERVING")
    })?;
    assert_eq!(health("")?, "SERVING");
    // it refuses writes; the new leader takes them
    match submit_directly(&g.peers[&old], &spec)? {
        Err(s) => assert!(s.message().contains("not the leader"), "{s:?}"),
        Ok(id) => panic!("the cut-off old leader accepted job {id}"),
    }
    let new = g.cluster_at(others[0])?["leader_id"]
        .as_u64()
        .expect("leader");
    assert!(submit_directly(&g.peers[&new], &spec)?.is_ok());

    // healed, it follows the new leader and catches up
    net.heal();
    wait_until(Duration::from_secs(30), "the old leader to follow", || {
        Ok(follows(&g.cluster_at(new)?, old))
    })?;
    wait_until(Duration::from_secs(30), "JobService SERVING again", || {
        Ok(health("autopipe.v1.JobService")? == "SERVING")
    })?;
    g.kill(old);
    Ok(())
}

/// Hands leadership to member `to` (asking whoever leads now) and waits until the
/// group agrees on it.
fn transfer_leader(g: &Group, to: u64) -> Result<()> {
    let c = g.cli_json(&["admin", "transfer-leader", &to.to_string()])?;
    assert_eq!(c["leader_id"].as_u64(), Some(to), "{c}");
    wait_until(Duration::from_secs(30), "the new leader", || {
        Ok(g.leader()? == Some(to))
    })
}

/// Workers that some coordinator declared lost: listed as lost, or counted in the
/// `worker_lost` alerts of any member.
fn workers_declared_lost(g: &Group) -> Result<Vec<String>> {
    let mut lost: Vec<String> = g
        .cli_json(&["workers"])?
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|w| w["state"] != "alive")
        .map(|w| w["worker_id"].to_string())
        .collect();
    for (id, c) in &g.coordinators {
        let m = integration_tests::http_get(&c.http, "/metrics")?;
        if let Some(l) = m.lines().find(|l| {
            l.starts_with("autopipe_alerts_total{kind=\"worker_lost\"}")
                && l.split_whitespace().last() != Some("0")
        }) {
            lost.push(format!("member {id}: {l}"));
        }
    }
    Ok(lost)
}

#[test]
fn a_former_leader_elected_again_declares_no_worker_lost() -> Result<()> {
    let dir = tempfile::tempdir()?;
    gen_clickstream(&dir.path().join("data"), 20_000, 4)?;
    let spec = join_job(dir.path(), "reelection")?;
    // workers heartbeat every second and are lost after 3 s of silence; each task takes
    // 3 s, so the job (three stages on 4 slots) outlasts both transfers
    let heartbeat_timeout = Duration::from_secs(3);
    let g = Group::start_with(
        3,
        2,
        2,
        &["--test-task-delay-ms", "3000"],
        &["--heartbeat-timeout", "3"],
    )?;
    if g.leader()? != Some(1) {
        transfer_leader(&g, 1)?;
    }
    let v = g.cli_json(&["submit", spec.to_str().expect("utf8")])?;
    let id = v["job_id"].as_str().expect("job id").to_string();
    wait_until(Duration::from_secs(60), "a running task", || {
        let ws = g.cli_json(&["workers"])?;
        Ok(ws.as_array().is_some_and(|a| {
            a.iter()
                .any(|w| w["running_tasks"].as_u64().unwrap_or(0) > 0)
        }))
    })?;

    transfer_leader(&g, 2)?;
    // member 1 now only holds heartbeats older than the timeout
    let since = std::time::Instant::now();
    wait_until(
        Duration::from_secs(30),
        "longer than the heartbeat timeout under leader 2",
        || Ok(since.elapsed() > heartbeat_timeout + Duration::from_secs(1)),
    )?;
    assert_eq!(g.leader()?, Some(2));
    assert_eq!(job_state(&g, &id)?["state"], "running");
    transfer_leader(&g, 1)?;

    wait_until(Duration::from_secs(180), "the job to finish", || {
        let v = job_state(&g, &id)?;
        Ok(v["state"] != "queued" && v["state"] != "running" && v["state"] != "committing")
    })?;
    let v = job_state(&g, &id)?;
    assert_eq!(v["state"], "succeeded", "{v}");
    check_spec_output(dir.path(), &spec)?;
    assert_eq!(g.leader()?, Some(1), "member 1 led to the end");
    let lost = workers_declared_lost(&g)?;
    assert!(lost.is_empty(), "workers declared lost: {lost:?}");
    let ws = g.cli_json(&["workers"])?;
    assert_eq!(ws.as_array().map(Vec::len), Some(2), "{ws}");
    Ok(())
}

/// Issue 11.3: A and B commit an entry while C is down; B's data directory is wiped
/// and B restarts; A dies; C comes back. Without its log B must not vote: C, which
/// lacks the entry, must not lead the group, and once A returns the entry is there
/// on every member.
#[test]
fn a_wiped_member_never_helps_elect_a_leader_that_lacks_committed_entries() -> Result<()> {
    let dir = tempfile::tempdir()?;
    gen_clickstream(&dir.path().join("data"), 2_000, 1)?;
    let spec = join_job(dir.path(), "survivor")?;
    let mut g = Group::start(3, 0, 2, &[])?;
    // C: a member that is not the leader, stopped before the entry
    let first = g.leader()?.expect("a leader");
    let c = (1..=3).find(|m| *m != first).expect("3 members");
    g.kill(c);
    wait_until(
        Duration::from_secs(30),
        "a leader among the other two",
        || Ok(g.leader()?.is_some_and(|l| l != c)),
    )?;
    let a = g.leader()?.expect("a leader");
    let b = (1..=3).find(|m| *m != a && *m != c).expect("3 members");
    // the entry: a job, committed by A and B
    let v = g.cli_json(&["submit", spec.to_str().expect("utf8")])?;
    let id = v["job_id"].as_str().expect("job id").to_string();
    wait_until(Duration::from_secs(30), "B to hold the entry", || {
        Ok(follows(&g.cluster()?, b))
    })?;
    // B loses its disk and restarts with the same arguments; A dies; C returns
    g.kill(b);
    std::fs::remove_dir_all(g.dir.path().join(format!("coord-{b}")))?;
    g.start_coordinator(b, &["--initial-cluster-state", "existing"])?;
    g.kill(a);
    g.start_coordinator(c, &[])?;
    // several election timeouts (1 s each): B does not vote, so C cannot win
    std::thread::sleep(Duration::from_secs(4));
    let leader = g.leader().ok().flatten();
    assert_eq!(leader, None, "B and C elected {leader:?} without the entry");
    // A returns: a leader with the entry, and everyone holds it
    g.start_coordinator(a, &[])?;
    wait_until(Duration::from_secs(30), "a leader", || {
        Ok(g.leader()?.is_some())
    })?;
    let v = g.cli_json(&["status", &id])?;
    assert_eq!(v["job_id"], id.as_str(), "{v}");
    wait_until(Duration::from_secs(30), "B to catch up", || {
        Ok(follows(&g.cluster()?, b))
    })?;
    Ok(())
}
