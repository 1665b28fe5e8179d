//! The engines `bench tpch` compares. Each runs one query and writes its result as
//! Parquet into a fresh directory; `run` returns the wall time of that alone.

use anyhow::{anyhow, bail, Context, Result};
use autopipe_common::spec::PipelineSpec;
use autopipe_proto as pb;
use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use integration_tests::tpch::{spec_toml, TABLES};
use integration_tests::Cluster;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;
use tokio_stream::StreamExt;

/// Engine names as `--engines` takes them.
pub const ALL: [&str; 6] = [
    "autopipe-local",
    "autopipe-cluster",
    "datafusion",
    "spark",
    "duckdb",
    "ballista",
];

/// What every engine is given.
pub struct Setup<'a> {
    /// the cached TPC-H tables, `<data>/<table>/*.parquet`
    pub data: &'a Path,
    /// bench work dir (specs, venv, outputs)
    pub dir: &'a Path,
    /// threads for single-node engines
    pub threads: usize,
    /// autopipe workers
    pub workers: usize,
    /// task slots per autopipe worker
    pub slots: u32,
    /// shared runtime for in-process engines
    pub rt: &'a Runtime,
}

/// One engine ready to run queries.
pub enum Engine {
    /// `autopipe local --workers N SPEC`, a process per query, timed end to end
    Local {
        bin: PathBuf,
        workers: usize,
        slots: u32,
        specs: PathBuf,
    },
    /// a coordinator and N worker processes; jobs submitted over gRPC, timed from
    /// submission to the terminal state
    Cluster { cluster: Cluster, specs: PathBuf },
    /// single-process DataFusion, stock configuration with `threads` partitions
    DataFusion { threads: usize },
    /// a Ballista scheduler and N executor processes, queried by Ballista's client
    #[cfg(feature = "ballista")]
    Ballista(super::ballista::Ballista),
    /// a persistent Python process (DuckDB, Spark)
    Python {
        child: Child,
        stdin: ChildStdin,
        stdout: BufReader<ChildStdout>,
    },
}

impl Engine {
    /// Starts `name`; an error means the engine is skipped, with the error as reason.
    pub fn start(name: &str, s: &Setup) -> Result<Engine> {
        match name {
            "autopipe-local" => Ok(Engine::Local {
                bin: integration_tests::autopipe_bin(),
                workers: s.workers,
                slots: s.slots,
                specs: s.dir.join("specs"),
            }),
            "autopipe-cluster" => Ok(Engine::Cluster {
                cluster: Cluster::start(s.workers, s.slots)?,
                specs: s.dir.join("specs"),
            }),
            "datafusion" => Ok(Engine::DataFusion { threads: s.threads }),
            "spark" | "duckdb" => python_engine(name, s),
            #[cfg(feature = "ballista")]
            "ballista" => Ok(Engine::Ballista(super::ballista::Ballista::start(
                s.workers, s.slots, s.dir, s.rt,
            )?)),
            #[cfg(not(feature = "ballista"))]
            "ballista" => bail!(
                "not in this build: build the bench with `--features ballista` \
                 (compiles Ballista's scheduler and executor; see BENCHMARKS.md)"
            ),
            other => bail!("unknown engine '{other}' (one of {})", ALL.join(", ")),
        }
    }

