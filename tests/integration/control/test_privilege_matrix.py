"""The privilege matrix, over real gRPC on loopback: for each role set-up and each operation,
the status code the caller gets. Covers role hierarchies, cross-account attempts, revoked keys,
revoked grants, and PERMISSION_DENIED whether or not the object exists (AIP-211).

Set-ups (account `default` unless said otherwise):
  admin     the bootstrap ACCOUNTADMIN
  owner     role ANALYST: FINETUNE_USER, USAGE on database sales and schema sales.public,
            CREATE MODEL and CREATE TABLE on sales.public; created job J and so owns model bot
  inherits  role MANAGER, which inherits ANALYST (a role granted to a role)
  user      role CONSUMER: FINETUNE_USER and USAGE on model bot (granted by its owner)
  nobody    no roles (PUBLIC only)
  revoked   role FORMER: had FINETUNE_USER, USAGE on sales, sales.public and bot; all revoked
  x_admin   ACCOUNTADMIN of another account, acme (which has its own database sales)
  x_user    a user of acme holding FINETUNE_USER and acme's role PARTNER, with which the owner
            shares bot (acme names it default.sales.public.bot)
  x_other   a user of acme holding FINETUNE_USER only (the share does not reach it)
  bad_key   a key that was revoked;  no_key: no credentials at all
"""

import asyncio
import itertools
import json
from datetime import datetime, timezone

import grpc
import pytest
from control_components import control_components
from control_processes import ScriptedCluster, with_tokenizer

from finetune.control.v1 import (access_pb2, access_pb2_grpc, data_pb2, data_pb2_grpc,
                                 internal_pb2, internal_pb2_grpc, jobs_pb2, jobs_pb2_grpc,
                                 models_pb2, models_pb2_grpc, usage_pb2, usage_pb2_grpc)
from services.common.base_models import BaseModelSpec
from services.control.app import ControlApp
from services.control.core.access_control import create_account
from services.control.dispatch.protocol import ClusterJob, ClusterJobStatus

pytestmark = pytest.mark.integration

SERVICE_TOKEN = "matrix-service-token"
OK = grpc.StatusCode.OK
PD = grpc.StatusCode.PERMISSION_DENIED
NF = grpc.StatusCode.NOT_FOUND
IA = grpc.StatusCode.INVALID_ARGUMENT
FP = grpc.StatusCode.FAILED_PRECONDITION
UN = grpc.StatusCode.UNAUTHENTICATED

BOT = "sales.public.bot"
GHOST = "sales.public.ghost"   # a model that does not exist
SHARED_BOT = f"default.{BOT}"  # bot named with its account, as acme names it
SHARED_GHOST = f"default.{GHOST}"
_unique = itertools.count()


def auth(key):
    return [("authorization", f"Bearer {key}")] if key else []


