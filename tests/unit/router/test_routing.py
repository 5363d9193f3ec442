"""The router's decisions, behind fakes of the resolver and the engines' stubs: where a call
goes, what reaches the engine, and what the caller sees when the engine answers an error."""

from __future__ import annotations

import grpc
import pytest

from finetune.inference.v1 import inference_pb2
from services.common import errors
from services.inference.adapters import ResolvedModel
from services.inference.completions import CompletionInput
from services.inference.servicer import to_input, to_request
from services.router.config import parse_config
from services.router.routing import RoutedCompletions, parse_engines

BASES = {"db.public.a_model": "base-a", "base-a": "base-a", "db.public.b_model": "base-b",
         "base-b": "base-b", "db.public.elsewhere": "base-c"}


class FakeResolver:
    def __init__(self):
        self.calls = []

    async def resolve(self, api_key, model, on_behalf_of=""):
        self.calls.append((api_key, model, on_behalf_of))
        if model not in BASES:
            raise errors.NotFound(f"model {model} does not exist or is not authorized")
        return ResolvedModel(model=model, base_model=BASES[model])


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


class FakeCall:
    """A server stream: its messages, then an optional error; notes a cancel."""

    def __init__(self, messages, error=None):
        self._messages, self._error, self.cancelled = messages, error, False

    async def _iterate(self):
        for m in self._messages:
            yield m
        if self._error is not None:
            raise self._error

    def __aiter__(self):
        return self._iterate()

    def cancel(self):
        self.cancelled = True


class FakeStub:
    def __init__(self, name: str, error: grpc.aio.AioRpcError | None = None):
        self.name, self.error, self.calls, self.streams = name, error, [], []

    async def Complete(self, request, metadata, timeout):
        self.calls.append((request, dict(metadata)))
        if self.error is not None:
            raise self.error
        return inference_pb2.CompleteResponse(
            text=f"from {self.name}", finish_reason="stop", model=request.model,
            request_id="usage-1", usage=inference_pb2.Usage(prompt_tokens=3,
                                                            completion_tokens=2))

    def CompleteStream(self, request, metadata, timeout):
        self.calls.append((request, dict(metadata)))
        call = FakeCall([
            inference_pb2.CompleteStreamResponse(delta="x", request_id="usage-2"),
            inference_pb2.CompleteStreamResponse(
                delta="y", finish_reason="stop",
                usage=inference_pb2.Usage(prompt_tokens=3, completion_tokens=2))],
            self.error)
        self.streams.append(call)
        return call

    async def GetEngine(self, request, metadata, timeout):
        return inference_pb2.Engine(base_model=request.base_model)


class FakeEngines:
    def __init__(self, stubs):
        self.addresses = {name: f"{name}:1" for name in stubs}
        self._stubs = stubs

    def stub(self, base_model):
        if base_model not in self._stubs:
            raise errors.FailedPrecondition(f"base model {base_model} is not served here")
        return self._stubs[base_model]


@pytest.fixture
def stubs():
    return {"base-a": FakeStub("base-a"), "base-b": FakeStub("base-b")}


@pytest.fixture
def routes(stubs):
    return RoutedCompletions(FakeResolver(), FakeEngines(stubs))


async def test_a_call_goes_to_the_engine_of_its_models_base(routes, stubs):
    result = await routes.complete("key-1", CompletionInput(model="db.public.b_model",
                                                            prompt="hi", max_tokens=4))
    assert (result.text, result.request_id, result.usage.total_tokens) == (
        "from base-b", "usage-1", 5)
    assert not stubs["base-a"].calls
    request, metadata = stubs["base-b"].calls[0]
    assert to_input(request) == CompletionInput(model="db.public.b_model", prompt="hi",
                                                max_tokens=4)
    assert metadata == {"authorization": "Bearer key-1"}   # the caller's key, not ours


async def test_delegation_is_forwarded_for_the_engine_to_judge(routes, stubs):
    inp = CompletionInput(model="base-a", prompt="hi", on_behalf_of="acct/user")
    await routes.complete("service-token", inp)
    assert stubs["base-a"].calls[0][1]["x-finetune-on-behalf-of"] == "acct/user"
    assert routes._resolver.calls[-1] == ("service-token", "base-a", "acct/user")


