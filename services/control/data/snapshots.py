"""Snapshots: a job's query result frozen as JSON Lines in the artifact store, so training reads
exactly the rows that were validated, whatever happens to the tables afterwards."""

from __future__ import annotations

import json
from dataclasses import dataclass

from services.common.artifacts import ArtifactStore
from services.common.errors import InvalidArgument
from services.control.data.catalog import DataCatalog
from services.control.data.sandbox import ReadScope
from services.control.domain.datasets import column_positions, training_record
from services.control.domain.options import TaskType


@dataclass(frozen=True)
class Snapshot:
    uri: str
    rows: int


def snapshot_query(catalog: DataCatalog, artifacts: ArtifactStore, account_id: str, sql: str,
                   task_type: TaskType, uri: str, rows_per_epoch: int, epochs: int,
                   what: str, scope: ReadScope | None = None) -> Snapshot:
    """Run `sql`, check its columns and row count, and write its rows to `uri`.

    The whole result is counted even past the limit, so the error can say how many rows the
    query returned; the partial file is removed on any failure.
    """
    max_rows = rows_per_epoch // max(1, epochs)
    rows = 0
    try:
        with catalog.query(account_id, sql, scope) as result, artifacts.open(uri, "wb") as out:
            positions = column_positions(task_type, result.column_names, what)
            for batch in result.batches():
                for row in batch:
                    rows += 1
                    if rows <= max_rows:
                        record = training_record(task_type, positions, row, rows, what)
                        out.write(json.dumps(record, ensure_ascii=False).encode() + b"\n")
        if rows == 0:
            raise InvalidArgument(f"{what} returned 0 rows; at least 1 is needed")
        if rows > max_rows:
            raise InvalidArgument(
                f"{what} returned {rows} rows, more than the limit of {max_rows} rows for "
                f"{epochs} epoch{'s' if epochs != 1 else ''} (the base model's "
                f"{rows_per_epoch} rows per epoch divided by max_epochs)")
    except BaseException:
        artifacts.delete(uri)
        raise
    return Snapshot(uri, rows)
