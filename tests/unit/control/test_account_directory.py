"""The account directory on a real SQLite store: users, roles, hierarchies, GRANT / REVOKE /
SHOW GRANTS, API keys, and the invariants (no cycles, an administrator always remains)."""

import pytest
from control_testbed import acting_as, new_account, new_user

from finetune.control.v1 import access_pb2
from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from services.common.keys import hash_key
from services.control.api.access import AccessServicer
from services.control.core.access_control import GrantsQuery
from services.control.domain.privileges import Privilege, SecurableObject
from services.control.store.tables import ApiKeyRow

U, OWN, CM = Privilege.USAGE, Privilege.OWNERSHIP, Privilege.CREATE_MODEL
SALES = SecurableObject.database("sales")
BOT = SecurableObject.model("sales.public.bot")


@pytest.fixture
def directory(control):
    return control.directory


def authenticate(control, key):
    return control.store.run(lambda tx: tx.accounts.authenticate(key))


def access_of(control, principal):
    return control.authorizer.access(principal)


def test_users_roles_and_effective_privileges(control, directory, admin):
    directory.create_role(admin, "reader")
    directory.create_role(admin, "analyst")
    alice = directory.create_user(admin, "Alice", default_role="analyst")
    assert (alice.name, alice.default_role) == ("alice", "ANALYST")
    with pytest.raises(AlreadyExists):
        directory.create_user(admin, "ALICE")
    with pytest.raises(AlreadyExists):
        directory.create_role(admin, "Reader")
    # analyst inherits reader; privileges granted to reader reach alice
    assert directory.grant_role(admin, "reader", "ROLE", "analyst")
    assert not directory.grant_role(admin, "reader", "ROLE", "analyst")  # already granted
    directory.grant_privilege(admin, Privilege.CREATE_DATABASE, SecurableObject.account(),
                              "reader")
    key = directory.create_key(admin, "alice")[1]
    me = access_of(control, authenticate(control, key))
    assert me.roles == {"ANALYST", "READER", "PUBLIC"}
    assert me.allows(Privilege.CREATE_DATABASE, SecurableObject.account())
    assert not me.allows(Privilege.FINETUNE, SecurableObject.account())
    directory.revoke_role(admin, "reader", "ROLE", "analyst")
    me = access_of(control, authenticate(control, key))
    assert me.roles == {"ANALYST", "PUBLIC"}
    assert not me.allows(Privilege.CREATE_DATABASE, SecurableObject.account())
    assert [u.name for u in directory.list_users(admin)] == ["admin", "alice"]
    assert {r.name for r in directory.list_roles(admin)} == {
        "ACCOUNTADMIN", "ANALYST", "FINETUNE_USER", "PUBLIC", "READER"}
    assert [r.name for r in directory.list_roles(authenticate(control, key))] == [
        "ANALYST", "PUBLIC"]


def test_cycles_are_refused(directory, admin):
    for name in ("a", "b", "c"):
        directory.create_role(admin, name)
    directory.grant_role(admin, "a", "ROLE", "b")   # b inherits a
    directory.grant_role(admin, "b", "ROLE", "c")   # c inherits b
    for role, grantee in (("c", "a"), ("b", "a"), ("a", "a")):
        with pytest.raises(FailedPrecondition, match="cycle"):
            directory.grant_role(admin, role, "ROLE", grantee)
    with pytest.raises(InvalidArgument, match="PUBLIC"):
        directory.grant_role(admin, "public", "ROLE", "a")


