"""ML.GENERATE_TEXT: start a batch generation (validated and its rows frozen synchronously,
run in the background by `GenerationRunner`), describe, list and cancel it.

Synchronous (database, DuckDB and the artifact store block): the servicer calls these methods in
worker threads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Mapping

from services.common.artifacts import ArtifactStore
from services.common.base_models import BaseModelSpec
from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.control.core import paging
from services.control.core.authorization import Authorizer, load_access
from services.control.core.clock import Clock, utc_now
from services.control.core.evaluations import NO_INFERENCE, called_model, model_target
from services.control.core.idempotency import earlier, record_once
from services.control.core.notifier import ChangeNotifier
from services.control.data.catalog import DataCatalog
from services.control.data.generation_data import INPUT_FILE, generation_uri, snapshot_input
from services.control.domain.evaluations import ACTIVE, RequestedGeneration
from services.control.domain.generations import (
    TextGeneration,
    new_generation_id,
    resolve_options,
)
from services.control.domain.names import DEFAULT_DATABASE, DEFAULT_SCHEMA, qualified_name
from services.control.domain.principals import Principal
from services.control.domain.privileges import Access, Privilege, SecurableObject
from services.control.store.database import Store, Tx

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerateText:
    model: str
    query: str
    into: str
    generation: RequestedGeneration = RequestedGeneration()
    request_id: str = ""


@dataclass(frozen=True)
class GenerationPage:
    generations: list[TextGeneration]
    next_page_token: str


def require_target_table(access: Access, into: str) -> SecurableObject:
    """CREATE TABLE on the target's schema (checked at create and again before writing)."""
    if not into.strip():
        raise InvalidArgument("into is required: the new table, as database.schema.table")
    table = qualified_name(into, "table name")
    schema = SecurableObject.schema(f"{table.database}.{table.schema}")
    access.require(Privilege.CREATE_TABLE, schema)
    return schema


