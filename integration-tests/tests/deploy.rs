//! The deployment files under `deploy/` stay in step with the binary (issue 14): every
//! YAML file parses; `kubectl kustomize deploy/k8s` renders, with and without its TLS
//! component (when kubectl is installed); and every autopipe command line the files
//! hold (each compose service's `command`, each Kubernetes container's `command` and
//! `args`, each systemd unit's `ExecStart=`) is accepted by this build's `--dry-run`,
//! so a renamed or removed flag fails here rather than in a cluster.
//!
//! The settings each dry run prints are then checked against what surrounds the
//! command: the Raft group's ids and `--peers` against the replicas, the workers'
//! `--coordinator` lists against the peers, resources against `--slots` and
//! `--memory-limit`, stop timeouts against `--drain-grace-secs`, probes against
//! `--listen`, Prometheus targets against `--http`. Nothing is started.

use anyhow::{anyhow, bail, ensure, Context, Result};
use integration_tests::autopipe_bin;
use serde_yaml::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The settings a dry run printed: long flag name → value (without TOML quotes).
type Settings = BTreeMap<String, String>;

/// An autopipe command line found in a deployment file.
struct CommandLine {
    /// where it was found, for messages: "compose.yaml service worker-1"
    origin: String,
    /// the arguments after `autopipe`, file paths pointed at the fixture's files
    args: Vec<String>,
    /// environment variables the process would have
    env: Vec<(String, String)>,
}

/// Temporary files standing in for the deployment's secrets.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("token"), "deploy-test-token\n")?;
        Ok(Self { dir })
    }

    /// A token file (`--auth-token-file`).
    fn token(&self) -> String {
        self.dir.path().join("token").display().to_string()
    }

    /// The directory holding `token` (a systemd unit's credentials directory, `%d`).
    fn credentials(&self) -> String {
        self.dir.path().display().to_string()
    }
}

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The documents of a YAML file or stream (separated by `---` lines), empty ones left
/// out.
fn parse_yaml(text: &str, origin: &str) -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut push = |doc: &str| -> Result<()> {
        let blank = doc.lines().all(|l| {
            let t = l.trim();
            t.is_empty() || t.starts_with('#')
        });
        if blank {
            return Ok(());
        }
        let v: Value =
            serde_yaml::from_str(doc).with_context(|| format!("{origin}: not valid YAML"))?;
        if !v.is_null() {
            docs.push(v);
        }
        Ok(())
    };
    for line in text.lines() {
        if line.trim_end() == "---" {
            push(&current)?;
            current.clear();
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    push(&current)?;
    Ok(docs)
}

/// Every `*.yaml` / `*.yml` file under `dir`, recursively.
fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(yaml_files(&path)?);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

fn read_yaml(path: &Path) -> Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_yaml(&text, &path.display().to_string())
}

/// A scalar as text.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A command as its words: a sequence of scalars, a string split at spaces, or none.
fn words(v: &Value) -> Result<Vec<String>> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => Ok(s.split_whitespace().map(str::to_string).collect()),
        Value::Sequence(items) => items
            .iter()
            .map(|i| scalar(i).ok_or_else(|| anyhow!("{i:?} is not a word")))
            .collect(),
        other => bail!("{other:?} is not a command"),
    }
}

/// Whether an image reference names the autopipe image (any registry, any tag).
fn is_autopipe_image(image: &Value) -> bool {
    image
        .as_str()
        .and_then(|i| i.rsplit('/').next())
        .is_some_and(|name| name == "autopipe" || name.starts_with("autopipe:"))
}

/// The value of `flag` in `args` (`--flag=V` or `--flag V`), if given.
fn flag_value(args: &[String], flag: &str) -> Option<String> {
    args.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix(flag)?.strip_prefix('=').map(str::to_string)
        }
    })
}

/// `args` with the value of every `flag` replaced by `f(value)`.
fn map_flag(
    args: &[String],
    flag: &str,
    f: impl Fn(&str) -> Result<String>,
) -> Result<Vec<String>> {
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == flag {
            let v = it.next().ok_or_else(|| anyhow!("{flag} without a value"))?;
            out.push(a.clone());
            out.push(f(v)?);
        } else if let Some(v) = a.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
            out.push(format!("{flag}={}", f(v)?));
        } else {
            out.push(a.clone());
        }
    }
    Ok(out)
}

