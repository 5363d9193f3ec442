"""Proto <-> domain conversions for evaluations (EvaluationService, Model.evaluations,
FineTuningOptions.evaluation, FineTuningJob.base_evaluation / tuned_evaluation)."""

from __future__ import annotations

import math
from typing import Mapping

from finetune.control.v1 import evaluations_pb2, jobs_pb2
from services.common.errors import InvalidArgument
from services.control.api.messages import timestamp
from services.control.core.evaluations import EvaluateModel, JobEvaluationRequest
from services.control.domain.evaluations import (
    Evaluation,
    EvaluationRole,
    EvaluationTask,
    Generation,
    JobEvaluation,
    RequestedGeneration,
)

_TASKS = {
    evaluations_pb2.CLASSIFICATION: EvaluationTask.CLASSIFICATION,
    evaluations_pb2.TEXT_GENERATION: EvaluationTask.TEXT_GENERATION,
    evaluations_pb2.QUESTION_ANSWERING: EvaluationTask.QUESTION_ANSWERING,
}
_TASK_PROTOS = {v: k for k, v in _TASKS.items()}


def task(value: evaluations_pb2.EvaluationTask) -> EvaluationTask | None:
    if value == evaluations_pb2.EVALUATION_TASK_UNSPECIFIED:
        return None
    if value not in _TASKS:
        raise InvalidArgument(f"task {value} is not one of CLASSIFICATION, TEXT_GENERATION, "
                              "QUESTION_ANSWERING")
    return _TASKS[value]


def requested_generation(g: evaluations_pb2.GenerationOptions) -> RequestedGeneration:
    return RequestedGeneration(max_tokens=g.max_tokens, temperature=g.temperature,
                               top_p=g.top_p, stop=tuple(g.stop), seed=g.seed,
                               concurrency=g.concurrency, free_form=g.free_form)


def evaluate_request(request: evaluations_pb2.EvaluateModelRequest) -> EvaluateModel:
    return EvaluateModel(model=request.model, query=request.query, task=task(request.task),
                         generation=requested_generation(request.generation),
                         request_id=request.request_id)


def job_evaluation_request(options: jobs_pb2.FineTuningOptions) -> JobEvaluationRequest | None:
    """FineTuningOptions.evaluation, or None when it asks for nothing (no query)."""
    if not options.HasField("evaluation"):
        return None
    e = options.evaluation
    if not e.query.strip():
        if e.has_min_improvement or e.task or e.HasField("generation"):
            raise InvalidArgument("invalid options: evaluation.query is required to evaluate "
                                  "the base and the tuned model")
        return None
    if e.has_min_improvement and not math.isfinite(e.min_improvement):
        raise InvalidArgument("invalid options: evaluation.min_improvement must be finite")
    return JobEvaluationRequest(query=e.query, task=task(e.task),
                                generation=requested_generation(e.generation),
                                min_improvement=e.min_improvement if e.has_min_improvement
                                else None)


def generation_message(g: Generation) -> evaluations_pb2.GenerationOptions:
    return evaluations_pb2.GenerationOptions(
        max_tokens=g.max_tokens, temperature=g.temperature, top_p=g.top_p, stop=list(g.stop),
        seed=g.seed, concurrency=g.concurrency, free_form=g.free_form)


def evaluation_message(e: Evaluation) -> evaluations_pb2.Evaluation:
    return evaluations_pb2.Evaluation(
        id=e.id, model=e.model, base_model=e.base_model, model_version=e.model_version,
        task=_TASK_PROTOS[e.task], query=e.query, generation=generation_message(e.generation),
        status=evaluations_pb2.EvaluationStatus.Value(f"EVALUATION_{e.status.value}"),
        progress=e.progress, error=e.error or "", rows=e.rows, rows_done=e.rows_done,
        metrics=dict(e.metrics),
        labels=[evaluations_pb2.LabelMetrics(label=m.label, precision=m.precision,
                                             recall=m.recall, f1=m.f1, support=m.support)
                for m in e.labels],
        primary_metric=e.primary_metric, created_on=timestamp(e.created_on),
        finished_on=timestamp(e.finished_on), job_id=e.job_id or "", role=e.role or "",
        prompt_tokens=e.prompt_tokens, completion_tokens=e.completion_tokens)


def job_evaluation_message(spec: JobEvaluation) -> evaluations_pb2.JobEvaluationOptions:
    return evaluations_pb2.JobEvaluationOptions(
        query=spec.query, task=_TASK_PROTOS[spec.task],
        generation=generation_message(spec.generation),
        min_improvement=spec.min_improvement or 0.0,
        has_min_improvement=spec.min_improvement is not None)


def add_job_evaluation(message: jobs_pb2.FineTuningJob, evaluation: dict | None,
                       by_role: Mapping[str, Evaluation]) -> jobs_pb2.FineTuningJob:
    """Fill a job message's options.evaluation and its base/tuned evaluations."""
    if evaluation:
        message.options.evaluation.CopyFrom(
            job_evaluation_message(JobEvaluation.from_dict(evaluation)))
    if EvaluationRole.BASE in by_role:
        message.base_evaluation.CopyFrom(evaluation_message(by_role[EvaluationRole.BASE]))
    if EvaluationRole.TUNED in by_role:
        message.tuned_evaluation.CopyFrom(evaluation_message(by_role[EvaluationRole.TUNED]))
    return message
