"""Models shared across accounts, on a real SQLite store: only USAGE on a MODEL crosses, only
its owner (or ACCOUNTADMIN) shares it, the other account names it `account.db.schema.model`,
may COMPLETE and describe it and nothing else, a revoke or a deleted model ends it, and usage
is billed to the caller while the owner sees it aggregated."""

import pytest
from control_testbed import acting_as, new_account, new_user, succeed

from finetune.control.v1 import access_pb2, models_pb2, usage_pb2
from services.common.errors import InvalidArgument, NotFound, PermissionDenied
from services.control.api.access import AccessServicer
from services.control.api.models import ModelServicer
from services.control.api.usage import UsageServicer
from services.control.core.access_control import GrantsQuery
from services.control.core.jobs import CreateJob
from services.control.core.usage import InferenceUsageReport
from services.control.domain.names import account_model_name
from services.control.domain.privileges import (
    Access,
    ModelShare,
    Privilege,
    SecurableObject,
    check_shareable,
    model_owner_account,
)
from services.control.domain.usage import Grouping

U, OWN = Privilege.USAGE, Privilege.OWNERSHIP
BOT = SecurableObject.model("sales.public.bot")
SHARED = "default.sales.public.bot"   # how acme names it


# -- pure domain ---------------------------------------------------------------------------------

def test_four_part_names_carry_the_owner_account():
    assert account_model_name("Default.Sales.Public.Bot") == ("default", _q("sales.public.bot"))
    assert account_model_name("bot") == ("", _q("public.public.bot"))
    with pytest.raises(InvalidArgument, match="too many parts"):
        account_model_name("a.b.c.d.e")
    obj = SecurableObject.model("acme.sales.public.bot")
    assert (obj.account_id, obj.name, str(obj)) == ("acme", "sales.public.bot",
                                                    "MODEL acme.sales.public.bot")
    assert obj.in_other_account("default") and not obj.in_other_account("acme")
    assert obj.local() == BOT
    assert model_owner_account("acme.sales.public.bot", "default") == "acme"
    assert model_owner_account("default.sales.public.bot", "default") is None
    assert model_owner_account("sales.public.bot", "default") is None
    assert model_owner_account("smollm2-135m-instruct", "default") is None


def _q(name):
    from services.control.domain.names import qualified_name
    return qualified_name(name)


def test_only_usage_on_a_model_is_shareable():
    check_shareable(U, BOT)
    for privilege, obj in ((OWN, BOT), (U, SecurableObject.schema("sales.public")),
                           (U, SecurableObject.database("sales"))):
        with pytest.raises(InvalidArgument, match="only USAGE on a MODEL"):
            check_shareable(privilege, obj)


def test_a_share_reaches_the_account_or_one_role_of_it():
    everyone = ModelShare("default", "sales.public.bot", "acme")
    one = ModelShare("default", "sales.public.bot", "acme", "PARTNER")
    assert everyone.reaches("acme", {"PUBLIC"}) and not everyone.reaches("globex", {"PUBLIC"})
    assert one.reaches("acme", {"PARTNER", "PUBLIC"}) and not one.reaches("acme", {"PUBLIC"})
    assert one.shared_name == SHARED


def test_another_accounts_object_allows_shared_usage_only():
    admin = Access("acme", "u", frozenset({"ACCOUNTADMIN", "PUBLIC"}), frozenset(), frozenset(),
                   shared=frozenset({("default", "sales.public.bot")}))
    shared = SecurableObject.model(SHARED)
    assert admin.allows(U, shared)
    assert not admin.allows(OWN, shared)                                  # never crosses
    assert not admin.allows(U, SecurableObject.model("default.sales.public.other"))
    assert not admin.allows(U, SecurableObject.model("globex.sales.public.bot"))
    assert admin.allows(OWN, SecurableObject.model("acme.sales.public.mine"))   # its own
    with pytest.raises(PermissionDenied, match="USAGE on MODEL default.sales.public.other"):
        admin.require(U, SecurableObject.model("default.sales.public.other"))


# -- on the store --------------------------------------------------------------------------------

@pytest.fixture
def acme(control):
    """Account acme: its administrator, a PARTNER role, and two FINETUNE_USERs: one with
    PARTNER, one without."""
    root, _ = new_account(control, "acme")
    control.directory.create_role(root, "partner")
    partner, partner_key = new_user(control, "acme", "pat", ("FINETUNE_USER", "PARTNER"))
    other, other_key = new_user(control, "acme", "oscar", ("FINETUNE_USER",))
    return {"root": root, "partner": partner, "other": other, "partner_key": partner_key,
            "other_key": other_key}


def resolve(control, key, model):
    return control.resolution.resolve(key, model)


