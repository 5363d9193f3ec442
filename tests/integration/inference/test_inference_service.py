"""COMPLETE end to end on loopback: the real gRPC server, the real vLLM engine on the default base
model, real peft adapters, and control's model resolution as a real gRPC service."""

from __future__ import annotations

import asyncio
import json

import grpc
import jsonschema
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from transformers import AutoTokenizer

from finetune.inference.v1 import inference_pb2, inference_pb2_grpc
from services.common.chat_format import prompt_token_ids

pytestmark = pytest.mark.integration

PROMPT = "What is the capital of France?"
# The models the fake control in conftest.py serves.
MODEL_A = "db.public.model_a"
MODEL_B = "db.public.model_b"
BROKEN = "db.public.broken"


@pytest.fixture(scope="module")
def tokenizer(base_model_spec):
    return AutoTokenizer.from_pretrained(base_model_spec.path)


def request(model, prompt=PROMPT, **options):
    return inference_pb2.CompleteRequest(
        model=model, prompt=prompt, options=inference_pb2.CompletionOptions(**options))


async def complete(inference, req, key="key-alice", timeout=300):
    async with inference.channel() as ch:
        return await inference_pb2_grpc.InferenceServiceStub(ch).Complete(
            req, metadata=inference.metadata(key), timeout=timeout)


async def stream(inference, req, key="key-alice"):
    async with inference.channel() as ch:
        call = inference_pb2_grpc.InferenceServiceStub(ch).CompleteStream(
            req, metadata=inference.metadata(key), timeout=300)
        return [r async for r in call]


async def code_of(coro):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await coro
    return info.value.code(), info.value.details()


def test_model_names_match_the_fake_control(names):
    assert (names.MODEL_A, names.MODEL_B, names.BROKEN) == (MODEL_A, MODEL_B, BROKEN)


async def test_health_is_serving(inference):
    async with inference.channel() as ch:
        got = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="finetune.inference.v1.InferenceService"))
    assert got.status == health_pb2.HealthCheckResponse.SERVING


async def test_base_model_completes_with_exact_usage(inference, tokenizer, base_model_spec):
    r = await complete(inference, request(base_model_spec.name, max_tokens=64))
    assert r.text.strip()
    assert r.finish_reason == "stop"  # greedy; the base model answers briefly and ends its turn
    assert r.model == base_model_spec.name and r.request_id
    expected_prompt = len(prompt_token_ids(tokenizer, prompt=PROMPT))
    assert r.usage.prompt_tokens == expected_prompt
    # The completion is its text's tokens plus the end-of-turn token that ended it.
    assert r.usage.completion_tokens == len(tokenizer(r.text, add_special_tokens=False)
                                            ["input_ids"]) + 1
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


async def test_length_limit_counts_exactly_max_tokens(inference, tokenizer, base_model_spec):
    r = await complete(inference, request(base_model_spec.name, max_tokens=3))
    assert r.finish_reason == "length"
    assert r.usage.completion_tokens == 3
    assert r.usage.prompt_tokens == len(prompt_token_ids(tokenizer, prompt=PROMPT))


async def test_chat_messages_are_rendered_with_the_template(inference, tokenizer,
                                                            base_model_spec):
    messages = [{"role": "system", "content": "Answer in one word."},
                {"role": "user", "content": "Name a colour."}]
    req = inference_pb2.CompleteRequest(
        model=base_model_spec.name,
        messages=[inference_pb2.ChatMessage(**m) for m in messages],
        options=inference_pb2.CompletionOptions(max_tokens=4))
    r = await complete(inference, req)
    assert r.usage.prompt_tokens == len(prompt_token_ids(tokenizer, messages=messages))


async def test_adapters_change_the_output(inference, base_model_spec):
    base, a, b = await asyncio.gather(
        *[complete(inference, request(m, max_tokens=16)) for m in
          (base_model_spec.name, MODEL_A, MODEL_B)])
    assert a.text != base.text
    assert b.text != base.text and b.text != a.text
    assert a.model == MODEL_A


