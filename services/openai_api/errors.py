"""The one mapping from the project's errors to OpenAI's error bodies and HTTP status codes.

Both kinds of failure a handler meets map through the same table: the domain errors of
services.common.errors (raised by the COMPLETE core and by this package) and the gRPC status of
a call to control. The body is OpenAI's, `{"error": {"message", "type", "param", "code"}}`, with
`code` the gRPC status name in lower case, so a client sees the same vocabulary either way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from services.common.errors import FinetuneError, InvalidArgument

log = logging.getLogger(__name__)

GENERIC_MESSAGE = "internal error"


@dataclass(frozen=True)
class HttpStatus:
    status: int
    type: str


# OpenAI's error types where it has one for the case; 409 for a request the object's current
# state refuses (cancel a finished job, a model still being evaluated).
STATUS: dict[grpc.StatusCode, HttpStatus] = {
    grpc.StatusCode.INVALID_ARGUMENT: HttpStatus(400, "invalid_request_error"),
    grpc.StatusCode.OUT_OF_RANGE: HttpStatus(400, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: HttpStatus(401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: HttpStatus(403, "permission_error"),
    grpc.StatusCode.NOT_FOUND: HttpStatus(404, "not_found_error"),
    grpc.StatusCode.ALREADY_EXISTS: HttpStatus(409, "conflict_error"),
    grpc.StatusCode.FAILED_PRECONDITION: HttpStatus(409, "conflict_error"),
    grpc.StatusCode.ABORTED: HttpStatus(409, "conflict_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: HttpStatus(429, "rate_limit_error"),
    grpc.StatusCode.CANCELLED: HttpStatus(499, "cancelled"),
    grpc.StatusCode.UNIMPLEMENTED: HttpStatus(501, "server_error"),
    grpc.StatusCode.UNAVAILABLE: HttpStatus(503, "server_error"),
    grpc.StatusCode.DEADLINE_EXCEEDED: HttpStatus(504, "server_error"),
}
INTERNAL = HttpStatus(500, "server_error")
# HTTP-level refusals (an unknown route, a wrong method) in the same body.
_HTTP_CODES = {404: grpc.StatusCode.NOT_FOUND, 405: grpc.StatusCode.UNIMPLEMENTED}


class InvalidRequest(InvalidArgument):
    """INVALID_ARGUMENT naming the request field at fault (OpenAI's `param`)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def error_body(message: str, type_: str, code: str | None,
               param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def for_status(code: grpc.StatusCode, message: str,
               param: str | None = None) -> tuple[int, dict[str, Any]]:
    """The HTTP status and body of a gRPC status code and its (caller-safe) message."""
    mapped = STATUS.get(code)
    if mapped is None:   # INTERNAL, UNKNOWN, DATA_LOSS: never the detail
        return INTERNAL.status, error_body(GENERIC_MESSAGE, INTERNAL.type, "internal")
    return mapped.status, error_body(message, mapped.type, code.name.lower(), param)


def for_exception(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """The HTTP status and body of anything a handler raised."""
    if isinstance(exc, FinetuneError):
        return for_status(exc.code, exc.message, getattr(exc, "param", None))
    if isinstance(exc, grpc.aio.AioRpcError):   # control answered a forwarded call
        code = exc.code()
        if code is grpc.StatusCode.UNAVAILABLE:
            log.warning("control is unavailable: %s", exc.details())
            return for_status(code, "the control service is unavailable, retry later")
        if code not in STATUS:
            log.error("control answered %s: %s", code.name, exc.details())
        return for_status(code, exc.details() or code.name.lower())
    log.error("unexpected error", exc_info=exc)
    return for_status(grpc.StatusCode.INTERNAL, GENERIC_MESSAGE)


def validation_param(loc: tuple[Any, ...] | list[Any]) -> str | None:
    """`messages.0.content` from pydantic's location ('body', 'messages', 0, 'content')."""
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "form")]
    return ".".join(parts) or None


def install(app: FastAPI) -> None:
    """Every error the app answers, in OpenAI's body."""

    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        status, body = for_exception(exc)
        return JSONResponse(body, status_code=status)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        param = validation_param(first.get("loc", ()))
        message = first.get("msg", "invalid request")
        status, body = for_status(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"{param}: {message}" if param else message, param)
        return JSONResponse(body, status_code=status)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        code = _HTTP_CODES.get(exc.status_code, grpc.StatusCode.INVALID_ARGUMENT)
        _, body = for_status(code, str(exc.detail))
        return JSONResponse(body, status_code=exc.status_code)

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(FinetuneError, on_error)
    app.add_exception_handler(grpc.aio.AioRpcError, on_error)
    app.add_exception_handler(Exception, on_error)
