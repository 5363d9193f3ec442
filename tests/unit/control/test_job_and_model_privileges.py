"""FineTuningService, ModelService and ModelResolutionService under privileges, through their
servicers: FINETUNE_USER + USAGE on what the queries read + CREATE MODEL on the target schema;
the creator's role owns the job and the model; USAGE to describe and COMPLETE, OWNERSHIP for
artifacts and delete."""

import pytest
from control_testbed import (acting_as, files_under, instruction_rows, load_rows, new_user,
                             succeed)

from finetune.control.v1 import internal_pb2, jobs_pb2, models_pb2
from services.common.errors import NotFound, PermissionDenied
from services.control.api.internal import ModelResolutionServicer
from services.control.api.jobs import FineTuningServicer
from services.control.api.models import ModelServicer
from services.control.domain.privileges import Privilege, SecurableObject

U, OWN = Privilege.USAGE, Privilege.OWNERSHIP


@pytest.fixture
def jobs(control):
    return FineTuningServicer(control.fine_tuning, control.events,
                              watch_poll_s=0.2)


@pytest.fixture
def models(control):
    return ModelServicer(control.registry)


@pytest.fixture
def resolver(control):
    return ModelResolutionServicer(control.resolution, control.inference_usage, cache_ttl_s=30)


@pytest.fixture
def people(control, admin):
    """ann (ANALYST: may fine-tune from sales into sales.public), rita (READER: FINETUNE_USER
    only), nick (no roles); the keys are in people["keys"]."""
    control.catalog.create_database(admin.account_id, "sales")
    control.catalog.create_database(admin.account_id, "secret")
    load_rows(control, admin.account_id, "sales.public.train", instruction_rows(4))
    load_rows(control, admin.account_id, "secret.public.train", instruction_rows(4))
    d = control.directory
    d.create_role(admin, "analyst")
    d.create_role(admin, "reader")
    for role in ("analyst", "reader"):
        d.grant_role(admin, "finetune_user", "ROLE", role)
    d.grant_privilege(admin, U, SecurableObject.database("sales"), "analyst")
    d.grant_privilege(admin, U, SecurableObject.schema("sales.public"), "analyst")
    d.grant_privilege(admin, Privilege.CREATE_MODEL, SecurableObject.schema("sales.public"),
                      "analyst")
    out, keys = {}, {}
    for name, roles in (("ann", ("ANALYST",)), ("rita", ("READER",)), ("nick", ())):
        out[name], keys[name] = new_user(control, admin.account_id, name, roles)
    out["keys"] = keys
    return out


def create_request(**overrides):
    fields = dict(model="sales.public.bot", base_model="tiny-base",
                  training_query="SELECT prompt, completion FROM sales.public.train")
    fields.update(overrides)
    return jobs_pb2.CreateFineTuningJobRequest(**fields)


async def create(jobs, principal, **overrides):
    with acting_as(principal):
        return await jobs.CreateFineTuningJob(create_request(**overrides), None)


async def test_create_needs_each_privilege(jobs, people, control, admin):
    ann, rita, nick = people["ann"], people["rita"], people["nick"]
    with pytest.raises(PermissionDenied, match="FINETUNE_USER"):
        await create(jobs, nick)
    with pytest.raises(PermissionDenied, match="CREATE MODEL on SCHEMA sales.public"):
        await create(jobs, rita)
    with pytest.raises(PermissionDenied, match="CREATE MODEL on SCHEMA sales.other"):
        await create(jobs, ann, model="sales.other.bot")
    for query in ("SELECT prompt, completion FROM secret.public.train",
                  "SELECT prompt, completion FROM nowhere.public.train"):
        with pytest.raises(PermissionDenied, match="may not use"):
            await create(jobs, ann, training_query=query)
    with pytest.raises(PermissionDenied, match="may not use"):
        await create(jobs, ann, validation_query="SELECT * FROM secret.public.train")
    assert not files_under(control.config.home / "artifacts")  # nothing was snapshotted
    job = await create(jobs, ann)
    assert job.status == jobs_pb2.PENDING
    stored = control.fine_tuning.get(admin, job.id)
    assert stored.owner_role_id == control.store.run(
        lambda tx: tx.access.role(admin.account_id, "ANALYST")).id


