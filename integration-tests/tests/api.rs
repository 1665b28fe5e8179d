//! The public gRPC API as a third-party client sees it (issue 14): Python's grpcio,
//! with its standard health-checking and reflection clients, against a cluster that
//! requires a token. Health checks need no token (load balancers and Kubernetes
//! probes carry none) on the coordinator and on a worker; reflection lists the public
//! services and health, not the cluster-internal ones, and describes their methods;
//! autopipe's own services still refuse a call without the token.

use anyhow::{Context, Result};
use integration_tests::kafka::{grpcio_path, python};
use integration_tests::Cluster;
use std::time::Duration;

const TOKEN: &str = "s3cret-api-token";

const CLIENT: &str = r#"
import grpc, json, sys
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from google.protobuf.descriptor_pool import DescriptorPool

def health(addr, service):
    stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(addr))
    r = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)

coordinator, worker = sys.argv[1], sys.argv[2]
out = {
    "coordinator": health(coordinator, ""),
    "job_service": health(coordinator, "autopipe.v1.JobService"),
    "worker": health(worker, ""),
}
ch = grpc.insecure_channel(coordinator)
db = ProtoReflectionDescriptorDatabase(ch)
out["services"] = sorted(db.get_services())
pool = DescriptorPool(db)
out["job_methods"] = sorted(m.name for m in pool.FindServiceByName("autopipe.v1.JobService").methods)
out["submit_input"] = pool.FindMethodByName("autopipe.v1.JobService.SubmitJob").input_type.full_name
list_jobs = ch.unary_unary("/autopipe.v1.JobService/ListJobs",
    request_serializer=lambda _: b"", response_deserializer=lambda b: b)
try:
    list_jobs(None, timeout=10)
    out["without_token"] = "OK"
except grpc.RpcError as e:
    out["without_token"] = e.code().name
try:
    list_jobs(None, timeout=10, metadata=[("authorization", "Bearer " + sys.argv[3])])
    out["with_token"] = "OK"
except grpc.RpcError as e:
    out["with_token"] = e.code().name
print(json.dumps(out))
"#;

#[test]
fn health_checks_and_reflection_answer_a_third_party_client() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let tf = dir.path().join("token");
    std::fs::write(&tf, TOKEN)?;
    let tf = tf.to_str().context("utf8")?;
    let c = Cluster::start_env(
        1,
        1,
        &["--auth-token-file", tf],
        &["--auth-token-file", tf],
        &[("AUTOPIPE_AUTH_TOKEN", TOKEN)],
    )?;
    let path = grpcio_path()?;
    let out = python(
        &path,
        CLIENT,
        &[&c.coordinator.addr, &c.workers[0].addr, TOKEN],
    )?;
    let v: serde_json::Value = serde_json::from_str(out.trim()).context(out.clone())?;
    assert_eq!(v["coordinator"], "SERVING", "{v}");
    assert_eq!(v["job_service"], "SERVING", "{v}");
    assert_eq!(v["worker"], "SERVING", "{v}");
    let services: Vec<&str> = v["services"]
        .as_array()
        .context("services")?
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    for public in [
        "autopipe.v1.JobService",
        "autopipe.v1.AdminService",
        "grpc.health.v1.Health",
    ] {
        assert!(services.contains(&public), "{public} in {services:?}");
    }
    for internal in ["WorkerService", "WorkerControl", "RaftService"] {
        assert!(
            !services.iter().any(|s| s.ends_with(internal)),
            "{internal} is not listed: {services:?}"
        );
    }
    let methods = v["job_methods"].to_string();
    for m in ["SubmitJob", "WatchJob", "ListJobs", "CancelJob"] {
        assert!(methods.contains(m), "{m} in {methods}");
    }
    assert_eq!(v["submit_input"], "autopipe.v1.SubmitJobRequest", "{v}");
    assert_eq!(v["without_token"], "UNAUTHENTICATED", "{v}");
    assert_eq!(v["with_token"], "OK", "{v}");
    Ok(())
}

