"""ImportModel and ExportModel through the ModelService servicer and the core behind it: a peft
adapter of the tiny Llama imported by upload and from a folder URI, its lineage, privileges
before existence, idempotent retries, refusals that leave nothing behind, continuation with
from_model, and exports as files and as a tar archive with its manifest."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from control_testbed import acting_as, files_under, instruction_rows, load_rows, new_user

from finetune.control.v1 import jobs_pb2, models_pb2
from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from services.control.api.jobs import FineTuningServicer
from services.control.api.models import ModelServicer
from services.control.core.model_imports import ImportSettings, ModelImports
from services.control.domain.privileges import Privilege, SecurableObject

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]   # tiny_base's catalog target modules


@pytest.fixture(scope="module")
def peft_adapter(tiny_model_dir, tmp_path_factory) -> Path:
    """Written by plain peft on the tiny Llama, declaring the catalog's name for its base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(5)
    out = tmp_path_factory.mktemp("peft") / "adapter"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS,
                                     init_lora_weights=False, task_type="CAUSAL_LM")) \
        .save_pretrained(out, safe_serialization=True)
    config = json.loads((out / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "tiny-base"
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out


@pytest.fixture
def base_config(tiny_base, tiny_model_dir):
    """tiny_base's folder gets the tiny Llama's config.json (and no weights): the adapter's
    shapes are checked against what the config computes."""
    shutil.copy(tiny_model_dir / "config.json", tiny_base.path / "config.json")


@pytest.fixture
def servicer(control, base_config):
    return ModelServicer(control.registry, control.evaluations, control.imports,
                         control.exports)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def stream(*messages):
    for m in messages:
        yield m


def upload_messages(folder: Path, name="my_adapter", base_model="tiny-base", request_id="",
                    files=("adapter_config.json", "adapter_model.safetensors"), chunk=1000):
    yield models_pb2.ImportModelRequest(header=models_pb2.ImportModelHeader(
        name=name, base_model=base_model, request_id=request_id))
    for file in files:
        data = (folder / file).read_bytes()
        for i in range(0, len(data), chunk):
            yield models_pb2.ImportModelRequest(file_chunk=models_pb2.AdapterFileChunk(
                file=file, data=data[i:i + chunk]))


async def import_upload(servicer, principal, folder, **kwargs) -> models_pb2.Model:
    with acting_as(principal):
        return await servicer.ImportModel(stream(*upload_messages(folder, **kwargs)), None)


async def import_uri(servicer, principal, uri, name="from_uri") -> models_pb2.Model:
    header = models_pb2.ImportModelHeader(name=name, base_model="tiny-base", source_uri=uri)
    with acting_as(principal):
        return await servicer.ImportModel(
            stream(models_pb2.ImportModelRequest(header=header)), None)


async def export(servicer, principal, name, fmt=models_pb2.EXPORT_FORMAT_FILES):
    with acting_as(principal):
        return [r async for r in servicer.ExportModel(
            models_pb2.ExportModelRequest(name=name, format=fmt), None)]


async def test_an_uploaded_peft_adapter_becomes_a_model(servicer, control, admin, admin_key,
                                                        peft_adapter):
    m = await import_upload(servicer, admin, peft_adapter)
    assert (m.name, m.base_model, m.job_id, m.version) == (
        "public.public.my_adapter", "tiny-base", "", 1)
    assert m.imported_from == "upload"
    assert dict(m.file_sha256) == {f: sha256(peft_adapter / f) for f in
                                   ("adapter_config.json", "adapter_model.safetensors")}
    assert sorted(m.artifacts) == ["adapter_config.json", "adapter_model.safetensors"]
    # Described, resolved for COMPLETE and owned like a trained model.
    with acting_as(admin):
        described = await servicer.GetModel(models_pb2.GetModelRequest(name="my_adapter"), None)
    assert described.imported_from == "upload" and dict(described.file_sha256) == dict(
        m.file_sha256)
    resolved = control.resolution.resolve(admin_key, "my_adapter")
    assert resolved.adapter is not None and resolved.base.name == "tiny-base"
    stored = control.artifacts.local_path(resolved.adapter.adapter_uri)
    assert sha256(stored / "adapter_model.safetensors") == m.file_sha256[
        "adapter_model.safetensors"]
    owners = control.store.run(lambda tx: tx.access.owners(
        admin.account_id, SecurableObject.model("my_adapter")))
    admin_role = control.store.run(lambda tx: tx.access.role(admin.account_id, "ACCOUNTADMIN"))
    assert owners == [admin_role.id]   # the importer's default role


async def test_a_retry_with_the_request_id_returns_the_same_model(servicer, admin,
                                                                  peft_adapter):
    first = await import_upload(servicer, admin, peft_adapter, request_id="r-1")
    # The retry is answered from the header: its files are not read again.
    again = await import_upload(servicer, admin, peft_adapter, request_id="r-1", files=())
    assert (again.name, again.version, again.created_on) == (
        first.name, first.version, first.created_on)
    with pytest.raises(AlreadyExists, match="already exists"):
        await import_upload(servicer, admin, peft_adapter, request_id="r-2")


@pytest.fixture
def ann(control, admin):
    """ann may create models in sales.public (FINETUNE_USER + CREATE MODEL), nothing else."""
    control.catalog.create_database(admin.account_id, "sales")
    d = control.directory
    d.create_role(admin, "analyst")
    d.grant_role(admin, "finetune_user", "ROLE", "analyst")
    d.grant_privilege(admin, Privilege.CREATE_MODEL, SecurableObject.schema("sales.public"),
                      "analyst")
    return new_user(control, admin.account_id, "ann", ("ANALYST",))[0]


async def test_import_needs_what_creating_a_model_needs(servicer, control, admin, ann,
                                                        peft_adapter):
    nick = new_user(control, admin.account_id, "nick")[0]
    # Privileges before anything else: an unknown base model or a taken name is not told.
    for who, name, base in ((nick, "sales.public.bot", "tiny-base"),
                            (ann, "public.public.bot", "tiny-base"),
                            (ann, "secret.public.bot", "no-such-base")):
        with pytest.raises(PermissionDenied):
            await import_upload(servicer, who, peft_adapter, name=name, base_model=base)
    m = await import_upload(servicer, ann, peft_adapter, name="sales.public.bot")
    assert m.name == "sales.public.bot"
    # ann's role owns it: export (OWNERSHIP) works for her, not for nick.
    assert await export(servicer, ann, "sales.public.bot")
    with pytest.raises(PermissionDenied):
        await export(servicer, nick, "sales.public.bot")
    with pytest.raises(PermissionDenied):   # whether or not it exists
        await export(servicer, nick, "sales.public.ghost")
    with pytest.raises(NotFound):
        await export(servicer, admin, "sales.public.ghost")


def _pickle(folder):
    (folder / "adapter_model.bin").write_bytes(b"\x80\x04pickle")


def _rank(folder):
    config = json.loads((folder / "adapter_config.json").read_text())
    config["r"] = 64
    (folder / "adapter_config.json").write_text(json.dumps(config))


def _truncated(folder):
    data = (folder / "adapter_model.safetensors").read_bytes()
    (folder / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])


def _other_base(folder):
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "mistralai/Mistral-7B-v0.1"
    (folder / "adapter_config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("breaks, files, error, reason", [
    (_pickle, ("adapter_config.json", "adapter_model.bin"), InvalidArgument,
     "pickle-based weights (adapter_model.bin)"),
    (_rank, None, FailedPrecondition, "rank 64 exceeds the maximum rank 32 served for "
                                      "tiny-base"),
    (_truncated, None, InvalidArgument, "is truncated"),
    (_other_base, None, FailedPrecondition, "trained on mistralai/Mistral-7B-v0.1"),
    (lambda f: None, ("adapter_model.safetensors",), InvalidArgument,
     "the upload has no adapter_config.json"),
    (lambda f: None, ("adapter_config.json", "adapter_model.safetensors", "README.md"),
     InvalidArgument, "unexpected file 'README.md'"),
])
async def test_refused_uploads_leave_nothing_behind(servicer, control, admin, peft_adapter,
                                                    tmp_path, breaks, files, error, reason):
    folder = Path(shutil.copytree(peft_adapter, tmp_path / "broken"))
    breaks(folder)
    (folder / "README.md").write_text("hello")
    kwargs = {"files": files} if files else {}
    with pytest.raises(error) as refused:
        await import_upload(servicer, admin, folder, **kwargs)
    assert reason in refused.value.message
    assert files_under(Path(control.artifacts.local_path(control.artifacts.uri("imports")))) \
        == set()
    assert files_under(control.catalog.spool_dir) == set()
    assert control.store.run(lambda tx: tx.models.get(admin.account_id,
                                                      "public.public.my_adapter")) is None


