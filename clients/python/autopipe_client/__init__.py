"""autopipe_client: a Python client for autopipe's public gRPC API (``autopipe.v1``).

::

    from autopipe_client import Client

    with Client("127.0.0.1:7700") as c:
        job_id = c.submit("pipelines/revenue.toml")
        status = c.wait(job_id, raise_on_failure=True)
        print(status.output_path, status.rows_out)

:class:`Client` submits and follows jobs; results are the generated protobuf messages
of ``autopipe_client.v1`` (``jobs_pb2.JobStatus``, ``spec_pb2.PipelineSpec``, ...),
whose enum fields :mod:`autopipe_client.enums` names; errors are
:mod:`autopipe_client.errors` exceptions. ``autopipe_client.airflow`` holds an Airflow
operator (importing it needs Airflow; nothing else here does).
"""

from autopipe_client.client import DEFAULT_COORDINATOR, Client
from autopipe_client.enums import (DecisionKind, JobState, MemberRole, StageKind,
                                   WorkerState, is_terminal, state_name)
from autopipe_client.errors import (AlreadyExists, AutopipeError, DeadlineExceeded,
                                    JobFailed, NotFound, NotLeader, PermissionDenied,
                                    Rejected, SpecError, Unauthenticated, Unavailable)
from autopipe_client.v1.jobs_pb2 import JobStatus
from autopipe_client.v1.spec_pb2 import (JobParams, JobSpec, PipelineSpec, SinkSpec,
                                         SourceSpec, TransformSpec)

__version__ = "0.1.0"

__all__ = [
    "Client", "DEFAULT_COORDINATOR",
    "JobState", "WorkerState", "StageKind", "DecisionKind", "MemberRole",
    "is_terminal", "state_name",
    "AutopipeError", "SpecError", "NotFound", "AlreadyExists", "Unauthenticated",
    "PermissionDenied", "Rejected", "Unavailable", "NotLeader", "DeadlineExceeded",
    "JobFailed",
    "JobStatus", "PipelineSpec", "JobSpec", "JobParams", "SourceSpec", "TransformSpec",
    "SinkSpec",
]
