"""ModelResolutionService (inference -> control) and ModelService through their servicers."""

import pytest
from control_testbed import acting_as, instruction_rows, load_rows, new_account, succeed

from finetune.control.v1 import internal_pb2, models_pb2
from services.common.errors import (FailedPrecondition, InvalidArgument, NotFound,
                                    Unauthenticated)
from services.control.api.internal import ModelResolutionServicer
from services.control.api.models import ModelServicer
from services.control.core.jobs import CreateJob


@pytest.fixture
def resolver(control):
    return ModelResolutionServicer(control.resolution, control.inference_usage, cache_ttl_s=30)


@pytest.fixture
def models(control):
    return ModelServicer(control.registry)


@pytest.fixture
def trained(control, admin, dispatcher):
    load_rows(control, admin.account_id, "train", instruction_rows(3))
    job = control.fine_tuning.create(admin, CreateJob(
        model="db_less_model", base_model="tiny-base", training_query="SELECT * FROM train"))
    succeed(control, dispatcher, job)
    return control.registry.get(admin, "db_less_model")


async def resolve(resolver, key, model):
    return await resolver.ResolveModel(
        internal_pb2.ResolveModelRequest(api_key=key, model=model), None)


async def test_base_model(resolver, admin_key, admin, tiny_base):
    r = await resolve(resolver, admin_key, "tiny-base")
    assert (r.model, r.base_model, r.adapter_uri, r.adapter_id) == \
        ("tiny-base", "tiny-base", "", 0)
    assert r.base_model_path == str(tiny_base.path) and r.context_window == 512
    assert (r.account_id, r.user_id) == (admin.account_id, admin.user_id)
    assert r.cache_ttl_seconds == 30


async def test_fine_tuned_model(resolver, admin_key, trained):
    for name in ("db_less_model", "PUBLIC.PUBLIC.DB_LESS_MODEL", "public.Db_Less_Model"):
        r = await resolve(resolver, admin_key, name)
        assert r.model == "public.public.db_less_model" and r.base_model == "tiny-base"
        assert r.adapter_uri == trained.adapter_uri and r.adapter_id == trained.id > 0


async def test_resolution_errors(resolver, admin_key, trained, control):
    with pytest.raises(Unauthenticated):
        await resolve(resolver, "ft_wrong", "tiny-base")
    with pytest.raises(Unauthenticated):
        await resolve(resolver, "", "tiny-base")
    with pytest.raises(NotFound):
        await resolve(resolver, admin_key, "no_such_model")
    with pytest.raises(NotFound):
        await resolve(resolver, admin_key, "not-a-name-or-base")
    with pytest.raises(InvalidArgument):
        await resolve(resolver, admin_key, "")
    _, other_key = new_account(control, "acme")
    with pytest.raises(NotFound):  # another account's model does not exist for them
        await resolve(resolver, other_key, "db_less_model")


async def test_model_whose_base_left_the_catalog(control, resolver, admin_key, trained):
    control.resolution._base_models = {}  # the deployment dropped the base model
    with pytest.raises(FailedPrecondition, match="tiny-base"):
        await resolve(resolver, admin_key, "db_less_model")


async def test_usage_is_recorded_once_per_request(resolver, control, admin):
    usage = internal_pb2.ReportUsageRequest(
        request_id="r-1", account_id=admin.account_id, user_id=admin.user_id, model="tiny-base",
        base_model="tiny-base", prompt_tokens=11, completion_tokens=5)
    await resolver.ReportUsage(usage, None)
    await resolver.ReportUsage(usage, None)  # a retried report
    usage.request_id = "r-2"
    await resolver.ReportUsage(usage, None)
    assert control.store.run(lambda tx: tx.usage.totals(admin.account_id)) == (2, 22, 10)
    with pytest.raises(InvalidArgument):
        await resolver.ReportUsage(internal_pb2.ReportUsageRequest(
            account_id=admin.account_id), None)
    with pytest.raises(NotFound):
        await resolver.ReportUsage(internal_pb2.ReportUsageRequest(
            request_id="r-3", account_id="nobody"), None)


async def test_list_get_delete_models(models, trained, admin, control):
    with acting_as(admin):
        base = await models.ListBaseModels(models_pb2.ListBaseModelsRequest(), None)
        assert [(b.name, b.rows_per_epoch, b.max_lora_rank) for b in base.base_models] == \
            [("tiny-base", 30, 32)]
        listed = await models.ListModels(models_pb2.ListModelsRequest(), None)
        assert [m.name for m in listed.models] == ["public.public.db_less_model"]
        got = await models.GetModel(models_pb2.GetModelRequest(name="db_less_model"), None)
        assert got.job_id == trained.job_id and got.version == 1 and got.trained_tokens == 4321
        assert "training_results.csv" in got.artifacts and "manifest.json" in got.artifacts
        await models.DeleteModel(models_pb2.DeleteModelRequest(name="db_less_model"), None)
        with pytest.raises(NotFound):
            await models.GetModel(models_pb2.GetModelRequest(name="db_less_model"), None)
        with pytest.raises(NotFound):
            await models.DeleteModel(models_pb2.DeleteModelRequest(name="db_less_model"), None)
    someone, _ = new_account(control, "acme")
    with acting_as(someone):
        assert list((await models.ListModels(models_pb2.ListModelsRequest(), None)).models) == []


async def test_model_pagination(models, control, admin, dispatcher):
    load_rows(control, admin.account_id, "train", instruction_rows(3))
    for name in ("c", "a", "b"):
        succeed(control, dispatcher, control.fine_tuning.create(admin, CreateJob(
            model=name, base_model="tiny-base", training_query="SELECT * FROM train")))
    names, token = [], ""
    with acting_as(admin):
        while True:
            page = await models.ListModels(
                models_pb2.ListModelsRequest(page_size=2, page_token=token), None)
            names += [m.name for m in page.models]
            if not (token := page.next_page_token):
                break
    assert names == ["public.public.a", "public.public.b", "public.public.c"]


async def test_artifact_streaming(models, trained, admin, control):
    control.artifacts.write_bytes(f"{trained.adapter_uri}/training_results.csv",
                                  b"step,epoch,training_loss,validation_loss\n" + b"1,1,2.0,\n" * 1)
    big = bytes(range(256)) * 10_000  # over one chunk
    control.artifacts.write_bytes(f"{trained.adapter_uri}/adapter_model.safetensors", big)
    with acting_as(admin):
        chunks = [c.data async for c in models.GetModelArtifact(models_pb2.GetModelArtifactRequest(
            name="db_less_model", artifact="training_results.csv"), None)]
        assert b"".join(chunks).startswith(b"step,epoch,training_loss,validation_loss\n")
        chunks = [c.data async for c in models.GetModelArtifact(models_pb2.GetModelArtifactRequest(
            name="db_less_model", artifact="adapter_model.safetensors"), None)]
        assert len(chunks) > 1 and b"".join(chunks) == big
        for bad in ("../spec.json", "a/b", "..", "", "x\\y"):
            with pytest.raises(InvalidArgument):
                async for _ in models.GetModelArtifact(models_pb2.GetModelArtifactRequest(
                        name="db_less_model", artifact=bad), None):
                    pass
        with pytest.raises(NotFound):
            async for _ in models.GetModelArtifact(models_pb2.GetModelArtifactRequest(
                    name="db_less_model", artifact="nothing.bin"), None):
                pass
