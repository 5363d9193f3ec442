"""The users' tables and views: one DuckDB file per (account, database) under the data
directory. Views are the catalog's own (services/control/data/views.py)."""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import duckdb

from services.common.errors import AlreadyExists, FinetuneError, InvalidArgument, NotFound
from services.control.data.locks import AccountLocks
from services.control.data.sandbox import (
    QueryResult,
    ReadScope,
    SandboxLimits,
    check_query,
    display_value,
    lock_configuration,
    locked_down,
    quote,
    quote_literal,
    run_sql,
    sandboxed_query,
    single_select,
    syntax_tree,
    table_references,
)
from services.control.data.sql_functions import SqlFunctions, calls_functions, functions_failures
from services.control.data.uploads import FileFormat, SpooledUpload
from services.control.data.views import (
    ViewName,
    delete_views,
    expand_views,
    is_hidden_schema,
    load_views,
    save_view,
    view_sql,
)
from services.control.domain.names import DEFAULT_DATABASE, QualifiedName, identifier

DB_SUFFIX = ".duckdb"
MAX_PREVIEW_ROWS = 10_000


TABLE = "TABLE"
VIEW = "VIEW"


@dataclass(frozen=True)
class TableInfo:
    name: str                          # DATABASE.SCHEMA.TABLE
    columns: list[tuple[str, str]]     # (name, type)
    row_count: int                     # tables only
    kind: str = TABLE                  # TABLE or VIEW
    definition: str = ""               # a view's query


@dataclass(frozen=True)
class Preview:
    columns: list[tuple[str, str]]
    rows: list[list[str | None]]


@dataclass(frozen=True)
class QueryPage(Preview):
    more: bool = False                 # rows remain after this page


