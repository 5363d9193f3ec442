"""The playground: COMPLETE against a fine-tuned model and its base, side by side, streamed."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from services.console import playground
from services.console.rendering import page
from services.console.session import Key
from services.inference.completions import new_request_id
from services.openai_api.completions import first_and_rest
from services.openai_api.context import Context

router = APIRouter()


@router.get("/playground")
async def playground_page(request: Request, key: Key, ctx: Context,
                          model: str = "") -> Response:
    models, base_models = await asyncio.gather(ctx.control.models(key),
                                               ctx.control.base_models(key))
    return await page(request, ctx.control, key, "playground.html", {
        "models": models, "base_models": base_models,
        "selected": model or (models[0].name if models else "")})


@router.post("/playground/stream")
async def stream(body: playground.PlaygroundRequest, key: Key, ctx: Context) -> Response:
    # The first chunk is awaited before the response starts, so the core's refusals (USAGE on
    # the model, limits) keep their status; the same COMPLETE core the OpenAI door calls.
    first, rest = await first_and_rest(ctx.core().stream(key, body.completion_input(),
                                                         new_request_id()))
    return StreamingResponse(playground.events(first, rest), media_type="text/event-stream",
                             headers={"cache-control": "no-cache"})
