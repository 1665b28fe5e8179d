//! `autopipe`: the command line. Thin: parses flags, then calls the libraries.

/// mimalloc, as datafusion-cli uses: glibc's allocator serializes the many small
/// allocations of concurrent tasks in one process.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod autoscale;
mod client;
mod config;
mod gen;
mod local;
mod table;

use anyhow::{Context, Result};
use autopipe_common::auth::AuthToken;
use autopipe_common::roots::AllowedRoots;
use autopipe_common::spec::JobParams;
use autopipe_coordinator::raft::RaftConfig;
use autopipe_coordinator::CoordinatorConfig;
use autopipe_worker::WorkerConfig;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "autopipe",
    version,
    about = "Self-optimizing distributed data pipelines"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum OutputFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
struct ClientArgs {
    /// coordinator address(es), comma-separated
    #[arg(
        long,
        env = "AUTOPIPE_COORDINATOR",
        default_value = "http://127.0.0.1:7700"
    )]
    coordinator: String,
    /// output format
    #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
    output: OutputFormat,
    /// file holding the cluster's auth token (default: the AUTOPIPE_AUTH_TOKEN
    /// variable; neither: no token is sent)
    #[arg(long)]
    auth_token_file: Option<PathBuf>,
    #[command(flatten)]
    tls: TlsArgs,
}

/// TLS settings of a client or a server (all three files, or none).
#[derive(clap::Args, Clone)]
struct TlsArgs {
    /// this process's certificate (PEM); with --tls-key and --tls-ca, every gRPC
    /// connection is mutual TLS
    #[arg(long, env = "AUTOPIPE_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// the certificate's private key (PEM)
    #[arg(long, env = "AUTOPIPE_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// the CA (PEM) that signed every coordinator's, worker's and client's certificate
    #[arg(long, env = "AUTOPIPE_TLS_CA")]
    tls_ca: Option<PathBuf>,
}

impl TlsArgs {
    /// Loads the files and makes them the process's TLS settings.
    fn install(&self) -> Result<()> {
        let tls = match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (None, None, None) => None,
            (Some(c), Some(k), Some(a)) => Some(autopipe_common::tls::Tls::load(c, k, a)?),
            _ => anyhow::bail!("TLS needs all of --tls-cert, --tls-key and --tls-ca"),
        };
        autopipe_common::tls::set(tls);
        Ok(())
    }
}

impl ClientArgs {
    /// The token this command sends: from `--auth-token-file`, else AUTOPIPE_AUTH_TOKEN.
    fn token(&self) -> Result<Option<AuthToken>> {
        if let Some(p) = &self.auth_token_file {
            return Ok(Some(AuthToken::from_file(p)?));
        }
        Ok(std::env::var(autopipe_common::auth::TOKEN_ENV)
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .map(AuthToken::new))
    }
}

/// Authentication and path confinement of a coordinator, a worker or `local`.
#[derive(clap::Args, Clone)]
struct SecurityArgs {
    /// file holding the cluster's auth token: every gRPC call to this process must
    /// carry it, and its own calls send it (default: no authentication)
    #[arg(long)]
    auth_token_file: Option<PathBuf>,
    /// local directories and object-store URL prefixes (comma-separated) that jobs
    /// may read and write, e.g. /data,s3://bucket/pipelines (default: anywhere)
    #[arg(long, value_delimiter = ',')]
    allowed_roots: Vec<String>,
    #[command(flatten)]
    tls: TlsArgs,
}

impl SecurityArgs {
    fn token(&self) -> Result<Option<AuthToken>> {
        Ok(match &self.auth_token_file {
            Some(p) => Some(AuthToken::from_file(p)?),
            None => None,
        })
    }

