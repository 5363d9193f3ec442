import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from finetune.control.v1 import jobs_pb2 as _jobs_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SweepStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SWEEP_STATUS_UNSPECIFIED: _ClassVar[SweepStatus]
    SWEEP_RUNNING: _ClassVar[SweepStatus]
    SWEEP_SUCCEEDED: _ClassVar[SweepStatus]
    SWEEP_FAILED: _ClassVar[SweepStatus]
    SWEEP_CANCELLED: _ClassVar[SweepStatus]

class SearchMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEARCH_METHOD_UNSPECIFIED: _ClassVar[SearchMethod]
    GRID: _ClassVar[SearchMethod]
    RANDOM: _ClassVar[SearchMethod]

class TrialStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRIAL_STATUS_UNSPECIFIED: _ClassVar[TrialStatus]
    TRIAL_PLANNED: _ClassVar[TrialStatus]
    TRIAL_PENDING: _ClassVar[TrialStatus]
    TRIAL_IN_PROGRESS: _ClassVar[TrialStatus]
    TRIAL_SUCCESS: _ClassVar[TrialStatus]
    TRIAL_ERROR: _ClassVar[TrialStatus]
    TRIAL_CANCELLED: _ClassVar[TrialStatus]
    TRIAL_SKIPPED: _ClassVar[TrialStatus]
SWEEP_STATUS_UNSPECIFIED: SweepStatus
SWEEP_RUNNING: SweepStatus
SWEEP_SUCCEEDED: SweepStatus
SWEEP_FAILED: SweepStatus
SWEEP_CANCELLED: SweepStatus
SEARCH_METHOD_UNSPECIFIED: SearchMethod
GRID: SearchMethod
RANDOM: SearchMethod
TRIAL_STATUS_UNSPECIFIED: TrialStatus
TRIAL_PLANNED: TrialStatus
TRIAL_PENDING: TrialStatus
TRIAL_IN_PROGRESS: TrialStatus
TRIAL_SUCCESS: TrialStatus
TRIAL_ERROR: TrialStatus
TRIAL_CANCELLED: TrialStatus
TRIAL_SKIPPED: TrialStatus

class SweepParameter(_message.Message):
    __slots__ = ("name", "values", "min", "max", "log_scale")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    LOG_SCALE_FIELD_NUMBER: _ClassVar[int]
    name: str
    values: _containers.RepeatedScalarFieldContainer[float]
    min: float
    max: float
    log_scale: bool
    def __init__(self, name: _Optional[str] = ..., values: _Optional[_Iterable[float]] = ..., min: _Optional[float] = ..., max: _Optional[float] = ..., log_scale: _Optional[bool] = ...) -> None: ...

