"""The client: submit, follow and manage jobs over autopipe's public gRPC API.

A :class:`Client` talks to the coordinator group's leader, found as the CLI finds it:
the first reachable address of the list says whether it leads (``MemberStatus``), and
a follower names the leader (``ClusterStatus``). A call refused as ``UNAVAILABLE`` (no
leader yet, a leader change: ``NotLeader``, no quorum) is retried against the leader
with backoff, so a submission retried this way carries the same ``request_id`` and never
starts a second job.

Results are the generated protobuf messages (``autopipe_client.v1.jobs_pb2.JobStatus``
and so on: complete, and never out of step with the API); ``autopipe_client.enums``
names their enum fields. Errors are :mod:`autopipe_client.errors` exceptions.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator, List, Optional, Sequence, Tuple, Union, cast

import grpc

from autopipe_client import progress as _progress
from autopipe_client.enums import JobState, MemberRole, is_terminal, job_state
from autopipe_client.errors import (AutopipeError, DeadlineExceeded, JobFailed,
                                    NotLeader, Unavailable, from_rpc_error)
from autopipe_client.spec import PathLike, Spec, request_fields
from autopipe_client.v1 import admin_pb2, admin_pb2_grpc, jobs_pb2, jobs_pb2_grpc

#: where the CLI looks without ``--coordinator`` / ``$AUTOPIPE_COORDINATOR``
DEFAULT_COORDINATOR = "127.0.0.1:7700"

# a dead connection under a long WatchJob is noticed within about a minute
_CHANNEL_OPTIONS = [("grpc.keepalive_time_ms", 60_000), ("grpc.keepalive_timeout_ms", 20_000)]


class Client:
    """A connection to an autopipe cluster (a context manager: ``with Client(...) as c``).

    Args:
        address: the coordinator's gRPC address, ``host:port`` or ``http://host:port``,
            or a comma-separated list of the group's members (default:
            ``$AUTOPIPE_COORDINATOR``, else ``127.0.0.1:7700``).
        token: the cluster's auth token, sent as ``authorization: Bearer TOKEN`` on
            every call (default: ``$AUTOPIPE_AUTH_TOKEN``; none without it).
        timeout: the deadline of each call, in seconds (a ``wait`` has its own).
        retries: how often a call refused as ``UNAVAILABLE`` is tried again.
        tls_ca, tls_cert, tls_key: PEM files for a cluster started with ``--tls-*``
            (mutual TLS: the CA the servers' certificates are signed by, and the
            client's certificate and key); default ``$AUTOPIPE_TLS_CA`` /
            ``_CERT`` / ``_KEY`` as the CLI reads them.

    It connects on the first call. Give each thread its own client (a call that fails
    over to a new leader replaces the connection).
    """

    def __init__(self, address: Optional[str] = None, token: Optional[str] = None,
                 timeout: float = 30.0, *, retries: int = 5,
                 tls_ca: Optional[PathLike] = None, tls_cert: Optional[PathLike] = None,
                 tls_key: Optional[PathLike] = None) -> None:
        address = address or os.environ.get("AUTOPIPE_COORDINATOR") or DEFAULT_COORDINATOR
        self.addresses: List[str] = [a.strip() for a in address.split(",") if a.strip()]
        if not self.addresses:
            raise ValueError("no coordinator address given")
        token = token if token is not None else os.environ.get("AUTOPIPE_AUTH_TOKEN")
        self._metadata: Tuple[Tuple[str, str], ...] = (
            (("authorization", f"Bearer {token.strip()}"),) if token else ())
        self.timeout = timeout
        self.retries = retries
        self._tls = self._credentials(tls_ca, tls_cert, tls_key)
        self._channel: Optional[grpc.Channel] = None
        self._jobs: Any = None  # jobs_pb2_grpc.JobServiceStub once connected
        self._admin: Any = None  # admin_pb2_grpc.AdminServiceStub once connected
        self._leader_hint: Optional[str] = None

    # -- connection ------------------------------------------------------------------

    @staticmethod
    def _credentials(ca: Optional[PathLike], cert: Optional[PathLike],
                     key: Optional[PathLike]) -> Optional[grpc.ChannelCredentials]:
        env = os.environ.get
        ca, cert, key = (ca or env("AUTOPIPE_TLS_CA"), cert or env("AUTOPIPE_TLS_CERT"),
                         key or env("AUTOPIPE_TLS_KEY"))
        if not (ca or cert or key):
            return None
        read = lambda p: Path(p).read_bytes() if p else None  # noqa: E731
        return grpc.ssl_channel_credentials(read(ca), read(key), read(cert))

    def _open(self, address: str) -> grpc.Channel:
        scheme, _, rest = address.rpartition("://")
        if scheme == "https" or (self._tls and scheme != "http"):
            return grpc.secure_channel(rest, self._tls or grpc.ssl_channel_credentials(),
                                       options=_CHANNEL_OPTIONS)
        return grpc.insecure_channel(rest, options=_CHANNEL_OPTIONS)

    def _adopt(self, channel: grpc.Channel) -> None:
        self._channel = channel
        self._jobs = jobs_pb2_grpc.JobServiceStub(channel)
        self._admin = admin_pb2_grpc.AdminServiceStub(channel)

    def _connect(self) -> None:
        """Connects to the leader: the first reachable address, or the leader it names."""
        candidates = ([self._leader_hint] if self._leader_hint else []) + self.addresses
        last: Optional[AutopipeError] = None
        for address in candidates:
            channel = self._open(address)
            admin = admin_pb2_grpc.AdminServiceStub(channel)
            try:
                me = admin.MemberStatus(admin_pb2.MemberStatusRequest(),
                                        timeout=min(self.timeout, 5.0), metadata=self._metadata)
                if me.role == MemberRole.LEADER:
                    self._adopt(channel)
                    return
                st = admin.ClusterStatus(admin_pb2.ClusterStatusRequest(),
                                         timeout=self.timeout, metadata=self._metadata)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNIMPLEMENTED:  # an older coordinator
                    self._adopt(channel)
                    return
                channel.close()
                last = from_rpc_error(e)
                if not isinstance(last, (Unavailable, DeadlineExceeded)):
                    raise last from e  # e.g. a wrong token: no other member will differ
                last = Unavailable(f"cannot reach coordinator at {address}: {last.message}",
                                   last.code, last.reason, last.metadata)
                continue
            channel.close()
            if st.leader_address:
                self._adopt(self._open(st.leader_address))
                return
            last = Unavailable(f"the coordinator group has no leader now (asked {address})")
        assert last is not None, "there is at least one address"
        raise last

    def _reset(self, err: AutopipeError) -> None:
        """Drops the connection after `err`; the next call connects to the leader again."""
        self._leader_hint = err.leader if isinstance(err, NotLeader) and err.leader else None
        if self._channel is not None:
            self._channel.close()
        self._channel = self._jobs = self._admin = None

    def _backoff(self, attempt: int, err: AutopipeError) -> None:
        # exponential with full jitter, never shorter than the server's RetryInfo
        time.sleep(max(err.retry_delay or 0.0, random.uniform(0, min(2.0, 0.2 * 2 ** attempt))))

    def _call(self, service: str, method: str, request: Any) -> Any:
        """A unary call with the deadline and token, retried while ``UNAVAILABLE``."""
        for attempt in range(self.retries + 1):
            try:
                if self._channel is None:
                    self._connect()
                rpc = getattr(self._jobs if service == "jobs" else self._admin, method)
                return rpc(request, timeout=self.timeout, metadata=self._metadata)
            except grpc.RpcError as e:
                err, cause = from_rpc_error(e), e
            except Unavailable as e:  # from _connect
                err, cause = e, e.__cause__
            if not isinstance(err, Unavailable) or attempt == self.retries:
                raise err from cause
            self._reset(err)
            self._backoff(attempt, err)
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Closes the connection (a later call opens a new one)."""
        if self._channel is not None:
            self._channel.close()
        self._channel = self._jobs = self._admin = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- jobs ------------------------------------------------------------------------

    def submit(self, spec: Spec, request_id: Optional[str] = None, *,
               resolve_relative_to: Optional[PathLike] = None,
               origin: Optional[str] = None) -> str:
        """Submits a pipeline; returns its job id.

        Args:
            spec: a spec file (``Path``, or a ``str`` without a newline), TOML text, a
                typed ``PipelineSpec`` or a dict keyed as the TOML. A file's relative
                paths are resolved against its directory, as the CLI does (see
                :mod:`autopipe_client.spec`).
            request_id: the idempotency key: the same key with the same spec returns
                the first job's id instead of starting another; with another spec it is
                refused (:class:`AlreadyExists`). Default: a fresh one, so that this
                call's own retries are safe.
            resolve_relative_to: the directory relative paths are resolved against
                (default: a spec file's directory; TOML text and typed specs are sent
                as they are).
            origin: where the spec came from, for error messages.
        """
        fields, default_origin = request_fields(spec, resolve_relative_to)
        req = jobs_pb2.SubmitJobRequest(spec_origin=origin or default_origin,
                                        request_id=request_id or uuid.uuid4().hex, **fields)
        return str(self._call("jobs", "SubmitJob", req).job_id)

    def get(self, job_id: str) -> jobs_pb2.JobStatus:
        """A job's status, with its stages and workers."""
        return self._call("jobs", "GetJob", jobs_pb2.JobId(job_id=job_id))

    def cancel(self, job_id: str) -> jobs_pb2.JobStatus:
        """Cancels a job (a job that has ended stays as it is); returns its status."""
        return self._call("jobs", "CancelJob", jobs_pb2.JobId(job_id=job_id))

    def list_jobs(self, states: Optional[Iterable[Union[str, int, JobState]]] = None,
                  name: Optional[str] = None, page_size: int = 100,
                  full: bool = False) -> Iterator[jobs_pb2.JobStatus]:
        """Every job the cluster keeps, oldest first, fetched `page_size` at a time.

        Args:
            states: only jobs in one of these states (``"running"``, ``JobState.FAILED``).
            name: only jobs of this ``[job] name``.
            full: include each stage's plan text (left out by default).
        """
        req = jobs_pb2.ListJobsRequest(
            page_size=page_size, name=name or "",
            states=cast("List[jobs_pb2.JobState]", [job_state(s) for s in (states or ())]),
            view=jobs_pb2.JOB_VIEW_FULL if full else jobs_pb2.JOB_VIEW_BASIC)
        while True:
            page = self._call("jobs", "ListJobs", req)
            yield from page.jobs
            if not page.next_page_token:
                return
            req.page_token = page.next_page_token

    def wait(self, job_id: str, progress: _progress.Progress = True,
             timeout: Optional[float] = None, *, raise_on_failure: bool = False,
             keepalive_seconds: int = 15) -> jobs_pb2.JobStatus:
        """Follows a job (``WatchJob``) until it ends; returns its final status.

        Args:
            progress: True: progress lines on stderr (as ``autopipe submit --wait``);
                False: none; a callable: called with every status the stream sends.
            timeout: give up after this many seconds (:class:`DeadlineExceeded`; the job
                runs on). None: wait as long as it runs.
            raise_on_failure: raise :class:`JobFailed` (with the job's error) when it
                ends FAILED or CANCELLED.
            keepalive_seconds: the longest the stream stays silent; the server sends
                the status again then.
        """
        report = _progress.callback(progress)
        deadline = None if timeout is None else time.monotonic() + timeout
        req = jobs_pb2.WatchJobRequest(job_id=job_id, keepalive_seconds=keepalive_seconds)
        last: Optional[jobs_pb2.JobStatus] = None
        failures = 0
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise DeadlineExceeded(self._still(job_id, last, timeout))
            try:
                if self._channel is None:
                    self._connect()
                for status in self._jobs.WatchJob(req, timeout=left, metadata=self._metadata):
                    last, failures = status, 0
                    report(status)
                    if is_terminal(status.state):
                        if raise_on_failure and status.state != JobState.SUCCEEDED:
                            raise JobFailed(status)
                        return status
                # the stream ended before the job did: watch again (NOT_FOUND if it is gone)
                err: AutopipeError = Unavailable(f"the watch on job {job_id} ended early")
                cause: Optional[BaseException] = None
            except grpc.RpcError as e:
                err, cause = from_rpc_error(e), e
                if isinstance(err, DeadlineExceeded) and deadline is not None:
                    raise DeadlineExceeded(self._still(job_id, last, timeout)) from e
            except Unavailable as e:  # from _connect
                err, cause = e, e.__cause__
            failures += 1
            if not isinstance(err, Unavailable) or failures > self.retries:
                raise err from cause
            self._reset(err)
            self._backoff(failures, err)

    @staticmethod
    def _still(job_id: str, last: Optional[jobs_pb2.JobStatus], timeout: Optional[float]) -> str:
        where = _progress.describe(last) if last is not None else f"job {job_id}"
        return f"still not ended after {timeout} s: {where}"

    # -- the fleet and the decision log ------------------------------------------------

    def decisions(self, job_id: Optional[str] = None) -> List[admin_pb2.Decision]:
        """The decision log, oldest first: every automatic change, why and its effect
        (one job's, or all)."""
        req = admin_pb2.ListDecisionsRequest(job_id=job_id or "")
        return list(self._call("admin", "ListDecisions", req).decisions)

    def workers(self) -> List[admin_pb2.WorkerInfo]:
        """The workers: state, slots, load."""
        return list(self._call("admin", "ListWorkers", admin_pb2.ListWorkersRequest()).workers)

    def cluster(self) -> admin_pb2.ClusterStatusResponse:
        """The coordinator group: its leader and every member's raft progress."""
        return self._call("admin", "ClusterStatus", admin_pb2.ClusterStatusRequest())


__all__: Sequence[str] = ["Client", "DEFAULT_COORDINATOR"]
