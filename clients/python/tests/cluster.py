"""Test harness: a real autopipe cluster, as processes of the ``autopipe`` binary.

``$AUTOPIPE_BIN`` names the binary (the Rust integration test sets it; without it the
tests that need a cluster are skipped, saying so). Coordinators and workers listen on
127.0.0.1 ephemeral ports, keep their state in a temporary directory, and are
SIGKILLed and removed on ``close()`` (and die with the test process, through Linux's
parent-death signal, if it is killed first). Nothing waits on a fixed sleep: every wait
polls a condition against a deadline.
"""

from __future__ import annotations

import ctypes
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import uuid
from pathlib import Path
from typing import Callable, List, Optional, Sequence, TypeVar

import grpc

from autopipe_client import Client, MemberRole, WorkerState
from autopipe_client.v1 import admin_pb2, admin_pb2_grpc

T = TypeVar("T")


def autopipe_bin() -> str:
    """The binary under test, or a skip that says how to name it."""
    path = os.environ.get("AUTOPIPE_BIN")
    if not path:
        raise unittest.SkipTest("set AUTOPIPE_BIN to the autopipe binary to run the cluster tests")
    if not os.access(path, os.X_OK):
        raise unittest.SkipTest(f"AUTOPIPE_BIN={path} is not an executable")
    return path