async def test_the_lora_kernel_runs_in_the_engine_worker(inference):
    from services.inference import lora_kernel

    # Where no C compiler could build it, the engine runs the same wrapper with torch products
    # (and the kernel's unit tests say why they skipped).
    expected = "kernel" if lora_kernel.available() else "fused"
    assert await inference.engine.lora_path() == expected


async def test_mixed_batches_answer_as_each_request_alone(inference, base_model_spec):
    """Base, adapter A and adapter B in one batch give exactly their greedy answers alone.

    With vLLM CPU's own LoRA ops the base requests in such a batch get an adapter applied.
    """
    models = [base_model_spec.name, MODEL_A, MODEL_B]
    prompts = ["What is the capital of France?", "Name three fruits.", "Count to five."]
    alone = {}
    for m in models:
        for p in prompts:
            alone[m, p] = (await complete(inference, request(m, p, max_tokens=12))).text
    pairs = [(m, p) for p in prompts for m in models]
    together = await asyncio.gather(*[complete(inference, request(m, p, max_tokens=12))
                                      for m, p in pairs])
    mismatches = [(m, p, alone[m, p], r.text) for (m, p), r in zip(pairs, together)
                  if r.text != alone[m, p]]
    assert mismatches == []


async def test_usage_reaches_control(inference, base_model_spec):
    r = await complete(inference, request(MODEL_B, max_tokens=5), key="key-bob")
    assert await inference.usage.flush(timeout_s=60) == 0
    # No request_id from the caller: the answer carries the id of its one usage row.
    u = inference.control.usage[r.request_id]
    assert (u.account_id, u.user_id, u.model, u.base_model) == (
        "acct-1", "bob", MODEL_B, base_model_spec.name)
    assert (u.prompt_tokens, u.completion_tokens) == (r.usage.prompt_tokens,
                                                      r.usage.completion_tokens)


async def test_streaming_matches_the_unary_answer(inference):
    unary = await complete(inference, request(MODEL_A, max_tokens=20))
    parts = await stream(inference, request(MODEL_A, max_tokens=20))
    assert len(parts) > 1
    assert "".join(p.delta for p in parts) == unary.text
    assert all(not p.HasField("usage") and not p.finish_reason for p in parts[:-1])
    assert parts[-1].finish_reason == unary.finish_reason
    assert parts[-1].usage == unary.usage


PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 24},
                   "age": {"type": "integer", "minimum": 0, "maximum": 150},
                   "colours": {"type": "array", "items": {"enum": ["red", "green", "blue"]},
                               "maxItems": 3}},
    "required": ["name", "age", "colours"],
    "additionalProperties": False,
}


def json_format(schema) -> inference_pb2.ResponseFormat:
    return inference_pb2.ResponseFormat(json_schema=json.dumps(schema))


@pytest.mark.parametrize("model", ["base", MODEL_A])
async def test_a_json_schema_response_is_valid_json(inference, base_model_spec, model):
    model = base_model_spec.name if model == "base" else model
    r = await complete(inference, request(
        model, "Describe a person: their name, age and favourite colours.", max_tokens=160,
        response_format=json_format(PERSON)))
    assert r.finish_reason == "stop", r.text
    jsonschema.validate(json.loads(r.text), PERSON)


async def test_a_streamed_json_schema_response_is_valid_json(inference):
    parts = await stream(inference, request(
        MODEL_B, "Describe a person as JSON.", max_tokens=160,
        response_format=json_format(PERSON)))
    assert parts[-1].finish_reason == "stop"
    jsonschema.validate(json.loads("".join(p.delta for p in parts)), PERSON)


LABELS = ["card_arrival", "lost_or_stolen_card", "top_up_failed", "exchange_rate"]


@pytest.mark.parametrize("model", ["base", MODEL_A])
async def test_choices_make_the_answer_one_of_them(inference, base_model_spec, model):
    model = base_model_spec.name if model == "base" else model
    prompts = ["My card has not arrived yet", "I think someone stole my card",
               "Why did my top up fail?"]
    for prompt in prompts:
        r = await complete(inference, request(
            model, prompt, max_tokens=16,
            response_format=inference_pb2.ResponseFormat(choices=LABELS)))
        assert r.text in LABELS and r.finish_reason == "stop", r.text
        # Exact accounting holds under a constraint: the label's tokens and the end of turn.
        assert 1 <= r.usage.completion_tokens <= 16
    free = await complete(inference, request(model, prompts[0], max_tokens=16))
    assert free.text not in LABELS   # the constraint is what made the answers labels


