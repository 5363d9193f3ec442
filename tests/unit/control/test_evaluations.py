"""EvaluateModel and its runner against a fake inference service: validation, privileges,
progress, concurrency, cancel, failures, a restart, and the result files."""

import asyncio
import csv
import io

from dataclasses import replace

import pytest
from control_testbed import SERVICE_TOKEN, load_rows, new_account, new_user, succeed
from control_components import control_components
from evaluation_testbed import (CODES, build_control, control, fake,  # noqa: F401
                                labelled_rows)

from polling import wait_until_async
from services.common.errors import (FailedPrecondition, InvalidArgument, NotFound,
                                    PermissionDenied, Unavailable)
from services.control.core.evaluations import EvaluateModel
from services.control.core.jobs import CreateJob
from services.control.domain.evaluations import (EvaluationStatus, EvaluationTask,
                                                 RequestedGeneration)


@pytest.fixture
def table(control, admin):
    load_rows(control, admin.account_id, "evals", labelled_rows(4))
    return "SELECT prompt, label FROM evals ORDER BY n"


def evaluate(control, principal, query, model="tiny-base", **kw):
    return control.evaluations.create(principal, EvaluateModel(model=model, query=query, **kw))


def reload(control, evaluation):
    return control.store.run(lambda tx: tx.evaluations.get(evaluation.id))


def csv_rows(control, principal, evaluation, file):
    data = b"".join(control.evaluations.result_chunks(principal, evaluation.id, file))
    return list(csv.DictReader(io.StringIO(data.decode())))


async def test_a_base_model_evaluation_runs_to_metrics_and_csvs(control, admin, table, fake):
    fake.answers = {"code of apple": "fruit\nbecause", "code of tiger": "ANIMAL",
                    "code of red": "TOOL"}
    created = evaluate(control, admin, table)
    assert created.status is EvaluationStatus.PENDING and created.rows == 4
    assert created.id.startswith("ev_") and created.model == "tiny-base"
    assert control.artifacts.exists(created.data_uri)

    done = await control.evaluation_runner.run_one(created.id)
    assert done.status is EvaluationStatus.SUCCEEDED and done.progress == 1.0
    assert done.metrics["accuracy"] == pytest.approx(0.5)
    assert {m.label for m in done.labels} == set(CODES.values())
    assert (done.prompt_tokens, done.completion_tokens) == (20, 8)
    call = fake.calls[0]
    assert (call.account_id, call.user_id) == (admin.account_id, admin.user_id)
    # max_tokens: the longest label (one word + end of turn here) and the margin
    assert (call.max_tokens, call.temperature, call.model) == (2 + 4, 0.0, "tiny-base")

    metrics = csv_rows(control, admin, done, "")   # metrics.csv by default
    assert list(metrics[0]) == ["type", "name", "value", "precision", "recall", "f1", "support"]
    summary = {r["name"]: float(r["value"]) for r in metrics if r["type"] == "metric"}
    assert summary["accuracy"] == 0.5 and set(summary) >= {"macro_f1", "weighted_f1"}
    assert [r["name"] for r in metrics if r["type"] == "label"] == sorted(CODES.values())
    predictions = csv_rows(control, admin, done, "predictions.csv")
    assert list(predictions[0]) == ["prompt", "reference", "prediction", "correct"]
    assert predictions[0]["prediction"] == "fruit" and predictions[0]["correct"] == "true"
    assert predictions[2]["prediction"] == "TOOL" and predictions[2]["correct"] == "false"
    with pytest.raises(InvalidArgument):
        control.evaluations.result_chunks(admin, done.id, "../data.jsonl")


async def test_classification_answers_are_one_of_the_labels_unless_free_form(control, admin,
                                                                              table, fake):
    constrained = await control.evaluation_runner.run_one(evaluate(control, admin, table).id)
    # Every call offers the query's labels, once each, in their order in the result.
    assert {call.choices for call in fake.calls} == {("FRUIT", "ANIMAL", "COLOUR", "TOOL")}
    assert constrained.generation.free_form is False

    fake.calls.clear()
    free = evaluate(control, admin, table, generation=RequestedGeneration(free_form=True))
    assert free.generation.free_form is True
    await control.evaluation_runner.run_one(free.id)
    assert {call.choices for call in fake.calls} == {()}

    fake.calls.clear()
    text = evaluate(control, admin, table, task=EvaluationTask.TEXT_GENERATION)
    await control.evaluation_runner.run_one(text.id)
    assert {call.choices for call in fake.calls} == {()}


