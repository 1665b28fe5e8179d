//! Authentication and confinement (issue 11, section 6), with real processes: a
//! cluster started with `--auth-token-file` runs a job end to end for a CLI that has
//! the token and refuses every gRPC service (JobService, AdminService, WorkerService,
//! RaftService on the coordinator; WorkerControl and Flight on a worker) to a caller
//! without it; a Raft batch whose `from` is not its sender is refused; HTTP calls that
//! could change something need the token, reads only when closed; a coordinator with
//! `--allowed-roots` refuses a spec reaching outside them and deletes nothing there.

use anyhow::{Context, Result};
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::Ticket;
use autopipe_proto as pb;
use integration_tests::oracle::check_spec_output;
use integration_tests::{
    aggregation_job, cli, cli_env, gen_clickstream, http_request, spawn_server, wait_until,
    write_spec, Cluster, Group,
};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::Channel;
use tonic::Code;

const TOKEN: &str = "0123456789-test-cluster-token";

/// A token file holding `TOKEN` with whitespace around it (it is trimmed).
fn token_file(dir: &Path) -> Result<PathBuf> {
    let p = dir.join("token");
    std::fs::write(&p, format!("  {TOKEN}\n"))?;
    Ok(p)
}

async fn channel(addr: &str) -> Result<Channel> {
    Ok(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .timeout(Duration::from_secs(10))
            .connect()
            .await?,
    )
}

/// `msg` as a request carrying `token` (if any) and naming raft member `member`.
fn req<T>(msg: T, token: Option<&str>, member: Option<u64>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    if let Some(m) = member {
        r.metadata_mut()
            .insert("autopipe-member-id", m.to_string().parse().unwrap());
    }
    r
}

fn code_of<T>(r: std::result::Result<T, tonic::Status>) -> Option<(Code, String)> {
    r.err().map(|s| (s.code(), s.message().to_string()))
}

fn refused_unauthenticated<T>(what: &str, r: std::result::Result<T, tonic::Status>) {
    match code_of(r) {
        Some((Code::Unauthenticated, m)) => {
            assert!(
                !m.contains(TOKEN),
                "{what}: the refusal echoes the token: {m}"
            )
        }
        other => panic!("{what}: expected UNAUTHENTICATED, got {other:?}"),
    }
}

/// Every service of the coordinator at `coord` and of the worker at `worker`, called
/// with `token`: each result's code (`None`: success).
async fn call_every_service(
    coord: &str,
    worker: &str,
    token: Option<&str>,
) -> Result<Vec<(&'static str, Option<(Code, String)>)>> {
    let ch = channel(coord).await?;
    let w = channel(worker).await?;
    let mut jobs = pb::job_service_client::JobServiceClient::new(ch.clone());
    let mut admin = pb::admin_service_client::AdminServiceClient::new(ch.clone());
    let mut workers = pb::worker_service_client::WorkerServiceClient::new(ch.clone());
    let mut raft = pb::raft_service_client::RaftServiceClient::new(ch);
    let mut control = pb::worker_control_client::WorkerControlClient::new(w.clone());
    let mut flight = FlightServiceClient::new(w);
    Ok(vec![
        (
            "JobService.ListJobs",
            code_of(jobs.list_jobs(req(Default::default(), token, None)).await),
        ),
        (
            "AdminService.ListWorkers",
            code_of(
                admin
                    .list_workers(req(Default::default(), token, None))
                    .await,
            ),
        ),
        (
            "WorkerService.Heartbeat",
            code_of(
                workers
                    .heartbeat(req(Default::default(), token, None))
                    .await,
            ),
        ),
        (
            "RaftService.Send",
            code_of(
                raft.send(req(
                    pb::RaftBatch {
                        from: 1,
                        messages: vec![],
                    },
                    token,
                    Some(1),
                ))
                .await,
            ),
        ),
        (
            "WorkerControl.LaunchTask",
            code_of(
                control
                    .launch_task(req(pb::TaskDefinition::default(), token, None))
                    .await,
            ),
        ),
        (
            "Flight.DoGet",
            code_of(
                flight
                    .do_get(req(
                        Ticket::new(b"no such map output".to_vec()),
                        token,
                        None,
                    ))
                    .await,
            ),
        ),
    ])
}

