"""The data planes' RPCs (service token only): trainer progress, model resolution, usage."""

from __future__ import annotations

import asyncio
from typing import Protocol

from finetune.control.v1 import internal_pb2, internal_pb2_grpc
from services.control.core.resolution import ModelResolution
from services.control.core.usage import InferenceUsageRecorder, InferenceUsageReport
from services.control.domain.jobs import JobProgress


class ProgressRecorder(Protocol):
    """Where progress reports go: FineTuning.report_progress (metered, see control/metrics.py)."""

    def report_progress(self, job_id: str, progress: JobProgress) -> bool: ...


class JobReportingServicer(internal_pb2_grpc.JobReportingServiceServicer):
    def __init__(self, jobs: ProgressRecorder):
        self._jobs = jobs

    async def ReportProgress(self, request, context):
        progress = JobProgress(
            progress=request.progress, epoch=request.epoch, step=request.step,
            total_steps=request.total_steps, trained_tokens=request.trained_tokens,
            training_loss=request.training_loss if request.step or request.training_loss
            else None,
            validation_loss=request.validation_loss if request.has_validation_loss else None,
            message=request.message)
        cancelled = await asyncio.to_thread(self._jobs.report_progress, request.job_id, progress)
        return internal_pb2.ReportProgressResponse(cancelled=cancelled)


class ModelResolutionServicer(internal_pb2_grpc.ModelResolutionServiceServicer):
    def __init__(self, resolution: ModelResolution, usage: InferenceUsageRecorder,
                 cache_ttl_s: int):
        self._resolution = resolution
        self._usage = usage
        self._cache_ttl_s = cache_ttl_s

    async def ResolveModel(self, request, context):
        r = await asyncio.to_thread(self._resolution.resolve, request.api_key, request.model,
                                    request.on_behalf_of_account_id,
                                    request.on_behalf_of_user_id)
        return internal_pb2.ResolvedModel(
            account_id=r.account_id, user_id=r.user_id, model=r.model, base_model=r.base.name,
            base_model_path=str(r.base.path),
            adapter_uri=r.adapter.adapter_uri if r.adapter else "",
            adapter_id=r.adapter.id if r.adapter else 0,
            context_window=r.base.context_window, cache_ttl_seconds=self._cache_ttl_s)

    async def ReportUsage(self, request, context):
        await asyncio.to_thread(self._usage.record, InferenceUsageReport(
            request_id=request.request_id, account_id=request.account_id,
            user_id=request.user_id, model=request.model, base_model=request.base_model,
            prompt_tokens=request.prompt_tokens, completion_tokens=request.completion_tokens))
        return internal_pb2.ReportUsageResponse()
