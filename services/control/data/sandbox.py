"""The query sandbox: one SELECT over the account's own databases and nothing else.

A query connection is a fresh in-memory DuckDB that ATTACHes the account's database files
READ_ONLY under their names, then disables external access (no files, no network, no
extensions) and locks the configuration so the query cannot turn either back on.

With a ReadScope (the caller's privileges) only the databases it has USAGE on are attached, and
the query's plan is checked before it runs: every table it scans must lie in a schema the
caller has USAGE on. A caller restricted that way learns PERMISSION_DENIED for anything it
cannot see, whether or not it exists.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol

import duckdb
import pyarrow

from services.common.errors import (
    DeadlineExceeded,
    FinetuneError,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
)
from services.control.domain.names import DEFAULT_DATABASE, DEFAULT_SCHEMA

NOT_USABLE = ("the query reads a database, schema or table that does not exist or that you "
              "may not use (USAGE on its database and schema is required)")


class ReadScope(Protocol):
    """What a caller may read (services.control.domain.privileges.Access is one)."""

    @property
    def restricted(self) -> bool:
        """True unless the caller may read everything in the account."""

    def can_read_database(self, database: str) -> bool: ...

    def can_read_schema(self, database: str, schema: str) -> bool: ...


@dataclass(frozen=True)
class SandboxLimits:
    memory_limit: str = "1GB"
    threads: int = 2
    timeout_s: float = 120.0


def single_select(sql: str) -> str:
    """The query text if `sql` is exactly one SELECT statement; InvalidArgument otherwise."""
    if not sql or not sql.strip():
        raise InvalidArgument("the query is empty")
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise InvalidArgument(f"invalid SQL: {exc}") from None
    if not statements:
        raise InvalidArgument("the query is empty")
    if len(statements) > 1:
        raise InvalidArgument(
            f"only a single SELECT statement is allowed (got {len(statements)} statements)")
    statement = statements[0]
    if statement.type != duckdb.StatementType.SELECT:
        raise InvalidArgument(
            f"only SELECT statements are allowed (got {statement.type.name})")
    return statement.query


def quote(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class QueryResult:
    """An executing query: its columns, then rows in batches."""

    def __init__(self, connection: duckdb.DuckDBPyConnection):
        self._c = connection
        description = connection.description or []
        self.columns: list[tuple[str, str]] = [(d[0], str(d[1])) for d in description]

    @property
    def column_names(self) -> list[str]:
        return [name for name, _ in self.columns]

    def arrow(self) -> pyarrow.Table:
        """Every remaining row, with the query's types (dates, decimals, lists) kept."""
        with warnings.catch_warnings():   # DuckDB's note that this copies the rows once
            warnings.simplefilter("ignore", UserWarning)
            return run_sql(lambda: self._c.to_arrow_table())

    def batches(self, size: int = 1000) -> Iterator[list[tuple]]:
        while True:
            rows = run_sql(lambda: self._c.fetchmany(size))
            if not rows:
                return
            yield rows


@contextmanager
def sandboxed_query(databases: dict[str, Path], sql: str, limits: SandboxLimits,
                    scope: ReadScope | None = None,
                    prepare: Callable[[duckdb.DuckDBPyConnection, str], str] | None = None
                    ) -> Iterator[QueryResult]:
    """Run one SELECT on a locked-down connection; the caller holds the account's read lock.
    `databases` are those the caller may read (already filtered by the scope); `prepare`
    rewrites the query before it is checked (views expanded)."""
    query = single_select(sql)
    restricted = scope is not None and scope.restricted
    with locked_down(databases, limits) as connection:
        if prepare is not None:
            query = prepare(connection, query)
        check_query(connection, query, scope)
        lock_configuration(connection)
        run_sql(lambda: connection.execute(query), restricted)
        yield QueryResult(connection)