#[test]
fn a_cluster_with_a_token_runs_a_job_and_every_service_refuses_calls_without_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    gen_clickstream(&dir.path().join("data"), 4_000, 2)?;
    let spec = aggregation_job(dir.path(), "authjob", "")?;
    let tf = token_file(dir.path())?;
    let tf_s = tf.to_str().context("utf8")?;
    // map outputs travel over Flight between the workers, so DoGet carries the token too
    let c = Cluster::start_env(
        2,
        2,
        &["--auth-token-file", tf_s, "--no-host-local-shuffle"],
        &["--auth-token-file", tf_s],
        &[("AUTOPIPE_AUTH_TOKEN", TOKEN)],
    )?;

    // end to end, the CLI with the token in AUTOPIPE_AUTH_TOKEN
    let (v, _) = c.run(&spec)?;
    assert_eq!(v["state"], "succeeded", "{v}");
    assert!(v["rows_out"].as_u64().unwrap_or(0) > 0, "{v}");

    // the CLI without a token, with a wrong one, and with --auth-token-file
    let url = c.url();
    let out = cli(&["jobs", "--coordinator", &url])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("missing auth token"),
        "{err}"
    );
    let out = cli_env(
        &["jobs", "--coordinator", &url],
        &[("AUTOPIPE_AUTH_TOKEN", "not-the-token")],
    )?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("wrong auth token"),
        "{err}"
    );
    assert!(!err.contains("not-the-token"), "{err}");
    let out = cli(&["jobs", "--coordinator", &url, "--auth-token-file", tf_s])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let rt = tokio::runtime::Runtime::new()?;
    let coord = c.coordinator.addr.clone();
    let worker = c.workers[0].addr.clone();
    // every service refuses a call without the token, and one with a wrong token
    for token in [None, Some("not-the-token")] {
        for (what, r) in rt.block_on(call_every_service(&coord, &worker, token))? {
            let r: std::result::Result<(), tonic::Status> = match r {
                None => Ok(()),
                Some((code, m)) => Err(tonic::Status::new(code, m)),
            };
            refused_unauthenticated(&format!("{what} with token {token:?}"), r);
        }
    }
    // with the token the same calls get past authentication
    for (what, r) in rt.block_on(call_every_service(&coord, &worker, Some(TOKEN)))? {
        assert!(
            !matches!(r, Some((Code::Unauthenticated, _))),
            "{what} with the token: {r:?}"
        );
    }

    // Raft: the sender comes from the call, not from the batch's `from`
    rt.block_on(async {
        let mut raft = pb::raft_service_client::RaftServiceClient::new(channel(&coord).await?);
        let batch = |from| pb::RaftBatch {
            from,
            messages: vec![],
        };
        // a forged `from`: member 2's call claims to come from member 1
        let r = code_of(raft.send(req(batch(1), Some(TOKEN), Some(2))).await);
        assert!(matches!(r, Some((Code::PermissionDenied, _))), "{r:?}");
        // a token holder that names no member
        let r = code_of(raft.send(req(batch(1), Some(TOKEN), None)).await);
        assert!(matches!(r, Some((Code::PermissionDenied, _))), "{r:?}");
        // a member id that is not in the group
        let r = code_of(raft.send(req(batch(7), Some(TOKEN), Some(7))).await);
        assert!(matches!(r, Some((Code::PermissionDenied, m)) if m.contains("not a member")));
        // the one member, named by its call
        let r = code_of(raft.send(req(batch(1), Some(TOKEN), Some(1))).await);
        assert!(r.is_none(), "{r:?}");
        anyhow::Ok(())
    })?;

    // HTTP: reads stay open by default; anything else needs the token
    let http = &c.coordinator.http;
    let (status, _, body) = http_request(http, "GET", "/metrics", &[])?;
    assert_eq!(status, 200, "{body}");
    let (status, _, _) = http_request(http, "POST", "/api/jobs", &[])?;
    assert_eq!(status, 401);
    let bearer = format!("Bearer {TOKEN}");
    let (status, _, _) = http_request(http, "POST", "/api/jobs", &[("Authorization", &bearer)])?;
    assert_ne!(status, 401);
    Ok(())
}

