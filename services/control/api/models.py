"""ModelService: base models, fine-tuned models and their artifact files (the registry checks
the caller's privileges)."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Generator, TypeVar

from finetune.control.v1 import models_pb2, models_pb2_grpc
from services.common.errors import FailedPrecondition, InvalidArgument
from services.control.api import evaluation_messages, messages
from services.control.api.principals import user
from services.control.core.evaluations import Evaluations
from services.control.core.model_exports import ExportFormat, ModelExports
from services.control.core.model_imports import ImportRequest, ModelImports
from services.control.core.models import ModelRegistry

T = TypeVar("T")
_EXPORT_FORMATS = {models_pb2.EXPORT_FORMAT_UNSPECIFIED: ExportFormat.FILES,
                   models_pb2.EXPORT_FORMAT_FILES: ExportFormat.FILES,
                   models_pb2.EXPORT_FORMAT_TAR: ExportFormat.TAR}


class ModelServicer(models_pb2_grpc.ModelServiceServicer):
    def __init__(self, registry: ModelRegistry, evaluations: Evaluations | None = None,
                 imports: ModelImports | None = None, exports: ModelExports | None = None):
        self._registry = registry
        self._evaluations = evaluations
        self._imports = imports
        self._exports = exports

    async def ListBaseModels(self, request, context):
        user()
        return models_pb2.ListBaseModelsResponse(
            base_models=[messages.base_model_message(b) for b in self._registry.base_models()])

    async def ListModels(self, request, context):
        listing = self._registry.shared if request.shared else self._registry.list
        page = await asyncio.to_thread(listing, user(), request.page_size, request.page_token)
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
        async for chunk in _in_thread(chunks):
            yield models_pb2.ArtifactChunk(data=chunk)

    async def ImportModel(self, request_iterator, context):
        principal = user()
        if self._imports is None:
            raise FailedPrecondition("imports are not enabled on this control service")
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("payload") != "header":
            raise InvalidArgument("the first ImportModel message must be the header")
        header = first.header
        request = ImportRequest(model=header.name, base_model=header.base_model,
                                source_uri=header.source_uri, request_id=header.request_id)
        # Before a byte is spooled: an unauthorized or pointless upload stops here.
        earlier = await asyncio.to_thread(self._imports.begin, principal, request)
        if earlier is not None:
            return messages.model_message(earlier)
        upload = None if request.source_uri.strip() else \
            await asyncio.to_thread(self._imports.upload)
        try:
            async for message in request_iterator:
                kind = message.WhichOneof("payload")
                if kind == "header":
                    raise InvalidArgument("an ImportModel stream has exactly one header")
                if kind == "file_chunk":
                    if upload is None:
                        raise InvalidArgument("an import from source_uri carries no files")
                    await asyncio.to_thread(upload.add_chunk, message.file_chunk.file,
                                            message.file_chunk.data)
            model = await asyncio.to_thread(self._imports.import_model, principal, request,
                                            upload)
        finally:
            if upload is not None:
                await asyncio.to_thread(upload.discard)
        return messages.model_message(model, await asyncio.to_thread(self._registry.artifacts,
                                                                      model))

    async def ExportModel(self, request, context):
        principal = user()
        if self._exports is None:
            raise FailedPrecondition("exports are not enabled on this control service")
        fmt = _EXPORT_FORMATS.get(request.format)
        if fmt is None:
            raise InvalidArgument(f"unknown export format {request.format}")
        export = await asyncio.to_thread(self._exports.export, principal, request.name, fmt)
        total = export.total_bytes
        async for chunk in _in_thread(export.chunks):
            yield models_pb2.ExportModelResponse(file=chunk.file, data=chunk.data,
                                                 total_bytes=total)
            total = 0   # the first message only


async def _in_thread(chunks: Generator[T, None, None]) -> AsyncIterator[T]:
    """The items of a blocking generator, each read in a worker thread; closed at the end
    (a client that went away stops the reading)."""
    try:
        while (item := await asyncio.to_thread(next, chunks, None)) is not None:
            yield item
    finally:
        await asyncio.to_thread(chunks.close)
