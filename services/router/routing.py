"""Forwarding COMPLETE to the engine of the model's base model.

The router decides only where a call goes. Privileges, limits and usage stay with control and
the engine: the engine is called with the caller's key and resolves the model again (from its
own cache), so a call through the router is checked and counted exactly as a direct one.
"""

from __future__ import annotations

import logging
from typing import AsyncGenerator, Mapping

import grpc

from finetune.inference.v1 import inference_pb2, inference_pb2_grpc
from services.common import errors
from services.common.server import MAX_MESSAGE_BYTES
from services.inference.adapters import ModelResolver
from services.inference.completions import Chunk, Completion, CompletionInput
from services.inference.servicer import ON_BEHALF_OF_HEADER, from_proto, to_request

log = logging.getLogger(__name__)

CHANNEL_OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]


def parse_engines(specs: list[str]) -> dict[str, str]:
    """`base_model=host:port` pairs (flags, or one comma-separated variable) as a table."""
    table: dict[str, str] = {}
    for spec in specs:
        for item in filter(None, (s.strip() for s in spec.split(","))):
            name, sep, address = item.partition("=")
            if not sep or not name.strip() or ":" not in address:
                raise ValueError(f"an engine is base_model=host:port, not {item!r}")
            if name.strip() in table:
                raise ValueError(f"base model {name.strip()!r} has two engines")
            table[name.strip()] = address.strip()
    if not table:
        raise ValueError("the router needs at least one engine (--engine base_model=host:port)")
    return table


class Engines:
    """One channel per engine; opened on the running event loop."""

    def __init__(self, addresses: Mapping[str, str]):
        self.addresses = dict(addresses)
        self._channels = {name: grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
                          for name, address in self.addresses.items()}
        self._stubs = {name: inference_pb2_grpc.InferenceServiceStub(channel)
                       for name, channel in self._channels.items()}

    def stub(self, base_model: str) -> inference_pb2_grpc.InferenceServiceStub:
        stub = self._stubs.get(base_model)
        if stub is None:
            raise errors.FailedPrecondition(
                f"base model {base_model} is not served behind this address (it serves "
                f"{', '.join(sorted(self._stubs))})")
        return stub

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()


def engine_error(exc: grpc.aio.AioRpcError, base_model: str) -> errors.FinetuneError:
    """The engine's answer as our own: the caller's errors unchanged, the engine's trouble as
    UNAVAILABLE (retry) or DEADLINE_EXCEEDED, anything else as a generic INTERNAL."""
    passed = errors.passed_on(exc.code(), exc.details())
    if passed is not None:
        return passed
    if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
        return errors.DeadlineExceeded(exc.details() or "deadline exceeded")
    if exc.code() is grpc.StatusCode.UNAVAILABLE:
        log.warning("engine %s unavailable: %s", base_model, exc.details())
        return errors.Unavailable(f"the engine serving {base_model} is unavailable, retry later")
    log.error("engine %s answered %s: %s", base_model, exc.code().name, exc.details())
    return errors.FinetuneError("internal error")


class RoutedCompletions:
    """The COMPLETE core of the router (services.inference.servicer.CompletionService and the
    CompletionsCore the OpenAI door calls): resolve, pick the engine, forward."""

    def __init__(self, resolver: ModelResolver, engines: Engines, timeout_s: float = 600.0):
        self._resolver = resolver
        self._engines = engines
        self._timeout_s = timeout_s

    async def _route(self, api_key: str, inp: CompletionInput
                     ) -> tuple[str, inference_pb2_grpc.InferenceServiceStub]:
        if not inp.model:
            raise errors.InvalidArgument("model is required")
        resolved = await self._resolver.resolve(api_key, inp.model, inp.on_behalf_of)
        return resolved.base_model, self._engines.stub(resolved.base_model)

    @staticmethod
    def _metadata(api_key: str, inp: CompletionInput) -> tuple[tuple[str, str], ...]:
        auth = (("authorization", f"Bearer {api_key}"),)
        return auth + ((ON_BEHALF_OF_HEADER, inp.on_behalf_of),) if inp.on_behalf_of else auth

    async def check_caller(self, api_key: str, base_model: str) -> None:
        await self._resolver.resolve(api_key, base_model, "")

    async def complete(self, api_key: str, inp: CompletionInput) -> Completion:
        base_model, stub = await self._route(api_key, inp)
        try:
            r = await stub.Complete(to_request(inp), metadata=self._metadata(api_key, inp),
                                    timeout=self._timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise engine_error(exc, base_model) from None
        return Completion(request_id=r.request_id, model=r.model or inp.model, text=r.text,
                          finish_reason=r.finish_reason, usage=from_proto(r.usage))

    async def stream(self, api_key: str, inp: CompletionInput,
                     usage_id: str | None = None) -> AsyncGenerator[Chunk, None]:
        # usage_id is the engine's to choose (it keys the usage row; the first chunk names
        # it): an id from the router's caller would let that caller merge rows.
        base_model, stub = await self._route(api_key, inp)
        call = stub.CompleteStream(to_request(inp), metadata=self._metadata(api_key, inp),
                                   timeout=self._timeout_s)
        try:
            async for r in call:
                yield Chunk(r.delta, r.finish_reason or None,
                            from_proto(r.usage) if r.HasField("usage") else None,
                            r.request_id or None)
        except grpc.aio.AioRpcError as exc:
            raise engine_error(exc, base_model) from None
        finally:
            call.cancel()   # the caller left early: the engine aborts the generation now

    async def engine(self, api_key: str, base_model: str) -> inference_pb2.Engine:
        """GetEngine of one engine; without a name, of the only one."""
        names = sorted(self._engines.addresses)
        # The caller's key is judged first (by control), as an engine does: a bad key learns
        # nothing of what is served here.
        await self.check_caller(api_key, base_model or names[0])
        if not base_model:
            if len(names) > 1:
                raise errors.InvalidArgument("several engines are behind this address: name "
                                             f"base_model (one of {', '.join(names)})")
            base_model = names[0]
        stub = self._engines.stub(base_model)
        try:
            return await stub.GetEngine(inference_pb2.GetEngineRequest(base_model=base_model),
                                        metadata=(("authorization", f"Bearer {api_key}"),),
                                        timeout=60)
        except grpc.aio.AioRpcError as exc:
            raise engine_error(exc, base_model) from None
