"""Reading the job spec control wrote (services.common.job_spec holds the contract itself)."""

from __future__ import annotations

import json
from pathlib import Path

from services.common.artifacts import ArtifactStore
from services.common.base_models import ensure_folder
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.job_spec import BaseModelRef, JobSpec, TrainerOptions, parse_spec

__all__ = ["BaseModelRef", "JobSpec", "TrainerOptions", "base_model_folder", "parse_spec",
           "read_spec"]


def read_spec(uri: str) -> JobSpec:
    """Read spec.json from the artifact store (a URI, or a local path)."""
    folder, _, _ = uri.rstrip("/").rpartition("/")
    store = ArtifactStore(folder or ".")
    if "://" not in uri:
        uri = store.uri(uri.rsplit("/", 1)[-1])
    try:
        raw = json.loads(store.read_bytes(uri))
    except FileNotFoundError:
        raise InvalidArgument(f"spec {uri} does not exist") from None
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"spec {uri} is not valid JSON: {exc}") from None
    return parse_spec(raw)


def base_model_folder(spec: JobSpec) -> str:
    """The base model's folder on this node, downloaded from the catalog's object-store source
    first when this node lacks it (the driver and every worker may be on different nodes)."""
    ref = spec.base_model
    try:
        return str(ensure_folder(ref.name, ref.source, Path(ref.path)))
    except FileNotFoundError as exc:
        raise FailedPrecondition(str(exc)) from None