async def test_an_upload_over_the_limit_is_resource_exhausted(control, admin, peft_adapter,
                                                              base_config):
    small = ModelImports(control.store, control.artifacts, control.base_models,
                         control.authorizer, lambda b: b.path,
                         ImportSettings(control.catalog.spool_dir, max_bytes=5000))
    servicer = ModelServicer(control.registry, imports=small)
    with pytest.raises(ResourceExhausted, match="limit of 5000 bytes"):
        await import_upload(servicer, admin, peft_adapter)


async def test_import_from_a_folder_uri_under_an_allowed_prefix(control, admin, peft_adapter,
                                                                base_config, tmp_path):
    shared = Path(shutil.copytree(peft_adapter, tmp_path / "shared" / "adapters" / "a1"))
    default = ModelServicer(control.registry, imports=control.imports)
    with pytest.raises(FailedPrecondition, match="not enabled"):
        await import_uri(default, admin, shared.as_uri())
    allowing = ModelImports(control.store, control.artifacts, control.base_models,
                            control.authorizer, lambda b: b.path, ImportSettings(
                                control.catalog.spool_dir, 1 << 30,
                                allowed_sources=[(tmp_path / "shared").as_uri()]))
    servicer = ModelServicer(control.registry, imports=allowing)
    m = await import_uri(servicer, admin, (shared / "adapter_model.safetensors").as_uri())
    assert m.imported_from == shared.as_uri()
    assert m.file_sha256["adapter_config.json"] == sha256(shared / "adapter_config.json")
    with pytest.raises(FailedPrecondition, match="allowed only under"):
        await import_uri(servicer, admin, peft_adapter.as_uri(), name="elsewhere")
    with pytest.raises(InvalidArgument, match="segments"):
        await import_uri(servicer, admin, (tmp_path / "shared").as_uri() + "/../x", "dots")
    with pytest.raises(InvalidArgument, match="no adapter folder"):
        await import_uri(servicer, admin, (tmp_path / "shared" / "none").as_uri(), "none")
    (shared / "adapter_model.pt").write_bytes(b"PK\x03\x04")
    with pytest.raises(InvalidArgument, match="pickle"):
        await import_uri(servicer, admin, shared.as_uri(), name="pickled")


