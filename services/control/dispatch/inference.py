"""Control's client of the inference service, for evaluations: COMPLETE on behalf of the user who
started the evaluation (delegation: the service token plus x-finetune-on-behalf-of), so
inference resolves the model, checks privileges and bills usage as that user.

`CompletionClient` is the seam: the evaluation runner depends on it, unit tests use a fake.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import grpc

from finetune.inference.v1 import inference_pb2, inference_pb2_grpc
from services.common import errors

log = logging.getLogger(__name__)

ON_BEHALF_OF_HEADER = "x-finetune-on-behalf-of"


@dataclass(frozen=True)
class CompletionCall:
    model: str
    prompt: str
    account_id: str              # the user the call is made for
    user_id: str
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int = 0
    request_id: str = ""
    json_schema: str = ""        # constrain the text to this JSON Schema (response_format)
    choices: tuple[str, ...] = ()  # or to exactly one of these strings (response_format)


@dataclass(frozen=True)
class CompletionAnswer:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = ""      # stop | length


class CompletionClient(Protocol):
    """One COMPLETE. Raises `services.common.errors` errors: Unavailable and ResourceExhausted
    are worth a retry, the others (PERMISSION_DENIED, NOT_FOUND, ...) are final."""

    async def complete(self, call: CompletionCall) -> CompletionAnswer: ...


class GrpcCompletionClient:
    """CompletionClient over InferenceService.Complete on one channel (opened lazily, on the
    event loop that first uses it)."""

    def __init__(self, address: str, service_token: str, timeout_s: float = 300.0):
        self._address = address
        self._token = service_token
        self._timeout_s = timeout_s
        self._channel: grpc.aio.Channel | None = None
        self._stub: inference_pb2_grpc.InferenceServiceStub | None = None

    def _ready(self):
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(self._address)
            self._stub = inference_pb2_grpc.InferenceServiceStub(self._channel)
        return self._stub

    async def complete(self, call: CompletionCall) -> CompletionAnswer:
        options = inference_pb2.CompletionOptions(
            temperature=call.temperature, top_p=call.top_p, stop=list(call.stop))
        if call.max_tokens:   # 0: unset, the engine's default (set, it must be 1 or more)
            options.max_tokens = call.max_tokens
        if call.seed:
            options.seed = call.seed
        if call.json_schema:
            options.response_format.json_schema = call.json_schema
        if call.choices:
            options.response_format.choices.extend(call.choices)
        metadata = (("authorization", f"Bearer {self._token}"),
                    (ON_BEHALF_OF_HEADER, f"{call.account_id}/{call.user_id}"))
        try:
            response = await self._ready().Complete(
                inference_pb2.CompleteRequest(model=call.model, prompt=call.prompt,
                                              options=options, request_id=call.request_id),
                metadata=metadata, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as exc:
            error = errors.passed_on(exc.code(), exc.details())
            if error is not None:
                raise error from None
            raise errors.Unavailable(
                f"the inference service answered {exc.code().name}: {exc.details()}") from None
        return CompletionAnswer(response.text, response.usage.prompt_tokens,
                                response.usage.completion_tokens, response.finish_reason)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub = None
