"""One job per scheduler task try, whatever crashes and retries happen around it.

A scheduler (Airflow, or any other with task keys and try numbers) runs a task again
when its worker crashed, and when the task failed. The first must re-attach to the job
the crashed try started; the second must start a new job. ``request_id`` gives the
first: the same key returns the same job. For the second, :func:`job_for_try` walks a
chain of keys, ``KEY``, ``KEY#2``, ``KEY#3``, ...: it submits under each in turn and
stops at the first job that has not failed or been cancelled (a running job is
re-attached to, a succeeded one is not run again), or at link ``try_number``, whose
key it submits under whatever happened before.

So try N uses at most links 1..N, and one task instance never has more jobs than its
highest try number, however its tries crashed: a try that crashed while its job ran
hands that job to the next try, which waits for it; a try whose job failed leaves the
next link to the next try.
"""

from __future__ import annotations

from typing import Callable, Optional, Protocol

from autopipe_client.enums import JobState, state_name
from autopipe_client.spec import Spec
from autopipe_client.v1 import jobs_pb2


class _Jobs(Protocol):
    """The part of :class:`autopipe_client.Client` this module uses."""

    def submit(self, spec: Spec, request_id: Optional[str] = None, *,
               origin: Optional[str] = None) -> str: ...

    def get(self, job_id: str) -> jobs_pb2.JobStatus: ...


def task_key(dag_id: str, task_id: str, run_id: str, map_index: int = -1) -> str:
    """The request_id of a task instance, the same in all its tries (``airflow/DAG/TASK/
    RUN/MAP_INDEX``)."""
    return f"airflow/{dag_id}/{task_id}/{run_id}/{map_index}"


def link_key(key: str, link: int) -> str:
    """The request_id of link `link` (1-based) of `key`'s chain."""
    return key if link == 1 else f"{key}#{link}"


def job_for_try(client: _Jobs, spec: Spec, key: str, try_number: int, *,
                origin: Optional[str] = None,
                log: Callable[[str], None] = lambda _line: None) -> str:
    """The job of try `try_number` (1-based) of the task whose request_id is `key`:
    an earlier try's job that has not failed, or a new one (see the module's doc)."""
    last = max(try_number, 1)
    for link in range(1, last + 1):
        request_id = link_key(key, link)
        job_id = client.submit(spec, request_id=request_id, origin=origin)
        if link == last:
            return job_id
        state = client.get(job_id).state
        if state not in (JobState.FAILED, JobState.CANCELLED):
            log(f"re-attaching to job {job_id} (request_id {request_id}), "
                f"{state_name(state)}, started by an earlier try")
            return job_id
        log(f"job {job_id} (request_id {request_id}) ended {state_name(state)}")
    raise AssertionError("unreachable: the last link returns")
