"""Two base models behind one address: two real engines (`python -m services.inference`, the
second on the default model's weights registered under another name) and the router in front
(`python -m services.router`), with control's model resolution on loopback. The second engine
reads its base model and its adapter only from an S3 bucket (moto's server on loopback): no
folder of the test's is shared with it.

Every answer through the router equals the engine's own, its usage is counted once by the
engine that generated it, the caller's errors come back unchanged, and losing one engine leaves
the other base model served. The tests share the processes and run in file order: the last one
kills an engine.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import grpc
import openai
import pytest
from inference_processes import free_port, health_statuses_until_serving, kill, spawn
from inference_processes import spawn_inference
from polling import wait_until_async

from finetune.inference.v1 import inference_pb2, inference_pb2_grpc
from services.common.base_models import DEFAULT_CATALOG

pytestmark = pytest.mark.integration

ALICE = (("authorization", "Bearer key-alice"),)
BOB = (("authorization", "Bearer key-bob"),)


@dataclass
class Routed:
    router: str                 # the one address
    http_url: str               # the router's OpenAI-compatible API
    engines: dict[str, str]     # base model -> its engine's own address
    procs: dict
    logs: Path


def twin_catalog(spec, twin: str, source: str, folder: Path, out: Path) -> Path:
    """The catalog plus `twin`: the default model's weights under a second name, downloaded
    from `source` into `folder`, which does not exist yet."""
    out.write_text(DEFAULT_CATALOG.read_text() + f"""
[models.{twin}]
source = "{source}"
path = {json.dumps(str(folder))}
context_window = {spec.context_window}
prompt_tokens = {spec.prompt_tokens}
completion_tokens = {spec.completion_tokens}
rows_per_epoch = {spec.rows_per_epoch}
max_lora_rank = {spec.max_lora_rank}
target_modules = {json.dumps(list(spec.target_modules))}
""")
    return out


def upload_twin(store_root: str, spec, adapter: Path, twin: str, tmp: Path) -> tuple[str, str]:
    """The default model's folder and an adapter of it declared for `twin`, into the bucket."""
    from services.common.artifacts import ArtifactStore

    store = ArtifactStore(store_root)
    base_uri, adapter_uri = store.uri("models", twin), store.uri("jobs", "ft_twin", "output")
    store.put_dir(spec.path, base_uri)
    renamed = tmp / "twin-adapter"
    shutil.copytree(adapter, renamed)
    config = json.loads((renamed / "adapter_config.json").read_text())
    (renamed / "adapter_config.json").write_text(
        json.dumps(dict(config, base_model_name_or_path=twin)))
    store.put_dir(renamed, adapter_uri)
    return base_uri, adapter_uri