class DataCatalog:
    def __init__(self, data_dir: Path, limits: SandboxLimits = SandboxLimits()):
        self.data_dir = Path(data_dir)
        self.limits = limits
        self._locks = AccountLocks()
        # Uploads and estimates left behind by a crash are garbage: nothing can resume them.
        for leftover in self.spool_dir.glob("upload-*") if self.spool_dir.is_dir() else ():
            leftover.unlink(missing_ok=True)
        for leftover in self.spool_dir.glob("estimate-*") if self.spool_dir.is_dir() else ():
            shutil.rmtree(leftover, ignore_errors=True)

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
        kind = _relation_kind(connection, table.database, table.schema, table.name)
        if kind == VIEW:
            raise AlreadyExists(f"view {table} already exists (drop it to load a table)")
        if kind == TABLE and not replace:
            raise AlreadyExists(f"table {table} already exists (set replace to overwrite it)")
        connection.execute(f"CREATE SCHEMA IF NOT EXISTS {database}.{schema}")
        try:
            connection.execute(f"CREATE OR REPLACE TABLE {database}.{schema}.{quote(table.name)} "
                               f"AS SELECT * FROM "
                               f"{_reader(upload)}", [str(upload.path)])
        except duckdb.Error as exc:
            raise InvalidArgument(f"cannot load {upload.format.value} data: {exc}") from None
        return _describe_table(connection, table.database, table.schema, table.name)

    def list_tables(self, account_id: str, database: str | None = None) -> list[TableInfo]:
        """Tables and views, by database, schema and name."""
        databases = self.databases(account_id)
        if database:
            database = identifier(database, "database name")
            if database not in databases:
                if database == DEFAULT_DATABASE:  # exists implicitly, still empty
                    return []
                raise NotFound(f"database {database} does not exist")
            listed = [database]
        else:
            listed = list(databases)
        found = []
        with self._locks[account_id].read(), self._all_attached(account_id) as connection:
            views = load_views(connection, databases)
            for db_name in listed:
                for schema, name in connection.execute(
                        "SELECT schema_name, table_name FROM duckdb_tables() "
                        "WHERE database_name = ?", [db_name]).fetchall():
                    if not is_hidden_schema(schema):
                        found.append(_describe_table(connection, db_name, schema, name))
                for view in views:
                    if view[0] == db_name:
                        found.append(_describe_view(connection, view, views))
        return sorted(found, key=lambda t: t.name)

    def find_relation(self, account_id: str, name: QualifiedName) -> TableInfo | None:
        """The table or view `name`, or None when there is none."""
        if name.database not in self.databases(account_id):
            return None
        return next((t for t in self.list_tables(account_id, name.database)
                     if t.name.lower() == str(name)), None)

    def schemas(self, account_id: str, database: str) -> list[str]:
        """The schemas of a database (empty when it does not exist)."""
        path = self.databases(account_id).get(database)
        if path is None:
            return []
        with self._locks[account_id].read():
            connection = duckdb.connect(str(path), read_only=True)
            try:
                return [name for (name,) in connection.execute(
                    "SELECT schema_name FROM duckdb_schemas() WHERE database_name = "
                    "current_database() AND NOT internal ORDER BY 1").fetchall()
                    if not is_hidden_schema(name)]
            finally:
                connection.close()

    # -- DDL ------------------------------------------------------------------------------

    def create_schema(self, account_id: str, database: str, schema: str) -> None:
        with self._locks[account_id].write():
            path = self._existing(account_id, database)
            connection = duckdb.connect(str(path))
            try:
                if _schema_exists(connection, database, schema):
                    raise AlreadyExists(f"schema {database}.{schema} already exists")
                connection.execute(f"CREATE SCHEMA {quote(database)}.{quote(schema)}")
            finally:
                connection.close()

    def drop_database(self, account_id: str, database: str) -> bool:
        """Delete the database's file; False if there was none."""
        with self._locks[account_id].write():
            path = self._database_path(account_id, identifier(database, "database name"))
            if not path.exists():
                return False
            path.unlink()
            path.with_name(path.name + ".wal").unlink(missing_ok=True)
            return True

    def drop_schema(self, account_id: str, database: str, schema: str) -> bool:
        """Drop the schema with its tables and views; False if it does not exist."""
        with self._locks[account_id].write():
            path = self.databases(account_id).get(database)
            if path is None:
                return False
            connection = duckdb.connect(str(path))
            try:
                if not _schema_exists(connection, database, schema):
                    return False
                delete_views(connection, database, schema)
                connection.execute(f"DROP SCHEMA {quote(database)}.{quote(schema)} CASCADE")
                return True
            finally:
                connection.close()

    def drop_relation(self, account_id: str, name: QualifiedName, kind: str) -> bool:
        """Drop a table (kind TABLE) or a view (VIEW); False if there is none of that name."""
        with self._locks[account_id].write():
            path = self.databases(account_id).get(name.database)
            if path is None:
                return False
            connection = duckdb.connect(str(path))
            try:
                found = _relation_kind(connection, name.database, name.schema, name.name)
                if found is None:
                    return False
                if found != kind:
                    raise InvalidArgument(f"{name} is a {found.lower()}, not a {kind.lower()}")
                if kind == VIEW:
                    delete_views(connection, name.database, name.schema, name.name)
                else:
                    connection.execute(f"DROP TABLE {quote(name.database)}."
                                       f"{quote(name.schema)}.{quote(name.name)}")
                return True
            finally:
                connection.close()

    def create_view(self, account_id: str, name: QualifiedName, sql: str, replace: bool,
                    scope: ReadScope | None = None) -> TableInfo:
        """A view over one SELECT that passes the same checks as any query (with the creator's
        read scope), naming its tables in full (database.schema.table), so that it means the
        same whoever reads it."""
        query = single_select(sql)
        restricted = scope is not None and scope.restricted
        target: ViewName = (name.database, name.schema, name.name)
        with self._writing_into(account_id, name.database, scope) as (connection, databases):
            for catalog, schema, table in table_references(syntax_tree(connection, query)):
                if not catalog or not schema:
                    raise InvalidArgument(
                        f"a view must name its tables in full as database.schema.table "
                        f"(not {'.'.join(p for p in (catalog, schema, table) if p)})")
            views = load_views(connection, databases)
            # Expanded with itself replaced, so a view that would read itself is refused.
            expanded = expand_views(connection, view_sql(target), {**views, target: query},
                                    scope if restricted else None)
            check_query(connection, expanded, scope)
            lock_configuration(connection)
            if not _schema_exists(connection, name.database, name.schema):
                raise NotFound(f"schema {name.database}.{name.schema} does not exist")
            existing = _relation_kind(connection, *target)
            if existing == TABLE or (existing == VIEW and not replace):
                raise AlreadyExists(f"{existing.lower()} {name} already exists")
            columns = _columns(run_sql(
                lambda: connection.execute(f"SELECT * FROM ({expanded}) LIMIT 0"),
                restricted))
            save_view(connection, target, query)
        return TableInfo(str(name), columns, 0, VIEW, query)

    @contextmanager
    def _writing_into(self, account_id: str, database: str, scope: ReadScope | None
                      ) -> Iterator[tuple[duckdb.DuckDBPyConnection, dict[str, Path]]]:
        """Under the account's write lock: a sandbox with `database` attached writable and the
        databases `scope` may read attached read-only, and which those are."""
        with self._locks[account_id].write():
            self._existing(account_id, database)
            databases = {db: path for db, path in self.databases(account_id).items()
                         if db == database or scope is None or scope.can_read_database(db)}
            with locked_down(databases, self.limits, writable=database) as connection:
                yield connection, databases

    def _existing(self, account_id: str, database: str) -> Path:
        """The database's file; the default database's is created on first use."""
        path = self._database_path(account_id, database)
        if not path.exists():
            if database != DEFAULT_DATABASE:
                raise NotFound(f"database {database} does not exist")
            self._create_file(path)
            connection = duckdb.connect(str(path))
            try:
                connection.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(DEFAULT_DATABASE)}")
            finally:
                connection.close()
        return path

    @contextmanager
    def _all_attached(self, account_id: str) -> Iterator[duckdb.DuckDBPyConnection]:
        """The account's databases attached read-only, for describing tables and views."""
        connection = duckdb.connect(":memory:", config={"threads": self.limits.threads,
                                                        "memory_limit": self.limits.memory_limit})
        try:
            for name, path in self.databases(account_id).items():
                connection.execute(
                    f"ATTACH {quote_literal(str(path))} AS {quote(name)} (READ_ONLY)")
            connection.execute("SET enable_external_access=false")
            yield connection
        finally:
            connection.close()

    @contextmanager
    def query(self, account_id: str, sql: str, scope: ReadScope | None = None,
              window: tuple[int, int] | None = None,
              functions: SqlFunctions | None = None) -> Iterator[QueryResult]:
        """Run one SELECT in the sandbox over the account's databases (those `scope` may read),
        views expanded; `window` = (offset, limit) runs only that slice of its rows;
        `functions` (COMPLETE, ...) are callable in it."""
        restricted = scope is not None and scope.restricted

        def prepare(connection, query: str) -> str:
            if functions is not None:
                functions.register(connection)
            expanded = expand_views(connection, query, load_views(connection, databases),
                                    scope if restricted else None)
            if window is None:
                return expanded
            offset, limit = window
            return f"SELECT * FROM ({expanded}) LIMIT {int(limit)} OFFSET {int(offset)}"

        with self._locks[account_id].read(), functions_failures(functions):
            databases = {name: path for name, path in self.databases(account_id).items()
                         if scope is None or scope.can_read_database(name)}
            with sandboxed_query(databases, sql, self.limits, scope, prepare) as result:
                yield result

    def preview(self, account_id: str, sql: str, limit: int,
                scope: ReadScope | None = None) -> Preview:
        limit = max(1, min(limit or 100, MAX_PREVIEW_ROWS))
        with self.query(account_id, sql, scope) as result:
            rows = next(result.batches(limit), [])
            return Preview(result.columns,
                           [[display_value(v) for v in row] for row in rows])


    def page(self, account_id: str, sql: str, offset: int, limit: int,
             scope: ReadScope | None = None,
             functions: SqlFunctions | None = None) -> QueryPage:
        """Rows offset..offset+limit of the query's result, in its order (ORDER BY makes pages
        stable across calls), and whether more follow. A query that calls COMPLETE is not
        paged: all its rows come at once (its generation budget bounds them), so that no row
        is generated for a page and again for the next."""
        if functions is not None and calls_functions(sql):
            with self.query(account_id, sql, scope, functions=functions) as result:
                rows = [row for batch in result.batches() for row in batch]
            return QueryPage(result.columns, [[display_value(v) for v in row] for row in rows])
        with self.query(account_id, sql, scope, window=(offset, limit + 1)) as result:
            rows = [row for batch in result.batches() for row in batch]
        return QueryPage(result.columns, [[display_value(v) for v in row]
                                          for row in rows[:limit]], more=len(rows) > limit)

    def save_query(self, account_id: str, table: QualifiedName, sql: str, replace: bool,
                   scope: ReadScope | None = None,
                   functions: SqlFunctions | None = None) -> TableInfo:
        """A new table holding the query's result, read with `scope`, written in the same
        sandbox (the table's database attached writable, nothing else)."""
        restricted = scope is not None and scope.restricted
        target = (table.database, table.schema, table.name)
        query = single_select(sql)
        with functions_failures(functions), \
                self._writing_into(account_id, table.database, scope) as (connection, databases):
            if functions is not None:
                functions.register(connection)
            expanded = expand_views(connection, query, load_views(connection, databases),
                                    scope if restricted else None)
            check_query(connection, expanded, scope)
            lock_configuration(connection)
            if not _schema_exists(connection, table.database, table.schema):
                raise NotFound(f"schema {table.database}.{table.schema} does not exist")
            existing = _relation_kind(connection, *target)
            if existing == VIEW or (existing == TABLE and not replace):
                raise AlreadyExists(f"{existing.lower()} {table} already exists"
                                    + (" (set replace to overwrite it)"
                                       if existing == TABLE else ""))
            name = ".".join(quote(part) for part in target)
            run_sql(lambda: connection.execute(
                f"CREATE OR REPLACE TABLE {name} AS {expanded}"), restricted)
            return _describe_table(connection, *target)


