"""The artifact store: job snapshots, adapters, results, evaluations. A local folder by default,
any fsspec URL in production (s3://bucket/prefix, gs://...). Control and the data planes address
artifacts by URI and share nothing else: the trainer downloads what it reads and uploads what it
writes, inference copies an adapter version into its own cache before vLLM loads it.

Object-store connections are configured the way the store's own tools are, in each process that
opens the store (control, every Ray node, inference), never in job specs: for s3:// the standard
AWS settings that botocore reads (AWS_ENDPOINT_URL for MinIO, Ceph or another S3-compatible
server, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or a role, AWS_REGION), which Ray Train's
checkpoints through pyarrow honour as well; fsspec's FSSPEC_<PROTOCOL>_<OPTION> variables for
other protocols.
"""

from __future__ import annotations

import builtins
import os
from pathlib import Path
from typing import IO, Generator

import fsspec
from fsspec.core import url_to_fs

# Object stores: other processes (the trainer, another control) write under the same prefixes,
# so a cached listing would hide their files.
_REMOTE_OPTIONS = {"use_listings_cache": False}


class ArtifactStore:
    def __init__(self, root: str):
        if "://" not in root:
            root = "file://" + str(Path(root).expanduser().resolve())
        self.root = root.rstrip("/")
        protocol = self.root.split("://", 1)[0]
        options = {} if protocol in ("file", "local") else _REMOTE_OPTIONS
        self.fs, self._root_path = url_to_fs(self.root, **options)
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
        return self._root_path + uri[len(self.root):]

    def open(self, uri: str, mode: str = "rb") -> IO:
        path = self._path(uri)
        if "w" in mode and self.is_local:
            # Object stores have no folders; asking s3fs for one would even create the bucket.
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        return self.fs.open(path, mode)

    def write_bytes(self, uri: str, data: bytes) -> None:
        with self.open(uri, "wb") as f:
            f.write(data)

    def read_bytes(self, uri: str) -> bytes:
        with self.open(uri, "rb") as f:
            return f.read()

    def size(self, uri: str) -> int:
        return int(self.fs.size(self._path(uri)))

    def exists(self, uri: str) -> bool:
        return self.fs.exists(self._path(uri))

    def list(self, uri: str) -> list[str]:
        """File names directly under `uri` (empty if it does not exist)."""
        return sorted(name for name, _ in self._files(self._path(uri)))

    def _files(self, path: str) -> builtins.list[tuple[str, str]]:
        """(name, path) of each file directly under `path`; one listing call."""
        try:
            entries = self.fs.ls(path, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [(e["name"].rstrip("/").rsplit("/", 1)[-1], e["name"]) for e in entries
                if e.get("type") == "file" and e["name"].rstrip("/") != path.rstrip("/")]

    def iter_chunks(self, uri: str, chunk_size: int = 1 << 20) -> Generator[bytes, None, None]:
        with self.open(uri, "rb") as f:
            while chunk := f.read(chunk_size):
                yield chunk

    def put_dir(self, local_dir: str | os.PathLike, uri: str) -> None:
        """Upload the files directly inside `local_dir` (not its subfolders) under `uri`."""
        dest = self._path(uri)
        if self.is_local:
            self.fs.makedirs(dest, exist_ok=True)
        for item in sorted(Path(local_dir).iterdir()):
            if item.is_file():
                self.fs.put_file(str(item), f"{dest}/{item.name}")

    def get_dir(self, uri: str, local_dir: str | os.PathLike) -> Path:
        """Download the files directly under `uri` into `local_dir`; FileNotFoundError when
        there are none (a missing folder on an object store is an empty listing)."""
        local = Path(local_dir)
        files = self._files(self._path(uri))
        if not files:
            raise FileNotFoundError(f"no files at {uri}")
        local.mkdir(parents=True, exist_ok=True)
        for name, path in files:
            self.fs.get_file(path, str(local / name))
        return local

    def local_path(self, uri: str) -> Path | None:
        """The local filesystem path of `uri` when the store is a local folder: a caller on the
        same machine may read it in place; any other caller downloads (get_dir)."""
        return Path(self._path(uri)) if self.is_local else None

    def delete(self, uri: str) -> None:
        path = self._path(uri)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)