/// Runs `autopipe ARGS --dry-run` with the line's environment and none of the
/// caller's `AUTOPIPE_*` variables; the settings it printed, or an error naming the
/// file the line came from and what the binary said.
fn dry_run(line: &CommandLine) -> Result<Settings> {
    let mut cmd = Command::new(autopipe_bin());
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with("AUTOPIPE_")) {
            cmd.env_remove(&key);
        }
    }
    let out = cmd
        .args(&line.args)
        .arg("--dry-run")
        .envs(line.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", autopipe_bin().display()))?;
    ensure!(
        out.status.success(),
        "{}: `autopipe {} --dry-run` failed ({}): {}",
        line.origin,
        line.args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, rest) = l.split_once(" = ")?;
            let value = rest.rsplit_once("  # ").map_or(rest, |(v, _)| v).trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            Some((key.trim().to_string(), value.to_string()))
        })
        .collect())
}

fn setting<'a>(s: &'a Settings, key: &str, origin: &str) -> Result<&'a str> {
    s.get(key)
        .map(String::as_str)
        .ok_or_else(|| anyhow!("{origin}: the dry run printed no `{key}`"))
}

/// The port of `HOST:PORT`.
fn port(addr: &str) -> Result<u16> {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .ok_or_else(|| anyhow!("'{addr}' is not HOST:PORT"))
}

/// `1=host:port,2=…` → id → address.
fn peers(s: &str) -> Result<BTreeMap<u64, String>> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| -> Result<(u64, String)> {
            let (id, addr) = p
                .trim()
                .split_once('=')
                .ok_or_else(|| anyhow!("peer '{p}' is not ID=HOST:PORT"))?;
            Ok((id.parse::<u64>()?, addr.to_string()))
        })
        .collect()
}

/// A worker's `--coordinator` list as `host:port` addresses.
fn coordinator_list(s: &str) -> BTreeSet<String> {
    s.split(',')
        .map(|a| a.trim())
        .filter(|a| !a.is_empty())
        .map(|a| a.split_once("://").map_or(a, |(_, rest)| rest).to_string())
        .collect()
}

/// A size: `3GiB` (autopipe), `4Gi`/`4G` (Kubernetes); binary units with an `i`,
/// decimal ones without; a trailing `B` ignored.
fn size_bytes(s: &str) -> Result<u64> {
    let t = s.trim();
    let t = t.strip_suffix(['B', 'b']).unwrap_or(t);
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num.parse().map_err(|_| anyhow!("'{s}' is not a size"))?;
    let mult: u64 = match unit {
        "" => 1,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => bail!("'{s}': unknown size unit '{unit}'"),
    };
    Ok((num * mult as f64) as u64)
}

/// Docker's memory sizes: `1536m`, `2g` (binary units b, k, m, g).
fn docker_bytes(s: &str) -> Result<u64> {
    let t = s.trim().to_ascii_lowercase();
    let (num, mult) = match t.chars().last() {
        Some('b') => (&t[..t.len() - 1], 1u64),
        Some('k') => (&t[..t.len() - 1], 1 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t.as_str(), 1),
    };
    Ok(num
        .parse::<u64>()
        .map_err(|_| anyhow!("'{s}' is not a Docker memory size"))?
        * mult)
}

/// A Kubernetes CPU quantity in cores: `2`, `500m`.
fn cpu_cores(s: &str) -> Result<f64> {
    match s.strip_suffix('m') {
        Some(milli) => Ok(milli.parse::<f64>()? / 1000.0),
        None => Ok(s.parse::<f64>()?),
    }
}

/// A duration in seconds: Go's (compose: `70s`, `5m`, `1m30s`) or systemd's (`330s`,
/// `5min`, a bare number of seconds).
fn duration_secs(s: &str) -> Result<f64> {
    let s = s.trim();
    if let Ok(n) = s.parse::<f64>() {
        return Ok(n);
    }
    let mut total = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| anyhow!("'{s}': a number without a unit"))?;
        let (num, after) = rest.split_at(split);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let mult = match unit.trim() {
            "ms" => 0.001,
            "s" | "sec" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            other => bail!("'{s}': unknown duration unit '{other}'"),
        };
        total += num
            .parse::<f64>()
            .map_err(|_| anyhow!("'{s}' is not a duration"))?
            * mult;
        rest = next;
    }
    Ok(total)
}

// ---------------------------------------------------------------- compose

