"""The OpenAI-compatible API on real processes (Ray, control, inference on vLLM) with the
official `openai` SDK as the client, and both services' /metrics after that traffic.

The tests share one stack and one trained job, and run in file order: the metrics tests compare
scrapes around traffic they send themselves.
"""

from __future__ import annotations

import json
import time

import openai
import pytest
from openai_stack import scrape, sdk_for
from polling import wait_until

from finetune.control.v1 import jobs_pb2

pytestmark = pytest.mark.integration

BASE = "smollm2-135m-instruct"
SCHEMA = "oa.public"
MODEL = f"{SCHEMA}.codes"
CODES = {"apple": "QF-17", "tiger": "ZK-82", "red": "LM-35", "hammer": "VR-64"}
TERMINAL = ("succeeded", "failed", "cancelled")
RATE = "finetune_training_tokens_per_second"


def chat_rows(words) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"Which code goes with '{w}'?"},
                          {"role": "assistant", "content": CODES[w]}]} for w in words]


def upload(sdk, rows, name="rows.jsonl"):
    data = "\n".join(json.dumps(r) for r in rows).encode()
    return sdk.files.create(file=(name, data), purpose="fine-tune",
                            extra_body={"schema": SCHEMA})


@pytest.fixture(scope="module")
def trained(stack, sdk):
    """A job from an uploaded file, followed to its end; the control metrics are scraped while
    it runs, to see its training throughput."""
    training = upload(sdk, chat_rows(list(CODES) * 2), "train.jsonl")
    validation = upload(sdk, chat_rows(["apple", "red"]), "validation.jsonl")
    job = sdk.fine_tuning.jobs.create(
        model=BASE, training_file=training.id, validation_file=validation.id, suffix="codes",
        seed=1, method={"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 2, "batch_size": 2, "learning_rate_multiplier": 1.0}}})
    rates = []

    def ended() -> bool:
        nonlocal job
        job = sdk.fine_tuning.jobs.retrieve(job.id)
        if job.status in TERMINAL:
            return True
        rates.extend(v for (name, labels), v in scrape(stack.control_metrics_url).items()
                     if name == RATE and ("job_id", job.id) in labels)
        return False

    wait_until(ended, 1500, f"fine-tuning job {job.id} to end",
               diagnose=lambda: f"last seen: {job.status}; {job.error}")
    return training, validation, job, rates


def test_models_lists_the_base_model(sdk):
    assert BASE in [m.id for m in sdk.models.list()]


def test_an_uploaded_file_is_a_table_of_its_rows(trained, grpc_client):
    training, _, _, _ = trained
    assert training.id.startswith(f"{SCHEMA}.file_") and training.purpose == "fine-tune"
    rows = grpc_client.preview(f"SELECT messages FROM {training.id}", limit=100).rows
    assert len(rows) == 8
    assert json.loads(rows[0].values["messages"])[1]["role"] == "assistant"


def test_the_job_succeeds_as_the_finetune_job_it_is(trained, grpc_client, sdk):
    training, validation, job, _ = trained
    assert job.status == "succeeded", job
    assert job.fine_tuned_model == MODEL and job.model == BASE
    assert job.training_file == training.id and job.validation_file == validation.id
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == 2
    assert job.hyperparameters.learning_rate_multiplier == pytest.approx(1.0)
    same = grpc_client.get_job(job.id)   # the same job through FINETUNE's API
    assert same.status == jobs_pb2.SUCCESS and same.model == MODEL
    assert same.options.task_type == jobs_pb2.CHAT and same.training_rows == 8
    assert job.trained_tokens == same.trained_tokens > 0
    assert job.id in [j.id for j in sdk.fine_tuning.jobs.list()]
    events = list(sdk.fine_tuning.jobs.list_events(job.id, limit=5))
    # Newest first; the transaction that ends the job records its success, then the model.
    assert [e.data["event"] for e in events[:2]] == ["model.registered", "job.succeeded"]
    assert [e.id for e in events] == sorted((e.id for e in events),
                                            key=lambda i: -int(i.split("-")[1]))
    assert any(e.type == "metrics" for e in events) or len(events) == 5


def test_the_fine_tuned_model_is_listed_and_answers_streamed_and_not(trained, sdk):
    assert MODEL in [m.id for m in sdk.models.list()]
    messages = chat_rows(["tiger"])[0]["messages"][:1]
    reply = sdk.chat.completions.create(model=MODEL, messages=messages, max_tokens=8,
                                        temperature=0)
    assert reply.model == MODEL and reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + \
        reply.usage.completion_tokens
    chunks = list(sdk.chat.completions.create(model=MODEL, messages=messages, max_tokens=8,
                                              temperature=0, stream=True,
                                              stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == reply.choices[0].message.content
    assert chunks[-1].usage.total_tokens == reply.usage.total_tokens


def _usage_rows(grpc_client) -> list:
    """Every usage record of MODEL, as a list (two records of one request would both show)."""
    rows, token = [], ""
    while True:
        page = grpc_client.inference_usage(model=MODEL, page_token=token, page_size=200)
        rows.extend(page.usage)
        token = page.next_page_token
        if not token:
            return rows


def _settled_usage(grpc_client) -> list:
    """The usage rows once earlier tests' records have all arrived (none new for 3 s)."""
    counts: list[int] = []

    def settled():
        rows = _usage_rows(grpc_client)
        counts.append(len(rows))
        # a 1-tuple: truthy even when there are no rows at all
        return (rows,) if len(counts) > 1 and counts[-1] == counts[-2] else None

    return wait_until(settled, 600, "the usage rows to settle (none new for 3 s)", every_s=3,
                      diagnose=lambda: f"row counts seen: {counts}")[0]


def test_usage_is_counted_once_per_completion_either_door(trained, sdk, grpc_client):
    before = {u.request_id for u in _settled_usage(grpc_client)}
    messages = chat_rows(["red"])[0]["messages"][:1]
    http = sdk.chat.completions.create(model=MODEL, messages=messages, max_tokens=6)
    stream = list(sdk.chat.completions.create(model=MODEL, messages=messages, max_tokens=6,
                                              stream=True,
                                              stream_options={"include_usage": True}))
    # The gRPC client sends its own request_id; its usage row has the engine's id.
    grpc_reply = grpc_client.complete(MODEL, messages=messages, max_tokens=6)
    wait_until(lambda: len(_usage_rows(grpc_client)) >= len(before) + 3, 60, "usage delivery")
    time.sleep(3)   # a second record of any of them would have had time to arrive
    new = [u for u in _usage_rows(grpc_client) if u.request_id not in before]
    assert len(new) == 3, new
    by_id = {u.request_id: u.total_tokens for u in new}
    assert by_id.get(http.id) == http.usage.total_tokens
    assert by_id.get(stream[-1].id) == stream[-1].usage.total_tokens
    assert sorted(by_id.values()) == sorted([http.usage.total_tokens,
                                             stream[-1].usage.total_tokens,
                                             grpc_reply.usage.total_tokens])


def test_text_completions_on_the_base_model(sdk):
    reply = sdk.completions.create(model=BASE, prompt="The capital of France is",
                                   max_tokens=4, temperature=0)
    assert reply.choices[0].text and reply.usage.completion_tokens <= 4


def test_cancel_another_job(trained, sdk, grpc_client):
    training, _, _, _ = trained
    job = sdk.fine_tuning.jobs.create(model=BASE, training_file=training.id,
                                      suffix="cancelled", hyperparameters={"n_epochs": 10})
    assert job.status in ("queued", "running")
    cancelled = sdk.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.fine_tuned_model is None
    assert grpc_client.get_job(job.id).status == jobs_pb2.CANCELLED
    with pytest.raises(openai.ConflictError) as raised:
        sdk.fine_tuning.jobs.cancel(job.id)
    assert raised.value.body["code"] == "failed_precondition"


def test_a_bad_key_is_an_authentication_error(stack):
    with sdk_for(stack, "ft_not_a_key") as bad:
        with pytest.raises(openai.AuthenticationError):
            bad.chat.completions.create(model=BASE, messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        with pytest.raises(openai.AuthenticationError):
            bad.fine_tuning.jobs.list()


def test_a_model_without_usage_is_permission_denied(trained, stack, grpc_client):
    grpc_client.create_role("oa_outsider")
    grpc_client.grant_role("finetune_user", to_role="oa_outsider")
    grpc_client.create_user("oa_outsider", default_role="oa_outsider")
    key = grpc_client.create_api_key(user="oa_outsider").key
    with sdk_for(stack, key) as outsider:
        with pytest.raises(openai.PermissionDeniedError) as raised:
            outsider.chat.completions.create(model=MODEL, max_tokens=4,
                                             messages=[{"role": "user", "content": "hi"}])
        assert "USAGE" in raised.value.message
        assert MODEL not in [m.id for m in outsider.models.list()]
        assert outsider.chat.completions.create(   # the base model stays usable
            model=BASE, max_tokens=2, messages=[{"role": "user", "content": "hi"}]).choices


def test_a_prompt_too_long_is_a_bad_request(sdk):
    with pytest.raises(openai.BadRequestError) as raised:
        sdk.chat.completions.create(model=BASE, max_tokens=4,
                                    messages=[{"role": "user", "content": "word " * 2100}])
    assert "context window" in raised.value.message
    with pytest.raises(openai.BadRequestError):   # the same limit, streamed
        sdk.chat.completions.create(model=BASE, max_tokens=4, stream=True,
                                    messages=[{"role": "user", "content": "word " * 2100}])


# -- metrics ---------------------------------------------------------------------------------

def delta(before: dict, after: dict, name: str, **labels) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_inference_metrics_move_by_the_traffic_sent(trained, stack, sdk, grpc_client):
    url = f"{stack.http_url}/metrics"
    before = scrape(url)
    messages = [{"role": "user", "content": "Which code goes with 'apple'?"}]
    replies = [sdk.chat.completions.create(model=MODEL, messages=messages, max_tokens=5)
               for _ in range(2)]
    grpc_reply = grpc_client.complete(MODEL, messages=messages, max_tokens=5)
    with sdk_for(stack, "ft_not_a_key") as bad, pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model=MODEL, messages=messages)
    after = scrape(url)

    route = "/v1/chat/completions"
    assert delta(before, after, "finetune_http_requests_total", method="POST", route=route,
                 code="200") == 2
    assert delta(before, after, "finetune_http_requests_total", method="POST", route=route,
                 code="401") == 1
    assert delta(before, after, "finetune_http_request_duration_seconds_count", method="POST",
                 route=route) == 3
    complete = "/finetune.inference.v1.InferenceService/Complete"
    assert delta(before, after, "finetune_grpc_requests_total", method=complete,
                 code="OK") == 1
    assert delta(before, after, "finetune_grpc_request_duration_seconds_count",
                 method=complete) == 1
    usages = [r.usage for r in replies] + [grpc_reply.usage]
    assert delta(before, after, "finetune_prompt_tokens_total", base_model=BASE) == \
        sum(u.prompt_tokens for u in usages)
    assert delta(before, after, "finetune_completion_tokens_total", base_model=BASE) == \
        sum(u.completion_tokens for u in usages)
    assert after[("finetune_adapters_loaded_total", ())] == 1   # one adapter version served
    assert after[("finetune_adapters_failed_validation_total", ())] == 0
    assert after[("finetune_adapters_resident", ())] == 1
    assert after[("finetune_adapters_evicted_total", ())] == 0
    assert after[("finetune_inference_queue_depth", ())] == 0
    assert after[("finetune_inference_running_requests", ())] == 0


def test_control_metrics_count_rpcs_and_jobs_by_state(trained, stack, sdk, grpc_client):
    _, _, job, rates = trained
    before = scrape(stack.control_metrics_url)
    sdk.models.list()
    after = scrape(stack.control_metrics_url)
    assert delta(before, after, "finetune_grpc_requests_total",
                 method="/finetune.control.v1.ModelService/ListBaseModels", code="OK") == 1
    # Two lists: the account's own models and those other accounts share with it.
    assert delta(before, after, "finetune_grpc_requests_total",
                 method="/finetune.control.v1.ModelService/ListModels", code="OK") == 2

    statuses = [j.status for j in grpc_client.list_jobs(page_size=100).jobs]
    for status in ("PENDING", "IN_PROGRESS", "SUCCESS", "ERROR", "CANCELLED"):
        assert after[("finetune_jobs", (("state", status),))] == \
            statuses.count(jobs_pb2.JobStatus.Value(status)), status
    assert rates and max(rates) > 0, "no training throughput was seen while the job ran"
    assert not [k for k in after if k[0] == "finetune_training_tokens_per_second"]
