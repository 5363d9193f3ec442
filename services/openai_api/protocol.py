"""The request bodies of the OpenAI-compatible API, as the `openai` SDK sends them.

Only what the service can honour is accepted: a field it cannot (tools, n > 1, logprobs, ...)
is refused by name with INVALID_ARGUMENT rather than silently ignored, except the few that
carry no meaning for the answer (`user`, `metadata`, `store`). Ranges and limits are checked
by the COMPLETE core and control, not here, so both doors answer the same.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.openai_api.errors import InvalidRequest

# Fields accepted and ignored: they do not change the answer.
IGNORED = frozenset({"user", "metadata", "store", "service_tier", "parallel_tool_calls"})
# Fields accepted at their neutral value only.
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "n": (1, None),
    "presence_penalty": (0, 0.0, None),
    "frequency_penalty": (0, 0.0, None),
    "logprobs": (False, None),
    "top_logprobs": (0, None),
    "logit_bias": ({}, None),
    "tools": ([], None),
    "tool_choice": ("none", None),
    "echo": (False, None),
    "best_of": (1, None),
    "suffix": ("", None),
}


class _Request(BaseModel):
    """Unknown fields are kept by pydantic, then refused by name (or ignored, see above)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    @model_validator(mode="after")
    def _refuse_unsupported(self) -> "_Request":
        for name, value in (self.model_extra or {}).items():
            if name in IGNORED:
                continue
            if name in NEUTRAL and value in NEUTRAL[name]:
                continue
            raise InvalidRequest(f"{name} is not supported by this service", name)
        return self


class StreamOptions(BaseModel):
    include_usage: bool = False


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")   # name, tool_call_id, ...: not used

    role: str
    content: str | list[TextPart] | None = None


class JsonSchema(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str = "response"
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchema | None = None


class _Sampling(_Request):
    model: str
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None   # what newer SDKs send for max_tokens


class CompletionRequest(_Sampling):
    prompt: str | list[str]


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_epochs: int | Literal["auto"] | None = None
    batch_size: int | Literal["auto"] | None = None
    learning_rate_multiplier: float | Literal["auto"] | None = None


class SupervisedMethod(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: Hyperparameters | None = None


class Method(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    supervised: SupervisedMethod | None = None


class FineTuningJobRequest(_Request):
    model: str
    training_file: str
    validation_file: str | None = None
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    suffix: str | None = None
    seed: int | None = None
    integrations: list[Any] | None = None
