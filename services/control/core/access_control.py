"""Access control: the account directory behind AccessService (accounts, users, roles, API
keys, GRANT, REVOKE and SHOW GRANTS), deciding who may change who may do what.

Named for what it decides, not for what it stores: services.control.store.accounts and
store.access are the tables' persistence (no rules), core.authentication checks keys on each
RPC, and core.authorization answers "may this principal do this" for the other services.

Each operation runs in one transaction and decides with the caller's access read in that same
transaction. Who may do what:
- users, roles and role grants: ACCOUNTADMIN (Privilege.MANAGE_ACCESS);
- privileges on an object: its owner (OWNERSHIP on it or on its container) or ACCOUNTADMIN;
  granting OWNERSHIP transfers it;
- sharing a model with another account (USAGE only, to all its roles or one role of it): the
  same owner or ACCOUNTADMIN;
- API keys: a user manages its own; ACCOUNTADMIN manages everyone's;
- SHOW GRANTS: of oneself, of a role one holds, on an object one owns; ACCOUNTADMIN all.
The account always keeps an administrator that can log in: revoking the last ACCOUNTADMIN or
its last key is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from sqlalchemy.exc import IntegrityError

from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.control.core.authorization import load_access
from services.control.core.clock import Clock, utc_now
from services.control.domain.names import DEFAULT_DATABASE, identifier
from services.control.domain.principals import ApiKeyInfo, Principal, Role, User
from services.control.domain.privileges import (
    ACCOUNTADMIN,
    FINETUNE_USER,
    PUBLIC,
    SYSTEM_ROLES,
    Access,
    GrantRecord,
    ModelShare,
    ObjectType,
    Privilege,
    SecurableObject,
    check_grantable,
    check_shareable,
    creates_cycle,
    inherited_roles,
    role_name,
    user_name,
)
from services.control.store.access import ROLE, USER
from services.control.store.database import Store, Tx

SYSTEM = "SYSTEM"   # granted_by of the grants an account starts with
ACCOUNT = SecurableObject.account()


@dataclass(frozen=True)
class NewAccount:
    account_id: str
    user_id: str
    key_id: str
    key: str           # shown once


def create_account(tx: Tx, account_id: str, admin_name: str, now) -> NewAccount:
    """An account with its system roles and an administrator holding ACCOUNTADMIN and a key."""
    tx.accounts.create_account(account_id, now)
    roles = {name: tx.access.create_role(account_id, name, now, "system role")
             for name in SYSTEM_ROLES}
    admin = roles[ACCOUNTADMIN].id
    # Explicit, so SHOW GRANTS tells why administrators may FINETUNE and COMPLETE.
    tx.access.grant_role(account_id, roles[FINETUNE_USER].id, ROLE, admin, SYSTEM, now)
    user_id = tx.accounts.create_user(account_id, user_name(admin_name), now,
                                      default_role_id=admin)
    tx.access.grant_role(account_id, admin, USER, user_id, SYSTEM, now)
    key_id, key = tx.accounts.create_key(user_id, now)
    return NewAccount(account_id, user_id, key_id, key)


@dataclass(frozen=True)
class Identity:
    principal: Principal
    roles: list[str]            # effective, sorted
    default_role: str | None


@dataclass(frozen=True)
class GrantsQuery:
    """SHOW GRANTS TO ROLE r | TO USER u | ON object | OF ROLE r; all empty: the caller's."""

    to_role: str = ""
    to_user: str = ""
    on: SecurableObject | None = None
    of_role: str = ""


