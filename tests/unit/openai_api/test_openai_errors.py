"""The one mapping from the project's errors and control's status codes to OpenAI's bodies."""

from __future__ import annotations

import grpc
import pytest

from services.common import errors
from services.openai_api.errors import InvalidRequest, for_exception, validation_param


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


@pytest.mark.parametrize("error, status, type_", [
    (errors.InvalidArgument("bad"), 400, "invalid_request_error"),
    (errors.Unauthenticated("bad"), 401, "authentication_error"),
    (errors.PermissionDenied("bad"), 403, "permission_error"),
    (errors.NotFound("bad"), 404, "not_found_error"),
    (errors.AlreadyExists("bad"), 409, "conflict_error"),
    (errors.FailedPrecondition("bad"), 409, "conflict_error"),
    (errors.ResourceExhausted("bad"), 429, "rate_limit_error"),
    (errors.Unavailable("bad"), 503, "server_error"),
    (errors.DeadlineExceeded("bad"), 504, "server_error"),
])
def test_domain_errors_and_control_statuses_map_alike(error, status, type_):
    for exc in (error, rpc_error(error.code, "bad")):
        got_status, body = for_exception(exc)
        assert got_status == status
        message = body["error"]["message"]
        if isinstance(exc, grpc.aio.AioRpcError) and status == 503:
            message = "bad"   # control unreachable says so in its own words (below)
        assert {**body["error"], "message": message} == {
            "message": "bad", "type": type_, "param": None, "code": error.code.name.lower()}


def test_unexpected_errors_are_500_with_a_generic_message():
    for exc in (RuntimeError("secret path /etc/x"), errors.FinetuneError("secret"),
                rpc_error(grpc.StatusCode.INTERNAL, "secret"),
                rpc_error(grpc.StatusCode.DATA_LOSS, "secret")):
        status, body = for_exception(exc)
        assert status == 500
        assert body["error"]["message"] == "internal error" and "secret" not in str(body)


def test_control_unreachable_is_503_without_channel_details():
    status, body = for_exception(rpc_error(grpc.StatusCode.UNAVAILABLE,
                                           "failed to connect to all addresses; 10.0.0.1"))
    assert status == 503 and "10.0.0.1" not in body["error"]["message"]


def test_the_field_at_fault_is_the_param():
    _, body = for_exception(InvalidRequest("n is not supported", "n"))
    assert body["error"]["param"] == "n" and body["error"]["code"] == "invalid_argument"
    assert validation_param(("body", "messages", 0, "role")) == "messages.0.role"
    assert validation_param(("body",)) is None
