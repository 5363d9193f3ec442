"""The files of an ImportModel, brought into a local temporary folder with each file's sha256:
an upload spooled from the stream chunk by chunk, or an object-store folder read with fsspec.
Only adapter_config.json and adapter_model.safetensors are taken; a pickle beside them refuses
the import; neither path holds a whole file in memory or writes past `max_bytes`."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Sequence

from fsspec.core import url_to_fs

from services.common.adapter_files import (
    ADAPTER_CONFIG,
    ADAPTER_FILES,
    ADAPTER_WEIGHTS,
    MAX_CONFIG_BYTES,
    PICKLE_SUFFIXES,
    MalformedAdapter,
)
from services.common.errors import FailedPrecondition, InvalidArgument, ResourceExhausted

UPLOAD = "upload"   # imported_from of an uploaded adapter
_COPY_BYTES = 1 << 20


@dataclass
class ReceivedAdapter:
    folder: Path
    source: str                                    # "upload" or the folder's URI
    sha256: dict[str, str] = field(default_factory=dict)

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class _Budget:
    """Bytes written so far, against the import's limits."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.total = 0
        self.per_file: dict[str, int] = {}

    def take(self, name: str, size: int) -> None:
        self.total += size
        self.per_file[name] = self.per_file.get(name, 0) + size
        if self.total > self.max_bytes:
            raise ResourceExhausted(f"the adapter is larger than the limit of {self.max_bytes} "
                                    "bytes")
        if name == ADAPTER_CONFIG and self.per_file[name] > MAX_CONFIG_BYTES:
            raise MalformedAdapter(f"{ADAPTER_CONFIG} is larger than {MAX_CONFIG_BYTES} bytes")


def _check_name(name: str) -> None:
    if name.endswith(PICKLE_SUFFIXES):
        raise MalformedAdapter(f"adapter has pickle-based weights ({name[:100]}); only "
                               "safetensors is accepted")
    if name not in ADAPTER_FILES:
        raise InvalidArgument(f"unexpected file {name[:100]!r}: an adapter is "
                              f"{ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}")


class AdapterUpload:
    """The file chunks of one ImportModel stream, spooled into a temporary folder."""

    def __init__(self, spool_dir: Path, max_bytes: int):
        spool_dir.mkdir(parents=True, exist_ok=True)
        self._received = ReceivedAdapter(Path(tempfile.mkdtemp(prefix="import-", dir=spool_dir)),
                                         UPLOAD)
        self._budget = _Budget(max_bytes)
        self._files: dict[str, IO[bytes]] = {}
        self._hashes: dict[str, hashlib._Hash] = {}

    def add_chunk(self, name: str, data: bytes) -> None:
        _check_name(name)
        if name not in self._files:
            self._files[name] = open(self._received.folder / name, "wb")
            self._hashes[name] = hashlib.sha256()
        self._budget.take(name, len(data))
        self._files[name].write(data)
        self._hashes[name].update(data)

    def finish(self) -> ReceivedAdapter:
        for f in self._files.values():
            f.close()
        missing = [name for name in ADAPTER_FILES if name not in self._files]
        if missing:
            raise MalformedAdapter(f"the upload has no {' and no '.join(missing)}")
        self._received.sha256 = {name: h.hexdigest() for name, h in sorted(self._hashes.items())}
        return self._received

    def discard(self) -> None:
        for f in self._files.values():
            f.close()
        self._received.discard()


def _local_form(uri: str) -> str:
    """A URI compared by what it names: file://, local:// and a plain path are one local file
    system (symbolic links followed), and repeated slashes name the same folder."""
    protocol, _, path = uri.rpartition("://")
    if protocol in ("", "file", "local"):
        protocol, path = "file", os.path.realpath("/" + path.lstrip("/"))
    return f"{protocol}://" + re.sub("/+", "/", "/" + path.strip("/") + "/")


def source_allowed(uri: str, allowed: Sequence[str], artifact_root: str) -> None:
    """An object-store folder may be imported only from under a prefix the deployment allows,
    and never from control's own artifact store (other accounts' adapters live there)."""
    if "://" not in uri or any(part in ("..", ".") for part in uri.split("://", 1)[1].split("/")):
        raise InvalidArgument(f"source_uri {uri[:200]!r} must be a URL such as "
                              "s3://bucket/folder, without . or .. segments")
    if _local_form(uri).startswith(_local_form(artifact_root)):
        raise InvalidArgument("source_uri must not point into the service's artifact store")
    prefixes = [p.rstrip("/") + "/" for p in allowed if p.strip()]
    if not any(uri.startswith(p) for p in prefixes):
        raise FailedPrecondition(
            "imports from " + (f"{uri.split('://', 1)[0]}:// URIs are allowed only under "
                               f"{', '.join(prefixes)}" if prefixes else
                               "URIs are not enabled here (control's --import-sources); "
                               "upload the files instead"))


def fetch_adapter(uri: str, spool_dir: Path, max_bytes: int) -> ReceivedAdapter:
    """Copy the adapter folder at `uri` (or the folder of the adapter file `uri` names) into a
    temporary folder, hashing each file on the way."""
    folder_uri = uri.rstrip("/")
    if folder_uri.rsplit("/", 1)[-1] in ADAPTER_FILES:
        folder_uri = folder_uri.rsplit("/", 1)[0]
    # Object stores: another process may have just written the folder, so no cached listing.
    options = {} if folder_uri.split("://", 1)[0] in ("file", "local") else \
        {"use_listings_cache": False}
    try:
        fs, path = url_to_fs(folder_uri, **options)
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        raise InvalidArgument(f"there is no adapter folder at {folder_uri}") from None
    except (OSError, ValueError, ImportError) as exc:
        raise FailedPrecondition(f"{folder_uri} could not be read: {exc}") from None
    files = {e["name"].rstrip("/").rsplit("/", 1)[-1]: e for e in entries
             if e.get("type") == "file"}
    pickled = sorted(name for name in files if name.endswith(PICKLE_SUFFIXES))
    if pickled:
        raise MalformedAdapter(f"adapter has pickle-based weights ({', '.join(pickled)}); "
                               "only safetensors is accepted")
    missing = [name for name in ADAPTER_FILES if name not in files]
    if missing:
        raise MalformedAdapter(f"{folder_uri} holds no {' and no '.join(missing)}")
    spool_dir.mkdir(parents=True, exist_ok=True)
    received = ReceivedAdapter(Path(tempfile.mkdtemp(prefix="import-", dir=spool_dir)),
                               folder_uri)
    budget = _Budget(max_bytes)
    try:
        for name in ADAPTER_FILES:
            received.sha256[name] = _copy(fs, files[name]["name"], received.folder / name,
                                          name, budget)
    except BaseException:
        received.discard()
        raise
    return received


def _copy(fs, path: str, target: Path, name: str, budget: _Budget) -> str:
    digest = hashlib.sha256()
    try:
        with fs.open(path, "rb") as src, open(target, "wb") as out:
            while chunk := src.read(_COPY_BYTES):
                budget.take(name, len(chunk))
                out.write(chunk)
                digest.update(chunk)
    except OSError as exc:
        raise FailedPrecondition(f"{name} could not be read: {exc}") from None
    return digest.hexdigest()