/// The autopipe services of compose.yaml as command lines; the token path (a compose
/// secret) must be a secret the service mounts and the file declares.
fn compose_lines(compose: &Value, fx: &Fixture) -> Result<Vec<(String, CommandLine)>> {
    let services = compose["services"]
        .as_mapping()
        .context("compose.yaml: no services")?;
    let mut lines = Vec::new();
    for (name, svc) in services.iter() {
        let name = name.as_str().context("compose.yaml: a service name")?;
        if !is_autopipe_image(&svc["image"]) {
            continue;
        }
        let origin = format!("compose.yaml service {name}");
        let args = words(&svc["command"]).with_context(|| format!("{origin}: command"))?;
        let mounted: Vec<String> = svc["secrets"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(scalar)
            .collect();
        let args = map_flag(&args, "--auth-token-file", |path| {
            let secret = path
                .strip_prefix("/run/secrets/")
                .ok_or_else(|| anyhow!("{origin}: token {path} is not a compose secret"))?;
            ensure!(
                mounted.iter().any(|m| m == secret),
                "{origin}: reads secret {secret}, which it does not list in `secrets`"
            );
            ensure!(
                compose["secrets"].get(secret).is_some(),
                "{origin}: secret {secret} is not declared at the top level"
            );
            Ok(fx.token())
        })?;
        let env: Vec<(String, String)> = match &svc["environment"] {
            Value::Mapping(m) => m
                .iter()
                .filter_map(|(k, v)| Some((scalar(k)?, scalar(v).unwrap_or_default())))
                .collect(),
            Value::Sequence(items) => items
                .iter()
                .filter_map(|i| {
                    let kv = i.as_str()?;
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    Some((k.to_string(), v.to_string()))
                })
                .collect(),
            _ => Vec::new(),
        };
        lines.push((name.to_string(), CommandLine { origin, args, env }));
    }
    Ok(lines)
}

fn check_compose(fx: &Fixture) -> Result<()> {
    let dir = deploy_dir();
    let compose = read_yaml(&dir.join("compose.yaml"))?
        .pop()
        .context("compose.yaml is empty")?;
    let lines = compose_lines(&compose, fx)?;
    let mut coordinators = BTreeMap::new(); // id → (service, settings)
    let mut workers = Vec::new();
    let mut http_ports = BTreeMap::new(); // service → HTTP port
    for (service, line) in &lines {
        let s = dry_run(line)?;
        http_ports.insert(service.clone(), port(setting(&s, "http", &line.origin)?)?);
        match line.args.first().map(String::as_str) {
            Some("coordinator") => {
                let id: u64 = setting(&s, "id", &line.origin)?.parse()?;
                ensure!(
                    coordinators.insert(id, (service.clone(), s)).is_none(),
                    "{}: a second coordinator with --id {id}",
                    line.origin
                );
            }
            Some("worker") => workers.push((service.clone(), line, s)),
            other => bail!("{}: runs `autopipe {other:?}`", line.origin),
        }
    }
    assert_eq!(coordinators.len(), 3, "compose: 3 coordinators");
    assert_eq!(workers.len(), 3, "compose: 3 workers");

    // one Raft group: every coordinator names the same peers, which are the
    // coordinator services (by name, on their --listen port)
    let mut group: Option<BTreeMap<u64, String>> = None;
    for (id, (service, s)) in &coordinators {
        let p = peers(setting(s, "peers", service)?)?;
        let listen = port(setting(s, "listen", service)?)?;
        assert_eq!(
            p.get(id),
            Some(&format!("{service}:{listen}")),
            "compose: coordinator {id}'s own --peers entry is its service name"
        );
        assert_eq!(setting(s, "initial-cluster-state", service)?, "new");
        if let Some(g) = &group {
            assert_eq!(g, &p, "compose: {service} names other peers");
        }
        group = Some(p);
    }
    let group = group.context("no coordinator")?;
    assert_eq!(
        group.len(),
        coordinators.len(),
        "compose: one peer per coordinator"
    );
    let addresses: BTreeSet<String> = group.values().cloned().collect();

    for (service, line, s) in &workers {
        assert_eq!(
            coordinator_list(setting(s, "coordinator", service)?),
            addresses,
            "{}: --coordinator names every coordinator",
            line.origin
        );
        let listen = port(setting(s, "listen", service)?)?;
        assert_eq!(
            setting(s, "advertise", service)?,
            format!("{service}:{listen}"),
            "{}: advertises its service name",
            line.origin
        );
        let svc = &compose["services"][service.as_str()];
        let pool = size_bytes(setting(s, "memory-limit", service)?)?;
        let limit = docker_bytes(&scalar(&svc["mem_limit"]).context("worker mem_limit")?)?;
        assert!(
            limit > pool,
            "{}: mem_limit {limit} leaves no room beyond --memory-limit {pool}",
            line.origin
        );
        let grace: f64 = setting(s, "drain-grace-secs", service)?.parse()?;
        let stop = duration_secs(&scalar(&svc["stop_grace_period"]).context("stop_grace_period")?)?;
        assert!(
            stop > grace,
            "{}: stop_grace_period {stop}s does not cover --drain-grace-secs {grace}",
            line.origin
        );
    }

    // Prometheus scrapes each autopipe service on its HTTP port; Grafana reads it
    let prometheus = read_yaml(&dir.join("compose/prometheus.yml"))?
        .pop()
        .context("compose/prometheus.yml is empty")?;
    let mut scraped = BTreeSet::new();
    for job in prometheus["scrape_configs"]
        .as_sequence()
        .context("compose/prometheus.yml: no scrape_configs")?
    {
        for sc in job["static_configs"].as_sequence().into_iter().flatten() {
            for t in sc["targets"].as_sequence().into_iter().flatten() {
                let t = t.as_str().context("a target")?;
                let (host, p) = t.rsplit_once(':').context("a target's port")?;
                assert_eq!(
                    http_ports.get(host),
                    Some(&p.parse::<u16>()?),
                    "compose/prometheus.yml: target {t} is not an autopipe service's --http port"
                );
                scraped.insert(host.to_string());
            }
        }
    }
    let all: BTreeSet<String> = http_ports.keys().cloned().collect();
    assert_eq!(scraped, all, "Prometheus scrapes every autopipe service");
    assert!(compose["services"].get("prometheus").is_some());
    let grafana = read_yaml(&dir.join("compose/grafana/provisioning/datasources/prometheus.yaml"))?
        .pop()
        .context("the Grafana datasource file is empty")?;
    let url = grafana["datasources"][0]["url"]
        .as_str()
        .context("the Grafana datasource's url")?;
    assert!(url.contains("//prometheus:"), "Grafana reads {url}");
    Ok(())
}

// ------------------------------------------------------------- kubernetes

/// The rendered manifests: `kubectl kustomize` of `dir` when kubectl is installed,
/// else the files its kustomization lists (None when kubectl is absent).
fn kustomize(dir: &Path) -> Result<Option<Vec<Value>>> {
    let out = match Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).context("running kubectl"),
    };
    ensure!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let text = String::from_utf8(out.stdout)?;
    Ok(Some(parse_yaml(&text, "kubectl kustomize output")?))
}

