"""The whole path on real processes: load a table, fine-tune on local Ray, COMPLETE on vLLM.

The table gives every word a made-up code by its category, which the base model cannot know:
after fine-tuning the model must answer the trained codes and the base model must not.
"""

import csv
import io
import json
from datetime import datetime, timezone

import grpc
import pytest
from transformers import AutoTokenizer

from polling import wait_until

from finetune.control.v1 import evaluations_pb2, generations_pb2, jobs_pb2
from services.common.chat_format import prompt_token_ids

pytestmark = pytest.mark.e2e

TABLE = "e2e.public.word_codes"
MODEL = "e2e.public.word_code_model"
CATEGORIES = {
    "QF-17": ["apple", "banana", "cherry", "mango", "peach", "plum"],
    "ZK-82": ["tiger", "horse", "rabbit", "eagle", "shark", "wolf"],
    "LM-35": ["red", "blue", "green", "yellow", "purple", "pink"],
    "VR-64": ["hammer", "wrench", "drill", "saw", "chisel", "pliers"],
}


def word_rows():
    rows = []
    for code, words in CATEGORIES.items():
        for i, word in enumerate(words):
            rows.append({"prompt": f"Which code goes with the word '{word}'?", "completion": code,
                         "split": "validation" if i == len(words) - 1 else "train"})
    return rows


@pytest.fixture(scope="module")
def trained_job(client):
    client.load_rows(TABLE, word_rows(), replace=True)
    job = client.create_job(
        MODEL, "smollm2-135m-instruct",
        f"SELECT prompt, completion FROM {TABLE} WHERE split = 'train'",
        validation_query=f"SELECT prompt, completion FROM {TABLE} WHERE split = 'validation'",
        # A 20-row table gets few optimizer steps from the defaults: small batches, more epochs.
        seed=1, max_epochs=8, batch_size=2, learning_rate=0.001)
    assert job.id.startswith("ft_")
    assert job.status in (jobs_pb2.PENDING, jobs_pb2.IN_PROGRESS)
    updates = list(client.watch_job(job.id, timeout=1500))
    assert updates and updates[-1].status == jobs_pb2.SUCCESS, updates[-1] if updates else None
    return client.get_job(job.id)


def test_describe_shows_success_with_tokens_and_losses(trained_job):
    job = trained_job
    assert job.status == jobs_pb2.SUCCESS
    assert job.progress == pytest.approx(1.0)
    assert job.trained_tokens > 0
    assert job.training_result.training_loss > 0
    assert job.training_result.has_validation_loss and job.training_result.validation_loss > 0
    assert job.model == MODEL
    assert job.started_on.seconds and job.finished_on.seconds >= job.started_on.seconds
    assert job.training_rows == 20 and job.validation_rows == 4


def test_the_job_and_the_engine_run_in_the_measured_precision(client, trained_job):
    """auto: the trainer and the engine both time bf16 against fp32 on this machine (or reuse
    what an earlier run measured here) and say what they chose."""
    events = [e.message for e in client.list_job_events(trained_job.id).events]
    note = next(m for m in events if m.startswith("training precision"))
    assert "fp32" in note and ("measured" in note or "unsupported" in note), note
    engine = client.engine(timeout=30)
    assert engine.base_model == "smollm2-135m-instruct"
    assert engine.dtype in ("float32", "bfloat16")
    assert engine.precision_source in ("probe", "cache", "unsupported")
    if engine.precision_source != "unsupported":
        probed = {t.dtype: t.seconds for t in engine.probe}
        assert set(probed) == {"fp32", "bf16"} and all(v > 0 for v in probed.values())
        faster = min(probed, key=probed.get)
        assert engine.dtype == {"fp32": "float32", "bf16": "bfloat16"}[faster]


def test_show_lists_the_job(client, trained_job):
    assert trained_job.id in [j.id for j in client.list_jobs().jobs]


def test_training_results_csv_has_a_falling_loss(client, trained_job):
    text = client.download_artifact(MODEL, "training_results.csv").decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0].keys()) == ["step", "epoch", "training_loss", "validation_loss"]
    losses = [float(r["training_loss"]) for r in rows]
    assert len(losses) >= 3
    assert losses[-1] < losses[0] * 0.5
    assert any(r["validation_loss"] for r in rows)
    assert client.get_model(MODEL).trained_tokens == trained_job.trained_tokens


