"""The OpenAI-compatible app in-process, through the official `openai` SDK (what users run) and
raw HTTP, over fakes of the COMPLETE core and of control."""

from __future__ import annotations

import json

import openai
import pytest
from openai_fakes import BASE, KEY, SHARED, TUNED, ts

from finetune.control.v1 import jobs_pb2
from services.common.errors import InvalidArgument, ResourceExhausted

CHAT = [{"role": "system", "content": "Route the ticket."},
        {"role": "user", "content": "I was charged twice"}]


async def test_chat_completion_maps_the_request_and_the_answer(door):
    async with door.sdk() as client:
        reply = await client.chat.completions.create(
            model=TUNED, messages=CHAT, temperature=0.5, top_p=0.9, max_tokens=3,
            stop=["\n"], seed=7, user="ignored-by-design")
    key, inp, _ = door.core.calls[0]
    assert key == KEY
    assert inp.model == TUNED and inp.messages == tuple((m["role"], m["content"]) for m in CHAT)
    assert (inp.temperature, inp.top_p, inp.max_tokens, inp.stop, inp.seed) == \
        (0.5, 0.9, 3, ("\n",), 7)
    assert reply.choices[0].message.content == "the quick brown"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.model == TUNED and reply.id == "cmpl-fixed"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens,
            reply.usage.total_tokens) == (5, 3, 8)


async def test_text_completion(door):
    async with door.sdk() as client:
        reply = await client.completions.create(model=BASE, prompt="Say", max_tokens=2,
                                                stop="!")
    _, inp, _ = door.core.calls[0]
    assert inp.prompt == "Say" and inp.messages == () and inp.stop == ("!",)
    assert reply.choices[0].text == "the quick"
    assert reply.object == "text_completion" and reply.usage.total_tokens == 7


async def test_response_format_json_schema_reaches_the_core_as_schema_text(door):
    schema = {"type": "object", "properties": {"label": {"type": "string"}},
              "required": ["label"]}
    async with door.sdk() as client:
        await client.chat.completions.create(
            model=TUNED, messages=CHAT,
            response_format={"type": "json_schema",
                             "json_schema": {"name": "label", "schema": schema}})
        await client.chat.completions.create(model=TUNED, messages=CHAT,
                                             response_format={"type": "json_object"})
    assert json.loads(door.core.calls[0][1].json_schema) == schema
    assert json.loads(door.core.calls[1][1].json_schema) == {"type": "object"}


