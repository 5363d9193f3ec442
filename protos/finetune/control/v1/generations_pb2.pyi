import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from finetune.control.v1 import evaluations_pb2 as _evaluations_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GenerationStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GENERATION_STATUS_UNSPECIFIED: _ClassVar[GenerationStatus]
    GENERATION_PENDING: _ClassVar[GenerationStatus]
    GENERATION_RUNNING: _ClassVar[GenerationStatus]
    GENERATION_SUCCEEDED: _ClassVar[GenerationStatus]
    GENERATION_FAILED: _ClassVar[GenerationStatus]
    GENERATION_CANCELLED: _ClassVar[GenerationStatus]
GENERATION_STATUS_UNSPECIFIED: GenerationStatus
GENERATION_PENDING: GenerationStatus
GENERATION_RUNNING: GenerationStatus
GENERATION_SUCCEEDED: GenerationStatus
GENERATION_FAILED: GenerationStatus
GENERATION_CANCELLED: GenerationStatus

class Generation(_message.Message):
    __slots__ = ("id", "model", "base_model", "model_version", "query", "into", "generation", "status", "progress", "error", "rows", "rows_done", "rows_failed", "prompt_tokens", "completion_tokens", "created_on", "finished_on", "attempts")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    INTO_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    ROWS_DONE_FIELD_NUMBER: _ClassVar[int]
    ROWS_FAILED_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CREATED_ON_FIELD_NUMBER: _ClassVar[int]
    FINISHED_ON_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    id: str
    model: str
    base_model: str
    model_version: int
    query: str
    into: str
    generation: _evaluations_pb2.GenerationOptions
    status: GenerationStatus
    progress: float
    error: str
    rows: int
    rows_done: int
    rows_failed: int
    prompt_tokens: int
    completion_tokens: int
    created_on: _timestamp_pb2.Timestamp
    finished_on: _timestamp_pb2.Timestamp
    attempts: int
    def __init__(self, id: _Optional[str] = ..., model: _Optional[str] = ..., base_model: _Optional[str] = ..., model_version: _Optional[int] = ..., query: _Optional[str] = ..., into: _Optional[str] = ..., generation: _Optional[_Union[_evaluations_pb2.GenerationOptions, _Mapping]] = ..., status: _Optional[_Union[GenerationStatus, str]] = ..., progress: _Optional[float] = ..., error: _Optional[str] = ..., rows: _Optional[int] = ..., rows_done: _Optional[int] = ..., rows_failed: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., created_on: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_on: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., attempts: _Optional[int] = ...) -> None: ...

class GenerateTextRequest(_message.Message):
    __slots__ = ("model", "query", "into", "generation", "request_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    INTO_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    query: str
    into: str
    generation: _evaluations_pb2.GenerationOptions
    request_id: str
    def __init__(self, model: _Optional[str] = ..., query: _Optional[str] = ..., into: _Optional[str] = ..., generation: _Optional[_Union[_evaluations_pb2.GenerationOptions, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetGenerationRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListGenerationsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListGenerationsResponse(_message.Message):
    __slots__ = ("generations", "next_page_token")
    GENERATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    generations: _containers.RepeatedCompositeFieldContainer[Generation]
    next_page_token: str
    def __init__(self, generations: _Optional[_Iterable[_Union[Generation, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelGenerationRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class WatchGenerationRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...
