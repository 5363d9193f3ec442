"""A batch generation's files in the artifact store:

    generations/<id>/input.parquet                 the query's rows, frozen at GenerateText
    generations/<id>/parts/part-<run>-<seq>.jsonl  answers, one JSON object per row, appended
                                                   as a new part at each progress write

Parts are only ever added, so a run killed at any moment leaves every answer it saved, and the
next run generates only the rows none of them holds (a torn last line is ignored). At the end
the input and the answers are joined, in row order, into the target table.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterable, Mapping

import pyarrow
import pyarrow.parquet as pq

from services.common.artifacts import ArtifactStore
from services.common.errors import InvalidArgument
from services.control.data.catalog import DataCatalog
from services.control.data.sandbox import ReadScope
from services.control.domain.generations import PROMPT_COLUMN, RowAnswer, prompt_index

log = logging.getLogger(__name__)

INPUT_FILE = "input.parquet"
PARTS = "parts"


def generation_uri(artifacts: ArtifactStore, generation_id: str, *parts: str) -> str:
    return artifacts.uri("generations", generation_id, *parts)


def snapshot_input(catalog: DataCatalog, artifacts: ArtifactStore, account_id: str, sql: str,
                   uri: str, max_rows: int, scope: ReadScope | None) -> int:
    """Run `sql` in the sandbox (with the caller's read scope, at most max_rows + 1 rows),
    check its columns, and write its rows to `uri` as Parquet; the number of rows."""
    if not sql.strip():
        raise InvalidArgument("query is required")
    with catalog.query(account_id, sql, scope, window=(0, max_rows + 1)) as result:
        table = result.arrow()
    index = prompt_index(table.column_names)
    if not pyarrow.types.is_string(table.schema.field(index).type) and \
            not pyarrow.types.is_large_string(table.schema.field(index).type):
        raise InvalidArgument(f"the {PROMPT_COLUMN} column must be text "
                              f"(it is {table.schema.field(index).type}); cast it with ::VARCHAR")
    if table.num_rows == 0:
        raise InvalidArgument("the query returned 0 rows; at least 1 is needed")
    if table.num_rows > max_rows:
        raise InvalidArgument(f"the query returned more than the limit of {max_rows} rows per "
                              "generation")
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    artifacts.write_bytes(uri, buffer.getvalue())
    return table.num_rows


def read_input(artifacts: ArtifactStore, uri: str) -> pyarrow.Table:
    with artifacts.open(uri, "rb") as f:
        return pq.read_table(f)


def prompts(table: pyarrow.Table) -> list[str | None]:
    return table.column(prompt_index(table.column_names)).to_pylist()


def write_part(artifacts: ArtifactStore, generation_id: str, run: int, seq: int,
               answers: Iterable[RowAnswer]) -> None:
    data = b"".join(json.dumps(a.to_dict(), ensure_ascii=False).encode() + b"\n"
                    for a in answers)
    if data:
        artifacts.write_bytes(generation_uri(artifacts, generation_id, PARTS,
                                             f"part-{run:04d}-{seq:06d}.jsonl"), data)


def read_answers(artifacts: ArtifactStore, generation_id: str) -> dict[int, RowAnswer]:
    """Every saved answer by row; the first saved wins (a row is never generated twice, but
    a part rewritten after a crash must not count it twice either)."""
    folder = generation_uri(artifacts, generation_id, PARTS)
    answers: dict[int, RowAnswer] = {}
    for name in artifacts.list(folder):
        for line in artifacts.read_bytes(f"{folder}/{name}").splitlines():
            try:
                answer = RowAnswer.from_dict(json.loads(line))
            except (ValueError, KeyError, TypeError):
                log.warning("generation %s: skipping a torn line in %s", generation_id, name)
                continue
            answers.setdefault(answer.row, answer)
    return answers


def result_file(table: pyarrow.Table, answers: Mapping[int, RowAnswer],
                spool_dir: Path) -> Path:
    """The input's columns, then the answers', in row order, as a Parquet file to load."""
    rows = [answers.get(i) for i in range(table.num_rows)]
    added = {
        "generated_text": pyarrow.array([a.text if a else None for a in rows], pyarrow.string()),
        "finish_reason": pyarrow.array([a.finish_reason if a else None for a in rows],
                                       pyarrow.string()),
        "prompt_tokens": pyarrow.array([a.prompt_tokens if a else None for a in rows],
                                       pyarrow.int64()),
        "completion_tokens": pyarrow.array([a.completion_tokens if a else None for a in rows],
                                           pyarrow.int64()),
        "error": pyarrow.array([a.error if a else None for a in rows], pyarrow.string()),
    }
    for name, column in added.items():
        table = table.append_column(name, column)
    spool_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="upload-generation-", suffix=".parquet", dir=spool_dir)
    os.close(fd)
    pq.write_table(table, name)
    return Path(name)
