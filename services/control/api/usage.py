"""UsageService: fine-tuning and inference usage history, in tokens and credits."""

from __future__ import annotations

import asyncio

from finetune.control.v1 import usage_pb2, usage_pb2_grpc
from services.control.api import messages
from services.control.api.principals import user
from services.control.core.usage import UsageHistory


def _filter(f) -> dict:
    return {"start": messages.time_or_none(f.start_time, "filter.start_time"),
            "end": messages.time_or_none(f.end_time, "filter.end_time"),
            "model": f.model, "user": f.user}


class UsageServicer(usage_pb2_grpc.UsageServiceServicer):
    def __init__(self, history: UsageHistory):
        self._history = history

    async def ListFineTuningUsage(self, request, context):
        page = await asyncio.to_thread(
            self._history.fine_tuning, user(), **_filter(request.filter),
            page_size=request.page_size, page_token=request.page_token)
        return usage_pb2.ListFineTuningUsageResponse(
            usage=[messages.fine_tuning_usage_message(u) for u in page.records],
            next_page_token=page.next_page_token)

    async def ListInferenceUsage(self, request, context):
        page = await asyncio.to_thread(
            self._history.inference, user(), **_filter(request.filter),
            page_size=request.page_size, page_token=request.page_token)
        return usage_pb2.ListInferenceUsageResponse(
            usage=[messages.inference_usage_message(u) for u in page.records],
            next_page_token=page.next_page_token)

    async def AggregateInferenceUsage(self, request, context):
        groups = await asyncio.to_thread(
            self._history.aggregate_inference, user(), messages.groupings(request.group_by),
            **_filter(request.filter), shared_models=request.shared_models)
        return usage_pb2.AggregateInferenceUsageResponse(
            groups=[messages.usage_group_message(g) for g in groups])