class Generations:
    def __init__(self, store: Store, catalog: DataCatalog, artifacts: ArtifactStore,
                 base_models: Mapping[str, BaseModelSpec], authorizer: Authorizer,
                 events: ChangeNotifier, *,
                 inference_configured: bool, max_rows: int = 100_000,
                 clock: Clock = utc_now, on_created: Callable[[], None] = lambda: None,
                 on_cancelled: Callable[[str], None] = lambda generation_id: None):
        self._store = store
        self._catalog = catalog
        self._artifacts = artifacts
        self._base_models = base_models
        self._authorizer = authorizer
        self._events = events
        self._inference_configured = inference_configured
        self._max_rows = max_rows
        self._clock = clock
        self._on_created = on_created
        self._on_cancelled = on_cancelled

    def create(self, principal: Principal, request: GenerateText) -> TextGeneration:
        """Check privileges (FINETUNE, USAGE on a fine-tuned model, CREATE TABLE on the
        target's schema), that the target table is new, freeze the query's rows (read as the
        caller), and record the generation PENDING for the runner."""
        account = principal.account_id
        access = self._authorizer.access(principal)
        called_model(access, request.model, self._base_models)
        name = request.model.strip()
        require_target_table(access, request.into)
        into = str(qualified_name(request.into, "table name"))
        request_id = request.request_id.strip() or None

        def find(tx: Tx, request_id: str) -> TextGeneration | None:
            return tx.generations.by_request_id(account, request_id)

        existing = earlier(self._store, request_id, find)
        if existing is not None:
            return self.get(principal, existing.id)
        if not self._inference_configured:
            raise FailedPrecondition(NO_INFERENCE)
        options = resolve_options(request.generation)
        if not request.query.strip():
            raise InvalidArgument("query is required")
        self._check_new_table(account, into)
        target = self._store.run(lambda tx: self._target(tx, account, name, into))
        generation_id = new_generation_id()
        data_uri = generation_uri(self._artifacts, generation_id, INPUT_FILE)

        def record() -> TextGeneration:
            rows = snapshot_input(self._catalog, self._artifacts, account, request.query,
                                  data_uri, self._max_rows, access)
            generation = TextGeneration(
                id=generation_id, account_id=account, user_id=principal.user_id,
                model=target.name, base_model=target.base_model, query=request.query,
                into=into, options=options, created_on=self._clock(),
                model_version=target.model.version if target.model else 0,
                adapter_id=target.model.id if target.model else 0, rows=rows,
                request_id=request_id, data_uri=data_uri)
            return self._store.run(lambda tx: tx.generations.add(generation))

        added = record_once(
            record, lambda: self._artifacts.delete(generation_uri(self._artifacts, generation_id)),
            request_id, find, self._store)
        if added.id != generation_id:   # a concurrent retry with the same request id won
            return self.get(principal, added.id)
        log.info("generation %s of %s into %s created (%d rows)", added.id, added.model,
                 added.into, added.rows)
        self._on_created()
        return added

    def _check_new_table(self, account_id: str, into: str) -> None:
        table = qualified_name(into, "table name")
        implicit = table.database == DEFAULT_DATABASE and table.schema == DEFAULT_SCHEMA
        if not implicit and table.schema not in self._catalog.schemas(account_id,
                                                                      table.database):
            raise NotFound(f"schema {table.database}.{table.schema} does not exist")
        if self._catalog.find_relation(account_id, table) is not None:
            raise AlreadyExists(f"{into} already exists: a generation writes a new table")

    def _target(self, tx: Tx, account_id: str, name: str, into: str):
        busy = [g for g in tx.generations.with_status(ACTIVE)
                if g.account_id == account_id and g.into == into]
        if busy:
            raise AlreadyExists(f"generation {busy[0].id} is already writing {into}")
        return model_target(tx, account_id, name, self._base_models)

    def get(self, principal: Principal, generation_id: str) -> TextGeneration:
        return self._store.run(lambda tx: _visible(tx, principal, generation_id))

    def list(self, principal: Principal, page_size: int = 0,
             page_token: str = "") -> GenerationPage:
        """The caller's generations (every user's for an admin), newest first."""
        size = paging.page_size(page_size)
        after = paging.decode_created(page_token) if page_token else None

        def work(tx: Tx) -> list[TextGeneration]:
            access = load_access(tx, principal.account_id, principal.user_id)
            access.require(Privilege.FINETUNE, SecurableObject.account())
            return tx.generations.page(principal.account_id, size + 1,
                                       None if access.admin else principal.user_id, after)

        found = self._store.run(work)
        token = ""
        if len(found) > size:
            found = found[:size]
            token = paging.encode_created(found[-1].created_on, found[-1].id)
        return GenerationPage(found, token)

    def cancel(self, principal: Principal, generation_id: str) -> TextGeneration:
        def work(tx: Tx) -> TextGeneration:
            generation = _visible(tx, principal, generation_id)
            generation.cancel(self._clock())
            generation.error = f"cancelled by {principal.user_name}"
            return tx.generations.save(generation)

        cancelled = self._store.run(work)
        self._events.publish(cancelled.id)
        self._on_cancelled(cancelled.id)
        log.info("generation %s cancelled", cancelled.id)
        return cancelled


def _visible(tx: Tx, principal: Principal, generation_id: str) -> TextGeneration:
    """Its creator's, and an admin's: FINETUNE_USER first (PERMISSION_DENIED whether or not it
    exists), then NOT_FOUND for another user's, as for one that does not exist."""
    access = load_access(tx, principal.account_id, principal.user_id)
    access.require(Privilege.FINETUNE, SecurableObject.account())
    generation = tx.generations.get(generation_id, principal.account_id)
    if generation is None or (generation.user_id != principal.user_id and not access.admin):
        raise NotFound(f"generation {generation_id} does not exist")
    return generation