def test_answer_choices_fall_back_to_free_text_beyond_the_limits():
    from services.common.choices import MAX_CHOICES
    from services.control.domain.evaluations import (EvaluationTask, answer_choices,
                                                     resolve_generation)

    g = resolve_generation(RequestedGeneration(), EvaluationTask.CLASSIFICATION)
    assert answer_choices(EvaluationTask.CLASSIFICATION, g, [" Yes", "yes ", "NO"]) == \
        ("Yes", "NO")   # compared as metrics compare labels, first spelling kept
    many = [f"label {i}" for i in range(MAX_CHOICES + 1)]
    assert answer_choices(EvaluationTask.CLASSIFICATION, g, many) == ()
    assert answer_choices(EvaluationTask.CLASSIFICATION, g, ["x" * 300]) == ()
    assert answer_choices(EvaluationTask.QUESTION_ANSWERING, g, ["a"]) == ()


async def test_progress_is_recorded_while_it_runs(control, admin, table, fake):
    created = evaluate(control, admin, table, generation=RequestedGeneration(concurrency=1))
    seen = []

    async def look(call):
        seen.append(reload(control, created).rows_done)
    fake.before = look
    await control.evaluation_runner.run_one(created.id)
    assert seen == [0, 1, 2, 3]


async def test_concurrency_bounds_the_calls_in_flight(control, admin, fake):
    load_rows(control, admin.account_id, "many", labelled_rows(12))
    created = evaluate(control, admin, "SELECT prompt, label FROM many",
                       generation=RequestedGeneration(concurrency=3))
    in_flight, most = 0, 0

    async def hold(call):
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        for _ in range(5):
            await asyncio.sleep(0)
        in_flight -= 1
    fake.before = hold
    done = await control.evaluation_runner.run_one(created.id)
    assert done.status is EvaluationStatus.SUCCEEDED and len(fake.calls) == 12
    assert most == 3


async def test_cancel_stops_the_calls(control, admin, fake):
    load_rows(control, admin.account_id, "many", labelled_rows(12))
    created = evaluate(control, admin, "SELECT prompt, label FROM many",
                       generation=RequestedGeneration(concurrency=1))

    async def cancel_on_the_third(call):
        if len(fake.calls) == 3:
            control.evaluations.cancel(admin, created.id)
    fake.before = cancel_on_the_third
    result = await control.evaluation_runner.run_one(created.id)
    assert result.status is EvaluationStatus.CANCELLED
    assert len(fake.calls) <= 4 and "cancelled by" in result.error
    with pytest.raises(FailedPrecondition):
        control.evaluations.cancel(admin, created.id)
    with pytest.raises(FailedPrecondition):
        control.evaluations.result_chunks(admin, created.id, "metrics.csv")


async def test_a_refused_call_fails_the_evaluation_with_the_reason(control, admin, table,
                                                                   fake):
    fake.errors["code of red"] = PermissionDenied("USAGE on model x is required")
    created = evaluate(control, admin, table, generation=RequestedGeneration(concurrency=1))
    failed = await control.evaluation_runner.run_one(created.id)
    assert failed.status is EvaluationStatus.FAILED
    assert "row 3" in failed.error and "USAGE on model x" in failed.error


async def test_transient_failures_are_retried(control, admin, table, fake):
    failures = iter([Unavailable("busy"), Unavailable("busy")])

    def flaky():
        return next(failures, None)

    async def maybe_fail(call):
        error = flaky() if call.prompt == "code of red" else None
        if error is not None:
            raise error
    fake.before = maybe_fail
    done = await evaluate_and_run(control, admin, table)
    assert done.status is EvaluationStatus.SUCCEEDED
    assert [c.prompt for c in fake.calls].count("code of red") == 3


async def test_a_failing_inference_service_fails_after_the_retries(control, admin, table, fake):
    fake.errors["code of red"] = Unavailable("inference is down")
    failed = await evaluate_and_run(control, admin, table)
    assert failed.status is EvaluationStatus.FAILED and "failed 6 times" in failed.error


