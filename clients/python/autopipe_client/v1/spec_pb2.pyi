from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PipelineSpec(_message.Message):
    __slots__ = ("job", "sources", "transform", "sink")
    JOB_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    TRANSFORM_FIELD_NUMBER: _ClassVar[int]
    SINK_FIELD_NUMBER: _ClassVar[int]
    job: JobSpec
    sources: _containers.RepeatedCompositeFieldContainer[SourceSpec]
    transform: TransformSpec
    sink: SinkSpec
    def __init__(self, job: _Optional[_Union[JobSpec, _Mapping]] = ..., sources: _Optional[_Iterable[_Union[SourceSpec, _Mapping]]] = ..., transform: _Optional[_Union[TransformSpec, _Mapping]] = ..., sink: _Optional[_Union[SinkSpec, _Mapping]] = ...) -> None: ...

class JobSpec(_message.Message):
    __slots__ = ("name", "mode", "params")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    name: str
    mode: str
    params: JobParams
    def __init__(self, name: _Optional[str] = ..., mode: _Optional[str] = ..., params: _Optional[_Union[JobParams, _Mapping]] = ...) -> None: ...

class JobParams(_message.Message):
    __slots__ = ("target_partition_bytes", "shuffle_partitions", "min_partition_bytes", "adaptive_splits", "max_task_attempts", "broadcast_join_max_bytes", "speculation", "speculation_multiplier", "speculation_quantile", "speculation_min_runtime_ms", "task_timeout_ms", "first_task_timeout_ms", "adaptive_memory", "stall_alert_ms", "max_stall_ms", "adaptive_retries", "max_bad_record_ratio", "runtime_broadcast", "coalesce", "skew_join", "skew_aggregation", "skew_factor", "skew_threshold_bytes", "load_aware_placement", "dynamic_rebalance", "rebalance_lag_factor", "rebalance_min_runtime_ms", "batch_interval", "max_batch_rows", "event_time", "window_size", "window_slide", "watermark_delay", "watermark_idle_timeout", "dedup_key", "dedup_window", "kafka_autoscale", "catch_up_target", "target_utilization", "scale_down_delay", "compaction", "compaction_min_files", "compaction_target_file_bytes")
    TARGET_PARTITION_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHUFFLE_PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    MIN_PARTITION_BYTES_FIELD_NUMBER: _ClassVar[int]
    ADAPTIVE_SPLITS_FIELD_NUMBER: _ClassVar[int]
    MAX_TASK_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    BROADCAST_JOIN_MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    SPECULATION_FIELD_NUMBER: _ClassVar[int]
    SPECULATION_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    SPECULATION_QUANTILE_FIELD_NUMBER: _ClassVar[int]
    SPECULATION_MIN_RUNTIME_MS_FIELD_NUMBER: _ClassVar[int]
    TASK_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    FIRST_TASK_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    ADAPTIVE_MEMORY_FIELD_NUMBER: _ClassVar[int]
    STALL_ALERT_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_STALL_MS_FIELD_NUMBER: _ClassVar[int]
    ADAPTIVE_RETRIES_FIELD_NUMBER: _ClassVar[int]
    MAX_BAD_RECORD_RATIO_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_BROADCAST_FIELD_NUMBER: _ClassVar[int]
    COALESCE_FIELD_NUMBER: _ClassVar[int]
    SKEW_JOIN_FIELD_NUMBER: _ClassVar[int]
    SKEW_AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    SKEW_FACTOR_FIELD_NUMBER: _ClassVar[int]
    SKEW_THRESHOLD_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOAD_AWARE_PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    DYNAMIC_REBALANCE_FIELD_NUMBER: _ClassVar[int]
    REBALANCE_LAG_FACTOR_FIELD_NUMBER: _ClassVar[int]
    REBALANCE_MIN_RUNTIME_MS_FIELD_NUMBER: _ClassVar[int]
    BATCH_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_ROWS_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SIZE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SLIDE_FIELD_NUMBER: _ClassVar[int]
    WATERMARK_DELAY_FIELD_NUMBER: _ClassVar[int]
    WATERMARK_IDLE_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    DEDUP_KEY_FIELD_NUMBER: _ClassVar[int]
    DEDUP_WINDOW_FIELD_NUMBER: _ClassVar[int]
    KAFKA_AUTOSCALE_FIELD_NUMBER: _ClassVar[int]
    CATCH_UP_TARGET_FIELD_NUMBER: _ClassVar[int]
    TARGET_UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    SCALE_DOWN_DELAY_FIELD_NUMBER: _ClassVar[int]
    COMPACTION_FIELD_NUMBER: _ClassVar[int]
    COMPACTION_MIN_FILES_FIELD_NUMBER: _ClassVar[int]
    COMPACTION_TARGET_FILE_BYTES_FIELD_NUMBER: _ClassVar[int]
    target_partition_bytes: str
    shuffle_partitions: int
    min_partition_bytes: str
    adaptive_splits: bool
    max_task_attempts: int
    broadcast_join_max_bytes: str
    speculation: bool
    speculation_multiplier: float
    speculation_quantile: float
    speculation_min_runtime_ms: int
    task_timeout_ms: int
    first_task_timeout_ms: int
    adaptive_memory: bool
    stall_alert_ms: int
    max_stall_ms: int
    adaptive_retries: bool
    max_bad_record_ratio: float
    runtime_broadcast: bool
    coalesce: bool
    skew_join: bool
    skew_aggregation: bool
    skew_factor: float
    skew_threshold_bytes: str
    load_aware_placement: bool
    dynamic_rebalance: bool
    rebalance_lag_factor: float
    rebalance_min_runtime_ms: int
    batch_interval: str
    max_batch_rows: int
    event_time: str
    window_size: str
    window_slide: str
    watermark_delay: str
    watermark_idle_timeout: str
    dedup_key: str
    dedup_window: str
    kafka_autoscale: bool
    catch_up_target: str
    target_utilization: float
    scale_down_delay: str
    compaction: bool
    compaction_min_files: int
    compaction_target_file_bytes: str
    def __init__(self, target_partition_bytes: _Optional[str] = ..., shuffle_partitions: _Optional[int] = ..., min_partition_bytes: _Optional[str] = ..., adaptive_splits: bool = ..., max_task_attempts: _Optional[int] = ..., broadcast_join_max_bytes: _Optional[str] = ..., speculation: bool = ..., speculation_multiplier: _Optional[float] = ..., speculation_quantile: _Optional[float] = ..., speculation_min_runtime_ms: _Optional[int] = ..., task_timeout_ms: _Optional[int] = ..., first_task_timeout_ms: _Optional[int] = ..., adaptive_memory: bool = ..., stall_alert_ms: _Optional[int] = ..., max_stall_ms: _Optional[int] = ..., adaptive_retries: bool = ..., max_bad_record_ratio: _Optional[float] = ..., runtime_broadcast: bool = ..., coalesce: bool = ..., skew_join: bool = ..., skew_aggregation: bool = ..., skew_factor: _Optional[float] = ..., skew_threshold_bytes: _Optional[str] = ..., load_aware_placement: bool = ..., dynamic_rebalance: bool = ..., rebalance_lag_factor: _Optional[float] = ..., rebalance_min_runtime_ms: _Optional[int] = ..., batch_interval: _Optional[str] = ..., max_batch_rows: _Optional[int] = ..., event_time: _Optional[str] = ..., window_size: _Optional[str] = ..., window_slide: _Optional[str] = ..., watermark_delay: _Optional[str] = ..., watermark_idle_timeout: _Optional[str] = ..., dedup_key: _Optional[str] = ..., dedup_window: _Optional[str] = ..., kafka_autoscale: bool = ..., catch_up_target: _Optional[str] = ..., target_utilization: _Optional[float] = ..., scale_down_delay: _Optional[str] = ..., compaction: bool = ..., compaction_min_files: _Optional[int] = ..., compaction_target_file_bytes: _Optional[str] = ...) -> None: ...