class SearchSpace(_message.Message):
    __slots__ = ("method", "parameters", "trials", "seed")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    method: SearchMethod
    parameters: _containers.RepeatedCompositeFieldContainer[SweepParameter]
    trials: int
    seed: int
    def __init__(self, method: _Optional[_Union[SearchMethod, str]] = ..., parameters: _Optional[_Iterable[_Union[SweepParameter, _Mapping]]] = ..., trials: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class SweepBudget(_message.Message):
    __slots__ = ("max_jobs", "max_trained_tokens", "max_concurrent")
    MAX_JOBS_FIELD_NUMBER: _ClassVar[int]
    MAX_TRAINED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_FIELD_NUMBER: _ClassVar[int]
    max_jobs: int
    max_trained_tokens: int
    max_concurrent: int
    def __init__(self, max_jobs: _Optional[int] = ..., max_trained_tokens: _Optional[int] = ..., max_concurrent: _Optional[int] = ...) -> None: ...

class CreateSweepRequest(_message.Message):
    __slots__ = ("model", "base_model", "training_query", "validation_query", "options", "space", "budget", "objective", "delete_candidates", "request_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    TRAINING_QUERY_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_QUERY_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    SPACE_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    DELETE_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    base_model: str
    training_query: str
    validation_query: str
    options: _jobs_pb2.FineTuningOptions
    space: SearchSpace
    budget: SweepBudget
    objective: str
    delete_candidates: bool
    request_id: str
    def __init__(self, model: _Optional[str] = ..., base_model: _Optional[str] = ..., training_query: _Optional[str] = ..., validation_query: _Optional[str] = ..., options: _Optional[_Union[_jobs_pb2.FineTuningOptions, _Mapping]] = ..., space: _Optional[_Union[SearchSpace, _Mapping]] = ..., budget: _Optional[_Union[SweepBudget, _Mapping]] = ..., objective: _Optional[str] = ..., delete_candidates: _Optional[bool] = ..., request_id: _Optional[str] = ...) -> None: ...

class Trial(_message.Message):
    __slots__ = ("index", "parameters", "status", "job_id", "progress", "estimated_trained_tokens", "trained_tokens", "training_loss", "validation_loss", "objective", "model", "best", "error")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_TRAINED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TRAINED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TRAINING_LOSS_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_LOSS_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BEST_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    index: int
    parameters: _containers.ScalarMap[str, float]
    status: TrialStatus
    job_id: str
    progress: float
    estimated_trained_tokens: int
    trained_tokens: int
    training_loss: float
    validation_loss: float
    objective: float
    model: str
    best: bool
    error: str
    def __init__(self, index: _Optional[int] = ..., parameters: _Optional[_Mapping[str, float]] = ..., status: _Optional[_Union[TrialStatus, str]] = ..., job_id: _Optional[str] = ..., progress: _Optional[float] = ..., estimated_trained_tokens: _Optional[int] = ..., trained_tokens: _Optional[int] = ..., training_loss: _Optional[float] = ..., validation_loss: _Optional[float] = ..., objective: _Optional[float] = ..., model: _Optional[str] = ..., best: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class Sweep(_message.Message):
    __slots__ = ("id", "model", "base_model", "training_query", "validation_query", "options", "space", "budget", "objective", "minimize", "delete_candidates", "status", "progress", "error", "trials", "best_trial", "estimated_trained_tokens", "trained_tokens", "credits", "created_on", "finished_on")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    TRAINING_QUERY_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_QUERY_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    SPACE_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    MINIMIZE_FIELD_NUMBER: _ClassVar[int]
    DELETE_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    BEST_TRIAL_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_TRAINED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TRAINED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    CREATED_ON_FIELD_NUMBER: _ClassVar[int]
    FINISHED_ON_FIELD_NUMBER: _ClassVar[int]
    id: str
    model: str
    base_model: str
    training_query: str
    validation_query: str
    options: _jobs_pb2.FineTuningOptions
    space: SearchSpace
    budget: SweepBudget
    objective: str
    minimize: bool
    delete_candidates: bool
    status: SweepStatus
    progress: float
    error: str
    trials: _containers.RepeatedCompositeFieldContainer[Trial]
    best_trial: int
    estimated_trained_tokens: int
    trained_tokens: int
    credits: float
    created_on: _timestamp_pb2.Timestamp
    finished_on: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., model: _Optional[str] = ..., base_model: _Optional[str] = ..., training_query: _Optional[str] = ..., validation_query: _Optional[str] = ..., options: _Optional[_Union[_jobs_pb2.FineTuningOptions, _Mapping]] = ..., space: _Optional[_Union[SearchSpace, _Mapping]] = ..., budget: _Optional[_Union[SweepBudget, _Mapping]] = ..., objective: _Optional[str] = ..., minimize: _Optional[bool] = ..., delete_candidates: _Optional[bool] = ..., status: _Optional[_Union[SweepStatus, str]] = ..., progress: _Optional[float] = ..., error: _Optional[str] = ..., trials: _Optional[_Iterable[_Union[Trial, _Mapping]]] = ..., best_trial: _Optional[int] = ..., estimated_trained_tokens: _Optional[int] = ..., trained_tokens: _Optional[int] = ..., credits: _Optional[float] = ..., created_on: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_on: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetSweepRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListSweepsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSweepsResponse(_message.Message):
    __slots__ = ("sweeps", "next_page_token")
    SWEEPS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    sweeps: _containers.RepeatedCompositeFieldContainer[Sweep]
    next_page_token: str
    def __init__(self, sweeps: _Optional[_Iterable[_Union[Sweep, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelSweepRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class WatchSweepRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...