#[test]
fn a_cli_pointed_at_the_http_port_says_so() -> Result<()> {
    let c = Cluster::start(0, 1)?;
    for cmd in [&["jobs"][..], &["workers"], &["status", "some-job"]] {
        let mut args = cmd.to_vec();
        let http = format!("http://{}", c.coordinator.http);
        args.extend(["--coordinator", &http]);
        let out = integration_tests::cli(&args)?;
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("plain HTTP server") && err.contains("--http port"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("grpc-status header missing"), "{err}");
    }
    // the gRPC address works
    let out = integration_tests::cli(&["jobs", "--coordinator", &c.url()])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn logs_that_are_not_a_terminal_carry_no_colour_codes() -> Result<()> {
    use std::io::BufRead;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("coord");
    // a coordinator without --allowed-roots warns at start; its stderr is a pipe
    let mut child = std::process::Command::new(integration_tests::autopipe_bin())
        .args([
            "coordinator",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(&data)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    let line = std::io::BufReader::new(stderr).lines().next();
    let _ = child.kill();
    let _ = child.wait();
    let line = line.context("a log line")??;
    assert!(
        line.contains("WARN") && line.contains("allowed-roots"),
        "{line}"
    );
    assert!(!line.contains('\u{1b}'), "no ANSI escape: {line:?}");
    Ok(())
}

#[test]
fn submit_wait_prints_progress_lines_when_stdout_is_not_a_terminal() -> Result<()> {
    let dir = tempfile::tempdir()?;
    integration_tests::gen_clickstream(&dir.path().join("data"), 20_000, 4)?;
    let spec = integration_tests::aggregation_job(dir.path(), "progress", "")?;
    let c = Cluster::start(1, 2)?;
    let spec = spec.to_str().context("utf8")?;
    let out = integration_tests::cli(&["submit", spec, "--wait", "--coordinator", &c.url()])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    // a line per state or stage change, the last one the job's end, then the summary
    let progress: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with('[') && l.contains(": stages "))
        .collect();
    let last = progress.last().context(stdout.to_string())?;
    assert!(
        last.contains("succeeded: stages 2/2") && last.contains("rows in 20000"),
        "{stdout}"
    );
    assert!(stdout.contains("job progress-"), "{stdout}");

    // timestamps in RFC 3339: the summary, `jobs` (with submitted and duration
    // columns), the JSON views beside the epoch milliseconds, the decisions
    let is_rfc3339 = |t: &str| {
        t.len() == 24 && t.ends_with('Z') && t.as_bytes()[10] == b'T' && t.starts_with("20")
    };
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("  submitted: "))
        .context(stdout.to_string())?;
    assert!(is_rfc3339(line.trim()), "{line}");
    // no raw epoch milliseconds (13 digits) in the text
    let epoch_ms = |t: &str| {
        t.split(|c: char| !c.is_ascii_digit())
            .any(|n| n.len() == 13)
    };
    assert!(!epoch_ms(&stdout), "{stdout}");
    let out = integration_tests::cli(&["jobs", "--coordinator", &c.url()])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let header = text.lines().next().unwrap_or_default();
    assert!(
        header.contains("SUBMITTED") && header.contains("DURATION"),
        "{text}"
    );
    let row = text.lines().nth(1).context(text.to_string())?;
    assert!(
        row.split_whitespace().any(is_rfc3339) && row.contains("succeeded"),
        "{text}"
    );
    // filters: by state and by name, on the CLI and the HTTP API
    let count = |args: &[&str]| -> Result<usize> {
        let mut a = vec!["jobs"];
        a.extend_from_slice(args);
        Ok(c.cli_json(&a)?.as_array().map_or(0, Vec::len))
    };
    assert_eq!(count(&["--state", "succeeded", "--name", "progress"])?, 1);
    assert_eq!(count(&["--state", "failed"])?, 0);
    assert_eq!(count(&["--name", "another"])?, 0);
    let out = integration_tests::cli(&["jobs", "--state", "done", "--coordinator", &c.url()])?;
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not a job state"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let http = c.coordinator.http.as_str();
    let api: serde_json::Value = serde_json::from_str(&integration_tests::http_get(
        http,
        "/api/jobs?state=succeeded&name=progress",
    )?)?;
    assert_eq!(api.as_array().map(Vec::len), Some(1), "{api}");
    assert_eq!(
        api[0]["stages"][0]["plan"], "",
        "no plans unless view=full: {api}"
    );
    let full: serde_json::Value = serde_json::from_str(&integration_tests::http_get(
        http,
        "/api/jobs?name=progress&view=full",
    )?)?;
    assert!(
        full[0]["stages"][0]["plan"]
            .as_str()
            .is_some_and(|p| !p.is_empty()),
        "{full}"
    );
    let none: serde_json::Value = serde_json::from_str(&integration_tests::http_get(
        http,
        "/api/jobs?state=failed",
    )?)?;
    assert_eq!(none.as_array().map(Vec::len), Some(0), "{none}");

    // one JSON view of a job: `status -o json` is `/api/jobs/ID` (the workers' load
    // aside, which heartbeats refresh between the two reads)
    let id = full[0]["job_id"].as_str().context("id")?;
    let mut cli = c.cli_json(&["status", id])?;
    let mut api: serde_json::Value = serde_json::from_str(&integration_tests::http_get(
        http,
        &format!("/api/jobs/{id}"),
    )?)?;
    for v in [&mut cli, &mut api] {
        v.as_object_mut().context("object")?.remove("workers");
    }
    assert_eq!(cli, api);
    assert_eq!(cli["stages"].as_array().map(Vec::len), Some(2), "{cli}");
    assert_eq!(cli["stages"][1]["kind"], "sink", "{cli}");

    let jobs = c.cli_json(&["jobs"])?;
    let j = &jobs[0];
    assert!(
        is_rfc3339(j["submitted_at"].as_str().unwrap_or_default()),
        "{j}"
    );
    assert!(
        is_rfc3339(j["finished_at"].as_str().unwrap_or_default()),
        "{j}"
    );
    assert!(j["submitted_at_ms"].as_u64() > Some(0), "{j}");
    let decisions = c.cli_json(&["decisions"])?;
    let d = &decisions[0];
    assert!(is_rfc3339(d["at"].as_str().unwrap_or_default()), "{d}");
    let out = integration_tests::cli(&["decisions", "--coordinator", &c.url()])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!epoch_ms(&text), "{text}");
    let first = text.lines().next().unwrap_or_default();
    assert!(
        first.split_whitespace().last().is_some_and(is_rfc3339),
        "{text}"
    );
    Ok(())
}

