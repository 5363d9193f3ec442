"""The users' databases and tables as DataService offers them, under the caller's privileges:
creating a database or a schema makes the creator's role its owner; loading needs CREATE TABLE
(or OWNERSHIP) on the schema, and CREATE DATABASE when the load creates the database; reading
needs USAGE on the database and the schema.

DDL: a schema is created by the database's owner, databases and schemas are dropped by their
owners (their grants go with them: a new object of the name starts clean); tables and views are
created and dropped with CREATE TABLE on their schema, the privilege that already lets a load
replace a table. A view's query is checked like any query, with its creator's privileges, and
again with each reader's when it is read."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass

from services.common.errors import AlreadyExists, InvalidArgument, NotFound
from services.control.core.authorization import Authorizer
from services.control.core.clock import Clock, utc_now
from services.control.core.paging import decode_token, encode_token
from services.control.data.catalog import TABLE, DataCatalog, Preview, QueryPage, TableInfo
from services.control.data.sql_functions import SqlFunctions
from services.control.data.uploads import SpooledUpload
from services.control.dispatch.sql_completions import SqlCompletions
from services.control.domain.names import (
    DEFAULT_DATABASE,
    QualifiedName,
    identifier,
    qualified_name,
)
from services.control.domain.principals import Principal
from services.control.domain.privileges import Access, Privilege, SecurableObject
from services.control.store.database import Store

ACCOUNT = SecurableObject.account()
# Rows one RunQuery call returns by default and at most; the rest come by page token.
DEFAULT_QUERY_ROWS = 10_000
MAX_QUERY_ROWS = 100_000


@dataclass(frozen=True)
class QueryRows:
    page: QueryPage
    next_page_token: str               # empty when no rows remain


def _query_tag(sql: str) -> str:
    """Ties a page token to its query: a token is refused with any other query."""
    return hashlib.sha256(sql.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class DatabaseInfo:
    name: str
    schemas: list[str]


class Databases:
    def __init__(self, catalog: DataCatalog, store: Store, authorizer: Authorizer,
                 clock: Clock = utc_now, completions: SqlCompletions | None = None):
        self._catalog = catalog
        self._store = store
        self._authorizer = authorizer
        self._clock = clock
        self._completions = completions

    def _functions(self, principal: Principal, loop: asyncio.AbstractEventLoop | None
                   ) -> SqlFunctions | None:
        """COMPLETE and TRY_COMPLETE for this caller's query, where inference is configured
        and the call came from control's event loop."""
        if self._completions is None or loop is None:
            return None
        return self._completions.functions_for(principal.account_id, principal.user_id, loop)

    def _exists(self, account_id: str, database: str) -> bool:
        return database == DEFAULT_DATABASE or self._catalog.database_exists(account_id, database)

    def create_database(self, principal: Principal, name: str) -> str:
        """Needs CREATE DATABASE on the account; the caller's default role owns the result."""
        self._authorizer.authorize(principal, Privilege.CREATE_DATABASE, ACCOUNT)
        name = identifier(name, "database name")
        if name == DEFAULT_DATABASE:  # exists implicitly and belongs to ACCOUNTADMIN
            raise AlreadyExists(f"database {name} already exists")
        owner = self._authorizer.owner_role(principal)
        name = self._catalog.create_database(principal.account_id, name)
        self._own(principal, owner, SecurableObject.database(name))
        return name

    def authorize_load(self, principal: Principal, table: QualifiedName) -> Access:
        """Before any data is read from the stream: CREATE TABLE on the schema, or CREATE
        DATABASE when the database does not exist yet."""
        access = self._authorizer.access(principal)
        if self._exists(principal.account_id, table.database):
            access.require(Privilege.CREATE_TABLE,
                           SecurableObject.schema(f"{table.database}.{table.schema}"))
        else:
            access.require(Privilege.CREATE_DATABASE, ACCOUNT)
            self._authorizer.owner_role(principal)   # fail before the upload, not after
        return access

    def load_table(self, principal: Principal, table: QualifiedName, upload: SpooledUpload,
                   replace: bool) -> TableInfo:
        created = not self._exists(principal.account_id, table.database)
        info = self._catalog.load_table(principal.account_id, table, upload, replace)
        if created:
            self._own(principal, self._authorizer.owner_role(principal),
                      SecurableObject.database(table.database))
        return info

    def list_tables(self, principal: Principal, database: str = "") -> list[TableInfo]:
        """Tables in the databases and schemas the caller may use."""
        access = self._authorizer.access(principal)
        if database.strip():
            database = identifier(database, "database name")
            access.require(Privilege.USAGE, SecurableObject.database(database))
            tables = self._catalog.list_tables(access.account_id, database)
        else:
            tables = self._catalog.list_tables(access.account_id)
        visible = []
        for table in tables:
            db, schema, _ = table.name.split(".", 2)
            if access.can_read_schema(db, schema):
                visible.append(table)
        return visible

    def list_databases(self, principal: Principal) -> list[DatabaseInfo]:
        """The databases the caller may use, with the schemas it may use in each."""
        access = self._authorizer.access(principal)
        names = set(self._catalog.databases(access.account_id)) | {DEFAULT_DATABASE}
        found = []
        for name in sorted(names):
            if not access.can_read_database(name):
                continue
            schemas = [s for s in self._catalog.schemas(access.account_id, name)
                       if access.can_read_schema(name, s)]
            found.append(DatabaseInfo(name, schemas))
        return found

    def create_schema(self, principal: Principal, name: str) -> str:
        schema = SecurableObject.schema(name)
        database, schema_name = schema.name.split(".")
        access = self._authorizer.access(principal)
        access.require(Privilege.OWNERSHIP, SecurableObject.database(database))
        owner = self._authorizer.owner_role(principal)
        self._catalog.create_schema(principal.account_id, database, schema_name)
        self._own(principal, owner, schema)
        return schema.name

    def drop_database(self, principal: Principal, name: str, if_exists: bool) -> bool:
        database = SecurableObject.database(name)
        self._authorizer.authorize(principal, Privilege.OWNERSHIP, database)
        dropped = self._catalog.drop_database(principal.account_id, database.name)
        if not dropped and not if_exists:
            raise NotFound(f"database {database.name} does not exist")

        def forget(tx):
            if database.name != DEFAULT_DATABASE:  # public stays (empty), and so do its grants
                tx.access.delete_grants_on(principal.account_id, database)
            tx.access.delete_schema_grants_in(principal.account_id, database.name)
        if dropped:
            self._store.run(forget)
        return dropped

    def drop_schema(self, principal: Principal, name: str, if_exists: bool) -> bool:
        schema = SecurableObject.schema(name)
        self._authorizer.authorize(principal, Privilege.OWNERSHIP, schema)
        database, schema_name = schema.name.split(".")
        dropped = self._catalog.drop_schema(principal.account_id, database, schema_name)
        if not dropped and not if_exists:
            raise NotFound(f"schema {schema.name} does not exist")
        if dropped:
            self._store.run(lambda tx: tx.access.delete_grants_on(principal.account_id, schema))
        return dropped

    def drop_relation(self, principal: Principal, name: str, kind: str,
                      if_exists: bool) -> bool:
        what = "table name" if kind == TABLE else "view name"
        relation = qualified_name(name, what)
        self._authorizer.authorize(principal, Privilege.CREATE_TABLE, SecurableObject.schema(
            f"{relation.database}.{relation.schema}"))
        dropped = self._catalog.drop_relation(principal.account_id, relation, kind)
        if not dropped and not if_exists:
            raise NotFound(f"{kind.lower()} {relation} does not exist")
        return dropped

    def create_view(self, principal: Principal, name: str, sql: str,
                    replace: bool) -> TableInfo:
        view = qualified_name(name, "view name")
        access = self._authorizer.authorize(principal, Privilege.CREATE_TABLE,
                                            SecurableObject.schema(
                                                f"{view.database}.{view.schema}"))
        return self._catalog.create_view(principal.account_id, view, sql, replace, access)

    def preview(self, principal: Principal, sql: str, limit: int) -> Preview:
        """The query's first rows, read with the caller's USAGE (checked as the query runs)."""
        if limit < 0:
            raise InvalidArgument("limit must not be negative")
        access = self._authorizer.access(principal)
        return self._catalog.preview(access.account_id, sql, limit, access)

    def run_query(self, principal: Principal, sql: str, max_rows: int, page_token: str,
                  loop: asyncio.AbstractEventLoop | None = None) -> QueryRows:
        """One page of the query's rows, read with the caller's USAGE, and the token of the
        next page when rows remain."""
        if max_rows < 0:
            raise InvalidArgument("max_rows must not be negative")
        limit = min(max_rows or DEFAULT_QUERY_ROWS, MAX_QUERY_ROWS)
        offset = 0
        if page_token:
            position = decode_token(page_token)
            if (len(position) != 2 or not isinstance(position[0], int) or position[0] < 0
                    or position[1] != _query_tag(sql)):
                raise InvalidArgument("page_token belongs to another query")
            offset = position[0]
        access = self._authorizer.access(principal)
        page = self._catalog.page(access.account_id, sql, offset, limit, access,
                                  self._functions(principal, loop))
        token = encode_token([offset + limit, _query_tag(sql)]) if page.more else ""
        return QueryRows(page, token)

    def save_query(self, principal: Principal, sql: str, into: str, replace: bool,
                   loop: asyncio.AbstractEventLoop | None = None) -> TableInfo:
        """The query's result as a new table: CREATE TABLE on its schema; replacing a table
        also needs `replace` and OWNERSHIP of the schema, so a query never overwrites a table
        its caller's roles do not own."""
        table = qualified_name(into, "table name")
        schema = SecurableObject.schema(f"{table.database}.{table.schema}")
        access = self._authorizer.access(principal)
        access.require(Privilege.CREATE_TABLE, schema)
        if replace:
            access.require(Privilege.OWNERSHIP, schema)
        return self._catalog.save_query(access.account_id, table, sql, replace, access,
                                        self._functions(principal, loop))

    def _own(self, principal: Principal, role_id: str, obj: SecurableObject) -> None:
        """The creator's role owns a new database (unless a concurrent creator got it first)."""
        def work(tx):
            if not tx.access.owners(principal.account_id, obj):
                tx.access.grant_privilege(principal.account_id, role_id, Privilege.OWNERSHIP,
                                          obj, principal.user_name, self._clock())
        self._store.run(work)
