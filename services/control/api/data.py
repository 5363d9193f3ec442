"""DataService: databases, schemas, tables and views (create, load, drop), table loads (client
stream, spooled to disk), previews, queries (RunQuery, FINETUNE(...) among them)."""

from __future__ import annotations

import asyncio

from finetune.control.v1 import data_pb2, data_pb2_grpc
from services.common.errors import InvalidArgument
from services.control.api import messages
from services.control.api.principals import user
from services.control.api.sql_finetune import SqlFinetune
from services.control.core.databases import Databases
from services.control.data import finetune_statement
from services.control.data.catalog import TABLE, VIEW
from services.control.data.uploads import TableUpload
from services.control.domain.names import qualified_name

# Text per RunQuery message: well under gRPC's default 4 MiB limit on a client's messages (a
# single row wider than the limit still fails there, with RESOURCE_EXHAUSTED).
BYTES_PER_MESSAGE = 1 << 20


class DataServicer(data_pb2_grpc.DataServiceServicer):
    def __init__(self, databases: Databases, spool_dir, max_upload_bytes: int,
                 finetune: SqlFinetune | None = None):
        self._databases = databases
        self._finetune = finetune   # FINETUNE(...) as a query
        self._spool_dir = spool_dir
        self._max_upload_bytes = max_upload_bytes

    async def CreateDatabase(self, request, context):
        name = await asyncio.to_thread(self._databases.create_database, user(), request.name)
        return data_pb2.CreateDatabaseResponse(name=name)

    async def LoadTable(self, request_iterator, context):
        principal = user()
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("payload") != "header":
            raise InvalidArgument("the first LoadTable message must be the header")
        header = first.header
        table = qualified_name(header.table, "table name")
        # Before a byte is spooled: an unauthorized caller uploads nothing.
        await asyncio.to_thread(self._databases.authorize_load, principal, table)
        upload = await asyncio.to_thread(TableUpload, self._spool_dir,
                                         messages.file_format(header.format),
                                         self._max_upload_bytes)
        try:
            async for message in request_iterator:
                kind = message.WhichOneof("payload")
                if kind == "file_chunk":
                    await asyncio.to_thread(upload.add_chunk, message.file_chunk)
                elif kind == "rows":
                    rows = [dict(row.values) for row in message.rows.rows]
                    await asyncio.to_thread(upload.add_rows, rows)
                elif kind == "header":
                    raise InvalidArgument("a LoadTable stream has exactly one header")
            spooled = upload.finish()
            info = await asyncio.to_thread(self._databases.load_table, principal, table,
                                           spooled, header.replace)
        finally:
            await asyncio.to_thread(upload.discard)
        return messages.table_message(info)

    async def ListTables(self, request, context):
        tables = await asyncio.to_thread(self._databases.list_tables, user(), request.database)
        return data_pb2.ListTablesResponse(tables=[messages.table_message(t) for t in tables])

    async def PreviewQuery(self, request, context):
        preview = await asyncio.to_thread(self._databases.preview, user(), request.query,
                                          request.limit)
        return messages.preview_message(preview)

    async def ListDatabases(self, request, context):
        databases = await asyncio.to_thread(self._databases.list_databases, user())
        return data_pb2.ListDatabasesResponse(databases=[
            data_pb2.Database(name=d.name, schemas=d.schemas) for d in databases])

    async def CreateSchema(self, request, context):
        name = await asyncio.to_thread(self._databases.create_schema, user(), request.name)
        return data_pb2.CreateSchemaResponse(name=name)

    async def DropDatabase(self, request, context):
        dropped = await asyncio.to_thread(self._databases.drop_database, user(), request.name,
                                          request.if_exists)
        return data_pb2.DropDatabaseResponse(dropped=dropped)

    async def DropSchema(self, request, context):
        dropped = await asyncio.to_thread(self._databases.drop_schema, user(), request.name,
                                          request.if_exists)
        return data_pb2.DropSchemaResponse(dropped=dropped)

    async def DropTable(self, request, context):
        dropped = await asyncio.to_thread(self._databases.drop_relation, user(), request.name,
                                          TABLE, request.if_exists)
        return data_pb2.DropTableResponse(dropped=dropped)

    async def CreateView(self, request, context):
        info = await asyncio.to_thread(self._databases.create_view, user(), request.name,
                                       request.query, request.replace)
        return messages.table_message(info)

    async def DropView(self, request, context):
        dropped = await asyncio.to_thread(self._databases.drop_relation, user(), request.name,
                                          VIEW, request.if_exists)
        return data_pb2.DropViewResponse(dropped=dropped)

    async def RunQuery(self, request, context):
        principal = user()
        call = await asyncio.to_thread(finetune_statement.parse, request.query) \
            if finetune_statement.mentions_finetune(request.query) else None
        if call is not None and self._finetune is not None:
            if request.into or request.replace:
                raise InvalidArgument("FINETUNE's result cannot be saved into a table")
            page = await asyncio.to_thread(self._finetune.run, principal, call)
            for message in messages.query_page_messages(page, "", BYTES_PER_MESSAGE):
                yield message
            return
        if request.into:
            info = await asyncio.to_thread(self._databases.save_query, principal,
                                           request.query, request.into, request.replace,
                                           asyncio.get_running_loop())
            yield data_pb2.RunQueryResponse(table=messages.table_message(info))
            return
        if request.replace:
            raise InvalidArgument("replace applies only with into")
        result = await asyncio.to_thread(self._databases.run_query, principal, request.query,
                                         request.max_rows, request.page_token,
                                         asyncio.get_running_loop())
        for message in messages.query_page_messages(result.page, result.next_page_token,
                                                    BYTES_PER_MESSAGE):
            yield message
