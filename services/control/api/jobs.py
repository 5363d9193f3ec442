"""FineTuningService: FINETUNE('CREATE' | 'SHOW' | 'DESCRIBE' | 'CANCEL') and Watch."""

from __future__ import annotations

import asyncio

from finetune.control.v1 import jobs_pb2, jobs_pb2_grpc
from services.control.api import evaluation_messages, messages
from services.control.api.principals import user
from services.control.api.watching import watch
from services.control.core.evaluations import Evaluations
from services.control.core.jobs import CreateJob, FineTuning, JobPage
from services.control.core.notifier import ChangeNotifier
from services.control.domain.jobs import Job


def create_request(request: jobs_pb2.CreateFineTuningJobRequest) -> CreateJob:
    return CreateJob(model=request.model, base_model=request.base_model,
                     training_query=request.training_query,
                     validation_query=request.validation_query,
                     options=messages.requested_options(request.options),
                     request_id=request.request_id,
                     evaluation=evaluation_messages.job_evaluation_request(request.options))


def job_message(job: Job, evaluations: Evaluations | None) -> jobs_pb2.FineTuningJob:
    """The job with its evaluation options and, once they exist, its evaluations (blocking:
    it reads the store)."""
    message = messages.job_message(job)
    if job.evaluation and evaluations is not None:
        evaluation_messages.add_job_evaluation(message, job.evaluation,
                                               evaluations.for_job(job.id))
    return message


def listed_job_messages(page: JobPage, evaluations: Evaluations | None
                        ) -> list[jobs_pb2.FineTuningJob]:
    """SHOW's jobs: in full, or as summaries where the caller may not DESCRIBE them."""
    return [messages.job_summary_message(job) if job.id in page.summaries
            else job_message(job, evaluations) for job in page.jobs]


class FineTuningServicer(jobs_pb2_grpc.FineTuningServiceServicer):
    def __init__(self, jobs: FineTuning, events: ChangeNotifier, watch_poll_s: float = 5.0,
                 evaluations: Evaluations | None = None):
        self._jobs = jobs
        self._evaluations = evaluations
        self._events = events
        # Watchers also re-read on this period, for changes made by another control replica.
        self._watch_poll_s = watch_poll_s

    async def _job_message(self, job):
        return await asyncio.to_thread(job_message, job, self._evaluations)

    async def CreateFineTuningJob(self, request, context):
        job = await asyncio.to_thread(self._jobs.create, user(), create_request(request))
        return await self._job_message(job)

    async def EstimateFineTuningJob(self, request, context):
        estimate = await asyncio.to_thread(self._jobs.estimate, user(), CreateJob(
            model=request.model, base_model=request.base_model,
            training_query=request.training_query, validation_query=request.validation_query,
            options=messages.requested_options(request.options)))
        return messages.estimate_message(estimate)

    async def ListFineTuningJobEvents(self, request, context):
        page = await asyncio.to_thread(self._jobs.events, user(), request.id, request.page_size,
                                       request.page_token, request.newest_first)
        return jobs_pb2.ListFineTuningJobEventsResponse(
            events=[messages.event_message(e) for e in page.events],
            next_page_token=page.next_page_token)

    async def ListFineTuningJobs(self, request, context):
        page = await asyncio.to_thread(self._jobs.list, user(), request.page_size,
                                       request.page_token)
        return jobs_pb2.ListFineTuningJobsResponse(
            jobs=await asyncio.to_thread(listed_job_messages, page, self._evaluations),
            next_page_token=page.next_page_token)

    async def GetFineTuningJob(self, request, context):
        job = await asyncio.to_thread(self._jobs.get, user(), request.id)
        return await self._job_message(job)

    async def CancelFineTuningJob(self, request, context):
        job = await asyncio.to_thread(self._jobs.cancel, user(), request.id)
        return await self._job_message(job)

    async def WatchFineTuningJob(self, request, context):
        principal = user()
        async for message in watch(self._events, request.id,
                                   lambda: self._jobs.get(principal, request.id),
                                   self._job_message, lambda job: job.terminal,
                                   self._watch_poll_s):
            yield message
