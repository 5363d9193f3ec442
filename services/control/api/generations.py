"""GenerationService: ML.GENERATE_TEXT over a query into a new table (core.generations checks
the caller's privileges)."""

from __future__ import annotations

import asyncio

from finetune.control.v1 import generations_pb2, generations_pb2_grpc
from services.control.api.evaluation_messages import generation_message, requested_generation
from services.control.api.messages import timestamp
from services.control.api.principals import user
from services.control.api.watching import watch
from services.control.core.generations import GenerateText, Generations
from services.control.core.notifier import ChangeNotifier
from services.control.domain.generations import TextGeneration


def text_generation_message(g: TextGeneration) -> generations_pb2.Generation:
    return generations_pb2.Generation(
        id=g.id, model=g.model, base_model=g.base_model, model_version=g.model_version,
        query=g.query, into=g.into, generation=generation_message(g.options),
        status=generations_pb2.GenerationStatus.Value(f"GENERATION_{g.status.value}"),
        progress=g.progress, error=g.error or "", rows=g.rows, rows_done=g.rows_done,
        rows_failed=g.rows_failed, prompt_tokens=g.prompt_tokens,
        completion_tokens=g.completion_tokens, created_on=timestamp(g.created_on),
        finished_on=timestamp(g.finished_on), attempts=g.attempts)


class GenerationServicer(generations_pb2_grpc.GenerationServiceServicer):
    def __init__(self, generations: Generations, events: ChangeNotifier,
                 watch_poll_s: float = 5.0):
        self._generations = generations
        self._events = events
        self._watch_poll_s = watch_poll_s

    async def GenerateText(self, request, context):
        generation = await asyncio.to_thread(self._generations.create, user(), GenerateText(
            model=request.model, query=request.query, into=request.into,
            generation=requested_generation(request.generation),
            request_id=request.request_id))
        return text_generation_message(generation)

    async def GetGeneration(self, request, context):
        generation = await asyncio.to_thread(self._generations.get, user(), request.id)
        return text_generation_message(generation)

    async def ListGenerations(self, request, context):
        page = await asyncio.to_thread(self._generations.list, user(), request.page_size,
                                       request.page_token)
        return generations_pb2.ListGenerationsResponse(
            generations=[text_generation_message(g) for g in page.generations],
            next_page_token=page.next_page_token)

    async def CancelGeneration(self, request, context):
        generation = await asyncio.to_thread(self._generations.cancel, user(), request.id)
        return text_generation_message(generation)

    async def WatchGeneration(self, request, context):
        principal = user()

        async def to_message(generation):
            return text_generation_message(generation)

        async for message in watch(self._events, request.id,
                                   lambda: self._generations.get(principal, request.id),
                                   to_message, lambda g: g.terminal, self._watch_poll_s):
            yield message