class World:
    def __init__(self, app, channel, cluster):
        self.app, self.channel, self.cluster = app, channel, cluster
        self.access = access_pb2_grpc.AccessServiceStub(channel)
        self.data = data_pb2_grpc.DataServiceStub(channel)
        self.jobs = jobs_pb2_grpc.FineTuningServiceStub(channel)
        self.models = models_pb2_grpc.ModelServiceStub(channel)
        self.usage = usage_pb2_grpc.UsageServiceStub(channel)
        self.resolver = internal_pb2_grpc.ModelResolutionServiceStub(channel)
        self.keys: dict[str, str] = {}
        self.job_id = ""

    async def load(self, key, table, rows):
        def stream():
            yield data_pb2.LoadTableRequest(header=data_pb2.LoadTableHeader(
                table=table, replace=True))
            yield data_pb2.LoadTableRequest(rows=data_pb2.Rows(
                rows=[data_pb2.Row(values=r) for r in rows]))
        return await self.data.LoadTable(stream(), metadata=auth(key))

    async def grant(self, key, privilege, object_type, name, role, account=""):
        await self.access.GrantPrivilege(access_pb2.GrantPrivilegeRequest(
            privilege=privilege, object_type=object_type, object_name=name, role=role,
            grantee_account=account), metadata=auth(key))

    async def revoke(self, key, privilege, object_type, name, role):
        await self.access.RevokePrivilege(access_pb2.RevokePrivilegeRequest(
            privilege=privilege, object_type=object_type, object_name=name, role=role),
            metadata=auth(key))

    async def grant_role(self, key, role, grantee, kind=access_pb2.TO_ROLE):
        await self.access.GrantRole(access_pb2.GrantRoleRequest(
            role=role, grantee_type=kind, grantee=grantee), metadata=auth(key))

    async def user_with_key(self, admin_key, name, role=""):
        await self.access.CreateUser(access_pb2.CreateUserRequest(name=name, default_role=role),
                                     metadata=auth(admin_key))
        created = await self.access.CreateApiKey(access_pb2.CreateApiKeyRequest(user=name),
                                                 metadata=auth(admin_key))
        return created.key

    async def resolve(self, key, model):
        return await self.resolver.ResolveModel(
            internal_pb2.ResolveModelRequest(api_key=key, model=model),
            metadata=auth(SERVICE_TOKEN))


@pytest.fixture(scope="module")
async def world(tmp_path_factory, base_model_spec):
    home = tmp_path_factory.mktemp("matrix")
    with_tokenizer(home / "tiny-base", base_model_spec)
    base = BaseModelSpec(name="tiny-base", source="path", path=home / "tiny-base",
                         context_window=512, prompt_tokens=384, completion_tokens=128,
                         rows_per_epoch=1000, max_lora_rank=16, target_modules=("q_proj",),
                         defaults={})
    cluster = ScriptedCluster()
    with control_components(home / "home", base, service_token=SERVICE_TOKEN,
                            dispatcher=cluster, port=0) as components:
        app = ControlApp(components)
        await app.start(reconcile=False)   # the test reconciles when it wants a job to finish
        try:
            async with grpc.aio.insecure_channel(app.address) as channel:
                w = World(app, channel, cluster)
                await _set_up(w, components.config.bootstrap_key_file.read_text().strip())
                yield w
        finally:
            await app.stop(0)