def wait_until(what: str, condition: Callable[[], Optional[T]], timeout: float = 60.0) -> T:
    """Polls `condition` until it returns something truthy (returned); fails after
    `timeout` seconds naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def free_port() -> int:
    """A port free now on 127.0.0.1 (for a raft group, whose members must know each
    other's addresses before they start)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_certificates(directory: Path) -> dict:
    """A CA and one certificate it signed for 127.0.0.1 (server and client use), as the
    ``tls_*`` arguments of a Client."""
    if shutil.which("openssl") is None:
        raise unittest.SkipTest("the openssl command is missing: the TLS test makes its "
                                "certificates with it")
    directory.mkdir(parents=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    (directory / "ext.cnf").write_text(
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n")
    for cmd in [
        ["req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
         "-subj", "/CN=autopipe-test-ca"],
        ["req", *ec, "-keyout", "node.key", "-out", "node.csr", "-subj", "/CN=autopipe"],
        ["x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
         "-CAcreateserial", "-out", "node.pem", "-days", "2", "-extfile", "ext.cnf"],
    ]:
        subprocess.run(["openssl", *cmd], cwd=directory, check=True, capture_output=True)
    return {"tls_ca": str(directory / "ca.pem"), "tls_cert": str(directory / "node.pem"),
            "tls_key": str(directory / "node.key")}


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Proc:
    """An ``autopipe`` server process: its gRPC and HTTP addresses and its log."""

    def __init__(self, args: Sequence[str], log: Path) -> None:
        self.log = log
        with log.open("wb") as stderr:
            self.popen = subprocess.Popen(
                [autopipe_bin(), *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=stderr, env={**os.environ, "AUTOPIPE_LOG": "warn"},
                preexec_fn=_die_with_parent, text=True)
        lines: "queue.Queue[str]" = queue.Queue()

        def pump() -> None:  # the first line names the addresses; the pipe never fills
            for line in self.popen.stdout or ():
                lines.put(line)

        self._reader = threading.Thread(target=pump, daemon=True)
        self._reader.start()
        try:
            first = lines.get(timeout=60)
        except queue.Empty:
            self.kill()
            raise AssertionError(f"autopipe {' '.join(args)} printed no address in 60 s: "
                                 f"{self.log_tail()}") from None
        # "<role> listening on 127.0.0.1:P (http 127.0.0.1:Q)"
        try:
            self.addr = first.split("listening on ")[1].split()[0]
            self.http = first.split("(http ")[1].strip().rstrip(")")
        except IndexError:
            self.kill()
            raise AssertionError(f"unexpected first line from autopipe: {first!r}") from None

    def log_tail(self, n: int = 20) -> str:
        lines = self.log.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()
        self._reader.join(timeout=10)  # at the pipe's end
        if self.popen.stdout is not None:
            self.popen.stdout.close()


class Cluster:
    """Coordinators and workers in a temporary directory (a context manager).

    One coordinator by default; ``coordinators=3`` starts a raft group and waits for its
    leader. ``token`` starts every process with ``--auth-token-file``, ``tls`` with
    ``--tls-cert``, ``--tls-key`` and ``--tls-ca`` (mutual TLS; the certificates are
    made with the ``openssl`` command).
    """

    def __init__(self, workers: int = 1, slots: int = 2,
                 worker_args: Sequence[str] = (), coordinators: int = 1,
                 token: Optional[str] = None, tls: bool = False) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="autopipe-pyclient-"))
        self.token = token
        self.tls: dict = {}
        self.coordinators: List[Proc] = []
        self.workers: List[Proc] = []
        self._auth: List[str] = []
        try:
            if token:
                (self.dir / "token").write_text(token)
                self._auth = ["--auth-token-file", str(self.dir / "token")]
            if tls:
                self.tls = make_certificates(self.dir / "tls")
                self._auth += ["--tls-cert", self.tls["tls_cert"], "--tls-key",
                               self.tls["tls_key"], "--tls-ca", self.tls["tls_ca"]]
            self._start_coordinators(coordinators)
            for _ in range(workers):
                self.add_worker(slots, worker_args)
            with self.client() as c:
                wait_until(f"{workers} workers to register", lambda: sum(
                    w.state == WorkerState.ALIVE for w in c.workers()) >= workers)
        except BaseException:
            self.close()
            raise

    def _start_coordinators(self, n: int) -> None:
        if n == 1:
            self.coordinators.append(Proc(
                ["coordinator", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0",
                 "--data-dir", str(self.dir / "coord"), *self._auth], self.dir / "coord.log"))
            return
        ports = [free_port() for _ in range(n)]
        peers = ",".join(f"{i + 1}=127.0.0.1:{p}" for i, p in enumerate(ports))
        for i, port in enumerate(ports):
            self.coordinators.append(Proc(
                ["coordinator", "--id", str(i + 1), "--peers", peers,
                 "--initial-cluster-state", "new", "--listen", f"127.0.0.1:{port}",
                 "--http", "127.0.0.1:0", "--data-dir", str(self.dir / f"coord-{i + 1}"),
                 *self._auth], self.dir / f"coord-{i + 1}.log"))
        with self.client() as c:
            wait_until("a leader", lambda: c.cluster().leader_id)

    @property
    def address(self) -> str:
        """Every coordinator's gRPC address, comma-separated."""
        return ",".join(p.addr for p in self.coordinators)

    def role(self, p: Proc) -> MemberRole:
        """Coordinator `p`'s raft role, as it reports itself."""
        auth = [("authorization", f"Bearer {self.token}")] if self.token else []
        with grpc.insecure_channel(p.addr) as ch:
            me = admin_pb2_grpc.AdminServiceStub(ch).MemberStatus(
                admin_pb2.MemberStatusRequest(), timeout=10, metadata=auth)
        return MemberRole(me.role)

    def leader(self) -> Proc:
        """The coordinator that leads now."""
        return next(p for p in self.coordinators if self.role(p) == MemberRole.LEADER)

    def followers(self) -> List[Proc]:
        """The coordinators that do not lead now."""
        return [p for p in self.coordinators if self.role(p) != MemberRole.LEADER]

    def client(self, **kwargs: object) -> Client:
        """A client of this cluster (with its token and TLS files, unless given)."""
        kwargs.setdefault("token", self.token or "")
        for k, v in self.tls.items():
            kwargs.setdefault(k, v)
        address = str(kwargs.pop("address", self.address))
        return Client(address, **kwargs)  # type: ignore[arg-type]

    def add_worker(self, slots: int = 2, extra: Sequence[str] = ()) -> Proc:
        i = len(self.workers)
        w = Proc(["worker", "--coordinator", self.address,
                  "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--slots", str(slots),
                  "--work-dir", str(self.dir / f"worker-{i}"), *self._auth, *extra],
                 self.dir / f"worker-{i}.log")
        self.workers.append(w)
        return w

    def logs(self) -> str:
        """The tail of every process's log (for a failure message)."""
        return "\n".join(f"--- {p.log.name}\n{p.log_tail()}"
                         for p in self.coordinators + self.workers)

    def close(self) -> None:
        for p in self.workers + self.coordinators:
            p.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


ORDERS = "id,name,amount\n1,a,10\n2,b,20\n3,a,5\n"
TOTALS_SQL = "SELECT name, SUM(amount) AS total FROM orders GROUP BY name"


def write_job(directory: Path, name: str, sql: str = TOTALS_SQL, rows: str = ORDERS,
              extra_source: str = "") -> Path:
    """A tiny CSV job: ``data/orders.csv`` and the spec ``<name>.toml`` in `directory`,
    with paths relative to it (as a user writes them), writing CSV to ``out/<name>/``."""
    (directory / "data").mkdir(parents=True, exist_ok=True)
    (directory / "data" / "orders.csv").write_text(rows)
    spec = directory / f"{name}.toml"
    spec.write_text(f"""
[job]
name = "{name}"
[[sources]]
name = "orders"
format = "csv"
path = "data/orders.csv"
{extra_source}
[transform]
sql = "{sql}"
[sink]
format = "csv"
path = "out/{name}/"
""")
    return spec


def read_csv_rows(directory: Path) -> List[str]:
    """The data rows of every CSV file in `directory` (headers left out), sorted."""
    rows: List[str] = []
    for f in sorted(directory.glob("*.csv")):
        rows += f.read_text().splitlines()[1:]
    return sorted(rows)


class ClusterTest(unittest.TestCase):
    """A test class with its own cluster (``CLUSTER`` keyword arguments) and a temp dir."""

    CLUSTER: dict = {}
    cluster: Cluster
    client: Client

    @classmethod
    def setUpClass(cls) -> None:
        cls.cluster = Cluster(**cls.CLUSTER)
        cls.addClassCleanup(cls.cluster.close)
        cls.client = cls.cluster.client()
        cls.addClassCleanup(cls.client.close)

    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory(prefix="autopipe-pyclient-job-")
        self.addCleanup(tmp.cleanup)
        self.dir = Path(tmp.name)

    def name(self, prefix: str) -> str:
        """A job name no other test uses."""
        return f"{prefix}-{uuid.uuid4().hex[:6]}"
