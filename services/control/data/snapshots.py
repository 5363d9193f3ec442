"""Snapshots: a job's query results frozen as JSON Lines in the artifact store, so training reads
exactly the rows that were validated, whatever happens to the tables afterwards. Each file's
SHA-256 and token counts are its lineage.

Two passes: the query runs once into a file (its time limit covers the query, not tokenizing),
then that file is read back to count tokens and truncated rows with the base model's tokenizer
and, without a validation query, to hold out validation rows by seed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import IO, Callable, Iterable, Iterator

from services.common.artifacts import ArtifactStore
from services.common.errors import InvalidArgument
from services.common.formatting import RowTokens
from services.control.data.catalog import DataCatalog
from services.control.data.sandbox import ReadScope
from services.control.domain.datasets import column_positions, holdout_rows, training_record
from services.control.domain.jobs import SnapshotInfo, ValidationSource
from services.control.domain.options import TaskType
from services.control.domain.tokens import TokenTally

CountRow = Callable[[dict], RowTokens]


@dataclass(frozen=True)
class SnapshotRequest:
    """What to snapshot, and where."""

    account_id: str
    task_type: TaskType
    training_query: str
    validation_query: str            # "" for none: rows are held out instead
    rows_per_epoch: int
    epochs: int
    seed: int
    training_uri: str
    validation_uri: str
    scratch_uri: str                 # the training query's result before a holdout split


@dataclass(frozen=True)
class Snapshots:
    training: SnapshotInfo
    validation: SnapshotInfo | None
    source: ValidationSource
    query_rows: int                  # rows the training query returned (before a holdout)


class _HashingWriter:
    def __init__(self, out: IO[bytes]):
        self._out = out
        self.sha256 = hashlib.sha256()
        self.rows = 0

    def write_line(self, line: bytes) -> None:
        self._out.write(line)
        self.sha256.update(line)
        self.rows += 1


def take_snapshots(catalog: DataCatalog, artifacts: ArtifactStore, request: SnapshotRequest,
                   count_row: CountRow, scope: ReadScope | None = None) -> Snapshots:
    """Run the queries into the artifact store and count their tokens. Every file written is
    removed again if anything fails."""
    written = [request.training_uri, request.validation_uri, request.scratch_uri]
    try:
        if request.validation_query.strip():
            training = _export(catalog, artifacts, request, request.training_query,
                               request.training_uri, "training query", scope)
            validation = _export(catalog, artifacts, request, request.validation_query,
                                 request.validation_uri, "validation query", scope)
            return Snapshots(_counted(artifacts, request.training_uri, training, count_row),
                             _counted(artifacts, request.validation_uri, validation, count_row),
                             ValidationSource.QUERY, training.rows)
        exported = _export(catalog, artifacts, request, request.training_query,
                           request.scratch_uri, "training query", scope)
        held_out = holdout_rows(exported.rows, request.seed)
        split_training, split_validation = _split(artifacts, request, held_out, count_row)
        artifacts.delete(request.scratch_uri)
        return Snapshots(split_training, split_validation,
                         ValidationSource.HOLDOUT if held_out else ValidationSource.NONE,
                         exported.rows)
    except BaseException:
        for uri in written:
            artifacts.delete(uri)
        raise


@dataclass(frozen=True)
class _Exported:
    rows: int
    sha256: str


def _export(catalog: DataCatalog, artifacts: ArtifactStore, request: SnapshotRequest, sql: str,
            uri: str, what: str, scope: ReadScope | None) -> _Exported:
    """Run `sql`, check its columns and row count, and write its rows to `uri`.

    The whole result is counted even past the limit, so the error can say how many rows the
    query returned."""
    epochs = max(1, request.epochs)
    max_rows = request.rows_per_epoch // epochs
    rows = 0
    with catalog.query(request.account_id, sql, scope) as result, \
            artifacts.open(uri, "wb") as out:
        writer = _HashingWriter(out)
        positions = column_positions(request.task_type, result.column_names, what)
        for batch in result.batches():
            for row in batch:
                rows += 1
                if rows <= max_rows:
                    record = training_record(request.task_type, positions, row, rows, what)
                    writer.write_line(_line(record))
    if rows == 0:
        raise InvalidArgument(f"{what} returned 0 rows; at least 1 is needed")
    if rows > max_rows:
        raise InvalidArgument(
            f"{what} returned {rows} rows, more than the limit of {max_rows} rows for "
            f"{epochs} epoch{'s' if epochs != 1 else ''} (the base model's "
            f"{request.rows_per_epoch} rows per epoch divided by max_epochs)")
    return _Exported(rows, writer.sha256.hexdigest())


def _line(record: dict) -> bytes:
    return json.dumps(record, ensure_ascii=False).encode() + b"\n"


def _lines(artifacts: ArtifactStore, uri: str) -> Iterator[bytes]:
    with artifacts.open(uri, "rb") as f:
        for line in f:
            if line.strip():
                yield line


def _counted(artifacts: ArtifactStore, uri: str, exported: _Exported,
             count_row: CountRow) -> SnapshotInfo:
    tally = _tally(_lines(artifacts, uri), count_row)
    return _info(uri, exported.rows, exported.sha256, tally)


def _tally(lines: Iterable[bytes], count_row: CountRow) -> TokenTally:
    tally = TokenTally()
    for line in lines:
        tally.add(count_row(json.loads(line)))
    return tally


def _split(artifacts: ArtifactStore, request: SnapshotRequest, held_out: frozenset[int],
           count_row: CountRow) -> tuple[SnapshotInfo, SnapshotInfo | None]:
    """The scratch file's rows into training and (the held-out ones) validation."""
    tallies = (TokenTally(), TokenTally())
    with artifacts.open(request.training_uri, "wb") as train_out:
        train = _HashingWriter(train_out)
        validation_out = artifacts.open(request.validation_uri, "wb") if held_out else None
        try:
            validation = _HashingWriter(validation_out) if validation_out else None
            for number, line in enumerate(_lines(artifacts, request.scratch_uri)):
                target = 1 if number in held_out else 0
                writer = validation if target else train
                assert writer is not None   # rows are held out only into a validation file
                writer.write_line(line)
                tallies[target].add(count_row(json.loads(line)))
        finally:
            if validation_out is not None:
                validation_out.close()
    training_info = _info(request.training_uri, train.rows, train.sha256.hexdigest(),
                          tallies[0])
    if validation is None:
        return training_info, None
    return training_info, _info(request.validation_uri, validation.rows,
                                validation.sha256.hexdigest(), tallies[1])


def _info(uri: str, rows: int, sha256: str, tally: TokenTally) -> SnapshotInfo:
    return SnapshotInfo(uri=uri, rows=rows, sha256=sha256, prompt_tokens=tally.prompt_tokens,
                        completion_tokens=tally.completion_tokens,
                        truncated_rows=tally.truncated_rows)
