from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WorkerState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WORKER_STATE_UNSPECIFIED: _ClassVar[WorkerState]
    WORKER_STATE_ALIVE: _ClassVar[WorkerState]
    WORKER_STATE_DRAINING: _ClassVar[WorkerState]
    WORKER_STATE_LOST: _ClassVar[WorkerState]
    WORKER_STATE_RELEASED: _ClassVar[WorkerState]
    WORKER_STATE_FORGOTTEN: _ClassVar[WorkerState]

class MemberRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MEMBER_ROLE_UNSPECIFIED: _ClassVar[MemberRole]
    MEMBER_ROLE_LEADER: _ClassVar[MemberRole]
    MEMBER_ROLE_FOLLOWER: _ClassVar[MemberRole]
    MEMBER_ROLE_CANDIDATE: _ClassVar[MemberRole]

class DecisionKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_KIND_UNSPECIFIED: _ClassVar[DecisionKind]
    DECISION_KIND_SPECULATION: _ClassVar[DecisionKind]
    DECISION_KIND_TASK_TIMEOUT: _ClassVar[DecisionKind]
    DECISION_KIND_RETRY_LIMIT: _ClassVar[DecisionKind]
    DECISION_KIND_MEMORY_RETRY: _ClassVar[DecisionKind]
    DECISION_KIND_COALESCE: _ClassVar[DecisionKind]
    DECISION_KIND_SKEW_SPLIT: _ClassVar[DecisionKind]
    DECISION_KIND_BROADCAST: _ClassVar[DecisionKind]
    DECISION_KIND_REBALANCE: _ClassVar[DecisionKind]
    DECISION_KIND_SPLIT_RUNNING_TASK: _ClassVar[DecisionKind]
    DECISION_KIND_SCALE_UP: _ClassVar[DecisionKind]
    DECISION_KIND_SCALE_DOWN: _ClassVar[DecisionKind]
    DECISION_KIND_INPUT_SPLITS: _ClassVar[DecisionKind]
    DECISION_KIND_KAFKA_SCALE_UP: _ClassVar[DecisionKind]
    DECISION_KIND_KAFKA_SCALE_DOWN: _ClassVar[DecisionKind]
    DECISION_KIND_KAFKA_REBALANCE: _ClassVar[DecisionKind]
    DECISION_KIND_COMPACTION: _ClassVar[DecisionKind]
WORKER_STATE_UNSPECIFIED: WorkerState
WORKER_STATE_ALIVE: WorkerState
WORKER_STATE_DRAINING: WorkerState
WORKER_STATE_LOST: WorkerState
WORKER_STATE_RELEASED: WorkerState
WORKER_STATE_FORGOTTEN: WorkerState
MEMBER_ROLE_UNSPECIFIED: MemberRole
MEMBER_ROLE_LEADER: MemberRole
MEMBER_ROLE_FOLLOWER: MemberRole
MEMBER_ROLE_CANDIDATE: MemberRole
DECISION_KIND_UNSPECIFIED: DecisionKind
DECISION_KIND_SPECULATION: DecisionKind
DECISION_KIND_TASK_TIMEOUT: DecisionKind
DECISION_KIND_RETRY_LIMIT: DecisionKind
DECISION_KIND_MEMORY_RETRY: DecisionKind
DECISION_KIND_COALESCE: DecisionKind
DECISION_KIND_SKEW_SPLIT: DecisionKind
DECISION_KIND_BROADCAST: DecisionKind
DECISION_KIND_REBALANCE: DecisionKind
DECISION_KIND_SPLIT_RUNNING_TASK: DecisionKind
DECISION_KIND_SCALE_UP: DecisionKind
DECISION_KIND_SCALE_DOWN: DecisionKind
DECISION_KIND_INPUT_SPLITS: DecisionKind
DECISION_KIND_KAFKA_SCALE_UP: DecisionKind
DECISION_KIND_KAFKA_SCALE_DOWN: DecisionKind
DECISION_KIND_KAFKA_REBALANCE: DecisionKind
DECISION_KIND_COMPACTION: DecisionKind

class ListWorkersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerInfo(_message.Message):
    __slots__ = ("worker_id", "address", "slots", "free_slots", "state", "last_heartbeat_ms", "cpu_percent", "memory_used_bytes", "running_tasks", "http_address", "load")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    FREE_SLOTS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_MS_FIELD_NUMBER: _ClassVar[int]
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    RUNNING_TASKS_FIELD_NUMBER: _ClassVar[int]
    HTTP_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    address: str
    slots: int
    free_slots: int
    state: WorkerState
    last_heartbeat_ms: int
    cpu_percent: float
    memory_used_bytes: int
    running_tasks: int
    http_address: str
    load: WorkerLoad
    def __init__(self, worker_id: _Optional[str] = ..., address: _Optional[str] = ..., slots: _Optional[int] = ..., free_slots: _Optional[int] = ..., state: _Optional[_Union[WorkerState, str]] = ..., last_heartbeat_ms: _Optional[int] = ..., cpu_percent: _Optional[float] = ..., memory_used_bytes: _Optional[int] = ..., running_tasks: _Optional[int] = ..., http_address: _Optional[str] = ..., load: _Optional[_Union[WorkerLoad, _Mapping]] = ...) -> None: ...

