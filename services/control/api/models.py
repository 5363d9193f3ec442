"""ModelService: base models, fine-tuned models and their artifact files (the registry checks
the caller's privileges)."""

from __future__ import annotations

import asyncio

from finetune.control.v1 import models_pb2, models_pb2_grpc
from services.control.api import evaluation_messages, messages
from services.control.api.principals import user
from services.control.core.evaluations import Evaluations
from services.control.core.models import ModelRegistry


class ModelServicer(models_pb2_grpc.ModelServiceServicer):
    def __init__(self, registry: ModelRegistry, evaluations: Evaluations | None = None):
        self._registry = registry
        self._evaluations = evaluations

    async def ListBaseModels(self, request, context):
        user()
        return models_pb2.ListBaseModelsResponse(
            base_models=[messages.base_model_message(b) for b in self._registry.base_models()])

    async def ListModels(self, request, context):
        page = await asyncio.to_thread(self._registry.list, user(), request.page_size,
                                       request.page_token)
        return models_pb2.ListModelsResponse(
            models=[messages.model_message(m) for m in page.models],
            next_page_token=page.next_page_token)

    async def GetModel(self, request, context):
        principal = user()

        def describe():
            model = self._registry.get(principal, request.name)
            evaluations = self._evaluations.for_model(model) \
                if self._evaluations is not None else []
            return model, self._registry.artifacts(model), evaluations

        model, artifacts, evaluations = await asyncio.to_thread(describe)
        message = messages.model_message(model, artifacts)
        message.evaluations.extend(evaluation_messages.evaluation_message(e)
                                   for e in evaluations)
        return message

    async def DeleteModel(self, request, context):
        await asyncio.to_thread(self._registry.delete, user(), request.name)
        return models_pb2.DeleteModelResponse()

    async def GetModelArtifact(self, request, context):
        chunks = await asyncio.to_thread(self._registry.artifact_chunks, user(), request.name,
                                         request.artifact)
        try:
            while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
                yield models_pb2.ArtifactChunk(data=chunk)
        finally:
            await asyncio.to_thread(chunks.close)