/// Submits an invalid spec with stubs built from server reflection alone, and decodes
/// the refusal's standard details with grpcio-status.
const BAD_REQUEST: &str = r#"
import grpc, json, sys
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf import message_factory
from grpc_status import rpc_status
from google.rpc import error_details_pb2

ch = grpc.insecure_channel(sys.argv[1])
pool = DescriptorPool(ProtoReflectionDescriptorDatabase(ch))
Req = message_factory.GetMessageClass(pool.FindMessageTypeByName("autopipe.v1.SubmitJobRequest"))
Resp = message_factory.GetMessageClass(pool.FindMessageTypeByName("autopipe.v1.SubmitJobResponse"))
submit = ch.unary_unary("/autopipe.v1.JobService/SubmitJob",
    request_serializer=Req.SerializeToString, response_deserializer=Resp.FromString)
spec = {"job": {"name": "bad"},
        "sources": [{"name": "events", "format": "parquet", "path": "file:///nowhere/events/"}],
        "transform": {"sql": " "},
        "sink": {"format": "parquet", "path": "file:///nowhere/out/"}}
out = {}
try:
    submit(Req(spec_json=json.dumps(spec)), timeout=10)
    out["code"] = "OK"
except grpc.RpcError as e:
    out["code"] = e.code().name
    status = rpc_status.from_call(e)
    for d in status.details:
        if d.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            b = error_details_pb2.BadRequest()
            d.Unpack(b)
            out["violations"] = [[v.field, v.description] for v in b.field_violations]
        if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            i = error_details_pb2.ErrorInfo()
            d.Unpack(i)
            out["info"] = {"reason": i.reason, "domain": i.domain, "metadata": dict(i.metadata)}
print(json.dumps(out))
"#;

#[test]
fn a_refused_submission_carries_standard_error_details_that_grpcio_status_decodes() -> Result<()> {
    let c = Cluster::start(0, 1)?;
    let out = python(&grpcio_path()?, BAD_REQUEST, &[&c.coordinator.addr])?;
    let v: serde_json::Value = serde_json::from_str(out.trim()).context(out.clone())?;
    assert_eq!(v["code"], "INVALID_ARGUMENT", "{v}");
    assert_eq!(v["violations"][0][0], "transform.sql", "{v}");
    assert!(
        v["violations"][0][1]
            .as_str()
            .is_some_and(|d| d.contains("sql is empty")),
        "{v}"
    );
    assert_eq!(v["info"]["domain"], "autopipe", "{v}");
    assert_eq!(v["info"]["reason"], "INVALID_SPEC", "{v}");
    assert_eq!(v["info"]["metadata"]["class"], "permanent", "{v}");
    assert_eq!(v["info"]["metadata"]["key"], "transform.sql", "{v}");
    Ok(())
}