async def _set_up(w: World, admin):
    keys = w.keys
    keys["admin"] = admin
    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(4)]
    await w.load(admin, "sales.public.train", rows)
    await w.load(admin, "secret.public.data", rows)
    await w.load(admin, "vault.public.data", rows)   # nothing else ever touches a vault
    for role in ("analyst", "manager", "consumer", "former", "spare"):
        await w.access.CreateRole(access_pb2.CreateRoleRequest(name=role), metadata=auth(admin))
    for role in ("analyst", "consumer", "former"):
        await w.grant_role(admin, "finetune_user", role)
    await w.grant_role(admin, "analyst", "manager")            # MANAGER inherits ANALYST
    for role in ("analyst", "former"):
        await w.grant(admin, access_pb2.USAGE, access_pb2.DATABASE, "sales", role)
        await w.grant(admin, access_pb2.USAGE, access_pb2.SCHEMA, "sales.public", role)
    for privilege in (access_pb2.CREATE_MODEL, access_pb2.CREATE_TABLE):
        await w.grant(admin, privilege, access_pb2.SCHEMA, "sales.public", "analyst")
    for name, role in (("olive", "analyst"), ("mia", "manager"), ("ursula", "consumer"),
                       ("ned", ""), ("fred", "former"), ("kim", "analyst"),
                       ("bystander", "")):
        keys[name] = await w.user_with_key(admin, name, role)
    keys["owner"], keys["inherits"], keys["user"] = keys["olive"], keys["mia"], keys["ursula"]
    keys["nobody"], keys["revoked"], keys["bad_key"] = keys["ned"], keys["fred"], keys["kim"]

    # the owner fine-tunes bot; the cluster succeeds; the reconciler registers it
    job = await w.jobs.CreateFineTuningJob(jobs_pb2.CreateFineTuningJobRequest(
        model=BOT, base_model="tiny-base",
        training_query="SELECT prompt, completion FROM sales.public.train"),
        metadata=auth(keys["owner"]))
    w.job_id = job.id
    artifacts = w.app.components.artifacts
    output = f"{artifacts.root}/jobs/{job.id}/output"
    artifacts.write_bytes(f"{output}/training_results.csv", b"step,epoch,training_loss,"
                                                            b"validation_loss\n1,1,1.0,\n")
    artifacts.write_bytes(f"{output}/manifest.json", json.dumps({
        "job_id": job.id, "trained_tokens": 100, "training_loss": 1.0,
        "validation_loss": None, "epochs": 1, "steps": 1, "training_rows": 4,
        "validation_rows": 0, "truncated_rows": 0, "files": ["training_results.csv"]}).encode())
    w.cluster.jobs[job.id] = ClusterJob(ClusterJobStatus.SUCCEEDED)
    await asyncio.to_thread(w.app.components.reconciler.reconcile_once)
    # its owner shares it
    for role in ("consumer", "former"):
        await w.grant(keys["owner"], access_pb2.USAGE, access_pb2.MODEL, BOT, role)

    # revoked grants and a revoked key: they worked, and then they do not
    assert (await w.resolve(keys["revoked"], BOT)).adapter_id > 0
    await w.revoke(admin, access_pb2.USAGE, access_pb2.MODEL, BOT, "former")
    await w.revoke(admin, access_pb2.USAGE, access_pb2.DATABASE, "sales", "former")
    await w.access.RevokeRole(access_pb2.RevokeRoleRequest(
        role="finetune_user", grantee_type=access_pb2.TO_ROLE, grantee="former"),
        metadata=auth(admin))
    me = await w.access.WhoAmI(access_pb2.WhoAmIRequest(), metadata=auth(keys["bad_key"]))
    await w.access.RevokeApiKey(access_pb2.RevokeApiKeyRequest(key_id=me.key_id),
                                metadata=auth(admin))

    # another account, with its own database named sales
    new = await asyncio.to_thread(w.app.components.store.run, lambda tx: create_account(
        tx, "acme", "root", datetime.now(timezone.utc)))
    keys["x_admin"] = new.key
    await w.load(new.key, "sales.public.mine", rows)
    keys["x_user"] = await w.user_with_key(new.key, "xavier")
    keys["x_other"] = await w.user_with_key(new.key, "olga")
    await w.access.CreateRole(access_pb2.CreateRoleRequest(name="partner"),
                              metadata=auth(new.key))
    for user in ("xavier", "olga"):
        await w.grant_role(new.key, "finetune_user", user, access_pb2.TO_USER)
    await w.grant_role(new.key, "partner", "xavier", access_pb2.TO_USER)
    # the owner shares bot with acme's role PARTNER
    await w.grant(keys["owner"], access_pb2.USAGE, access_pb2.MODEL, BOT, "partner", "acme")
    keys["no_key"] = ""


# -- operations ----------------------------------------------------------------------------------

def _name(prefix):
    return f"{prefix}_{next(_unique)}"


async def _drain(stream):
    return [item async for item in stream]


def _create_job(query, schema="sales.public"):
    return lambda w, k: w.jobs.CreateFineTuningJob(jobs_pb2.CreateFineTuningJobRequest(
        model=f"{schema}.{_name('m')}", base_model="tiny-base", training_query=query),
        metadata=auth(k))


def _preview(query):
    return lambda w, k: w.data.PreviewQuery(data_pb2.PreviewQueryRequest(query=query),
                                            metadata=auth(k))


