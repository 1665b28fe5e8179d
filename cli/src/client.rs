//! The job client: submit, status, jobs, workers, cancel and the live progress view,
//! over the coordinator's gRPC services.

use anyhow::{anyhow, Result};
use autopipe_common::auth::{authed, AuthChannel};
use autopipe_common::error::Error;
use autopipe_common::spec::PipelineSpec;
use autopipe_common::util::fmt_bytes;
use autopipe_coordinator::api::json::rfc3339;
use autopipe_proto::{self as pb, ShortName};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::Path;
use std::time::{Duration, Instant};

/// Connects to the leader of the coordinator group: the first reachable address of a
/// comma-separated list names it (a lone coordinator leads itself).
pub async fn connect(coordinators: &str) -> Result<AuthChannel> {
    let (ch, url) = connect_first(coordinators).await?;
    let mut c = pb::admin_service_client::AdminServiceClient::new(ch.clone());
    let mut req = tonic::Request::new(pb::MemberStatusRequest {});
    req.set_timeout(Duration::from_secs(3));
    let me = match c.member_status(req).await {
        Ok(m) => m.into_inner(),
        // an older coordinator without the call: use it as it is
        Err(s) if s.code() == tonic::Code::Unimplemented => return Ok(ch),
        Err(s) => return Err(anyhow!("coordinator at {url}: {}", s.message())),
    };
    if me.role == pb::MemberRole::Leader as i32 {
        return Ok(ch);
    }
    let mut c = pb::admin_service_client::AdminServiceClient::new(ch);
    let st = c
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .map_err(|s| anyhow!("coordinator at {url}: {}", s.message()))?
        .into_inner();
    if st.leader_address.is_empty() {
        return Err(anyhow!(
            "the coordinator group has no leader now (asked {url}); see `autopipe cluster`"
        ));
    }
    Ok(connect_first(&st.leader_address).await?.0)
}

/// Connects to the first reachable coordinator of a comma-separated list, leader or not.
pub async fn connect_any(coordinators: &str) -> Result<AuthChannel> {
    Ok(connect_first(coordinators).await?.0)
}

async fn connect_first(coordinators: &str) -> Result<(AuthChannel, String)> {
    let mut last = String::new();
    for addr in coordinators
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let url = autopipe_common::tls::url(addr);
        let ep = match autopipe_common::tls::endpoint(addr) {
            // every call's response must start within the RPC deadline (streams such
            // as WatchJob then run unbounded)
            Ok(ep) => ep
                .connect_timeout(Duration::from_secs(3))
                .timeout(autopipe_common::shuffle::RPC_TIMEOUT),
            Err(e) => {
                last = format!("'{addr}' is not a valid address: {e}");
                continue;
            }
        };
        match ep.connect().await {
            // every call carries the token (`--auth-token-file`, AUTOPIPE_AUTH_TOKEN)
            Ok(ch) => return Ok((authed(ch), url)),
            Err(e) => {
                last = format!(
                "cannot reach coordinator at {url}: {e} (is `autopipe coordinator` running there?)"
            )
            }
        }
    }
    if last.is_empty() {
        last = "no coordinator address given (--coordinator)".into();
    }
    Err(anyhow!(last))
}