async def test_an_inference_service_that_is_starting_is_waited_for(control, admin, table,
                                                                   fake):
    """More failures than max_call_attempts, all inside the retry window: the evaluation waits
    (vLLM answers UNAVAILABLE while its engine starts) instead of failing."""
    runner = control.evaluation_runner
    runner._settings = replace(runner._settings, retry_window_s=60.0)
    failures = iter([Unavailable("the inference engine is starting")] * 9)

    async def starting(call):
        if (error := next(failures, None)) is not None:
            raise error
    fake.before = starting
    done = await evaluate_and_run(control, admin, table)
    assert done.status is EvaluationStatus.SUCCEEDED, done.error
    assert len(fake.calls) == 9 + done.rows


async def evaluate_and_run(control, admin, table):
    created = evaluate(control, admin, table)
    return await control.evaluation_runner.run_one(created.id)


async def test_an_interrupted_run_starts_again_after_a_restart(control, admin, table, fake,
                                                               tmp_path, tiny_base,
                                                               dispatcher):
    created = evaluate(control, admin, table)
    interrupted = control.evaluation_runner._claim(created.id)     # control dies mid-run
    control.evaluation_runner._report(created.id, type("T", (), {
        "done": 2, "prompt_tokens": 10, "completion_tokens": 4})())
    assert interrupted.status is EvaluationStatus.RUNNING
    # a new process over the same database and artifacts
    with build_control(tmp_path / "home", tiny_base, dispatcher, fake) as again:
        assert again.evaluation_runner.requeue_interrupted() == 1
        assert reload(again, created).status is EvaluationStatus.PENDING
        done = await again.evaluation_runner.run_one(created.id)
        assert done.status is EvaluationStatus.SUCCEEDED and done.attempts == 2
        assert len(fake.calls) == 4 and done.prompt_tokens == 20


async def test_the_background_loop_runs_what_is_created(control, admin, table, fake):
    task = asyncio.create_task(control.evaluation_runner.run())
    try:
        await asyncio.sleep(0)
        created = evaluate(control, admin, table)
        await wait_until_async(lambda: reload(control, created).terminal, 20,
                               "the evaluation to finish", every_s=0.01)
        assert reload(control, created).status is EvaluationStatus.SUCCEEDED
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_max_tokens_fit_the_longest_reference_unless_chosen(control, admin):
    long_label = " ".join(["word"] * 30)
    load_rows(control, admin.account_id, "long", [{"prompt": "p", "label": "short"},
                                                  {"prompt": "q", "label": long_label}])
    query = "SELECT prompt, label FROM long"
    assert evaluate(control, admin, query).generation.max_tokens == 30 + 1 + 4
    assert evaluate(control, admin, query, task=EvaluationTask.QUESTION_ANSWERING) \
        .generation.max_tokens == 35
    assert evaluate(control, admin, query, task=EvaluationTask.TEXT_GENERATION) \
        .generation.max_tokens == 128          # at least room for a sentence
    assert evaluate(control, admin, query, generation=RequestedGeneration(max_tokens=3)) \
        .generation.max_tokens == 3


def test_max_tokens_keep_the_default_when_the_tokenizer_cannot_load(tmp_path, tiny_base,
                                                                    dispatcher, fake):
    def broken(base, path):
        raise FailedPrecondition(f"cannot load the tokenizer of base model {base.name}")
    with control_components(tmp_path / "home", tiny_base, service_token=SERVICE_TOKEN,
                            dispatcher=dispatcher, tokenizers=broken, completions=fake,
                            port=50999) as control:
        admin = control.store.run(lambda tx: tx.accounts.authenticate(
            control.config.bootstrap_key_file.read_text().strip()))
        load_rows(control, admin.account_id, "evals", labelled_rows(4))
        assert evaluate(control, admin, "SELECT prompt, label FROM evals") \
            .generation.max_tokens == 16