#[test]
fn a_raft_group_with_a_token_replicates_a_job_and_refuses_a_member_posing_as_another() -> Result<()>
{
    let dir = tempfile::tempdir()?;
    gen_clickstream(&dir.path().join("data"), 2_000, 2)?;
    let spec = aggregation_job(dir.path(), "groupjob", "")?;
    let tf = token_file(dir.path())?;
    let tf_s = tf.to_str().context("utf8")?;
    // the leader is elected over Raft calls that carry the token and the member id
    let g = Group::start_env(
        3,
        1,
        2,
        &["--auth-token-file", tf_s],
        &["--auth-token-file", tf_s],
        &[("AUTOPIPE_AUTH_TOKEN", TOKEN)],
    )?;
    // every member answers the others' MemberStatus calls
    let c = g.cluster()?;
    let members = c["members"].as_array().cloned().unwrap_or_default();
    assert_eq!(members.len(), 3, "{c}");
    assert!(members.iter().all(|m| m["error"] == ""), "{c}");
    let id = g.cli_json(&["submit", spec.to_str().context("utf8")?])?["job_id"]
        .as_str()
        .context("job id")?
        .to_string();
    wait_until(Duration::from_secs(120), "the job to succeed", || {
        Ok(g.cli_json(&["status", &id])?["state"] == "succeeded")
    })?;

    // member 2, holding the token, calls member 3 with a batch claiming member 1 sent it
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let mut raft =
            pb::raft_service_client::RaftServiceClient::new(channel(&g.peers[&3]).await?);
        let batch = |from| pb::RaftBatch {
            from,
            messages: vec![],
        };
        let r = code_of(raft.send(req(batch(1), Some(TOKEN), Some(2))).await);
        assert!(matches!(r, Some((Code::PermissionDenied, _))), "{r:?}");
        let r = code_of(raft.send(req(batch(1), None, Some(1))).await);
        assert!(matches!(r, Some((Code::Unauthenticated, _))), "{r:?}");
        let r = code_of(raft.send(req(batch(2), Some(TOKEN), Some(2))).await);
        assert!(r.is_none(), "{r:?}");
        anyhow::Ok(())
    })?;
    Ok(())
}

#[test]
fn closed_http_reads_need_the_token() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let tf = token_file(dir.path())?;
    let data = dir.path().join("coord");
    let p = spawn_server(&[
        "coordinator",
        "--listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().context("utf8")?,
        "--auth-token-file",
        tf.to_str().context("utf8")?,
        "--http-open-reads=false",
    ])?;
    for path in ["/metrics", "/api/jobs", "/api/workers", "/"] {
        let (status, _, _) = http_request(&p.http, "GET", path, &[])?;
        assert_eq!(status, 401, "GET {path} without the token");
        let (status, _, _) =
            http_request(&p.http, "GET", path, &[("Authorization", "Bearer wrong")])?;
        assert_eq!(status, 401, "GET {path} with a wrong token");
    }
    let bearer = format!("Bearer {TOKEN}");
    let (status, _, body) =
        http_request(&p.http, "GET", "/api/jobs", &[("Authorization", &bearer)])?;
    assert_eq!(status, 200, "{body}");
    Ok(())
}

/// `autopipe submit SPEC --coordinator URL`: whether it succeeded, and its stderr.
fn submit_output(spec: &Path, url: &str) -> Result<(bool, String)> {
    let out = cli(&[
        "submit",
        spec.to_str().context("utf8")?,
        "--coordinator",
        url,
    ])?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    ))
}