def test_only_the_administrator_manages_users_roles_and_role_grants(control, directory, admin):
    directory.create_role(admin, "analyst")
    bob, _ = new_user(control, admin.account_id, "bob", ("ANALYST",))
    calls = [lambda: directory.create_user(bob, "eve"), lambda: directory.list_users(bob),
             lambda: directory.create_role(bob, "x"), lambda: directory.drop_role(bob, "analyst"),
             lambda: directory.drop_role(bob, "no_such_role"),
             lambda: directory.grant_role(bob, "accountadmin", "USER", "bob"),
             lambda: directory.revoke_role(bob, "analyst", "USER", "bob"),
             lambda: directory.create_key(bob, "admin"),
             lambda: directory.create_key(bob, "nobody_at_all"),
             lambda: directory.list_keys(bob, all_users=True),
             lambda: directory.set_default_role(bob, "admin", "public")]
    for call in calls:
        with pytest.raises(PermissionDenied):
            call()


def test_drop_role_takes_its_grants_and_system_roles_stay(control, directory, admin, bot):
    directory.create_role(admin, "temp")
    user, key = new_user(control, admin.account_id, "tina", ("TEMP",))
    directory.grant_privilege(admin, U, BOT, "temp")
    assert access_of(control, user).allows(U, BOT)
    directory.drop_role(admin, "temp")
    assert not access_of(control, user).allows(U, BOT)
    assert control.store.run(lambda tx: tx.accounts.user_by_id(user.user_id)).default_role is None
    for system in ("accountadmin", "public", "finetune_user"):
        with pytest.raises(FailedPrecondition, match="system role"):
            directory.drop_role(admin, system)
    with pytest.raises(NotFound):
        directory.drop_role(admin, "temp")


def test_privilege_grants_need_ownership_and_checks_come_before_existence(
        control, directory, admin, bot):
    directory.create_role(admin, "owner_role")
    directory.create_role(admin, "reader")
    owner, _ = new_user(control, admin.account_id, "olga", ("OWNER_ROLE",))
    stranger, _ = new_user(control, admin.account_id, "sam", ("READER",))
    # neither may grant on the model yet, whether or not it exists
    for obj in (BOT, SecurableObject.model("sales.public.nothing")):
        with pytest.raises(PermissionDenied):
            directory.grant_privilege(owner, U, obj, "reader")
    # the administrator transfers ownership of the schema; the owner then grants
    directory.grant_privilege(admin, OWN, SecurableObject.schema("sales.public"), "owner_role")
    assert directory.grant_privilege(owner, U, BOT, "reader")
    assert access_of(control, stranger).allows(U, BOT)
    with pytest.raises(NotFound, match="nothing"):   # an owner may learn what does not exist
        directory.grant_privilege(owner, U, SecurableObject.model("sales.public.nothing"),
                                  "reader")
    with pytest.raises(NotFound, match="database nope"):
        directory.grant_privilege(admin, U, SecurableObject.database("nope"), "reader")
    with pytest.raises(NotFound, match="role NOPE"):
        directory.grant_privilege(admin, U, BOT, "nope")
    with pytest.raises(InvalidArgument):
        directory.grant_privilege(admin, CM, BOT, "reader")
    with pytest.raises(PermissionDenied):   # the reader may not pass it on
        directory.grant_privilege(stranger, U, BOT, "public")
    assert directory.revoke_privilege(owner, U, BOT, "reader")
    assert not directory.revoke_privilege(owner, U, BOT, "reader")
    assert not access_of(control, stranger).allows(U, BOT)


def test_granting_ownership_transfers_it(control, directory, admin, bot):
    for name in ("first", "second"):
        directory.create_role(admin, name)
    first, _ = new_user(control, admin.account_id, "f", ("FIRST",))
    directory.grant_privilege(admin, OWN, BOT, "first")
    assert access_of(control, first).allows(OWN, BOT)
    directory.grant_privilege(first, OWN, BOT, "second")  # the owner hands it on
    assert not access_of(control, first).allows(OWN, BOT)
    owners = [g.grantee_name for g in directory.show_grants(admin, GrantsQuery(on=BOT))
              if g.privilege == "OWNERSHIP"]
    assert owners == ["SECOND"]


