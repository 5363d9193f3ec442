"""ImportModel: a PEFT LoRA adapter trained elsewhere, registered as a model like a job's.

The adapter is checked at registration with the rules inference applies before a first load
(services.common.adapter_files), so a refused adapter never reaches an engine: malformed files
are INVALID_ARGUMENT, an adapter that does not fit the base model FAILED_PRECONDITION. Its files
are copied into the artifact store under imports/<id>/, and the model records where they came
from and each file's sha256. From then on it is a model like any other: COMPLETE, evaluations,
`from_model` and export resolve it by name.

Synchronous (database, artifact store, fsspec): the servicer calls these in worker threads.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from sqlalchemy.exc import IntegrityError

from services.common.adapter_files import base_layer_shapes, validate_adapter
from services.common.artifacts import ArtifactStore
from services.common.base_models import BaseModelSpec
from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from services.control.core.authorization import Authorizer
from services.control.core.clock import Clock, utc_now
from services.control.core.idempotency import earlier, record_once
from services.control.core.lifecycle import check_model_name_free, grant_model_ownership
from services.control.core.models import base_model_named
from services.control.data.adapter_intake import (
    AdapterUpload,
    ReceivedAdapter,
    fetch_adapter,
    source_allowed,
)
from services.control.domain.models import RegisteredModel
from services.control.domain.names import qualified_name
from services.control.domain.principals import Principal
from services.control.store.database import Store, Tx

log = logging.getLogger(__name__)

MAX_REQUEST_ID = 255   # the column's width
# (base model) -> its weights' shapes by tensor name (services.common.adapter_files)
ShapeSource = Callable[[BaseModelSpec], Mapping[str, tuple[int, ...]]]


@dataclass(frozen=True)
class ImportRequest:
    model: str
    base_model: str
    source_uri: str = ""           # empty: the files come uploaded
    request_id: str = ""


@dataclass(frozen=True)
class ImportSettings:
    spool_dir: Path                # uploads and fetched folders wait here, then are deleted
    max_bytes: int                 # an adapter's files together
    allowed_sources: Sequence[str] = ()   # URI prefixes source_uri may name; none: uploads only


class ModelImports:
    def __init__(self, store: Store, artifacts: ArtifactStore,
                 base_models: Mapping[str, BaseModelSpec], authorizer: Authorizer,
                 provision: Callable[[BaseModelSpec], Path], settings: ImportSettings,
                 clock: Clock = utc_now, shapes: ShapeSource | None = None):
        self._store = store
        self._artifacts = artifacts
        self._base_models = base_models
        self._authorizer = authorizer
        self._provision = provision
        self._settings = settings
        self._clock = clock
        self._shapes_of = shapes or self._base_folder_shapes
        self._shapes: dict[str, Mapping[str, tuple[int, ...]]] = {}
        self._shapes_lock = threading.Lock()

    def begin(self, principal: Principal, request: ImportRequest) -> RegisteredModel | None:
        """Every check that needs no file, before a byte is received: privileges first (what
        creating a model needs), then the name, the base model, the source. The model already
        registered by an earlier try of the same request_id, or None."""
        self._authorizer.authorize_model_creation(principal, request.model)
        name = str(qualified_name(request.model, "model name"))
        request_id = request.request_id.strip()
        if len(request_id) > MAX_REQUEST_ID:
            raise InvalidArgument(f"request_id is longer than {MAX_REQUEST_ID} characters")
        found = earlier(self._store, request_id, _finder(principal.account_id))
        if found is not None:
            return found
        self._base(request)
        if request.source_uri.strip():
            source_allowed(request.source_uri.strip(), self._settings.allowed_sources,
                           self._artifacts.root)
        self._store.run(lambda tx: check_model_name_free(tx, principal.account_id, name))
        return None

    def upload(self) -> AdapterUpload:
        """Where an upload's chunks go (the caller discards it in the end)."""
        return AdapterUpload(self._settings.spool_dir, self._settings.max_bytes)

    def import_model(self, principal: Principal, request: ImportRequest,
                     upload: AdapterUpload | None = None) -> RegisteredModel:
        """Check the adapter (uploaded, or read from request.source_uri), store its files and
        register it, owned by the caller's default role. Idempotent by request_id."""
        earlier = self.begin(principal, request)
        if earlier is not None:
            return earlier
        owner_role_id = self._authorizer.owner_role(principal)
        base = self._base(request)
        source = request.source_uri.strip()
        if source and upload is not None:
            raise InvalidArgument("an import names a source_uri or uploads files, not both")
        if source:
            received = fetch_adapter(source, self._settings.spool_dir, self._settings.max_bytes)
        elif upload is not None:
            received = upload.finish()
        else:
            raise InvalidArgument("an import needs source_uri or the adapter's files")
        try:
            validate_adapter(received.folder, base, base.max_lora_rank, self._base_shapes(base))
            return self._register(principal, request, base, received, owner_role_id)
        finally:
            received.discard()

    def _base(self, request: ImportRequest) -> BaseModelSpec:
        return base_model_named(self._base_models, request.base_model.strip())

    def _base_shapes(self, base: BaseModelSpec) -> Mapping[str, tuple[int, ...]]:
        with self._shapes_lock:   # computed once per base model, by the first import
            if base.name not in self._shapes:
                self._shapes[base.name] = self._shapes_of(base)
            return self._shapes[base.name]

    def _base_folder_shapes(self, base: BaseModelSpec) -> Mapping[str, tuple[int, ...]]:
        try:
            return base_layer_shapes(self._provision(base))
        except (OSError, ValueError) as exc:
            raise FailedPrecondition(f"base model {base.name} is not available: {exc}") \
                from None

    def _register(self, principal: Principal, request: ImportRequest, base: BaseModelSpec,
                  received: ReceivedAdapter, owner_role_id: str) -> RegisteredModel:
        name = str(qualified_name(request.model, "model name"))
        request_id = request.request_id.strip()
        uri = self._artifacts.uri("imports", f"im_{uuid.uuid4().hex}")
        self._artifacts.put_dir(received.folder, uri)

        def record(tx: Tx) -> RegisteredModel:
            check_model_name_free(tx, principal.account_id, name)
            now = self._clock()
            model = tx.models.add(
                account_id=principal.account_id, name=name, base_model=base.name, job_id="",
                adapter_uri=uri, created_on=now, trained_tokens=0, training_loss=None,
                validation_loss=None, imported_from=received.source,
                file_sha256=received.sha256, request_id=request_id)
            grant_model_ownership(tx, principal.account_id, owner_role_id, name, now)
            return model
        try:   # a concurrent import under the same request id may win: its model is returned
            model = record_once(lambda: self._store.run(record),
                                lambda: self._artifacts.delete(uri), request_id,
                                _finder(principal.account_id), self._store)
        except IntegrityError:   # a concurrent import won the name
            raise AlreadyExists(f"model {name} already exists, or request_id {request_id} "
                                "was used by an import since deleted") from None
        log.info("model %s imported from %s (version %d, adapter id %d)", model.name,
                 model.imported_from, model.version, model.id)
        return model


def _finder(account_id: str) -> Callable[[Tx, str], RegisteredModel | None]:
    """The model an import under a request id registered in the account."""
    return lambda tx, request_id: tx.models.by_request_id(account_id, request_id)
