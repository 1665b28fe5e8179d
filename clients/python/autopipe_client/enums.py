"""The API's enums as Python ``IntEnum``s with readable names.

The client returns the generated protobuf messages, whose enum fields are plain ints
(``status.state == 4``). These classes name them: ``JobState(status.state)`` is
``JobState.SUCCEEDED``, ``str(...)`` is ``"succeeded"`` (as the CLI prints it), and a
member compares equal to the int (``status.state == JobState.SUCCEEDED``). Members drop
the proto's type prefix (``WORKER_STATE_ALIVE`` is ``WorkerState.ALIVE``);
``tests/test_stubs.py`` checks that they match the protos value for value.
"""

from __future__ import annotations

import enum


class _Named(enum.IntEnum):
    def __str__(self) -> str:
        return self.name.lower()


class JobState(_Named):
    """A job's state (``autopipe.v1.JobState``)."""

    UNSPECIFIED = 0
    QUEUED = 1
    RUNNING = 2
    COMMITTING = 3
    SUCCEEDED = 4
    FAILED = 5
    CANCELLED = 6

    @property
    def terminal(self) -> bool:
        """The job has ended (it changes no more)."""
        return is_terminal(self)


class WorkerState(_Named):
    """A worker's membership in the fleet (``autopipe.v1.WorkerState``)."""

    UNSPECIFIED = 0
    ALIVE = 1
    DRAINING = 2
    LOST = 3
    RELEASED = 4
    FORGOTTEN = 5


class StageKind(_Named):
    """What a stage's tasks produce (``autopipe.v1.StageKind``)."""

    UNSPECIFIED = 0
    MAP = 1
    SINK = 2


class DecisionKind(_Named):
    """The rule that took an automatic decision (``autopipe.v1.DecisionKind``)."""

    UNSPECIFIED = 0
    SPECULATION = 1
    TASK_TIMEOUT = 2
    RETRY_LIMIT = 3
    MEMORY_RETRY = 4
    COALESCE = 5
    SKEW_SPLIT = 6
    BROADCAST = 7
    REBALANCE = 8
    SPLIT_RUNNING_TASK = 9
    SCALE_UP = 10
    SCALE_DOWN = 11
    INPUT_SPLITS = 12
    KAFKA_SCALE_UP = 13
    KAFKA_SCALE_DOWN = 14
    KAFKA_REBALANCE = 15
    COMPACTION = 16


class MemberRole(_Named):
    """A coordinator's raft role (``autopipe.v1.MemberRole``)."""

    UNSPECIFIED = 0
    LEADER = 1
    FOLLOWER = 2
    CANDIDATE = 3


def job_state(value: int | str | JobState) -> JobState:
    """A state given as a member, its int, or its name in any case (``"running"``)."""
    if isinstance(value, str):
        try:
            return JobState[value.strip().upper()]
        except KeyError:
            names = ", ".join(str(s) for s in JobState if s != JobState.UNSPECIFIED)
            raise ValueError(f"'{value}' is not a job state ({names})") from None
    return JobState(value)


def state_name(value: int) -> str:
    """A job state's name as the CLI prints it (``"succeeded"``); a state newer than this
    client as ``state N``."""
    try:
        return str(JobState(value))
    except ValueError:
        return f"state {value}"


def is_terminal(state: int) -> bool:
    """Whether a job in `state` has ended: SUCCEEDED, FAILED or CANCELLED."""
    return state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)
