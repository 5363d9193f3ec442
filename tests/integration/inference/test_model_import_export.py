"""Adapters trained elsewhere, in and out, over real gRPC: a LoRA adapter written by plain peft
on the default base model is imported into a real control service (by upload through the CLI,
and back from its exported folder by URI), answers COMPLETE through the real inference engine as
transformers + peft answer, broken adapters are refused while the engine keeps serving, and the
export loads with peft.PeftModel.from_pretrained with the original's weights."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import tarfile
from pathlib import Path

import grpc
import pytest
import torch
from control_components import control_components
from control_processes import ScriptedCluster
from safetensors.torch import load_file
from typer.testing import CliRunner

from finetune.control.v1 import models_pb2, models_pb2_grpc
from finetune.inference.v1 import inference_pb2, inference_pb2_grpc
from services.cli import main
from services.cli.client import FinetuneClient
from services.common.chat_format import prompt_token_ids
from services.control.app import ControlApp

pytestmark = pytest.mark.integration

SERVICE_TOKEN = "svc-token-for-tests"   # the inference config's (conftest.make_config)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPTS = ["What is the capital of France?", "Name three fruits."]
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def peft_adapter(base_model_spec, tmp_path_factory) -> Path:
    """Written by plain peft: get_peft_model on the base model, save_pretrained. Random
    weights, and an alpha that makes them change the answers."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(11)
    model = AutoModelForCausalLM.from_pretrained(base_model_spec.path, dtype=torch.float32)
    out = tmp_path_factory.mktemp("elsewhere") / "my-adapter"
    get_peft_model(model, LoraConfig(r=8, lora_alpha=64, init_lora_weights=False,
                                     target_modules=TARGETS, task_type="CAUSAL_LM")) \
        .save_pretrained(out, safe_serialization=True)
    return out


class Stack:
    def __init__(self, control: ControlApp, inference_address: str, sources: Path):
        self.control = control
        self.inference_address = inference_address
        self.sources = sources     # the folder imports by URI may read from
        self.key = control.components.config.bootstrap_key_file.read_text().strip()

    def client(self) -> FinetuneClient:
        return FinetuneClient(self.control.address, self.inference_address, self.key)

    async def complete(self, model: str, prompt: str) -> inference_pb2.CompleteResponse:
        async with grpc.aio.insecure_channel(self.inference_address) as channel:
            return await inference_pb2_grpc.InferenceServiceStub(channel).Complete(
                inference_pb2.CompleteRequest(model=model, prompt=prompt,
                                              options=inference_pb2.CompletionOptions(
                                                  max_tokens=MAX_TOKENS)),
                metadata=(("authorization", f"Bearer {self.key}"),), timeout=300)


@pytest.fixture(scope="module")
async def stack(base_model_spec, serve_inference, tmp_path_factory):
    """A real control service on the default base model (its ids start at 1, far from the fake
    control's 101+ on the shared engine) and an inference server of its own on that engine."""
    sources = tmp_path_factory.mktemp("import-sources")
    with control_components(tmp_path_factory.mktemp("control-home"), base_model_spec,
                            service_token=SERVICE_TOKEN, dispatcher=ScriptedCluster(), port=0,
                            import_sources=sources.as_uri()) as components:
        app = ControlApp(components)
        await app.start(reconcile=False, evaluate=False)
        try:
            async with serve_inference(app.address) as (server, _):
                yield Stack(app, server.address, sources)
        finally:
            await app.stop(0)