#[test]
fn a_path_outside_the_allowed_roots_is_refused_at_submit_and_nothing_is_deleted() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let base = std::fs::canonicalize(dir.path())?;
    let data = base.join("data");
    gen_clickstream(&data, 2_000, 2)?;
    // a directory outside the roots with the user's files in it
    let outside = base.join("outside");
    std::fs::create_dir_all(outside.join("sub"))?;
    std::fs::write(outside.join("notes.txt"), "my notes")?;
    std::fs::write(outside.join("sub/keep.csv"), "a\n1\n")?;
    let root = data.to_str().context("utf8")?;
    let c = Cluster::start_full(1, 2, &["--allowed-roots", root], &["--allowed-roots", root])?;
    let spec_text = |name: &str, source: &str, sink: &str| {
        format!(
            r#"
[job]
name = "{name}"
[[sources]]
name = "events"
format = "parquet"
path = "{source}"
[transform]
sql = "SELECT kind, count(*) AS n FROM events GROUP BY kind"
[sink]
format = "csv"
path = "{sink}"
overwrite_foreign = true
"#
        )
    };
    let url = c.url();

    // the sink outside: refused, naming the key, the path and the roots
    let spec = base.join("outside.toml");
    write_spec(
        &spec,
        &spec_text(
            "outside-sink",
            "data/events",
            outside.to_str().context("utf8")?,
        ),
    )?;
    let (ok, err) = submit_output(&spec, &url)?;
    assert!(!ok, "{err}");
    assert!(err.contains("sink.path"), "{err}");
    assert!(err.contains(&outside.display().to_string()), "{err}");
    assert!(err.contains(&format!("--allowed-roots {root}")), "{err}");

    // a source outside: refused too
    let spec = base.join("source.toml");
    write_spec(
        &spec,
        &spec_text(
            "outside-source",
            outside.join("sub/keep.csv").to_str().context("utf8")?,
            "data/out/x",
        ),
    )?;
    let (ok, err) = submit_output(&spec, &url)?;
    assert!(!ok && err.contains("sources[0].path"), "{err}");

    // nothing ran, nothing was deleted
    let jobs = c.cli_json(&["jobs"])?;
    assert!(!jobs.to_string().contains("outside-"), "{jobs}");
    assert_eq!(
        std::fs::read_to_string(outside.join("notes.txt"))?,
        "my notes"
    );
    assert_eq!(
        std::fs::read_to_string(outside.join("sub/keep.csv"))?,
        "a\n1\n"
    );

    // inside the roots the same job runs (its staging and dead letters are inside too)
    let spec = base.join("inside.toml");
    write_spec(
        &spec,
        &spec_text("inside", "data/events", "data/out/inside"),
    )?;
    let (v, _) = c.run(&spec)?;
    assert_eq!(v["state"], "succeeded", "{v}");
    Ok(())
}

/// A CA and one certificate for 127.0.0.1 (and `names`) signed by it, as PEM files:
/// (cert, key, ca).
fn certificates(dir: &Path, names: &[&str]) -> Result<(PathBuf, PathBuf, PathBuf)> {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut sans = vec!["127.0.0.1".to_string(), "localhost".into()];
    sans.extend(names.iter().map(|n| n.to_string()));
    let mut params = CertificateParams::new(sans)?;
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, &issuer)?;
    let paths = (
        dir.join("node.pem"),
        dir.join("node.key"),
        dir.join("ca.pem"),
    );
    std::fs::write(&paths.0, cert.pem())?;
    std::fs::write(&paths.1, key.serialize_pem())?;
    std::fs::write(&paths.2, ca_cert.pem())?;
    Ok(paths)
}

