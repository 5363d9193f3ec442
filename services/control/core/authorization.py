"""The one place that decides what a caller may do: its effective access (its roles, their
grants, and the models other accounts share with it), read fresh from the store for every
decision, and `authorize(principal, privilege, object)`."""

from __future__ import annotations

from services.common.errors import FailedPrecondition
from services.control.domain.names import qualified_name
from services.control.domain.principals import Principal
from services.control.domain.privileges import (
    PUBLIC,
    Access,
    Privilege,
    SecurableObject,
    inherited_roles,
)
from services.control.store.database import Store, Tx


def load_access(tx: Tx, account_id: str, user_id: str) -> Access:
    """The user's roles (direct, PUBLIC, inherited) and their privileges, as of this
    transaction."""
    direct = tx.access.user_role_ids(user_id)
    public = tx.access.role(account_id, PUBLIC)
    if public is not None:
        direct.add(public.id)
    role_ids = inherited_roles(direct, tx.access.role_hierarchy(account_id))
    names = tx.access.role_names(role_ids)
    role_ids = frozenset(r for r in role_ids if r in names)
    roles = frozenset(names[r] for r in role_ids) | {PUBLIC}
    shared = frozenset((s.owner_account_id, s.model) for s in tx.shares.to_account(account_id)
                       if s.reaches(account_id, roles))
    return Access(account_id=account_id, user_id=user_id, roles=roles, role_ids=role_ids,
                  grants=frozenset(tx.access.privileges_of(role_ids)), shared=shared)


class Authorizer:
    def __init__(self, store: Store):
        self._store = store

    def access(self, principal: Principal) -> Access:
        return self._store.run(lambda tx: load_access(tx, principal.account_id,
                                                      principal.user_id))

    def authorize(self, principal: Principal, privilege: Privilege,
                  obj: SecurableObject) -> Access:
        """The caller's access once it is known to hold `privilege` on `obj`; PermissionDenied
        otherwise, before anything looks the object up."""
        access = self.access(principal)
        access.require(privilege, obj)
        return access

    def authorize_model_creation(self, principal: Principal, model_name: str) -> Access:
        """What creating model `model_name` needs, whatever creates it (a job, an import):
        FINETUNE on the account and CREATE MODEL (or OWNERSHIP) on its schema; one read of the
        access."""
        access = self.authorize(principal, Privilege.FINETUNE, SecurableObject.account())
        target = qualified_name(model_name, "model name")
        access.require(Privilege.CREATE_MODEL,
                       SecurableObject.schema(f"{target.database}.{target.schema}"))
        return access

    def owner_role(self, principal: Principal) -> str:
        """The role that will own what the caller creates: its default role, still held."""
        def work(tx: Tx) -> str:
            role_id = tx.accounts.default_role_id(principal.user_id)
            access = load_access(tx, principal.account_id, principal.user_id)
            if role_id is None or role_id not in access.role_ids:
                raise FailedPrecondition(
                    f"user {principal.user_name} has no default role it holds, so nothing "
                    "could own what it creates: an administrator sets one with "
                    "SetDefaultRole (finetune access user default-role)")
            return role_id
        return self._store.run(work)