async def test_the_artifact_store_is_never_a_source(control, admin, peft_adapter, base_config,
                                                    servicer, tmp_path):
    m = await import_upload(servicer, admin, peft_adapter)
    resolved = control.store.run(lambda tx: tx.models.get(admin.account_id, m.name))
    everything = ModelImports(control.store, control.artifacts, control.base_models,
                              control.authorizer, lambda b: b.path, ImportSettings(
                                  control.catalog.spool_dir, 1 << 30,
                                  allowed_sources=["file:///"]))
    local = resolved.adapter_uri.split("://", 1)[-1]   # the same files by other names
    root = control.artifacts.root.split("://", 1)[-1]
    (tmp_path / "alias").symlink_to(root)
    linked = f"file://{tmp_path}/alias{local[len(root):]}"
    for uri in {resolved.adapter_uri, f"file://{local}", f"local://{local}",
                f"file:///{local.replace('/', '//')}", linked}:
        with pytest.raises(InvalidArgument, match="artifact store"):
            await import_uri(ModelServicer(control.registry, imports=everything), admin,
                             uri, name="stolen")


async def test_an_imported_model_is_continued_like_a_trained_one(servicer, control, admin,
                                                                 peft_adapter, dispatcher):
    m = await import_upload(servicer, admin, peft_adapter)
    load_rows(control, admin.account_id, "train", instruction_rows(6))
    jobs = FineTuningServicer(control.fine_tuning, control.events, watch_poll_s=0.2)
    with acting_as(admin):
        child = await jobs.CreateFineTuningJob(jobs_pb2.CreateFineTuningJobRequest(
            model="my_adapter_v2", training_query="SELECT prompt, completion FROM train",
            options=jobs_pb2.FineTuningOptions(from_model="my_adapter")), None)
    assert child.base_model == "tiny-base" and child.options.from_model == m.name
    spec = json.loads(control.artifacts.read_bytes(
        f"{control.artifacts.root}/jobs/{child.id}/spec.json"))
    parent = control.store.run(lambda tx: tx.models.get(admin.account_id, m.name))
    assert spec["from_adapter_uri"] == parent.adapter_uri
    assert parent.adapter_uri.startswith(f"{control.artifacts.root}/imports/im_")