OPERATIONS = {
    "WhoAmI": lambda w, k: w.access.WhoAmI(access_pb2.WhoAmIRequest(), metadata=auth(k)),
    "CreateUser": lambda w, k: w.access.CreateUser(access_pb2.CreateUserRequest(
        name=_name("u")), metadata=auth(k)),
    "CreateRole": lambda w, k: w.access.CreateRole(access_pb2.CreateRoleRequest(
        name=_name("r")), metadata=auth(k)),
    "GrantRole": lambda w, k: w.access.GrantRole(access_pb2.GrantRoleRequest(
        role="spare", grantee_type=access_pb2.TO_USER, grantee="bystander"), metadata=auth(k)),
    "GrantUsage(bot)": lambda w, k: w.grant(k, access_pb2.USAGE, access_pb2.MODEL, BOT, "spare"),
    "GrantUsage(ghost)": lambda w, k: w.grant(k, access_pb2.USAGE, access_pb2.MODEL, GHOST,
                                              "spare"),
    "ShowGrants(on bot)": lambda w, k: w.access.ShowGrants(access_pb2.ShowGrantsRequest(
        on=access_pb2.ObjectRef(type=access_pb2.MODEL, name=BOT)), metadata=auth(k)),
    "ShowGrants(mine)": lambda w, k: w.access.ShowGrants(access_pb2.ShowGrantsRequest(),
                                                         metadata=auth(k)),
    "CreateApiKey(self)": lambda w, k: w.access.CreateApiKey(access_pb2.CreateApiKeyRequest(),
                                                             metadata=auth(k)),
    "CreateApiKey(admin)": lambda w, k: w.access.CreateApiKey(access_pb2.CreateApiKeyRequest(
        user="admin"), metadata=auth(k)),
    "RevokeApiKey(ghost)": lambda w, k: w.access.RevokeApiKey(access_pb2.RevokeApiKeyRequest(
        key_id="key_ghost"), metadata=auth(k)),
    "CreateDatabase": lambda w, k: w.data.CreateDatabase(data_pb2.CreateDatabaseRequest(
        name=_name("db")), metadata=auth(k)),
    "LoadTable(sales)": lambda w, k: w.load(k, "sales.public.loaded", [{"a": "1"}]),
    "LoadTable(secret)": lambda w, k: w.load(k, "secret.public.loaded", [{"a": "1"}]),
    "ListTables(vault)": lambda w, k: w.data.ListTables(data_pb2.ListTablesRequest(
        database="vault"), metadata=auth(k)),
    "ListTables(ghost)": lambda w, k: w.data.ListTables(data_pb2.ListTablesRequest(
        database="ghostdb"), metadata=auth(k)),
    "Preview(sales)": _preview("SELECT * FROM sales.public.train"),
    "Preview(secret)": _preview("SELECT * FROM secret.public.data"),
    "Preview(ghost db)": _preview("SELECT * FROM ghostdb.public.data"),
    "CreateJob(sales)": _create_job("SELECT prompt, completion FROM sales.public.train"),
    "CreateJob(secret)": _create_job("SELECT prompt, completion FROM secret.public.data"),
    "CreateJob(into other schema)": _create_job(
        "SELECT prompt, completion FROM sales.public.train", "sales.other"),
    "ListJobs": lambda w, k: w.jobs.ListFineTuningJobs(jobs_pb2.ListFineTuningJobsRequest(),
                                                       metadata=auth(k)),
    "GetJob(J)": lambda w, k: w.jobs.GetFineTuningJob(jobs_pb2.GetFineTuningJobRequest(
        id=w.job_id), metadata=auth(k)),
    "GetJob(ghost)": lambda w, k: w.jobs.GetFineTuningJob(jobs_pb2.GetFineTuningJobRequest(
        id="ft_ghost"), metadata=auth(k)),
    "CancelJob(J)": lambda w, k: w.jobs.CancelFineTuningJob(jobs_pb2.CancelFineTuningJobRequest(
        id=w.job_id), metadata=auth(k)),
    "WatchJob(J)": lambda w, k: _drain(w.jobs.WatchFineTuningJob(
        jobs_pb2.WatchFineTuningJobRequest(id=w.job_id), metadata=auth(k))),
    "ListModels": lambda w, k: w.models.ListModels(models_pb2.ListModelsRequest(),
                                                   metadata=auth(k)),
    "GetModel(bot)": lambda w, k: w.models.GetModel(models_pb2.GetModelRequest(name=BOT),
                                                    metadata=auth(k)),
    "GetModel(ghost)": lambda w, k: w.models.GetModel(models_pb2.GetModelRequest(name=GHOST),
                                                      metadata=auth(k)),
    "GetArtifact(bot)": lambda w, k: _drain(w.models.GetModelArtifact(
        models_pb2.GetModelArtifactRequest(name=BOT, artifact="training_results.csv"),
        metadata=auth(k))),
    "DeleteModel(ghost)": lambda w, k: w.models.DeleteModel(models_pb2.DeleteModelRequest(
        name=GHOST), metadata=auth(k)),
    "Complete(bot)": lambda w, k: w.resolve(k, BOT),
    "Complete(base)": lambda w, k: w.resolve(k, "tiny-base"),
    "Complete(ghost)": lambda w, k: w.resolve(k, GHOST),
    "ShareUsage(bot)": lambda w, k: w.grant(k, access_pb2.USAGE, access_pb2.MODEL, BOT, "spare",
                                            "acme"),
    "ShareUsage(ghost)": lambda w, k: w.grant(k, access_pb2.USAGE, access_pb2.MODEL, GHOST, "",
                                              "acme"),
    "ShareOwnership(bot)": lambda w, k: w.grant(k, access_pb2.OWNERSHIP, access_pb2.MODEL, BOT,
                                                "", "acme"),
    "ListModels(shared)": lambda w, k: w.models.ListModels(models_pb2.ListModelsRequest(
        shared=True), metadata=auth(k)),
    "GetModel(shared bot)": lambda w, k: w.models.GetModel(models_pb2.GetModelRequest(
        name=SHARED_BOT), metadata=auth(k)),
    "GetArtifact(shared bot)": lambda w, k: _drain(w.models.GetModelArtifact(
        models_pb2.GetModelArtifactRequest(name=SHARED_BOT, artifact="training_results.csv"),
        metadata=auth(k))),
    "Complete(shared bot)": lambda w, k: w.resolve(k, SHARED_BOT),
    "Complete(shared ghost)": lambda w, k: w.resolve(k, SHARED_GHOST),
    "SharedUsage(bot)": lambda w, k: w.usage.AggregateInferenceUsage(
        usage_pb2.AggregateInferenceUsageRequest(shared_models=True,
                                                 filter=usage_pb2.UsageFilter(model=BOT)),
        metadata=auth(k)),
    "InferenceUsage": lambda w, k: w.usage.ListInferenceUsage(
        usage_pb2.ListInferenceUsageRequest(), metadata=auth(k)),
    "FineTuningUsage(of admin)": lambda w, k: w.usage.ListFineTuningUsage(
        usage_pb2.ListFineTuningUsageRequest(filter=usage_pb2.UsageFilter(user="admin")),
        metadata=auth(k)),
}

