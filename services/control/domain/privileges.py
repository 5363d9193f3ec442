"""Privileges, grants and a caller's effective access, after Snowflake's model (pure: no I/O).

- Objects: the ACCOUNT, DATABASE `db`, SCHEMA `db.schema`, MODEL `db.schema.name`.
- Privileges are granted to roles; roles are granted to users and to other roles (a role
  inherits every role granted to it). A user acts with all its roles, transitively, plus PUBLIC.
- ACCOUNTADMIN holds everything in its account. FINETUNE_USER (Cortex's SNOWFLAKE.CORTEX_USER)
  is a role whose holders may FINETUNE and COMPLETE.
- OWNERSHIP of an object implies every privilege on it and on what it contains (a database's
  schemas and models, a schema's models).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable, Mapping

from services.common.errors import InvalidArgument, PermissionDenied
from services.control.domain.names import DEFAULT_DATABASE, identifier, qualified_name

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
        return cls(ObjectType.MODEL, str(qualified_name(name, "model name")))

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
        return "ACCOUNT" if self.type is ObjectType.ACCOUNT else f"{self.type.value} {self.name}"


def check_grantable(privilege: Privilege, obj: SecurableObject) -> None:
    if privilege not in GRANTABLE[obj.type]:
        allowed = ", ".join(sorted(p.value for p in GRANTABLE[obj.type]))
        raise InvalidArgument(f"{privilege.value} cannot be granted on {obj.type.value} "
                              f"(grantable: {allowed})")


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

    @property
    def admin(self) -> bool:
        return ACCOUNTADMIN in self.roles

    @property
    def restricted(self) -> bool:
        """Not an admin: errors must not tell what exists beyond what it may use."""
        return not self.admin

    def allows(self, privilege: Privilege, obj: SecurableObject) -> bool:
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
    granted_to: str        # ROLE or USER
    grantee_name: str
    granted_by: str
