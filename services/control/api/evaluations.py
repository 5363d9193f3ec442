"""EvaluationService: ML.EVALUATE for fine-tuned and base models (core.evaluations checks the
caller's privileges)."""

from __future__ import annotations

import asyncio

from finetune.control.v1 import evaluations_pb2, evaluations_pb2_grpc
from services.control.api import evaluation_messages as messages
from services.control.api.principals import user
from services.control.api.watching import watch
from services.control.core.evaluations import Evaluations
from services.control.core.notifier import ChangeNotifier


class EvaluationServicer(evaluations_pb2_grpc.EvaluationServiceServicer):
    def __init__(self, evaluations: Evaluations, events: ChangeNotifier,
                 watch_poll_s: float = 5.0):
        self._evaluations = evaluations
        self._events = events
        self._watch_poll_s = watch_poll_s

    async def EvaluateModel(self, request, context):
        evaluation = await asyncio.to_thread(self._evaluations.create, user(),
                                             messages.evaluate_request(request))
        return messages.evaluation_message(evaluation)

    async def GetEvaluation(self, request, context):
        evaluation = await asyncio.to_thread(self._evaluations.get, user(), request.id)
        return messages.evaluation_message(evaluation)

    async def ListEvaluations(self, request, context):
        page = await asyncio.to_thread(self._evaluations.list, user(), request.model,
                                       request.page_size, request.page_token)
        return evaluations_pb2.ListEvaluationsResponse(
            evaluations=[messages.evaluation_message(e) for e in page.evaluations],
            next_page_token=page.next_page_token)

    async def CancelEvaluation(self, request, context):
        evaluation = await asyncio.to_thread(self._evaluations.cancel, user(), request.id)
        return messages.evaluation_message(evaluation)

    async def WatchEvaluation(self, request, context):
        principal = user()

        async def to_message(evaluation):
            return messages.evaluation_message(evaluation)

        async for message in watch(self._events, request.id,
                                   lambda: self._evaluations.get(principal, request.id),
                                   to_message, lambda e: e.terminal, self._watch_poll_s):
            yield message

    async def GetEvaluationResults(self, request, context):
        chunks = await asyncio.to_thread(self._evaluations.result_chunks, user(), request.id,
                                         request.file)
        try:
            while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
                yield evaluations_pb2.EvaluationChunk(data=chunk)
        finally:
            await asyncio.to_thread(chunks.close)
