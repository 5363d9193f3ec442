"""Object names: `name`, `schema.name` or `database.schema.name`, as in Snowflake; a model
another account shares is named `account.database.schema.name` (`account_model_name`).

Identifiers are case-insensitive; the canonical form is lower case (as PostgreSQL and DuckDB
fold them), so `Sales.Public.My_Model` and `sales.public.my_model` are one object. A name
given with fewer parts lives in the default database and schema (public.public).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from services.common.errors import InvalidArgument

DEFAULT_DATABASE = "public"
DEFAULT_SCHEMA = "public"
MAX_IDENTIFIER_LENGTH = 255

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")


def identifier(value: str, what: str = "identifier") -> str:
    """The canonical (lower-case) form of one identifier, or InvalidArgument."""
    value = (value or "").strip()
    if not value:
        raise InvalidArgument(f"{what} is empty")
    if len(value) > MAX_IDENTIFIER_LENGTH:
        raise InvalidArgument(f"{what} {value[:40]}... is longer than {MAX_IDENTIFIER_LENGTH} "
                              "characters")
    if not _IDENTIFIER.match(value):
        raise InvalidArgument(
            f"{what} {value!r} is not a valid identifier: use letters, digits, _ and $, "
            "starting with a letter or _")
    return value.lower()


@dataclass(frozen=True)
class QualifiedName:
    database: str
    schema: str
    name: str

    def __str__(self) -> str:
        return f"{self.database}.{self.schema}.{self.name}"


def qualified_name(value: str, what: str = "name") -> QualifiedName:
    """Parse `name`, `schema.name` or `database.schema.name` into its canonical form."""
    parts = (value or "").strip().split(".")
    if not value or not value.strip():
        raise InvalidArgument(f"{what} is empty")
    if len(parts) > 3:
        raise InvalidArgument(
            f"{what} {value!r} has too many parts: use name, schema.name or database.schema.name")
    parts = [identifier(p, f"{what} part") for p in parts]
    if len(parts) == 1:
        return QualifiedName(DEFAULT_DATABASE, DEFAULT_SCHEMA, parts[0])
    if len(parts) == 2:
        return QualifiedName(DEFAULT_DATABASE, parts[0], parts[1])
    return QualifiedName(*parts)



def account_model_name(value: str, what: str = "model name") -> tuple[str, QualifiedName]:
    """A model name that may carry its owner account as a fourth, leading part, as a model
    shared across accounts is named: (account, name) with account "" when it has 1-3 parts
    (the caller's own account)."""
    parts = (value or "").strip().split(".")
    if len(parts) == 4:
        return identifier(parts[0], "account"), qualified_name(".".join(parts[1:]), what)
    if len(parts) > 4:
        raise InvalidArgument(
            f"{what} {value!r} has too many parts: use name, schema.name, database.schema.name "
            "or account.database.schema.name")
    return "", qualified_name(value, what)


def shared_model_name(owner_account_id: str, model: str) -> str:
    """How another account names model `model` (canonical) of account `owner_account_id`."""
    return f"{owner_account_id}.{model}"