@pytest.fixture(scope="module")
async def routed(router_control, names, base_model_spec, adapter_dirs, s3_server,
                 tmp_path_factory):
    tmp = tmp_path_factory.mktemp("router")
    s3_env = dict(s3_server.env, AWS_CONFIG_FILE="/nonexistent",
                  AWS_SHARED_CREDENTIALS_FILE="/nonexistent")
    bucket = s3_server.new_bucket()
    with pytest.MonkeyPatch.context() as patch:
        for key, value in s3_env.items():
            patch.setenv(key, value)
        base_uri, adapter_uri = upload_twin(f"s3://{bucket}/finetune", base_model_spec,
                                            adapter_dirs["b"], names.TWIN, tmp)
    uri, adapter_id, users, base = router_control.models[names.TWIN_MODEL]
    router_control.models[names.TWIN_MODEL] = (adapter_uri, adapter_id, users, base)
    twin_folder = tmp / "node-cache" / names.TWIN
    catalog = twin_catalog(base_model_spec, names.TWIN, base_uri, twin_folder,
                           tmp / "catalog.toml")
    base = base_model_spec.name
    ports = {base: free_port(), names.TWIN: free_port()}
    engines = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    procs = {name: spawn_inference(router_control.address, names.SERVICE_TOKEN, name, tmp,
                                   port, f"{name}.log", state=f"state-{name}",
                                   extra=("--catalog", str(catalog), "--http-port", "-1",
                                          "--adapter-cache-dir", str(tmp / f"adapters-{name}")),
                                   env=s3_env)
             for name, port in ports.items()}
    router_port, http_port = free_port(), free_port()
    procs["router"] = spawn("services.router", [
        "--port", str(router_port), "--http-port", str(http_port),
        "--control", router_control.address, "--catalog", str(catalog),
        *[arg for name, address in engines.items() for arg in ("--engine",
                                                                 f"{name}={address}")]],
        names.SERVICE_TOKEN, tmp, "router.log")
    try:
        await asyncio.gather(*(health_statuses_until_serving(address, procs[name], 400)
                               for name, address in engines.items()))
        await health_statuses_until_serving(f"127.0.0.1:{router_port}", procs["router"], 60)
        # The twin engine downloaded its base model from the bucket, into the catalog's path.
        assert sorted(p.name for p in twin_folder.iterdir()) == sorted(
            p.name for p in base_model_spec.path.iterdir() if p.is_file())
        yield Routed(f"127.0.0.1:{router_port}", f"http://127.0.0.1:{http_port}", engines,
                     procs, tmp)
    finally:
        for proc in procs.values():
            kill(proc)


def request(model: str, prompt: str = "Name a colour.", max_tokens: int = 8,
            **options) -> inference_pb2.CompleteRequest:
    return inference_pb2.CompleteRequest(
        model=model, prompt=prompt,
        options=inference_pb2.CompletionOptions(max_tokens=max_tokens, **options))


async def complete(address: str, req, metadata=ALICE) -> inference_pb2.CompleteResponse:
    async with grpc.aio.insecure_channel(address) as ch:
        return await inference_pb2_grpc.InferenceServiceStub(ch).Complete(
            req, metadata=metadata, timeout=120)


async def usage_row(control, request_id: str):
    """The usage row control got for `request_id` (the engine's outbox delivers it async)."""
    return await wait_until_async(lambda: control.usage.get(request_id), 60,
                                  f"the usage row of {request_id}", every_s=0.1)


async def status_of(address: str, req, metadata=ALICE) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await complete(address, req, metadata)
    return raised.value


async def test_each_model_is_answered_by_its_base_models_engine(routed, names, router_control,
                                                                base_model_spec):
    """Base models and fine-tuned ones on either base: the router's answer is the engine's,
    and the usage row (one per answer) names the engine's base model."""
    cases = [(base_model_spec.name, base_model_spec.name),
             (names.MODEL_A, base_model_spec.name),
             (names.TWIN, names.TWIN),
             (names.TWIN_MODEL, names.TWIN)]
    for model, base in cases:
        via_router = await complete(routed.router, request(model))
        direct = await complete(routed.engines[base], request(model))
        assert (via_router.text, via_router.finish_reason) == (direct.text, direct.finish_reason)
        assert via_router.usage == direct.usage and via_router.usage.completion_tokens > 0
        assert via_router.model == model
        row = await usage_row(router_control, via_router.request_id)
        assert (row.model, row.base_model) == (model, base)
        assert (row.prompt_tokens, row.completion_tokens) == (
            via_router.usage.prompt_tokens, via_router.usage.completion_tokens)
    # The adapter changes the answer, so the twin model really ran its adapter on the twin.
    twin_base = await complete(routed.router, request(names.TWIN, max_tokens=16))
    twin_tuned = await complete(routed.router, request(names.TWIN_MODEL, max_tokens=16))
    assert twin_base.text != twin_tuned.text