    fn roots(&self) -> Result<AllowedRoots> {
        Ok(AllowedRoots::new(&self.allowed_roots)?)
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate an example dataset
    Gen {
        #[command(subcommand)]
        what: GenCmd,
    },
    /// Run a pipeline on an embedded cluster (1 coordinator + N workers in this process)
    Local {
        /// pipeline spec (TOML or JSON)
        spec: PathBuf,
        /// number of workers
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// task slots per worker
        #[arg(long, default_value_t = 2)]
        slots: u32,
        /// generate the clickstream example data (1M rows) next to the spec if it is missing
        #[arg(long)]
        gen_missing: bool,
        /// output format of the summary
        #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
        output: OutputFormat,
        #[command(flatten)]
        security: SecurityArgs,
        /// with --autoscale MIN..MAX, the workers are `autopipe worker` processes of
        /// --slots slots each that the coordinator starts (MIN at once) and releases,
        /// instead of --workers in this process
        #[command(flatten)]
        autoscale: autoscale::AutoscaleArgs,
        /// a default of a `[job.params]` key the spec does not set, `KEY=VALUE`
        /// (repeatable), as `coordinator --param`
        #[arg(long = "param", value_name = "KEY=VALUE")]
        params: Vec<String>,
        /// settings from a TOML file (keys: the long flag names); layered as
        /// defaults, file, AUTOPIPE_* environment, flags
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// validate the configuration, print each setting and where it came from,
        /// and exit
        #[arg(long)]
        dry_run: bool,
    },
    /// Run a coordinator
    Coordinator {
        /// settings from a TOML file (keys: the long flag names); layered as
        /// defaults, file, AUTOPIPE_* environment, flags
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// validate the configuration, print each setting and where it came from,
        /// and exit
        #[arg(long)]
        dry_run: bool,
        /// gRPC listen address
        #[arg(long, default_value = "127.0.0.1:7700")]
        listen: SocketAddr,
        /// HTTP listen address (metrics, admin API, dashboard)
        #[arg(long, default_value = "127.0.0.1:7780")]
        http: SocketAddr,
        /// state directory
        #[arg(long, default_value = "autopipe-coordinator")]
        data_dir: PathBuf,
        /// seconds without heartbeat before a worker is declared lost
        #[arg(long, default_value_t = 10.0)]
        heartbeat_timeout: f64,
        /// this coordinator's raft member id (≥ 1), or `from-hostname`: the ordinal
        /// that ends the host name, plus one (a StatefulSet's `autopipe-coordinator-2`
        /// is member 3)
        #[arg(long, default_value = "1", value_parser = parse_member_id)]
        id: u64,
        /// the raft group's founding members, `ID=HOST:PORT,…` (gRPC addresses, this
        /// one included); without it, a one-member group
        #[arg(long, value_parser = parse_peers, default_value = "")]
        peers: std::collections::BTreeMap<u64, String>,
        /// join a running group (after `autopipe admin add-coordinator`) instead of
        /// founding one
        #[arg(long)]
        join: bool,
        /// `new`: found the group named by --peers if this data directory is empty
        /// (the first start of every founder); `existing` (default): a member that
        /// starts empty waits for the leader and votes only once it has caught up, so
        /// a wiped data directory never costs committed entries (etcd's rule)
        #[arg(long, value_enum, default_value = "existing")]
        initial_cluster_state: ClusterState,
        /// raft tick interval in milliseconds
        #[arg(long, default_value_t = 100)]
        raft_tick_ms: u64,
        /// raft election timeout in milliseconds (randomized up to twice this)
        #[arg(long, default_value_t = 1000)]
        election_timeout_ms: u64,
        /// applied raft entries between snapshots (the log is compacted to each)
        #[arg(long, default_value_t = 1000)]
        snapshot_entries: u64,
        /// POST critical events (job failed, worker lost, bad-record ratio exceeded,
        /// retry budget exhausted) as JSON to this URL
        #[arg(long, env = "AUTOPIPE_ALERT_WEBHOOK")]
        alert_webhook: Option<String>,
        #[command(flatten)]
        retention: RetentionArgs,
        #[command(flatten)]
        security: SecurityArgs,
        /// with --auth-token-file: serve /metrics and the read-only HTTP API without
        /// the token (`--http-open-reads=false` closes them); changes always need it
        #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
        http_open_reads: bool,
        /// a job's commit running longer than this is abandoned and started again
        /// (every step is idempotent)
        #[arg(long, default_value_t = 300_000)]
        commit_timeout_ms: u64,
        /// test only: the first commit of each job hangs this long
        #[arg(long, hide = true, default_value_t = 0)]
        test_commit_hang_ms: u64,
        /// test only: the leader that first gets a split offer exits before recording
        /// it, if it can create this file (so once for a group sharing it)
        #[arg(long, hide = true)]
        test_exit_after_split_offer: Option<PathBuf>,
        /// place tasks by the workers' load from their heartbeats and their measured
        /// speed (`=false`: by free slots alone); a job's `load_aware_placement`
        /// parameter overrides it
        #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
        load_aware_placement: bool,
        #[command(flatten)]
        budget: BudgetArgs,
        #[command(flatten)]
        autoscale: autoscale::AutoscaleArgs,
        /// task slots of each worker the autoscaler starts
        #[arg(long, default_value_t = 2)]
        worker_slots: u32,
        /// a cluster default of a `[job.params]` key, `KEY=VALUE` (repeatable), e.g.
        /// `--param coalesce=false`: every job whose spec does not set the key gets it
        #[arg(long = "param", value_name = "KEY=VALUE")]
        params: Vec<String>,
    },
    /// Run a worker
    Worker {
        /// settings from a TOML file (keys: the long flag names); layered as
        /// defaults, file, AUTOPIPE_* environment, flags
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// validate the configuration, print each setting and where it came from,
        /// and exit
        #[arg(long)]
        dry_run: bool,
        /// coordinator address(es), comma-separated
        #[arg(
            long,
            env = "AUTOPIPE_COORDINATOR",
            default_value = "http://127.0.0.1:7700"
        )]
        coordinator: String,
        /// gRPC + Flight listen address
        #[arg(long, default_value = "127.0.0.1:7800")]
        listen: SocketAddr,
        /// HTTP /metrics listen address
        #[arg(long, default_value = "127.0.0.1:0")]
        http: SocketAddr,
        /// concurrent tasks (default: the machine's CPU cores, so a bigger machine
        /// takes more tasks; each gets its share of --memory-limit)
        #[arg(long)]
        slots: Option<u32>,
        /// shuffle directory
        #[arg(long, default_value = "autopipe-worker")]
        work_dir: PathBuf,
        /// memory for all running tasks together, e.g. "4GiB" (default: half the
        /// machine's); each task gets its slots' share and spills beyond it
        #[arg(long, value_parser = parse_size)]
        memory_limit: Option<u64>,
        /// test only: delay every task by this many milliseconds (a slow worker)
        #[arg(long, default_value_t = 0, hide = true)]
        test_task_delay_ms: u64,
        /// test only: delay only the tasks of this stage
        #[arg(long, hide = true)]
        test_task_delay_stage: Option<u32>,
        /// test only: a scan run unit by unit (dynamic rebalancing) waits this many
        /// milliseconds before each row group or chunk
        #[arg(long, default_value_t = 0, hide = true)]
        test_scan_unit_delay_ms: u64,
        /// serve map outputs only over Flight, also to reducers on this machine (which
        /// otherwise read them from this worker's shuffle directory)
        #[arg(long)]
        no_host_local_shuffle: bool,
        /// how often the worker lists its shuffle directories to the coordinator and
        /// deletes those of jobs that no longer run (also once at start)
        #[arg(long, default_value = "1m", value_parser = autopipe_common::util::parse_duration)]
        shuffle_sweep_interval: Duration,
        /// the address the coordinator and other workers reach this worker at
        /// (default: the listen address), e.g. behind a proxy or NAT
        #[arg(long)]
        advertise: Option<String>,
        /// test only: the first attempt of every task fails with a transient error
        #[arg(long, hide = true)]
        test_fail_first_attempt: bool,
        /// test only: every task panics
        #[arg(long, hide = true)]
        test_panic_tasks: bool,
        /// test only: a task given fewer slots' memory than this runs out of memory
        #[arg(long, hide = true, default_value_t = 0)]
        test_oom_below_slots: u32,
        /// on SIGTERM the worker drains: it takes no new task and stops once the
        /// coordinator released it (its tasks ended and nothing it holds is still
        /// needed), or after this many seconds; a second signal stops it at once
        #[arg(long, default_value_t = 300)]
        drain_grace_secs: u64,
        #[command(flatten)]
        security: SecurityArgs,
        #[command(flatten)]
        budget: BudgetArgs,
    },
    /// Submit a pipeline to a coordinator; prints the job id
    Submit {
        /// pipeline spec (TOML or JSON)
        spec: PathBuf,
        /// wait for the job, showing progress and the summary
        #[arg(long)]
        wait: bool,
        /// idempotency key: submitting again with the same key returns the first
        /// submission's job id instead of starting another job (e.g. a scheduler's run
        /// id, so its task retries never duplicate a job); default: a fresh key
        #[arg(long)]
        request_id: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print the stages a spec plans into (each stage's DataFusion plan), without
    /// running it; with `--analyze JOB`, the plan as a job ran: which stages were
    /// re-planned and why, planned against actual tasks, rows, bytes and task times
    Explain {
        /// pipeline spec (TOML or JSON)
        #[arg(required_unless_present = "analyze", conflicts_with = "analyze")]
        spec: Option<PathBuf>,
        /// partitions to plan with (a cluster derives this from its slots and input size)
        #[arg(long, default_value_t = 4)]
        partitions: usize,
        /// show the plan as job JOB ran, from the coordinator
        #[arg(long, value_name = "JOB")]
        analyze: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show one job
    Status {
        /// job id
        job: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Follow a job until it ends (progress, then the summary), as `submit --wait`
    Watch {
        /// job id
        job: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List jobs
    Jobs {
        /// only jobs in this state (queued, running, committing, succeeded, failed,
        /// cancelled); repeatable
        #[arg(long = "state")]
        states: Vec<String>,
        /// only jobs of this name (the spec's [job] name)
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List workers
    Workers {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel a job
    Cancel {
        /// job id
        job: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show the decision log: every automatic change (speculative copies, task
    /// timeouts, retry limits) with why, its inputs and its measured effect
    Decisions {
        /// only this job's decisions
        job: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show the coordinator group: each member's role, term, commit and applied index
    Cluster {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change the coordinator group
    Admin {
        #[command(subcommand)]
        cmd: AdminCmd,
    },
    /// A Delta table's upkeep, straight on its storage: history, vacuum
    Table {
        #[command(subcommand)]
        cmd: table::TableCmd,
    },
}

/// What a coordinator's replicated state keeps of finished jobs and lost workers.
#[derive(clap::Args, Clone, Copy)]
struct RetentionArgs {
    /// finished jobs the state keeps, as COUNT,AGE: at most COUNT (the newest) and
    /// none that ended more than AGE ago (ms, s, m, h or d); older ones are forgotten
    /// with their decisions and idempotency keys
    #[arg(long, default_value = "1000,7d")]
    job_retention: autopipe_coordinator::scheduler::retention::JobRetention,
    /// a worker lost for longer than this (ms, s, m, h or d) is pruned from the state
    #[arg(long, default_value = "1h", value_parser = autopipe_common::util::parse_duration)]
    lost_worker_retention: Duration,
}

/// The process's retry budget (tower's TpsBudget over a 10 s window).
#[derive(clap::Args, Clone, Copy)]
struct BudgetArgs {
    /// retries may add at most this percentage to the calls of the last 10 s
    #[arg(long, default_value_t = 20.0)]
    retry_budget_percent: f32,
    /// ... plus this many retries per second regardless of traffic
    #[arg(long, default_value_t = 10)]
    retry_budget_min_per_sec: u32,
}

impl BudgetArgs {
    fn install(self) {
        autopipe_common::retry::init_budget(
            autopipe_common::retry::BUDGET_TTL,
            self.retry_budget_min_per_sec,
            self.retry_budget_percent / 100.0,
        );
    }
}

#[derive(Subcommand)]
enum AdminCmd {
    /// Add a coordinator (then start it with `--id ID --join`)
    AddCoordinator {
        /// its member id
        id: u64,
        /// its gRPC address, HOST:PORT
        address: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a coordinator from the group
    RemoveCoordinator {
        /// its member id
        id: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Hand leadership to another coordinator (e.g. before maintenance)
    TransferLeader {
        /// its member id
        id: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Drain a worker as SIGTERM does: no new task; it leaves once released
    Drain {
        /// its id (see `autopipe workers`)
        worker: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum GenCmd {
    /// events/ (Parquet) and users.csv
    Clickstream {
        /// number of events
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        /// output directory
        #[arg(long, default_value = "data")]
        out: PathBuf,
        /// share of events on one user_id (0..1)
        #[arg(long, default_value_t = 0.0)]
        skew: f64,
        /// number of event files
        #[arg(long, default_value_t = 8)]
        files: usize,
        /// random seed
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
}

/// Runtime threads: at least one per task slot in this process, plus one for the servers.
/// A task runs DataFusion operators on the runtime's threads; with fewer threads than
/// running tasks, a task whose read completes waits for another task's CPU work to yield
/// (TPC-H Q6 on `local --workers 2`: 170 ms scan stage with 2 threads, 105 ms with 4).
/// `TOKIO_WORKER_THREADS` overrides.
/// `autopipe jobs | head`: a command whose stdout closes ends quietly with the
/// status of a SIGPIPE death (141), as other Unix tools do, instead of a panic with
/// a backtrace from `println!`. (Resetting SIGPIPE itself would also kill a client
/// whose server closes a connection it writes to.)
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

fn runtime_threads(cmd: &Cmd) -> usize {
    if let Some(n) = std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        return n.max(1);
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let slots = match cmd {
        Cmd::Local { workers, slots, .. } => workers * *slots as usize,
        Cmd::Worker { slots, .. } => slots.map_or(cores, |s| s as usize),
        _ => 0,
    };
    cores.max(slots + 1)
}

fn main() {
    quiet_on_closed_stdout();
    autopipe_common::tls::install_crypto_provider();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AUTOPIPE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // colours for a person at a terminal, none in a log file or a collector
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let command = config::with_env(Cli::command());
    let args = match config::expand(&command, std::env::args_os().collect()) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    };
    let matches = command.get_matches_from(args);
    config::remember(matches.clone());
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(runtime_threads(&cli.cmd))
        .enable_all()
        .build()
        .expect("tokio runtime");
    let coordinator = client_args(&cli.cmd).map(|c| c.coordinator.clone());
    match rt.block_on(run(cli)) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            let e = format!("{e:#}");
            match coordinator.as_deref().and_then(|c| not_grpc(&e, c)) {
                Some(why) => eprintln!("error: {why}"),
                None => eprintln!("error: {e}"),
            }
            std::process::exit(1);
        }
    }
}

/// A gRPC call answered by a plain HTTP server (tonic's "grpc-status header
/// missing, mapped from HTTP status code N"): most likely the coordinator's `--http`
/// port was given as `--coordinator`. Says so, and which address to use instead.
fn not_grpc(error: &str, coordinator: &str) -> Option<String> {
    let status = error
        .split("grpc-status header missing, mapped from HTTP status code ")
        .nth(1)?
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap_or_default();
    Some(format!(
        "{coordinator} answered as a plain HTTP server (HTTP status {status}), not as autopipe's gRPC API: \
         is it a coordinator's --http port (the admin API and dashboard)? CLI commands need the \
         coordinator's gRPC address, the first one it prints: \"coordinator listening on ADDR (http ...)\""
    ))
}

/// The client flags of a command that talks to a coordinator.
fn client_args(cmd: &Cmd) -> Option<&ClientArgs> {
    match cmd {
        Cmd::Submit { client, .. }
        | Cmd::Status { client, .. }
        | Cmd::Watch { client, .. }
        | Cmd::Jobs { client, .. }
        | Cmd::Workers { client }
        | Cmd::Cancel { client, .. }
        | Cmd::Decisions { client, .. }
        | Cmd::Cluster { client } => Some(client),
        Cmd::Explain {
            analyze: Some(_),
            client,
            ..
        } => Some(client),
        Cmd::Table {
            cmd: table::TableCmd::Compact { client, .. },
        } => Some(client),
        Cmd::Admin { cmd } => match cmd {
            AdminCmd::AddCoordinator { client, .. }
            | AdminCmd::RemoveCoordinator { client, .. }
            | AdminCmd::TransferLeader { client, .. }
            | AdminCmd::Drain { client, .. } => Some(client),
        },
        Cmd::Gen { .. }
        | Cmd::Table { .. }
        | Cmd::Local { .. }
        | Cmd::Coordinator { .. }
        | Cmd::Worker { .. }
        | Cmd::Explain { analyze: None, .. } => None,
    }
}

async fn run(cli: Cli) -> Result<i32> {
    // every call of a client command carries the token, when one is given
    if let Some(c) = client_args(&cli.cmd) {
        autopipe_common::auth::set_client_token(c.token()?.as_ref());
        c.tls.install()?;
    }
    match cli.cmd {
        Cmd::Gen {
            what:
                GenCmd::Clickstream {
                    rows,
                    out,
                    skew,
                    files,
                    seed,
                },
        } => {
            let t = Instant::now();
            gen::clickstream(
                &out,
                &gen::GenOptions {
                    rows,
                    skew,
                    files,
                    seed,
                },
            )?;
            println!(
                "wrote {rows} events in {files} files to {} and {} users to {} in {:.1}s",
                out.join("events").display(),
                gen::user_count(rows),
                out.join("users.csv").display(),
                t.elapsed().as_secs_f64()
            );
            Ok(0)
        }
        Cmd::Local {
            spec,
            workers,
            slots,
            gen_missing,
            output,
            security,
            autoscale,
            params,
            dry_run,
            ..
        } => {
            let params = JobParams::from_pairs(&params).map_err(anyhow::Error::msg)?;
            if dry_run {
                security.token()?;
                security.roots()?;
                config::print_effective();
                return Ok(0);
            }
            run_local(
                &spec,
                (workers, slots),
                gen_missing,
                output,
                &security,
                &autoscale,
                params,
            )
            .await
        }
        Cmd::Coordinator {
            listen,
            http,
            data_dir,
            heartbeat_timeout,
            id,
            peers,
            join,
            initial_cluster_state,
            raft_tick_ms,
            election_timeout_ms,
            snapshot_entries,
            alert_webhook,
            retention,
            security,
            http_open_reads,
            commit_timeout_ms,
            test_commit_hang_ms,
            test_exit_after_split_offer,
            load_aware_placement,
            budget,
            autoscale,
            worker_slots,
            params,
            dry_run,
            ..
        } => {
            budget.install();
            if !join && !peers.is_empty() && !peers.contains_key(&id) {
                anyhow::bail!(
                    "--peers names members {:?} but not this coordinator's --id {id} (a \
                     coordinator added with `autopipe admin add-coordinator` starts with \
                     --join)",
                    peers.keys().collect::<Vec<_>>()
                );
            }
            let default_params = JobParams::from_pairs(&params).map_err(anyhow::Error::msg)?;
            let autoscale =
                autoscale.config(worker_slots, PathBuf::new(), &worker_security(&security))?;
            let auth_token = security.token()?;
            security.tls.install()?;
            let allowed_roots = security.roots()?;
            if dry_run {
                config::print_effective();
                return Ok(0);
            }
            if !allowed_roots.is_restricted() {
                tracing::warn!(
                    "no --allowed-roots: jobs may read and write any path this coordinator \
                     and its workers can reach (paths are unrestricted)"
                );
            }
            let cancel = shutdown_token();
            let tick = raft_tick_ms.max(1);
            let h = autopipe_coordinator::start(
                CoordinatorConfig {
                    listen,
                    http,
                    data_dir,
                    heartbeat_timeout: Duration::from_secs_f64(heartbeat_timeout),
                    raft: RaftConfig {
                        id,
                        peers,
                        join,
                        initial_cluster_new: initial_cluster_state == ClusterState::New,
                        tick: Duration::from_millis(tick),
                        election_ticks: (election_timeout_ms / tick).max(2) as usize,
                        snapshot_entries: snapshot_entries.max(1),
                        ..Default::default()
                    },
                    alert_webhook,
                    job_retention: retention.job_retention,
                    lost_worker_retention: retention.lost_worker_retention,
                    auth_token,
                    http_open_reads,
                    commit_timeout: Duration::from_millis(commit_timeout_ms.max(1)),
                    test_commit_hang: Duration::from_millis(test_commit_hang_ms),
                    test_exit_after_split_offer,
                    allowed_roots,
                    autoscale,
                    default_params,
                    load_aware_placement,
                    ..Default::default()
                },
                cancel,
            )
            .await?;
            println!(
                "coordinator listening on {} (http {})",
                h.grpc_addr, h.http_addr
            );
            h.join().await;
            Ok(0)
        }
        Cmd::Worker {
            coordinator,
            listen,
            http,
            slots,
            work_dir,
            memory_limit,
            test_task_delay_ms,
            test_task_delay_stage,
            test_scan_unit_delay_ms,
            no_host_local_shuffle,
            shuffle_sweep_interval,
            advertise,
            test_fail_first_attempt,
            test_panic_tasks,
            test_oom_below_slots,
            drain_grace_secs,
            security,
            budget,
            dry_run,
            ..
        } => {
            let slots = slots.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(2, |n| n.get() as u32)
            });
            if slots == 0 {
                anyhow::bail!("--slots must be at least 1");
            }
            budget.install();
            let auth_token = security.token()?;
            security.tls.install()?;
            let allowed_roots = security.roots()?;
            if dry_run {
                config::print_effective();
                return Ok(0);
            }
            let cancel = CancellationToken::new();
            let h = autopipe_worker::start(
                WorkerConfig {
                    coordinators: coordinator
                        .split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect(),
                    listen,
                    http,
                    slots,
                    work_dir,
                    memory_limit: memory_limit.unwrap_or(0),
                    test_task_delay: Duration::from_millis(test_task_delay_ms),
                    test_delay_stage: test_task_delay_stage,
                    test_scan_unit_delay: Duration::from_millis(test_scan_unit_delay_ms),
                    test_fail_first_attempt,
                    test_panic_tasks,
                    test_oom_below_slots,
                    host_local_shuffle: !no_host_local_shuffle,
                    shuffle_sweep_interval,
                    advertise,
                    auth_token,
                    allowed_roots,
                    ..Default::default()
                },
                cancel.clone(),
            )
            .await?;
            println!("worker listening on {} (http {})", h.addr, h.http_addr);
            tokio::spawn(drain_on_signal(
                h.shared.clone(),
                cancel,
                Duration::from_secs(drain_grace_secs),
            ));
            h.join().await;
            Ok(0)
        }
        Cmd::Submit {
            spec,
            wait,
            request_id,
            client,
        } => {
            let s = client::load_spec(&spec)?;
            let t = Instant::now();
            let request_id =
                request_id.unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
            let id = client::submit(
                &client.coordinator,
                &s,
                &spec.display().to_string(),
                &request_id,
            )
            .await?;
            if !wait {
                if client.output == OutputFormat::Json {
                    println!("{}", serde_json::json!({ "job_id": id }));
                } else {
                    println!("{id}");
                }
                return Ok(0);
            }
            // Ctrl-C is ours from before the job id is printed
            let interrupt = interrupt_signal()?;
            if client.output == OutputFormat::Text {
                println!("submitted {id}");
            }
            follow(&client, &id, t, interrupt).await
        }
        Cmd::Watch { job, client } => {
            follow(&client, &job, Instant::now(), interrupt_signal()?).await
        }
        Cmd::Explain {
            analyze: Some(job),
            client,
            ..
        } => {
            let ch = client::connect(&client.coordinator).await?;
            let mut c = autopipe_proto::job_service_client::JobServiceClient::new(ch.clone());
            let st = c
                .get_job(autopipe_proto::JobId {
                    job_id: job.clone(),
                })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                .into_inner();
            let ds = client::job_decisions(ch, &job).await?;
            if client.output == OutputFormat::Json {
                let v = autopipe_coordinator::api::explain::explain_json(&st, &ds);
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!(
                    "{}",
                    autopipe_coordinator::api::explain::explain_text(&st, &ds)
                );
            }
            Ok(0)
        }
        Cmd::Explain {
            spec,
            partitions,
            client,
            ..
        } => {
            let spec = spec.context("a spec file or --analyze JOB")?;
            let spec = client::load_spec(&spec)?;
            let job = autopipe_coordinator::planner::plan_job(&spec, partitions.max(1)).await?;
            if client.output == OutputFormat::Json {
                let v: Vec<_> = job
                    .stages
                    .iter()
                    .map(|st| {
                        serde_json::json!({
                            "stage_id": st.id,
                            "kind": if st.shuffle_partitions.is_some() { "map" } else { "sink" },
                            "shuffle_partitions": st.shuffle_partitions,
                            "tasks_planned": st.tasks,
                            "input_stages": st.inputs,
                            "plan": st.display,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(0);
            }
            for st in &job.stages {
                let kind = match st.shuffle_partitions {
                    Some(n) => format!("map → {n} partitions"),
                    None => "sink".into(),
                };
                println!(
                    "stage {} ({kind}, {} tasks, reads stages {:?})\n{}",
                    st.id, st.tasks, st.inputs, st.display
                );
            }
            Ok(0)
        }
        Cmd::Status { job, client } => {
            let ch = client::connect(&client.coordinator).await?;
            let mut c = autopipe_proto::job_service_client::JobServiceClient::new(ch);
            let st = c
                .get_job(autopipe_proto::JobId { job_id: job })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                .into_inner();
            client::print_job(&st, client.output == OutputFormat::Json);
            Ok(0)
        }
        Cmd::Jobs {
            states,
            name,
            client,
        } => {
            let states = states
                .iter()
                .map(|s| {
                    autopipe_proto::JobState::from_str_name(&s.to_ascii_uppercase())
                        .filter(|s| *s != autopipe_proto::JobState::Unspecified)
                        .map(|s| s as i32)
                        .ok_or_else(|| {
                            anyhow::anyhow!(
                                "--state {s}: not a job state (queued, running, committing, succeeded, failed, cancelled)"
                            )
                        })
                })
                .collect::<Result<Vec<i32>>>()?;
            let ch = client::connect(&client.coordinator).await?;
            let mut c = autopipe_proto::job_service_client::JobServiceClient::new(ch);
            // every page, in submission order
            let (mut jobs, mut page_token) = (Vec::new(), String::new());
            loop {
                let page = c
                    .list_jobs(autopipe_proto::ListJobsRequest {
                        page_size: 0,
                        page_token,
                        states: states.clone(),
                        name: name.clone().unwrap_or_default(),
                        view: autopipe_proto::JobView::Basic as i32,
                    })
                    .await
                    .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                    .into_inner();
                jobs.extend(page.jobs);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            if client.output == OutputFormat::Json {
                let v: Vec<_> = jobs.iter().map(client::job_json).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "{:<44} {:<11} {:<24} {:>10} {:>11} {:>12} {:>12}",
                    "JOB", "STATE", "SUBMITTED", "DURATION", "TASKS", "ROWS IN", "ROWS OUT"
                );
                let now = autopipe_common::util::now_ms();
                for j in &jobs {
                    // a running job's duration so far
                    let end = if j.finished_at_ms > 0 {
                        j.finished_at_ms
                    } else {
                        now
                    };
                    let secs = end.saturating_sub(j.submitted_at_ms) as f64 / 1000.0;
                    println!(
                        "{:<44} {:<11} {:<24} {:>9.1}s {:>5}/{:<5} {:>12} {:>12}",
                        j.job_id,
                        client::state_name(j.state),
                        client::time(j.submitted_at_ms),
                        secs,
                        j.tasks_done,
                        j.tasks_total,
                        j.rows_in,
                        j.rows_out
                    );
                }
            }
            Ok(0)
        }
        Cmd::Workers { client } => {
            let ch = client::connect(&client.coordinator).await?;
            let mut c = autopipe_proto::admin_service_client::AdminServiceClient::new(ch);
            let ws = c
                .list_workers(autopipe_proto::ListWorkersRequest {})
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                .into_inner()
                .workers;
            if client.output == OutputFormat::Json {
                let v: Vec<_> = ws
                    .iter()
                    .map(autopipe_coordinator::api::json::worker_json)
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "{:<12} {:<22} {:<6} {:>5} {:>7} {:>6} LOAD (recorded)",
                    "WORKER", "ADDRESS", "STATE", "SLOTS", "RUNNING", "CPU%"
                );
                for w in &ws {
                    println!(
                        "{:<12} {:<22} {:<6} {:>5} {:>7} {:>6.0} {}",
                        w.worker_id,
                        w.address,
                        <autopipe_proto::WorkerState as autopipe_proto::ShortName>::name_of(
                            w.state
                        ),
                        w.slots,
                        w.running_tasks,
                        w.cpu_percent,
                        client::load_line(w.load.as_ref())
                    );
                }
            }
            Ok(0)
        }
        Cmd::Decisions { job, client } => {
            let ch = client::connect(&client.coordinator).await?;
            let mut c = autopipe_proto::admin_service_client::AdminServiceClient::new(ch);
            let r = c
                .list_decisions(autopipe_proto::ListDecisionsRequest {
                    job_id: job.unwrap_or_default(),
                })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                .into_inner();
            client::print_decisions(&r.decisions, client.output == OutputFormat::Json)?;
            Ok(0)
        }
        Cmd::Table { cmd } => table::run(cmd).await,
        Cmd::Cluster { client } => {
            let ch = client::connect_any(&client.coordinator).await?;
            let mut c = autopipe_proto::admin_service_client::AdminServiceClient::new(ch);
            let st = c
                .cluster_status(autopipe_proto::ClusterStatusRequest {})
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                .into_inner();
            client::print_cluster(&st, client.output == OutputFormat::Json)?;
            Ok(0)
        }
        Cmd::Admin {
            cmd: AdminCmd::Drain { worker, client },
        } => {
            let ch = client::connect(&client.coordinator).await?;
            let mut c = autopipe_proto::admin_service_client::AdminServiceClient::new(ch);
            c.drain_worker(autopipe_proto::DrainWorkerRequest {
                worker_id: worker.clone(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
            println!("worker {worker} drains: it takes no new task and leaves once released");
            Ok(0)
        }
        Cmd::Admin { cmd } => {
            let (client, st) = match cmd {
                AdminCmd::AddCoordinator {
                    id,
                    address,
                    client,
                } => {
                    let ch = client::connect(&client.coordinator).await?;
                    let mut c = autopipe_proto::admin_service_client::AdminServiceClient::new(ch);
                    let st = c
                        .add_coordinator(autopipe_proto::AddCoordinatorRequest { id, address })
                        .await
                        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                        .into_inner();
                    (client, st)
                }
                AdminCmd::RemoveCoordinator { id, client } => {
                    let ch = client::connect(&client.coordinator).await?;
                    let mut c = autopipe_proto::admin_service_client::AdminServiceClient::new(ch);
                    let st = c
                        .remove_coordinator(autopipe_proto::RemoveCoordinatorRequest { id })
                        .await
                        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                        .into_inner();
                    (client, st)
                }
                AdminCmd::Drain { .. } => unreachable!("handled above"),
                AdminCmd::TransferLeader { id, client } => {
                    let ch = client::connect(&client.coordinator).await?;
                    let mut c = autopipe_proto::admin_service_client::AdminServiceClient::new(ch);
                    let st = c
                        .transfer_leader(autopipe_proto::TransferLeaderRequest { id })
                        .await
                        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                        .into_inner();
                    (client, st)
                }
            };
            client::print_cluster(&st, client.output == OutputFormat::Json)?;
            Ok(0)
        }
        Cmd::Cancel { job, client } => {
            let ch = client::connect(&client.coordinator).await?;
            let mut c = autopipe_proto::job_service_client::JobServiceClient::new(ch);
            let st = c
                .cancel_job(autopipe_proto::JobId { job_id: job })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                .into_inner();
            client::print_job(&st, client.output == OutputFormat::Json);
            Ok(0)
        }
    }
}

/// The job's decisions for its summary; a failure to read them costs the summary
/// only those lines.
async fn decisions_or_warn(
    ch: autopipe_common::auth::AuthChannel,
    job_id: &str,
) -> Vec<autopipe_proto::Decision> {
    client::job_decisions(ch, job_id).await.unwrap_or_else(|e| {
        eprintln!("warning: {e:#}");
        vec![]
    })
}

/// Prints a finished job's summary with what the system changed in it (its decisions).
fn finish(
    st: &autopipe_proto::JobStatus,
    decisions: &[autopipe_proto::Decision],
    wall: Duration,
    output: OutputFormat,
    explain_hint: bool,
) -> Result<i32> {
    if output == OutputFormat::Json {
        let mut v = client::job_json(st);
        v["wall_time_s"] = serde_json::json!(wall.as_secs_f64());
        v["decisions"] = decisions
            .iter()
            .map(autopipe_coordinator::api::json::decision_json)
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", client::summary(st, wall));
        print!("{}", client::decisions_summary(decisions, explain_hint));
    }
    if client::job_ok(st) {
        Ok(0)
    } else {
        if output == OutputFormat::Text {
            eprintln!(
                "error: job {} {}: {}",
                st.job_id,
                client::state_name(st.state),
                st.error
                    .as_ref()
                    .map(|e| e.message.as_str())
                    .unwrap_or("no reason recorded")
            );
        }
        Ok(1)
    }
}

async fn run_local(
    spec_path: &Path,
    (workers, slots): (usize, u32),
    gen_missing: bool,
    output: OutputFormat,
    security: &SecurityArgs,
    autoscale: &autoscale::AutoscaleArgs,
    params: JobParams,
) -> Result<i32> {
    if workers == 0 || slots == 0 {
        anyhow::bail!("--workers and --slots must be at least 1");
    }
    // the started workers' work dirs go under the cluster's temporary dir
    let autoscale = autoscale.config(slots, PathBuf::new(), &worker_security(security))?;
    let auth_token = security.token()?;
    security.tls.install()?;
    let allowed_roots = security.roots()?;
    if gen_missing {
        let dir = spec_path.parent().unwrap_or(Path::new(".")).join("data");
        if !dir.join("events").exists() || !dir.join("users.csv").exists() {
            eprintln!("generating example data in {} ...", dir.display());
            gen::clickstream(
                &dir,
                &gen::GenOptions {
                    rows: 1_000_000,
                    skew: 0.0,
                    files: 8,
                    seed: 42,
                },
            )
            .context("generating example data")?;
        }
    }
    let spec = client::load_spec(spec_path)?;
    let t = Instant::now();
    let scaled = autoscale.as_ref().map(|a| (a.params.min, a.params.max));
    let cluster =
        local::LocalCluster::start(workers, slots, auth_token, allowed_roots, autoscale, params)
            .await?;
    if output == OutputFormat::Text {
        match scaled {
            Some((min, max)) => eprintln!(
                "local cluster: coordinator {} (http://{}), autoscaling {min}..{max} worker processes x {slots} slots",
                cluster.url, cluster.http
            ),
            None => eprintln!(
                "local cluster: coordinator {} (http://{}), {workers} workers x {slots} slots",
                cluster.url, cluster.http
            ),
        }
    }
    let ch = client::connect(&cluster.url).await?;
    let res = async {
        let request_id = uuid::Uuid::new_v4().simple().to_string();
        let id = client::submit(
            &cluster.url,
            &spec,
            &spec_path.display().to_string(),
            &request_id,
        )
        .await?;
        let st = client::watch(ch.clone(), &id, output == OutputFormat::Text).await?;
        // read before the cluster (and its decision log) goes away
        let ds = decisions_or_warn(ch, &id).await;
        anyhow::Ok((st, ds))
    }
    .await;
    cluster.shutdown().await;
    let (st, ds) = res?;
    // the embedded cluster is gone: nothing to `explain --analyze` afterwards
    finish(&st, &ds, t.elapsed(), output, false)
}

/// The security flags the autoscaler's workers are started with.
fn worker_security(s: &SecurityArgs) -> autoscale::WorkerSecurity {
    autoscale::WorkerSecurity {
        auth_token_file: s.auth_token_file.clone(),
        allowed_roots: s.allowed_roots.clone(),
        tls: match (&s.tls.tls_cert, &s.tls.tls_key, &s.tls.tls_ca) {
            (Some(c), Some(k), Some(a)) => Some((c.clone(), k.clone(), a.clone())),
            _ => None,
        },
    }
}

/// Follows job `id` until it ends and prints its summary (`submit --wait`, `watch`).
/// Ctrl-C asks at a terminal whether to cancel the job; otherwise (or when the answer
/// is no) it detaches, saying how to follow the job again; exit status 130.
async fn follow(
    client: &ClientArgs,
    id: &str,
    started: Instant,
    mut interrupt: tokio::signal::unix::Signal,
) -> Result<i32> {
    let ch = client::connect(&client.coordinator).await?;
    let text = client.output == OutputFormat::Text;
    let st = tokio::select! {
        st = client::watch(ch.clone(), id, text) => st?,
        _ = interrupt.recv() => {
            let ask = std::io::IsTerminal::is_terminal(&std::io::stdin())
                && std::io::IsTerminal::is_terminal(&std::io::stderr());
            let cancel = ask && {
                eprint!("\ncancel job {id}? [y/N] ");
                let mut answer = String::new();
                std::io::stdin().read_line(&mut answer).is_ok()
                    && answer.trim().eq_ignore_ascii_case("y")
            };
            if cancel {
                let mut c = autopipe_proto::job_service_client::JobServiceClient::new(ch);
                c.cancel_job(autopipe_proto::JobId { job_id: id.to_string() })
                    .await
                    .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
                eprintln!("job {id} cancelled");
            } else {
                eprintln!(
                    "\ndetached; job {id} keeps running. Follow it again with `autopipe watch {id}`, stop it with `autopipe cancel {id}`"
                );
            }
            return Ok(130);
        }
    };
    let ds = decisions_or_warn(ch, id).await;
    finish(&st, &ds, started.elapsed(), client.output, true)
}

/// SIGINT (Ctrl-C) as a stream: from now on it no longer ends the process.
fn interrupt_signal() -> Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot handle Ctrl-C")
}

/// A worker's stop: the first SIGTERM or SIGINT drains it (no new task; its
/// streaming tasks move elsewhere; the others end) until the coordinator releases it
/// (nothing runs there and nothing it holds is still needed: it is not declared lost
/// and nothing is redone), at most `grace`; a second signal stops it at once.
async fn drain_on_signal(
    shared: std::sync::Arc<autopipe_worker::control::WorkerShared>,
    stop: CancellationToken,
    grace: Duration,
) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    let started = shared.drain_started();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
        // `autopipe admin drain WORKER`
        _ = started.cancelled() => {},
        _ = stop.cancelled() => return,
    }
    shared.drain();
    let released = shared.released();
    tokio::select! {
        _ = released.cancelled() => {}
        _ = tokio::time::sleep(grace) => {
            tracing::warn!("not released within the drain grace ({grace:?}); stopping anyway");
        }
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    stop.cancel();
}

/// Cancelled on SIGINT/SIGTERM.
fn shutdown_token() -> CancellationToken {
    let t = CancellationToken::new();
    let t2 = t.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        t2.cancel();
    });
    t
}

/// `--id`: a member id, or `from-hostname` (see [`member_id_from_hostname`]).
fn parse_member_id(s: &str) -> Result<u64, String> {
    if s == "from-hostname" {
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|h| h.trim().to_string())
            })
            .unwrap_or_default();
        return member_id_from_hostname(&host);
    }
    match s.parse::<u64>() {
        Ok(id) if id >= 1 => Ok(id),
        _ => Err(format!(
            "'{s}' is not a member id (a number ≥ 1) nor `from-hostname`"
        )),
    }
}

/// A StatefulSet pod's host name ends in its ordinal from 0: `coord-0` → member 1.
fn member_id_from_hostname(host: &str) -> Result<u64, String> {
    let short = host.split('.').next().unwrap_or(host);
    short
        .rsplit_once('-')
        .and_then(|(_, n)| n.parse::<u64>().ok())
        .map(|n| n + 1)
        .ok_or_else(|| {
            format!(
                "--id from-hostname: host name '{host}' does not end in -ORDINAL \
                 (as a StatefulSet's pods do: autopipe-coordinator-0)"
            )
        })
}

/// `1=127.0.0.1:7701,2=127.0.0.1:7702` → id → address.
fn parse_peers(s: &str) -> Result<std::collections::BTreeMap<u64, String>, String> {
    let mut out = std::collections::BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| format!("'{part}' is not ID=HOST:PORT"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("'{id}' in '{part}' is not a member id (a number ≥ 1)"))?;
        let addr = addr.trim().trim_start_matches("http://").to_string();
        if id == 0 || addr.is_empty() {
            return Err(format!(
                "'{part}': ids start at 1 and the address must be set"
            ));
        }
        if out.insert(id, addr).is_some() {
            return Err(format!("member id {id} is listed twice"));
        }
    }
    Ok(out)
}

/// A byte size flag: "256MiB", "4GiB" or a plain number.
fn parse_size(s: &str) -> Result<u64, String> {
    autopipe_common::util::parse_bytes(s)
}

/// `--initial-cluster-state`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ClusterState {
    /// found the group (first start)
    New,
    /// join the group's existing state
    Existing,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_statefulset_pods_ordinal_is_its_member_id_plus_one() {
        assert_eq!(member_id_from_hostname("autopipe-coordinator-0"), Ok(1));
        assert_eq!(
            member_id_from_hostname("autopipe-coordinator-2.autopipe-coordinator.ns"),
            Ok(3)
        );
        assert!(member_id_from_hostname("laptop").is_err());
        assert_eq!(parse_member_id("4"), Ok(4));
        assert!(parse_member_id("0").is_err());
    }
}
