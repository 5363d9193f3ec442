"""The pure privilege model: role hierarchies, cycles, ownership, what a caller's access allows;
and the price table."""

import pytest

from services.common.errors import InvalidArgument, PermissionDenied
from services.control.domain.prices import Price, PriceTable, parse_prices
from services.control.domain.privileges import (Access, ObjectType, Privilege, SecurableObject,
                                                check_grantable, creates_cycle,
                                                effective_roles, inherited_roles, role_name)

U, OWN, CM, CT, CD = (Privilege.USAGE, Privilege.OWNERSHIP, Privilege.CREATE_MODEL,
                      Privilege.CREATE_TABLE, Privilege.CREATE_DATABASE)
DB = SecurableObject.database
SCHEMA = SecurableObject.schema
MODEL = SecurableObject.model
ACCOUNT = SecurableObject.account()


def access(*grants, roles=("PUBLIC",)) -> Access:
    return Access("acct", "usr", frozenset(roles), frozenset(f"id_{r}" for r in roles),
                  frozenset(grants))


# -- hierarchy ---------------------------------------------------------------------------------

HIERARCHY = {"MANAGER": {"ANALYST"}, "ANALYST": {"READER"}, "READER": set(),
             "AUDITOR": {"READER"}}


def test_roles_are_inherited_transitively_and_everyone_holds_public():
    assert effective_roles(["MANAGER"], HIERARCHY) == {"MANAGER", "ANALYST", "READER", "PUBLIC"}
    assert effective_roles(["AUDITOR"], HIERARCHY) == {"AUDITOR", "READER", "PUBLIC"}
    assert effective_roles([], HIERARCHY) == {"PUBLIC"}
    # inheritance goes one way: holding READER gives nothing above it
    assert effective_roles(["READER"], HIERARCHY) == {"READER", "PUBLIC"}


def test_roles_granted_to_public_reach_everyone():
    assert effective_roles([], {"PUBLIC": {"READER"}}) == {"PUBLIC", "READER"}


@pytest.mark.parametrize("role,grantee,cycle", [
    ("READER", "READER", True),       # a role granted to itself
    ("MANAGER", "ANALYST", True),     # ANALYST would inherit MANAGER, which inherits ANALYST
    ("MANAGER", "READER", True),      # ... transitively
    ("READER", "MANAGER", False),     # already implied: harmless
    ("AUDITOR", "MANAGER", False),
    ("MANAGER", "AUDITOR", False),
])
def test_cycles_are_detected(role, grantee, cycle):
    assert creates_cycle(role, grantee, HIERARCHY) is cycle


def test_resolution_terminates_on_a_cycle_anyway():
    assert inherited_roles(["A"], {"A": {"B"}, "B": {"A"}}) == {"A", "B"}


# -- what access allows ------------------------------------------------------------------------

def test_accountadmin_holds_everything():
    admin = access(roles=("ACCOUNTADMIN", "PUBLIC"))
    for privilege in Privilege:
        assert admin.allows(privilege, MODEL("a.b.c"))
    assert admin.allows(Privilege.MANAGE_ACCESS, ACCOUNT) and not admin.restricted
    assert admin.owns("id_of_any_role") and admin.owns(None)


def test_finetune_comes_from_the_finetune_user_role_only():
    assert not access((U, DB("sales"))).allows(Privilege.FINETUNE, ACCOUNT)
    assert access(roles=("PUBLIC", "FINETUNE_USER")).allows(Privilege.FINETUNE, ACCOUNT)
    with pytest.raises(PermissionDenied, match="FINETUNE_USER"):
        access().require(Privilege.FINETUNE, ACCOUNT)


def test_manage_access_is_for_accountadmin_only():
    owner = access((OWN, DB("sales")), roles=("PUBLIC", "FINETUNE_USER"))
    assert not owner.allows(Privilege.MANAGE_ACCESS, ACCOUNT)


def test_ownership_covers_the_object_and_what_it_contains():
    db_owner = access((OWN, DB("sales")))
    for privilege in (U, OWN, CM, CT):
        assert db_owner.allows(privilege, SCHEMA("sales.public"))
    assert db_owner.allows(OWN, MODEL("sales.public.bot"))
    assert not db_owner.allows(U, DB("other"))
    assert not db_owner.allows(U, MODEL("other.public.bot"))
    assert not db_owner.allows(CD, ACCOUNT)
    schema_owner = access((OWN, SCHEMA("sales.s1")))
    assert schema_owner.allows(U, MODEL("sales.s1.bot"))
    assert not schema_owner.allows(U, MODEL("sales.s2.bot"))
    assert not schema_owner.allows(U, DB("sales"))  # ownership flows down, never up
    assert not access((OWN, MODEL("sales.s1.bot"))).allows(U, SCHEMA("sales.s1"))