PRINCIPALS = ("admin", "owner", "inherits", "user", "nobody", "revoked", "x_admin", "x_user",
              "x_other")
# Every operation for every authenticated set-up. bad_key and no_key: UNAUTHENTICATED always.
EXPECTED = {
    #                              admin owner inher user nobody revkd x_adm x_usr x_oth
    "WhoAmI":                      (OK,  OK,   OK,   OK,  OK,    OK,   OK,   OK,   OK),
    "CreateUser":                  (OK,  PD,   PD,   PD,  PD,    PD,   OK,   PD,   PD),
    "CreateRole":                  (OK,  PD,   PD,   PD,  PD,    PD,   OK,   PD,   PD),
    "GrantRole":                   (OK,  PD,   PD,   PD,  PD,    PD,   NF,   PD,   PD),
    "GrantUsage(bot)":             (OK,  OK,   OK,   PD,  PD,    PD,   NF,   PD,   PD),
    "GrantUsage(ghost)":           (NF,  PD,   PD,   PD,  PD,    PD,   NF,   PD,   PD),
    "ShowGrants(on bot)":          (OK,  OK,   OK,   PD,  PD,    PD,   OK,   PD,   PD),
    "ShowGrants(mine)":            (OK,  OK,   OK,   OK,  OK,    OK,   OK,   OK,   OK),
    "CreateApiKey(self)":          (OK,  OK,   OK,   OK,  OK,    OK,   OK,   OK,   OK),
    "CreateApiKey(admin)":         (OK,  PD,   PD,   PD,  PD,    PD,   NF,   PD,   PD),
    "RevokeApiKey(ghost)":         (NF,  PD,   PD,   PD,  PD,    PD,   NF,   PD,   PD),
    "CreateDatabase":              (OK,  PD,   PD,   PD,  PD,    PD,   OK,   PD,   PD),
    "LoadTable(sales)":            (OK,  OK,   OK,   PD,  PD,    PD,   OK,   PD,   PD),
    "LoadTable(secret)":           (OK,  PD,   PD,   PD,  PD,    PD,   OK,   PD,   PD),
    "ListTables(vault)":           (OK,  PD,   PD,   PD,  PD,    PD,   NF,   PD,   PD),
    "ListTables(ghost)":           (NF,  PD,   PD,   PD,  PD,    PD,   NF,   PD,   PD),
    "Preview(sales)":              (OK,  OK,   OK,   PD,  PD,    PD,   IA,   PD,   PD),
    "Preview(secret)":             (OK,  PD,   PD,   PD,  PD,    PD,   IA,   PD,   PD),
    "Preview(ghost db)":           (IA,  PD,   PD,   PD,  PD,    PD,   IA,   PD,   PD),
    "CreateJob(sales)":            (OK,  OK,   OK,   PD,  PD,    PD,   IA,   PD,   PD),
    "CreateJob(secret)":           (OK,  PD,   PD,   PD,  PD,    PD,   IA,   PD,   PD),
    "CreateJob(into other schema)": (OK, PD,   PD,   PD,  PD,    PD,   IA,   PD,   PD),
    "ListJobs":                    (OK,  OK,   OK,   OK,  OK,    OK,   OK,   OK,   OK),
    "GetJob(J)":                   (OK,  OK,   OK,   PD,  PD,    PD,   NF,   PD,   PD),
    "GetJob(ghost)":               (NF,  PD,   PD,   PD,  PD,    PD,   NF,   PD,   PD),
    "CancelJob(J)":                (FP,  FP,   FP,   PD,  PD,    PD,   NF,   PD,   PD),
    "WatchJob(J)":                 (OK,  OK,   OK,   PD,  PD,    PD,   NF,   PD,   PD),
    "ListModels":                  (OK,  OK,   OK,   OK,  OK,    OK,   OK,   OK,   OK),
    "GetModel(bot)":               (OK,  OK,   OK,   OK,  PD,    PD,   NF,   PD,   PD),
    "GetModel(ghost)":             (NF,  PD,   PD,   PD,  PD,    PD,   NF,   PD,   PD),
    "GetArtifact(bot)":            (OK,  OK,   OK,   PD,  PD,    PD,   NF,   PD,   PD),
    "DeleteModel(ghost)":          (NF,  PD,   PD,   PD,  PD,    PD,   NF,   PD,   PD),
    "Complete(bot)":               (OK,  OK,   OK,   OK,  PD,    PD,   NF,   PD,   PD),
    "Complete(base)":              (OK,  OK,   OK,   OK,  PD,    PD,   OK,   OK,   OK),
    "Complete(ghost)":             (NF,  PD,   PD,   PD,  PD,    PD,   NF,   PD,   PD),
    "InferenceUsage":              (OK,  OK,   OK,   OK,  OK,    OK,   OK,   OK,   OK),
    "FineTuningUsage(of admin)":   (OK,  PD,   PD,   PD,  PD,    PD,   NF,   PD,   PD),
    "ShareUsage(bot)":             (OK,  OK,   OK,   PD,  PD,    PD,   IA,   IA,   IA),
    "ShareUsage(ghost)":           (NF,  PD,   PD,   PD,  PD,    PD,   IA,   IA,   IA),
    "ShareOwnership(bot)":         (IA,  IA,   IA,   IA,  IA,    IA,   IA,   IA,   IA),
    "ListModels(shared)":          (OK,  OK,   OK,   OK,  OK,    OK,   OK,   OK,   OK),
    "GetModel(shared bot)":        (OK,  OK,   OK,   OK,  PD,    PD,   PD,   OK,   PD),
    "GetArtifact(shared bot)":     (OK,  OK,   OK,   PD,  PD,    PD,   PD,   PD,   PD),
    "Complete(shared bot)":        (OK,  OK,   OK,   OK,  PD,    PD,   PD,   OK,   PD),
    "Complete(shared ghost)":      (NF,  PD,   PD,   PD,  PD,    PD,   PD,   PD,   PD),
    "SharedUsage(bot)":            (OK,  OK,   OK,   PD,  PD,    PD,   OK,   PD,   PD),
}

