from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ReportProgressRequest(_message.Message):
    __slots__ = ("job_id", "progress", "epoch", "step", "total_steps", "trained_tokens", "training_loss", "validation_loss", "has_validation_loss", "message")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    TRAINED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TRAINING_LOSS_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_LOSS_FIELD_NUMBER: _ClassVar[int]
    HAS_VALIDATION_LOSS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    progress: float
    epoch: int
    step: int
    total_steps: int
    trained_tokens: int
    training_loss: float
    validation_loss: float
    has_validation_loss: bool
    message: str
    def __init__(self, job_id: _Optional[str] = ..., progress: _Optional[float] = ..., epoch: _Optional[int] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., trained_tokens: _Optional[int] = ..., training_loss: _Optional[float] = ..., validation_loss: _Optional[float] = ..., has_validation_loss: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class ReportProgressResponse(_message.Message):
    __slots__ = ("cancelled",)
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    cancelled: bool
    def __init__(self, cancelled: _Optional[bool] = ...) -> None: ...

class ResolveModelRequest(_message.Message):
    __slots__ = ("api_key", "model", "on_behalf_of_account_id", "on_behalf_of_user_id")
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ON_BEHALF_OF_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    ON_BEHALF_OF_USER_ID_FIELD_NUMBER: _ClassVar[int]
    api_key: str
    model: str
    on_behalf_of_account_id: str
    on_behalf_of_user_id: str
    def __init__(self, api_key: _Optional[str] = ..., model: _Optional[str] = ..., on_behalf_of_account_id: _Optional[str] = ..., on_behalf_of_user_id: _Optional[str] = ...) -> None: ...

class ResolvedModel(_message.Message):
    __slots__ = ("account_id", "user_id", "model", "base_model", "base_model_path", "adapter_uri", "adapter_id", "context_window", "cache_ttl_seconds")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_PATH_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_URI_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_WINDOW_FIELD_NUMBER: _ClassVar[int]
    CACHE_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    user_id: str
    model: str
    base_model: str
    base_model_path: str
    adapter_uri: str
    adapter_id: int
    context_window: int
    cache_ttl_seconds: int
    def __init__(self, account_id: _Optional[str] = ..., user_id: _Optional[str] = ..., model: _Optional[str] = ..., base_model: _Optional[str] = ..., base_model_path: _Optional[str] = ..., adapter_uri: _Optional[str] = ..., adapter_id: _Optional[int] = ..., context_window: _Optional[int] = ..., cache_ttl_seconds: _Optional[int] = ...) -> None: ...

class ReportUsageRequest(_message.Message):
    __slots__ = ("request_id", "account_id", "user_id", "model", "base_model", "prompt_tokens", "completion_tokens")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    account_id: str
    user_id: str
    model: str
    base_model: str
    prompt_tokens: int
    completion_tokens: int
    def __init__(self, request_id: _Optional[str] = ..., account_id: _Optional[str] = ..., user_id: _Optional[str] = ..., model: _Optional[str] = ..., base_model: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ...) -> None: ...

class ReportUsageResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
