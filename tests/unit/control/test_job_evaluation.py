"""Evaluation at the end of a fine-tuning job: the candidate model is EVALUATING (usable only by
the job's evaluations) until the base and tuned evaluations decide; min_improvement refuses a
model that does not beat its base; a failed evaluation or a cancel leaves no model."""

import pytest
from control_testbed import SERVICE_TOKEN, load_rows, succeed
from evaluation_testbed import (CODES, build_control, control, fake,  # noqa: F401
                                labelled_rows)

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.control.core.evaluations import JobEvaluationRequest
from services.control.core.jobs import CreateJob
from services.control.domain.evaluations import EvaluationStatus
from services.control.domain.jobs import ErrorCode, JobStatus
from services.control.domain.models import ModelState

MODEL = "public.public.tuned"


@pytest.fixture
def rows(control, admin):
    load_rows(control, admin.account_id, "evals", labelled_rows(4))


def create(control, admin, min_improvement=None, query="SELECT prompt, label FROM evals"):
    return control.fine_tuning.create(admin, CreateJob(
        model="tuned", base_model="tiny-base",
        training_query="SELECT prompt, label AS completion FROM evals",
        evaluation=JobEvaluationRequest(query=query, min_improvement=min_improvement)))


def reload(control, job):
    return control.store.run(lambda tx: tx.jobs.get(job.id))


def candidate(control, job):
    return control.store.run(lambda tx: tx.models.by_job(job.id))


def tuned_answers_right(fake):
    for word, code in CODES.items():
        fake.answers[(MODEL, f"code of {word}")] = code


async def run_evaluations(control, job):
    by_role = control.evaluations.for_job(job.id)
    for role in ("base", "tuned"):
        await control.evaluation_runner.run_one(by_role[role].id)
    return control.evaluations.for_job(job.id)


def event_types(control, admin, job):
    return [e.type for e in control.fine_tuning.events(admin, job.id, 100).events]


async def test_a_model_that_beats_its_base_is_registered(control, admin, admin_key, rows,
                                                         dispatcher, fake):
    job = create(control, admin, min_improvement=0.5)
    assert job.evaluation["rows"] == 4 and job.evaluation["min_improvement"] == 0.5
    assert job.evaluation["generation"]["max_tokens"] == 2 + 4   # the longest label + margin
    assert control.artifacts.exists(job.evaluation["data_uri"])
    succeed(control, dispatcher, job)

    evaluating = reload(control, job)
    assert evaluating.status is JobStatus.IN_PROGRESS and evaluating.progress == 0.9
    assert evaluating.trained_tokens == 4321
    model = candidate(control, job)
    assert model.state == ModelState.EVALUATING
    with pytest.raises(NotFound):
        control.registry.get(admin, "tuned")              # not registered yet
    with pytest.raises(FailedPrecondition, match="being evaluated"):
        control.resolution.resolve(admin_key, "tuned")    # COMPLETE refuses it...
    delegated = control.resolution.resolve(SERVICE_TOKEN, "tuned", admin.account_id,
                                           admin.user_id)  # ...but the evaluation may use it
    assert delegated.adapter.id == model.id and delegated.user_id == admin.user_id
    by_role = control.evaluations.for_job(job.id)
    assert set(by_role) == {"base", "tuned"}
    assert by_role["base"].model == "tiny-base" and by_role["tuned"].model == MODEL
    assert by_role["tuned"].adapter_id == model.id and by_role["tuned"].job_id == job.id
    assert control.reconciler.reconcile_once() == 0       # waiting for the evaluations

    tuned_answers_right(fake)
    finished = await run_evaluations(control, job)
    assert finished["tuned"].metrics["macro_f1"] == 1.0
    assert finished["base"].metrics["macro_f1"] == 0.0
    control.reconciler.reconcile_once()
    done = reload(control, job)
    assert done.status is JobStatus.SUCCESS and done.progress == 1.0
    assert control.registry.get(admin, "tuned").ready
    assert control.resolution.resolve(admin_key, "tuned").adapter.id == model.id
    types = event_types(control, admin, job)
    assert types.index("evaluation.started") < types.index("evaluation.finished") \
        < types.index("model.registered")
    finished_event = [e for e in control.fine_tuning.events(admin, job.id, 100).events
                      if e.type == "evaluation.finished"][0]
    assert finished_event.metrics == {"base_macro_f1": 0.0, "tuned_macro_f1": 1.0,
                                      "improvement": 1.0}