/// Prints the coordinator group (text table or JSON).
pub fn print_cluster(c: &pb::ClusterStatusResponse, as_json: bool) -> Result<()> {
    if as_json {
        let v = autopipe_coordinator::api::cluster::cluster_json(c);
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    match c.leader_id {
        0 => println!("leader: none"),
        id => println!("leader: {id} at {}", c.leader_address),
    }
    println!(
        "{:>4} {:<22} {:<10} {:>6} {:>8} {:>8} {:>8}",
        "ID", "ADDRESS", "ROLE", "TERM", "COMMIT", "APPLIED", "SNAPSHOT"
    );
    for m in &c.members {
        if !m.error.is_empty() {
            println!("{:>4} {:<22} unreachable: {}", m.id, m.address, m.error);
            continue;
        }
        println!(
            "{:>4} {:<22} {:<10} {:>6} {:>8} {:>8} {:>8}",
            m.id,
            m.address,
            pb::MemberRole::name_of(m.role),
            m.term,
            m.commit,
            m.applied,
            m.snapshot_index
        );
    }
    Ok(())
}

/// Prints the decision log.
pub fn print_decisions(ds: &[pb::Decision], as_json: bool) -> Result<()> {
    if as_json {
        let v: Vec<_> = ds
            .iter()
            .map(autopipe_coordinator::api::json::decision_json)
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if ds.is_empty() {
        println!("no decisions");
    }
    for d in ds {
        // the fleet's decisions (scale_up, scale_down) belong to no job
        let scope = if d.job_id.is_empty() {
            "cluster".to_string()
        } else {
            format!("job {}", d.job_id)
        };
        println!(
            "#{} {} {scope} at {}",
            d.id,
            pb::DecisionKind::name_of(d.kind),
            time(d.at_ms)
        );
        println!("  what:   {}", d.what);
        println!("  why:    {}", d.why);
        let mut inputs: Vec<_> = d.inputs.iter().collect();
        inputs.sort();
        let inputs: Vec<String> = inputs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("  inputs: {}", inputs.join(" "));
        if !d.effect.is_empty() {
            println!("  effect: {}", d.effect);
        }
    }
    Ok(())
}

/// Reads, validates and normalizes a spec file (relative paths against its directory).
pub fn load_spec(path: &Path) -> Result<PipelineSpec> {
    let origin = path.display().to_string();
    let spec = PipelineSpec::from_file(path)?;
    let base = path
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .unwrap_or(Path::new("."));
    let base = std::fs::canonicalize(base).unwrap_or_else(|_| base.to_path_buf());
    Ok(spec.normalize(&base, &origin)?)
}

/// Submits a normalized spec under the idempotency key `request_id`; returns the job
/// id. A transient failure (no leader yet, a leader change, a lost answer) is retried
/// with the same key against the group's leader, so a retry never starts a second job.
pub async fn submit(
    coordinators: &str,
    spec: &PipelineSpec,
    origin: &str,
    request_id: &str,
) -> Result<String> {
    let req = pb::SubmitJobRequest {
        spec: Some(pb::submit_job_request::Spec::SpecJson(
            serde_json::to_string(spec)?,
        )),
        spec_origin: origin.to_string(),
        request_id: request_id.to_string(),
    };
    let policy = autopipe_common::retry::RetryPolicy {
        base: Duration::from_millis(200),
        cap: Duration::from_secs(1),
        max_attempts: 5,
    };
    let r = policy
        .run(|| {
            let req = req.clone();
            async move {
                let ch = connect(coordinators)
                    .await
                    .map_err(|e| Error::Transient(e.to_string()))?;
                let mut c = pb::job_service_client::JobServiceClient::new(ch);
                c.submit_job(req)
                    .await
                    .map(|r| r.into_inner().job_id)
                    .map_err(|s| Error::from_status(&s))
            }
        })
        .await;
    r.map_err(|e| anyhow!("{origin}: {e}"))
}

/// An RFC 3339 timestamp of `ms` (ms since the epoch), "-" for 0 (not yet).
pub fn time(ms: u64) -> String {
    rfc3339(ms).unwrap_or_else(|| "-".into())
}

/// Human state name.
pub fn state_name(s: i32) -> String {
    pb::JobState::try_from(s)
        .map(|s| s.as_str_name().to_ascii_lowercase())
        .unwrap_or_else(|_| "unknown".into())
}

fn is_terminal(s: i32) -> bool {
    matches!(
        pb::JobState::try_from(s),
        Ok(pb::JobState::Succeeded | pb::JobState::Failed | pb::JobState::Cancelled)
    )
}

/// Follows a job until it ends, with progress when `progress`: a bar at a terminal,
/// else (stdout a file or a pipe: a CI log, a scheduler) a line at the start, at each
/// state or stage change, and at most every `PROGRESS_LINE_EVERY` while tasks
/// finish. Returns the final status.
pub async fn watch(ch: AuthChannel, job_id: &str, progress: bool) -> Result<pb::JobStatus> {
    let mut c = pb::job_service_client::JobServiceClient::new(ch);
    let started = Instant::now();
    let lines = progress && !std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut printed: Option<(i32, usize, u32)> = None;
    let mut printed_at = Instant::now();
    let bar = if progress && !lines {
        let b = ProgressBar::new(1);
        b.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} tasks  {msg}",
            )
            .expect("valid template"),
        );
        b.enable_steady_tick(Duration::from_millis(200));
        Some(b)
    } else {
        None
    };
    let mut last = None;
    // Reconnect the watch stream if it drops (coordinator restart), until the job ends.
    for _ in 0..100 {
        let mut stream = match c
            .watch_job(pb::WatchJobRequest {
                job_id: job_id.into(),
                keepalive_seconds: 0,
            })
            .await
        {
            Ok(s) => s.into_inner(),
            Err(s) if s.code() == tonic::Code::NotFound => return Err(anyhow!("{}", s.message())),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        while let Ok(Some(st)) = stream.message().await {
            if lines {
                let stages_done = st
                    .stages
                    .iter()
                    .filter(|s| s.tasks_done == s.tasks_total)
                    .count();
                let now = (st.state, stages_done, st.tasks_done);
                let moved = printed
                    .is_none_or(|(state, stages, _)| (state, stages) != (st.state, stages_done));
                let ticked = printed.is_some_and(|(_, _, tasks)| tasks != st.tasks_done)
                    && printed_at.elapsed() >= PROGRESS_LINE_EVERY;
                if moved || ticked {
                    println!(
                        "[{:.1}s] {} {}: stages {stages_done}/{}, tasks {}/{}, rows in {}",
                        started.elapsed().as_secs_f64(),
                        st.job_id,
                        state_name(st.state),
                        st.stages.len(),
                        st.tasks_done,
                        st.tasks_total,
                        st.rows_in
                    );
                    printed = Some(now);
                    printed_at = Instant::now();
                }
            }
            if let Some(b) = &bar {
                b.set_length(st.tasks_total as u64);
                b.set_position(st.tasks_done as u64);
                let secs = started.elapsed().as_secs_f64().max(0.001);
                let stages_done = st
                    .stages
                    .iter()
                    .filter(|s| s.tasks_done == s.tasks_total)
                    .count();
                b.set_message(format!(
                    "{} | stages {}/{} | {:.0} rows/s",
                    state_name(st.state),
                    stages_done,
                    st.stages.len(),
                    st.rows_in as f64 / secs
                ));
            }
            let done = is_terminal(st.state);
            last = Some(st);
            if done {
                if let Some(b) = &bar {
                    b.finish_and_clear();
                }
                return Ok(last.expect("just set"));
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    last.ok_or_else(|| anyhow!("lost the watch on job {job_id}"))
}

/// The longest `watch` goes without a progress line while tasks finish (stdout not
/// a terminal).
const PROGRESS_LINE_EVERY: Duration = Duration::from_secs(10);

/// JSON view of a job: the HTTP admin API's (`/api/jobs/ID`).
pub fn job_json(j: &pb::JobStatus) -> serde_json::Value {
    autopipe_coordinator::api::json::job_json(j)
}

/// The human summary printed at the end of a job.
pub fn summary(j: &pb::JobStatus, wall: Duration) -> String {
    let mut s = format!(
        "job {} {} in {:.2}s\n",
        j.job_id,
        state_name(j.state),
        wall.as_secs_f64()
    );
    s += &format!("  rows in:   {}  ({})\n", j.rows_in, fmt_bytes(j.bytes_in));
    s += &format!(
        "  rows out:  {}  ({})\n",
        j.rows_out,
        fmt_bytes(j.bytes_out)
    );
    if j.bad_records > 0 {
        s += &format!(
            "  bad records: {}  (dead letters in {})\n",
            j.bad_records, j.dead_letter_path
        );
    }
    if let Some(st) = &j.stream {
        s += &format!(
            "  kafka:     topic {}, {} batches committed, lag {} records, {} consumer task(s), input {:.0} records/s\n",
            st.topic,
            st.batches,
            st.lag,
            st.tasks.len(),
            st.input_records_per_s
        );
        for p in &st.partitions {
            let show = |v: i64| if v >= 0 { v.to_string() } else { "-".into() };
            s += &format!(
                "    partition {:>3}  task {:>2}  offset {:>10}  high watermark {:>10}  lag {:>8}\n",
                p.partition,
                p.task,
                show(p.offset),
                show(p.high_watermark),
                show(p.lag)
            );
        }
    }
    s += &format!(
        "  stages:    {}  (tasks {}, attempts {})\n",
        j.stages.len(),
        j.tasks_total,
        j.task_attempts
    );
    // Stage spans relative to submission: where a job's time went.
    let rel = |ms: u64| ms.saturating_sub(j.submitted_at_ms) as f64 / 1000.0;
    for st in &j.stages {
        let span = if st.finished_at_ms > 0 {
            format!(
                "  {:.3}s–{:.3}s (slowest task {} ms)",
                rel(st.started_at_ms),
                rel(st.finished_at_ms),
                st.task_ms_max
            )
        } else {
            String::new()
        };
        // a stage re-planned from its inputs' statistics ran other tasks than planned
        let replanned = if st.replanned_by.is_empty() {
            String::new()
        } else {
            format!(
                "  re-planned: {} → {} tasks",
                st.tasks_planned, st.tasks_total
            )
        };
        s += &format!(
            "    stage {} {:<4} tasks {:>3}/{:<3} rows {:>10}  {:>10}{span}{replanned}\n",
            st.stage_id,
            pb::StageKind::name_of(st.kind),
            st.tasks_done,
            st.tasks_total,
            st.rows_out,
            fmt_bytes(st.bytes_out)
        );
    }
    s += &format!("  submitted: {}\n", time(j.submitted_at_ms));
    if j.finished_at_ms > 0 {
        s += &format!(
            "  finished:  {} ({:.3}s after submission)\n",
            time(j.finished_at_ms),
            rel(j.finished_at_ms)
        );
    }
    s += &format!("  output:    {} ({} files)\n", j.output_path, j.files_out);
    if let Some(e) = &j.error {
        s += &format!("  error:     {}\n", e.message);
    }
    if !j.workers.is_empty() {
        s += "  workers:   (tasks done/running, load from heartbeats)\n";
        for w in &j.workers {
            s += &format!(
                "    {:<12} {:<6} tasks {:>4}/{:<3} {}\n",
                w.worker_id,
                pb::WorkerState::name_of(w.state),
                w.tasks_done,
                w.tasks_running,
                load_line(w.load.as_ref())
            );
        }
    }
    if !j.waiting_reason.is_empty() {
        s += &format!(
            "  WAITING:   {:.0}s: {}\n",
            autopipe_common::util::now_ms().saturating_sub(j.waiting_since_ms) as f64 / 1000.0,
            j.waiting_reason
        );
    }
    s
}

/// The summary's lines on what the system changed in a job: one per decision (kind,
/// what, effect). `explain_hint`: the cluster outlives the command, so `explain
/// --analyze` can show more.
pub fn decisions_summary(ds: &[pb::Decision], explain_hint: bool) -> String {
    if ds.is_empty() {
        return "  decisions: none\n".into();
    }
    let hint = match ds.first() {
        Some(d) if explain_hint => {
            format!(
                "  (`autopipe explain --analyze {}` shows the plan as run)",
                d.job_id
            )
        }
        _ => String::new(),
    };
    let mut s = format!("  decisions: {}{hint}\n", ds.len());
    for d in ds {
        s += &format!(
            "    {}\n",
            autopipe_coordinator::api::explain::decision_line(d)
        );
    }
    s
}

/// The decisions the coordinator took for job `job_id`, oldest first.
pub async fn job_decisions(ch: AuthChannel, job_id: &str) -> Result<Vec<pb::Decision>> {
    let mut c = pb::admin_service_client::AdminServiceClient::new(ch);
    Ok(c.list_decisions(pb::ListDecisionsRequest {
        job_id: job_id.to_string(),
    })
    .await
    .map_err(|s| anyhow!("decisions of job {job_id}: {}", s.message()))?
    .into_inner()
    .decisions)
}

/// Prints one job as text or JSON.
pub fn print_job(j: &pb::JobStatus, json_out: bool) {
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&job_json(j)).expect("json")
        );
    } else {
        let wall = Duration::from_millis(j.finished_at_ms.saturating_sub(j.submitted_at_ms));
        print!("{}", summary(j, wall));
    }
}

