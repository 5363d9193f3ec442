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

class JobStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATUS_UNSPECIFIED: _ClassVar[JobStatus]
    PENDING: _ClassVar[JobStatus]
    IN_PROGRESS: _ClassVar[JobStatus]
    SUCCESS: _ClassVar[JobStatus]
    ERROR: _ClassVar[JobStatus]
    CANCELLED: _ClassVar[JobStatus]

class TaskType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_TYPE_UNSPECIFIED: _ClassVar[TaskType]
    INSTRUCTION: _ClassVar[TaskType]
    CHAT: _ClassVar[TaskType]
    CONTINUED_PRETRAINING: _ClassVar[TaskType]

class ValidationSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VALIDATION_SOURCE_UNSPECIFIED: _ClassVar[ValidationSource]
    VALIDATION_QUERY: _ClassVar[ValidationSource]
    HOLDOUT: _ClassVar[ValidationSource]
    NO_VALIDATION: _ClassVar[ValidationSource]

class EventLevel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_LEVEL_UNSPECIFIED: _ClassVar[EventLevel]
    EVENT_INFO: _ClassVar[EventLevel]
    EVENT_WARNING: _ClassVar[EventLevel]
    EVENT_ERROR: _ClassVar[EventLevel]
JOB_STATUS_UNSPECIFIED: JobStatus
PENDING: JobStatus
IN_PROGRESS: JobStatus
SUCCESS: JobStatus
ERROR: JobStatus
CANCELLED: JobStatus
TASK_TYPE_UNSPECIFIED: TaskType
INSTRUCTION: TaskType
CHAT: TaskType
CONTINUED_PRETRAINING: TaskType
VALIDATION_SOURCE_UNSPECIFIED: ValidationSource
VALIDATION_QUERY: ValidationSource
HOLDOUT: ValidationSource
NO_VALIDATION: ValidationSource
EVENT_LEVEL_UNSPECIFIED: EventLevel
EVENT_INFO: EventLevel
EVENT_WARNING: EventLevel
EVENT_ERROR: EventLevel

class FineTuningOptions(_message.Message):
    __slots__ = ("max_epochs", "learning_rate", "batch_size", "lora_rank", "lora_alpha", "lora_dropout", "target_modules", "seed", "task_type", "from_model", "num_workers", "evaluation", "checkpoint_every_steps", "early_stopping_patience", "neftune_noise_alpha")
    MAX_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LORA_RANK_FIELD_NUMBER: _ClassVar[int]
    LORA_ALPHA_FIELD_NUMBER: _ClassVar[int]
    LORA_DROPOUT_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODULES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    FROM_MODEL_FIELD_NUMBER: _ClassVar[int]
    NUM_WORKERS_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_EVERY_STEPS_FIELD_NUMBER: _ClassVar[int]
    EARLY_STOPPING_PATIENCE_FIELD_NUMBER: _ClassVar[int]
    NEFTUNE_NOISE_ALPHA_FIELD_NUMBER: _ClassVar[int]
    max_epochs: int
    learning_rate: float
    batch_size: int
    lora_rank: int
    lora_alpha: int
    lora_dropout: float
    target_modules: _containers.RepeatedScalarFieldContainer[str]
    seed: int
    task_type: TaskType
    from_model: str
    num_workers: int
    evaluation: _evaluations_pb2.JobEvaluationOptions
    checkpoint_every_steps: int
    early_stopping_patience: int
    neftune_noise_alpha: float
    def __init__(self, max_epochs: _Optional[int] = ..., learning_rate: _Optional[float] = ..., batch_size: _Optional[int] = ..., lora_rank: _Optional[int] = ..., lora_alpha: _Optional[int] = ..., lora_dropout: _Optional[float] = ..., target_modules: _Optional[_Iterable[str]] = ..., seed: _Optional[int] = ..., task_type: _Optional[_Union[TaskType, str]] = ..., from_model: _Optional[str] = ..., num_workers: _Optional[int] = ..., evaluation: _Optional[_Union[_evaluations_pb2.JobEvaluationOptions, _Mapping]] = ..., checkpoint_every_steps: _Optional[int] = ..., early_stopping_patience: _Optional[int] = ..., neftune_noise_alpha: _Optional[float] = ...) -> None: ...