def _reader(upload: SpooledUpload) -> str:
    if upload.format is FileFormat.CSV:
        return "read_csv($1, header = true)"
    if upload.format is FileFormat.PARQUET:
        return "read_parquet($1)"
    if upload.row_columns:  # rows: every value is text, absent keys are NULL
        columns = ", ".join(f"{quote_literal(c)}: 'VARCHAR'" for c in upload.row_columns)
        return f"read_json($1, format = 'newline_delimited', columns = {{{columns}}})"
    return "read_json($1, format = 'newline_delimited')"


def _schema_exists(connection, database: str, schema: str) -> bool:
    return bool(connection.execute(
        "SELECT count(*) FROM duckdb_schemas() WHERE database_name = ? AND schema_name = ?",
        [database, schema]).fetchone()[0])


def _relation_kind(connection, database: str, schema: str, name: str) -> str | None:
    if (database, schema, name) in load_views(connection, [database]):
        return VIEW
    found = connection.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = ? AND schema_name = ? "
        "AND table_name = ?", [database, schema, name]).fetchone()[0]
    return TABLE if found else None


def _columns(result) -> list[tuple[str, str]]:
    return [(d[0], str(d[1])) for d in result.description or []]


def _describe_table(connection, database: str, schema: str, name: str) -> TableInfo:
    columns = connection.execute(
        "SELECT column_name, data_type FROM duckdb_columns() "
        "WHERE database_name = ? AND schema_name = ? AND table_name = ? "
        "ORDER BY column_index",
        [database, schema, name]).fetchall()
    count = connection.execute(
        f"SELECT count(*) FROM {quote(database)}.{quote(schema)}.{quote(name)}").fetchone()[0]
    return TableInfo(f"{database}.{schema}.{name}", [(c, str(t)) for c, t in columns],
                     int(count))


def _describe_view(connection, view: ViewName, views: dict[ViewName, str]) -> TableInfo:
    try:  # a view's columns are its query's: binding it needs what it reads
        expanded = expand_views(connection, view_sql(view), views)
        columns = _columns(connection.execute(f"SELECT * FROM ({expanded}) LIMIT 0"))
    except (duckdb.Error, FinetuneError):  # it reads something dropped since: no columns
        columns = []
    return TableInfo(".".join(view), columns, 0, VIEW, views[view])
