"""The shared server bootstrap on a real loopback port: auth, error mapping, health, reflection."""

import errno
import os

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from finetune.control.v1 import access_pb2, access_pb2_grpc, jobs_pb2, jobs_pb2_grpc
from services.common.errors import NotFound, Unauthenticated
from services.common.interceptors import AuthInterceptor, current_principal
from services.common.server import GrpcServer, Registration

pytestmark = pytest.mark.integration


class Access(access_pb2_grpc.AccessServiceServicer):
    async def WhoAmI(self, request, context):
        who = current_principal()
        if who == "crash":
            raise ValueError("secret detail")
        if who == "missing":
            raise NotFound("no such thing")
        if who == "full":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/srv/secret/artifacts/x")
        return access_pb2.Principal(user_name=who)


class Jobs(jobs_pb2_grpc.FineTuningServiceServicer):
    async def WatchFineTuningJob(self, request, context):
        yield jobs_pb2.FineTuningJob(id=request.id)
        raise NotFound(f"job {request.id} vanished")


async def authenticate(method, token):
    if token is None:
        raise Unauthenticated("missing API key")
    return token


@pytest.fixture
async def server():
    srv = GrpcServer("127.0.0.1:0", [
        Registration(access_pb2_grpc.add_AccessServiceServicer_to_server, Access(),
                     "finetune.control.v1.AccessService"),
        Registration(jobs_pb2_grpc.add_FineTuningServiceServicer_to_server, Jobs(),
                     "finetune.control.v1.FineTuningService"),
    ], interceptors=[AuthInterceptor(authenticate)])
    await srv.start()
    yield srv
    await srv.stop(0)


def _call(address, key):
    metadata = [("authorization", f"Bearer {key}")] if key else []
    async def run():
        async with grpc.aio.insecure_channel(address) as ch:
            return await access_pb2_grpc.AccessServiceStub(ch).WhoAmI(
                access_pb2.WhoAmIRequest(), metadata=metadata)
    return run()


async def test_principal_reaches_the_handler(server):
    assert (await _call(server.address, "alice")).user_name == "alice"


@pytest.mark.parametrize("key,code,detail", [
    (None, grpc.StatusCode.UNAUTHENTICATED, "missing API key"),
    ("missing", grpc.StatusCode.NOT_FOUND, "no such thing"),
    ("crash", grpc.StatusCode.INTERNAL, "internal error"),
    ("full", grpc.StatusCode.RESOURCE_EXHAUSTED, "the service's storage is full (No space left "
     "on device); nothing was saved, retry once an operator has freed space"),
])
async def test_errors_map_to_status_codes(server, key, code, detail):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _call(server.address, key)
    assert err.value.code() == code
    assert err.value.details() == detail
    assert "secret" not in err.value.details()


async def test_streams_map_errors_after_items(server):
    async with grpc.aio.insecure_channel(server.address) as ch:
        stream = jobs_pb2_grpc.FineTuningServiceStub(ch).WatchFineTuningJob(
            jobs_pb2.WatchFineTuningJobRequest(id="ft_1"), metadata=[("authorization", "Bearer k")])
        got = []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for job in stream:
                got.append(job.id)
    assert got == ["ft_1"]
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_health_needs_no_key_and_flips_on_stop(server):
    async with grpc.aio.insecure_channel(server.address) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        res = await health.Check(health_pb2.HealthCheckRequest(
            service="finetune.control.v1.AccessService"))
        assert res.status == health_pb2.HealthCheckResponse.SERVING
        await server.set_serving()
        await server._set_all(health_pb2.HealthCheckResponse.NOT_SERVING)
        res = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert res.status == health_pb2.HealthCheckResponse.NOT_SERVING
