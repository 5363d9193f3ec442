"""Chat and text completions: OpenAI's request bodies to the COMPLETE core's input, its results
back to OpenAI's objects, and a stream of chunks as server-sent events.

Conversions only: validation, limits, resolution and usage are the core's
(services.inference.completions), the same for this door as for gRPC.
"""

from __future__ import annotations

import json
import time
from contextlib import aclosing
from typing import Any, AsyncGenerator, AsyncIterator

from services.inference.accounting import Usage
from services.inference.completions import Chunk, Completion, CompletionInput
from services.openai_api.errors import InvalidRequest, for_exception
from services.openai_api.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    ResponseFormat,
)

# OpenAI's newer name for the system turn.
ROLE_ALIASES = {"developer": "system"}
DONE = b"data: [DONE]\n\n"


def chat_input(body: ChatCompletionRequest) -> CompletionInput:
    if not body.messages:
        raise InvalidRequest("messages must not be empty", "messages")
    return CompletionInput(
        model=body.model,
        messages=tuple((ROLE_ALIASES.get(m.role, m.role), message_text(m, i))
                       for i, m in enumerate(body.messages)),
        max_tokens=_max_tokens(body.max_tokens, body.max_completion_tokens),
        **_sampling(body.temperature, body.top_p, body.stop, body.seed, body.response_format))


def completion_input(body: CompletionRequest) -> CompletionInput:
    prompt = body.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise InvalidRequest("prompt must be one string (batches are not supported)",
                                 "prompt")
        prompt = prompt[0]
    return CompletionInput(
        model=body.model, prompt=prompt, max_tokens=body.max_tokens,
        **_sampling(body.temperature, body.top_p, body.stop, body.seed, body.response_format))


def message_text(message: ChatMessage, index: int) -> str:
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if part.type != "text" or part.text is None:
            raise InvalidRequest(f"content parts of type {part.type!r} are not supported "
                                 "(text only)", f"messages.{index}.content")
        texts.append(part.text)
    return "\n".join(texts)


def _max_tokens(max_tokens: int | None, max_completion_tokens: int | None) -> int | None:
    if max_tokens is not None and max_completion_tokens is not None \
            and max_tokens != max_completion_tokens:
        raise InvalidRequest("give max_completion_tokens or max_tokens, not both",
                             "max_completion_tokens")
    return max_completion_tokens if max_completion_tokens is not None else max_tokens


def _sampling(temperature: float | None, top_p: float | None, stop: str | list[str] | None,
              seed: int | None, response_format: ResponseFormat | None) -> dict[str, Any]:
    return dict(temperature=temperature, top_p=top_p,
                stop=(stop,) if isinstance(stop, str) else tuple(stop or ()), seed=seed,
                json_schema=json_schema(response_format))


def json_schema(response_format: ResponseFormat | None) -> str | None:
    """The core's JSON-schema text for a response_format (json_object: any JSON object)."""
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return json.dumps({"type": "object"})
    if response_format.json_schema is None or response_format.json_schema.schema_ is None:
        raise InvalidRequest("response_format.json_schema.schema is required",
                             "response_format.json_schema.schema")
    return json.dumps(response_format.json_schema.schema_)


def usage_object(usage: Usage) -> dict[str, int]:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens}


def chat_completion(result: Completion, created: int | None = None) -> dict[str, Any]:
    return {
        "id": result.request_id, "object": "chat.completion",
        "created": created or int(time.time()), "model": result.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                     "finish_reason": result.finish_reason, "logprobs": None}],
        "usage": usage_object(result.usage),
    }


def text_completion(result: Completion, created: int | None = None) -> dict[str, Any]:
    return {
        "id": result.request_id, "object": "text_completion",
        "created": created or int(time.time()), "model": result.model,
        "choices": [{"index": 0, "text": result.text, "finish_reason": result.finish_reason,
                     "logprobs": None}],
        "usage": usage_object(result.usage),
    }


class StreamFormat:
    """OpenAI's chunk objects of one streamed completion (chat or text)."""

    def __init__(self, chat: bool, request_id: str, model: str, include_usage: bool,
                 created: int | None = None):
        self.chat = chat
        self.request_id = request_id
        self.model = model
        self.include_usage = include_usage
        self.created = created or int(time.time())

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"id": self.request_id,
                "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": choices, **extra}

    def _choice(self, text: str | None, finish_reason: str | None,
                role: bool = False) -> dict[str, Any]:
        if not self.chat:
            return {"index": 0, "text": text or "", "finish_reason": finish_reason,
                    "logprobs": None}
        delta: dict[str, Any] = {}
        if role:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        return {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}

    def opening(self) -> list[dict[str, Any]]:
        """Chat streams start with the assistant's role, as OpenAI's do."""
        return [self._chunk([self._choice("", None, role=True)])] if self.chat else []

    def chunks(self, chunk: Chunk) -> list[dict[str, Any]]:
        out = []
        if chunk.delta:
            out.append(self._chunk([self._choice(chunk.delta, None)]))
        if chunk.finish_reason is not None:
            out.append(self._chunk([self._choice(None if self.chat else "",
                                                 chunk.finish_reason)]))
            if self.include_usage and chunk.usage is not None:
                out.append(self._chunk([], usage=usage_object(chunk.usage)))
        return out


def sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, ensure_ascii=False).encode() + b"\n\n"


async def first_and_rest(
        chunks: AsyncGenerator[Chunk, None]) -> tuple[Chunk, AsyncGenerator[Chunk, None]]:
    """The first chunk, awaited before the response starts: the core's checks (input, limits,
    model and USAGE) fail there, and so still get their HTTP status. (A generator that raised
    is finished: nothing is left to close.)"""
    return await anext(chunks), chunks


async def event_stream(form: StreamFormat, first: Chunk,
                       rest: AsyncGenerator[Chunk, None]) -> AsyncIterator[bytes]:
    """The completion as server-sent events ending in `data: [DONE]`. An error after the
    response began is sent as an OpenAI error event, then the stream ends."""
    async with aclosing(rest) as chunks:
        try:
            for data in form.opening() + form.chunks(first):
                yield sse(data)
            if first.finish_reason is None:
                async for chunk in chunks:
                    for data in form.chunks(chunk):
                        yield sse(data)
                    if chunk.finish_reason is not None:
                        break
        except Exception as exc:  # noqa: BLE001 - mapped like any error, in the stream
            _, body = for_exception(exc)
            yield sse(body)
            return
    yield DONE