async def test_without_a_schema_the_same_prompt_is_not_json(inference, base_model_spec):
    # Shows the constraint is what makes the answers above JSON.
    r = await complete(inference, request(
        base_model_spec.name, "Describe a person: their name, age and favourite colours.",
        max_tokens=40))
    with pytest.raises(ValueError):
        json.loads(r.text)


@pytest.mark.parametrize("key, model, options, code", [
    (None, "base", {}, grpc.StatusCode.UNAUTHENTICATED),
    ("ft_not_a_key", "base", {}, grpc.StatusCode.UNAUTHENTICATED),
    ("key-bob", MODEL_A, {}, grpc.StatusCode.PERMISSION_DENIED),
    ("key-alice", "db.public.nope", {}, grpc.StatusCode.NOT_FOUND),
    ("key-alice", BROKEN, {}, grpc.StatusCode.FAILED_PRECONDITION),
    ("key-alice", "base", {"temperature": 3.0}, grpc.StatusCode.INVALID_ARGUMENT),
    ("key-alice", "base", {"max_tokens": 0}, grpc.StatusCode.INVALID_ARGUMENT),
    ("key-alice", "base", {"max_tokens": 4096}, grpc.StatusCode.INVALID_ARGUMENT),
    ("key-alice", "base", {"response_format": inference_pb2.ResponseFormat(json_schema="{")},
     grpc.StatusCode.INVALID_ARGUMENT),
    ("key-alice", "base", {"response_format": inference_pb2.ResponseFormat(
        json_schema='{"type": "object", "properties": {"a": {"type": "nope"}}}')},
     grpc.StatusCode.INVALID_ARGUMENT),
    ("key-alice", "base", {"response_format": inference_pb2.ResponseFormat(
        json_schema='{"type": "object"}', choices=["a"])}, grpc.StatusCode.INVALID_ARGUMENT),
    ("key-alice", "base", {"response_format": inference_pb2.ResponseFormat(choices=["a", ""])},
     grpc.StatusCode.INVALID_ARGUMENT),
])
async def test_errors_have_the_documented_codes(inference, base_model_spec, key, model,
                                                options, code):
    model = base_model_spec.name if model == "base" else model
    got, details = await code_of(complete(inference, request(model, **options), key=key))
    assert got == code, details


async def test_broken_adapter_message_says_why(inference):
    got, details = await code_of(complete(inference, request(BROKEN)))
    assert got == grpc.StatusCode.FAILED_PRECONDITION
    assert "pickle" in details and "safetensors" in details


async def test_empty_and_too_long_prompts_are_invalid(inference, base_model_spec):
    got, _ = await code_of(complete(inference, request(base_model_spec.name, prompt="")))
    assert got == grpc.StatusCode.INVALID_ARGUMENT
    too_long = "word " * 3000
    got, details = await code_of(complete(inference, request(base_model_spec.name,
                                                             prompt=too_long)))
    assert got == grpc.StatusCode.INVALID_ARGUMENT and "context window" in details


async def test_streaming_errors_have_codes(inference):
    got, _ = await code_of(stream(inference, request("db.public.nope")))
    assert got == grpc.StatusCode.NOT_FOUND


async def _wait_for_abort(engine):
    # Bounded so a missing abort fails the test instead of hanging it.
    await asyncio.wait_for(engine.aborted.wait(), timeout=120)
    request_id, still_running = engine.aborts[-1]
    engine.aborted.clear()
    return request_id, still_running


