"""DataService: databases, table loads (client stream, spooled to disk), previews."""

from __future__ import annotations

import asyncio

from finetune.control.v1 import data_pb2, data_pb2_grpc
from services.common.errors import InvalidArgument
from services.control.api import messages
from services.control.api.principals import user
from services.control.data.catalog import DataCatalog
from services.control.data.uploads import TableUpload
from services.control.domain.names import qualified_name


class DataServicer(data_pb2_grpc.DataServiceServicer):
    def __init__(self, catalog: DataCatalog, max_upload_bytes: int):
        self._catalog = catalog
        self._max_upload_bytes = max_upload_bytes

    async def CreateDatabase(self, request, context):
        name = await asyncio.to_thread(self._catalog.create_database, user().account_id,
                                       request.name)
        return data_pb2.CreateDatabaseResponse(name=name)

    async def LoadTable(self, request_iterator, context):
        principal = user()
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("payload") != "header":
            raise InvalidArgument("the first LoadTable message must be the header")
        header = first.header
        table = qualified_name(header.table, "table name")
        upload = await asyncio.to_thread(TableUpload, self._catalog.spool_dir,
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
            info = await asyncio.to_thread(self._catalog.load_table, principal.account_id,
                                           table, spooled, header.replace)
        finally:
            await asyncio.to_thread(upload.discard)
        return messages.table_message(info)

    async def ListTables(self, request, context):
        tables = await asyncio.to_thread(self._catalog.list_tables, user().account_id,
                                         request.database or None)
        return data_pb2.ListTablesResponse(tables=[messages.table_message(t) for t in tables])

    async def PreviewQuery(self, request, context):
        if request.limit < 0:
            raise InvalidArgument("limit must not be negative")
        preview = await asyncio.to_thread(self._catalog.preview, user().account_id,
                                          request.query, request.limit)
        return messages.preview_message(preview)