async def test_a_stream_through_the_router_is_the_answer_and_names_its_usage_row(
        routed, names, router_control):
    full = await complete(routed.router, request(names.TWIN_MODEL, max_tokens=12))
    async with grpc.aio.insecure_channel(routed.router) as ch:
        messages = [m async for m in inference_pb2_grpc.InferenceServiceStub(ch).CompleteStream(
            request(names.TWIN_MODEL, max_tokens=12), metadata=ALICE, timeout=120)]
    assert "".join(m.delta for m in messages) == full.text
    assert messages[-1].finish_reason == full.finish_reason
    assert messages[-1].usage == full.usage
    row = await usage_row(router_control, messages[0].request_id)
    assert row.completion_tokens == full.usage.completion_tokens and row.base_model == names.TWIN


async def test_the_callers_errors_come_back_unchanged(routed, names):
    async with grpc.aio.insecure_channel(routed.router) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await inference_pb2_grpc.InferenceServiceStub(ch).Complete(
                request(names.TWIN_MODEL), timeout=30)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    missing = await status_of(routed.router, request("db.public.nothing_here"))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    denied = await status_of(routed.router, request(names.MODEL_A), BOB)
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    # The engine's own checks, passed on with its message.
    hot = await status_of(routed.router, request(names.TWIN_MODEL, temperature=9.0))
    direct = await status_of(routed.engines[names.TWIN], request(names.TWIN_MODEL,
                                                                 temperature=9.0))
    assert (hot.code(), hot.details()) == (grpc.StatusCode.INVALID_ARGUMENT, direct.details())
    # A model whose base model no engine here serves.
    ghost = await status_of(routed.router, request(names.GHOST_MODEL))
    assert ghost.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert names.GHOST in ghost.details()


async def test_get_engine_names_the_engine(routed, names):
    async with grpc.aio.insecure_channel(routed.router) as ch:
        stub = inference_pb2_grpc.InferenceServiceStub(ch)
        twin = await stub.GetEngine(inference_pb2.GetEngineRequest(base_model=names.TWIN),
                                    metadata=ALICE, timeout=30)
        assert twin.base_model == names.TWIN and twin.dtype
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.GetEngine(inference_pb2.GetEngineRequest(), metadata=ALICE, timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert names.TWIN in raised.value.details()


async def test_the_openai_door_of_the_router_reaches_both_engines(routed, names,
                                                                   router_control,
                                                                   base_model_spec):
    sdk = openai.AsyncOpenAI(base_url=f"{routed.http_url}/v1", api_key="key-alice",
                             max_retries=0, timeout=120)
    messages = [{"role": "user", "content": "Name a colour."}]
    for model, base in ((names.TWIN_MODEL, names.TWIN),
                        (names.MODEL_A, base_model_spec.name)):
        reply = await sdk.chat.completions.create(model=model, messages=messages,
                                                  max_tokens=8, temperature=0)
        direct = await complete(routed.engines[base], request(model))
        assert reply.choices[0].message.content == direct.text
        stream = await sdk.chat.completions.create(
            model=model, messages=messages, max_tokens=8, temperature=0, stream=True,
            stream_options={"include_usage": True})
        chunks = [c async for c in stream]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
            direct.text
        # The stream's id is its usage row's, as on the engine's own door.
        assert (await usage_row(router_control, chunks[-1].id)).base_model == base
        assert chunks[-1].usage.total_tokens == direct.usage.total_tokens
    with pytest.raises(openai.ConflictError):   # FAILED_PRECONDITION
        await sdk.chat.completions.create(model=names.GHOST_MODEL, messages=messages,
                                          max_tokens=4)
    await sdk.close()


async def test_losing_one_engine_leaves_the_other_base_model_served(routed, names,
                                                                    base_model_spec):
    kill(routed.procs[names.TWIN])
    gone = await status_of(routed.router, request(names.TWIN_MODEL))
    assert gone.code() == grpc.StatusCode.UNAVAILABLE
    assert names.TWIN in gone.details()
    alive = await complete(routed.router, request(names.MODEL_A))
    assert alive.usage.completion_tokens > 0
