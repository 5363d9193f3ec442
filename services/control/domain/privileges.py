"""Privileges, grants and a caller's effective access, after Snowflake's model (pure: no I/O).

- Objects: the ACCOUNT, DATABASE `db`, SCHEMA `db.schema`, MODEL `db.schema.name`.
- Privileges are granted to roles; roles are granted to users and to other roles (a role
  inherits every role granted to it). A user acts with all its roles, transitively, plus PUBLIC.
- ACCOUNTADMIN holds everything in its account. FINETUNE_USER (Cortex's SNOWFLAKE.CORTEX_USER)
  is a role whose holders may FINETUNE and COMPLETE.
- OWNERSHIP of an object implies every privilege on it and on what it contains (a database's
  schemas and models, a schema's models).
- One thing crosses accounts: USAGE on a MODEL, shared by its owner with another account (all
  its roles, or one role of it named explicitly). The other account names the model
  `owner_account.database.schema.model`; ACCOUNTADMIN there holds nothing on it unless the
  share reaches one of its roles, and no privilege but USAGE is ever held on another account's
  object.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Iterable, Mapping

from services.common.errors import InvalidArgument, PermissionDenied
from services.control.domain.names import (
    DEFAULT_DATABASE,
    account_model_name,
    identifier,
    shared_model_name,
)

ACCOUNTADMIN = "ACCOUNTADMIN"
PUBLIC = "PUBLIC"
FINETUNE_USER = "FINETUNE_USER"
# Every account has these; they cannot be dropped. Everyone holds PUBLIC without a grant.
SYSTEM_ROLES = (ACCOUNTADMIN, PUBLIC, FINETUNE_USER)


class ObjectType(enum.Enum):
    ACCOUNT = "ACCOUNT"
    DATABASE = "DATABASE"
    SCHEMA = "SCHEMA"
    MODEL = "MODEL"


class Privilege(enum.Enum):
    USAGE = "USAGE"
    OWNERSHIP = "OWNERSHIP"
    CREATE_MODEL = "CREATE MODEL"
    CREATE_TABLE = "CREATE TABLE"
    CREATE_DATABASE = "CREATE DATABASE"
    # Never granted on an object, held through a role:
    FINETUNE = "FINETUNE"            # the FINETUNE_USER role: CreateFineTuningJob and COMPLETE
    MANAGE_ACCESS = "MANAGE ACCESS"  # users, roles, role grants, other users' keys: ACCOUNTADMIN


GRANTABLE: Mapping[ObjectType, frozenset[Privilege]] = {
    ObjectType.ACCOUNT: frozenset({Privilege.CREATE_DATABASE}),
    ObjectType.DATABASE: frozenset({Privilege.USAGE, Privilege.OWNERSHIP}),
    ObjectType.SCHEMA: frozenset({Privilege.USAGE, Privilege.OWNERSHIP, Privilege.CREATE_MODEL,
                                  Privilege.CREATE_TABLE}),
    ObjectType.MODEL: frozenset({Privilege.USAGE, Privilege.OWNERSHIP}),
}


def role_name(value: str, what: str = "role name") -> str:
    """Role names are identifiers shown in upper case, as Snowflake shows them."""
    return identifier(value, what).upper()


def user_name(value: str, what: str = "user name") -> str:
    return identifier(value, what)


@dataclass(frozen=True)
class SecurableObject:
    type: ObjectType
    name: str  # canonical: "" (account), db, db.schema, db.schema.model
    # The account holding the object when named with it (a model's four-part name):
    # "" means the caller's own account.
    account_id: str = ""

    ACCOUNT_NAME = ""

    @classmethod
    def account(cls) -> "SecurableObject":
        return cls(ObjectType.ACCOUNT, cls.ACCOUNT_NAME)

    @classmethod
    def database(cls, name: str) -> "SecurableObject":
        return cls(ObjectType.DATABASE, identifier(name, "database name"))

    @classmethod
    def schema(cls, name: str) -> "SecurableObject":
        """`schema` (in the default database) or `database.schema`."""
        parts = (name or "").strip().split(".")
        if len(parts) > 2:
            raise InvalidArgument(f"schema name {name!r} has too many parts: use database.schema")
        if len(parts) == 1:
            parts = [DEFAULT_DATABASE, parts[0]]
        return cls(ObjectType.SCHEMA, ".".join(identifier(p, "schema name part") for p in parts))

    @classmethod
    def model(cls, name: str) -> "SecurableObject":
        """`name` .. `database.schema.name` in the caller's account, or
        `account.database.schema.name`: a model of that account (its owner may share it)."""
        account_id, qualified = account_model_name(name, "model name")
        return cls(ObjectType.MODEL, str(qualified), account_id)

    def in_other_account(self, account_id: str) -> bool:
        return self.account_id not in ("", account_id)

    def local(self) -> "SecurableObject":
        """The same object, named within its account."""
        return replace(self, account_id="") if self.account_id else self

    @classmethod
    def parse(cls, object_type: ObjectType, name: str) -> "SecurableObject":
        if object_type is ObjectType.ACCOUNT:
            return cls.account()
        if object_type is ObjectType.DATABASE:
            return cls.database(name)
        if object_type is ObjectType.SCHEMA:
            return cls.schema(name)
        if object_type is ObjectType.MODEL:
            return cls.model(name)
        raise InvalidArgument(f"unknown object type {object_type}")

    def lineage(self) -> list["SecurableObject"]:
        """This object, then the schema and the database that contain it."""
        if self.type is ObjectType.ACCOUNT:
            return [self]
        parts = self.name.split(".")
        out = [self]
        if self.type is ObjectType.MODEL:
            out.append(SecurableObject(ObjectType.SCHEMA, ".".join(parts[:2])))
        if self.type in (ObjectType.MODEL, ObjectType.SCHEMA):
            out.append(SecurableObject(ObjectType.DATABASE, parts[0]))
        return out

    def __str__(self) -> str:
        if self.type is ObjectType.ACCOUNT:
            return "ACCOUNT"
        prefix = f"{self.account_id}." if self.account_id else ""
        return f"{self.type.value} {prefix}{self.name}"


def check_grantable(privilege: Privilege, obj: SecurableObject) -> None:
    if privilege not in GRANTABLE[obj.type]:
        allowed = ", ".join(sorted(p.value for p in GRANTABLE[obj.type]))
        raise InvalidArgument(f"{privilege.value} cannot be granted on {obj.type.value} "
                              f"(grantable: {allowed})")


def check_shareable(privilege: Privilege, obj: SecurableObject) -> None:
    """Only USAGE on a MODEL crosses accounts."""
    if obj.type is not ObjectType.MODEL or privilege is not Privilege.USAGE:
        raise InvalidArgument(
            f"only USAGE on a MODEL can be granted to another account, not {privilege.value} "
            f"on {obj.type.value}")


# -- models shared across accounts -------------------------------------------------------------

@dataclass(frozen=True)
class ModelShare:
    """USAGE on model `model` of account `owner_account_id`, granted to account
    `grantee_account_id`: to every role of it (`grantee_role` "") or to that one role."""

    owner_account_id: str
    model: str                 # canonical db.schema.name in the owner's account
    grantee_account_id: str
    grantee_role: str = ""     # a role name of the grantee account (upper case), or ""

    def reaches(self, account_id: str, roles: Iterable[str]) -> bool:
        return self.grantee_account_id == account_id and (
            not self.grantee_role or self.grantee_role in set(roles))

    @property
    def shared_name(self) -> str:
        return shared_model_name(self.owner_account_id, self.model)


def model_owner_account(model: str, caller_account_id: str) -> str | None:
    """The account owning `model` as a caller named it, when that is not the caller's own
    (a four-part name of another account); None otherwise. Base model names are not split."""
    parts = model.split(".")
    if len(parts) != 4 or parts[0] == caller_account_id:
        return None
    return parts[0]


# -- the role hierarchy ------------------------------------------------------------------------

def inherited_roles(roles: Iterable[str], inherits: Mapping[str, Iterable[str]]) -> frozenset[str]:
    """`roles` and every role they inherit, transitively (`inherits[r]`: roles granted to r).
    Terminates on a cycle, although grants never create one."""
    seen: set[str] = set()
    stack = list(roles)
    while stack:
        role = stack.pop()
        if role in seen:
            continue
        seen.add(role)
        stack.extend(inherits.get(role, ()))
    return frozenset(seen)


def effective_roles(direct: Iterable[str], inherits: Mapping[str, Iterable[str]]) -> frozenset[str]:
    """A user's roles: those granted to it, PUBLIC, and what they inherit."""
    return inherited_roles([*direct, PUBLIC], inherits)