@pytest.fixture(scope="module")
def peft_answers(base_model_spec, peft_adapter):
    """The same adapter applied with transformers + peft: greedy answers to PROMPTS."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model_spec.path)
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_model_spec.path, dtype=torch.float32),
        str(peft_adapter)).eval()
    answers = {}
    for prompt in PROMPTS:
        ids = torch.tensor([prompt_token_ids(tokenizer, prompt=prompt)])
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 max_new_tokens=MAX_TOKENS, do_sample=False)
        answers[prompt] = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    return answers


def cli(stack: Stack, *args: str):
    return CliRunner().invoke(main.app, ["--control", stack.control.address, "--inference",
                                         stack.inference_address, "--api-key", stack.key,
                                         *args], env={"COLUMNS": "250"})


@pytest.fixture(scope="module")
async def imported(stack, peft_adapter):
    """The peft adapter imported by `finetune models import` (an upload)."""
    result = await asyncio.to_thread(cli, stack, "models", "import", "team.public.elsewhere",
                                     "smollm2-135m-instruct", str(peft_adapter))
    assert result.exit_code == 0, result.output
    with stack.client() as client:
        return await asyncio.to_thread(client.get_model, "team.public.elsewhere")


async def test_the_imported_model_carries_its_lineage(stack, imported, peft_adapter):
    import hashlib

    assert imported.imported_from == "upload" and imported.job_id == ""
    assert dict(imported.file_sha256) == {
        name: hashlib.sha256((peft_adapter / name).read_bytes()).hexdigest()
        for name in ("adapter_config.json", "adapter_model.safetensors")}
    described = await asyncio.to_thread(cli, stack, "models", "describe", imported.name)
    assert described.exit_code == 0, described.output
    assert "imported_from" in described.output and imported.file_sha256[
        "adapter_model.safetensors"] in described.output


async def test_complete_on_the_import_answers_as_peft_does(stack, imported, peft_answers,
                                                          base_model_spec):
    for prompt in PROMPTS:
        answer = await stack.complete(imported.name, prompt)
        assert answer.text == peft_answers[prompt], prompt
        assert answer.usage.completion_tokens > 0
    base = [(await stack.complete(base_model_spec.name, p)).text for p in PROMPTS]
    assert base != [peft_answers[p] for p in PROMPTS]   # the adapter changed the answers


def _pickle(folder: Path):
    (folder / "adapter_model.safetensors").unlink()
    (folder / "adapter_model.bin").write_bytes(b"\x80\x04\x95 a pickle")


def _truncated(folder: Path):
    data = (folder / "adapter_model.safetensors").read_bytes()
    (folder / "adapter_model.safetensors").write_bytes(data[:-4096])


def _oversized_header(folder: Path):
    (folder / "adapter_model.safetensors").write_bytes((1 << 40).to_bytes(8, "little") + b"{}")


def _rank(folder: Path):
    config = json.loads((folder / "adapter_config.json").read_text())
    config["r"] = 128           # over the catalog's max_lora_rank 64
    (folder / "adapter_config.json").write_text(json.dumps(config))


def _other_base(folder: Path):
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "meta-llama/Llama-3.1-8B"
    (folder / "adapter_config.json").write_text(json.dumps(config))


def _wider_model(folder: Path):
    from safetensors.torch import save_file

    tensors = load_file(str(folder / "adapter_model.safetensors"))
    name = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    tensors[name] = torch.zeros(8, 4096)   # a hidden size of 4096, not 576
    save_file(tensors, str(folder / "adapter_model.safetensors"))


@pytest.mark.parametrize("breaks, code, reason", [
    (_pickle, grpc.StatusCode.INVALID_ARGUMENT, "pickle-based weights (adapter_model.bin)"),
    (_truncated, grpc.StatusCode.INVALID_ARGUMENT, "is truncated"),
    (_oversized_header, grpc.StatusCode.INVALID_ARGUMENT, "over the limit"),
    (_rank, grpc.StatusCode.FAILED_PRECONDITION, "rank 128 exceeds the maximum rank 64"),
    (_other_base, grpc.StatusCode.FAILED_PRECONDITION, "trained on meta-llama/Llama-3.1-8B"),
    (_wider_model, grpc.StatusCode.FAILED_PRECONDITION, "does not fit smollm2-135m-instruct"),
])
async def test_broken_adapters_are_refused_while_the_engine_serves(
        stack, imported, peft_adapter, peft_answers, tmp_path, breaks, code, reason):
    folder = Path(shutil.copytree(peft_adapter, tmp_path / "broken"))
    breaks(folder)
    # One broken import and one COMPLETE on the good model at the same time.
    with stack.client() as client:
        refused, answer = await asyncio.gather(
            asyncio.to_thread(client.import_model, "team.public.broken",
                              "smollm2-135m-instruct", folder),
            stack.complete(imported.name, PROMPTS[0]), return_exceptions=True)
    assert isinstance(refused, grpc.RpcError), refused
    assert refused.code() == code and reason in refused.details()
    assert answer.text == peft_answers[PROMPTS[0]]
    with stack.client() as client, pytest.raises(grpc.RpcError) as info:  # nothing registered
        await asyncio.to_thread(client.get_model, "team.public.broken")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_the_export_loads_with_peft_and_serves_as_it_is(stack, imported, peft_adapter,
                                                              peft_answers, base_model_spec):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    folder = stack.sources / "exported"
    result = await asyncio.to_thread(cli, stack, "models", "export", imported.name, "--out",
                                     str(folder))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "manifest.json"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["base_model"] == base_model_spec.name
    assert manifest["lineage"]["imported_sha256"] == dict(imported.file_sha256)

    # Plain peft loads it, with the original's weights.
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_model_spec.path, dtype=torch.float32),
        str(folder))
    original = load_file(str(peft_adapter / "adapter_model.safetensors"))
    loaded = {n.replace(".default", ""): t for n, t in model.state_dict().items()
              if "lora_" in n}
    assert loaded.keys() == original.keys()
    assert all(torch.equal(loaded[n], original[n]) for n in original)

    # Served as it is: imported back from the exported folder by URI, it answers the same.
    with stack.client() as client:
        again = await asyncio.to_thread(client.import_model, "team.public.roundtrip",
                                        base_model_spec.name, folder.as_uri())
    assert again.imported_from == folder.as_uri()
    assert dict(again.file_sha256) == dict(imported.file_sha256)
    answer = await stack.complete(again.name, PROMPTS[1])
    assert answer.text == peft_answers[PROMPTS[1]]


async def test_the_tar_export_holds_the_same_files_and_manifest(stack, imported, tmp_path):
    path = tmp_path / "elsewhere.tar"
    result = await asyncio.to_thread(cli, stack, "models", "export", imported.name, "--tar",
                                     str(path))
    assert result.exit_code == 0, result.output
    with tarfile.open(path) as archive:
        members = {m.name: archive.extractfile(m).read() for m in archive.getmembers()}
    async with grpc.aio.insecure_channel(stack.control.address) as channel:
        parts = [p async for p in models_pb2_grpc.ModelServiceStub(channel).ExportModel(
            models_pb2.ExportModelRequest(name=imported.name),
            metadata=(("authorization", f"Bearer {stack.key}"),))]
    files: dict[str, bytes] = {}
    for p in parts:
        files[p.file] = files.get(p.file, b"") + p.data
    assert members.keys() == files.keys()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert members[name] == files[name]
    manifest = json.load(io.BytesIO(members["manifest.json"]))
    assert manifest["model"] == imported.name and manifest["files"] == json.loads(
        files["manifest.json"])["files"]
