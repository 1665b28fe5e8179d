"""Progress lines while a job runs, as ``autopipe submit --wait`` prints them to a log.

``[3.2s] wordcount-20261130-1a2b3c running: stages 1/2, tasks 7/12, rows in 40000``: a
line at the first status, at each state or stage change, and while tasks finish at
most every `every` seconds (a WatchJob stream sends a status on every change and a
keep-alive, which would repeat a line per task).
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Optional, Tuple, Union

from autopipe_client.enums import state_name
from autopipe_client.v1 import jobs_pb2

#: what ``Client.wait(progress=...)`` takes: True (lines to stderr), False/None
#: (nothing), or a callable that gets every status the stream sends
Progress = Union[bool, None, Callable[[jobs_pb2.JobStatus], None]]


def stages_done(status: jobs_pb2.JobStatus) -> int:
    """Stages whose tasks are all done."""
    return sum(1 for s in status.stages if s.tasks_total and s.tasks_done == s.tasks_total)


def describe(status: jobs_pb2.JobStatus) -> str:
    """``JOB_ID STATE: stages D/N, tasks D/N, rows in R`` (plus why it waits, if it does)."""
    line = (f"{status.job_id} {state_name(status.state)}: stages {stages_done(status)}/"
            f"{len(status.stages)}, tasks {status.tasks_done}/{status.tasks_total}, "
            f"rows in {status.rows_in}")
    return f"{line} (waiting: {status.waiting_reason})" if status.waiting_reason else line


class ProgressLines:
    """A progress callback that writes a line (via `write`) when something moved."""

    def __init__(self, write: Callable[[str], None], every: float = 5.0) -> None:
        self._write = write
        self._every = every
        self._started = time.monotonic()
        self._printed: Optional[Tuple[int, int, int, str]] = None
        self._printed_at = 0.0

    def __call__(self, status: jobs_pb2.JobStatus) -> None:
        now = time.monotonic()
        key = (status.state, stages_done(status), status.tasks_done, status.waiting_reason)
        moved = self._printed is None or key[:2] != self._printed[:2] or key[3] != self._printed[3]
        ticked = (self._printed is not None and key[2] != self._printed[2]
                  and now - self._printed_at >= self._every)
        if moved or ticked:
            self._write(f"[{now - self._started:.1f}s] {describe(status)}")
            self._printed, self._printed_at = key, now


def callback(progress: Progress) -> Callable[[jobs_pb2.JobStatus], None]:
    """The status callback for a ``progress=`` argument."""
    if progress is True:
        return ProgressLines(lambda line: print(line, file=sys.stderr, flush=True))
    if not progress:
        return lambda _status: None
    return progress