def test_share_with_a_role_of_another_account(control, admin, admin_key, bot, acme):
    directory = control.directory
    with pytest.raises(PermissionDenied):           # not shared yet: as if it did not exist
        resolve(control, acme["partner_key"], SHARED)
    assert directory.grant_privilege(admin, U, BOT, "partner", grantee_account="acme")
    assert not directory.share_model(admin, U, BOT, "acme", "partner")   # already
    resolved = resolve(control, acme["partner_key"], SHARED)
    assert (resolved.account_id, resolved.model, resolved.adapter.id) == (
        "acme", SHARED, bot.id)                      # billed to acme, named with its owner
    with pytest.raises(PermissionDenied):            # acme users without the role
        resolve(control, acme["other_key"], SHARED)
    with pytest.raises(PermissionDenied):            # not even acme's ACCOUNTADMIN
        control.registry.get(acme["root"], SHARED)
    # the owner may name its own model with its account too
    assert resolve(control, admin_key, SHARED).model == "sales.public.bot"
    # SHOW GRANTS ON the model, the owner's side
    shown = directory.show_grants(admin, GrantsQuery(on=BOT))
    assert [(g.granted_to, g.grantee_name, g.grantee_account) for g in shown
            if g.grantee_account] == [("ROLE", "PARTNER", "acme")]
    assert directory.revoke_privilege(admin, U, BOT, "partner", grantee_account="acme")
    with pytest.raises(PermissionDenied):
        resolve(control, acme["partner_key"], SHARED)


def test_share_with_every_role_of_an_account(control, admin, bot, acme):
    control.directory.share_model(admin, U, BOT, "acme")
    for who in ("partner_key", "other_key"):
        assert resolve(control, acme[who], SHARED).model == SHARED
    # what acme sees of it: listed apart, described without lineage or files
    for who in ("partner", "other", "root"):
        page = control.registry.shared(acme[who])
        assert [(m.name, m.shared_from, m.job_id, m.adapter_uri) for m in page.models] == [
            (SHARED, "default", "", "")]
    assert SHARED not in [m.name for m in control.registry.list(acme["other"]).models]
    seen = control.registry.get(acme["other"], SHARED)
    assert (seen.base_model, seen.version, seen.trained_tokens) == ("tiny-base", 1, 0)
    assert control.registry.artifacts(seen) == []
    # but nothing of the owner's: artifacts, export, delete, grants, jobs
    with pytest.raises(PermissionDenied):
        control.registry.artifact_chunks(acme["root"], SHARED, "training_results.csv")
    with pytest.raises(PermissionDenied):
        control.registry.delete(acme["root"], SHARED)
    with pytest.raises(PermissionDenied):
        control.directory.show_grants(acme["root"], GrantsQuery(on=SecurableObject.model(
            SHARED)))
    with pytest.raises(PermissionDenied):          # resharing is the owner's
        control.directory.share_model(acme["root"], U, SecurableObject.model(SHARED), "globex")
    with pytest.raises(PermissionDenied):            # the job behind it
        control.fine_tuning.get(acme["other"], bot.job_id)


def test_who_may_share_and_bad_requests(control, admin, bot, acme):
    directory = control.directory
    control.directory.create_role(admin, "consumer")
    user, _ = new_user(control, "default", "ursula", ("FINETUNE_USER", "CONSUMER"))
    directory.grant_privilege(admin, U, BOT, "consumer")
    with pytest.raises(PermissionDenied):            # USAGE is not OWNERSHIP
        directory.share_model(user, U, BOT, "acme")
    with pytest.raises(PermissionDenied):            # checked before existence
        directory.share_model(user, U, SecurableObject.model("sales.public.ghost"), "acme")
    with pytest.raises(NotFound, match="model sales.public.ghost"):
        directory.share_model(admin, U, SecurableObject.model("sales.public.ghost"), "acme")
    with pytest.raises(NotFound, match="account globex"):
        directory.share_model(admin, U, BOT, "globex")
    with pytest.raises(InvalidArgument, match="only USAGE on a MODEL"):
        directory.grant_privilege(admin, OWN, BOT, "", grantee_account="acme")
    with pytest.raises(InvalidArgument, match="only USAGE on a MODEL"):
        directory.grant_privilege(admin, U, SecurableObject.schema("sales.public"), "",
                                  grantee_account="acme")
    with pytest.raises(InvalidArgument, match="your own account"):
        directory.share_model(admin, U, BOT, "default")
    with pytest.raises(InvalidArgument, match="grantee_account"):
        directory.share_model(admin, U, BOT, "not an account")
    with pytest.raises(InvalidArgument, match="role"):
        directory.share_model(admin, U, BOT, "acme", "bad role!")