    /// Runs query `q` (its SQL in `sql`) writing Parquet into `out`; the wall time.
    pub fn run(&mut self, s: &Setup, q: usize, sql: &str, out: &Path) -> Result<Duration> {
        let _ = std::fs::remove_dir_all(out);
        match self {
            Engine::Local {
                bin,
                workers,
                slots,
                specs,
            } => {
                let spec = write_spec(specs, s.data, q, sql, out)?;
                let t = Instant::now();
                let o = Command::new(bin)
                    .arg("local")
                    .arg(&spec)
                    .args(["--workers", &workers.to_string()])
                    .args(["--slots", &slots.to_string(), "-o", "json"])
                    .env("AUTOPIPE_LOG", "warn")
                    .output()?;
                let d = t.elapsed();
                if !o.status.success() {
                    bail!("{}", String::from_utf8_lossy(&o.stderr).trim());
                }
                Ok(d)
            }
            Engine::Cluster { cluster, specs } => {
                let path = write_spec(specs, s.data, q, sql, out)?;
                let spec = PipelineSpec::from_file(&path)?.normalize(specs, "bench")?;
                let url = cluster.url();
                s.rt.block_on(submit_and_wait(&url, &spec))
            }
            Engine::DataFusion { threads } => s.rt.block_on(datafusion(s.data, *threads, sql, out)),
            #[cfg(feature = "ballista")]
            Engine::Ballista(b) => s.rt.block_on(b.run(s.data, sql, out)),
            Engine::Python { stdin, stdout, .. } => {
                let req = serde_json::json!({"sql": sql, "out": out});
                writeln!(stdin, "{req}")?;
                stdin.flush()?;
                let v = read_reply(stdout)?;
                match v["secs"].as_f64() {
                    Some(secs) => Ok(Duration::from_secs_f64(secs)),
                    None => bail!("{}", v["error"].as_str().unwrap_or("no answer")),
                }
            }
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Engine::Python { child, .. } = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn write_spec(specs: &Path, data: &Path, q: usize, sql: &str, out: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(specs)?;
    let path = specs.join(format!("q{q}.toml"));
    std::fs::write(&path, spec_toml(data, q, sql, out))?;
    Ok(path)
}

async fn submit_and_wait(url: &str, spec: &PipelineSpec) -> Result<Duration> {
    let mut c = pb::job_service_client::JobServiceClient::connect(url.to_string()).await?;
    let t = Instant::now();
    let id = c
        .submit_job(pb::SubmitJobRequest {
            spec: Some(pb::submit_job_request::Spec::SpecJson(
                serde_json::to_string(spec)?,
            )),
            spec_origin: "bench".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .job_id;
    let mut stream = c
        .watch_job(pb::WatchJobRequest {
            job_id: id.clone(),
            keepalive_seconds: 0,
        })
        .await?
        .into_inner();
    while let Some(st) = stream.next().await {
        let st = st?;
        match pb::JobState::try_from(st.state) {
            Ok(pb::JobState::Succeeded) => return Ok(t.elapsed()),
            Ok(pb::JobState::Failed | pb::JobState::Cancelled) => {
                let msg = st.error.map(|e| e.message).unwrap_or_default();
                bail!(
                    "job {id} {}: {msg}",
                    pb::JobState::try_from(st.state)?.as_str_name()
                );
            }
            _ => {}
        }
    }
    bail!("watch of job {id} ended before the job did")
}

async fn datafusion(data: &Path, threads: usize, sql: &str, out: &Path) -> Result<Duration> {
    let t = Instant::now();
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(threads));
    for table in TABLES {
        let path = format!("{}/", data.join(table).display());
        ctx.register_parquet(table, &path, ParquetReadOptions::default())
            .await?;
    }
    ctx.sql(sql)
        .await?
        .write_parquet(
            &format!("{}/", out.display()),
            DataFrameWriteOptions::new(),
            None,
        )
        .await?;
    Ok(t.elapsed())
}

/// The virtual environment with the Python engines, created on first use.
pub(crate) fn venv_python(dir: &Path, package: &str, module: &str) -> Result<PathBuf> {
    let venv = dir.join("venv");
    let py = venv.join("bin/python");
    if !py.exists() {
        eprintln!("creating {} ...", venv.display());
        let st = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .context("python3 is needed for the Python engines")?;
        if !st.success() {
            bail!("python3 -m venv {} failed", venv.display());
        }
    }
    let has = |py: &Path| {
        Command::new(py)
            .args(["-c", &format!("import {module}")])
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !has(&py) {
        eprintln!("installing {package} into {} ...", venv.display());
        let o = Command::new(&py)
            .args(["-m", "pip", "install", "--quiet", package])
            .output()?;
        if !o.status.success() || !has(&py) {
            bail!(
                "pip install {package} failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
    }
    Ok(py)
}

fn python_engine(name: &str, s: &Setup) -> Result<Engine> {
    let (package, module) = match name {
        "spark" => ("pyspark", "pyspark"),
        _ => ("duckdb", "duckdb"),
    };
    let py = venv_python(s.dir, package, module)?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("engines.py");
    let mut child = Command::new(py)
        .arg(&script)
        .arg(name)
        .arg(s.data)
        .arg(s.threads.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdin = child.stdin.take().context("stdin")?;
    let mut stdout = BufReader::new(child.stdout.take().context("stdout")?);
    let v = read_reply(&mut stdout)?;
    match v["ready"].as_str() {
        Some(version) => {
            eprintln!("{name} {version} ready");
            Ok(Engine::Python {
                child,
                stdin,
                stdout,
            })
        }
        None => {
            let _ = child.kill();
            Err(anyhow!(
                "{}",
                v["error"].as_str().unwrap_or("did not start")
            ))
        }
    }
}

fn read_reply(r: &mut BufReader<ChildStdout>) -> Result<serde_json::Value> {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            bail!("the engine process exited");
        }
        if let Some(j) = line.strip_prefix("@@ ") {
            return Ok(serde_json::from_str(j)?);
        }
    }
}