async def test_export_as_files_and_as_tar_with_the_manifest(servicer, admin, peft_adapter):
    m = await import_upload(servicer, admin, peft_adapter)
    files: dict[str, bytes] = {}
    parts = await export(servicer, admin, "my_adapter")
    assert parts[0].total_bytes == sum(
        (peft_adapter / f).stat().st_size for f in m.file_sha256)
    assert all(p.total_bytes == 0 for p in parts[1:])
    for p in parts:
        files[p.file] = files.get(p.file, b"") + p.data
    assert sorted(files) == ["adapter_config.json", "adapter_model.safetensors",
                             "manifest.json"]
    for name in m.file_sha256:
        assert files[name] == (peft_adapter / name).read_bytes()
    manifest = json.loads(files["manifest.json"])
    assert (manifest["model"], manifest["base_model"], manifest["version"]) == (
        m.name, "tiny-base", 1)
    assert manifest["lineage"]["imported_from"] == "upload"
    assert manifest["lineage"]["imported_sha256"] == dict(m.file_sha256)
    assert {n: f["sha256"] for n, f in manifest["files"].items()} == dict(m.file_sha256)
    assert manifest["metrics"]["evaluations"] == []

    tar_parts = await export(servicer, admin, "my_adapter", models_pb2.EXPORT_FORMAT_TAR)
    assert all(p.file == "" for p in tar_parts)
    with tarfile.open(fileobj=io.BytesIO(b"".join(p.data for p in tar_parts))) as archive:
        members = {i.name: archive.extractfile(i).read() for i in archive.getmembers()}
    assert members.keys() == files.keys()
    assert {n: members[n] for n in m.file_sha256} == {n: files[n] for n in m.file_sha256}
    assert json.loads(members["manifest.json"])["files"] == manifest["files"]


async def test_export_of_a_trained_model_carries_its_job(control, admin, dispatcher, servicer):
    from control_testbed import succeed

    load_rows(control, admin.account_id, "train", instruction_rows(6))
    jobs = FineTuningServicer(control.fine_tuning, control.events, watch_poll_s=0.2)
    with acting_as(admin):
        job = await jobs.CreateFineTuningJob(jobs_pb2.CreateFineTuningJobRequest(
            model="trained", base_model="tiny-base",
            training_query="SELECT prompt, completion FROM train"), None)
    succeed(control, dispatcher, control.fine_tuning.get(admin, job.id))
    parts = await export(servicer, admin, "trained")
    manifest = json.loads(b"".join(p.data for p in parts if p.file == "manifest.json"))
    assert manifest["lineage"]["job_id"] == job.id
    assert manifest["lineage"]["imported_from"] is None
    assert manifest["options"]["lora_rank"] == 8
    assert manifest["metrics"]["trained_tokens"] == 4321
    assert b"".join(p.data for p in parts if p.file == "adapter_model.safetensors") == \
        b"content of adapter_model.safetensors"


def test_import_sources_come_from_the_config(tmp_path):
    from services.control.config import load_config

    config = load_config(["--home", str(tmp_path), "--import-sources",
                          "s3://team/adapters/, gs://other"])
    assert config.import_sources == ("s3://team/adapters/", "gs://other")
    assert replace(config, import_sources=()).import_sources == ()


async def test_an_imported_model_is_evaluated_and_its_export_says_so(tmp_path, tiny_base,
                                                                     dispatcher, base_config,
                                                                     peft_adapter):
    from evaluation_testbed import CODES, FakeCompletions, build_control, labelled_rows

    from services.control.core.evaluations import EvaluateModel
    from services.control.domain.evaluations import EvaluationStatus

    fake = FakeCompletions()
    fake.answers = {f"code of {word}": label for word, label in CODES.items()}
    with build_control(tmp_path / "evaluating", tiny_base, dispatcher, fake) as control:
        key = control.config.bootstrap_key_file.read_text().strip()
        admin = control.store.run(lambda tx: tx.accounts.authenticate(key))
        servicer = ModelServicer(control.registry, control.evaluations, control.imports,
                                 control.exports)
        m = await import_upload(servicer, admin, peft_adapter)
        load_rows(control, admin.account_id, "evals", labelled_rows(4))
        created = control.evaluations.create(admin, EvaluateModel(
            model=m.name, query="SELECT prompt, label FROM evals ORDER BY n"))
        done = await control.evaluation_runner.run_one(created.id)
        assert done.status is EvaluationStatus.SUCCEEDED and done.metrics["accuracy"] == 1.0
        assert {c.model for c in fake.calls} == {m.name}
        with acting_as(admin):
            described = await servicer.GetModel(models_pb2.GetModelRequest(name=m.name), None)
        assert [e.id for e in described.evaluations] == [done.id]
        parts = await export(servicer, admin, m.name)
        manifest = json.loads(b"".join(p.data for p in parts if p.file == "manifest.json"))
        assert [(e["id"], e["metrics"]["accuracy"]) for e in
                manifest["metrics"]["evaluations"]] == [(done.id, 1.0)]
