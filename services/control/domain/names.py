"""Object names: `name`, `schema.name` or `database.schema.name`, as in Snowflake.

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