async def test_streamed_chat_sends_role_content_finish_usage_and_done(door):
    async with door.http() as http:
        response = await http.post("/v1/chat/completions", json={
            "model": TUNED, "messages": CHAT, "stream": True,
            "stream_options": {"include_usage": True}})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("data: ") for line in response.text.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    _, _, usage_id = door.core.calls[0]
    assert {c["id"] for c in chunks} == {usage_id}   # the usage record's id names the stream
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "the quick brown fox"
    finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finish) == 1 and finish[0]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {
        "prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}


async def test_the_sdk_reads_the_stream(door):
    async with door.sdk() as client:
        stream = await client.chat.completions.create(model=TUNED, messages=CHAT, stream=True)
        chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "the quick brown fox"
    assert all(c.usage is None for c in chunks)   # no usage chunk unless asked for
    assert door.core.closed == 1


async def test_streamed_text_completion(door):
    async with door.sdk() as client:
        stream = await client.completions.create(model=BASE, prompt="Say", stream=True,
                                                 max_tokens=2)
        chunks = [c async for c in stream]
    assert "".join(c.choices[0].text for c in chunks) == "the quick"
    assert chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize("error, sdk_error, status, code", [
    (InvalidArgument("the prompt is 90 tokens; the context window is 64"),
     openai.BadRequestError, 400, "invalid_argument"),
    (ResourceExhausted("too many requests in flight (8); retry later"),
     openai.RateLimitError, 429, "resource_exhausted"),
])
async def test_core_refusals_keep_their_status_streamed_or_not(door, error, sdk_error, status,
                                                               code):
    door.core.error = error
    async with door.sdk() as client:
        for stream in (False, True):
            with pytest.raises(sdk_error) as raised:
                await client.chat.completions.create(model=TUNED, messages=CHAT, stream=stream)
            assert raised.value.status_code == status
            assert raised.value.body == {"message": error.message, "type": raised.value.body[
                "type"], "param": None, "code": code}
    assert door.core.closed == 2


async def test_an_error_mid_stream_is_an_error_event_then_the_end(door):
    door.core.fail_after = 2
    async with door.http() as http:
        response = await http.post("/v1/chat/completions",
                                   json={"model": TUNED, "messages": CHAT, "stream": True})
    events = [line.removeprefix("data: ") for line in response.text.split("\n\n") if line]
    assert response.status_code == 200   # already sent when generation failed
    assert json.loads(events[-1])["error"]["code"] == "permission_denied"
    assert "[DONE]" not in events


async def test_a_key_is_required_and_checked_by_control(door):
    async with door.http(key=None) as http:
        response = await http.post("/v1/chat/completions",
                                   json={"model": TUNED, "messages": CHAT})
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
    assert door.core.calls == []
    async with door.sdk(key="ft_wrong") as client:
        with pytest.raises(openai.AuthenticationError):
            await client.models.list()
    assert door.control.keys_seen == ["ft_wrong"]


async def test_unsupported_fields_are_refused_by_name_and_neutral_ones_accepted(door):
    async with door.sdk() as client:
        with pytest.raises(openai.BadRequestError) as raised:
            await client.chat.completions.create(model=TUNED, messages=CHAT, n=2)
        assert raised.value.body["param"] == "n"
        with pytest.raises(openai.BadRequestError) as raised:
            await client.chat.completions.create(
                model=TUNED, messages=CHAT,
                tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
        assert raised.value.body["param"] == "tools"
        await client.chat.completions.create(model=TUNED, messages=CHAT, n=1,
                                             presence_penalty=0, frequency_penalty=0)
    assert len(door.core.calls) == 1


async def test_malformed_bodies_are_400_with_the_field(door):
    async with door.http() as http:
        response = await http.post("/v1/chat/completions",
                                   json={"model": TUNED, "messages": [{"content": "x"}]})
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "messages.0.role"
        response = await http.post("/v1/chat/completions", content=b"{not json",
                                   headers={"content-type": "application/json"})
        assert response.status_code == 400
        missing = await http.get("/v1/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


async def test_before_the_engine_is_ready_completions_are_unavailable(door):
    door.context.completions = None
    async with door.sdk() as client:
        with pytest.raises(openai.APIStatusError) as raised:
            await client.chat.completions.create(model=TUNED, messages=CHAT)
    assert raised.value.status_code == 503


async def test_models_lists_base_fine_tuned_and_shared_models(door):
    async with door.sdk() as client:
        models = [m async for m in client.models.list()]
        tuned = await client.models.retrieve(TUNED)
        shared = await client.models.retrieve(SHARED)
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("shop.public.missing")
    assert [m.id for m in models] == [BASE, TUNED, SHARED]
    assert [m.owned_by for m in models] == ["finetune", "finetune", "partner"]
    assert tuned.id == TUNED and tuned.created == 1700000000
    assert (shared.id, shared.owned_by, shared.root) == (SHARED, "partner", BASE)


async def test_an_upload_becomes_a_table_of_the_callers_rows(door):
    lines = [{"messages": [{"role": "user", "content": "hi"},
                           {"role": "assistant", "content": "BILLING"}]}] * 3
    data = "\n".join(json.dumps(r) for r in lines).encode()
    async with door.sdk() as client:
        uploaded = await client.files.create(file=("tickets.jsonl", data),
                                             purpose="fine-tune",
                                             extra_body={"schema": "shop.public"})
    table, rows = door.control.loaded[0]
    assert uploaded.id == table and table.startswith("shop.public.file_")
    assert uploaded.bytes == len(data) and uploaded.filename == "tickets.jsonl"
    assert rows == [{"messages": json.dumps(lines[0]["messages"])}] * 3


async def test_an_upload_of_bad_rows_or_purpose_is_refused_before_control(door):
    async with door.sdk() as client:
        with pytest.raises(openai.BadRequestError) as raised:
            await client.files.create(file=("x.jsonl", b'{"prompt": "a", "completion": "b"}\n'
                                                       b'{"prompt": 1}\n'), purpose="fine-tune")
        assert "line 2" in raised.value.message
        with pytest.raises(openai.BadRequestError) as raised:
            await client.files.create(file=("x.jsonl", b'{"prompt": "a", "completion": "b"}'),
                                      purpose="assistants")
        assert raised.value.body["param"] == "purpose"
    assert door.control.loaded == []


async def _upload(client, rows, schema="shop.public"):
    data = "\n".join(json.dumps(r) for r in rows).encode()
    return await client.files.create(file=("rows.jsonl", data), purpose="fine-tune",
                                     extra_body={"schema": schema})


async def test_a_job_from_a_file_is_a_finetune_job_on_its_table(door):
    async with door.sdk() as client:
        training = await _upload(client, [{"prompt": "p", "completion": "c"}] * 4)
        validation = await _upload(client, [{"prompt": "v", "completion": "c"}])
        job = await client.fine_tuning.jobs.create(
            model=BASE, training_file=training.id, validation_file=validation.id,
            suffix="router", seed=3,
            method={"type": "supervised", "supervised": {"hyperparameters": {
                "n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 2.0}}})
    request = door.control.created[0]
    assert request.model == "shop.public.router" and request.base_model == BASE
    assert request.training_query == f"SELECT prompt, completion FROM {training.id}"
    assert request.validation_query == f"SELECT prompt, completion FROM {validation.id}"
    assert request.options.task_type == jobs_pb2.INSTRUCTION
    assert (request.options.max_epochs, request.options.batch_size, request.options.seed) == \
        (2, 4, 3)
    assert request.options.learning_rate == pytest.approx(0.002)
    assert job.status == "queued" and job.model == BASE and job.fine_tuned_model is None
    assert job.training_file == training.id and job.validation_file == validation.id
    assert job.hyperparameters.n_epochs == 2
    assert job.hyperparameters.learning_rate_multiplier == pytest.approx(2.0)


async def test_a_job_needs_a_readable_training_file(door):
    async with door.sdk() as client:
        with pytest.raises(openai.NotFoundError):
            await client.fine_tuning.jobs.create(model=BASE,
                                                 training_file="shop.public.file_absent")
        chat = await _upload(client, [{"messages": [{"role": "user", "content": "q"},
                                                    {"role": "assistant", "content": "a"}]}])
        prompts = await _upload(client, [{"prompt": "p", "completion": "c"}])
        with pytest.raises(openai.BadRequestError) as raised:
            await client.fine_tuning.jobs.create(model=BASE, training_file=chat.id,
                                                 validation_file=prompts.id)
        assert raised.value.body["param"] == "validation_file"
    assert door.control.created == []


async def test_jobs_page_newest_first_with_after(door):
    async with door.sdk() as client:
        file = await _upload(client, [{"prompt": "p", "completion": "c"}])
        ids = [(await client.fine_tuning.jobs.create(model=BASE, training_file=file.id)).id
               for _ in range(5)]
        first = await client.fine_tuning.jobs.list(limit=2)
        listed = [j.id async for j in client.fine_tuning.jobs.list(limit=2)]
    assert [j.id for j in first.data] == ids[::-1][:2] and first.has_more
    assert listed == ids[::-1]   # the SDK follows `after` through every page


async def test_job_states_map_to_openai_statuses(door):
    async with door.sdk() as client:
        file = await _upload(client, [{"prompt": "p", "completion": "c"}])
        job = await client.fine_tuning.jobs.create(model=BASE, training_file=file.id,
                                                   suffix="done")
        stored = door.control.jobs[job.id]
        for status, name in [(jobs_pb2.IN_PROGRESS, "running"), (jobs_pb2.ERROR, "failed"),
                             (jobs_pb2.SUCCESS, "succeeded")]:
            stored.status = status
            assert (await client.fine_tuning.jobs.retrieve(job.id)).status == name
        stored.trained_tokens = 1234
        stored.finished_on.CopyFrom(ts(1700000500))
        done = await client.fine_tuning.jobs.retrieve(job.id)
        assert done.fine_tuned_model == "shop.public.done" and done.trained_tokens == 1234
        assert done.finished_at == 1700000500
        with pytest.raises(openai.ConflictError) as raised:   # FAILED_PRECONDITION from control
            await client.fine_tuning.jobs.cancel(job.id)
        assert raised.value.body["code"] == "failed_precondition"


async def test_cancel(door):
    async with door.sdk() as client:
        file = await _upload(client, [{"prompt": "p", "completion": "c"}])
        job = await client.fine_tuning.jobs.create(model=BASE, training_file=file.id)
        cancelled = await client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"


async def test_events_page_newest_first(door):
    async with door.sdk() as client:
        file = await _upload(client, [{"prompt": "p", "completion": "c"}])
        job = await client.fine_tuning.jobs.create(model=BASE, training_file=file.id)
        door.control.events[job.id] = [
            jobs_pb2.JobEvent(id=i, time=ts(1700000000 + i), level=jobs_pb2.EVENT_INFO,
                              type="training.progress" if i % 2 else "job.submitted",
                              message=f"event {i}",
                              metrics={"step": float(i)} if i % 2 else {})
            for i in range(1, 6)]
        events = [e async for e in client.fine_tuning.jobs.list_events(job.id, limit=2)]
    assert [e.message for e in events] == [f"event {i}" for i in range(5, 0, -1)]
    assert events[0].type == "metrics" and events[0].data == {"event": "training.progress",
                                                              "step": 5.0}
    assert events[1].type == "message" and events[1].level == "info"


async def test_metrics_count_http_requests_by_route_and_code(door):
    async with door.sdk() as client:
        for _ in range(3):
            await client.chat.completions.create(model=TUNED, messages=CHAT)
        with pytest.raises(openai.NotFoundError):
            await client.fine_tuning.jobs.retrieve("ft_absent")
    async with door.http(key=None) as http:
        scraped = (await http.get("/metrics")).text
    assert door.sampled == [True]   # sampled values were refreshed first
    assert ('finetune_http_requests_total{code="200",method="POST",'
            'route="/v1/chat/completions"} 3.0') in scraped
    assert ('finetune_http_requests_total{code="404",method="GET",'
            'route="/v1/fine_tuning/jobs/{job_id}"} 1.0') in scraped
    assert ('finetune_http_request_duration_seconds_count{method="POST",'
            'route="/v1/chat/completions"} 3.0') in scraped