#[test]
fn a_cluster_with_mutual_tls_and_a_token_runs_a_job_and_refuses_plain_and_unknown_clients(
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    gen_clickstream(&dir.path().join("data"), 4_000, 2)?;
    let spec = aggregation_job(dir.path(), "tlsjob", "")?;
    let tf = token_file(dir.path())?;
    let (cert, key, ca) = certificates(dir.path(), &[])?;
    let (tf, cert, key, ca) = (
        tf.to_str().context("utf8")?,
        cert.to_str().context("utf8")?,
        key.to_str().context("utf8")?,
        ca.to_str().context("utf8")?,
    );
    let secure = [
        "--auth-token-file",
        tf,
        "--tls-cert",
        cert,
        "--tls-key",
        key,
        "--tls-ca",
        ca,
    ];
    let mut workers = secure.to_vec();
    // map outputs cross Flight between the workers: DoGet is TLS too
    workers.push("--no-host-local-shuffle");
    let env = [
        ("AUTOPIPE_AUTH_TOKEN", TOKEN),
        ("AUTOPIPE_TLS_CERT", cert),
        ("AUTOPIPE_TLS_KEY", key),
        ("AUTOPIPE_TLS_CA", ca),
    ];
    let c = Cluster::start_env(2, 2, &workers, &secure, &env)?;
    let (v, _) = c.run(&spec)?;
    assert_eq!(v["state"], "succeeded", "{v}");
    check_spec_output(dir.path(), &spec)?;
    // a plain-text client gets nowhere
    let url = c.url();
    let out = cli_env(
        &["jobs", "--coordinator", &url],
        &[("AUTOPIPE_AUTH_TOKEN", TOKEN)],
    )?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("coordinator at"),
        "a plain connection was answered: {err}"
    );
    // nor does a TLS client whose certificate another CA signed
    let other = tempfile::tempdir()?;
    let (ocert, okey, _) = certificates(other.path(), &[])?;
    let (ocert, okey) = (
        ocert.to_str().context("utf8")?,
        okey.to_str().context("utf8")?,
    );
    let out = cli_env(
        &["jobs", "--coordinator", &url],
        &[
            ("AUTOPIPE_AUTH_TOKEN", TOKEN),
            ("AUTOPIPE_TLS_CERT", ocert),
            ("AUTOPIPE_TLS_KEY", okey),
            ("AUTOPIPE_TLS_CA", ca),
        ],
    )?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a certificate of another CA was accepted: {err}"
    );
    eprintln!("refused: {err}");
    Ok(())
}

#[test]
fn three_coordinators_with_mutual_tls_elect_a_leader_and_replicate() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // one certificate for the test's three members (in production, one each: a Raft
    // peer must present a certificate naming its member id)
    let members = [
        "autopipe-member-1",
        "autopipe-member-2",
        "autopipe-member-3",
    ];
    let (cert, key, ca) = certificates(dir.path(), &members)?;
    let (cert, key, ca) = (
        cert.to_str().context("utf8")?,
        key.to_str().context("utf8")?,
        ca.to_str().context("utf8")?,
    );
    let tls = ["--tls-cert", cert, "--tls-key", key, "--tls-ca", ca];
    let env = [
        ("AUTOPIPE_TLS_CERT", cert),
        ("AUTOPIPE_TLS_KEY", key),
        ("AUTOPIPE_TLS_CA", ca),
    ];
    // Raft between the members, workers registering and heartbeating: all over TLS
    let g = Group::start_env(3, 1, 1, &tls, &tls, &env)?;
    let leader = g.leader()?.context("a leader")?;
    // every member answers over TLS and applies the same log
    wait_until(Duration::from_secs(30), "3 members in step", || {
        let c = g.cluster()?;
        let m = c["members"].as_array().cloned().unwrap_or_default();
        Ok(m.len() == 3
            && m.iter().all(|x| {
                x["error"].as_str().unwrap_or("").is_empty() && x["applied"] == m[0]["applied"]
            }))
    })?;
    eprintln!("leader {leader} elected over TLS");
    Ok(())
}
