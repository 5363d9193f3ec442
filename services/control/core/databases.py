"""The users' databases and tables as DataService offers them, under the caller's privileges:
creating a database makes the creator's role its owner; loading needs CREATE TABLE (or
OWNERSHIP) on the schema, and CREATE DATABASE when the load creates the database; reading needs
USAGE on the database and the schema."""

from __future__ import annotations

from services.common.errors import AlreadyExists
from services.control.core.authorization import Authorizer
from services.control.core.clock import Clock, utc_now
from services.control.data.catalog import DataCatalog, Preview, TableInfo
from services.control.data.uploads import SpooledUpload
from services.control.domain.names import DEFAULT_DATABASE, QualifiedName, identifier
from services.control.domain.principals import Principal
from services.control.domain.privileges import Access, Privilege, SecurableObject
from services.control.store.database import Store

ACCOUNT = SecurableObject.account()


class Databases:
    def __init__(self, catalog: DataCatalog, store: Store, authorizer: Authorizer,
                 clock: Clock = utc_now):
        self._catalog = catalog
        self._store = store
        self._authorizer = authorizer
        self._clock = clock

    def _exists(self, account_id: str, database: str) -> bool:
        return database == DEFAULT_DATABASE or self._catalog.database_exists(account_id, database)

    def create_database(self, principal: Principal, name: str) -> str:
        """For a caller already holding CREATE DATABASE; its default role owns the result."""
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

    def list_tables(self, access: Access, database: str = "") -> list[TableInfo]:
        """Tables in the databases and schemas the caller may use."""
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

    def preview(self, access: Access, sql: str, limit: int) -> Preview:
        return self._catalog.preview(access.account_id, sql, limit, access)

    def _own(self, principal: Principal, role_id: str, obj: SecurableObject) -> None:
        """The creator's role owns a new database (unless a concurrent creator got it first)."""
        def work(tx):
            if not tx.access.owners(principal.account_id, obj):
                tx.access.grant_privilege(principal.account_id, role_id, Privilege.OWNERSHIP,
                                          obj, principal.user_name, self._clock())
        self._store.run(work)
