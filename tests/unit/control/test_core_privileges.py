"""Core checks every privilege itself, below any transport: a caller without the privilege is
refused by the core entry point it would reach through gRPC, the OpenAI-compatible HTTP API or
any later door, before anything is created or looked up (PERMISSION_DENIED whether or not the
object exists). The same calls by a privileged caller succeed, so the refusals are the
privilege's doing."""

import pytest
from control_testbed import instruction_rows, load_rows, new_user, succeed

from services.common.errors import PermissionDenied
from services.control.core.evaluations import EvaluateModel
from services.control.core.jobs import CreateJob
from services.control.domain.options import RequestedOptions
from services.control.domain.privileges import Privilege, SecurableObject

QUERY = "SELECT prompt, completion FROM sales.public.train"


@pytest.fixture
def world(control, dispatcher, admin):
    """Model sales.public.bot (owned by ACCOUNTADMIN); ann holds FINETUNE_USER, USAGE on the
    data and CREATE MODEL on sales.public but nothing on bot; nick holds nothing."""
    control.catalog.create_database(admin.account_id, "sales")
    load_rows(control, admin.account_id, "sales.public.train", instruction_rows(4))
    job = control.fine_tuning.create(admin, CreateJob(
        model="sales.public.bot", base_model="tiny-base", training_query=QUERY))
    succeed(control, dispatcher, job)
    d = control.directory
    d.create_role(admin, "analyst")
    d.grant_role(admin, "finetune_user", "ROLE", "analyst")
    for obj in (SecurableObject.database("sales"), SecurableObject.schema("sales.public")):
        d.grant_privilege(admin, Privilege.USAGE, obj, "analyst")
    d.grant_privilege(admin, Privilege.CREATE_MODEL, SecurableObject.schema("sales.public"),
                      "analyst")
    ann, _ = new_user(control, admin.account_id, "ann", ("ANALYST",), default_role="ANALYST")
    nick, _ = new_user(control, admin.account_id, "nick")
    return {"admin": admin, "ann": ann, "nick": nick}


@pytest.mark.parametrize("entry", ["create", "estimate"])
@pytest.mark.parametrize("who,request_fields,refused", [
    ("nick", {}, "FINETUNE_USER"),
    ("ann", {"model": "sales.other.bot2"}, "CREATE MODEL on SCHEMA sales.other"),
    ("ann", {"options": RequestedOptions(from_model="sales.public.bot")},
     "OWNERSHIP on MODEL sales.public.bot"),
    ("ann", {"options": RequestedOptions(from_model="sales.public.ghost")},
     "OWNERSHIP on MODEL sales.public.ghost"),
])
def test_fine_tuning_refuses_without_each_privilege(control, world, entry, who, request_fields,
                                                    refused):
    request = CreateJob(**{"model": "sales.public.bot2", "base_model": "tiny-base",
                           "training_query": QUERY, **request_fields})
    with pytest.raises(PermissionDenied, match=refused):
        getattr(control.fine_tuning, entry)(world[who], request)


def test_fine_tuning_accepts_the_privileged_caller(control, world):
    request = CreateJob(model="sales.public.bot2", base_model="tiny-base", training_query=QUERY)
    assert control.fine_tuning.estimate(world["ann"], request).training.rows == 4
    assert control.fine_tuning.create(world["ann"], request).model_name == "sales.public.bot2"


@pytest.mark.parametrize("name", ["sales.public.bot", "sales.public.ghost"])
def test_the_registry_needs_usage_to_describe_and_ownership_to_change(control, world, name):
    ann = world["ann"]
    with pytest.raises(PermissionDenied, match="USAGE on MODEL"):
        control.registry.get(ann, name)
    with pytest.raises(PermissionDenied, match="OWNERSHIP on MODEL"):
        control.registry.delete(ann, name)
    with pytest.raises(PermissionDenied, match="OWNERSHIP on MODEL"):
        control.registry.artifact_chunks(ann, name, "training_results.csv")
    assert control.registry.list(ann).models == []


def test_the_registry_serves_the_privileged_caller(control, world, admin):
    control.directory.grant_privilege(admin, Privilege.USAGE,
                                      SecurableObject.model("sales.public.bot"), "analyst")
    ann = world["ann"]
    assert control.registry.get(ann, "sales.public.bot").name == "sales.public.bot"
    assert [m.name for m in control.registry.list(ann).models] == ["sales.public.bot"]
    assert b"".join(control.registry.artifact_chunks(admin, "sales.public.bot",
                                                     "training_results.csv"))
    control.registry.delete(admin, "sales.public.bot")


def test_databases_need_create_database_and_usage(control, world):
    nick = world["nick"]
    with pytest.raises(PermissionDenied, match="CREATE DATABASE"):
        control.databases.create_database(nick, "mine")
    assert control.databases.list_databases(nick) == []
    assert control.databases.list_tables(nick) == []
    with pytest.raises(PermissionDenied, match="USAGE"):
        control.databases.preview(nick, QUERY, 1)
    assert control.databases.preview(world["ann"], QUERY, 1).rows


@pytest.mark.parametrize("model", ["sales.public.bot", "sales.public.ghost"])
def test_evaluations_need_finetune_and_usage_on_the_model(control, world, model):
    with pytest.raises(PermissionDenied, match="FINETUNE_USER"):
        control.evaluations.create(world["nick"], EvaluateModel(model=model, query=QUERY))
    with pytest.raises(PermissionDenied, match="USAGE on MODEL"):
        control.evaluations.create(world["ann"], EvaluateModel(model=model, query=QUERY))
