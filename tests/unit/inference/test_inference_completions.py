"""COMPLETE's core with a fake engine and resolver: validation, accounting, admission, abort."""

import asyncio
import math
import time

import grpc
import pytest
from polling import wait_until_async

from finetune.inference.v1 import inference_pb2
from services.common import errors
from services.common.interceptors import _principal
from services.inference.completions import CompletionInput
from services.inference.outbox import ANSWER_RETENTION_S, OutboxStore
from services.inference.servicer import InferenceServicer, to_input


def inp(**kw):
    kw.setdefault("model", "tiny")
    if "messages" not in kw:
        kw.setdefault("prompt", "hello there world")
    return CompletionInput(**kw)


@pytest.mark.parametrize("bad, message", [
    (dict(model=""), "model is required"),
    (dict(prompt=""), "prompt is empty"),
    (dict(prompt="   "), "prompt is empty"),
    (dict(messages=(("user", ""),)), "messages are empty"),
    (dict(messages=(("robot", "hi"),)), "role"),
    (dict(prompt="x", messages=(("user", "hi"),)), "either prompt or messages"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(max_tokens=-5), "max_tokens"),
    (dict(temperature=-0.1), "temperature"),
    (dict(temperature=2.5), "temperature"),
    (dict(temperature=math.nan), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(stop=("",)), "stop"),
    (dict(stop=tuple("abcdefghi")), "stop"),
    (dict(request_id="x" * 200), "request_id"),
])
async def test_malformed_requests_are_invalid_argument(make_completions, engine, resolver, bad,
                                                       message):
    core = make_completions()
    with pytest.raises(errors.InvalidArgument, match=message) as info:
        await core.complete("key", inp(**bad))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert engine.calls == [] and resolver.calls == []  # rejected before any work


async def test_prompt_longer_than_the_context_is_invalid_argument(make_completions, engine):
    core = make_completions()
    long_prompt = " ".join(f"w{i}" for i in range(engine.max_model_len))
    with pytest.raises(errors.InvalidArgument, match="context window"):
        await core.complete("key", inp(prompt=long_prompt))
    assert engine.calls == []


async def test_max_tokens_beyond_the_room_left_is_invalid_argument(make_completions, engine):
    core = make_completions()
    prompt = " ".join(f"w{i}" for i in range(60))  # 61 ids with BOS, context 64
    with pytest.raises(errors.InvalidArgument, match="max_tokens 5"):
        await core.complete("key", inp(prompt=prompt, max_tokens=5))
    # Without an explicit max_tokens the default is clamped to the room left.
    result = await core.complete("key", inp(prompt=prompt))
    assert engine.calls[-1]["sampling"].max_tokens == 3
    assert result.finish_reason == "length"


async def test_model_context_window_from_control_is_respected(make_completions, engine,
                                                              resolver, fakes):
    resolver.models["short"] = fakes.base_resolution("short", context_window=4)
    core = make_completions()
    with pytest.raises(errors.InvalidArgument, match="context window of short is 4"):
        await core.complete("key", inp(model="short", prompt="one two three four"))


async def test_complete_returns_text_finish_reason_and_exact_usage(make_completions, engine,
                                                                   reporter, usage):
    core = make_completions()
    result = await core.complete("key", inp(prompt="hello there world", request_id="r-1"))
    assert result.text == "the quick brown fox"
    assert result.finish_reason == "stop"
    assert result.request_id == "r-1" and result.model == "tiny"
    # Usage counts the ids the engine saw (BOS + 3 words) and the ids it produced (4).
    assert engine.calls[0]["ids"] == [1, 10, 11, 12]
    assert (result.usage.prompt_tokens, result.usage.completion_tokens,
            result.usage.total_tokens) == (4, 4, 8)
    await usage.flush()
    [record] = reporter.records
    assert (record.account_id, record.user_id, record.model, record.base_model) == (
        "acct", "u1", "tiny", "tiny")
    assert record.usage == result.usage
    assert record.request_id == engine.calls[0]["request_id"]


SCHEMA = '{"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}'