def creates_cycle(role: str, grantee_role: str, inherits: Mapping[str, Iterable[str]]) -> bool:
    """Would granting `role` to `grantee_role` make a role inherit itself?"""
    return grantee_role in inherited_roles([role], inherits)


# -- a caller's effective access ---------------------------------------------------------------

@dataclass(frozen=True)
class Access:
    """What one user may do right now: its effective roles and their privileges."""

    account_id: str
    user_id: str
    roles: frozenset[str]                      # names, effective (transitive, with PUBLIC)
    role_ids: frozenset[str]                   # the same roles, by id
    grants: frozenset[tuple[Privilege, SecurableObject]]
    # Models other accounts share with this user: (owner account, db.schema.name).
    shared: frozenset[tuple[str, str]] = frozenset()

    @property
    def admin(self) -> bool:
        return ACCOUNTADMIN in self.roles

    @property
    def restricted(self) -> bool:
        """Not an admin: errors must not tell what exists beyond what it may use."""
        return not self.admin

    def allows(self, privilege: Privilege, obj: SecurableObject) -> bool:
        if obj.in_other_account(self.account_id):   # a share, or nothing (not even for admins)
            return (privilege is Privilege.USAGE and obj.type is ObjectType.MODEL
                    and (obj.account_id, obj.name) in self.shared)
        obj = obj.local()
        if self.admin:
            return True
        if privilege is Privilege.FINETUNE:
            return FINETUNE_USER in self.roles
        if privilege is Privilege.MANAGE_ACCESS:
            return False
        if any((Privilege.OWNERSHIP, container) in self.grants for container in obj.lineage()):
            return True
        return (privilege, obj) in self.grants

    def require(self, privilege: Privilege, obj: SecurableObject) -> None:
        """PermissionDenied unless allowed. Called before looking the object up, so the answer
        is the same whether or not it exists (AIP-211)."""
        if not self.allows(privilege, obj):
            raise PermissionDenied(_denied(privilege, obj))

    def owns(self, owner_role_id: str | None) -> bool:
        """For objects owned by one role and not grantable (jobs): admin or a holder of it."""
        return self.admin or (owner_role_id is not None and owner_role_id in self.role_ids)

    # ReadScope for the query sandbox: USAGE on the database and on the schema.
    def can_read_database(self, database: str) -> bool:
        return self.allows(Privilege.USAGE, SecurableObject(ObjectType.DATABASE, database))

    def can_read_schema(self, database: str, schema: str) -> bool:
        return self.can_read_database(database) and self.allows(
            Privilege.USAGE, SecurableObject(ObjectType.SCHEMA, f"{database}.{schema}"))


def _denied(privilege: Privilege, obj: SecurableObject) -> str:
    if privilege is Privilege.FINETUNE:
        return f"the {FINETUNE_USER} role is required"
    if privilege is Privilege.MANAGE_ACCESS:
        return f"the {ACCOUNTADMIN} role is required"
    return f"{privilege.value} on {obj} is required (or OWNERSHIP of it or its container)"


@dataclass(frozen=True)
class GrantRecord:
    """One row of SHOW GRANTS: a privilege on an object, or a role (privilege USAGE on ROLE r),
    granted to a role or a user."""

    created_on: datetime | None
    privilege: str
    granted_on: str        # ACCOUNT, DATABASE, SCHEMA, MODEL or ROLE
    name: str
    granted_to: str        # ROLE or USER; ACCOUNT or ROLE for a share
    grantee_name: str      # a share to every role of an account: the account
    granted_by: str
    grantee_account: str = ""   # a share: the account it was granted to
