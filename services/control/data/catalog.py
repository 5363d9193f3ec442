"""The users' tables: one DuckDB file per (account, database) under the data directory."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import duckdb

from services.common.errors import AlreadyExists, InvalidArgument, NotFound
from services.control.data.locks import AccountLocks
from services.control.data.sandbox import (QueryResult, ReadScope, SandboxLimits,
                                           display_value, quote, quote_literal,
                                           sandboxed_query)
from services.control.data.uploads import FileFormat, SpooledUpload
from services.control.domain.names import DEFAULT_DATABASE, QualifiedName, identifier

DB_SUFFIX = ".duckdb"
MAX_PREVIEW_ROWS = 10_000


@dataclass(frozen=True)
class TableInfo:
    name: str                          # DATABASE.SCHEMA.TABLE
    columns: list[tuple[str, str]]     # (name, type)
    row_count: int


@dataclass(frozen=True)
class Preview:
    columns: list[tuple[str, str]]
    rows: list[list[str | None]]


class DataCatalog:
    def __init__(self, data_dir: Path, limits: SandboxLimits = SandboxLimits()):
        self.data_dir = Path(data_dir)
        self.limits = limits
        self._locks = AccountLocks()
        # Uploads left behind by a crash are garbage: no stream can resume them.
        for leftover in self.spool_dir.glob("upload-*") if self.spool_dir.is_dir() else ():
            leftover.unlink(missing_ok=True)

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / ".spool"

    def _account_dir(self, account_id: str) -> Path:
        # Account ids are identifiers the service creates; refuse anything path-like anyway.
        if not account_id or "/" in account_id or account_id.startswith("."):
            raise ValueError(f"bad account id {account_id!r}")
        return self.data_dir / "accounts" / account_id

    def _database_path(self, account_id: str, database: str) -> Path:
        return self._account_dir(account_id) / f"{database}{DB_SUFFIX}"

    def databases(self, account_id: str) -> dict[str, Path]:
        folder = self._account_dir(account_id)
        if not folder.is_dir():
            return {}
        return {p.name[:-len(DB_SUFFIX)]: p for p in sorted(folder.glob(f"*{DB_SUFFIX}"))}

    def database_exists(self, account_id: str, name: str) -> bool:
        return self._database_path(account_id, identifier(name, "database name")).exists()

    def create_database(self, account_id: str, name: str) -> str:
        name = identifier(name, "database name")
        with self._locks[account_id].write():
            path = self._database_path(account_id, name)
            if path.exists():
                raise AlreadyExists(f"database {name} already exists")
            self._create_file(path)
        return name

    @staticmethod
    def _create_file(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        duckdb.connect(str(path)).close()

    def load_table(self, account_id: str, table: QualifiedName, upload: SpooledUpload,
                   replace: bool) -> TableInfo:
        with self._locks[account_id].write():
            path = self._database_path(account_id, table.database)
            if not path.exists():  # loading into a new database creates it
                self._create_file(path)
            connection = duckdb.connect(str(path), config={
                "threads": self.limits.threads, "memory_limit": self.limits.memory_limit})
            try:
                return self._load(connection, table, upload, replace)
            finally:
                connection.close()

    def _load(self, connection, table: QualifiedName, upload: SpooledUpload,
              replace: bool) -> TableInfo:
        # Fully qualified: the file's catalog and its schema are both `public` by default, and
        # a two-part name would be ambiguous.
        database, schema = quote(table.database), quote(table.schema)
        exists = connection.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
            "AND schema_name = ? AND table_name = ?",
            [table.schema, table.name]).fetchone()[0]
        if exists and not replace:
            raise AlreadyExists(f"table {table} already exists (set replace to overwrite it)")
        connection.execute(f"CREATE SCHEMA IF NOT EXISTS {database}.{schema}")
        try:
            connection.execute(f"CREATE OR REPLACE TABLE {database}.{schema}.{quote(table.name)} "
                               f"AS SELECT * FROM "
                               f"{_reader(upload)}", [str(upload.path)])
        except duckdb.Error as exc:
            raise InvalidArgument(f"cannot load {upload.format.value} data: {exc}") from None
        return _describe(connection, table.database, table.schema, table.name)

    def list_tables(self, account_id: str, database: str | None = None) -> list[TableInfo]:
        databases = self.databases(account_id)
        if database:
            database = identifier(database, "database name")
            if database not in databases:
                if database == DEFAULT_DATABASE:  # exists implicitly, still empty
                    return []
                raise NotFound(f"database {database} does not exist")
            databases = {database: databases[database]}
        tables = []
        with self._locks[account_id].read():
            for db_name, path in databases.items():
                connection = duckdb.connect(str(path), read_only=True)
                try:
                    names = connection.execute(
                        "SELECT schema_name, table_name FROM duckdb_tables() "
                        "WHERE database_name = current_database() "
                        "ORDER BY schema_name, table_name").fetchall()
                    for schema, name in names:
                        tables.append(_describe(connection, db_name, schema, name))
                finally:
                    connection.close()
        return tables

    @contextmanager
    def query(self, account_id: str, sql: str,
              scope: ReadScope | None = None) -> Iterator[QueryResult]:
        """Run one SELECT in the sandbox over the account's databases (those `scope` may read)."""
        with self._locks[account_id].read():
            databases = {name: path for name, path in self.databases(account_id).items()
                         if scope is None or scope.can_read_database(name)}
            with sandboxed_query(databases, sql, self.limits, scope) as result:
                yield result

    def preview(self, account_id: str, sql: str, limit: int,
                scope: ReadScope | None = None) -> Preview:
        limit = max(1, min(limit or 100, MAX_PREVIEW_ROWS))
        with self.query(account_id, sql, scope) as result:
            rows = next(result.batches(limit), [])
            return Preview(result.columns,
                           [[display_value(v) for v in row] for row in rows])


def _reader(upload: SpooledUpload) -> str:
    if upload.format is FileFormat.CSV:
        return "read_csv($1, header = true)"
    if upload.format is FileFormat.PARQUET:
        return "read_parquet($1)"
    if upload.row_columns:  # rows: every value is text, absent keys are NULL
        columns = ", ".join(f"{quote_literal(c)}: 'VARCHAR'" for c in upload.row_columns)
        return f"read_json($1, format = 'newline_delimited', columns = {{{columns}}})"
    return "read_json($1, format = 'newline_delimited')"


def _describe(connection, database: str, schema: str, name: str) -> TableInfo:
    columns = connection.execute(
        "SELECT column_name, data_type FROM duckdb_columns() "
        "WHERE database_name = current_database() AND schema_name = ? AND table_name = ? "
        "ORDER BY column_index",
        [schema, name]).fetchall()
    count = connection.execute(
        f"SELECT count(*) FROM {quote(database)}.{quote(schema)}.{quote(name)}").fetchone()[0]
    return TableInfo(f"{database}.{schema}.{name}", [(c, str(t)) for c, t in columns], int(count))