def test_a_deleted_model_takes_its_shares_with_it(control, admin, bot, acme, dispatcher):
    control.directory.share_model(admin, U, BOT, "acme")
    control.registry.delete(admin, "sales.public.bot")
    with pytest.raises(PermissionDenied):
        resolve(control, acme["other_key"], SHARED)
    job = control.fine_tuning.create(admin, CreateJob(      # a new model of the name
        model="sales.public.bot", base_model="tiny-base",
        training_query="SELECT * FROM sales.public.train"))
    succeed(control, dispatcher, job)
    with pytest.raises(PermissionDenied):
        resolve(control, acme["other_key"], SHARED)
    assert control.registry.shared(acme["other"]).models == []


def test_usage_is_billed_to_the_caller_and_aggregated_for_the_owner(control, admin, bot, acme):
    control.directory.share_model(admin, U, BOT, "acme")
    for i, (who, account) in enumerate(((acme["other"], "acme"), (acme["partner"], "acme"),
                                        (admin, "default"))):
        control.inference_usage.record(InferenceUsageReport(
            request_id=f"r{i}", account_id=account, user_id=who.user_id,
            model=SHARED if account == "acme" else "sales.public.bot", base_model="tiny-base",
            prompt_tokens=10, completion_tokens=5))
    theirs = control.usage.aggregate_inference(acme["root"], [Grouping.MODEL])
    assert [(g.model, g.requests) for g in theirs] == [(SHARED, 2)]
    assert [u.model for u in control.usage.inference(acme["root"], model=SHARED).records] == [
        SHARED, SHARED]
    own = control.usage.aggregate_inference(admin, [Grouping.MODEL])
    assert [(g.model, g.requests) for g in own] == [("sales.public.bot", 1)]
    shared = control.usage.aggregate_inference(admin, [Grouping.MODEL, Grouping.ACCOUNT],
                                               shared_models=True)
    assert [(g.model, g.account, g.requests, g.prompt_tokens) for g in shared] == [
        ("sales.public.bot", "acme", 2, 20)]
    one = control.usage.aggregate_inference(admin, [], model="sales.public.bot",
                                            shared_models=True)
    assert [(g.requests, g.completion_tokens) for g in one] == [(2, 10)]
    with pytest.raises(InvalidArgument, match="by user"):
        control.usage.aggregate_inference(admin, [Grouping.USER], shared_models=True)
    with pytest.raises(PermissionDenied):    # acme cannot see the owner's side
        control.usage.aggregate_inference(acme["root"], [], model=SHARED, shared_models=True)
    with pytest.raises(PermissionDenied):    # nor a non-owner of the owner account
        control.usage.aggregate_inference(acme["other"], [], shared_models=True)


async def test_the_servicers_carry_shares(control, admin, bot, acme):
    access = AccessServicer(control.directory)
    models = ModelServicer(control.registry, control.evaluations)
    usage = UsageServicer(control.usage)
    with acting_as(admin):
        granted = await access.GrantPrivilege(access_pb2.GrantPrivilegeRequest(
            privilege=access_pb2.USAGE, object_type=access_pb2.MODEL,
            object_name="sales.public.bot", grantee_account="acme"), None)
        assert granted.granted
        shown = await access.ShowGrants(access_pb2.ShowGrantsRequest(
            on=access_pb2.ObjectRef(type=access_pb2.MODEL, name="sales.public.bot")), None)
        assert [(g.granted_to, g.grantee_name, g.grantee_account) for g in shown.grants
                if g.grantee_account] == [(access_pb2.TO_ACCOUNT, "acme", "acme")]
        reply = await usage.AggregateInferenceUsage(usage_pb2.AggregateInferenceUsageRequest(
            group_by=[usage_pb2.GROUP_BY_ACCOUNT], shared_models=True), None)
        assert list(reply.groups) == []
    with acting_as(acme["other"]):
        listed = await models.ListModels(models_pb2.ListModelsRequest(shared=True), None)
        assert [(m.name, m.shared, m.owner_account) for m in listed.models] == [
            (SHARED, True, "default")]
        described = await models.GetModel(models_pb2.GetModelRequest(name=SHARED), None)
        assert (described.shared, list(described.artifacts), described.job_id,
                list(described.evaluations)) == (True, [], "", [])
        own = await models.ListModels(models_pb2.ListModelsRequest(), None)
        assert list(own.models) == []
    with acting_as(admin):
        revoked = await access.RevokePrivilege(access_pb2.RevokePrivilegeRequest(
            privilege=access_pb2.USAGE, object_type=access_pb2.MODEL,
            object_name="sales.public.bot", grantee_account="acme"), None)
        assert revoked.revoked