class SourceSpec(_message.Message):
    __slots__ = ("name", "format", "path", "has_header", "delimiter", "schema", "brokers", "topic", "value_format", "start", "options", "version", "timestamp", "files")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    HAS_HEADER_FIELD_NUMBER: _ClassVar[int]
    DELIMITER_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    BROKERS_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    VALUE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    name: str
    format: str
    path: str
    has_header: bool
    delimiter: str
    schema: str
    brokers: str
    topic: str
    value_format: str
    start: str
    options: _containers.ScalarMap[str, str]
    version: int
    timestamp: str
    files: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., format: _Optional[str] = ..., path: _Optional[str] = ..., has_header: bool = ..., delimiter: _Optional[str] = ..., schema: _Optional[str] = ..., brokers: _Optional[str] = ..., topic: _Optional[str] = ..., value_format: _Optional[str] = ..., start: _Optional[str] = ..., options: _Optional[_Mapping[str, str]] = ..., version: _Optional[int] = ..., timestamp: _Optional[str] = ..., files: _Optional[_Iterable[str]] = ...) -> None: ...

class TransformSpec(_message.Message):
    __slots__ = ("sql",)
    SQL_FIELD_NUMBER: _ClassVar[int]
    sql: str
    def __init__(self, sql: _Optional[str] = ...) -> None: ...

class SinkSpec(_message.Message):
    __slots__ = ("format", "path", "partition_by", "mode", "overwrite_foreign", "dead_letter_path", "brokers", "topic", "key", "options", "delivery_guarantee", "transactional_id_prefix")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    PARTITION_BY_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    OVERWRITE_FOREIGN_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTER_PATH_FIELD_NUMBER: _ClassVar[int]
    BROKERS_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_GUARANTEE_FIELD_NUMBER: _ClassVar[int]
    TRANSACTIONAL_ID_PREFIX_FIELD_NUMBER: _ClassVar[int]
    format: str
    path: str
    partition_by: _containers.RepeatedScalarFieldContainer[str]
    mode: str
    overwrite_foreign: bool
    dead_letter_path: str
    brokers: str
    topic: str
    key: str
    options: _containers.ScalarMap[str, str]
    delivery_guarantee: str
    transactional_id_prefix: str
    def __init__(self, format: _Optional[str] = ..., path: _Optional[str] = ..., partition_by: _Optional[_Iterable[str]] = ..., mode: _Optional[str] = ..., overwrite_foreign: bool = ..., dead_letter_path: _Optional[str] = ..., brokers: _Optional[str] = ..., topic: _Optional[str] = ..., key: _Optional[str] = ..., options: _Optional[_Mapping[str, str]] = ..., delivery_guarantee: _Optional[str] = ..., transactional_id_prefix: _Optional[str] = ...) -> None: ...