def test_show_grants(control, directory, admin, bot):
    directory.create_role(admin, "analyst")
    directory.grant_role(admin, "finetune_user", "ROLE", "analyst")
    directory.grant_privilege(admin, U, SALES, "analyst")
    directory.grant_privilege(admin, CM, SecurableObject.schema("sales.public"), "analyst")
    ann, _ = new_user(control, admin.account_id, "ann", ("ANALYST",))
    to_role = directory.show_grants(ann, GrantsQuery(to_role="analyst"))
    assert {(g.privilege, g.granted_on, g.name) for g in to_role} == {
        ("USAGE", "DATABASE", "sales"), ("CREATE MODEL", "SCHEMA", "sales.public"),
        ("USAGE", "ROLE", "FINETUNE_USER")}
    assert all(g.granted_by == "admin" for g in to_role)
    mine = directory.show_grants(ann, GrantsQuery())
    assert [(g.name, g.granted_to, g.grantee_name) for g in mine] == [("ANALYST", "USER", "ann")]
    holders = directory.show_grants(admin, GrantsQuery(of_role="accountadmin"))
    assert [(g.granted_to, g.grantee_name) for g in holders] == [("USER", "admin")]
    on_model = directory.show_grants(admin, GrantsQuery(on=BOT))
    assert [(g.privilege, g.grantee_name) for g in on_model] == [("OWNERSHIP", "ACCOUNTADMIN")]
    for query in (GrantsQuery(to_role="accountadmin"), GrantsQuery(to_role="no_such"),
                  GrantsQuery(to_user="admin"), GrantsQuery(of_role="accountadmin"),
                  GrantsQuery(on=BOT), GrantsQuery(on=SecurableObject.model("x.y.z"))):
        with pytest.raises(PermissionDenied):
            directory.show_grants(ann, query)


def test_api_keys_are_shown_once_stored_hashed_and_revocable(control, directory, admin):
    directory.create_role(admin, "analyst")
    bob, _ = new_user(control, admin.account_id, "bob", ("ANALYST",))
    info, key = directory.create_key(bob)
    assert info.user_name == "bob" and key.startswith("ft_")
    with control.store.transaction() as tx:
        stored = tx.session.get(ApiKeyRow, info.id).key_hash
    assert stored == hash_key(key) and key not in stored
    assert authenticate(control, key).user_name == "bob"
    assert [k.id for k in directory.list_keys(bob)][-1] == info.id
    revoked = directory.revoke_key(bob, info.id)
    assert revoked.revoked_on is not None
    assert authenticate(control, key) is None   # revoked: never authenticates again
    # someone else's key, or one that does not exist: the same answer
    admin_key_id = directory.list_keys(admin)[0].id
    for key_id in (admin_key_id, "key_does_not_exist"):
        with pytest.raises(PermissionDenied):
            directory.revoke_key(bob, key_id)
    with pytest.raises(NotFound):
        directory.revoke_key(admin, "key_does_not_exist")
    assert {k.user_name for k in directory.list_keys(admin, all_users=True)} == {"admin", "bob"}


def test_an_administrator_with_a_key_always_remains(control, directory, admin):
    only_key = directory.list_keys(admin)[0].id
    with pytest.raises(FailedPrecondition, match="without an ACCOUNTADMIN"):
        directory.revoke_key(admin, only_key)
    with pytest.raises(FailedPrecondition):
        directory.revoke_role(admin, "accountadmin", "USER", "admin")
    # with a second administrator it is allowed
    directory.create_user(admin, "root2", default_role="accountadmin")
    _, root2_key = directory.create_key(admin, "root2")
    directory.revoke_key(admin, only_key)
    assert authenticate(control, root2_key) is not None


