"""SweepService: hyperparameter sweeps over fine-tuning jobs (core.sweeps checks the caller's
privileges; core.sweep_runner runs the trials)."""

from __future__ import annotations

import asyncio

from finetune.control.v1 import evaluations_pb2, jobs_pb2, sweeps_pb2, sweeps_pb2_grpc
from services.control.api import evaluation_messages, messages
from services.control.api.principals import user
from services.control.api.watching import watch
from services.control.core.notifier import ChangeNotifier
from services.control.core.sweeps import (
    CreateSweep,
    Sweeps,
    SweepView,
    TrialView,
    evaluation_from_dict,
    options_from_dict,
)
from services.control.domain.jobs import JobStatus
from services.control.domain.options import RequestedOptions
from services.control.domain.sweeps import Budget, Parameter, SearchMethod, SearchSpace, TrialState

_TRIAL_STATUS = {TrialState.PLANNED: "TRIAL_PLANNED", TrialState.SKIPPED: "TRIAL_SKIPPED",
                 TrialState.REFUSED: "TRIAL_ERROR"}


def search_space(space: sweeps_pb2.SearchSpace) -> SearchSpace:
    method = SearchMethod.RANDOM if space.method == sweeps_pb2.RANDOM else SearchMethod.GRID
    return SearchSpace(method, tuple(
        Parameter(p.name.strip().lower(), tuple(p.values), p.min, p.max, p.log_scale)
        for p in space.parameters), space.trials, space.seed)


def create_request(request: sweeps_pb2.CreateSweepRequest) -> CreateSweep:
    b = request.budget
    return CreateSweep(
        model=request.model, base_model=request.base_model,
        training_query=request.training_query, validation_query=request.validation_query,
        options=messages.requested_options(request.options),
        evaluation=evaluation_messages.job_evaluation_request(request.options),
        space=search_space(request.space),
        budget=Budget(b.max_jobs, b.max_trained_tokens, b.max_concurrent),
        objective=request.objective, delete_candidates=request.delete_candidates,
        request_id=request.request_id)


def shared_options_message(options: RequestedOptions,
                           evaluation: dict | None) -> jobs_pb2.FineTuningOptions:
    """The options every trial shares, as requested (zero: the default)."""
    message = jobs_pb2.FineTuningOptions(
        max_epochs=options.max_epochs, learning_rate=options.learning_rate,
        batch_size=options.batch_size, lora_rank=options.lora_rank,
        lora_alpha=options.lora_alpha, lora_dropout=options.lora_dropout,
        target_modules=list(options.target_modules), seed=options.seed,
        task_type=options.task_type.value if options.task_type else None,
        from_model=options.from_model, num_workers=options.num_workers,
        checkpoint_every_steps=options.checkpoint_every_steps,
        early_stopping_patience=options.early_stopping_patience)
    requested = evaluation_from_dict(evaluation)
    if requested is not None:
        message.evaluation.CopyFrom(evaluations_pb2.JobEvaluationOptions(
            query=requested.query,
            task=requested.task.value if requested.task else None,
            generation=evaluations_pb2.GenerationOptions(
                max_tokens=requested.generation.max_tokens,
                temperature=requested.generation.temperature, top_p=requested.generation.top_p,
                stop=list(requested.generation.stop), seed=requested.generation.seed,
                concurrency=requested.generation.concurrency),
            min_improvement=requested.min_improvement or 0.0,
            has_min_improvement=requested.min_improvement is not None))
    return message


def space_message(space: SearchSpace) -> sweeps_pb2.SearchSpace:
    return sweeps_pb2.SearchSpace(
        method=sweeps_pb2.SearchMethod.Value(space.method.value),
        parameters=[sweeps_pb2.SweepParameter(name=p.name, values=list(p.values), min=p.min,
                                              max=p.max, log_scale=p.log_scale)
                    for p in space.parameters],
        trials=space.trials, seed=space.seed)


def trial_message(view: TrialView, best: int) -> sweeps_pb2.Trial:
    trial, job = view.trial, view.job
    if job is not None:
        status = f"TRIAL_{job.status.value}"
    else:
        status = _TRIAL_STATUS.get(trial.state, "TRIAL_PENDING")
    message = sweeps_pb2.Trial(
        index=trial.index, parameters=trial.values, status=sweeps_pb2.TrialStatus.Value(status),
        job_id=trial.job_id or "", progress=job.progress if job is not None else 0.0,
        estimated_trained_tokens=trial.estimated_tokens,
        trained_tokens=job.trained_tokens if job is not None else 0, model=view.model,
        best=trial.index == best,
        error=(job.error_message if job is not None and job.status is not JobStatus.SUCCESS
               else None) or trial.error or "")
    if job is not None and job.training_loss is not None:
        message.training_loss = job.training_loss
    if job is not None and job.validation_loss is not None:
        message.validation_loss = job.validation_loss
    if view.objective is not None:
        message.objective = view.objective
    return message


def sweep_message(view: SweepView) -> sweeps_pb2.Sweep:
    s = view.sweep
    options = shared_options_message(options_from_dict(s.options), s.evaluation)
    return sweeps_pb2.Sweep(
        id=s.id, model=s.model, base_model=s.base_model, training_query=s.training_query,
        validation_query=s.validation_query, options=options, space=space_message(s.space),
        budget=sweeps_pb2.SweepBudget(max_jobs=s.budget.max_jobs,
                                      max_trained_tokens=s.budget.max_trained_tokens,
                                      max_concurrent=s.budget.max_concurrent),
        objective=s.objective, minimize=s.minimize, delete_candidates=s.delete_candidates,
        status=sweeps_pb2.SweepStatus.Value(f"SWEEP_{s.status.value}"),
        progress=view.progress, error=s.error or "",
        trials=[trial_message(t, s.best_trial) for t in view.trials], best_trial=s.best_trial,
        estimated_trained_tokens=s.estimated_trained_tokens,
        trained_tokens=view.trained_tokens, credits=view.credits,
        created_on=messages.timestamp(s.created_on),
        finished_on=messages.timestamp(s.finished_on))


class SweepServicer(sweeps_pb2_grpc.SweepServiceServicer):
    def __init__(self, sweeps: Sweeps, events: ChangeNotifier, watch_poll_s: float = 2.0):
        self._sweeps = sweeps
        self._events = events
        # Trials change as their jobs do, which does not notify the sweep: re-read this often.
        self._watch_poll_s = watch_poll_s

    async def CreateSweep(self, request, context):
        view = await asyncio.to_thread(self._sweeps.create, user(), create_request(request))
        return sweep_message(view)

    async def GetSweep(self, request, context):
        return sweep_message(await asyncio.to_thread(self._sweeps.get, user(), request.id))

    async def ListSweeps(self, request, context):
        page = await asyncio.to_thread(self._sweeps.list, user(), request.page_size,
                                       request.page_token)
        return sweeps_pb2.ListSweepsResponse(sweeps=[sweep_message(v) for v in page.sweeps],
                                             next_page_token=page.next_page_token)

    async def CancelSweep(self, request, context):
        return sweep_message(await asyncio.to_thread(self._sweeps.cancel, user(), request.id))

    async def WatchSweep(self, request, context):
        principal = user()

        async def to_message(view):
            return sweep_message(view)

        async for message in watch(self._events, request.id,
                                   lambda: self._sweeps.get(principal, request.id),
                                   to_message, lambda v: v.sweep.terminal, self._watch_poll_s):
            yield message
