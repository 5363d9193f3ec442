"""Delegation: control's evaluations call COMPLETE with the service token and
x-finetune-on-behalf-of; inference passes both to ResolveModel and never mixes a delegated
resolution with the caller's own in its cache."""

import pytest

from finetune.control.v1 import internal_pb2
from finetune.inference.v1 import inference_pb2
from services.common import errors
from services.common.interceptors import _principal
from services.inference.adapters import CachedResolver, GrpcModelResolver
from services.inference.servicer import InferenceServicer


class Context:
    def __init__(self, metadata):
        self._metadata = metadata

    def invocation_metadata(self):
        return self._metadata


async def test_the_servicer_passes_the_header_to_the_resolver(make_completions, resolver):
    servicer = InferenceServicer(make_completions())
    _principal.set("service-token")
    request = inference_pb2.CompleteRequest(model="tiny", prompt="hi")
    await servicer.Complete(request, Context((("authorization", "Bearer service-token"),
                                              ("x-finetune-on-behalf-of", "acct/u7"))))
    await servicer.Complete(request, Context((("authorization", "Bearer service-token"),)))
    assert resolver.calls == [("service-token", "tiny", "acct/u7"), ("service-token", "tiny")]


async def test_the_cache_keeps_delegated_answers_apart(fakes):
    inner = fakes.FakeResolver({"m": fakes.base_resolution("m")})
    cache = CachedResolver(inner, ttl_s=30)
    await cache.resolve("svc", "m", "acct/u1")
    await cache.resolve("svc", "m", "acct/u1")      # cached
    await cache.resolve("svc", "m", "acct/u2")      # another user: resolved on its own
    await cache.resolve("svc", "m")                 # the token acting for itself: too
    assert inner.calls == [("svc", "m", "acct/u1"), ("svc", "m", "acct/u2"), ("svc", "m")]


class RecordingStub:
    def __init__(self):
        self.requests = []

    async def ResolveModel(self, request, metadata=None, timeout=None):
        self.requests.append(request)
        return internal_pb2.ResolvedModel(account_id="acct", user_id="u7", model="m",
                                          base_model="tiny")


async def test_the_grpc_resolver_sends_the_user_it_acts_for():
    resolver = GrpcModelResolver.__new__(GrpcModelResolver)
    resolver._stub, resolver._metadata, resolver._timeout_s = RecordingStub(), (), 1.0
    resolved = await resolver.resolve("svc", "m", "acct/u7")
    sent = resolver._stub.requests[0]
    assert (sent.api_key, sent.on_behalf_of_account_id, sent.on_behalf_of_user_id) == \
        ("svc", "acct", "u7")
    assert (resolved.account_id, resolved.user_id) == ("acct", "u7")
    await resolver.resolve("key", "m")
    assert resolver._stub.requests[1].on_behalf_of_user_id == ""


@pytest.mark.parametrize("header", ["acct", "/u7", "acct/"])
async def test_a_malformed_header_is_invalid_argument(header):
    resolver = GrpcModelResolver.__new__(GrpcModelResolver)
    resolver._stub, resolver._metadata, resolver._timeout_s = RecordingStub(), (), 1.0
    with pytest.raises(errors.InvalidArgument):
        await resolver.resolve("svc", "m", header)
    assert resolver._stub.requests == []