def test_default_roles(control, directory, admin):
    directory.create_role(admin, "analyst")
    directory.create_role(admin, "other")
    directory.create_user(admin, "dan")
    assert directory.grant_role(admin, "analyst", "USER", "dan")
    dan_key = directory.create_key(admin, "dan")[1]
    dan = authenticate(control, dan_key)
    assert directory.whoami(dan).default_role == "ANALYST"  # the first role granted
    with pytest.raises(FailedPrecondition, match="does not hold"):
        directory.set_default_role(dan, "", "other")
    directory.grant_role(admin, "other", "USER", "dan")
    assert directory.set_default_role(dan, "", "other").default_role == "OTHER"
    directory.revoke_role(admin, "other", "USER", "dan")
    with pytest.raises(FailedPrecondition, match="no default role"):
        control.authorizer.owner_role(dan)


def test_nothing_crosses_accounts(control, directory, admin, bot):
    other, _ = new_account(control, "acme")   # ACCOUNTADMIN of acme
    assert [u.name for u in directory.list_users(other)] == ["someone"]
    with pytest.raises(NotFound):
        directory.create_key(other, "admin")
    with pytest.raises(NotFound):
        directory.revoke_key(other, directory.list_keys(admin)[0].id)
    with pytest.raises(NotFound):   # the model does not exist in acme
        directory.grant_privilege(other, U, BOT, "public")
    # the same role name in another account is another role: grants do not leak through it
    directory.create_role(other, "analyst")
    directory.create_role(admin, "analyst")
    directory.grant_privilege(admin, U, BOT, "analyst")
    directory.grant_role(other, "analyst", "USER", "someone")
    theirs = access_of(control, other)
    assert "ANALYST" in theirs.roles and (U, BOT) not in theirs.grants


async def test_the_servicer_maps_requests_and_enums(control, admin, bot):
    servicer = AccessServicer(control.directory)
    with acting_as(admin):
        role = await servicer.CreateRole(access_pb2.CreateRoleRequest(name="ops"), None)
        assert role.name == "OPS" and role.id.startswith("rol_")
        user = await servicer.CreateUser(access_pb2.CreateUserRequest(
            name="otto", default_role="ops"), None)
        assert user.default_role == "OPS"
        granted = await servicer.GrantPrivilege(access_pb2.GrantPrivilegeRequest(
            privilege=access_pb2.USAGE, object_type=access_pb2.MODEL,
            object_name="sales.public.bot", role="ops"), None)
        assert granted.granted
        shown = await servicer.ShowGrants(access_pb2.ShowGrantsRequest(
            on=access_pb2.ObjectRef(type=access_pb2.MODEL, name="sales.public.bot")), None)
        assert {(g.privilege, g.granted_on, g.granted_to, g.grantee_name)
                for g in shown.grants} == {
            ("OWNERSHIP", access_pb2.MODEL, access_pb2.TO_ROLE, "ACCOUNTADMIN"),
            ("USAGE", access_pb2.MODEL, access_pb2.TO_ROLE, "OPS")}
        created = await servicer.CreateApiKey(access_pb2.CreateApiKeyRequest(user="otto"), None)
        assert created.key and created.info.user == "otto"
        listed = await servicer.ListApiKeys(access_pb2.ListApiKeysRequest(user="otto"), None)
        assert [k.id for k in listed.keys] == [created.info.id]
        revoked = await servicer.RevokeApiKey(access_pb2.RevokeApiKeyRequest(
            key_id=created.info.id), None)
        assert revoked.HasField("revoked_on")
        with pytest.raises(InvalidArgument):
            await servicer.GrantRole(access_pb2.GrantRoleRequest(role="ops", grantee="otto"), None)
        with pytest.raises(InvalidArgument):
            await servicer.GrantPrivilege(access_pb2.GrantPrivilegeRequest(
                object_type=access_pb2.MODEL, object_name="sales.public.bot", role="ops"), None)
        with pytest.raises(InvalidArgument):
            await servicer.GrantPrivilege(access_pb2.GrantPrivilegeRequest(
                privilege=access_pb2.USAGE, object_type=access_pb2.ROLE, object_name="ops",
                role="ops"), None)