async def test_a_stream_names_the_engines_usage_row_on_its_first_chunk(routes, stubs):
    chunks = [c async for c in routes.stream("k", CompletionInput(model="base-a", prompt="p"),
                                             usage_id="the-callers-choice")]
    assert [c.delta for c in chunks] == ["x", "y"]
    assert chunks[0].request_id == "usage-2" and chunks[-1].usage.total_tokens == 5
    assert chunks[-1].finish_reason == "stop" and chunks[0].finish_reason is None
    assert stubs["base-a"].streams[0].cancelled   # the engine's call is always closed


async def test_resolution_errors_reach_no_engine(routes, stubs):
    with pytest.raises(errors.NotFound):
        await routes.complete("k", CompletionInput(model="db.public.nope", prompt="p"))
    with pytest.raises(errors.FailedPrecondition, match="base-c"):
        await routes.complete("k", CompletionInput(model="db.public.elsewhere", prompt="p"))
    with pytest.raises(errors.InvalidArgument):
        await routes.complete("k", CompletionInput(model="", prompt="p"))
    assert not any(s.calls for s in stubs.values())


@pytest.mark.parametrize("code,expected,message", [
    (grpc.StatusCode.PERMISSION_DENIED, errors.PermissionDenied, "USAGE on model"),
    (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidArgument, "temperature"),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, errors.ResourceExhausted, "too many"),
    (grpc.StatusCode.UNAVAILABLE, errors.Unavailable, "the engine serving base-b"),
    (grpc.StatusCode.DEADLINE_EXCEEDED, errors.DeadlineExceeded, "deadline"),
    (grpc.StatusCode.INTERNAL, errors.FinetuneError, "internal error"),
])
async def test_engine_errors_as_the_caller_sees_them(stubs, code, expected, message):
    stubs["base-b"].error = rpc_error(code, f"{message} (engine detail)")
    routes = RoutedCompletions(FakeResolver(), FakeEngines(stubs))
    inp = CompletionInput(model="db.public.b_model", prompt="p")
    with pytest.raises(expected, match=message) as raised:
        await routes.complete("k", inp)
    assert raised.value.code == (expected.code if expected is not errors.FinetuneError
                                 else grpc.StatusCode.INTERNAL)
    if code is grpc.StatusCode.INTERNAL:
        assert "engine detail" not in raised.value.message   # never the engine's detail
    with pytest.raises(expected):
        [c async for c in routes.stream("k", inp)]


async def test_get_engine_needs_a_name_when_several_are_behind(routes):
    assert (await routes.engine("k", "base-b")).base_model == "base-b"
    assert routes._resolver.calls[-1] == ("k", "base-b", "")   # the key judged first
    with pytest.raises(errors.InvalidArgument, match="base-a, base-b"):
        await routes.engine("k", "")
    single = RoutedCompletions(FakeResolver(), FakeEngines({"base-a": FakeStub("base-a")}))
    assert (await single.engine("k", "")).base_model == "base-a"
    with pytest.raises(errors.NotFound):   # control's answer for a base it does not know
        await routes.engine("k", "base-z")


@pytest.mark.parametrize("inp", [
    CompletionInput(model="m", prompt="p"),
    CompletionInput(model="m", messages=(("system", "be brief"), ("user", "hi")),
                    temperature=0.0, top_p=0.9, max_tokens=7, stop=(".", "\n"), seed=0,
                    request_id="r-1", json_schema='{"type": "object"}'),
    CompletionInput(model="m", prompt="p", json_schema=""),
    CompletionInput(model="m", prompt="p", choices=("yes", "no")),
])
def test_a_forwarded_request_is_the_request(inp):
    assert to_input(to_request(inp)) == inp


def test_engines_are_base_model_address_pairs():
    assert parse_engines(["a=h1:1", "b=h2:2,c=[::1]:3"]) == {"a": "h1:1", "b": "h2:2",
                                                            "c": "[::1]:3"}
    for bad in (["a"], ["a=host"], ["=h:1"], ["a=h:1", "a=h:2"], [""]):
        with pytest.raises(ValueError):
            parse_engines(bad)


def test_config_reads_engines_from_flags_or_the_environment():
    env = {"FINETUNE_SERVICE_TOKEN": "t", "FINETUNE_ROUTER_ENGINES": "a=h:1,b=h:2"}
    assert dict(parse_config([], env).engines) == {"a": "h:1", "b": "h:2"}
    assert dict(parse_config(["--engine", "c=h:3"], env).engines) == {"c": "h:3"}
    with pytest.raises(SystemExit):
        parse_config([], {"FINETUNE_SERVICE_TOKEN": "t"})     # no engine
    with pytest.raises(SystemExit):
        parse_config(["--engine", "a=h:1"], {})               # no service token
