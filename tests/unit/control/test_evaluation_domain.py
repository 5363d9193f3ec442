"""The evaluation's state machine, generation options, query columns, predictions, and the
verdict a job's two evaluations give."""

from datetime import datetime, timezone

import pytest

from services.common.errors import FailedPrecondition, InvalidArgument
from services.control.domain.evaluations import (
    DEFAULT_CONCURRENCY, MAX_TOKENS_LIMIT, Evaluation, EvaluationStatus, EvaluationTask,
    Generation, JobEvaluation, RequestedGeneration, answer_key, evaluation_columns,
    evaluation_record, fit_max_tokens, judge, label_key, new_evaluation_id, prediction_text,
    resolve_generation, resolve_task)

NOW = datetime(2025, 4, 1, tzinfo=timezone.utc)


def evaluation(**kw) -> Evaluation:
    defaults = dict(id=new_evaluation_id(), account_id="a", user_id="u", model="m",
                    base_model="b", task=EvaluationTask.CLASSIFICATION, query="q",
                    generation=resolve_generation(RequestedGeneration(),
                                                  EvaluationTask.CLASSIFICATION),
                    created_on=NOW, rows=4)
    defaults.update(kw)
    return Evaluation(**defaults)


def test_a_run_goes_pending_running_succeeded():
    e = evaluation()
    assert e.id.startswith("ev_") and e.status is EvaluationStatus.PENDING
    e.start(NOW)
    assert e.status is EvaluationStatus.RUNNING and e.started_on == NOW and e.attempts == 1
    e.report(3, 30, 6, NOW)
    assert (e.rows_done, e.progress) == (3, 0.75)
    e.succeed({"macro_f1": 0.5}, [], NOW)
    assert e.terminal and e.progress == 1.0 and e.rows_done == 4 and e.finished_on == NOW
    assert e.primary_metric == "macro_f1" and e.primary_value == 0.5


@pytest.mark.parametrize("end", ["succeed", "fail", "cancel"])
def test_terminal_states_are_final(end):
    e = evaluation()
    e.start(NOW)
    {"succeed": lambda: e.succeed({}, [], NOW), "fail": lambda: e.fail("x", NOW),
     "cancel": lambda: e.cancel(NOW)}[end]()
    for move in (lambda: e.start(NOW), lambda: e.cancel(NOW), lambda: e.fail("y", NOW),
                 lambda: e.succeed({}, [], NOW), lambda: e.requeue(NOW),
                 lambda: e.report(1, 0, 0, NOW)):
        with pytest.raises(FailedPrecondition):
            move()


def test_a_requeued_run_starts_again_from_scratch():
    e = evaluation()
    e.start(NOW)
    e.report(2, 20, 4, NOW)
    e.requeue(NOW)
    assert e.status is EvaluationStatus.PENDING
    e.start(NOW)
    assert (e.rows_done, e.progress, e.prompt_tokens, e.attempts) == (0, 0.0, 0, 2)


def test_a_pending_evaluation_cannot_report_or_succeed():
    e = evaluation()
    with pytest.raises(FailedPrecondition):
        e.report(1, 0, 0, NOW)
    with pytest.raises(FailedPrecondition):
        e.succeed({}, [], NOW)
    e.cancel(NOW, "by someone")
    assert e.status is EvaluationStatus.CANCELLED and e.error == "by someone"


def test_generation_defaults_are_greedy_with_max_tokens_by_task():
    assert resolve_task(None) is EvaluationTask.CLASSIFICATION
    c = resolve_generation(RequestedGeneration(), EvaluationTask.CLASSIFICATION)
    g = resolve_generation(RequestedGeneration(), EvaluationTask.TEXT_GENERATION)
    q = resolve_generation(RequestedGeneration(), EvaluationTask.QUESTION_ANSWERING)
    assert (c.max_tokens, g.max_tokens, q.max_tokens) == (16, 128, 16)
    assert (c.temperature, c.top_p, c.concurrency) == (0.0, 1.0, DEFAULT_CONCURRENCY)
    chosen = resolve_generation(RequestedGeneration(max_tokens=5, temperature=0.7, top_p=0.9,
                                                    stop=("\n",), seed=3, concurrency=2),
                                EvaluationTask.CLASSIFICATION)
    assert chosen == Generation(5, 0.7, 0.9, ("\n",), 3, 2)
    assert Generation.from_dict(chosen.to_dict()) == chosen