def test_the_query_must_return_prompt_and_label(control, admin):
    load_rows(control, admin.account_id, "bad", [{"prompt": "p", "answer": "a"}])
    with pytest.raises(InvalidArgument, match="label \\(or completion\\)"):
        evaluate(control, admin, "SELECT prompt, answer FROM bad")
    load_rows(control, admin.account_id, "ok", [{"prompt": "p", "completion": "a"}])
    assert evaluate(control, admin, "SELECT * FROM ok",
                    task=EvaluationTask.TEXT_GENERATION).generation.max_tokens == 128


def test_row_limits_and_empty_results(control, admin):
    load_rows(control, admin.account_id, "big", labelled_rows(21))
    with pytest.raises(InvalidArgument, match="21 rows, more than the limit of 20"):
        evaluate(control, admin, "SELECT prompt, label FROM big")
    with pytest.raises(InvalidArgument, match="0 rows"):
        evaluate(control, admin, "SELECT prompt, label FROM big WHERE prompt = 'none'")
    assert not control.artifacts.list(control.artifacts.uri("evaluations"))


def test_bad_requests(control, admin, table):
    with pytest.raises(InvalidArgument, match="model is required"):
        evaluate(control, admin, table, model=" ")
    with pytest.raises(InvalidArgument, match="query is required"):
        evaluate(control, admin, " ")
    with pytest.raises(NotFound):
        evaluate(control, admin, table, model="public.public.nothing")
    with pytest.raises(InvalidArgument, match="max_tokens"):
        evaluate(control, admin, table, generation=RequestedGeneration(max_tokens=100000))


def test_request_ids_make_it_idempotent(control, admin, table):
    first = evaluate(control, admin, table, request_id="r1")
    assert evaluate(control, admin, table, request_id="r1").id == first.id
    assert evaluate(control, admin, table, request_id="r2").id != first.id


def test_without_an_inference_service_it_is_refused(tmp_path, tiny_base, dispatcher):
    with control_components(tmp_path / "bare", tiny_base, service_token=SERVICE_TOKEN,
                            dispatcher=dispatcher, port=50999) as bare:
        key = bare.config.bootstrap_key_file.read_text().strip()
        admin = bare.store.run(lambda tx: tx.accounts.authenticate(key))
        with pytest.raises(FailedPrecondition, match="no inference service configured"):
            evaluate(bare, admin, "SELECT 1")


def test_privileges(control, admin, table, dispatcher):
    job = control.fine_tuning.create(admin, CreateJob(
        model="tuned", base_model="tiny-base",
        training_query="SELECT prompt, label AS completion FROM evals"))
    succeed(control, dispatcher, job)
    stranger, _ = new_user(control, admin.account_id, "stranger")    # no FINETUNE_USER
    user, _ = new_user(control, admin.account_id, "user", roles=("FINETUNE_USER",))
    # USAGE on the model is checked before its existence, so both answers are the same.
    for model in ("public.public.tuned", "public.public.absent"):
        with pytest.raises(PermissionDenied):
            evaluate(control, user, table, model=model)
    with pytest.raises(PermissionDenied):
        evaluate(control, stranger, table)
    # USAGE on the database the query reads
    with pytest.raises(PermissionDenied, match="USAGE on its database"):
        evaluate(control, user, table)
    mine = evaluate(control, admin, table, model="tuned")
    assert mine.model_version == 1 and mine.adapter_id > 0
    with pytest.raises(PermissionDenied):
        control.evaluations.get(user, mine.id)           # no USAGE on the model
    with pytest.raises(PermissionDenied):
        control.evaluations.get(stranger, mine.id)
    other, _ = new_account(control, "other")
    with pytest.raises(NotFound):
        control.evaluations.get(other, mine.id)          # nothing crosses accounts
    assert control.evaluations.list(other).evaluations == []
    assert [e.id for e in control.evaluations.list(admin, "tuned").evaluations] == [mine.id]


def test_list_is_newest_first_and_paged(control, admin, table):
    ids = [evaluate(control, admin, table).id for _ in range(3)]
    first = control.evaluations.list(admin, page_size=2)
    assert len(first.evaluations) == 2 and first.next_page_token
    second = control.evaluations.list(admin, page_size=2, page_token=first.next_page_token)
    listed = [e.id for e in first.evaluations + second.evaluations]
    assert sorted(listed) == sorted(ids) and not second.next_page_token
    assert [e.id for e in control.evaluations.list(admin, "tiny-base").evaluations] == listed
