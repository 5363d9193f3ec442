"""The playground's completions: the COMPLETE core's chunks as server-sent events the page reads
with fetch, one stream per pane (the fine-tuned model and its base, side by side).

Events: `{"delta": text}` as tokens arrive, then `{"finish_reason", "usage"}`; a failure after
the stream began is `{"error": message, "code"}` (one before it is the route's error status).
"""

from __future__ import annotations

from contextlib import aclosing
from typing import AsyncGenerator, AsyncIterator

from pydantic import BaseModel, Field

from services.inference.completions import Chunk, CompletionInput
from services.openai_api.completions import sse, usage_object
from services.openai_api.errors import for_exception

MAX_PROMPT_CHARS = 32_000


class PlaygroundRequest(BaseModel):
    model: str = Field(min_length=1, max_length=512)
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = None

    def completion_input(self) -> CompletionInput:
        return CompletionInput(model=self.model, prompt=self.prompt, max_tokens=self.max_tokens,
                               temperature=self.temperature)


def chunk_events(chunk: Chunk) -> list[bytes]:
    out = [sse({"delta": chunk.delta})] if chunk.delta else []
    if chunk.finish_reason is not None:
        out.append(sse({"finish_reason": chunk.finish_reason,
                        "usage": usage_object(chunk.usage) if chunk.usage else None}))
    return out


async def events(first: Chunk, rest: AsyncGenerator[Chunk, None]) -> AsyncIterator[bytes]:
    async with aclosing(rest) as chunks:
        try:
            for data in chunk_events(first):
                yield data
            if first.finish_reason is not None:
                return
            async for chunk in chunks:
                for data in chunk_events(chunk):
                    yield data
                if chunk.finish_reason is not None:
                    return
        except Exception as exc:  # noqa: BLE001 - mapped like any error, in the stream
            _, body = for_exception(exc)
            yield sse({"error": body["error"]["message"], "code": body["error"]["code"]})