@pytest.mark.parametrize("schema, message", [
    ("", "needs json_schema or choices"),
    ("   ", "needs json_schema or choices"),
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    ('"string"', "must be a JSON object"),
    ('{"type": "banana"}', "not a valid JSON Schema"),
    ('{"properties": 5}', "not a valid JSON Schema"),
    ('{"type": "object", "required": "name"}', "not a valid JSON Schema"),
    ('{"description": "' + "x" * 70_000 + '"}', "longer than"),
    ("[" * 5000 + "]" * 5000, "nested too deeply|must be a JSON object|not valid JSON"),
])
async def test_a_bad_json_schema_is_invalid_argument(make_completions, engine, resolver,
                                                     schema, message):
    core = make_completions()
    with pytest.raises(errors.InvalidArgument, match=message):
        await core.complete("key", inp(json_schema=schema))
    assert engine.calls == [] and resolver.calls == []


async def test_a_json_schema_reaches_the_engine(make_completions, engine):
    core = make_completions()
    await core.complete("key", inp(json_schema=SCHEMA))
    await core.complete("key", inp())
    assert engine.calls[0]["sampling"].json_schema == SCHEMA
    assert engine.calls[1]["sampling"].json_schema is None


@pytest.mark.parametrize("fields, message", [
    ({"choices": ("a", "")}, "1 to 256 characters"),
    ({"choices": ("x" * 257,)}, "1 to 256 characters"),
    ({"choices": tuple(str(i) for i in range(1025))}, "at most 1024 choices"),
    ({"choices": ("a", "b"), "json_schema": SCHEMA}, "not both"),
])
async def test_bad_choices_are_invalid_argument(make_completions, engine, resolver, fields,
                                                message):
    core = make_completions()
    with pytest.raises(errors.InvalidArgument, match=message):
        await core.complete("key", inp(**fields))
    assert engine.calls == [] and resolver.calls == []


async def test_choices_reach_the_engine_once_each_in_order(make_completions, engine):
    core = make_completions()
    await core.complete("key", inp(choices=("card_arrival", "top_up_failed", "card_arrival")))
    sampling = engine.calls[0]["sampling"]
    assert sampling.choices == ("card_arrival", "top_up_failed")
    assert sampling.json_schema is None


def test_the_engine_asks_vllm_for_a_choice_a_schema_or_nothing():
    from vllm.sampling_params import StructuredOutputsParams

    from services.inference.engine import Sampling, _structured_outputs

    chosen = _structured_outputs(Sampling(max_tokens=4, choices=("a", "b")),
                                 StructuredOutputsParams)
    assert chosen.choice == ["a", "b"] and chosen.json is None
    assert _structured_outputs(Sampling(max_tokens=4, json_schema=SCHEMA),
                               StructuredOutputsParams).json == SCHEMA
    assert _structured_outputs(Sampling(max_tokens=4), StructuredOutputsParams) is None


def test_choices_are_read_from_the_proto():
    request = inference_pb2.CompleteRequest(
        model="m", prompt="p", options=inference_pb2.CompletionOptions(
            response_format=inference_pb2.ResponseFormat(choices=["yes", "no"])))
    assert to_input(request).choices == ("yes", "no")
    assert to_input(request).json_schema is None


def test_response_format_is_read_from_the_proto():
    request = inference_pb2.CompleteRequest(
        model="m", prompt="p", options=inference_pb2.CompletionOptions(
            response_format=inference_pb2.ResponseFormat(json_schema=SCHEMA)))
    assert to_input(request).json_schema == SCHEMA
    # Set but empty is a malformed request, not free text.
    request.options.response_format.json_schema = ""
    assert to_input(request).json_schema == ""
    assert to_input(inference_pb2.CompleteRequest(model="m", prompt="p")).json_schema is None


