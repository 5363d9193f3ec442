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

class ExportFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPORT_FORMAT_UNSPECIFIED: _ClassVar[ExportFormat]
    EXPORT_FORMAT_FILES: _ClassVar[ExportFormat]
    EXPORT_FORMAT_TAR: _ClassVar[ExportFormat]
EXPORT_FORMAT_UNSPECIFIED: ExportFormat
EXPORT_FORMAT_FILES: ExportFormat
EXPORT_FORMAT_TAR: ExportFormat

class BaseModel(_message.Message):
    __slots__ = ("name", "context_window", "prompt_tokens", "completion_tokens", "rows_per_epoch", "max_lora_rank")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_WINDOW_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ROWS_PER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    MAX_LORA_RANK_FIELD_NUMBER: _ClassVar[int]
    name: str
    context_window: int
    prompt_tokens: int
    completion_tokens: int
    rows_per_epoch: int
    max_lora_rank: int
    def __init__(self, name: _Optional[str] = ..., context_window: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., rows_per_epoch: _Optional[int] = ..., max_lora_rank: _Optional[int] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("name", "base_model", "job_id", "version", "created_on", "trained_tokens", "training_loss", "validation_loss", "artifacts", "evaluations", "imported_from", "file_sha256", "owner_account", "shared")
    class FileSha256Entry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_ON_FIELD_NUMBER: _ClassVar[int]
    TRAINED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TRAINING_LOSS_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_LOSS_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    IMPORTED_FROM_FIELD_NUMBER: _ClassVar[int]
    FILE_SHA256_FIELD_NUMBER: _ClassVar[int]
    OWNER_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    SHARED_FIELD_NUMBER: _ClassVar[int]
    name: str
    base_model: str
    job_id: str
    version: int
    created_on: _timestamp_pb2.Timestamp
    trained_tokens: int
    training_loss: float
    validation_loss: float
    artifacts: _containers.RepeatedScalarFieldContainer[str]
    evaluations: _containers.RepeatedCompositeFieldContainer[_evaluations_pb2.Evaluation]
    imported_from: str
    file_sha256: _containers.ScalarMap[str, str]
    owner_account: str
    shared: bool
    def __init__(self, name: _Optional[str] = ..., base_model: _Optional[str] = ..., job_id: _Optional[str] = ..., version: _Optional[int] = ..., created_on: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., trained_tokens: _Optional[int] = ..., training_loss: _Optional[float] = ..., validation_loss: _Optional[float] = ..., artifacts: _Optional[_Iterable[str]] = ..., evaluations: _Optional[_Iterable[_Union[_evaluations_pb2.Evaluation, _Mapping]]] = ..., imported_from: _Optional[str] = ..., file_sha256: _Optional[_Mapping[str, str]] = ..., owner_account: _Optional[str] = ..., shared: _Optional[bool] = ...) -> None: ...

class ListBaseModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListBaseModelsResponse(_message.Message):
    __slots__ = ("base_models",)
    BASE_MODELS_FIELD_NUMBER: _ClassVar[int]
    base_models: _containers.RepeatedCompositeFieldContainer[BaseModel]
    def __init__(self, base_models: _Optional[_Iterable[_Union[BaseModel, _Mapping]]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "shared")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SHARED_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    shared: bool
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., shared: _Optional[bool] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "next_page_token")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    next_page_token: str
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteModelResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetModelArtifactRequest(_message.Message):
    __slots__ = ("name", "artifact")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    name: str
    artifact: str
    def __init__(self, name: _Optional[str] = ..., artifact: _Optional[str] = ...) -> None: ...

class ArtifactChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class ImportModelRequest(_message.Message):
    __slots__ = ("header", "file_chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    FILE_CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: ImportModelHeader
    file_chunk: AdapterFileChunk
    def __init__(self, header: _Optional[_Union[ImportModelHeader, _Mapping]] = ..., file_chunk: _Optional[_Union[AdapterFileChunk, _Mapping]] = ...) -> None: ...

class ImportModelHeader(_message.Message):
    __slots__ = ("name", "base_model", "source_uri", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    SOURCE_URI_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    base_model: str
    source_uri: str
    request_id: str
    def __init__(self, name: _Optional[str] = ..., base_model: _Optional[str] = ..., source_uri: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class AdapterFileChunk(_message.Message):
    __slots__ = ("file", "data")
    FILE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    file: str
    data: bytes
    def __init__(self, file: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class ExportModelRequest(_message.Message):
    __slots__ = ("name", "format")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    name: str
    format: ExportFormat
    def __init__(self, name: _Optional[str] = ..., format: _Optional[_Union[ExportFormat, str]] = ...) -> None: ...

class ExportModelResponse(_message.Message):
    __slots__ = ("file", "data", "total_bytes")
    FILE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    file: str
    data: bytes
    total_bytes: int
    def __init__(self, file: _Optional[str] = ..., data: _Optional[bytes] = ..., total_bytes: _Optional[int] = ...) -> None: ...