/// The resources deploy/k8s/kustomization.yaml lists, parsed from their files; every
/// manifest beside it must be listed (one that is not would never be applied).
fn k8s_raw(k8s: &Path) -> Result<Vec<Value>> {
    let kustomization = read_yaml(&k8s.join("kustomization.yaml"))?
        .pop()
        .context("kustomization.yaml is empty")?;
    let listed: Vec<String> = kustomization["resources"]
        .as_sequence()
        .context("kustomization.yaml: no resources")?
        .iter()
        .filter_map(scalar)
        .collect();
    for entry in std::fs::read_dir(k8s)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".yaml") && name != "kustomization.yaml" {
            assert!(
                listed.contains(&name),
                "deploy/k8s/{name} is not in kustomization.yaml's resources"
            );
        }
    }
    let mut objects = Vec::new();
    for r in &listed {
        objects.extend(read_yaml(&k8s.join(r))?);
    }
    Ok(objects)
}

fn pod_spec(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]
}

/// The containers running the autopipe image: (workload, container).
fn autopipe_containers(objects: &[Value]) -> Vec<(&Value, &Value)> {
    objects
        .iter()
        .filter(|o| {
            matches!(
                o["kind"].as_str(),
                Some("StatefulSet" | "Deployment" | "DaemonSet" | "Job" | "CronJob")
            )
        })
        .flat_map(|o| {
            pod_spec(o)["containers"]
                .as_sequence()
                .into_iter()
                .flatten()
                .map(move |c| (o, c))
        })
        .filter(|(_, c)| is_autopipe_image(&c["image"]))
        .collect()
}

