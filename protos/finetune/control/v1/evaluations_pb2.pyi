import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EvaluationTask(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVALUATION_TASK_UNSPECIFIED: _ClassVar[EvaluationTask]
    CLASSIFICATION: _ClassVar[EvaluationTask]
    TEXT_GENERATION: _ClassVar[EvaluationTask]
    QUESTION_ANSWERING: _ClassVar[EvaluationTask]

class EvaluationStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVALUATION_STATUS_UNSPECIFIED: _ClassVar[EvaluationStatus]
    EVALUATION_PENDING: _ClassVar[EvaluationStatus]
    EVALUATION_RUNNING: _ClassVar[EvaluationStatus]
    EVALUATION_SUCCEEDED: _ClassVar[EvaluationStatus]
    EVALUATION_FAILED: _ClassVar[EvaluationStatus]
    EVALUATION_CANCELLED: _ClassVar[EvaluationStatus]
EVALUATION_TASK_UNSPECIFIED: EvaluationTask
CLASSIFICATION: EvaluationTask
TEXT_GENERATION: EvaluationTask
QUESTION_ANSWERING: EvaluationTask
EVALUATION_STATUS_UNSPECIFIED: EvaluationStatus
EVALUATION_PENDING: EvaluationStatus
EVALUATION_RUNNING: EvaluationStatus
EVALUATION_SUCCEEDED: EvaluationStatus
EVALUATION_FAILED: EvaluationStatus
EVALUATION_CANCELLED: EvaluationStatus

class GenerationOptions(_message.Message):
    __slots__ = ("max_tokens", "temperature", "top_p", "stop", "seed", "concurrency", "free_form")
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    FREE_FORM_FIELD_NUMBER: _ClassVar[int]
    max_tokens: int
    temperature: float
    top_p: float
    stop: _containers.RepeatedScalarFieldContainer[str]
    seed: int
    concurrency: int
    free_form: bool
    def __init__(self, max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., stop: _Optional[_Iterable[str]] = ..., seed: _Optional[int] = ..., concurrency: _Optional[int] = ..., free_form: _Optional[bool] = ...) -> None: ...

class LabelMetrics(_message.Message):
    __slots__ = ("label", "precision", "recall", "f1", "support")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    RECALL_FIELD_NUMBER: _ClassVar[int]
    F1_FIELD_NUMBER: _ClassVar[int]
    SUPPORT_FIELD_NUMBER: _ClassVar[int]
    label: str
    precision: float
    recall: float
    f1: float
    support: int
    def __init__(self, label: _Optional[str] = ..., precision: _Optional[float] = ..., recall: _Optional[float] = ..., f1: _Optional[float] = ..., support: _Optional[int] = ...) -> None: ...

class Evaluation(_message.Message):
    __slots__ = ("id", "model", "base_model", "model_version", "task", "query", "generation", "status", "progress", "error", "rows", "rows_done", "metrics", "labels", "primary_metric", "created_on", "finished_on", "job_id", "role", "prompt_tokens", "completion_tokens")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    ROWS_DONE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_METRIC_FIELD_NUMBER: _ClassVar[int]
    CREATED_ON_FIELD_NUMBER: _ClassVar[int]
    FINISHED_ON_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    id: str
    model: str
    base_model: str
    model_version: int
    task: EvaluationTask
    query: str
    generation: GenerationOptions
    status: EvaluationStatus
    progress: float
    error: str
    rows: int
    rows_done: int
    metrics: _containers.ScalarMap[str, float]
    labels: _containers.RepeatedCompositeFieldContainer[LabelMetrics]
    primary_metric: str
    created_on: _timestamp_pb2.Timestamp
    finished_on: _timestamp_pb2.Timestamp
    job_id: str
    role: str
    prompt_tokens: int
    completion_tokens: int
    def __init__(self, id: _Optional[str] = ..., model: _Optional[str] = ..., base_model: _Optional[str] = ..., model_version: _Optional[int] = ..., task: _Optional[_Union[EvaluationTask, str]] = ..., query: _Optional[str] = ..., generation: _Optional[_Union[GenerationOptions, _Mapping]] = ..., status: _Optional[_Union[EvaluationStatus, str]] = ..., progress: _Optional[float] = ..., error: _Optional[str] = ..., rows: _Optional[int] = ..., rows_done: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., labels: _Optional[_Iterable[_Union[LabelMetrics, _Mapping]]] = ..., primary_metric: _Optional[str] = ..., created_on: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_on: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., job_id: _Optional[str] = ..., role: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ...) -> None: ...

class EvaluateModelRequest(_message.Message):
    __slots__ = ("model", "query", "task", "generation", "request_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    query: str
    task: EvaluationTask
    generation: GenerationOptions
    request_id: str
    def __init__(self, model: _Optional[str] = ..., query: _Optional[str] = ..., task: _Optional[_Union[EvaluationTask, str]] = ..., generation: _Optional[_Union[GenerationOptions, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetEvaluationRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListEvaluationsRequest(_message.Message):
    __slots__ = ("model", "page_size", "page_token")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    model: str
    page_size: int
    page_token: str
    def __init__(self, model: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListEvaluationsResponse(_message.Message):
    __slots__ = ("evaluations", "next_page_token")
    EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    evaluations: _containers.RepeatedCompositeFieldContainer[Evaluation]
    next_page_token: str
    def __init__(self, evaluations: _Optional[_Iterable[_Union[Evaluation, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelEvaluationRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class WatchEvaluationRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetEvaluationResultsRequest(_message.Message):
    __slots__ = ("id", "file")
    ID_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    id: str
    file: str
    def __init__(self, id: _Optional[str] = ..., file: _Optional[str] = ...) -> None: ...

class EvaluationChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class JobEvaluationOptions(_message.Message):
    __slots__ = ("query", "task", "generation", "min_improvement", "has_min_improvement")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    MIN_IMPROVEMENT_FIELD_NUMBER: _ClassVar[int]
    HAS_MIN_IMPROVEMENT_FIELD_NUMBER: _ClassVar[int]
    query: str
    task: EvaluationTask
    generation: GenerationOptions
    min_improvement: float
    has_min_improvement: bool
    def __init__(self, query: _Optional[str] = ..., task: _Optional[_Union[EvaluationTask, str]] = ..., generation: _Optional[_Union[GenerationOptions, _Mapping]] = ..., min_improvement: _Optional[float] = ..., has_min_improvement: _Optional[bool] = ...) -> None: ...
