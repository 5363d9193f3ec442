"""POST /v1/chat/completions and /v1/completions: one call into the COMPLETE core each."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response, StreamingResponse

from services.inference.completions import CompletionInput, new_request_id
from services.openai_api.completions import (
    StreamFormat,
    chat_completion,
    chat_input,
    completion_input,
    event_stream,
    first_and_rest,
    text_completion,
)
from services.openai_api.context import ApiContext, ApiKey, Context
from services.openai_api.protocol import ChatCompletionRequest, CompletionRequest

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, key: ApiKey,
                           ctx: Context) -> Response:
    return await _answer(ctx, key, chat_input(body), body.stream,
                         bool(body.stream_options and body.stream_options.include_usage),
                         chat=True)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, key: ApiKey,
                      ctx: Context) -> Response:
    return await _answer(ctx, key, completion_input(body), body.stream,
                         bool(body.stream_options and body.stream_options.include_usage),
                         chat=False)


async def _answer(ctx: ApiContext, key: str, inp: CompletionInput, stream: bool,
                  include_usage: bool, chat: bool) -> Response:
    core = ctx.core()
    if not stream:
        result = await core.complete(key, inp)
        return JSONResponse(chat_completion(result) if chat else text_completion(result))
    # The usage record's id names the stream, tying it to one usage row at control (behind
    # the router, the engine's id, which the first chunk carries).
    request_id = new_request_id()
    first, rest = await first_and_rest(core.stream(key, inp, request_id))
    request_id = first.request_id or request_id
    return StreamingResponse(
        event_stream(StreamFormat(chat, request_id, inp.model, include_usage), first, rest),
        media_type="text/event-stream", headers={"cache-control": "no-cache"})
