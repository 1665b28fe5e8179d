"""Errors: a refused gRPC call as a Python exception that keeps its meaning.

The coordinator refuses a call with a gRPC status code and the standard
``google.rpc.Status`` details (``grpc-status-details-bin``): a ``BadRequest`` naming the
spec key (``sources[0].path``), an ``ErrorInfo`` (domain ``autopipe``, a reason such as
``INVALID_SPEC``, ``NOT_LEADER``, ``REQUEST_ID_REUSED``; metadata ``class`` =
``transient`` / ``permanent``, ``leader``, ``job_id``) and, for what is worth retrying,
a ``RetryInfo``. :func:`from_rpc_error` decodes them into one class per status code, so a
caller catches :class:`SpecError` or :class:`NotFound` instead of parsing messages.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple, Type

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from autopipe_client.enums import state_name
from autopipe_client.v1 import errors_pb2, jobs_pb2

#: the ``ErrorInfo`` domain of autopipe's own reasons
DOMAIN = "autopipe"


class AutopipeError(Exception):
    """A call the cluster refused (or that could not reach it), or a job that failed.

    Attributes:
        code: the gRPC status code (None for errors that are no refused call).
        message: the server's message.
        reason: ``ErrorInfo.reason`` (``INVALID_SPEC``, ``NOT_LEADER``, ...; "" if none).
        metadata: ``ErrorInfo.metadata`` (``class``, ``key``, ``leader``, ``job_id``).
        field_violations: ``BadRequest`` field violations as ``(field, description)``.
        retry_delay: ``RetryInfo.retry_delay`` in seconds (None: not worth retrying).
    """

    def __init__(
        self,
        message: str,
        code: Optional[grpc.StatusCode] = None,
        reason: str = "",
        metadata: Optional[Dict[str, str]] = None,
        field_violations: Optional[List[Tuple[str, str]]] = None,
        retry_delay: Optional[float] = None,
    ) -> None:
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata: Dict[str, str] = dict(metadata or {})
        self.field_violations: List[Tuple[str, str]] = list(field_violations or [])
        self.retry_delay = retry_delay
        super().__init__(self._text())

    def _text(self) -> str:
        # "sources[0].path: '...' is a relative path ...": the key first, as the CLI shows it
        if self.field_violations:
            return "; ".join(keyed(f, d) for f, d in self.field_violations)
        return self.message

    @property
    def error_class(self) -> str:
        """``transient`` (retry), ``permanent`` (fix the request) or "" (not said)."""
        return self.metadata.get("class", "")


def keyed(key: str, text: str) -> str:
    """``KEY: TEXT``, for a message about a spec key.

    The server's texts (a ``BadRequest`` description, a job's ``ErrorDetail.message``)
    are its whole error line, ``ORIGIN: [KEY] TEXT``; what precedes ``[KEY]`` is left
    out, as it would repeat the key (the raw text stays in ``field_violations``).
    """
    if not key or text.startswith(key):
        return text
    _, found, rest = text.partition(f"[{key}] ")
    return f"{key}: {rest if found else text}"


class SpecError(AutopipeError):
    """``INVALID_ARGUMENT``: the spec (or another argument) is wrong; see ``field_violations``."""


class NotFound(AutopipeError):
    """``NOT_FOUND``: no such job (or it was forgotten: ``coordinator --job-retention``)."""


class AlreadyExists(AutopipeError):
    """``ALREADY_EXISTS``: the request_id already started a job with another spec.

    ``job_id`` is that job.
    """

    @property
    def job_id(self) -> str:
        return self.metadata.get("job_id", "")


class Unauthenticated(AutopipeError):
    """``UNAUTHENTICATED``: the cluster wants a token (``token=`` / ``$AUTOPIPE_AUTH_TOKEN``)."""


class PermissionDenied(AutopipeError):
    """``PERMISSION_DENIED``: e.g. a path outside the coordinator's ``--allowed-roots``."""


class Rejected(AutopipeError):
    """``FAILED_PRECONDITION``: the state refused the change (e.g. a job already ended)."""


class Unavailable(AutopipeError):
    """``UNAVAILABLE``: no coordinator reachable, no leader or no quorum now; retry later
    (``retry_delay`` says when)."""


class NotLeader(Unavailable):
    """A follower refused a call only the leader answers; ``leader`` is its address."""

    @property
    def leader(self) -> str:
        return self.metadata.get("leader", "")


class DeadlineExceeded(AutopipeError, TimeoutError):
    """A call, or :meth:`Client.wait`, ran past its deadline."""


class JobFailed(AutopipeError):
    """A job ended FAILED or CANCELLED (raised by ``wait(..., raise_on_failure=True)``).

    Attributes:
        status: the job's final ``JobStatus``.
        error: its ``ErrorDetail`` (``message``, ``key``, ``error_class``).
    """

    def __init__(self, status: jobs_pb2.JobStatus) -> None:
        self.status = status
        self.error: errors_pb2.ErrorDetail = status.error
        text = f"job {status.job_id} {state_name(status.state)}"
        if status.error.message:
            text += f": {keyed(status.error.key, status.error.message)}"
        super().__init__(text)

    @property
    def job_id(self) -> str:
        return self.status.job_id


_BY_CODE: Dict[grpc.StatusCode, Type[AutopipeError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: SpecError,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.FAILED_PRECONDITION: Rejected,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


def _details(call: grpc.Call) -> Optional[status_pb2.Status]:
    """The ``google.rpc.Status`` in the trailers, if the server sent one."""
    try:
        return rpc_status.from_call(call)
    except ValueError:  # details that contradict the call's code or message: ignored
        return None


def from_rpc_error(err: grpc.RpcError) -> AutopipeError:
    """The :class:`AutopipeError` subclass for a failed call, its details decoded."""
    call: grpc.Call = err  # grpcio's errors are also Calls
    code = call.code()
    message = call.details() or ""
    reason, metadata, violations, delay = "", {}, [], None
    st = _details(call)
    for d in st.details if st is not None else ():
        if d.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            b = error_details_pb2.BadRequest()
            d.Unpack(b)
            violations += [(v.field, v.description) for v in b.field_violations]
        elif d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            i = error_details_pb2.ErrorInfo()
            d.Unpack(i)
            reason, metadata = i.reason, dict(i.metadata)
        elif d.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            r = error_details_pb2.RetryInfo()
            d.Unpack(r)
            delay = r.retry_delay.seconds + r.retry_delay.nanos / 1e9
    # the leader also travels in its own metadata key (what the Rust clients read)
    for key, value in call.trailing_metadata() or ():
        if key == "autopipe-leader" and "leader" not in metadata:
            metadata["leader"] = value if isinstance(value, str) else value.decode()
    cls = NotLeader if reason == "NOT_LEADER" else _BY_CODE.get(code, AutopipeError)
    return cls(message, code, reason, metadata, violations, delay)