@contextmanager
def locked_down(databases: dict[str, Path], limits: SandboxLimits, writable: str | None = None
                ) -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory connection with `databases` attached under their names (READ_ONLY, except
    `writable`), no file or network access, no extensions, and a timer that interrupts whatever
    runs past the time limit. Callers lock its settings (lock_configuration) once the checks
    that toggle the optimizer are done, before the query runs."""
    connection = duckdb.connect(":memory:", config={"threads": limits.threads,
                                                    "memory_limit": limits.memory_limit})
    timer = threading.Timer(limits.timeout_s, connection.interrupt)
    try:
        for name, path in sorted(databases.items()):
            mode = "" if name == writable else " (READ_ONLY)"
            connection.execute(f"ATTACH {quote_literal(str(path))} AS {quote(name)}{mode}")
        if DEFAULT_DATABASE in databases:
            # Bare table names resolve in public.public, as they would in a Snowflake session.
            _use_default(connection)
        # No spilling: an empty temp directory makes an oversized query fail instead of
        # writing files.
        connection.execute("SET temp_directory=''")
        connection.execute("SET enable_external_access=false")
        timer.start()
        yield connection
    finally:
        timer.cancel()
        connection.close()


def lock_configuration(connection) -> None:
    """From here on the query cannot change a setting (memory, threads, external access)."""
    connection.execute("SET lock_configuration=true")


def check_query(connection, query: str, scope: ReadScope | None) -> None:
    """Everything a query must pass before it runs: what its plan scans and calls (views and
    dynamic SQL expanded) and the functions it names."""
    restricted = scope is not None and scope.restricted
    _check_plan(connection, query, scope if restricted else None)
    _check_functions(connection, query)


def _use_default(connection) -> None:
    has_schema = connection.execute(
        "SELECT count(*) FROM duckdb_schemas() WHERE database_name = ? AND schema_name = ?",
        [DEFAULT_DATABASE, DEFAULT_SCHEMA]).fetchone()[0]
    if has_schema:
        connection.execute(f"USE {quote(DEFAULT_DATABASE)}.{quote(DEFAULT_SCHEMA)}")


# Table functions a restricted caller may use: they read no table. The others (metadata such as
# duckdb_tables(), pragma_storage_info(), duckdb_table_sample(), ...) could show what lies in
# schemas it may not read.
SAFE_TABLE_FUNCTIONS = frozenset({"RANGE", "GENERATE_SERIES", "UNNEST", "REPEAT", "REPEAT_ROW"})
# What a caller that may read the whole account may use besides: metadata of the account's own
# databases. Not duckdb_databases() (file paths), duckdb_settings() / pg_settings, secrets,
# extensions, logs or memory: those describe the service, not the account's data.
ACCOUNT_TABLE_FUNCTIONS = frozenset({
    "DUCKDB_TABLES", "DUCKDB_COLUMNS", "DUCKDB_VIEWS", "DUCKDB_SCHEMAS", "DUCKDB_CONSTRAINTS",
    "DUCKDB_INDEXES", "DUCKDB_TYPES", "DUCKDB_TABLE_SAMPLE", "PRAGMA_TABLE_INFO",
    "PRAGMA_STORAGE_INFO"})
# Scalar functions that read the service's configuration or environment, whoever calls them.
DENIED_FUNCTIONS = frozenset({"current_setting", "getenv", "which_secret", "getvariable"})


def _check_plan(connection, query: str, scope: ReadScope | None) -> None:
    """Refuse a query whose plan calls a table function outside the allowed ones, or (with a
    scope: a restricted caller) scans a table in a schema the caller may not read. The plan is
    taken with the optimizer off, so no scan is folded away by statistics; views and dynamic
    SQL (query(), query_table()) are expanded, so neither reads past the caller's privileges."""
    restricted = scope is not None
    connection.execute("PRAGMA disable_optimizer")
    try:
        plan = run_sql(lambda: connection.execute(f"EXPLAIN (FORMAT json) {query}").fetchall(),
                    restricted=restricted)
    finally:
        connection.execute("PRAGMA enable_optimizer")
    for _, text in plan:
        for node in _plan_nodes(json.loads(text)):
            info = node.get("extra_info") or {}
            if isinstance(info.get("Table"), str):
                if scope is None:   # unrestricted
                    continue
                parts = _identifiers(info["Table"])
                # Fail closed: a name this parser does not understand is not readable.
                if len(parts) != 3 or not scope.can_read_schema(parts[0], parts[1]):
                    raise PermissionDenied(NOT_USABLE)
            elif "Function" in info:
                name = str(node.get("name"))
                if name in SAFE_TABLE_FUNCTIONS:
                    continue
                if restricted:
                    raise PermissionDenied(
                        f"the table function {name.lower()}() is available to ACCOUNTADMIN "
                        "only")
                if name not in ACCOUNT_TABLE_FUNCTIONS:
                    raise InvalidArgument(
                        f"the table function {name.lower()}() cannot be used in queries: it "
                        "reads files or the service's configuration")