async def test_sampling_defaults_to_greedy_and_passes_options(make_completions, engine):
    core = make_completions(default_max_tokens=7)
    await core.complete("key", inp())
    s = engine.calls[0]["sampling"]
    assert (s.temperature, s.top_p, s.max_tokens, s.stop, s.seed) == (0.0, 1.0, 7, (), None)
    await core.complete("key", inp(temperature=0.7, top_p=0.9, max_tokens=2, stop=("x",),
                                   seed=123))
    s = engine.calls[1]["sampling"]
    assert (s.temperature, s.top_p, s.max_tokens, s.stop, s.seed) == (0.7, 0.9, 2, ("x",), 123)


async def test_length_finish_and_messages(make_completions, engine):
    core = make_completions()
    result = await core.complete("key", inp(messages=(("system", "be brief"), ("user", "hi")),
                                            max_tokens=2))
    assert result.text == "the quick" and result.finish_reason == "length"
    assert result.usage.completion_tokens == 2
    assert engine.calls[0]["ids"] == [1, 10, 11, 12]  # "be brief\nhi\n" without a template


async def test_every_request_gets_its_own_engine_request_id(make_completions, engine):
    core = make_completions()
    await asyncio.gather(*[core.complete("key", inp()) for _ in range(3)],
                         core.complete("key", inp(request_id="r1")),
                         core.complete("key", inp(request_id="ev_1/1/1", on_behalf_of="a/u")))
    ids = [c["request_id"] for c in engine.calls]
    assert len(set(ids)) == 5 and not {"r1", "ev_1/1/1"} & set(ids)


async def test_stream_yields_deltas_and_usage_on_the_last_chunk(make_completions):
    core = make_completions()
    chunks = [c async for c in core.stream("key", inp())]
    assert "".join(c.delta for c in chunks) == "the quick brown fox"
    assert [c.finish_reason for c in chunks] == [None, None, None, "stop"]
    assert [c.usage for c in chunks[:-1]] == [None] * 3
    assert chunks[-1].usage.completion_tokens == 4


async def test_resolution_errors_pass_through(make_completions, engine):
    core = make_completions()
    with pytest.raises(errors.NotFound):
        await core.complete("key", inp(model="nope"))
    assert engine.calls == []


async def test_model_of_another_base_is_failed_precondition(make_completions, resolver, fakes):
    from services.inference.adapters import ResolvedModel
    resolver.models["big"] = ResolvedModel(model="big", base_model="llama-70b")
    core = make_completions()
    with pytest.raises(errors.FailedPrecondition, match="llama-70b"):
        await core.complete("key", inp(model="big"))


async def test_too_many_in_flight_is_resource_exhausted(make_completions, engine):
    core = make_completions(max_in_flight=2)
    engine.gate = asyncio.Event()
    running = [asyncio.create_task(core.complete("key", inp())) for _ in range(2)]
    await wait_until_async(lambda: core.in_flight >= 2 and len(engine.calls) >= 2, 10,
                           "two completions in flight at the engine", every_s=0)
    with pytest.raises(errors.ResourceExhausted) as info:
        await core.complete("key", inp())
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    engine.gate.set()
    await asyncio.gather(*running)
    assert core.in_flight == 0
    await core.complete("key", inp())  # room again


async def test_a_request_cancelled_before_its_first_token_is_aborted_and_not_billed(
        make_completions, engine, reporter, usage):
    core = make_completions()
    engine.gate = asyncio.Event()
    task = asyncio.create_task(core.complete("key", inp()))
    await engine.started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.aborted == [engine.calls[0]["request_id"]]
    assert core.in_flight == 0
    await usage.flush()
    assert reporter.records == []


async def test_a_request_cancelled_mid_answer_is_billed_for_the_tokens_generated(
        make_completions, engine, reporter, usage):
    """The engine had generated two tokens when the caller (or its deadline) cancelled: the
    row counts the prompt and those two, not max_tokens and not the answer's full length."""
    core = make_completions()
    engine.gate, engine.hold_after = asyncio.Event(), 2
    task = asyncio.create_task(core.complete("key", inp(max_tokens=4)))
    while len(engine.calls) == 0 or core.in_flight == 0:
        await asyncio.sleep(0)
    for _ in range(20):   # let the two ungated words through
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.aborted == [engine.calls[0]["request_id"]]
    await usage.flush()
    [record] = reporter.records
    assert (record.usage.prompt_tokens, record.usage.completion_tokens) == \
        (len(engine.calls[0]["ids"]), 2)
    assert record.request_id == engine.calls[0]["request_id"]


