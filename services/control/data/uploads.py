"""LoadTable streams: spooled to a temporary file chunk by chunk, never held whole in memory."""

from __future__ import annotations

import enum
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from services.common.errors import InvalidArgument, ResourceExhausted

MAX_COLUMN_NAME = 255


class FileFormat(enum.Enum):
    CSV = "CSV"
    JSONL = "JSONL"
    PARQUET = "PARQUET"


@dataclass
class SpooledUpload:
    path: Path
    format: FileFormat
    # For uploads of rows: every column seen, in order of first appearance (all VARCHAR).
    row_columns: list[str] = field(default_factory=list)


class TableUpload:
    """Collects either file chunks (in one format) or rows, into one temporary file."""

    def __init__(self, spool_dir: Path, file_format: FileFormat | None, max_bytes: int):
        spool_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="upload-", dir=spool_dir)
        self._file = os.fdopen(fd, "wb")
        self._path = Path(name)
        self._format = file_format
        self._max_bytes = max_bytes
        self._size = 0
        self._kind: str | None = None
        self._columns: dict[str, None] = {}  # ordered set

    def _write(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._max_bytes:
            raise ResourceExhausted(f"upload is larger than the limit of {self._max_bytes} bytes")
        self._file.write(data)

    def _expect(self, kind: str) -> None:
        if self._kind not in (None, kind):
            raise InvalidArgument("a LoadTable stream carries either file chunks or rows, not both")
        self._kind = kind

    def add_chunk(self, data: bytes) -> None:
        self._expect("file")
        if self._format is None:
            raise InvalidArgument("the header must name the file format (CSV, JSONL or PARQUET)")
        self._write(data)

    def add_rows(self, rows: Sequence[Mapping[str, str]]) -> None:
        self._expect("rows")
        lines = []
        for row in rows:
            for column in row:
                if not column or len(column) > MAX_COLUMN_NAME:
                    raise InvalidArgument(f"invalid column name {column[:40]!r} in rows")
                self._columns.setdefault(column, None)
            lines.append(json.dumps(dict(row), ensure_ascii=False))
        if lines:
            self._write(("\n".join(lines) + "\n").encode())

    def finish(self) -> SpooledUpload:
        self._file.close()
        if self._kind is None or self._size == 0:
            raise InvalidArgument("the LoadTable stream carried no data")
        if self._kind == "rows":
            return SpooledUpload(self._path, FileFormat.JSONL, list(self._columns))
        assert self._format is not None   # add_chunk refused chunks without one
        return SpooledUpload(self._path, self._format)

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        self._path.unlink(missing_ok=True)
