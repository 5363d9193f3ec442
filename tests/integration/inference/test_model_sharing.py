"""A model shared across accounts, over real gRPC: account `default` imports a real LoRA
adapter and shares it with account `acme` (created with the operator's provisioning command);
acme COMPLETEs it through the real inference engine as `default.team.public.bot`, billed to
acme, and sees nothing else of it; the owner sees acme's usage aggregated; a revoke stops acme
within the resolution cache TTL (1 s here, 30 s by default)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time

import grpc
import pytest
from control_components import control_components
from control_processes import ScriptedCluster
from typer.testing import CliRunner

from finetune.control.v1 import models_pb2, models_pb2_grpc, usage_pb2, usage_pb2_grpc
from finetune.inference.v1 import inference_pb2, inference_pb2_grpc
from services.cli import main
from services.cli.client import FinetuneClient
from services.control import provisioning
from services.control.app import ControlApp
from services.openai_api.control import GrpcControl
from services.openai_api.model_routes import model_object

pytestmark = pytest.mark.integration

SERVICE_TOKEN = "svc-token-for-tests"   # the inference config's (conftest.make_config)
CACHE_TTL_S = 1                         # control's resolve cache TTL: bounds a revoke's delay
BOT = "team.public.bot"
SHARED = f"default.{BOT}"               # how acme names it
PROMPT = "What is the capital of France?"


def auth(key):
    return (("authorization", f"Bearer {key}"),)


class Stack:
    def __init__(self, control: ControlApp, inference_address: str, base_model: str,
                 owner_key: str, other_key: str):
        self.control, self.inference_address = control, inference_address
        self.base_model, self.owner_key, self.other_key = base_model, owner_key, other_key

    def client(self, key: str) -> FinetuneClient:
        return FinetuneClient(self.control.address, self.inference_address, key)

    def cli(self, key: str, *args: str):
        return CliRunner().invoke(main.app, ["--control", self.control.address, "--inference",
                                             self.inference_address, "--api-key", key, *args],
                                  env={"COLUMNS": "250"})

    async def complete(self, key: str, model: str) -> inference_pb2.CompleteResponse:
        async with grpc.aio.insecure_channel(self.inference_address) as channel:
            return await inference_pb2_grpc.InferenceServiceStub(channel).Complete(
                inference_pb2.CompleteRequest(model=model, prompt=PROMPT,
                                              options=inference_pb2.CompletionOptions(
                                                  max_tokens=8)),
                metadata=auth(key), timeout=300)

    async def control_call(self, key: str, stub, method: str, request):
        async with grpc.aio.insecure_channel(self.control.address) as channel:
            call = getattr(stub(channel), method)(request, metadata=auth(key))
            if isinstance(call, grpc.aio.UnaryStreamCall):
                return [item async for item in call]
            return await call


def create_account(home, account: str) -> str:
    """The operator's way to a second account: its administrator's key, printed once."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert provisioning.main(["create-account", account, "--admin-user", "root",
                                  "--home", str(home)]) == 0
    return out.getvalue().strip().splitlines()[-1].rsplit(" ", 1)[-1]


@pytest.fixture(scope="module")
async def stack(base_model_spec, serve_inference, random_adapter, tmp_path_factory):
    home = tmp_path_factory.mktemp("control-home")
    with control_components(home, base_model_spec, service_token=SERVICE_TOKEN,
                            dispatcher=ScriptedCluster(), port=0,
                            resolve_cache_ttl_s=CACHE_TTL_S) as components:
        app = ControlApp(components)
        await app.start(reconcile=False, evaluate=False)
        try:
            owner_key = components.config.bootstrap_key_file.read_text().strip()
            other_key = await asyncio.to_thread(create_account, home, "acme")
            with FinetuneClient(app.address, "", owner_key) as client:
                await asyncio.to_thread(client.import_model, BOT, base_model_spec.name,
                                        random_adapter(seed=77))
            async with serve_inference(app.address) as (server, _):
                yield Stack(app, server.address, base_model_spec.name, owner_key, other_key)
        finally:
            await app.stop(0)


async def _code(awaitable) -> grpc.StatusCode:
    try:
        await awaitable
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def _inference_usage(stack: Stack, key: str) -> list:
    reply = await stack.control_call(key, usage_pb2_grpc.UsageServiceStub, "ListInferenceUsage",
                                     usage_pb2.ListInferenceUsageRequest())
    return list(reply.usage)


