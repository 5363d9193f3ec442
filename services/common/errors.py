"""The one error vocabulary of the project and its mapping to gRPC status codes.

Domain code raises these; the interceptor in `services.common.interceptors` turns them into
status codes. Anything else that escapes a handler becomes INTERNAL with a generic message.
"""

from __future__ import annotations

import grpc


class FinetuneError(Exception):
    """Base class: an error whose message is safe to show the caller."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidArgument(FinetuneError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class Unauthenticated(FinetuneError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(FinetuneError):
    code = grpc.StatusCode.PERMISSION_DENIED


class NotFound(FinetuneError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(FinetuneError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(FinetuneError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(FinetuneError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(FinetuneError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(FinetuneError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


# The status codes whose message one service passes on to its own caller unchanged when the
# service it called answered with them: they are about the caller's request, not our health.
_PASSED_ON: dict[grpc.StatusCode, type[FinetuneError]] = {
    cls.code: cls for cls in (Unauthenticated, PermissionDenied, NotFound, FailedPrecondition,
                              InvalidArgument, ResourceExhausted)}


def passed_on(code: grpc.StatusCode, details: str | None) -> FinetuneError | None:
    """The error to raise for another service's answer `code`, or None when that answer is
    about the other service (UNAVAILABLE, INTERNAL, ...) and the caller deserves our own."""
    cls = _PASSED_ON.get(code)
    return cls(details or code.name.lower()) if cls is not None else None