def test_fine_tuned_model_answers_trained_codes_and_base_does_not(client, trained_job):
    train = [r for r in word_rows() if r["split"] == "train"]
    tuned = [client.complete(MODEL, r["prompt"], max_tokens=12).text.strip() for r in train]
    base = [client.complete("smollm2-135m-instruct", r["prompt"], max_tokens=12).text.strip()
            for r in train]
    tuned_hits = sum(t == r["completion"] for t, r in zip(tuned, train))
    base_hits = sum(r["completion"] in b for b, r in zip(base, train))
    assert tuned_hits >= 0.8 * len(train), list(zip(tuned, [r["completion"] for r in train]))
    assert base_hits == 0, base


def test_usage_counts_the_tokens_vllm_saw(client, trained_job, base_model_spec):
    tokenizer = AutoTokenizer.from_pretrained(base_model_spec.path)
    prompt = word_rows()[0]["prompt"]
    before = datetime.now(timezone.utc)
    res = client.complete(MODEL, prompt, max_tokens=12)
    assert res.usage.prompt_tokens == len(prompt_token_ids(tokenizer, prompt=prompt))
    generated = tokenizer(res.text, add_special_tokens=False)["input_ids"]
    # The end-of-turn token is generated but not part of the text.
    assert res.usage.completion_tokens in (len(generated), len(generated) + 1)
    assert res.usage.total_tokens == res.usage.prompt_tokens + res.usage.completion_tokens
    assert res.finish_reason == "stop"
    # Its usage row reaches control (delivered from inference's outbox after the answer; the
    # client named the request, so the row has the engine's id): by the next test, which
    # counts the rows that arrive after it starts, it is there.
    wait_until(lambda: [(u.prompt_tokens, u.completion_tokens) for u in client.inference_usage(
        start=before, model=MODEL, page_size=1000).usage]
        == [(res.usage.prompt_tokens, res.usage.completion_tokens)], 60,
        "the COMPLETE's usage row at control")


def test_complete_inside_sql_answers_every_row_and_bills_each_once(client, trained_job):
    """COMPLETE(model, prompt, options) over a table on the real engine: Cortex's document per
    row, the tuned model's answers, and exactly one usage row per generated row."""
    since = datetime.now(timezone.utc)
    train = sorted((r for r in word_rows() if r["split"] == "train"), key=lambda r: r["prompt"])
    _, generated = client.query_rows(
        f"SELECT prompt, COMPLETE('{MODEL}', prompt, {{'max_tokens': 12}}) AS doc "
        f"FROM {TABLE} WHERE split = 'train' ORDER BY prompt")
    rows = list(generated)
    docs = [json.loads(r["doc"]) for r in rows]
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in train]
    hits = sum(d["choices"][0]["messages"].strip() == r["completion"]
               for d, r in zip(docs, train, strict=True))
    assert hits >= 0.8 * len(train), [d["choices"] for d in docs]
    assert all(d["model"] == MODEL and d["usage"]["total_tokens"] > 0 for d in docs)
    # Without options: the text, with the engine's default max_tokens.
    # (The sort and limit in a subquery: ORDER BY ... LIMIT over COMPLETE would generate, and
    # bill, every row the sort sees.)
    _, plain = client.query_rows(f"SELECT COMPLETE('{MODEL}', prompt) AS code FROM (SELECT "
                                 f"prompt FROM {TABLE} WHERE split = 'train' ORDER BY prompt "
                                 "LIMIT 2) ORDER BY prompt")
    plain = list(plain)   # greedy both times: the same text, or more of it past 12 tokens
    assert len(plain) == 2 and all(
        r["code"].strip().startswith(d["choices"][0]["messages"].strip())
        for r, d in zip(plain, docs, strict=False))

    def billed():
        return list(client.inference_usage(start=since, model=MODEL, page_size=1000).usage)
    wait_until(lambda: len(billed()) >= len(train) + 2, 60,
               "usage rows for the queries' COMPLETEs")
    usage = billed()
    assert len(usage) == len(train) + 2
    with_options = sorted(usage, key=lambda u: u.time.ToDatetime())[:len(train)]
    assert sum(u.prompt_tokens for u in with_options) == sum(
        d["usage"]["prompt_tokens"] for d in docs)


def test_missing_completion_column_is_invalid_argument(client):
    client.load_rows("e2e.public.no_completion", [{"prompt": "a", "answer": "b"}], replace=True)
    with pytest.raises(grpc.RpcError) as err:
        client.create_job("e2e.public.never", "smollm2-135m-instruct",
                          "SELECT prompt, answer FROM e2e.public.no_completion")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "completion" in err.value.details()