async def test_stream_closed_early_aborts_and_bills_what_was_generated(make_completions, engine,
                                                                       reporter, usage):
    core = make_completions()
    stream = core.stream("key", inp())
    first = await anext(stream)
    assert first.delta == "the"
    await stream.aclose()
    assert engine.aborted == [engine.calls[0]["request_id"]]
    await usage.flush()
    [record] = reporter.records
    assert record.usage.completion_tokens == 1


async def test_an_interrupted_generation_is_not_billed(make_completions, engine, reporter, usage):
    """The engine, not the caller, ended it: the caller retries, and pays once."""
    core = make_completions()
    engine.finish_reason_override = "abort"
    with pytest.raises(errors.Unavailable):
        await core.complete("key", inp())
    await usage.flush()
    assert reporter.records == []


async def test_finished_request_is_not_aborted(make_completions, engine):
    core = make_completions()
    await core.complete("key", inp())
    assert engine.aborted == []


async def test_engine_side_abort_is_unavailable(make_completions, engine):
    core = make_completions()
    engine.finish_reason_override = "abort"
    with pytest.raises(errors.Unavailable):
        await core.complete("key", inp())


async def test_usage_is_recorded_before_the_answer_and_survives_control_being_down(
        make_completions, reporter, usage):
    reporter.fail = True
    core = make_completions()
    result = await core.complete("key", inp())
    assert result.text == "the quick brown fox"
    assert usage.store.counts() == (1, 0)   # in the outbox before complete() returned
    assert await usage.flush() == 1         # control down: kept, not lost
    reporter.fail = False
    assert await usage.flush() == 0
    [record] = reporter.records
    assert record.request_id == result.request_id  # no caller id: the answer names the row


async def test_a_retry_under_the_callers_request_id_is_the_same_answer_billed_once(
        make_completions, reporter, usage, engine):
    core = make_completions()
    first = await core.complete("key", inp(request_id="mine", temperature=1.0))
    second = await core.complete("key", inp(request_id="mine", temperature=1.0))
    streamed = [c async for c in core.stream("key", inp(request_id="mine", temperature=1.0))]
    await usage.flush()
    assert len(engine.calls) == 1                       # generated once
    assert first == second and first.request_id == "mine"
    assert "".join(c.delta for c in streamed) == first.text
    assert (streamed[-1].finish_reason, streamed[-1].usage) == (first.finish_reason, first.usage)
    [record] = reporter.records                         # billed once
    assert record.request_id != "mine" and streamed[0].request_id == record.request_id
    # Another request under the same id is refused, not answered with the first's text.
    with pytest.raises(errors.InvalidArgument, match="already used for a different request"):
        await core.complete("key", inp(request_id="mine", prompt="something else"))
    other = await core.complete("key", inp(request_id="yours", temperature=1.0))
    await usage.flush()
    assert len(engine.calls) == 2 and len(reporter.records) == 2 and other.text


async def test_duplicates_in_flight_wait_for_the_first_answer(make_completions, engine,
                                                              reporter, usage):
    core = make_completions()
    answers = await asyncio.gather(*[core.complete("key", inp(request_id="dup"))
                                     for _ in range(4)])
    await usage.flush()
    assert len(engine.calls) == 1 and len(reporter.records) == 1
    assert len({a.text for a in answers}) == 1


async def test_a_kept_answer_survives_a_restart_and_expires(make_completions, engine, reporter,
                                                            tmp_path):
    """The answer is in the outbox file with its usage row: a new process (a new store on the
    same file) still answers the retry from it, until the retention has passed."""
    core = make_completions()
    first = await core.complete("key", inp(request_id="kept"))
    path = tmp_path / "outbox.sqlite3"
    reopened = OutboxStore(path)
    kept = reopened.answered("acct", "kept", now=time.time())
    assert kept is not None and kept.answer.text == first.text
    assert kept.usage == first.usage
    assert reopened.answered("acct", "kept", now=time.time() + ANSWER_RETENTION_S + 1) is None
    assert reopened.answered("other-account", "kept", now=time.time()) is None
    reopened.close()