#[test]
fn a_job_waiting_for_slots_is_queued_until_a_task_starts() -> Result<()> {
    let dir = tempfile::tempdir()?;
    integration_tests::gen_clickstream(&dir.path().join("data"), 4_000, 2)?;
    let spec = integration_tests::aggregation_job(dir.path(), "queued", "")?;
    // no worker yet: nothing can start
    let mut c = Cluster::start(0, 2)?;
    let id = c.submit(&spec)?;
    let st = c.cli_json(&["status", &id])?;
    assert_eq!(st["state"], "queued", "{st}");
    let queued = c.cli_json(&["jobs", "--state", "queued"])?;
    assert_eq!(queued[0]["job_id"], id.as_str(), "{queued}");
    c.add_worker(2)?;
    let done = c.wait_done(&id, Duration::from_secs(60))?;
    assert_eq!(done["state"], "succeeded", "{done}");
    Ok(())
}

/// `key = value  # source` lines of a `--dry-run` / `config print`.
fn settings(stdout: &[u8]) -> std::collections::BTreeMap<String, (String, String)> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (kv, source) = l.rsplit_once("  # ")?;
            let (k, v) = kv.split_once(" = ")?;
            Some((k.to_string(), (v.to_string(), source.to_string())))
        })
        .collect()
}

#[test]
fn one_configuration_layered_as_defaults_file_environment_flags() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("coordinator.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:7799\"\nheartbeat_timeout = 7\nalert-webhook = \"http://127.0.0.1:1/file\"\nparam = [\"skew_join=false\", \"coalesce=true\"]\njoin = true\n",
    )?;
    let f = file.to_str().context("utf8")?;
    let out = integration_tests::cli_env(
        &[
            "coordinator",
            "--config",
            f,
            "--heartbeat-timeout",
            "9",
            "--dry-run",
        ],
        &[("AUTOPIPE_ALERT_WEBHOOK", "http://127.0.0.1:1/env")],
    )?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = settings(&out.stdout);
    let at = |k: &str| s.get(k).cloned().unwrap_or_default();
    assert_eq!(
        at("listen"),
        ("\"127.0.0.1:7799\"".into(), "file".into()),
        "{s:?}"
    );
    assert_eq!(at("heartbeat-timeout"), ("\"9\"".into(), "flag".into()));
    assert_eq!(
        at("alert-webhook"),
        ("\"http://127.0.0.1:1/env\"".into(), "env".into())
    );
    assert_eq!(
        at("param"),
        (
            "[\"skew_join=false\", \"coalesce=true\"]".into(),
            "file".into()
        )
    );
    assert_eq!(at("join"), ("true".into(), "file".into()));
    assert_eq!(at("data-dir").1, "default");
    // the printout is itself a config file: the same settings again
    let printed = dir.path().join("printed.toml");
    std::fs::write(&printed, &out.stdout)?;
    let again = integration_tests::cli(&[
        "config",
        "print",
        "coordinator",
        "--config",
        printed.to_str().context("utf8")?,
    ])?;
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let s2 = settings(&again.stdout);
    assert_eq!(s.len(), s2.len());
    for (k, (v, _)) in &s {
        assert_eq!(&s2[k].0, v, "{k}");
    }
    // a key no command has is named, with the command
    std::fs::write(&file, "slot = 4\n")?;
    let out = integration_tests::cli(&["worker", "--config", f, "--dry-run"])?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("'slot'") && err.contains("autopipe worker"),
        "{err}"
    );
    // a worker and `local` read their settings the same way
    std::fs::write(&file, "slots = 3\ndrain_grace_secs = 30\n")?;
    let out = integration_tests::cli(&["worker", "--config", f, "--dry-run"])?;
    let s = settings(&out.stdout);
    assert_eq!(s["slots"], ("\"3\"".into(), "file".into()), "{s:?}");
    assert_eq!(s["drain-grace-secs"].0, "\"30\"");
    // --dry-run checks what the start would refuse: an --id that --peers leaves out
    let out = integration_tests::cli(&[
        "coordinator",
        "--id",
        "4",
        "--peers",
        "1=127.0.0.1:7701,2=127.0.0.1:7702",
        "--dry-run",
    ])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--id 4"));
    // every setting has its AUTOPIPE_* variable, over the file and under a flag
    let out = integration_tests::cli_env(
        &["worker", "--config", f, "--dry-run"],
        &[("AUTOPIPE_SLOTS", "5"), ("AUTOPIPE_DRAIN_GRACE_SECS", "60")],
    )?;
    let s = settings(&out.stdout);
    assert_eq!(s["slots"], ("\"5\"".into(), "env".into()), "{s:?}");
    assert_eq!(s["drain-grace-secs"], ("\"60\"".into(), "env".into()));
    let out = integration_tests::cli_env(
        &["worker", "--slots", "6", "--dry-run"],
        &[("AUTOPIPE_SLOTS", "5")],
    )?;
    assert_eq!(
        settings(&out.stdout)["slots"],
        ("\"6\"".into(), "flag".into())
    );
    std::fs::write(&file, "workers = 3\n")?;
    let out = integration_tests::cli(&["local", "x.toml", "--config", f, "--dry-run"])?;
    assert_eq!(
        settings(&out.stdout)["workers"],
        ("\"3\"".into(), "file".into())
    );
    Ok(())
}