CASES = [(op, who, EXPECTED[op][i]) for op in OPERATIONS for i, who in enumerate(PRINCIPALS)]
CASES += [(op, who, UN) for op in OPERATIONS for who in ("bad_key", "no_key")]


def test_the_matrix_covers_every_operation():
    assert set(EXPECTED) == set(OPERATIONS)


@pytest.mark.parametrize("operation,who,expected", CASES,
                         ids=[f"{op}-{who}" for op, who, _ in CASES])
async def test_matrix(world, operation, who, expected):
    try:
        await OPERATIONS[operation](world, world.keys[who])
        code, details = OK, ""
    except grpc.aio.AioRpcError as err:
        code, details = err.code(), err.details()
    assert code == expected, details


async def test_the_views_are_filtered_by_privilege(world):
    """Where everyone gets OK, what they see differs."""
    async def models(who):
        reply = await world.models.ListModels(models_pb2.ListModelsRequest(),
                                              metadata=auth(world.keys[who]))
        return [m.name for m in reply.models]

    async def jobs(who):
        """The listed job ids, and those listed in full (not as another role's summary)."""
        reply = await world.jobs.ListFineTuningJobs(jobs_pb2.ListFineTuningJobsRequest(),
                                                    metadata=auth(world.keys[who]))
        return {j.id for j in reply.jobs}, {j.id for j in reply.jobs if j.training_data}

    for who in ("admin", "owner", "inherits", "user"):
        assert BOT in await models(who)
    for who in ("nobody", "revoked", "x_admin", "x_user", "x_other"):
        assert BOT not in await models(who)
    shared = {}
    for who in PRINCIPALS:
        reply = await world.models.ListModels(models_pb2.ListModelsRequest(shared=True),
                                              metadata=auth(world.keys[who]))
        shared[who] = [(m.name, m.owner_account, m.shared, m.job_id) for m in reply.models]
    assert shared.pop("x_user") == [(SHARED_BOT, "default", True, "")]
    assert set(map(tuple, shared.values())) == {()}   # the share reaches PARTNER only
    for who in ("admin", "owner", "inherits"):
        assert world.job_id in (await jobs(who))[1]
    listed, full = await jobs("user")   # FINETUNE_USER: every job of the account, as Cortex's
    assert world.job_id in listed and world.job_id not in full   # SHOW; another role's: summary
    for who in ("nobody", "revoked", "x_admin", "x_user", "x_other"):
        assert world.job_id not in (await jobs(who))[0]
    me = await world.access.WhoAmI(access_pb2.WhoAmIRequest(),
                                   metadata=auth(world.keys["inherits"]))
    assert set(me.roles) == {"MANAGER", "ANALYST", "FINETUNE_USER", "PUBLIC"}