async def test_the_query_privileges_are_read_when_it_runs(jobs, people, control, admin):
    control.directory.revoke_privilege(admin, U, SecurableObject.schema("sales.public"),
                                       "analyst")
    with pytest.raises(PermissionDenied):
        await create(jobs, people["ann"])


async def test_jobs_are_for_their_owner_role_and_the_administrator(jobs, people, admin):
    job = await create(jobs, people["ann"])
    with acting_as(people["ann"]):
        assert (await jobs.GetFineTuningJob(jobs_pb2.GetFineTuningJobRequest(id=job.id),
                                            None)).id == job.id
        listed = await jobs.ListFineTuningJobs(jobs_pb2.ListFineTuningJobsRequest(), None)
        assert [j.id for j in listed.jobs] == [job.id]
    admin_job = await create(jobs, admin, model="admins_model",
                             training_query="SELECT * FROM secret.public.train")
    with acting_as(admin):
        listed = await jobs.ListFineTuningJobs(jobs_pb2.ListFineTuningJobsRequest(), None)
        assert {j.id for j in listed.jobs} == {job.id, admin_job.id}
    with acting_as(people["ann"]):   # FINETUNE: every job of the account, another's as a summary
        listed = {j.id: j for j in (await jobs.ListFineTuningJobs(
            jobs_pb2.ListFineTuningJobsRequest(), None)).jobs}
        assert listed.keys() == {job.id, admin_job.id}
        assert listed[job.id].model == "sales.public.bot"
        summary = listed[admin_job.id]
        assert (summary.status, summary.base_model) == (jobs_pb2.PENDING, "tiny-base")
        assert summary.created_on.seconds > 0
        assert not (summary.model or summary.training_data or summary.training_rows)
    with acting_as(people["rita"]):
        assert [j.training_data for j in (await jobs.ListFineTuningJobs(
            jobs_pb2.ListFineTuningJobsRequest(), None)).jobs] == ["", ""]
    with acting_as(people["nick"]):  # no FINETUNE: only its roles' jobs, none
        assert not (await jobs.ListFineTuningJobs(jobs_pb2.ListFineTuningJobsRequest(),
                                                  None)).jobs
    for someone in (people["rita"], people["nick"]):
        with acting_as(someone):
            for job_id in (job.id, "ft_does-not-exist"):  # same answer either way
                with pytest.raises(PermissionDenied):
                    await jobs.GetFineTuningJob(jobs_pb2.GetFineTuningJobRequest(id=job_id), None)
                with pytest.raises(PermissionDenied):
                    await jobs.CancelFineTuningJob(
                        jobs_pb2.CancelFineTuningJobRequest(id=job_id), None)
                with pytest.raises(PermissionDenied):
                    async for _ in jobs.WatchFineTuningJob(
                            jobs_pb2.WatchFineTuningJobRequest(id=job_id), None):
                        pass
    with acting_as(people["ann"]):
        with pytest.raises(PermissionDenied):
            await jobs.GetFineTuningJob(jobs_pb2.GetFineTuningJobRequest(id=admin_job.id), None)
        cancelled = await jobs.CancelFineTuningJob(
            jobs_pb2.CancelFineTuningJobRequest(id=job.id), None)
        assert cancelled.status == jobs_pb2.CANCELLED
    with acting_as(admin), pytest.raises(NotFound):
        await jobs.GetFineTuningJob(jobs_pb2.GetFineTuningJobRequest(id="ft_does-not-exist"),
                                    None)


@pytest.fixture
async def bot(jobs, people, control, dispatcher, admin):
    job = await create(jobs, people["ann"])
    succeed(control, dispatcher, control.fine_tuning.get(admin, job.id))
    return control.registry.get(admin, "sales.public.bot")


async def resolve(resolver, key, model):
    return await resolver.ResolveModel(
        internal_pb2.ResolveModelRequest(api_key=key, model=model), None)


