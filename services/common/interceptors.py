"""Server interceptors shared by every service: authentication first, then error mapping."""

from __future__ import annotations

import asyncio
import contextvars
import errno
import inspect
import logging
import os
import time
from typing import Any, Awaitable, Callable

import grpc

from services.common.errors import FinetuneError, Unauthenticated
from services.common.metrics import RpcMetrics

log = logging.getLogger(__name__)

# The authenticated caller of the current RPC; set by AuthInterceptor, read by servicers.
_principal: contextvars.ContextVar[Any] = contextvars.ContextVar("finetune_principal")

# A write that failed for want of space (disk or quota): RESOURCE_EXHAUSTED, not INTERNAL.
STORAGE_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})

# Methods that never need a key (health checks, reflection).
PUBLIC_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def current_principal() -> Any:
    """The principal the AuthInterceptor attached to this RPC."""
    try:
        return _principal.get()
    except LookupError:  # a handler reached without the interceptor: a wiring bug
        raise Unauthenticated("missing credentials") from None


def bearer_token(metadata) -> str | None:
    for key, value in metadata or ():
        if key.lower() == "authorization":
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


def _wrap_handler(handler: grpc.RpcMethodHandler, wrap) -> grpc.RpcMethodHandler:
    """Return a copy of `handler` whose behaviour is wrapped by `wrap(behaviour, streaming_out)`."""
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            wrap(handler.unary_unary, False),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            wrap(handler.unary_stream, True),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            wrap(handler.stream_unary, False),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return grpc.stream_stream_rpc_method_handler(
        wrap(handler.stream_stream, True),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


async def _abort_for(exc: BaseException, context: grpc.aio.ServicerContext, method: str):
    if isinstance(exc, FinetuneError):
        await context.abort(exc.code, exc.message)
    if isinstance(exc, OSError) and exc.errno in STORAGE_FULL:
        # Not the caller's fault, nor a bug: say so, without the service's paths.
        log.error("%s: storage is full: %s", method, exc)
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"the service's storage is full ({os.strerror(exc.errno)}); "
                            "nothing was saved, retry once an operator has freed space")
    log.exception("unexpected error in %s", method, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Maps FinetuneError to its status code; anything unexpected to a generic INTERNAL."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method

        def wrap(behaviour, streaming_out):
            if streaming_out:
                async def stream(request, context):
                    try:
                        async for item in behaviour(request, context):
                            yield item
                    except (grpc.aio.AbortError, GeneratorExit):
                        raise
                    except BaseException as exc:  # noqa: BLE001 - mapped, then re-raised as abort
                        if _is_cancel(exc):
                            raise
                        await _abort_for(exc, context, method)
                return stream

            async def unary(request, context):
                try:
                    return await behaviour(request, context)
                except grpc.aio.AbortError:
                    raise
                except BaseException as exc:  # noqa: BLE001
                    if _is_cancel(exc):
                        raise
                    await _abort_for(exc, context, method)
            return unary

        return _wrap_handler(handler, wrap)


async def _relay(result):
    """A streaming handler's messages: its async generator's, or none for a handler written
    with context.write() (a coroutine)."""
    if inspect.isasyncgen(result):
        async for item in result:
            yield item
    else:
        await result


def _is_cancel(exc: BaseException) -> bool:
    return isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt, SystemExit))


Authenticate = Callable[[str, str | None], Awaitable[Any]]


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks the bearer key before anything else runs and attaches the principal.

    `authenticate(method, token)` returns the principal or raises Unauthenticated /
    PermissionDenied. It runs before the handler, so an unauthenticated caller learns nothing.
    """

    def __init__(self, authenticate: Authenticate):
        self._authenticate = authenticate

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(PUBLIC_METHOD_PREFIXES):
            return handler
        token = bearer_token(handler_call_details.invocation_metadata)
        authenticate = self._authenticate

        def wrap(behaviour, streaming_out):
            async def check(context):
                try:
                    return await authenticate(method, token)
                except FinetuneError as exc:
                    await context.abort(exc.code, exc.message)

            if streaming_out:
                async def stream(request, context):
                    _principal.set(await check(context))
                    async for item in _relay(behaviour(request, context)):
                        yield item
                return stream

            async def unary(request, context):
                _principal.set(await check(context))
                return await behaviour(request, context)
            return unary

        return _wrap_handler(handler, wrap)


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts each RPC by method and final status code, and times it to its answer (a stream's
    last message). Installed first, so that calls the auth interceptor refuses count too."""

    def __init__(self, metrics: RpcMetrics):
        self._metrics = metrics

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        metrics = self._metrics

        def observe(context, started: float, cancelled: bool) -> None:
            code = context.code()
            if code is None:   # nothing set it: a normal return, or the client went away
                code = grpc.StatusCode.CANCELLED if cancelled else grpc.StatusCode.OK
            metrics.observe(method, code.name, time.perf_counter() - started)

        def wrap(behaviour, streaming_out):
            if streaming_out:
                async def stream(request, context):
                    started, cancelled = time.perf_counter(), False
                    try:
                        async for item in _relay(behaviour(request, context)):
                            yield item
                    except (asyncio.CancelledError, GeneratorExit):
                        cancelled = True
                        raise
                    finally:
                        observe(context, started, cancelled)
                return stream

            async def unary(request, context):
                started, cancelled = time.perf_counter(), False
                try:
                    return await behaviour(request, context)
                except asyncio.CancelledError:
                    cancelled = True
                    raise
                finally:
                    observe(context, started, cancelled)
            return unary

        return _wrap_handler(handler, wrap)
