from autopipe_client.v1 import errors_pb2 as _errors_pb2
from autopipe_client.v1 import admin_pb2 as _admin_pb2
from autopipe_client.v1 import spec_pb2 as _spec_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobView(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_VIEW_UNSPECIFIED: _ClassVar[JobView]
    JOB_VIEW_BASIC: _ClassVar[JobView]
    JOB_VIEW_FULL: _ClassVar[JobView]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    QUEUED: _ClassVar[JobState]
    RUNNING: _ClassVar[JobState]
    COMMITTING: _ClassVar[JobState]
    SUCCEEDED: _ClassVar[JobState]
    FAILED: _ClassVar[JobState]
    CANCELLED: _ClassVar[JobState]

class StageKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STAGE_KIND_UNSPECIFIED: _ClassVar[StageKind]
    STAGE_KIND_MAP: _ClassVar[StageKind]
    STAGE_KIND_SINK: _ClassVar[StageKind]
JOB_VIEW_UNSPECIFIED: JobView
JOB_VIEW_BASIC: JobView
JOB_VIEW_FULL: JobView
JOB_STATE_UNSPECIFIED: JobState
QUEUED: JobState
RUNNING: JobState
COMMITTING: JobState
SUCCEEDED: JobState
FAILED: JobState
CANCELLED: JobState
STAGE_KIND_UNSPECIFIED: StageKind
STAGE_KIND_MAP: StageKind
STAGE_KIND_SINK: StageKind

class SubmitJobRequest(_message.Message):
    __slots__ = ("spec_json", "pipeline", "spec_toml", "spec_origin", "request_id")
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    SPEC_TOML_FIELD_NUMBER: _ClassVar[int]
    SPEC_ORIGIN_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    spec_json: str
    pipeline: _spec_pb2.PipelineSpec
    spec_toml: str
    spec_origin: str
    request_id: str
    def __init__(self, spec_json: _Optional[str] = ..., pipeline: _Optional[_Union[_spec_pb2.PipelineSpec, _Mapping]] = ..., spec_toml: _Optional[str] = ..., spec_origin: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class SubmitJobResponse(_message.Message):
    __slots__ = ("job_id", "created")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    created: bool
    def __init__(self, job_id: _Optional[str] = ..., created: bool = ...) -> None: ...

class JobId(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id", "keepalive_seconds")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KEEPALIVE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    keepalive_seconds: int
    def __init__(self, job_id: _Optional[str] = ..., keepalive_seconds: _Optional[int] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "states", "name", "view")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    states: _containers.RepeatedScalarFieldContainer[JobState]
    name: str
    view: JobView
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., states: _Optional[_Iterable[_Union[JobState, str]]] = ..., name: _Optional[str] = ..., view: _Optional[_Union[JobView, str]] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobStatus]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobStatus, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class StageStatus(_message.Message):
    __slots__ = ("stage_id", "kind", "tasks_total", "tasks_done", "tasks_running", "rows_out", "bytes_out", "input_stages", "plan", "started_at_ms", "finished_at_ms", "task_ms_max", "tasks_planned", "replanned_by", "rows_in", "bytes_in", "task_ms_min", "task_ms_median", "task_reads")
    STAGE_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TASKS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    TASKS_DONE_FIELD_NUMBER: _ClassVar[int]
    TASKS_RUNNING_FIELD_NUMBER: _ClassVar[int]
    ROWS_OUT_FIELD_NUMBER: _ClassVar[int]
    BYTES_OUT_FIELD_NUMBER: _ClassVar[int]
    INPUT_STAGES_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    TASK_MS_MAX_FIELD_NUMBER: _ClassVar[int]
    TASKS_PLANNED_FIELD_NUMBER: _ClassVar[int]
    REPLANNED_BY_FIELD_NUMBER: _ClassVar[int]
    ROWS_IN_FIELD_NUMBER: _ClassVar[int]
    BYTES_IN_FIELD_NUMBER: _ClassVar[int]
    TASK_MS_MIN_FIELD_NUMBER: _ClassVar[int]
    TASK_MS_MEDIAN_FIELD_NUMBER: _ClassVar[int]
    TASK_READS_FIELD_NUMBER: _ClassVar[int]
    stage_id: int
    kind: StageKind
    tasks_total: int
    tasks_done: int
    tasks_running: int
    rows_out: int
    bytes_out: int
    input_stages: _containers.RepeatedScalarFieldContainer[int]
    plan: str
    started_at_ms: int
    finished_at_ms: int
    task_ms_max: int
    tasks_planned: int
    replanned_by: _containers.RepeatedScalarFieldContainer[int]
    rows_in: int
    bytes_in: int
    task_ms_min: int
    task_ms_median: int
    task_reads: _containers.RepeatedCompositeFieldContainer[TaskReadsStatus]
    def __init__(self, stage_id: _Optional[int] = ..., kind: _Optional[_Union[StageKind, str]] = ..., tasks_total: _Optional[int] = ..., tasks_done: _Optional[int] = ..., tasks_running: _Optional[int] = ..., rows_out: _Optional[int] = ..., bytes_out: _Optional[int] = ..., input_stages: _Optional[_Iterable[int]] = ..., plan: _Optional[str] = ..., started_at_ms: _Optional[int] = ..., finished_at_ms: _Optional[int] = ..., task_ms_max: _Optional[int] = ..., tasks_planned: _Optional[int] = ..., replanned_by: _Optional[_Iterable[int]] = ..., rows_in: _Optional[int] = ..., bytes_in: _Optional[int] = ..., task_ms_min: _Optional[int] = ..., task_ms_median: _Optional[int] = ..., task_reads: _Optional[_Iterable[_Union[TaskReadsStatus, _Mapping]]] = ...) -> None: ...

class TaskReadsStatus(_message.Message):
    __slots__ = ("start", "end", "map_ranges", "via")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    MAP_RANGES_FIELD_NUMBER: _ClassVar[int]
    VIA_FIELD_NUMBER: _ClassVar[int]
    start: int
    end: int
    map_ranges: _containers.RepeatedCompositeFieldContainer[MapTaskRange]
    via: _containers.RepeatedCompositeFieldContainer[ReadVia]
    def __init__(self, start: _Optional[int] = ..., end: _Optional[int] = ..., map_ranges: _Optional[_Iterable[_Union[MapTaskRange, _Mapping]]] = ..., via: _Optional[_Iterable[_Union[ReadVia, _Mapping]]] = ...) -> None: ...

class ReadVia(_message.Message):
    __slots__ = ("input", "stage")
    INPUT_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    input: int
    stage: int
    def __init__(self, input: _Optional[int] = ..., stage: _Optional[int] = ...) -> None: ...

class MapTaskRange(_message.Message):
    __slots__ = ("stage", "to")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    stage: int
    to: int
    def __init__(self, stage: _Optional[int] = ..., to: _Optional[int] = ..., **kwargs) -> None: ...

class JobStatus(_message.Message):
    __slots__ = ("job_id", "name", "state", "stages", "rows_in", "rows_out", "submitted_at_ms", "finished_at_ms", "output_path", "error", "tasks_total", "tasks_done", "task_attempts", "files_out", "bytes_in", "bytes_out", "bad_records", "dead_letter_path", "waiting_reason", "waiting_since_ms", "workers", "stream", "request_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    ROWS_IN_FIELD_NUMBER: _ClassVar[int]
    ROWS_OUT_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PATH_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TASKS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    TASKS_DONE_FIELD_NUMBER: _ClassVar[int]
    TASK_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    FILES_OUT_FIELD_NUMBER: _ClassVar[int]
    BYTES_IN_FIELD_NUMBER: _ClassVar[int]
    BYTES_OUT_FIELD_NUMBER: _ClassVar[int]
    BAD_RECORDS_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTER_PATH_FIELD_NUMBER: _ClassVar[int]
    WAITING_REASON_FIELD_NUMBER: _ClassVar[int]
    WAITING_SINCE_MS_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    name: str
    state: JobState
    stages: _containers.RepeatedCompositeFieldContainer[StageStatus]
    rows_in: int
    rows_out: int
    submitted_at_ms: int
    finished_at_ms: int
    output_path: str
    error: _errors_pb2.ErrorDetail
    tasks_total: int
    tasks_done: int
    task_attempts: int
    files_out: int
    bytes_in: int
    bytes_out: int
    bad_records: int
    dead_letter_path: str
    waiting_reason: str
    waiting_since_ms: int
    workers: _containers.RepeatedCompositeFieldContainer[JobWorker]
    stream: StreamStatus
    request_id: str
    def __init__(self, job_id: _Optional[str] = ..., name: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., stages: _Optional[_Iterable[_Union[StageStatus, _Mapping]]] = ..., rows_in: _Optional[int] = ..., rows_out: _Optional[int] = ..., submitted_at_ms: _Optional[int] = ..., finished_at_ms: _Optional[int] = ..., output_path: _Optional[str] = ..., error: _Optional[_Union[_errors_pb2.ErrorDetail, _Mapping]] = ..., tasks_total: _Optional[int] = ..., tasks_done: _Optional[int] = ..., task_attempts: _Optional[int] = ..., files_out: _Optional[int] = ..., bytes_in: _Optional[int] = ..., bytes_out: _Optional[int] = ..., bad_records: _Optional[int] = ..., dead_letter_path: _Optional[str] = ..., waiting_reason: _Optional[str] = ..., waiting_since_ms: _Optional[int] = ..., workers: _Optional[_Iterable[_Union[JobWorker, _Mapping]]] = ..., stream: _Optional[_Union[StreamStatus, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class StreamStatus(_message.Message):
    __slots__ = ("topic", "partitions", "batches", "pending_batches", "records", "rows_out", "bad_records", "lag", "tasks", "input_records_per_s", "watermark_ms", "windows_emitted_until_ms", "duplicates", "late_records")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    PENDING_BATCHES_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    ROWS_OUT_FIELD_NUMBER: _ClassVar[int]
    BAD_RECORDS_FIELD_NUMBER: _ClassVar[int]
    LAG_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    INPUT_RECORDS_PER_S_FIELD_NUMBER: _ClassVar[int]
    WATERMARK_MS_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_EMITTED_UNTIL_MS_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    LATE_RECORDS_FIELD_NUMBER: _ClassVar[int]
    topic: str
    partitions: _containers.RepeatedCompositeFieldContainer[KafkaPartitionStatus]
    batches: int
    pending_batches: int
    records: int
    rows_out: int
    bad_records: int
    lag: int
    tasks: _containers.RepeatedCompositeFieldContainer[ConsumerTaskStatus]
    input_records_per_s: float
    watermark_ms: int
    windows_emitted_until_ms: int
    duplicates: int
    late_records: int
    def __init__(self, topic: _Optional[str] = ..., partitions: _Optional[_Iterable[_Union[KafkaPartitionStatus, _Mapping]]] = ..., batches: _Optional[int] = ..., pending_batches: _Optional[int] = ..., records: _Optional[int] = ..., rows_out: _Optional[int] = ..., bad_records: _Optional[int] = ..., lag: _Optional[int] = ..., tasks: _Optional[_Iterable[_Union[ConsumerTaskStatus, _Mapping]]] = ..., input_records_per_s: _Optional[float] = ..., watermark_ms: _Optional[int] = ..., windows_emitted_until_ms: _Optional[int] = ..., duplicates: _Optional[int] = ..., late_records: _Optional[int] = ...) -> None: ...

class ConsumerTaskStatus(_message.Message):
    __slots__ = ("task", "partitions", "batches", "records", "records_per_s")
    TASK_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    RECORDS_PER_S_FIELD_NUMBER: _ClassVar[int]
    task: int
    partitions: _containers.RepeatedScalarFieldContainer[int]
    batches: int
    records: int
    records_per_s: float
    def __init__(self, task: _Optional[int] = ..., partitions: _Optional[_Iterable[int]] = ..., batches: _Optional[int] = ..., records: _Optional[int] = ..., records_per_s: _Optional[float] = ...) -> None: ...

class KafkaPartitionStatus(_message.Message):
    __slots__ = ("partition", "task", "offset", "high_watermark", "lag", "records", "input_records_per_s")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    HIGH_WATERMARK_FIELD_NUMBER: _ClassVar[int]
    LAG_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    INPUT_RECORDS_PER_S_FIELD_NUMBER: _ClassVar[int]
    partition: int
    task: int
    offset: int
    high_watermark: int
    lag: int
    records: int
    input_records_per_s: float
    def __init__(self, partition: _Optional[int] = ..., task: _Optional[int] = ..., offset: _Optional[int] = ..., high_watermark: _Optional[int] = ..., lag: _Optional[int] = ..., records: _Optional[int] = ..., input_records_per_s: _Optional[float] = ...) -> None: ...

class JobWorker(_message.Message):
    __slots__ = ("worker_id", "state", "tasks_done", "tasks_running", "load")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TASKS_DONE_FIELD_NUMBER: _ClassVar[int]
    TASKS_RUNNING_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    state: _admin_pb2.WorkerState
    tasks_done: int
    tasks_running: int
    load: _admin_pb2.WorkerLoad
    def __init__(self, worker_id: _Optional[str] = ..., state: _Optional[_Union[_admin_pb2.WorkerState, str]] = ..., tasks_done: _Optional[int] = ..., tasks_running: _Optional[int] = ..., load: _Optional[_Union[_admin_pb2.WorkerLoad, _Mapping]] = ...) -> None: ...