#[test]
fn the_local_cluster_script_checks_its_processes_and_stops_only_its_own() -> Result<()> {
    let home = tempfile::tempdir()?;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local-cluster.sh");
    let run = |bin: &std::path::Path, args: &[&str]| -> Result<std::process::Output> {
        Ok(std::process::Command::new("bash")
            .arg(&script)
            .args(args)
            .env("AUTOPIPE_BIN", bin)
            .env("AUTOPIPE_HOME", home.path())
            .stdin(std::process::Stdio::null())
            .output()?)
    };
    let bin = integration_tests::autopipe_bin();
    let out = run(&bin, &["start", "2"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let addr = std::fs::read_to_string(home.path().join("coordinator.addr"))?;
    let url = format!("http://{}", addr.trim());
    integration_tests::wait_until(Duration::from_secs(30), "2 workers", || {
        let out = integration_tests::cli(&["workers", "-o", "json", "--coordinator", &url])?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        Ok(v.as_array().map(Vec::len) == Some(2))
    })?;
    let coordinator_pid = std::fs::read_to_string(home.path().join("coordinator.pid"))?;
    // a pid file that names some other process is left alone
    let mut other = std::process::Command::new("sleep").arg("60").spawn()?;
    std::fs::write(home.path().join("other.pid"), other.id().to_string())?;
    let out = run(&bin, &["stop"])?;
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not an autopipe process"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(other.try_wait()?.is_none(), "the other process still runs");
    let _ = other.kill();
    let _ = other.wait();
    integration_tests::wait_until(Duration::from_secs(30), "the coordinator to stop", || {
        Ok(!std::path::Path::new(&format!("/proc/{}", coordinator_pid.trim())).exists())
    })?;
    // a process that does not come up fails the start, with its log
    let out = run(std::path::Path::new("/bin/false"), &["start", "1"])?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("did not come up"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn ctrl_c_detaches_submit_wait_and_watch_follows_the_job_again() -> Result<()> {
    use std::io::{BufRead, Read};
    let dir = tempfile::tempdir()?;
    integration_tests::gen_clickstream(&dir.path().join("data"), 4_000, 4)?;
    let spec = integration_tests::aggregation_job(dir.path(), "detached", "")?;
    let c = Cluster::start_full(1, 2, &["--test-task-delay-ms", "500"], &[])?;
    let mut child = std::process::Command::new(integration_tests::autopipe_bin())
        .args(["submit", spec.to_str().context("utf8")?, "--wait"])
        .args(["--coordinator", &c.url()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut out = std::io::BufReader::new(child.stdout.take().context("stdout")?);
    let mut line = String::new();
    out.read_line(&mut line)?;
    let id = line
        .trim()
        .strip_prefix("submitted ")
        .context(line.clone())?
        .to_string();
    let sent = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()?;
    assert!(sent.success());
    let status = child.wait()?;
    let mut err = String::new();
    child
        .stderr
        .take()
        .context("stderr")?
        .read_to_string(&mut err)?;
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains(&format!("autopipe watch {id}")), "{err}");
    // the job ran on; watch follows it to its end
    let out = integration_tests::cli(&["watch", &id, "--coordinator", &c.url()])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains(&format!("job {id} succeeded")), "{stdout}");
    Ok(())
}

/// `autopipe … | head`: a command whose stdout closes ends quietly with a SIGPIPE
/// death's status (141), not a panic with a backtrace.
#[test]
fn a_command_whose_stdout_is_closed_ends_quietly() -> Result<()> {
    let (reader, writer) = std::io::pipe()?;
    drop(reader);
    let out = std::process::Command::new(integration_tests::autopipe_bin())
        .args(["worker", "--dry-run"])
        .stdout(writer)
        .stdin(std::process::Stdio::null())
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    Ok(())
}