async def test_control_acting_for_a_user_names_the_usage_row(make_completions, reporter,
                                                             usage, engine):
    """An evaluation's row retried after a lost answer: generated twice, billed once."""
    core = make_completions()
    row = inp(request_id="ev_1/1/7", on_behalf_of="acct/u7")
    await core.complete("service-token", row)
    await core.complete("service-token", row)
    await usage.flush()
    assert len({c["request_id"] for c in engine.calls}) == 2   # the engine's ids stay apart
    assert [r.request_id for r in reporter.records] == ["ev_1/1/7"]


async def test_an_answer_whose_usage_cannot_be_recorded_is_withheld(make_completions, usage,
                                                                    caplog):
    usage.store.close()  # the disk is gone
    core = make_completions()
    with pytest.raises(errors.Unavailable, match="usage could not be recorded"):
        await core.complete("key", inp())
    assert "could not record usage" in caplog.text


# --- the servicer: protos in and out ----------------------------------------------------------

async def test_servicer_converts_protos(make_completions, engine):
    servicer = InferenceServicer(make_completions())
    _principal.set("key")
    request = inference_pb2.CompleteRequest(
        model="tiny", prompt="hello there", request_id="abc",
        options=inference_pb2.CompletionOptions(max_tokens=3, temperature=0.5, stop=["."]))
    response = await servicer.Complete(request, None)
    assert response.text == "the quick brown" and response.finish_reason == "length"
    assert (response.usage.prompt_tokens, response.usage.completion_tokens,
            response.usage.total_tokens) == (3, 3, 6)
    assert response.request_id == "abc" and response.model == "tiny"
    s = engine.calls[0]["sampling"]
    assert (s.max_tokens, s.temperature, s.stop, s.seed) == (3, 0.5, (".",), None)


async def test_servicer_streams(make_completions):
    servicer = InferenceServicer(make_completions())
    _principal.set("key")
    request = inference_pb2.CompleteRequest(model="tiny", prompt="hi")
    responses = [r async for r in servicer.CompleteStream(request, None)]
    assert "".join(r.delta for r in responses) == "the quick brown fox"
    assert not responses[0].HasField("usage")
    assert responses[-1].finish_reason == "stop"
    assert responses[-1].usage.total_tokens == 2 + 4
    # The first message names the usage row; no other message repeats it.
    assert responses[0].request_id and not any(r.request_id for r in responses[1:])


async def test_servicer_before_the_engine_is_ready_is_unavailable():
    servicer = InferenceServicer()
    with pytest.raises(errors.Unavailable):
        await servicer.Complete(inference_pb2.CompleteRequest(model="m", prompt="p"), None)


def test_unset_options_stay_unset():
    got = to_input(inference_pb2.CompleteRequest(model="m", prompt="p"))
    assert (got.temperature, got.top_p, got.max_tokens, got.seed, got.stop) == (
        None, None, None, None, ())
    got = to_input(inference_pb2.CompleteRequest(
        model="m", prompt="p", options=inference_pb2.CompletionOptions(temperature=0, seed=0)))
    assert (got.temperature, got.seed) == (0.0, 0)


async def test_a_conversation_the_template_refuses_is_invalid_argument(make_completions,
                                                                      engine):
    from jinja2 import TemplateError

    def refuse(*args, **kwargs):
        raise TemplateError("Conversation roles must alternate user/assistant")

    engine.tokenizer.chat_template = "strict"
    engine.tokenizer.apply_chat_template = refuse
    core = make_completions()
    with pytest.raises(errors.InvalidArgument, match="roles must alternate"):
        await core.complete("key", inp(messages=(("user", "a"), ("user", "b"))))
    assert engine.calls == []