/// A worker's recorded load in one line: CPU of its cores, memory of its tasks'
/// memory, free slots, queue, spilled bytes, and why placement avoids it (HOT).
pub fn load_line(l: Option<&pb::WorkerLoad>) -> String {
    let Some(l) = l else {
        return "-".into();
    };
    let mut s = format!(
        "cpu {:.0}%/{} cores  mem {}/{}  free {}  queued {}  spilled {}",
        l.cpu_percent,
        l.cpu_cores,
        fmt_bytes(l.memory_used_bytes),
        fmt_bytes(l.memory_limit_bytes),
        l.free_slots,
        l.queued,
        fmt_bytes(l.spilled_bytes)
    );
    if !l.hot.is_empty() {
        s += &format!("  HOT: {}", l.hot);
    }
    s
}

/// Exit status for a finished job.
pub fn job_ok(j: &pb::JobStatus) -> bool {
    j.state == pb::JobState::Succeeded as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(id: u64, kind: &str, effect: &str) -> pb::Decision {
        pb::Decision {
            id,
            job_id: "j".into(),
            kind: pb::DecisionKind::from_short_name(kind).expect("a kind") as i32,
            what: format!("stage 1 changed by {kind}"),
            effect: effect.into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_summary_lists_each_decision_on_one_line() {
        let s = decisions_summary(
            &[
                decision(3, "coalesce", "the stage ran 2 tasks (planned 10)"),
                decision(5, "speculation", ""),
            ],
            true,
        );
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines.len(), 3, "{s}");
        assert_eq!(
            lines[0],
            "  decisions: 2  (`autopipe explain --analyze j` shows the plan as run)"
        );
        assert_eq!(
            lines[1],
            "    #3 coalesce: stage 1 changed by coalesce; effect: the stage ran 2 tasks (planned 10)"
        );
        assert!(lines[2].ends_with("effect: not measured yet"), "{s}");
        assert_eq!(decisions_summary(&[], true), "  decisions: none\n");
        let local = decisions_summary(&[decision(3, "coalesce", "")], false);
        assert!(local.starts_with("  decisions: 1\n"), "{local}");
    }

    #[test]
    fn the_summary_shows_a_replanned_stage_planned_against_actual_tasks() {
        let j = pb::JobStatus {
            job_id: "j".into(),
            stages: vec![pb::StageStatus {
                stage_id: 1,
                kind: pb::StageKind::Sink as i32,
                tasks_total: 2,
                tasks_done: 2,
                tasks_planned: 10,
                replanned_by: vec![3],
                ..Default::default()
            }],
            ..Default::default()
        };
        let s = summary(&j, Duration::from_secs(1));
        assert!(s.contains("re-planned: 10 → 2 tasks"), "{s}");
    }
}
