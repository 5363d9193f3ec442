import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UsageGrouping(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    USAGE_GROUPING_UNSPECIFIED: _ClassVar[UsageGrouping]
    GROUP_BY_MODEL: _ClassVar[UsageGrouping]
    GROUP_BY_USER: _ClassVar[UsageGrouping]
    GROUP_BY_DAY: _ClassVar[UsageGrouping]
    GROUP_BY_ACCOUNT: _ClassVar[UsageGrouping]
USAGE_GROUPING_UNSPECIFIED: UsageGrouping
GROUP_BY_MODEL: UsageGrouping
GROUP_BY_USER: UsageGrouping
GROUP_BY_DAY: UsageGrouping
GROUP_BY_ACCOUNT: UsageGrouping

class UsageFilter(_message.Message):
    __slots__ = ("start_time", "end_time", "model", "user")
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    model: str
    user: str
    def __init__(self, start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., model: _Optional[str] = ..., user: _Optional[str] = ...) -> None: ...

class FineTuningUsage(_message.Message):
    __slots__ = ("job_id", "model", "base_model", "user", "status", "trained_tokens", "credits", "start_time", "end_time")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TRAINED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    model: str
    base_model: str
    user: str
    status: str
    trained_tokens: int
    credits: float
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    def __init__(self, job_id: _Optional[str] = ..., model: _Optional[str] = ..., base_model: _Optional[str] = ..., user: _Optional[str] = ..., status: _Optional[str] = ..., trained_tokens: _Optional[int] = ..., credits: _Optional[float] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListFineTuningUsageRequest(_message.Message):
    __slots__ = ("filter", "page_size", "page_token")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    filter: UsageFilter
    page_size: int
    page_token: str
    def __init__(self, filter: _Optional[_Union[UsageFilter, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListFineTuningUsageResponse(_message.Message):
    __slots__ = ("usage", "next_page_token")
    USAGE_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    usage: _containers.RepeatedCompositeFieldContainer[FineTuningUsage]
    next_page_token: str
    def __init__(self, usage: _Optional[_Iterable[_Union[FineTuningUsage, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class InferenceUsage(_message.Message):
    __slots__ = ("request_id", "model", "base_model", "user", "prompt_tokens", "completion_tokens", "total_tokens", "credits", "time", "source")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    base_model: str
    user: str
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    credits: float
    time: _timestamp_pb2.Timestamp
    source: str
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., base_model: _Optional[str] = ..., user: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., total_tokens: _Optional[int] = ..., credits: _Optional[float] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., source: _Optional[str] = ...) -> None: ...

class ListInferenceUsageRequest(_message.Message):
    __slots__ = ("filter", "page_size", "page_token")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    filter: UsageFilter
    page_size: int
    page_token: str
    def __init__(self, filter: _Optional[_Union[UsageFilter, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListInferenceUsageResponse(_message.Message):
    __slots__ = ("usage", "next_page_token")
    USAGE_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    usage: _containers.RepeatedCompositeFieldContainer[InferenceUsage]
    next_page_token: str
    def __init__(self, usage: _Optional[_Iterable[_Union[InferenceUsage, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class AggregateInferenceUsageRequest(_message.Message):
    __slots__ = ("filter", "group_by", "shared_models")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    SHARED_MODELS_FIELD_NUMBER: _ClassVar[int]
    filter: UsageFilter
    group_by: _containers.RepeatedScalarFieldContainer[UsageGrouping]
    shared_models: bool
    def __init__(self, filter: _Optional[_Union[UsageFilter, _Mapping]] = ..., group_by: _Optional[_Iterable[_Union[UsageGrouping, str]]] = ..., shared_models: _Optional[bool] = ...) -> None: ...

class InferenceUsageGroup(_message.Message):
    __slots__ = ("model", "user", "day", "requests", "prompt_tokens", "completion_tokens", "total_tokens", "credits", "account")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    DAY_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    model: str
    user: str
    day: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    credits: float
    account: str
    def __init__(self, model: _Optional[str] = ..., user: _Optional[str] = ..., day: _Optional[str] = ..., requests: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., total_tokens: _Optional[int] = ..., credits: _Optional[float] = ..., account: _Optional[str] = ...) -> None: ...

class AggregateInferenceUsageResponse(_message.Message):
    __slots__ = ("groups",)
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    groups: _containers.RepeatedCompositeFieldContainer[InferenceUsageGroup]
    def __init__(self, groups: _Optional[_Iterable[_Union[InferenceUsageGroup, _Mapping]]] = ...) -> None: ...