class DataSnapshot(_message.Message):
    __slots__ = ("uri", "rows", "sha256", "prompt_tokens", "completion_tokens", "truncated_rows")
    URI_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_ROWS_FIELD_NUMBER: _ClassVar[int]
    uri: str
    rows: int
    sha256: str
    prompt_tokens: int
    completion_tokens: int
    truncated_rows: int
    def __init__(self, uri: _Optional[str] = ..., rows: _Optional[int] = ..., sha256: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., truncated_rows: _Optional[int] = ...) -> None: ...

class JobError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class TrainingResult(_message.Message):
    __slots__ = ("training_loss", "validation_loss", "has_validation_loss")
    TRAINING_LOSS_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_LOSS_FIELD_NUMBER: _ClassVar[int]
    HAS_VALIDATION_LOSS_FIELD_NUMBER: _ClassVar[int]
    training_loss: float
    validation_loss: float
    has_validation_loss: bool
    def __init__(self, training_loss: _Optional[float] = ..., validation_loss: _Optional[float] = ..., has_validation_loss: _Optional[bool] = ...) -> None: ...

class FineTuningJob(_message.Message):
    __slots__ = ("id", "status", "progress", "error", "base_model", "created_on", "started_on", "finished_on", "model", "training_data", "validation_data", "trained_tokens", "training_result", "options", "training_rows", "validation_rows", "truncated_rows", "epoch", "step", "total_steps", "training_snapshot", "validation_snapshot", "validation_source", "estimated_trained_tokens", "base_evaluation", "tuned_evaluation")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    CREATED_ON_FIELD_NUMBER: _ClassVar[int]
    STARTED_ON_FIELD_NUMBER: _ClassVar[int]
    FINISHED_ON_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TRAINING_DATA_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_DATA_FIELD_NUMBER: _ClassVar[int]
    TRAINED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TRAINING_RESULT_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    TRAINING_ROWS_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_ROWS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_ROWS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    TRAINING_SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_SOURCE_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_TRAINED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    BASE_EVALUATION_FIELD_NUMBER: _ClassVar[int]
    TUNED_EVALUATION_FIELD_NUMBER: _ClassVar[int]
    id: str
    status: JobStatus
    progress: float
    error: JobError
    base_model: str
    created_on: _timestamp_pb2.Timestamp
    started_on: _timestamp_pb2.Timestamp
    finished_on: _timestamp_pb2.Timestamp
    model: str
    training_data: str
    validation_data: str
    trained_tokens: int
    training_result: TrainingResult
    options: FineTuningOptions
    training_rows: int
    validation_rows: int
    truncated_rows: int
    epoch: int
    step: int
    total_steps: int
    training_snapshot: DataSnapshot
    validation_snapshot: DataSnapshot
    validation_source: ValidationSource
    estimated_trained_tokens: int
    base_evaluation: _evaluations_pb2.Evaluation
    tuned_evaluation: _evaluations_pb2.Evaluation
    def __init__(self, id: _Optional[str] = ..., status: _Optional[_Union[JobStatus, str]] = ..., progress: _Optional[float] = ..., error: _Optional[_Union[JobError, _Mapping]] = ..., base_model: _Optional[str] = ..., created_on: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_on: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_on: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., model: _Optional[str] = ..., training_data: _Optional[str] = ..., validation_data: _Optional[str] = ..., trained_tokens: _Optional[int] = ..., training_result: _Optional[_Union[TrainingResult, _Mapping]] = ..., options: _Optional[_Union[FineTuningOptions, _Mapping]] = ..., training_rows: _Optional[int] = ..., validation_rows: _Optional[int] = ..., truncated_rows: _Optional[int] = ..., epoch: _Optional[int] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., training_snapshot: _Optional[_Union[DataSnapshot, _Mapping]] = ..., validation_snapshot: _Optional[_Union[DataSnapshot, _Mapping]] = ..., validation_source: _Optional[_Union[ValidationSource, str]] = ..., estimated_trained_tokens: _Optional[int] = ..., base_evaluation: _Optional[_Union[_evaluations_pb2.Evaluation, _Mapping]] = ..., tuned_evaluation: _Optional[_Union[_evaluations_pb2.Evaluation, _Mapping]] = ...) -> None: ...