class AccountDirectory:
    def __init__(self, store: Store, database_exists: Callable[[str, str], bool],
                 clock: Clock = utc_now):
        self._store = store
        self._database_exists = database_exists
        self._clock = clock

    def _run(self, principal: Principal, work: Callable[[Tx, Access], object]):
        def in_tx(tx: Tx):
            return work(tx, load_access(tx, principal.account_id, principal.user_id))
        try:
            return self._store.run(in_tx)
        except IntegrityError:  # a concurrent create of the same name won
            raise AlreadyExists("it was created concurrently; retry to see it") from None

    # -- who am I -------------------------------------------------------------------------

    def whoami(self, principal: Principal) -> Identity:
        def work(tx: Tx, access: Access) -> Identity:
            user = tx.accounts.user_by_id(principal.user_id)
            return Identity(principal, sorted(access.roles), user.default_role if user else None)
        return self._run(principal, work)

    # -- users ----------------------------------------------------------------------------

    def create_user(self, principal: Principal, name: str, default_role: str = "") -> User:
        """A user; with `default_role`, that role is granted to it and becomes its default."""
        name = user_name(name)
        role = role_name(default_role, "default_role") if default_role.strip() else None

        def work(tx: Tx, access: Access) -> User:
            access.require(Privilege.MANAGE_ACCESS, ACCOUNT)
            if tx.accounts.user(principal.account_id, name) is not None:
                raise AlreadyExists(f"user {name} already exists")
            found = self._role(tx, principal.account_id, role) if role else None
            now = self._clock()
            user_id = tx.accounts.create_user(principal.account_id, name, now,
                                              default_role_id=found.id if found else None)
            if found is not None and found.name != PUBLIC:
                tx.access.grant_role(principal.account_id, found.id, USER, user_id,
                                     principal.user_name, now)
            created = tx.accounts.user_by_id(user_id)
            assert created is not None   # written in this transaction
            return created
        return self._run(principal, work)

    def list_users(self, principal: Principal) -> list[User]:
        def work(tx: Tx, access: Access) -> list[User]:
            access.require(Privilege.MANAGE_ACCESS, ACCOUNT)
            return tx.accounts.users(principal.account_id)
        return self._run(principal, work)

    def set_default_role(self, principal: Principal, name: str, role: str) -> User:
        """A user sets its own default role; an administrator anyone's. The user must hold it."""
        name = user_name(name) if name.strip() else principal.user_name
        role = role_name(role)

        def work(tx: Tx, access: Access) -> User:
            if name != principal.user_name:
                access.require(Privilege.MANAGE_ACCESS, ACCOUNT)
            user = self._user(tx, principal.account_id, name)
            found = self._role(tx, principal.account_id, role)
            if found.id not in load_access(tx, principal.account_id, user.id).role_ids:
                raise FailedPrecondition(f"user {name} does not hold role {role}")
            tx.accounts.set_default_role(user.id, found.id)
            updated = tx.accounts.user_by_id(user.id)
            assert updated is not None   # found above, in this transaction
            return updated
        return self._run(principal, work)

    # -- roles ----------------------------------------------------------------------------

    def create_role(self, principal: Principal, name: str, comment: str = "") -> Role:
        name = role_name(name)

        def work(tx: Tx, access: Access) -> Role:
            access.require(Privilege.MANAGE_ACCESS, ACCOUNT)
            if tx.access.role(principal.account_id, name) is not None:
                raise AlreadyExists(f"role {name} already exists")
            return tx.access.create_role(principal.account_id, name, self._clock(), comment)
        return self._run(principal, work)

    def drop_role(self, principal: Principal, name: str) -> None:
        """Drops the role and every grant of it and to it. What it owned is left to
        ACCOUNTADMIN (ownership grants go with the role)."""
        name = role_name(name)

        def work(tx: Tx, access: Access) -> None:
            access.require(Privilege.MANAGE_ACCESS, ACCOUNT)
            role = self._role(tx, principal.account_id, name)
            if role.name in SYSTEM_ROLES:
                raise FailedPrecondition(f"{role.name} is a system role and cannot be dropped")
            tx.access.drop_role(role)
            self._require_an_administrator(tx, principal.account_id)
        self._run(principal, work)

    def list_roles(self, principal: Principal) -> list[Role]:
        """Every role for an administrator; the roles the caller holds otherwise."""
        def work(tx: Tx, access: Access) -> list[Role]:
            roles = tx.access.roles(principal.account_id)
            return roles if access.admin else [r for r in roles if r.id in access.role_ids]
        return self._run(principal, work)

    def grant_role(self, principal: Principal, role: str, grantee_type: str,
                   grantee: str) -> bool:
        """GRANT ROLE role TO USER|ROLE grantee; False if it was already granted. A user
        without a default role gets this one."""
        role = role_name(role)

        def work(tx: Tx, access: Access) -> bool:
            access.require(Privilege.MANAGE_ACCESS, ACCOUNT)
            granted = self._role(tx, principal.account_id, role)
            if granted.name == PUBLIC:
                raise InvalidArgument("every user holds PUBLIC; it cannot be granted")
            grantee_id = self._grantee_id(tx, principal.account_id, grantee_type, grantee)
            now = self._clock()
            if grantee_type == ROLE:
                if creates_cycle(granted.id, grantee_id,
                                 tx.access.role_hierarchy(principal.account_id)):
                    raise FailedPrecondition(
                        f"granting {role} to role {role_name(grantee)} would make a role "
                        "inherit itself (a cycle)")
            added = tx.access.grant_role(principal.account_id, granted.id, grantee_type,
                                         grantee_id, principal.user_name, now)
            if grantee_type == USER and tx.accounts.default_role_id(grantee_id) is None:
                tx.accounts.set_default_role(grantee_id, granted.id)
            return added
        return self._run(principal, work)

    def revoke_role(self, principal: Principal, role: str, grantee_type: str,
                    grantee: str) -> bool:
        role = role_name(role)

        def work(tx: Tx, access: Access) -> bool:
            access.require(Privilege.MANAGE_ACCESS, ACCOUNT)
            granted = self._role(tx, principal.account_id, role)
            grantee_id = self._grantee_id(tx, principal.account_id, grantee_type, grantee)
            removed = tx.access.revoke_role(granted.id, grantee_type, grantee_id)
            self._require_an_administrator(tx, principal.account_id)
            return removed
        return self._run(principal, work)

    # -- privileges -----------------------------------------------------------------------

    def grant_privilege(self, principal: Principal, privilege: Privilege,
                        obj: SecurableObject, role: str, grantee_account: str = "") -> bool:
        """GRANT privilege ON obj TO ROLE role (OWNERSHIP: transferred to role). With
        `grantee_account`: share the model with that account (`share_model`)."""
        if grantee_account.strip():
            return self.share_model(principal, privilege, obj, grantee_account, role)
        check_grantable(privilege, obj)
        role = role_name(role)

        def work(tx: Tx, access: Access) -> bool:
            access.require(Privilege.OWNERSHIP, obj)   # before existence (AIP-211)
            local = obj.local()                        # the caller's own, once allowed
            self._require_exists(tx, principal.account_id, local)
            grantee = self._role(tx, principal.account_id, role)
            if privilege is Privilege.OWNERSHIP:
                for owner in tx.access.owners(principal.account_id, local):
                    if owner != grantee.id:
                        tx.access.revoke_privilege(owner, Privilege.OWNERSHIP, local)
            return tx.access.grant_privilege(principal.account_id, grantee.id, privilege, local,
                                             principal.user_name, self._clock())
        return self._run(principal, work)

    def revoke_privilege(self, principal: Principal, privilege: Privilege,
                         obj: SecurableObject, role: str, grantee_account: str = "") -> bool:
        if grantee_account.strip():
            return self.unshare_model(principal, privilege, obj, grantee_account, role)
        check_grantable(privilege, obj)
        role = role_name(role)

        def work(tx: Tx, access: Access) -> bool:
            access.require(Privilege.OWNERSHIP, obj)
            grantee = self._role(tx, principal.account_id, role)
            return tx.access.revoke_privilege(grantee.id, privilege, obj.local())
        return self._run(principal, work)

    # -- models shared with other accounts --------------------------------------------------

    def share_model(self, principal: Principal, privilege: Privilege, obj: SecurableObject,
                    account: str, role: str = "") -> bool:
        """GRANT USAGE ON MODEL m TO ACCOUNT a [ROLE r]: the model's owner (OWNERSHIP on it or
        its container) or ACCOUNTADMIN shares it with every role of account `a`, or with role
        `r` of it (matched by name there: the owner cannot see another account's roles).
        False if it was already shared so."""
        share = self._share(principal, privilege, obj, account, role)

        def work(tx: Tx, access: Access) -> bool:
            access.require(Privilege.OWNERSHIP, obj)   # before existence (AIP-211)
            self._require_exists(tx, principal.account_id, obj.local())
            if not tx.accounts.exists(share.grantee_account_id):
                raise NotFound(f"account {share.grantee_account_id} does not exist")
            return tx.shares.grant(share, principal.user_name, self._clock())
        return self._run(principal, work)

    def unshare_model(self, principal: Principal, privilege: Privilege, obj: SecurableObject,
                      account: str, role: str = "") -> bool:
        """REVOKE what share_model granted; the other account's COMPLETE stops within the
        resolution cache TTL. False if it was not shared so."""
        share = self._share(principal, privilege, obj, account, role)

        def work(tx: Tx, access: Access) -> bool:
            access.require(Privilege.OWNERSHIP, obj)
            return tx.shares.revoke(share)
        return self._run(principal, work)

    @staticmethod
    def _share(principal: Principal, privilege: Privilege, obj: SecurableObject, account: str,
               role: str) -> ModelShare:
        check_shareable(privilege, obj)
        account = identifier(account, "grantee_account")
        if account == principal.account_id:
            raise InvalidArgument(f"grantee_account {account} is your own account: grant to "
                                  "one of its roles, without grantee_account")
        return ModelShare(owner_account_id=principal.account_id, model=obj.name,
                          grantee_account_id=account,
                          grantee_role=role_name(role) if role.strip() else "")

    def show_grants(self, principal: Principal, query: GrantsQuery) -> list[GrantRecord]:
        account = principal.account_id

        def work(tx: Tx, access: Access) -> list[GrantRecord]:
            if query.on is not None:
                access.require(Privilege.OWNERSHIP, query.on)
                on = query.on.local()
                shares = tx.shares.grants_on(account, on.name) \
                    if on.type is ObjectType.MODEL else []
                return tx.access.privilege_grants(account, obj=on) + shares
            if query.to_role or query.of_role:
                name = role_name(query.to_role or query.of_role)
                if not access.admin and name not in access.roles:
                    access.require(Privilege.MANAGE_ACCESS, ACCOUNT)
                role = self._role(tx, account, name)
                if query.of_role:
                    return tx.access.role_grants(account, role_id=role.id)
                return (tx.access.privilege_grants(account, role_id=role.id)
                        + tx.access.role_grants(account, grantee_type=ROLE, grantee_id=role.id))
            name = user_name(query.to_user) if query.to_user.strip() else principal.user_name
            if name != principal.user_name:
                access.require(Privilege.MANAGE_ACCESS, ACCOUNT)
            user = self._user(tx, account, name)
            return tx.access.role_grants(account, grantee_type=USER, grantee_id=user.id)
        return self._run(principal, work)

    # -- API keys -------------------------------------------------------------------------

    def create_key(self, principal: Principal, name: str = "") -> tuple[ApiKeyInfo, str]:
        """A new key for the caller, or (administrators) for another user; the key itself is
        returned once and only its hash is kept."""
        name = user_name(name) if name.strip() else principal.user_name

        def work(tx: Tx, access: Access) -> tuple[ApiKeyInfo, str]:
            if name != principal.user_name:
                access.require(Privilege.MANAGE_ACCESS, ACCOUNT)
            user = self._user(tx, principal.account_id, name)
            key_id, key = tx.accounts.create_key(user.id, self._clock())
            info = tx.accounts.key(principal.account_id, key_id)
            assert info is not None   # written in this transaction
            return info, key
        return self._run(principal, work)

    def list_keys(self, principal: Principal, name: str = "",
                  all_users: bool = False) -> list[ApiKeyInfo]:
        name = user_name(name) if name.strip() else principal.user_name

        def work(tx: Tx, access: Access) -> list[ApiKeyInfo]:
            if all_users or name != principal.user_name:
                access.require(Privilege.MANAGE_ACCESS, ACCOUNT)
            if all_users:
                return tx.accounts.keys(principal.account_id)
            user = self._user(tx, principal.account_id, name)
            return tx.accounts.keys(principal.account_id, user.id)
        return self._run(principal, work)

    def revoke_key(self, principal: Principal, key_id: str) -> ApiKeyInfo:
        key_id = key_id.strip()
        if not key_id:
            raise InvalidArgument("key_id is required")

        def work(tx: Tx, access: Access) -> ApiKeyInfo:
            key = tx.accounts.key(principal.account_id, key_id)
            if key is None or key.user_id != principal.user_id:
                access.require(Privilege.MANAGE_ACCESS, ACCOUNT)   # before existence
            if key is None:
                raise NotFound(f"API key {key_id} does not exist")
            tx.accounts.revoke_key(key.id, self._clock())
            self._require_an_administrator(tx, principal.account_id)
            revoked = tx.accounts.key(principal.account_id, key.id)
            assert revoked is not None   # found above, in this transaction
            return revoked
        return self._run(principal, work)

    # -- lookups and invariants -----------------------------------------------------------

    @staticmethod
    def _role(tx: Tx, account_id: str, name: str) -> Role:
        role = tx.access.role(account_id, name)
        if role is None:
            raise NotFound(f"role {name} does not exist")
        return role

    @staticmethod
    def _user(tx: Tx, account_id: str, name: str) -> User:
        user = tx.accounts.user(account_id, name)
        if user is None:
            raise NotFound(f"user {name} does not exist")
        return user

    def _grantee_id(self, tx: Tx, account_id: str, grantee_type: str, grantee: str) -> str:
        if grantee_type == USER:
            return self._user(tx, account_id, user_name(grantee, "grantee")).id
        if grantee_type == ROLE:
            return self._role(tx, account_id, role_name(grantee, "grantee")).id
        raise InvalidArgument("grantee_type must be USER or ROLE")

    def _require_exists(self, tx: Tx, account_id: str, obj: SecurableObject) -> None:
        if obj.type is ObjectType.ACCOUNT:
            return
        if obj.type is ObjectType.MODEL:   # registered, whether or not its database holds tables
            if tx.models.get(account_id, obj.name) is None:
                raise NotFound(f"model {obj.name} does not exist")
            return
        database = obj.name.split(".")[0]
        if database != DEFAULT_DATABASE and not self._database_exists(account_id, database):
            raise NotFound(f"database {database} does not exist")

    @staticmethod
    def _require_an_administrator(tx: Tx, account_id: str) -> None:
        """Refuse a change that leaves no user both holding ACCOUNTADMIN and a live key."""
        admin = tx.access.role(account_id, ACCOUNTADMIN)
        if admin is None:
            return
        hierarchy = tx.access.role_hierarchy(account_id)
        admin_roles = {r.id for r in tx.access.roles(account_id)
                       if admin.id in inherited_roles([r.id], hierarchy)}
        users = set().union(*(tx.access.users_with_role(r) for r in admin_roles)) \
            if admin_roles else set()
        if tx.accounts.active_key_count(users) == 0:
            raise FailedPrecondition(
                "this would leave the account without an ACCOUNTADMIN user holding an active "
                "API key; grant ACCOUNTADMIN or create a key for another user first")