async def test_the_creators_role_owns_the_model(models, bot, people, control, admin):
    ann, rita = people["ann"], people["rita"]
    get = models_pb2.GetModelRequest(name="sales.public.bot")
    artifact = models_pb2.GetModelArtifactRequest(name="sales.public.bot",
                                                  artifact="training_results.csv")
    with acting_as(ann):
        assert (await models.GetModel(get, None)).job_id == bot.job_id
        assert [c async for c in models.GetModelArtifact(artifact, None)]
        assert [m.name for m in (await models.ListModels(models_pb2.ListModelsRequest(),
                                                         None)).models] == ["sales.public.bot"]
    with acting_as(rita):
        assert not (await models.ListModels(models_pb2.ListModelsRequest(), None)).models
        for name in ("sales.public.bot", "sales.public.nothing"):
            with pytest.raises(PermissionDenied):
                await models.GetModel(models_pb2.GetModelRequest(name=name), None)
    # the owner shares it: USAGE describes it, but files and delete stay with OWNERSHIP
    control.directory.grant_privilege(ann, U, SecurableObject.model("sales.public.bot"),
                                      "reader")
    with acting_as(rita):
        assert (await models.GetModel(get, None)).name == "sales.public.bot"
        assert len((await models.ListModels(models_pb2.ListModelsRequest(), None)).models) == 1
        with pytest.raises(PermissionDenied):
            async for _ in models.GetModelArtifact(artifact, None):
                pass
        with pytest.raises(PermissionDenied):
            await models.DeleteModel(models_pb2.DeleteModelRequest(name="sales.public.bot"),
                                     None)


async def test_complete_needs_finetune_user_and_usage(resolver, bot, people, control, admin):
    keys = people["keys"]
    assert (await resolve(resolver, keys["ann"], "sales.public.bot")).adapter_id == bot.id
    assert (await resolve(resolver, keys["rita"], "tiny-base")).adapter_id == 0
    for model in ("sales.public.bot", "sales.public.nothing"):
        with pytest.raises(PermissionDenied):
            await resolve(resolver, keys["rita"], model)
    for model in ("tiny-base", "sales.public.bot"):
        with pytest.raises(PermissionDenied, match="FINETUNE_USER"):
            await resolve(resolver, keys["nick"], model)
    bot_object = SecurableObject.model("sales.public.bot")
    control.directory.grant_privilege(admin, U, bot_object, "reader")
    assert (await resolve(resolver, keys["rita"], "sales.public.bot")).adapter_id == bot.id
    control.directory.revoke_privilege(admin, U, bot_object, "reader")
    with pytest.raises(PermissionDenied):
        await resolve(resolver, keys["rita"], "sales.public.bot")
    control.directory.revoke_role(admin, "finetune_user", "ROLE", "analyst")
    with pytest.raises(PermissionDenied):
        await resolve(resolver, keys["ann"], "sales.public.bot")


async def test_delete_drops_the_models_grants(models, jobs, bot, people, control, dispatcher,
                                              admin):
    bot_object = SecurableObject.model("sales.public.bot")
    control.directory.grant_privilege(admin, U, bot_object, "reader")
    with acting_as(people["ann"]):
        await models.DeleteModel(models_pb2.DeleteModelRequest(name="sales.public.bot"), None)
    # the same name trained again is a new object: the old USAGE grant does not carry over
    job = await create(jobs, people["ann"])
    succeed(control, dispatcher, control.fine_tuning.get(admin, job.id))
    assert not control.authorizer.access(people["rita"]).allows(U, bot_object)
    assert control.authorizer.access(people["ann"]).allows(OWN, bot_object)


async def test_continuing_a_model_needs_its_ownership(jobs, bot, people, control, admin):
    control.directory.grant_privilege(admin, Privilege.CREATE_MODEL,
                                      SecurableObject.schema("sales.public"), "reader")
    control.directory.grant_privilege(admin, U, SecurableObject.model("sales.public.bot"),
                                      "reader")
    options = jobs_pb2.FineTuningOptions(from_model="sales.public.bot")
    with pytest.raises(PermissionDenied, match="OWNERSHIP on MODEL sales.public.bot"):
        await create(jobs, people["rita"], model="sales.public.bot2", options=options)
    job = await create(jobs, people["ann"], model="sales.public.bot2", options=options)
    assert job.options.from_model == "sales.public.bot"


async def test_a_request_id_returns_only_a_job_the_caller_may_see(jobs, people, admin):
    first = await create(jobs, admin, model="admins", request_id="req-1",
                         training_query="SELECT * FROM secret.public.train")
    with pytest.raises(PermissionDenied):
        await create(jobs, people["ann"], request_id="req-1")
    again = await create(jobs, admin, model="admins", request_id="req-1")
    assert again.id == first.id