class CreateFineTuningJobRequest(_message.Message):
    __slots__ = ("model", "base_model", "training_query", "validation_query", "options", "request_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    TRAINING_QUERY_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_QUERY_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    base_model: str
    training_query: str
    validation_query: str
    options: FineTuningOptions
    request_id: str
    def __init__(self, model: _Optional[str] = ..., base_model: _Optional[str] = ..., training_query: _Optional[str] = ..., validation_query: _Optional[str] = ..., options: _Optional[_Union[FineTuningOptions, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class ListFineTuningJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListFineTuningJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[FineTuningJob]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[FineTuningJob, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetFineTuningJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class CancelFineTuningJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class WatchFineTuningJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class EstimateFineTuningJobRequest(_message.Message):
    __slots__ = ("model", "base_model", "training_query", "validation_query", "options")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    TRAINING_QUERY_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_QUERY_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    model: str
    base_model: str
    training_query: str
    validation_query: str
    options: FineTuningOptions
    def __init__(self, model: _Optional[str] = ..., base_model: _Optional[str] = ..., training_query: _Optional[str] = ..., validation_query: _Optional[str] = ..., options: _Optional[_Union[FineTuningOptions, _Mapping]] = ...) -> None: ...

class FineTuningJobEstimate(_message.Message):
    __slots__ = ("base_model", "options", "max_rows", "training", "validation", "validation_source", "epochs", "tokens_per_epoch", "trained_tokens", "credits", "credits_per_million_tokens", "notes")
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_ROWS_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_SOURCE_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    TRAINED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    CREDITS_PER_MILLION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    base_model: str
    options: FineTuningOptions
    max_rows: int
    training: DataSnapshot
    validation: DataSnapshot
    validation_source: ValidationSource
    epochs: int
    tokens_per_epoch: int
    trained_tokens: int
    credits: float
    credits_per_million_tokens: float
    notes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, base_model: _Optional[str] = ..., options: _Optional[_Union[FineTuningOptions, _Mapping]] = ..., max_rows: _Optional[int] = ..., training: _Optional[_Union[DataSnapshot, _Mapping]] = ..., validation: _Optional[_Union[DataSnapshot, _Mapping]] = ..., validation_source: _Optional[_Union[ValidationSource, str]] = ..., epochs: _Optional[int] = ..., tokens_per_epoch: _Optional[int] = ..., trained_tokens: _Optional[int] = ..., credits: _Optional[float] = ..., credits_per_million_tokens: _Optional[float] = ..., notes: _Optional[_Iterable[str]] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("id", "time", "level", "type", "message", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    id: int
    time: _timestamp_pb2.Timestamp
    level: EventLevel
    type: str
    message: str
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, id: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., level: _Optional[_Union[EventLevel, str]] = ..., type: _Optional[str] = ..., message: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ListFineTuningJobEventsRequest(_message.Message):
    __slots__ = ("id", "page_size", "page_token", "newest_first")
    ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    NEWEST_FIRST_FIELD_NUMBER: _ClassVar[int]
    id: str
    page_size: int
    page_token: str
    newest_first: bool
    def __init__(self, id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., newest_first: _Optional[bool] = ...) -> None: ...

class ListFineTuningJobEventsResponse(_message.Message):
    __slots__ = ("events", "next_page_token")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[JobEvent]
    next_page_token: str
    def __init__(self, events: _Optional[_Iterable[_Union[JobEvent, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
