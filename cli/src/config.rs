//! One configuration, layered (issue 14): `coordinator`, `worker` and `local` take
//! `--config FILE`, a TOML table whose keys are their long flag names
//! (`heartbeat-timeout` or `heartbeat_timeout`; a list repeats its flag, `true` turns
//! a switch on). The layers, each over the one before: built-in defaults, the file,
//! `AUTOPIPE_*` environment variables, flags. `--dry-run` validates the result and
//! prints each setting with where it came from, and exits; `autopipe config print
//! ROLE [FLAGS]` is the same as `autopipe ROLE [FLAGS] --dry-run`.

use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::sync::OnceLock;

/// The commands that take `--config`.
const ROLES: [&str; 3] = ["coordinator", "worker", "local"];

/// The parsed command line and the settings the file gave.
struct Parsed {
    matches: clap::ArgMatches,
    from_file: BTreeSet<String>,
}

static PARSED: OnceLock<Parsed> = OnceLock::new();

/// Every setting of `coordinator`, `worker` and `local` reads `AUTOPIPE_<FLAG>` from the
/// environment (`--memory-limit` ← `AUTOPIPE_MEMORY_LIMIT`) unless it names another
/// variable already (`--coordinator` ← `AUTOPIPE_COORDINATOR`, `--tls-cert` ←
/// `AUTOPIPE_TLS_CERT`); a flag on the command line wins over it.
pub fn with_env(cmd: clap::Command) -> clap::Command {
    ROLES.iter().fold(cmd, |cmd, role| {
        cmd.mut_subcommand(role, |sub| {
            sub.mut_args(|a| match a.get_long() {
                Some(long) if a.get_env().is_none() && !NO_ENV.contains(&long) => {
                    // (clap keeps the name for the process's life)
                    let var: &'static str = Box::leak(env_var(long).into_boxed_str());
                    a.env(var)
                }
                _ => a,
            })
        })
    })
}

/// Flags that no environment variable sets.
const NO_ENV: [&str; 3] = ["config", "dry-run", "help"];

/// The environment variable of flag `--long`.
fn env_var(long: &str) -> String {
    format!("AUTOPIPE_{}", long.replace('-', "_").to_ascii_uppercase())
}

/// The command line with `autopipe config print ROLE ...` rewritten and a
/// `--config` file's settings appended as flags (those the environment or the
/// command line does not set); remembers which settings came from the file.
pub fn expand(cmd: &clap::Command, args: Vec<OsString>) -> Result<Vec<OsString>> {
    let mut args = args;
    let word = |i: usize, a: &[OsString]| a.get(i).and_then(|s| s.to_str()).map(str::to_string);
    if word(1, &args).as_deref() == Some("config") {
        if word(2, &args).as_deref() != Some("print") || word(3, &args).is_none() {
            bail!("usage: autopipe config print coordinator|worker|local [--config FILE] [FLAGS]");
        }
        let mut rewritten = vec![args[0].clone()];
        rewritten.extend(args.drain(3..));
        rewritten.push("--dry-run".into());
        args = rewritten;
    }
    let Some(role) = word(1, &args).filter(|r| ROLES.contains(&r.as_str())) else {
        return Ok(args);
    };
    let sub = cmd
        .find_subcommand(&role)
        .ok_or_else(|| anyhow!("no command {role}"))?;
    let file = args.iter().enumerate().find_map(|(i, a)| {
        let a = a.to_str()?;
        match a.strip_prefix("--config") {
            Some("") => args.get(i + 1).map(std::path::PathBuf::from),
            Some(rest) => rest.strip_prefix('=').map(std::path::PathBuf::from),
            None => None,
        }
    });
    let Some(file) = file else { return Ok(args) };
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("--config {}: cannot read it", file.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| anyhow!("--config {}: not TOML: {e}", file.display()))?;
    let given: BTreeSet<String> = args
        .iter()
        .filter_map(|a| a.to_str()?.strip_prefix("--"))
        .map(|a| a.split('=').next().unwrap_or(a).to_string())
        .collect();
    let mut from_file = BTreeSet::new();
    for (key, value) in &table {
        let flag = key.replace('_', "-");
        let arg = sub
            .get_arguments()
            .find(|a| a.get_long() == Some(flag.as_str()) && flag != "config")
            .ok_or_else(|| {
                anyhow!(
                    "--config {}: '{key}' is not a setting of `autopipe {role}` (see `autopipe {role} --help`)",
                    file.display()
                )
            })?;
        if given.contains(&flag) || arg.get_env().is_some_and(|v| std::env::var_os(v).is_some()) {
            continue; // a higher layer sets it
        }
        let switch = matches!(
            arg.get_action(),
            clap::ArgAction::SetTrue | clap::ArgAction::SetFalse
        );
        let values: Vec<&toml::Value> = match value {
            toml::Value::Array(a) => a.iter().collect(),
            v => vec![v],
        };
        for v in values {
            let text = match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) if switch => {
                    if *b {
                        args.push(format!("--{flag}").into());
                    }
                    continue;
                }
                toml::Value::Boolean(b) => b.to_string(),
                other => bail!(
                    "--config {}: '{key}' = {other}: a string, number, boolean or list of them",
                    file.display()
                ),
            };
            if switch {
                bail!(
                    "--config {}: '{key}' is a switch: true or false",
                    file.display()
                );
            }
            args.push(format!("--{flag}").into());
            args.push(text.into());
        }
        from_file.insert(arg.get_id().to_string());
    }
    FROM_FILE.get_or_init(|| from_file);
    Ok(args)
}

static FROM_FILE: OnceLock<BTreeSet<String>> = OnceLock::new();

/// Remembers the parsed command line, for `print_effective`.
pub fn remember(matches: clap::ArgMatches) {
    PARSED.get_or_init(|| Parsed {
        matches,
        from_file: FROM_FILE.get().cloned().unwrap_or_default(),
    });
}

/// `--dry-run`: the configuration is valid; prints each setting of the subcommand
/// as a line of a config file (its flag name and TOML value) with where it came from
/// (default, file, env or flag): the output is itself a valid `--config` file.
pub fn print_effective() {
    let Some(p) = PARSED.get() else { return };
    let Some((role, m)) = p.matches.subcommand() else {
        return;
    };
    let cmd = <crate::Cli as clap::CommandFactory>::command();
    let Some(sub) = cmd.find_subcommand(role) else {
        return;
    };
    println!("# autopipe {role}: the configuration is valid");
    let mut args: Vec<&clap::Arg> = sub
        .get_arguments()
        .filter(|a| a.get_long().is_some() && !a.is_hide_set())
        .collect();
    args.sort_by_key(|a| a.get_long());
    for arg in args {
        let id = arg.get_id().as_str();
        let long = arg.get_long().unwrap_or(id);
        if matches!(long, "dry-run" | "config" | "help" | "version") {
            continue;
        }
        let Some(source) = m.value_source(id) else {
            continue;
        };
        let source = match source {
            clap::parser::ValueSource::DefaultValue => "default",
            clap::parser::ValueSource::EnvVariable => "env",
            _ if p.from_file.contains(id) => "file",
            _ => "flag",
        };
        let Some(raw) = m.get_raw(id) else { continue };
        let values: Vec<String> = raw.map(|s| s.to_string_lossy().into_owned()).collect();
        let value = match arg.get_action() {
            clap::ArgAction::SetTrue | clap::ArgAction::SetFalse => values.join(""),
            clap::ArgAction::Append => format!("{values:?}"),
            _ => format!("{:?}", values.join(",")),
        };
        println!("{long} = {value}  # {source}");
    }
}