async def test_a_shared_model_answers_the_other_account_and_is_billed_to_it(stack):
    pd = grpc.StatusCode.PERMISSION_DENIED
    # Not shared yet: the same answer as for a model that does not exist (AIP-211).
    assert await _code(stack.complete(stack.other_key, SHARED)) == pd
    assert await _code(stack.complete(stack.other_key, "default.team.public.ghost")) == pd

    result = await asyncio.to_thread(stack.cli, stack.owner_key, "access", "grant", "usage",
                                     "model", BOT, "--to-account", "acme")
    assert result.exit_code == 0, result.output
    shown = await asyncio.to_thread(stack.cli, stack.owner_key, "access", "show-grants",
                                    "--on", f"model:{BOT}")
    assert "ACCOUNT" in shown.output and "acme" in shown.output, shown.output
    listed = await asyncio.to_thread(stack.cli, stack.other_key, "models", "--shared")
    assert SHARED in listed.output and listed.exit_code == 0, listed.output
    # The OpenAI door's control client lists it with acme's models (GET /v1/models), as the
    # owner's; the owner's own list is unchanged.
    async with grpc.aio.insecure_channel(stack.control.address) as channel:
        door = GrpcControl(channel)
        theirs_listed = await door.shared_models(stack.other_key)
        assert [(m.name, m.owner_account, m.shared) for m in theirs_listed] == [
            (SHARED, "default", True)]
        assert model_object(theirs_listed[0])["owned_by"] == "default"
        assert await door.shared_models(stack.owner_key) == []
        assert [m.name for m in await door.models(stack.owner_key)] == [BOT]

    theirs = await stack.complete(stack.other_key, SHARED)
    mine = await stack.complete(stack.owner_key, BOT)
    base = await stack.complete(stack.owner_key, stack.base_model)
    assert theirs.text == mine.text          # the owner's adapter, greedy
    assert theirs.text != base.text          # and an adapter indeed

    # Billed to acme, under the shared name; the owner's list has only its own call.
    deadline = time.monotonic() + 30
    while not (rows := await _inference_usage(stack, stack.other_key)):
        assert time.monotonic() < deadline, "acme's usage row never arrived"
        await asyncio.sleep(0.2)
    assert [(r.model, r.prompt_tokens, r.completion_tokens) for r in rows] == [
        (SHARED, theirs.usage.prompt_tokens, theirs.usage.completion_tokens)]
    while len(await _inference_usage(stack, stack.owner_key)) < 2:
        assert time.monotonic() < deadline, "the owner's usage rows never arrived"
        await asyncio.sleep(0.2)
    own = await _inference_usage(stack, stack.owner_key)
    assert theirs.request_id not in {r.request_id for r in own}
    # The owner sees acme's use of its model, aggregated.
    groups = await stack.control_call(
        stack.owner_key, usage_pb2_grpc.UsageServiceStub, "AggregateInferenceUsage",
        usage_pb2.AggregateInferenceUsageRequest(
            shared_models=True, group_by=[usage_pb2.GROUP_BY_MODEL,
                                          usage_pb2.GROUP_BY_ACCOUNT]))
    assert [(g.model, g.account, g.requests, g.total_tokens) for g in groups.groups] == [
        (BOT, "acme", 1, theirs.usage.total_tokens)]

    # Nothing else of the owner's: files, export, the owner's name of it.
    described = await stack.control_call(stack.other_key, models_pb2_grpc.ModelServiceStub,
                                         "GetModel", models_pb2.GetModelRequest(name=SHARED))
    assert (described.shared, described.owner_account, list(described.artifacts),
            described.job_id) == (True, "default", [], "")
    for method, request in (
            ("GetModelArtifact", models_pb2.GetModelArtifactRequest(
                name=SHARED, artifact="adapter_config.json")),
            ("ExportModel", models_pb2.ExportModelRequest(name=SHARED)),
            ("DeleteModel", models_pb2.DeleteModelRequest(name=SHARED))):
        assert await _code(stack.control_call(stack.other_key, models_pb2_grpc.ModelServiceStub,
                                              method, request)) == pd, method
    # Three parts name acme's own models, and acme (its ACCOUNTADMIN here) has no such model.
    assert await _code(stack.complete(stack.other_key, BOT)) == grpc.StatusCode.NOT_FOUND

    # Revoked: refused once the resolution cache's entry expires (CACHE_TTL_S here).
    result = await asyncio.to_thread(stack.cli, stack.owner_key, "access", "revoke", "usage",
                                     "model", BOT, "--from-account", "acme")
    assert result.exit_code == 0, result.output
    await asyncio.sleep(CACHE_TTL_S + 0.5)
    assert await _code(stack.complete(stack.other_key, SHARED)) == pd
    assert (await stack.complete(stack.owner_key, BOT)).text == mine.text


async def test_bad_share_requests_say_why(stack):
    cases = (
        (("access", "grant", "ownership", "model", BOT, "--to-account", "acme"),
         "INVALID_ARGUMENT", "only USAGE on a MODEL"),
        (("access", "grant", "usage", "schema", "team.public", "--to-account", "acme"),
         "INVALID_ARGUMENT", "only USAGE on a MODEL"),
        (("access", "grant", "usage", "model", BOT, "--to-account", "default"),
         "INVALID_ARGUMENT", "your own account"),
        (("access", "grant", "usage", "model", BOT, "--to-account", "globex"),
         "NOT_FOUND", "account globex"),
        (("access", "grant", "usage", "model", "team.public.ghost", "--to-account", "acme"),
         "NOT_FOUND", "team.public.ghost"))
    for args, code, message in cases:
        result = await asyncio.to_thread(stack.cli, stack.owner_key, *args)
        assert result.exit_code == 1 and code in result.output and message in result.output, (
            args, result.output)
    result = await asyncio.to_thread(stack.cli, stack.other_key, "access", "grant", "usage",
                                     "model", SHARED, "--to-account", "globex")   # owner only
    assert result.exit_code == 1 and "PERMISSION_DENIED" in result.output, result.output
    result = await asyncio.to_thread(stack.cli, stack.owner_key, "access", "grant", "usage",
                                     "model", BOT)
    assert result.exit_code == 2 and "name a grantee" in result.output, result.output