def test_a_privilege_is_exactly_what_was_granted():
    reader = access((U, MODEL("sales.public.bot")), (U, DB("sales")))
    assert reader.allows(U, MODEL("sales.public.bot"))
    assert not reader.allows(OWN, MODEL("sales.public.bot"))
    assert not reader.allows(U, MODEL("sales.public.other"))
    assert not reader.allows(U, SCHEMA("sales.public"))  # USAGE on a db is not on its schemas
    assert reader.can_read_database("sales") and not reader.can_read_schema("sales", "public")
    assert access((U, DB("sales")), (U, SCHEMA("sales.public"))).can_read_schema(
        "sales", "public")
    assert not access((U, SCHEMA("sales.public"))).can_read_schema("sales", "public")


def test_revocation_is_the_absence_of_the_grant():
    granted = {(U, MODEL("m")), (CM, SCHEMA("sales.public"))}
    before = access(*granted)
    after = access(*(granted - {(U, MODEL("m"))}))
    assert before.allows(U, MODEL("m")) and not after.allows(U, MODEL("m"))
    assert after.allows(CM, SCHEMA("sales.public"))


def test_denial_does_not_depend_on_existence_and_names_the_requirement():
    with pytest.raises(PermissionDenied) as err:
        access().require(U, MODEL("sales.public.whatever"))
    assert "USAGE on MODEL sales.public.whatever is required" in err.value.message


def test_jobs_are_visible_to_their_owner_role():
    analyst = access(roles=("PUBLIC", "ANALYST"))
    assert analyst.owns("id_ANALYST")
    assert not analyst.owns("id_OTHER") and not analyst.owns(None)


# -- names and grantability --------------------------------------------------------------------

def test_object_names_are_canonical():
    assert MODEL("Sales.Public.Bot").name == "sales.public.bot"
    assert MODEL("bot").name == "public.public.bot"
    assert SCHEMA("Sales.S1").name == "sales.s1" and SCHEMA("s1").name == "public.s1"
    assert DB("SALES").name == "sales"
    assert role_name("analyst") == "ANALYST"
    assert [o.name for o in MODEL("a.b.c").lineage()] == ["a.b.c", "a.b", "a"]
    for bad in (lambda: SCHEMA("a.b.c"), lambda: MODEL("a-b"), lambda: DB("a.b"),
                lambda: role_name("no spaces")):
        with pytest.raises(InvalidArgument):
            bad()


@pytest.mark.parametrize("privilege,object_type,ok", [
    (U, ObjectType.DATABASE, True), (U, ObjectType.SCHEMA, True), (U, ObjectType.MODEL, True),
    (CM, ObjectType.SCHEMA, True), (CT, ObjectType.SCHEMA, True), (CD, ObjectType.ACCOUNT, True),
    (CM, ObjectType.MODEL, False), (CD, ObjectType.DATABASE, False), (U, ObjectType.ACCOUNT, False),
    (Privilege.FINETUNE, ObjectType.ACCOUNT, False),
    (Privilege.MANAGE_ACCESS, ObjectType.ACCOUNT, False),
])
def test_what_can_be_granted_on_what(privilege, object_type, ok):
    obj = SecurableObject.parse(object_type, {"ACCOUNT": "", "DATABASE": "d", "SCHEMA": "d.s",
                                              "MODEL": "d.s.m"}[object_type.value])
    if ok:
        check_grantable(privilege, obj)
    else:
        with pytest.raises(InvalidArgument):
            check_grantable(privilege, obj)


# -- prices ------------------------------------------------------------------------------------

def test_price_table():
    table = parse_prices({"default": {"training": 2, "inference": 0.5},
                          "models": {"small": {"training": 1.0}}})
    assert table.price("small") == Price(training=1.0, inference=0.5)  # falls back per key
    assert table.price("unknown") == Price(2.0, 0.5)
    assert table.training_credits("small", 3_000_000) == pytest.approx(3.0)
    assert table.inference_credits("unknown", 500_000) == pytest.approx(0.25)
    assert PriceTable().training_credits("x", 10**9) == 0.0


@pytest.mark.parametrize("raw", [
    {"default": {"training": -1}}, {"default": {"training": "1"}}, {"models": {"m": 3}},
    {"models": {"m": {"train": 1}}}, {"default": {"inference": True}},
])
def test_bad_price_tables_are_refused(raw):
    with pytest.raises(ValueError):
        parse_prices(raw)
