"""The query sandbox: one SELECT over the account's own databases and nothing else.

A query connection is a fresh in-memory DuckDB that ATTACHes the account's database files
READ_ONLY under their names, then disables external access (no files, no network, no
extensions) and locks the configuration so the query cannot turn either back on.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import duckdb

from services.common.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted
from services.control.domain.names import DEFAULT_DATABASE, DEFAULT_SCHEMA


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

    def batches(self, size: int = 1000) -> Iterator[list[tuple]]:
        while True:
            rows = _run(lambda: self._c.fetchmany(size))
            if not rows:
                return
            yield rows


@contextmanager
def sandboxed_query(databases: dict[str, Path], sql: str,
                    limits: SandboxLimits) -> Iterator[QueryResult]:
    """Run one SELECT on a locked-down connection; the caller holds the account's read lock."""
    query = single_select(sql)
    connection = duckdb.connect(":memory:", config={"threads": limits.threads,
                                                    "memory_limit": limits.memory_limit})
    timer = threading.Timer(limits.timeout_s, connection.interrupt)
    try:
        for name, path in sorted(databases.items()):
            connection.execute(f"ATTACH {quote_literal(str(path))} AS {quote(name)} (READ_ONLY)")
        if DEFAULT_DATABASE in databases:
            # Bare table names resolve in public.public, as they would in a Snowflake session.
            _use_default(connection)
        # No spilling: an empty temp directory makes an oversized query fail instead of
        # writing files.
        connection.execute("SET temp_directory=''")
        connection.execute("SET enable_external_access=false")
        connection.execute("SET lock_configuration=true")
        timer.start()
        _run(lambda: connection.execute(query))
        yield QueryResult(connection)
    finally:
        timer.cancel()
        connection.close()


def _use_default(connection) -> None:
    has_schema = connection.execute(
        "SELECT count(*) FROM duckdb_schemas() WHERE database_name = ? AND schema_name = ?",
        [DEFAULT_DATABASE, DEFAULT_SCHEMA]).fetchone()[0]
    if has_schema:
        connection.execute(f"USE {quote(DEFAULT_DATABASE)}.{quote(DEFAULT_SCHEMA)}")


def _run(call):
    """Run a DuckDB call, translating its errors into the project's vocabulary."""
    try:
        return call()
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