def test_max_tokens_fit_the_references():
    requested = RequestedGeneration()
    for task, longest, expected in ((EvaluationTask.CLASSIFICATION, 7, 11),
                                    (EvaluationTask.QUESTION_ANSWERING, 40, 44),
                                    (EvaluationTask.TEXT_GENERATION, 7, 128),
                                    (EvaluationTask.TEXT_GENERATION, 300, 304),
                                    (EvaluationTask.CLASSIFICATION, 10**6, MAX_TOKENS_LIMIT)):
        generation = resolve_generation(requested, task)
        assert fit_max_tokens(generation, requested, task, longest).max_tokens == expected
    chosen = RequestedGeneration(max_tokens=5)
    generation = resolve_generation(chosen, EvaluationTask.CLASSIFICATION)
    assert fit_max_tokens(generation, chosen, EvaluationTask.CLASSIFICATION, 40) == generation
    default = resolve_generation(requested, EvaluationTask.CLASSIFICATION)
    assert fit_max_tokens(default, requested, EvaluationTask.CLASSIFICATION, None) == default


def test_bad_generation_options_are_all_listed():
    with pytest.raises(InvalidArgument) as err:
        resolve_generation(RequestedGeneration(max_tokens=-1, temperature=3, top_p=2,
                                               concurrency=1000, seed=-1, stop=("",)),
                           EvaluationTask.CLASSIFICATION)
    for word in ("max_tokens", "temperature", "top_p", "concurrency", "seed", "stop"):
        assert word in err.value.message
    with pytest.raises(InvalidArgument, match="finite"):
        resolve_generation(RequestedGeneration(temperature=float("nan")),
                           EvaluationTask.CLASSIFICATION)


def test_columns_prompt_and_label_or_completion():
    assert evaluation_columns(["ID", "Prompt", "Label"]).reference_name == "label"
    cols = evaluation_columns(["prompt", "completion", "extra"])
    assert (cols.prompt, cols.reference, cols.reference_name) == (0, 1, "completion")
    assert evaluation_columns(["label", "completion", "prompt"]).reference == 0  # label first
    with pytest.raises(InvalidArgument, match="label \\(or completion\\)"):
        evaluation_columns(["prompt", "answer"])
    with pytest.raises(InvalidArgument, match="prompt"):
        evaluation_columns(["question", "label"])
    assert evaluation_record(cols, ("p", 7, "x"), 1) == {"prompt": "p", "reference": "7"}
    with pytest.raises(InvalidArgument, match="row 3 has a NULL completion"):
        evaluation_record(cols, ("p", None, "x"), 3)


def test_predictions_and_keys():
    assert prediction_text("\n  refund \nbecause", EvaluationTask.CLASSIFICATION) == "refund"
    assert prediction_text(" Paris\nmore", EvaluationTask.QUESTION_ANSWERING) == "Paris"
    assert prediction_text(" two\nlines ", EvaluationTask.TEXT_GENERATION) == "two\nlines"
    assert label_key("  Card   LOST ") == "card lost"
    assert answer_key("The  Answer, is: 42!") == "answer is 42"


def test_the_verdict_compares_primary_metrics():
    base = evaluation(metrics={"macro_f1": 0.2})
    tuned = evaluation(metrics={"macro_f1": 0.5})
    assert judge(base, tuned, None).passed
    assert judge(base, tuned, 0.3).passed           # exactly the required improvement
    refused = judge(base, tuned, 0.9)
    assert not refused.passed
    assert "0.5000" in refused.message and "0.2000" in refused.message
    assert "0.9000" in refused.message


def test_job_evaluation_round_trips():
    spec = JobEvaluation("SELECT 1", EvaluationTask.QUESTION_ANSWERING,
                         resolve_generation(RequestedGeneration(),
                                            EvaluationTask.QUESTION_ANSWERING),
                         0.1, "file:///x", 3)
    assert JobEvaluation.from_dict(spec.to_dict()) == spec
