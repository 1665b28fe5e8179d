//! `--autoscale MIN..MAX` and its flags, shared by `autopipe coordinator` and
//! `autopipe local` (issue 12 §2.8; the rule is `optimizer::scaling`, the loop
//! `scheduler::autoscale`).

use anyhow::Result;
use autopipe_coordinator::optimizer::scaling::Params;
use autopipe_coordinator::provisioner::LocalConfig;
use autopipe_coordinator::scheduler::autoscale::{parse_range, AutoscaleConfig, ProvisionerConfig};
use clap::ValueEnum;
use std::path::PathBuf;
use std::time::Duration;

/// `--provisioner`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProvisionerKind {
    /// `autopipe worker` processes of this binary on this machine
    Local,
}

/// The autoscaler's flags.
#[derive(clap::Args, Clone)]
pub struct AutoscaleArgs {
    /// scale the fleet between MIN and MAX workers (e.g. 1..4): workers are added
    /// while ready tasks wait for slots longer than --backlog-timeout (1, 2, 4, … at a
    /// time) and released once idle for --idle-timeout (default: off, the fleet is what
    /// registers; N..N pins it at N)
    #[arg(long, value_name = "MIN..MAX", value_parser = parse_range)]
    pub autoscale: Option<(u32, u32)>,
    /// how the autoscaler starts workers (with --autoscale)
    #[arg(long, value_enum)]
    pub provisioner: Option<ProvisionerKind>,
    /// a backlog lasting this long asks for workers (ms, s, m, h or d; Spark's default)
    #[arg(long, default_value = "1s", value_parser = autopipe_common::util::parse_duration)]
    pub backlog_timeout: Duration,
    /// a started worker idle this long is released (ms, s, m, h or d; Spark's default)
    #[arg(long, default_value = "60s", value_parser = autopipe_common::util::parse_duration)]
    pub idle_timeout: Duration,
    /// a flag for every worker the autoscaler starts, e.g. --worker-arg=--memory-limit=2GiB
    /// (repeatable)
    #[arg(long, allow_hyphen_values = true, value_name = "FLAG")]
    pub worker_arg: Vec<String>,
}

/// Flags the started workers need to join a secured cluster.
#[derive(Default)]
pub struct WorkerSecurity {
    /// `--auth-token-file`
    pub auth_token_file: Option<PathBuf>,
    /// `--allowed-roots`
    pub allowed_roots: Vec<String>,
    /// `--tls-cert`, `--tls-key`, `--tls-ca`
    pub tls: Option<(PathBuf, PathBuf, PathBuf)>,
}

impl AutoscaleArgs {
    /// The coordinator's autoscale settings (`None` without --autoscale): started
    /// workers get `worker_slots` slots, work dirs under `root` (empty: the
    /// coordinator's data dir) and the cluster's security flags.
    pub fn config(
        &self,
        worker_slots: u32,
        root: PathBuf,
        security: &WorkerSecurity,
    ) -> Result<Option<AutoscaleConfig>> {
        let Some((min, max)) = self.autoscale else {
            if self.provisioner.is_some() {
                anyhow::bail!("--provisioner needs --autoscale MIN..MAX");
            }
            return Ok(None);
        };
        if worker_slots == 0 {
            anyhow::bail!("--worker-slots must be at least 1");
        }
        if self.backlog_timeout.is_zero() || self.idle_timeout.is_zero() {
            anyhow::bail!("--backlog-timeout and --idle-timeout must be above zero");
        }
        let mut extra = vec![];
        if let Some(f) = &security.auth_token_file {
            extra.push(format!("--auth-token-file={}", f.display()));
        }
        if !security.allowed_roots.is_empty() {
            extra.push(format!(
                "--allowed-roots={}",
                security.allowed_roots.join(",")
            ));
        }
        if let Some((c, k, a)) = &security.tls {
            extra.push(format!("--tls-cert={}", c.display()));
            extra.push(format!("--tls-key={}", k.display()));
            extra.push(format!("--tls-ca={}", a.display()));
        }
        extra.extend(self.worker_arg.iter().cloned());
        Ok(Some(AutoscaleConfig {
            params: Params {
                min,
                max,
                backlog_timeout: self.backlog_timeout,
                idle_timeout: self.idle_timeout,
                worker_slots,
            },
            provisioner: match self.provisioner.unwrap_or(ProvisionerKind::Local) {
                ProvisionerKind::Local => ProvisionerConfig::Local(LocalConfig {
                    binary: None,
                    root,
                    slots: worker_slots,
                    extra_args: extra,
                }),
            },
        }))
    }
}
