"""The artifact store: job snapshots, adapters, results. A local folder by default, any fsspec URL
in production (s3://, gs://, ...). Control and the data planes address artifacts by URI."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Iterator

import fsspec
from fsspec.core import url_to_fs


class ArtifactStore:
    def __init__(self, root: str):
        if "://" not in root:
            root = "file://" + str(Path(root).expanduser().resolve())
        self.root = root.rstrip("/")
        self.fs, self._root_path = url_to_fs(self.root)
        if self.is_local:
            Path(self._root_path).mkdir(parents=True, exist_ok=True)

    @property
    def is_local(self) -> bool:
        return "file" in _protocols(self.fs)

    def uri(self, *parts: str) -> str:
        return "/".join([self.root, *[p.strip("/") for p in parts]])

    def _path(self, uri: str) -> str:
        if not uri.startswith(self.root + "/") and uri != self.root:
            raise ValueError(f"{uri} is outside the artifact store {self.root}")
        return url_to_fs(uri)[1]

    def open(self, uri: str, mode: str = "rb") -> IO:
        path = self._path(uri)
        if "w" in mode:
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        return self.fs.open(path, mode)

    def write_bytes(self, uri: str, data: bytes) -> None:
        with self.open(uri, "wb") as f:
            f.write(data)

    def read_bytes(self, uri: str) -> bytes:
        with self.open(uri, "rb") as f:
            return f.read()

    def exists(self, uri: str) -> bool:
        return self.fs.exists(self._path(uri))

    def list(self, uri: str) -> list[str]:
        """File names directly under `uri` (empty if it does not exist)."""
        path = self._path(uri)
        if not self.fs.exists(path):
            return []
        return sorted(p.rsplit("/", 1)[-1] for p in self.fs.ls(path, detail=False)
                      if self.fs.isfile(p))

    def iter_chunks(self, uri: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        with self.open(uri, "rb") as f:
            while chunk := f.read(chunk_size):
                yield chunk

    def put_dir(self, local_dir: str | os.PathLike, uri: str) -> None:
        dest = self._path(uri)
        self.fs.makedirs(dest, exist_ok=True)
        for item in sorted(Path(local_dir).iterdir()):
            if item.is_file():
                self.fs.put_file(str(item), f"{dest}/{item.name}")

    def get_dir(self, uri: str, local_dir: str | os.PathLike) -> Path:
        local = Path(local_dir)
        local.mkdir(parents=True, exist_ok=True)
        src = self._path(uri)
        for path in self.fs.ls(src, detail=False):
            if self.fs.isfile(path):
                self.fs.get_file(path, str(local / path.rsplit("/", 1)[-1]))
        return local

    def local_path(self, uri: str) -> Path | None:
        """The local filesystem path of `uri` when the store is a local folder."""
        return Path(self._path(uri)) if self.is_local else None

    def delete(self, uri: str) -> None:
        path = self._path(uri)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)
