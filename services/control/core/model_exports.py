"""ExportModel: a model as a standard PEFT folder (adapter_config.json and
adapter_model.safetensors, which peft.PeftModel.from_pretrained loads and vLLM serves as they
are) plus manifest.json (base model, options, lineage, metrics, each file's size and sha256),
streamed as the folder's files or as one tar archive of them.

The archive is written as it streams (a ustar header, the file's bytes, padding), so nothing is
held whole in memory or on disk; the manifest comes last, with the sha256 of the bytes actually
sent. Needs OWNERSHIP of the model, as reading its artifacts does.
"""

from __future__ import annotations

import enum
import hashlib
import json
import tarfile
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Generator, Iterator, Sequence

from services.common.adapter_files import ADAPTER_FILES
from services.common.artifacts import ArtifactStore
from services.common.errors import FailedPrecondition, NotFound
from services.control.core.authorization import Authorizer
from services.control.core.clock import Clock, utc_now
from services.control.domain.evaluations import Evaluation
from services.control.domain.models import RegisteredModel
from services.control.domain.principals import Principal
from services.control.domain.privileges import Privilege, SecurableObject
from services.control.store.database import Store

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "finetune.model-export/1"
CHUNK_BYTES = 1 << 20
_BLOCK = tarfile.BLOCKSIZE


class ExportFormat(enum.Enum):
    FILES = "FILES"
    TAR = "TAR"


@dataclass(frozen=True)
class ExportChunk:
    file: str          # FILES: the file `data` belongs to; TAR: ""
    data: bytes


@dataclass
class Export:
    model: RegisteredModel
    total_bytes: int                           # the adapter files' sizes, for progress
    chunks: Generator[ExportChunk, None, None]


# (model) -> its evaluations, newest first (core.evaluations.Evaluations.for_model)
EvaluationSource = Callable[[RegisteredModel], Sequence[Evaluation]]


class ModelExports:
    def __init__(self, store: Store, artifacts: ArtifactStore, authorizer: Authorizer,
                 evaluations: EvaluationSource | None = None, clock: Clock = utc_now):
        self._store = store
        self._artifacts = artifacts
        self._authorizer = authorizer
        self._evaluations = evaluations
        self._clock = clock

    def export(self, principal: Principal, name: str, fmt: ExportFormat) -> Export:
        """Needs OWNERSHIP (PERMISSION_DENIED whether or not the model exists)."""
        target = SecurableObject.model(name)
        self._authorizer.authorize(principal, Privilege.OWNERSHIP, target)
        canonical = target.name   # the caller's own account's, once allowed
        model = self._store.run(lambda tx: tx.models.get(principal.account_id, canonical))
        if model is None or not model.ready:
            raise NotFound(f"model {canonical} does not exist")
        folder = model.adapter_uri.rstrip("/")
        present = set(self._artifacts.list(folder))
        missing = [f for f in ADAPTER_FILES if f not in present]
        if missing:
            raise FailedPrecondition(f"model {canonical} has lost its {', '.join(missing)}")
        sizes = {f: self._artifacts.size(f"{folder}/{f}") for f in ADAPTER_FILES}
        manifest = self._manifest(model)
        files = self._files(folder, sizes, manifest)
        chunks = _tar(files, model.created_on) if fmt is ExportFormat.TAR else _plain(files)
        return Export(model, sum(sizes.values()), chunks)

    def _manifest(self, model: RegisteredModel) -> dict[str, Any]:
        job = self._store.run(lambda tx: tx.jobs.get(model.job_id)) if model.job_id else None
        options = dict(job.options) if job is not None else {}
        evaluations = self._evaluations(model) if self._evaluations is not None else []
        return {
            "format": MANIFEST_FORMAT,
            "model": model.name,
            "version": model.version,
            "base_model": model.base_model,
            "created_on": model.created_on.isoformat(),
            "exported_on": self._clock().isoformat(),
            "options": options,
            "lineage": {
                "job_id": model.job_id or None,
                "from_model": options.get("from_model") or None,
                "training_data_sha256": job.training_data_sha256 if job is not None else None,
                "validation_data_sha256": job.validation_data_sha256 if job is not None
                else None,
                "imported_from": model.imported_from or None,
                "imported_sha256": model.file_sha256 or None,
            },
            "metrics": {
                "trained_tokens": model.trained_tokens,
                "training_loss": model.training_loss,
                "validation_loss": model.validation_loss,
                "evaluations": [_evaluation(e) for e in evaluations],
            },
        }

    def _files(self, folder: str, sizes: dict[str, int],
               manifest: dict[str, Any]) -> Iterator[tuple[str, int, Iterator[bytes]]]:
        """(name, size, chunks) of each exported file; the manifest last, with the sha256 of
        the adapter files as read."""
        listed: dict[str, dict[str, Any]] = {}
        for name in ADAPTER_FILES:
            digest = hashlib.sha256()
            yield name, sizes[name], _hashed(self._artifacts.iter_chunks(f"{folder}/{name}",
                                                                          CHUNK_BYTES),
                                             digest, sizes[name], name)
            listed[name] = {"bytes": sizes[name], "sha256": digest.hexdigest()}
        manifest = {**manifest, "files": listed}
        data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
        yield MANIFEST, len(data), iter([data])


def _hashed(chunks: Iterator[bytes], digest: "hashlib._Hash", size: int,
            name: str) -> Iterator[bytes]:
    sent = 0
    for chunk in chunks:
        sent += len(chunk)
        if sent > size:
            raise FailedPrecondition(f"{name} changed while it was exported")
        digest.update(chunk)
        yield chunk
    if sent != size:
        raise FailedPrecondition(f"{name} changed while it was exported")


def _evaluation(e: Evaluation) -> dict[str, Any]:
    return {"id": e.id, "task": e.task.value, "status": e.status.value,
            "metrics": dict(e.metrics), "rows": e.rows,
            "finished_on": e.finished_on.isoformat() if e.finished_on else None}


def _plain(files: Iterator[tuple[str, int, Iterator[bytes]]]
           ) -> Generator[ExportChunk, None, None]:
    for name, _, chunks in files:
        for chunk in chunks:
            yield ExportChunk(name, chunk)


def _tar(files: Iterator[tuple[str, int, Iterator[bytes]]],
         mtime: datetime) -> Generator[ExportChunk, None, None]:
    """A ustar archive, written as it streams."""
    for name, size, chunks in files:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, 0o644, int(mtime.timestamp())
        yield ExportChunk("", info.tobuf(format=tarfile.USTAR_FORMAT))
        for chunk in chunks:
            yield ExportChunk("", chunk)
        if size % _BLOCK:
            yield ExportChunk("", b"\0" * (_BLOCK - size % _BLOCK))
    yield ExportChunk("", b"\0" * (2 * _BLOCK))   # the end-of-archive marker