async def test_a_model_below_the_threshold_is_not_registered(control, admin, rows,
                                                             dispatcher, fake):
    job = create(control, admin, min_improvement=0.9)
    succeed(control, dispatcher, job)
    fake.answers[(MODEL, "code of apple")] = "FRUIT"      # 1 of 4 labels right: macro-F1 0.25
    await run_evaluations(control, job)
    control.reconciler.reconcile_once()
    failed = reload(control, job)
    assert failed.status is JobStatus.ERROR
    assert failed.error_code == ErrorCode.EVALUATION_BELOW_THRESHOLD
    assert "tuned 0.2500" in failed.error_message and "base 0.0000" in failed.error_message
    assert candidate(control, job) is None                # no model registered...
    assert control.artifacts.exists(f"{job.output_uri}/manifest.json")  # ...files kept
    with pytest.raises(NotFound):
        control.registry.get(admin, "tuned")
    assert control.reconciler.reconcile_once() == 0
    # the name is free again: a new job may train it
    assert create(control, admin).status is JobStatus.PENDING


async def test_without_min_improvement_the_model_is_registered_anyway(control, admin, rows,
                                                                     dispatcher, fake):
    job = create(control, admin)
    succeed(control, dispatcher, job)
    await run_evaluations(control, job)
    control.reconciler.reconcile_once()
    assert reload(control, job).status is JobStatus.SUCCESS


async def test_a_failed_evaluation_fails_the_job(control, admin, rows, dispatcher, fake):
    job = create(control, admin, min_improvement=0.1)
    succeed(control, dispatcher, job)
    fake.errors[MODEL] = FailedPrecondition("adapter rank 64 exceeds the engine's 16")
    await run_evaluations(control, job)
    control.reconciler.reconcile_once()
    failed = reload(control, job)
    assert failed.status is JobStatus.ERROR and failed.error_code == ErrorCode.EVALUATION_FAILED
    assert "tuned model's evaluation" in failed.error_message
    assert "adapter rank 64" in failed.error_message
    assert candidate(control, job) is None


async def test_cancel_during_evaluation_cancels_them_and_drops_the_candidate(
        control, admin, rows, dispatcher):
    job = create(control, admin)
    succeed(control, dispatcher, job)
    assert candidate(control, job) is not None
    cancelled = control.fine_tuning.cancel(admin, job.id)
    assert cancelled.status is JobStatus.CANCELLED
    assert {e.status for e in control.evaluations.for_job(job.id).values()} == \
        {EvaluationStatus.CANCELLED}
    assert candidate(control, job) is None
    assert await control.evaluation_runner.run_one(
        control.evaluations.for_job(job.id)["base"].id) is None   # nothing left to run


async def test_any_failure_while_evaluating_ends_the_evaluations_and_the_candidate(
        control, admin, rows, dispatcher):
    """Not only the evaluation's own verdict: the job's results vanishing mid-evaluation fails
    the job through the reconciler's ordinary failure path, which ends the job the same way
    (core.lifecycle.end_job) and leaves no half-registered model or evaluation running."""
    job = create(control, admin)
    succeed(control, dispatcher, job)
    assert candidate(control, job) is not None
    control.artifacts.delete(f"{job.output_uri.rstrip('/')}/manifest.json")
    control.reconciler.reconcile_once()
    failed = reload(control, job)
    assert failed.status is JobStatus.ERROR and failed.error_code == ErrorCode.NO_MANIFEST
    assert candidate(control, job) is None
    assert {e.status for e in control.evaluations.for_job(job.id).values()} == \
        {EvaluationStatus.CANCELLED}
    assert control.store.run(lambda tx: tx.usage.fine_tuning_recorded(job.id))


async def test_a_restart_mid_evaluation_picks_up(control, admin, rows, dispatcher, fake,
                                                 tmp_path, tiny_base):
    job = create(control, admin, min_improvement=0.5)
    succeed(control, dispatcher, job)
    base = control.evaluations.for_job(job.id)["base"]
    control.evaluation_runner._claim(base.id)              # control stops mid-run
    with build_control(tmp_path / "home", tiny_base, dispatcher, fake) as again:
        assert again.evaluation_runner.requeue_interrupted() == 1
        tuned_answers_right(fake)
        await run_evaluations(again, job)
        again.reconciler.reconcile_once()
        assert reload(again, job).status is JobStatus.SUCCESS
        assert again.evaluations.for_job(job.id)["base"].attempts == 2


def test_create_checks_the_evaluation_query(control, admin, rows):
    with pytest.raises(InvalidArgument, match="label \\(or completion\\)"):
        create(control, admin, query="SELECT prompt FROM evals")
    with pytest.raises(InvalidArgument, match="min_improvement"):
        create(control, admin, min_improvement=5.0)
    assert control.store.run(lambda tx: tx.jobs.page(admin.account_id, 10)) == []
    assert not control.artifacts.list(control.artifacts.uri("jobs"))


def test_create_refuses_an_evaluation_without_inference(admin, rows, tmp_path, tiny_base,
                                                        dispatcher):
    with build_control(tmp_path / "home", tiny_base, dispatcher, None) as bare:
        with pytest.raises(FailedPrecondition, match="no inference service"):
            create(bare, admin)