async def test_a_stream_cancelled_under_load_is_aborted_and_billed_for_what_was_generated(
        inference, tokenizer):
    """Eight other requests share the engine while a caller reads three chunks of a long
    answer and hangs up: the engine drops the request, and its usage row counts the prompt
    and the tokens generated up to the abort (at least the chunks read, far fewer than asked
    for); the others are answered and billed as usual."""
    inference.engine.aborted.clear()
    prompt = "Write a very long story about a dragon."
    async with inference.channel() as ch:
        stub = inference_pb2_grpc.InferenceServiceStub(ch)
        load = [asyncio.ensure_future(stub.Complete(request(MODEL_A, f"Count to {i}.",
                                                            max_tokens=48),
                                                    metadata=inference.metadata(), timeout=300))
                for i in range(8)]
        call = stub.CompleteStream(request(MODEL_A, prompt, max_tokens=1500),
                                   metadata=inference.metadata())
        read = [await call.read() for _ in range(3)]
        assert all(chunk.delta for chunk in read)
        call.cancel()
        request_id, _ = await _wait_for_abort(inference.engine)
        others = await asyncio.gather(*load)
    assert request_id.startswith("cmpl-")
    # The others are done and nothing is left: vLLM no longer holds the cancelled one, which
    # would run on for its 1500 tokens.
    assert inference.engine.num_unfinished_requests() == 0
    assert await inference.usage.flush(timeout_s=60) == 0
    billed = inference.control.usage[request_id]
    assert billed.prompt_tokens == len(prompt_token_ids(tokenizer, prompt=prompt))
    assert len(read) <= billed.completion_tokens < 1500   # each chunk is 1+ tokens
    assert all(inference.control.usage[r.request_id].completion_tokens
               == r.usage.completion_tokens for r in others)


async def test_a_burst_past_the_admission_limit_is_refused_and_nothing_else_is_lost(inference):
    """The fixture admits 16 requests in flight: a burst of 48 at once gets RESOURCE_EXHAUSTED
    for what does not fit, right away, while every admitted request is answered and billed
    once; the service takes new requests afterwards."""
    n = 48
    async with inference.channel() as ch:
        stub = inference_pb2_grpc.InferenceServiceStub(ch)
        results = await asyncio.gather(
            *[stub.Complete(request(MODEL_A, f"Count to {i}.", max_tokens=24),
                            metadata=inference.metadata(), timeout=300) for i in range(n)],
            return_exceptions=True)
    answered = [r for r in results if isinstance(r, inference_pb2.CompleteResponse)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(answered) + len(refused) == n
    assert {e.code() for e in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert 16 <= len(answered) < n and all(r.usage.completion_tokens > 0 for r in answered)
    assert "retry later" in refused[0].details()
    assert await inference.usage.flush(timeout_s=60) == 0
    assert all(inference.control.usage[r.request_id].completion_tokens
               == r.usage.completion_tokens for r in answered)
    after = await complete(inference, request(MODEL_A, max_tokens=4))
    assert after.usage.completion_tokens > 0


async def test_deadline_aborts_the_engine_request(inference):
    inference.engine.aborted.clear()
    got, _ = await code_of(complete(inference, request(
        MODEL_B, "Write a very long story about a castle.", max_tokens=1500), timeout=1.0))
    assert got == grpc.StatusCode.DEADLINE_EXCEEDED
    _, still_running = await _wait_for_abort(inference.engine)
    assert still_running == 0


async def test_control_unreachable_is_unavailable(names):
    import socket

    from services.common.errors import Unavailable
    from services.inference.adapters import GrpcModelResolver

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        resolver = GrpcModelResolver(ch, names.SERVICE_TOKEN, timeout_s=5)
        with pytest.raises(Unavailable, match="retry later"):
            await resolver.resolve("key-alice", MODEL_A)



async def test_get_engine_tells_the_base_model_and_its_precision(inference, base_model_spec):
    async with inference.channel() as ch:
        stub = inference_pb2_grpc.InferenceServiceStub(ch)
        engine = await stub.GetEngine(inference_pb2.GetEngineRequest(),
                                      metadata=inference.metadata(), timeout=30)
        # The test engine asks for float32 (see conftest): a request is not measured.
        assert (engine.base_model, engine.dtype, engine.precision_source) == (
            base_model_spec.name, "float32", "requested")
        assert engine.max_model_len == 2048 and engine.max_loras == 2
        assert list(engine.probe) == []
        for key in ("key-nobody", None):
            code, _ = await code_of(stub.GetEngine(inference_pb2.GetEngineRequest(),
                                                   metadata=inference.metadata(key), timeout=30))
            assert code == grpc.StatusCode.UNAUTHENTICATED