/// Kubernetes' expansion of `$(VAR)` from the container's environment. A reference
/// to a variable the container does not define is an error here (Kubernetes would
/// pass it on as it is).
fn expand_k8s(s: &str, env: &[(String, String)]) -> Result<String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("$(") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after
            .find(')')
            .ok_or_else(|| anyhow!("'{s}': an unclosed $("))?;
        let var = &after[..end];
        let value = env
            .iter()
            .find(|(k, _)| k == var)
            .map(|(_, v)| v)
            .ok_or_else(|| anyhow!("'{s}' refers to $({var}), which the container's env lacks"))?;
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The volume that holds `path` in the container: (volume name, is a Secret, is
/// writable storage: an emptyDir, a claim or a StatefulSet's claim template).
fn volume_at(workload: &Value, c: &Value, path: &str) -> Option<(String, bool, bool)> {
    let mount = c["volumeMounts"]
        .as_sequence()?
        .iter()
        .filter(|m| {
            m["mountPath"]
                .as_str()
                .is_some_and(|mp| Path::new(path).starts_with(mp))
        })
        .max_by_key(|m| m["mountPath"].as_str().map_or(0, str::len))?;
    let name = mount["name"].as_str()?.to_string();
    let read_only = mount["readOnly"].as_bool().unwrap_or(false);
    let claim = workload["spec"]["volumeClaimTemplates"]
        .as_sequence()
        .into_iter()
        .flatten()
        .any(|t| t["metadata"]["name"].as_str() == Some(name.as_str()));
    let volume = pod_spec(workload)["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|v| v["name"].as_str() == Some(name.as_str()));
    let secret = volume.is_some_and(|v| v.get("secret").is_some());
    let storage = claim
        || volume.is_some_and(|v| {
            v.get("emptyDir").is_some() || v.get("persistentVolumeClaim").is_some()
        });
    Some((name, secret, storage && !read_only))
}

/// The command line of `container` in the pod of `ordinal` (HOSTNAME as the
/// workload's pods have it, the downward API's fields given plausible values).
fn k8s_line(workload: &Value, c: &Value, ordinal: usize, fx: &Fixture) -> Result<CommandLine> {
    let kind = workload["kind"].as_str().unwrap_or("?");
    let name = workload["metadata"]["name"].as_str().unwrap_or("?");
    let origin = format!(
        "{kind} {name} container {}",
        c["name"].as_str().unwrap_or("?")
    );
    let pod = format!("{name}-{ordinal}");
    let mut env = vec![("HOSTNAME".to_string(), pod.clone())];
    for e in c["env"].as_sequence().into_iter().flatten() {
        let key = e["name"].as_str().context("an env entry's name")?;
        let value = if let Some(v) = scalar(&e["value"]) {
            v
        } else if let Some(field) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            let v = match field {
                "metadata.namespace" => "autopipe-test",
                "metadata.name" => pod.as_str(),
                "status.podIP" => "10.1.2.3",
                "spec.nodeName" => "node-1",
                other => bail!("{origin}: env {key} from field {other}, unknown to this test"),
            };
            v.to_string()
        } else if e["valueFrom"].get("secretKeyRef").is_some() {
            "secret".to_string()
        } else {
            bail!("{origin}: env {key} has neither a value nor a known source");
        };
        env.push((key.to_string(), value));
    }
    let mut command = words(&c["command"]).with_context(|| format!("{origin}: command"))?;
    if let Some(first) = command.first() {
        ensure!(
            first == "autopipe" || first.ends_with("/autopipe"),
            "{origin}: the command starts with {first}, not autopipe"
        );
        command.remove(0);
    }
    command.extend(words(&c["args"]).with_context(|| format!("{origin}: args"))?);
    let args = command
        .iter()
        .map(|a| expand_k8s(a, &env))
        .collect::<Result<Vec<_>>>()
        .with_context(|| origin.clone())?;
    // the token comes from a Secret volume; state lies on writable storage (the root
    // file system may be read-only)
    let args = map_flag(&args, "--auth-token-file", |path| {
        let (volume, secret, _) = volume_at(workload, c, path)
            .ok_or_else(|| anyhow!("{origin}: no volume holds the token {path}"))?;
        ensure!(
            secret,
            "{origin}: the token {path} is on volume {volume}, not a Secret"
        );
        Ok(fx.token())
    })?;
    for flag in ["--data-dir", "--work-dir"] {
        if let Some(path) = flag_value(&args, flag) {
            let (volume, _, writable) = volume_at(workload, c, &path)
                .ok_or_else(|| anyhow!("{origin}: no volume holds {flag} {path}"))?;
            ensure!(
                writable,
                "{origin}: {flag} {path} is on volume {volume}, which is not writable storage"
            );
        }
    }
    Ok(CommandLine { origin, args, env })
}

/// The gRPC port each probe of the container checks.
fn grpc_probe_ports(c: &Value) -> Vec<(String, Option<u64>)> {
    ["startupProbe", "readinessProbe", "livenessProbe"]
        .iter()
        .filter(|p| !c[**p].is_null())
        .map(|p| (p.to_string(), c[*p]["grpc"]["port"].as_u64()))
        .collect()
}

fn check_k8s(fx: &Fixture) -> Result<()> {
    let k8s = deploy_dir().join("k8s");
    let raw = k8s_raw(&k8s)?;
    let objects = match kustomize(&k8s)? {
        Some(rendered) => {
            fn kinds(objs: &[Value]) -> BTreeSet<String> {
                objs.iter()
                    .filter_map(|o| {
                        Some(format!(
                            "{}/{}",
                            o["kind"].as_str()?,
                            o["metadata"]["name"].as_str()?
                        ))
                    })
                    .collect()
            }
            assert_eq!(
                kinds(&rendered),
                kinds(&raw),
                "kustomize renders the listed files"
            );
            check_k8s_tls(&k8s)?;
            rendered
        }
        None => {
            eprintln!("kubectl is not installed: checking deploy/k8s's files unrendered");
            raw
        }
    };
    let containers = autopipe_containers(&objects);
    let mut coordinators = 0;
    let mut workers = 0;
    let mut peer_addresses = BTreeSet::new();
    let mut worker_lists = Vec::new();
    for (workload, c) in &containers {
        let kind = workload["kind"].as_str().unwrap_or("?");
        let name = workload["metadata"]["name"].as_str().unwrap_or("?");
        let first = k8s_line(workload, c, 0, fx)?;
        let s = dry_run(&first)?;
        let listen = u64::from(port(setting(&s, "listen", &first.origin)?)?);
        for (probe, p) in grpc_probe_ports(c) {
            assert_eq!(
                p,
                Some(listen),
                "{}: {probe} checks gRPC health on --listen",
                first.origin
            );
        }
        match first.args.first().map(String::as_str) {
            Some("coordinator") => {
                coordinators += 1;
                assert_eq!(
                    kind, "StatefulSet",
                    "{}: coordinators keep their names and volumes",
                    first.origin
                );
                assert_eq!(
                    setting(&s, "id", &first.origin)?,
                    "from-hostname",
                    "{}",
                    first.origin
                );
                assert_eq!(setting(&s, "initial-cluster-state", &first.origin)?, "new");
                assert_eq!(
                    workload["spec"]["podManagementPolicy"].as_str(),
                    Some("Parallel")
                );
                let replicas = workload["spec"]["replicas"]
                    .as_u64()
                    .context("the StatefulSet's replicas")?;
                let group = peers(setting(&s, "peers", &first.origin)?)?;
                assert_eq!(
                    group.len() as u64,
                    replicas,
                    "{}: replicas equal the members named in --peers",
                    first.origin
                );
                // pod N is member N + 1, at its name under the StatefulSet's service
                let service = workload["spec"]["serviceName"]
                    .as_str()
                    .context("the StatefulSet's serviceName")?;
                for (id, addr) in &group {
                    let prefix = format!("{name}-{}.{service}.", id - 1);
                    assert!(
                        addr.starts_with(&prefix) && port(addr)? == listen as u16,
                        "{}: member {id} is at {addr}, not {prefix}…:{listen}",
                        first.origin
                    );
                }
                // every pod's line parses (its HOSTNAME gives its id)
                for ordinal in 1..replicas as usize {
                    dry_run(&k8s_line(workload, c, ordinal, fx)?)?;
                }
                peer_addresses = group.into_values().collect();
                let pdb = objects.iter().find(|o| {
                    o["kind"].as_str() == Some("PodDisruptionBudget")
                        && o["spec"]["selector"] == workload["spec"]["selector"]
                });
                assert_eq!(
                    pdb.map(|p| p["spec"]["maxUnavailable"].as_u64()),
                    Some(Some(1)),
                    "a PodDisruptionBudget keeps a quorum of the coordinators"
                );
            }
            Some("worker") => {
                workers += 1;
                let slots: f64 = setting(&s, "slots", &first.origin)?.parse()?;
                let pool = size_bytes(setting(&s, "memory-limit", &first.origin)?)?;
                let resources = &c["resources"];
                let cpu =
                    cpu_cores(&scalar(&resources["requests"]["cpu"]).context("a CPU request")?)?;
                assert_eq!(cpu, slots, "{}: one requested core per slot", first.origin);
                let request = size_bytes(
                    &scalar(&resources["requests"]["memory"]).context("a memory request")?,
                )?;
                assert!(
                    request > pool,
                    "{}: memory request {request} leaves no room beyond --memory-limit {pool}",
                    first.origin
                );
                if let Some(limit) = scalar(&resources["limits"]["memory"]) {
                    assert!(
                        size_bytes(&limit)? >= request,
                        "{}: memory limit below the request",
                        first.origin
                    );
                }
                // the server's status ("") turns NOT_SERVING once a worker drains: the
                // liveness probe checks a service that stays SERVING while the process
                // serves (LIVENESS_SERVICE in worker/src/lib.rs)
                assert_eq!(
                    c["livenessProbe"]["grpc"]["service"].as_str(),
                    Some("autopipe.internal.v1.WorkerControl"),
                    "{}: the liveness probe must not fail while the worker drains",
                    first.origin
                );
                let grace: u64 = setting(&s, "drain-grace-secs", &first.origin)?.parse()?;
                let termination = pod_spec(workload)["terminationGracePeriodSeconds"]
                    .as_u64()
                    .unwrap_or(30);
                assert!(
                    termination > grace,
                    "{}: terminationGracePeriodSeconds {termination} does not cover --drain-grace-secs {grace}",
                    first.origin
                );
                assert_eq!(
                    setting(&s, "advertise", &first.origin)?,
                    format!("10.1.2.3:{listen}"),
                    "{}: advertises its pod IP",
                    first.origin
                );
                worker_lists.push((
                    first.origin.clone(),
                    coordinator_list(setting(&s, "coordinator", &first.origin)?),
                ));
            }
            other => bail!("{}: runs `autopipe {other:?}`", first.origin),
        }
    }
    assert_eq!(coordinators, 1, "deploy/k8s: one coordinator StatefulSet");
    assert_eq!(workers, 1, "deploy/k8s: one worker Deployment");
    for (origin, list) in worker_lists {
        assert_eq!(
            list, peer_addresses,
            "{origin}: --coordinator names every member"
        );
    }
    Ok(())
}

/// deploy/k8s with components/tls renders, and then every autopipe container has the
/// TLS files in its environment and no gRPC probe (Kubernetes' gRPC probes do not
/// speak TLS).
fn check_k8s_tls(k8s: &Path) -> Result<()> {
    let component = k8s.join("components/tls");
    ensure!(
        component.join("kustomization.yaml").exists(),
        "{} is missing",
        component.display()
    );
    // kustomize takes only relative paths to other directories: from a temp dir up to
    // the root, then down to deploy/k8s
    let overlay = tempfile::tempdir()?;
    let up = std::fs::canonicalize(overlay.path())?
        .components()
        .skip(1)
        .map(|_| "..")
        .collect::<Vec<_>>()
        .join("/");
    let abs = |p: &Path| -> Result<String> {
        let p = std::fs::canonicalize(p)?;
        Ok(format!("{up}{}", p.display()))
    };
    std::fs::write(
        overlay.path().join("kustomization.yaml"),
        format!(
            "resources: [\"{}\"]\ncomponents: [\"{}\"]\n",
            abs(k8s)?,
            abs(&component)?
        ),
    )?;
    let objects = kustomize(overlay.path())?.context("kubectl went away")?;
    let containers = autopipe_containers(&objects);
    assert_eq!(
        containers.len(),
        2,
        "the TLS component keeps both workloads"
    );
    for (workload, c) in containers {
        let name = workload["metadata"]["name"].as_str().unwrap_or("?");
        for var in ["AUTOPIPE_TLS_CERT", "AUTOPIPE_TLS_KEY", "AUTOPIPE_TLS_CA"] {
            let path = c["env"]
                .as_sequence()
                .into_iter()
                .flatten()
                .find(|e| e["name"].as_str() == Some(var))
                .and_then(|e| e["value"].as_str())
                .with_context(|| format!("{name} with TLS: no {var}"))?;
            let (volume, secret, _) = volume_at(workload, c, path)
                .with_context(|| format!("{name} with TLS: no volume holds {path}"))?;
            assert!(
                secret,
                "{name} with TLS: {path} is on volume {volume}, not a Secret"
            );
        }
        for (probe, p) in grpc_probe_ports(c) {
            assert_eq!(p, None, "{name} with TLS: {probe} still speaks gRPC");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- systemd

/// A unit file's `Key=Value` lines (continuations joined), in order.
fn unit_directives(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let line = line.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with(['#', ';', '['])) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => {
                pending.push_str(head);
                pending.push(' ');
            }
            None => {
                pending.push_str(line);
                if let Some((k, v)) = pending.split_once('=') {
                    out.push((k.trim().to_string(), v.trim().to_string()));
                }
                pending.clear();
            }
        }
    }
    out
}

/// The values of `key` among a unit's directives.
fn directive<'a>(directives: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    directives
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

fn check_systemd(fx: &Fixture) -> Result<()> {
    let dir = deploy_dir().join("systemd");
    let mut roles = BTreeSet::new();
    let mut units = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "service") {
            units.push(path);
        }
    }
    units.sort();
    for unit in units {
        let origin = format!(
            "systemd/{}",
            unit.file_name().unwrap_or_default().to_string_lossy()
        );
        let directives = unit_directives(&std::fs::read_to_string(&unit)?);
        let get = |key: &str| directive(&directives, key);
        let exec = get("ExecStart");
        assert_eq!(exec.len(), 1, "{origin}: one ExecStart");
        ensure!(
            !exec[0].contains(['"', '\'']),
            "{origin}: quoted ExecStart words are beyond this test's parser"
        );
        let mut args: Vec<String> = exec[0].split_whitespace().map(str::to_string).collect();
        ensure!(
            args.first().is_some_and(|b| b.ends_with("/autopipe")),
            "{origin}: ExecStart does not run autopipe"
        );
        args.remove(0);
        // %d is the credentials directory, filled from LoadCredential=ID:PATH
        let credentials: Vec<&str> = get("LoadCredential")
            .iter()
            .filter_map(|c| c.split_once(':').map(|(id, _)| id))
            .collect();
        for a in &mut args {
            if let Some(i) = a.find("%d/") {
                let id = &a[i + 3..];
                assert!(
                    credentials.contains(&id),
                    "{origin}: {a} reads credential {id}, which no LoadCredential loads"
                );
                *a = a.replace("%d", &fx.credentials());
            }
        }
        ensure!(
            !args.iter().any(|a| a.contains('%') || a.contains('$')),
            "{origin}: a specifier or variable this test does not substitute: {args:?}"
        );
        // --config /etc/autopipe/NAME is deploy/systemd/NAME
        let args = map_flag(&args, "--config", |path| {
            let name = Path::new(path)
                .file_name()
                .ok_or_else(|| anyhow!("{origin}: --config {path}"))?;
            let local = dir.join(name);
            ensure!(
                local.exists(),
                "{origin}: --config {path}: deploy/systemd has no {}",
                name.to_string_lossy()
            );
            Ok(local.display().to_string())
        })?;
        let line = CommandLine {
            origin: origin.clone(),
            args,
            env: Vec::new(),
        };
        let s = dry_run(&line)?;
        assert_eq!(get("User"), ["autopipe"], "{origin}: runs as autopipe");
        assert_eq!(get("Restart"), ["on-failure"], "{origin}");
        // ProtectSystem=strict: state only where the unit may write
        assert_eq!(get("ProtectSystem"), ["strict"], "{origin}");
        let mut writable: Vec<String> = get("StateDirectory")
            .iter()
            .flat_map(|d| d.split_whitespace())
            .map(|d| format!("/var/lib/{d}"))
            .collect();
        writable.extend(
            get("ReadWritePaths")
                .iter()
                .flat_map(|d| d.split_whitespace())
                .map(|d| d.trim_start_matches('-').to_string()),
        );
        let role = line.args.first().cloned().unwrap_or_default();
        let state = match role.as_str() {
            "coordinator" => "data-dir",
            "worker" => "work-dir",
            other => bail!("{origin}: runs `autopipe {other}`"),
        };
        let state_dir = setting(&s, state, &origin)?;
        assert!(
            writable.iter().any(|w| Path::new(state_dir).starts_with(w)),
            "{origin}: {state} {state_dir} is not under a writable path {writable:?}"
        );
        if role == "worker" {
            let grace: f64 = setting(&s, "drain-grace-secs", &origin)?.parse()?;
            let stop = duration_secs(get("TimeoutStopSec").first().context("TimeoutStopSec")?)?;
            assert!(
                stop > grace,
                "{origin}: TimeoutStopSec {stop}s does not cover --drain-grace-secs {grace}"
            );
            assert_eq!(
                get("KillSignal"),
                ["SIGTERM"],
                "{origin}: SIGTERM drains a worker"
            );
        }
        assert!(
            roles.insert(role),
            "{origin}: a second unit for the same role"
        );
    }
    assert_eq!(roles.len(), 2, "systemd: a coordinator and a worker unit");
    Ok(())
}

