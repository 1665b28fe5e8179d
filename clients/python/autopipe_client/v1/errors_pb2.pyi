from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorClass(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_CLASS_UNSPECIFIED: _ClassVar[ErrorClass]
    TRANSIENT: _ClassVar[ErrorClass]
    PERMANENT: _ClassVar[ErrorClass]
    DATA: _ClassVar[ErrorClass]
ERROR_CLASS_UNSPECIFIED: ErrorClass
TRANSIENT: ErrorClass
PERMANENT: ErrorClass
DATA: ErrorClass

class ErrorDetail(_message.Message):
    __slots__ = ("error_class", "message", "key", "fetch_failed", "out_of_memory")
    ERROR_CLASS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    FETCH_FAILED_FIELD_NUMBER: _ClassVar[int]
    OUT_OF_MEMORY_FIELD_NUMBER: _ClassVar[int]
    error_class: ErrorClass
    message: str
    key: str
    fetch_failed: FetchFailed
    out_of_memory: bool
    def __init__(self, error_class: _Optional[_Union[ErrorClass, str]] = ..., message: _Optional[str] = ..., key: _Optional[str] = ..., fetch_failed: _Optional[_Union[FetchFailed, _Mapping]] = ..., out_of_memory: bool = ...) -> None: ...

class FetchFailed(_message.Message):
    __slots__ = ("stage_id", "map_task", "worker_id")
    STAGE_ID_FIELD_NUMBER: _ClassVar[int]
    MAP_TASK_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    stage_id: int
    map_task: int
    worker_id: str
    def __init__(self, stage_id: _Optional[int] = ..., map_task: _Optional[int] = ..., worker_id: _Optional[str] = ...) -> None: ...