def _check_functions(connection, query: str) -> None:
    for name in function_names(syntax_tree(connection, query)):
        if name.lower() in DENIED_FUNCTIONS:
            raise InvalidArgument(f"{name.lower()}() cannot be used in queries: it reads the "
                                  "service's configuration")


def syntax_tree(connection, query: str) -> dict:
    """DuckDB's own parse of a SELECT, as JSON."""
    text = run_sql(lambda: connection.execute("SELECT json_serialize_sql(?)",
                                           [query]).fetchone()[0])
    try:
        tree = json.loads(text)
    except RecursionError:   # DuckDB parsed it, but its tree is deeper than Python's stack
        raise InvalidArgument("invalid SQL: the query nests too deeply") from None
    if tree.get("error"):
        raise InvalidArgument(f"invalid SQL: {tree.get('error_message', 'cannot parse')}")
    return tree


def parsed(query: str) -> dict | None:
    """DuckDB's parse of a query on a scratch connection, or None when it does not parse (the
    sandbox then refuses it with its own message): for deciding how to run a query."""
    connection = duckdb.connect(":memory:")
    try:
        return syntax_tree(connection, query)
    except FinetuneError:
        return None
    finally:
        connection.close()


def function_names(tree) -> Iterator[str]:
    """Every function a parsed query names, scalar, aggregate or table function."""
    for node in _dicts(tree):
        if node.get("class") == "FUNCTION" and isinstance(node.get("function_name"), str):
            yield node["function_name"]


def table_references(tree) -> Iterator[tuple[str, str, str]]:
    """(catalog, schema, table) of every table a parsed query names ("" where not given),
    CTE names excluded."""
    ctes = set()
    for node in _dicts(tree):
        for entry in (node.get("cte_map") or {}).get("map", []) or []:
            if isinstance(entry, dict) and isinstance(entry.get("key"), str):
                ctes.add(entry["key"].lower())
    for node in _dicts(tree):
        if node.get("type") == "BASE_TABLE" and isinstance(node.get("table_name"), str):
            ref = (node.get("catalog_name") or "", node.get("schema_name") or "",
                   node["table_name"])
            if ref[:2] == ("", "") and ref[2].lower() in ctes:
                continue
            yield ref


def _dicts(tree) -> Iterator[dict]:
    stack = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


_PART = re.compile(r'"((?:[^"]|"")*)"|([^."]+)')


def _identifiers(name: str) -> list[str]:
    """`db.schema.table` as DuckDB prints it (keywords quoted: `"implicit".public.t`)."""
    parts, position = [], 0
    while True:
        match = _PART.match(name, position)
        if match is None:
            return []
        quoted, bare = match.groups()
        parts.append(quoted.replace('""', '"') if quoted is not None else bare)
        position = match.end()
        if position == len(name):
            return parts
        if name[position] != ".":
            return []
        position += 1


def _plan_nodes(nodes) -> Iterator[dict]:
    for node in nodes if isinstance(nodes, list) else [nodes]:
        yield node
        yield from _plan_nodes(node.get("children") or [])


def run_sql(call, restricted: bool = False):
    """Run a DuckDB call, translating its errors into the project's vocabulary. For a
    restricted caller "does not exist" is PERMISSION_DENIED: it must not learn what exists
    outside what it may read."""
    try:
        return call()
    except duckdb.CatalogException as exc:
        if restricted and "Function with name" not in str(exc):
            raise PermissionDenied(NOT_USABLE) from None
        raise InvalidArgument(f"query failed: {exc}") from None
    except duckdb.InterruptException:
        raise DeadlineExceeded("the query ran too long and was interrupted") from None
    except duckdb.OutOfMemoryException as exc:
        raise ResourceExhausted(f"the query needs more memory than allowed: {exc}") from None
    except duckdb.Error as exc:
        raise InvalidArgument(f"query failed: {exc}") from None


def display_value(value) -> str | None:
    """A result value as text for previews (None stays None: a SQL NULL)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str, ensure_ascii=False)
    return str(value)
