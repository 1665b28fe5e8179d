//! Apache Ballista as a `bench tpch` engine (cargo feature `ballista`): one scheduler and
//! N executor processes, each a `bench ballista-scheduler` / `bench ballista-executor`
//! process running the crates.io `ballista-scheduler` / `ballista-executor` libraries
//! (the same code as their binaries, without their CLI parsing), push-staged like their
//! default. Queries go through Ballista's own client (`SessionContext::remote_with_state`)
//! and write Parquet on the executors, as every other engine does.

use anyhow::{anyhow, bail, Context, Result};
use ballista::prelude::{SessionConfigExt, SessionContextExt};
use ballista_core::config::TaskSchedulingPolicy;
use ballista_executor::executor_process::{start_executor_process, ExecutorProcessConfig};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::start_server;
use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use integration_tests::tpch::TABLES;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `bench ballista-scheduler --port P`: runs a scheduler until killed.
pub fn scheduler(port: u16) -> Result<()> {
    runtime()?.block_on(async move {
        let config = SchedulerConfig::default()
            .with_hostname("127.0.0.1")
            .with_port(port)
            .with_scheduler_policy(TaskSchedulingPolicy::PushStaged);
        let cluster = BallistaCluster::new_from_config(&config).await?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        start_server(cluster, addr, Arc::new(config)).await?;
        Ok(())
    })
}

/// `bench ballista-executor …`: runs an executor with `slots` task slots until killed.
pub fn executor(
    scheduler_port: u16,
    port: u16,
    grpc_port: u16,
    slots: usize,
    work_dir: &Path,
) -> Result<()> {
    let config = ExecutorProcessConfig {
        bind_host: "127.0.0.1".into(),
        external_host: Some("127.0.0.1".into()),
        port,
        grpc_port,
        scheduler_host: "127.0.0.1".into(),
        scheduler_port,
        scheduler_connect_timeout_seconds: 10,
        vcores: slots,
        task_scheduling_policy: TaskSchedulingPolicy::PushStaged,
        work_dir: Some(work_dir.display().to_string()),
        ..Default::default()
    };
    runtime()?.block_on(async move {
        start_executor_process(Arc::new(config)).await?;
        Ok(())
    })
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    // as Ballista's binaries build theirs
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(32 * 1024 * 1024)
        .build()?)
}

/// A running Ballista cluster: the scheduler first, then the executors.
pub struct Ballista {
    procs: Vec<Child>,
    url: String,
    partitions: usize,
}

impl Ballista {
    /// Starts a scheduler and `workers` executors with `slots` slots each, working
    /// under `dir`; returns once every process listens and a query has run.
    pub fn start(
        workers: usize,
        slots: u32,
        dir: &Path,
        rt: &tokio::runtime::Runtime,
    ) -> Result<Ballista> {
        let exe = std::env::current_exe()?;
        let sched_port = free_port()?;
        let mut b = Ballista {
            procs: Vec::new(),
            url: format!("df://127.0.0.1:{sched_port}"),
            partitions: workers * slots as usize,
        };
        let logs = dir.join("ballista-logs");
        std::fs::create_dir_all(&logs)?;
        let log = |name: &str| -> Result<Stdio> {
            Ok(std::fs::File::create(logs.join(format!("{name}.log")))?.into())
        };
        b.procs.push(
            Command::new(&exe)
                .args(["ballista-scheduler", "--port", &sched_port.to_string()])
                .env("RUST_LOG", "warn")
                .stdout(log("scheduler")?)
                .stderr(log("scheduler.err")?)
                .spawn()?,
        );
        wait_listening(sched_port, &mut b.procs[0])?;
        for i in 0..workers {
            let (port, grpc) = (free_port()?, free_port()?);
            let work = dir.join(format!("ballista-work-{i}"));
            let _ = std::fs::remove_dir_all(&work);
            std::fs::create_dir_all(&work)?;
            b.procs.push(
                Command::new(&exe)
                    .arg("ballista-executor")
                    .args(["--scheduler-port", &sched_port.to_string()])
                    .args(["--port", &port.to_string()])
                    .args(["--grpc-port", &grpc.to_string()])
                    .args(["--slots", &slots.to_string()])
                    .arg("--work-dir")
                    .arg(&work)
                    .env("RUST_LOG", "warn")
                    .stdout(log(&format!("executor-{i}"))?)
                    .stderr(log(&format!("executor-{i}.err"))?)
                    .spawn()?,
            );
            let child = b.procs.last_mut().context("executor")?;
            wait_listening(port, child)?;
        }
        // the executors register in the background; a first query waits for them
        let probe = dir.join("ballista-probe");
        rt.block_on(b.query(Path::new("/nonexistent"), "select 1 as one", &probe, false))
            .context("Ballista's first query")?;
        Ok(b)
    }

    /// Runs `sql` over the TPC-H tables under `data`, writing Parquet into `out`.
    pub async fn run(&self, data: &Path, sql: &str, out: &Path) -> Result<Duration> {
        self.query(data, sql, out, true).await
    }

    async fn query(&self, data: &Path, sql: &str, out: &Path, tables: bool) -> Result<Duration> {
        let t = Instant::now();
        let config = SessionConfig::new_with_ballista().with_target_partitions(self.partitions);
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features()
            .build();
        let ctx = SessionContext::remote_with_state(&self.url, state).await?;
        if tables {
            for table in TABLES {
                let path = format!("{}/", data.join(table).display());
                ctx.register_parquet(table, &path, ParquetReadOptions::default())
                    .await?;
            }
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
}

impl Drop for Ballista {
    fn drop(&mut self) {
        for c in self.procs.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_listening(port: u16, child: &mut Child) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if let Some(st) = child.try_wait()? {
            bail!("a Ballista process exited ({st}) before listening on {port}");
        }
        if Instant::now() > deadline {
            return Err(anyhow!(
                "no Ballista process listening on {port} after 30 s"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