def test_requests_without_a_key_are_unauthenticated(stack):
    from services.cli.client import FinetuneClient
    with FinetuneClient(stack.control_address, stack.inference_address, "ft_wrong") as bad:
        with pytest.raises(grpc.RpcError) as err:
            bad.list_jobs()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as err:
            bad.complete("smollm2-135m-instruct", "hi")
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_cancel_stops_a_running_job(client):
    job = client.create_job("e2e.public.cancelled_model", "smollm2-135m-instruct",
                            f"SELECT prompt, completion FROM {TABLE}", max_epochs=10)
    cancelled = client.cancel_job(job.id)
    assert cancelled.status == jobs_pb2.CANCELLED
    assert client.get_job(job.id).status == jobs_pb2.CANCELLED
    with pytest.raises(grpc.RpcError) as err:
        client.cancel_job(job.id)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    names = [m.name for m in client.list_models()]
    assert "e2e.public.cancelled_model" not in names


HELD_OUT = f"SELECT prompt, completion AS label FROM {TABLE} WHERE split = 'validation'"


TRAINED = f"SELECT prompt, completion AS label FROM {TABLE} WHERE split = 'train'"


def test_evaluate_model_scores_tuned_above_base(client, trained_job):
    """ML.EVALUATE as classification through the real inference service, on the rows the
    COMPLETE test above holds to its 0.8 threshold (on the 4 held-out words this model
    scored 0.75 once: that is the model's generalisation, not the service's). Answers are one
    of the labels by default; free_form lets the model answer as it likes."""
    tuned = client.wait_evaluation(client.evaluate_model(
        MODEL, TRAINED, "CLASSIFICATION").id, timeout=600)
    base = client.wait_evaluation(client.evaluate_model(
        "smollm2-135m-instruct", TRAINED, "CLASSIFICATION").id, timeout=600)
    free_base = client.wait_evaluation(client.evaluate_model(
        "smollm2-135m-instruct", TRAINED, "CLASSIFICATION", free_form=True).id, timeout=600)
    for e in (tuned, base, free_base):
        assert e.status == evaluations_pb2.EVALUATION_SUCCEEDED, e.error
        assert e.rows == e.rows_done == 20 and e.prompt_tokens > 0
    assert tuned.metrics["accuracy"] >= 0.8, tuned.metrics
    # The base model has never seen the codes: asked freely it never writes one; made to pick
    # one it guesses, below the tuned model.
    assert free_base.metrics["accuracy"] == 0.0, free_base.metrics
    assert free_base.generation.free_form and not base.generation.free_form
    base_answers = [r["prediction"] for r in csv.DictReader(io.StringIO(
        client.evaluation_results(base.id, "predictions.csv").decode()))]
    assert set(base_answers) <= set(CATEGORIES), base_answers
    assert tuned.metrics["macro_f1"] > base.metrics["macro_f1"]
    assert [m.label for m in tuned.labels] == sorted(CATEGORIES)
    assert tuned.id in [e.id for e in client.get_model(MODEL).evaluations]
    rows = list(csv.DictReader(io.StringIO(
        client.evaluation_results(tuned.id, "predictions.csv").decode())))
    assert len(rows) == 20
    assert sum(r["correct"] == "true" for r in rows) == round(tuned.metrics["accuracy"] * 20)
    metrics = client.evaluation_results(tuned.id).decode()
    assert metrics.startswith("type,name,value") and "macro_f1" in metrics


def test_a_job_that_cannot_beat_its_base_registers_no_model(client, trained_job):
    name = "e2e.public.barely_trained"
    job = client.create_job(
        name, "smollm2-135m-instruct",
        f"SELECT prompt, completion FROM {TABLE} WHERE split = 'train'",
        seed=1, max_epochs=1, batch_size=4, learning_rate=1e-5,
        evaluation=evaluations_pb2.JobEvaluationOptions(
            query=HELD_OUT, task=evaluations_pb2.CLASSIFICATION, min_improvement=0.9,
            has_min_improvement=True))
    updates = list(client.watch_job(job.id, timeout=1500))
    done = client.get_job(job.id)
    assert done.status == jobs_pb2.ERROR, updates[-1] if updates else done
    assert done.error.code == "EVALUATION_BELOW_THRESHOLD"
    assert "tuned" in done.error.message and "base" in done.error.message
    assert done.base_evaluation.status == evaluations_pb2.EVALUATION_SUCCEEDED
    assert done.tuned_evaluation.status == evaluations_pb2.EVALUATION_SUCCEEDED
    for e in (done.base_evaluation, done.tuned_evaluation):
        assert f"{e.metrics['macro_f1']:.4f}" in done.error.message
    assert name not in [m.name for m in client.list_models()]
    with pytest.raises(grpc.RpcError) as err:
        client.get_model(name)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