class WorkerLoad(_message.Message):
    __slots__ = ("cpu_percent", "cpu_cores", "memory_used_bytes", "memory_limit_bytes", "free_slots", "running", "queued", "spilled_bytes", "at_ms", "hot")
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    CPU_CORES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_LIMIT_BYTES_FIELD_NUMBER: _ClassVar[int]
    FREE_SLOTS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    SPILLED_BYTES_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    HOT_FIELD_NUMBER: _ClassVar[int]
    cpu_percent: float
    cpu_cores: int
    memory_used_bytes: int
    memory_limit_bytes: int
    free_slots: int
    running: int
    queued: int
    spilled_bytes: int
    at_ms: int
    hot: str
    def __init__(self, cpu_percent: _Optional[float] = ..., cpu_cores: _Optional[int] = ..., memory_used_bytes: _Optional[int] = ..., memory_limit_bytes: _Optional[int] = ..., free_slots: _Optional[int] = ..., running: _Optional[int] = ..., queued: _Optional[int] = ..., spilled_bytes: _Optional[int] = ..., at_ms: _Optional[int] = ..., hot: _Optional[str] = ...) -> None: ...

class ListWorkersResponse(_message.Message):
    __slots__ = ("workers",)
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerInfo]
    def __init__(self, workers: _Optional[_Iterable[_Union[WorkerInfo, _Mapping]]] = ...) -> None: ...

class CoordinatorMember(_message.Message):
    __slots__ = ("id", "address", "role", "term", "commit", "applied", "last_index", "snapshot_index", "leader_id", "error", "voters")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    LAST_INDEX_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_INDEX_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    VOTERS_FIELD_NUMBER: _ClassVar[int]
    id: int
    address: str
    role: MemberRole
    term: int
    commit: int
    applied: int
    last_index: int
    snapshot_index: int
    leader_id: int
    error: str
    voters: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, id: _Optional[int] = ..., address: _Optional[str] = ..., role: _Optional[_Union[MemberRole, str]] = ..., term: _Optional[int] = ..., commit: _Optional[int] = ..., applied: _Optional[int] = ..., last_index: _Optional[int] = ..., snapshot_index: _Optional[int] = ..., leader_id: _Optional[int] = ..., error: _Optional[str] = ..., voters: _Optional[_Iterable[int]] = ...) -> None: ...

class ClusterStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClusterStatusResponse(_message.Message):
    __slots__ = ("leader_id", "leader_address", "members")
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    LEADER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    leader_id: int
    leader_address: str
    members: _containers.RepeatedCompositeFieldContainer[CoordinatorMember]
    def __init__(self, leader_id: _Optional[int] = ..., leader_address: _Optional[str] = ..., members: _Optional[_Iterable[_Union[CoordinatorMember, _Mapping]]] = ...) -> None: ...

class MemberStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AddCoordinatorRequest(_message.Message):
    __slots__ = ("id", "address")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    id: int
    address: str
    def __init__(self, id: _Optional[int] = ..., address: _Optional[str] = ...) -> None: ...

class RemoveCoordinatorRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    def __init__(self, id: _Optional[int] = ...) -> None: ...

class TransferLeaderRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    def __init__(self, id: _Optional[int] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("id", "at_ms", "job_id", "kind", "what", "why", "inputs", "effect")
    class InputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    WHAT_FIELD_NUMBER: _ClassVar[int]
    WHY_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    EFFECT_FIELD_NUMBER: _ClassVar[int]
    id: int
    at_ms: int
    job_id: str
    kind: DecisionKind
    what: str
    why: str
    inputs: _containers.ScalarMap[str, str]
    effect: str
    def __init__(self, id: _Optional[int] = ..., at_ms: _Optional[int] = ..., job_id: _Optional[str] = ..., kind: _Optional[_Union[DecisionKind, str]] = ..., what: _Optional[str] = ..., why: _Optional[str] = ..., inputs: _Optional[_Mapping[str, str]] = ..., effect: _Optional[str] = ...) -> None: ...

class ListDecisionsRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListDecisionsResponse(_message.Message):
    __slots__ = ("decisions",)
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    decisions: _containers.RepeatedCompositeFieldContainer[Decision]
    def __init__(self, decisions: _Optional[_Iterable[_Union[Decision, _Mapping]]] = ...) -> None: ...

class DrainWorkerRequest(_message.Message):
    __slots__ = ("worker_id",)
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    def __init__(self, worker_id: _Optional[str] = ...) -> None: ...

class DrainWorkerResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CompactTableRequest(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: str
    def __init__(self, path: _Optional[str] = ...) -> None: ...

class CompactTableResponse(_message.Message):
    __slots__ = ("job_ids",)
    JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    job_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, job_ids: _Optional[_Iterable[str]] = ...) -> None: ...