// ------------------------------------------------------------------ tests

#[test]
fn every_yaml_file_under_deploy_parses() -> Result<()> {
    let files = yaml_files(&deploy_dir())?;
    let mut documents = 0;
    for f in &files {
        documents += read_yaml(f)?.len();
    }
    // compose, its Prometheus and Grafana files, the local Prometheus config, the
    // kustomization, its manifests and the TLS component
    assert!(
        files.len() >= 9,
        "only {} YAML files: {files:?}",
        files.len()
    );
    assert!(documents >= files.len());
    Ok(())
}

#[test]
fn compose_command_lines_are_valid_and_consistent() -> Result<()> {
    check_compose(&Fixture::new()?)
}

#[test]
fn kubernetes_command_lines_are_valid_and_consistent() -> Result<()> {
    check_k8s(&Fixture::new()?)
}

#[test]
fn systemd_command_lines_are_valid_and_consistent() -> Result<()> {
    check_systemd(&Fixture::new()?)
}

#[test]
fn the_test_parsers_read_what_the_files_use() -> Result<()> {
    assert_eq!(size_bytes("3GiB")?, 3 << 30);
    assert_eq!(size_bytes("4Gi")?, 4 << 30);
    assert_eq!(size_bytes("4G")?, 4_000_000_000);
    assert_eq!(docker_bytes("1536m")?, 1536 << 20);
    assert_eq!(cpu_cores("500m")?, 0.5);
    assert_eq!(cpu_cores("2")?, 2.0);
    assert_eq!(duration_secs("1m30s")?, 90.0);
    assert_eq!(duration_secs("330s")?, 330.0);
    assert_eq!(duration_secs("5min")?, 300.0);
    assert_eq!(
        expand_k8s("$(A):7800", &[("A".into(), "10.0.0.1".into())])?,
        "10.0.0.1:7800"
    );
    assert!(expand_k8s("$(B)", &[]).is_err());
    assert_eq!(
        flag_value(&["--x".into(), "1".into(), "--y=2".into()], "--y"),
        Some("2".into())
    );
    assert_eq!(
        parse_yaml("a: 1\n---\n# only a comment\n---\nb: 2\n", "t")?.len(),
        2
    );
    Ok(())
}