NEW_CODE, NEW_WORDS = "TX-29", ["oak", "pine", "birch", "maple"]


def test_continued_training_starts_from_the_fine_tuned_model(client, trained_job):
    """from_model: a new category is taught to the fine-tuned model. The job starts from its
    adapter (old rows are at a near-zero loss in the first epoch, where a fresh adapter starts
    high) and the continued model answers the new code."""
    rows = [{"prompt": f"Which code goes with the word '{w}'?", "completion": NEW_CODE}
            for w in NEW_WORDS]
    old = [r for r in word_rows() if r["split"] == "train"][:4]
    client.load_rows("e2e.public.more_codes", rows + [{k: r[k] for k in ("prompt", "completion")}
                                                      for r in old], replace=True)
    name = "e2e.public.word_code_model_more"
    job = client.create_job(name, "smollm2-135m-instruct",
                            "SELECT prompt, completion FROM e2e.public.more_codes",
                            seed=1, max_epochs=6, batch_size=2, learning_rate=0.001,
                            from_model=MODEL)
    assert job.options.from_model == MODEL
    done = client.wait_job(job.id, timeout=1500)
    assert done.status == jobs_pb2.SUCCESS, done.error

    def first_epoch_losses(model):
        text = client.download_artifact(model, "training_results.csv").decode()
        return [float(r["training_loss"]) for r in csv.DictReader(io.StringIO(text))
                if r["epoch"] == "1"]

    # A first-epoch batch of rows the parent learnt already is at a loss a fresh adapter only
    # reaches after several epochs (0.0014 against the parent's first-epoch best of 1.3, once).
    assert min(first_epoch_losses(name)) < 0.1 * min(first_epoch_losses(MODEL))
    answers = [client.complete(name, r["prompt"], max_tokens=12).text.strip() for r in rows]
    assert sum(a == NEW_CODE for a in answers) >= 3, answers
    assert client.get_model(name).trained_tokens == done.trained_tokens


def test_batch_generation_survives_killed_services_and_bills_each_row_once(stack, client,
                                                                           trained_job):
    """GenerateText on the real engine: inference, then control, is SIGKILLed mid-run and
    restarted; the run waits out inference (its calls retried) and resumes after control, the
    table holds every row once with the tuned model's answers, and usage has exactly one
    GENERATION row per table row. (Last in the module: it restarts both services.)"""
    since = datetime.now(timezone.utc)
    query = (f"SELECT t.prompt, t.completion AS expected, r.range AS rep FROM {TABLE} t, "
             "range(8) r ORDER BY rep, prompt")
    into = "e2e.public.generated_codes"
    started = client.generate_text(MODEL, query, into, max_tokens=8, concurrency=4)
    rows = len(word_rows()) * 8
    assert started.rows == rows and started.id.startswith("gen_")

    def done_rows():
        return client.get_generation(started.id).rows_done
    wait_until(lambda: done_rows() >= 6, 300, "a few rows answered")
    stack.restart_inference(kill=True)   # control retries its calls until the engine is back
    before = done_rows()
    wait_until(lambda: done_rows() >= before + 6, 300, "rows answered by the new engine")
    stack.restart_control(kill=True)
    done = client.wait_generation(started.id, timeout=900)
    assert done.status == generations_pb2.GENERATION_SUCCEEDED, done.error
    assert done.attempts == 2 and (done.rows_done, done.rows_failed) == (rows, 0)

    _, table = client.query_rows(f"SELECT * FROM {into} ORDER BY rep, prompt")
    table = list(table)
    assert len(table) == rows and all(r["generated_text"] is not None for r in table)
    hits = sum(r["generated_text"].strip() == r["expected"] for r in table)
    assert hits >= 0.8 * rows, [r["generated_text"] for r in table]
    assert sum(int(r["prompt_tokens"]) for r in table) == done.prompt_tokens

    def billed():
        return [u for u in client.inference_usage(start=since, model=MODEL,
                                                  page_size=1000).usage
                if u.source == "GENERATION" and u.request_id.startswith(started.id)]
    wait_until(lambda: len(billed()) >= rows, 120, "a usage row per generated row")
    usage = billed()
    assert sorted(u.request_id for u in usage) == sorted(f"{started.id}/{i}"
                                                         for i in range(rows))
    assert sum(u.prompt_tokens for u in usage) == done.prompt_tokens
