"""ML.EVALUATE: start an evaluation (validated and its rows frozen synchronously, run in the
background by `EvaluationRunner`), describe, list, cancel, and download its results.

Synchronous (database, DuckDB and the artifact store block): the servicer calls these methods in
worker threads.
"""

from __future__ import annotations

import builtins
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Generator, Iterable, Mapping

from services.common.artifacts import ArtifactStore
from services.common.base_models import BaseModelSpec
from services.common.chat_format import completion_token_ids
from services.common.errors import FailedPrecondition, FinetuneError, InvalidArgument, NotFound
from services.control.core import paging
from services.control.core.authorization import Authorizer, load_access
from services.control.core.clock import Clock, utc_now
from services.control.core.idempotency import earlier, record_once
from services.control.core.notifier import ChangeNotifier
from services.control.data.catalog import DataCatalog
from services.control.data.evaluation_data import (
    DATA_FILE,
    METRICS_FILE,
    RESULT_FILES,
    evaluation_uri,
    result_chunks,
    snapshot_rows,
)
from services.control.data.sandbox import ReadScope
from services.control.domain.evaluations import (
    Evaluation,
    EvaluationRole,
    EvaluationStatus,
    EvaluationTask,
    Generation,
    JobEvaluation,
    RequestedGeneration,
    check_min_improvement,
    fit_max_tokens,
    new_evaluation_id,
    resolve_generation,
    resolve_task,
)
from services.control.domain.jobs import Job
from services.control.domain.models import RegisteredModel
from services.control.domain.names import qualified_name
from services.control.domain.principals import Principal
from services.control.domain.privileges import Access, Privilege, SecurableObject
from services.control.store.database import Store, Tx

log = logging.getLogger(__name__)

NO_INFERENCE = ("no inference service configured: start control with --inference <address> "
                "(or FINETUNE_INFERENCE_ADDRESS)")
MODEL_EVALUATIONS_SHOWN = 20   # Model.evaluations in GetModel: the newest ones


@dataclass(frozen=True)
class EvaluateModel:
    model: str
    query: str
    task: EvaluationTask | None = None
    generation: RequestedGeneration = RequestedGeneration()
    request_id: str = ""


@dataclass(frozen=True)
class JobEvaluationRequest:
    """FineTuningOptions.evaluation as CREATE receives it."""

    query: str
    task: EvaluationTask | None = None
    generation: RequestedGeneration = RequestedGeneration()
    min_improvement: float | None = None


@dataclass(frozen=True)
class EvaluationPage:
    evaluations: list[Evaluation]
    next_page_token: str


@dataclass(frozen=True)
class ModelTarget:
    """The model an evaluation or a generation calls."""

    name: str
    base_model: str
    model: RegisteredModel | None     # None for a base model


def require_model_call(access: Access, model: str, fine_tuned: bool) -> None:
    """What calling a model needs, at create and again when the work starts: FINETUNE, and
    USAGE on it when it is a fine-tuned one."""
    access.require(Privilege.FINETUNE, SecurableObject.account())
    if fine_tuned:
        access.require(Privilege.USAGE, SecurableObject.model(model))


def called_model(access: Access, requested: str,
                 base_models: Mapping[str, BaseModelSpec]) -> None:
    """`require_model_call` for a request's model name, before anything is looked up."""
    name = requested.strip()
    fine_tuned = bool(name) and name not in base_models
    require_model_call(access, str(qualified_name(name, "model")) if fine_tuned else name,
                       fine_tuned)


def model_target(tx: Tx, account_id: str, name: str,
                 base_models: Mapping[str, BaseModelSpec]) -> ModelTarget:
    """A base model, or a registered fine-tuned model that is ready and whose base model is
    still served (the caller's USAGE on it is checked before this is called)."""
    name = (name or "").strip()
    if not name:
        raise InvalidArgument("model is required")
    if name in base_models:
        return ModelTarget(name, name, None)
    canonical = str(qualified_name(name, "model"))
    model = tx.models.get(account_id, canonical)
    if model is None:
        raise NotFound(f"model {canonical} does not exist")
    if not model.ready:
        raise FailedPrecondition(f"model {canonical} is being evaluated by job "
                                 f"{model.job_id} and is not registered yet")
    if model.base_model not in base_models:
        raise FailedPrecondition(f"model {canonical} needs base model {model.base_model}, "
                                 "which this deployment no longer serves")
    return ModelTarget(canonical, model.base_model, model)


class Evaluations:
    def __init__(self, store: Store, catalog: DataCatalog, artifacts: ArtifactStore,
                 base_models: Mapping[str, BaseModelSpec], authorizer: Authorizer,
                 events: ChangeNotifier, *, inference_configured: bool, max_rows: int = 5000,
                 tokenizer_for: Callable[[BaseModelSpec], Any] | None = None,
                 clock: Clock = utc_now, on_created: Callable[[], None] = lambda: None,
                 on_cancelled: Callable[[str], None] = lambda evaluation_id: None):
        self._store = store
        self._tokenizer_for = tokenizer_for   # a base model's tokenizer (sizes max_tokens)
        self._catalog = catalog
        self._artifacts = artifacts
        self._base_models = base_models
        self._authorizer = authorizer
        self._events = events
        self._inference_configured = inference_configured
        self._max_rows = max_rows
        self._clock = clock
        # The runner's: a new evaluation to start, or one to stop now.
        self._on_created = on_created
        self._on_cancelled = on_cancelled

    def _require_inference(self) -> None:
        if not self._inference_configured:
            raise FailedPrecondition(NO_INFERENCE)

    # -- EvaluateModel --------------------------------------------------------------------

    def create(self, principal: Principal, request: EvaluateModel) -> Evaluation:
        """Validate, run the query (with the caller's privileges as they are now) into the
        evaluation's data file, record it PENDING and hand it to the runner. Needs FINETUNE and
        USAGE on a fine-tuned model, checked before the model is looked up."""
        account = principal.account_id
        access = self._authorizer.access(principal)
        called_model(access, request.model, self._base_models)
        request_id = request.request_id.strip() or None

        def find(tx: Tx, request_id: str) -> Evaluation | None:
            return tx.evaluations.by_request_id(account, request_id)

        existing = earlier(self._store, request_id, find)
        if existing is not None:
            return self.get(principal, existing.id)
        self._require_inference()
        task = resolve_task(request.task)
        generation = resolve_generation(request.generation, task)
        if not request.query.strip():
            raise InvalidArgument("query is required")
        target = self._store.run(lambda tx: model_target(tx, account, request.model,
                                                             self._base_models))
        evaluation_id = new_evaluation_id()
        data_uri = evaluation_uri(self._artifacts, evaluation_id, DATA_FILE)
        snapshot = snapshot_rows(self._catalog, self._artifacts, account, request.query,
                                 data_uri, self._max_rows, access)
        rows = snapshot.rows
        generation = self._fit(generation, request.generation, task, snapshot.references,
                               self._base_models[target.base_model])
        evaluation = Evaluation(
            id=evaluation_id, account_id=account, user_id=principal.user_id,
            model=target.name, base_model=target.base_model, task=task,
            query=request.query, generation=generation, created_on=self._clock(),
            model_version=target.model.version if target.model else 0,
            adapter_id=target.model.id if target.model else 0, rows=rows,
            request_id=request_id, data_uri=data_uri)
        added = record_once(
            lambda: self._store.run(lambda tx: tx.evaluations.add(evaluation)),
            lambda: self._artifacts.delete(evaluation_uri(self._artifacts, evaluation_id)),
            request_id, find, self._store)
        if added.id != evaluation_id:   # a concurrent retry with the same request id won
            return self.get(principal, added.id)
        log.info("evaluation %s of %s created (%d rows, %s)", added.id, added.model, rows,
                 task.value)
        self._on_created()
        return added

    # -- a fine-tuning job's evaluation ---------------------------------------------------

    def prepare_job_evaluation(self, account_id: str, request: JobEvaluationRequest,
                               scope: ReadScope, data_uri: str,
                               base: BaseModelSpec) -> JobEvaluation:
        """CREATE's synchronous checks of FineTuningOptions.evaluation; its query's rows are
        frozen into `data_uri` (removed again if CREATE fails later: it is in the job's
        folder)."""
        self._require_inference()
        task = resolve_task(request.task)
        generation = resolve_generation(request.generation, task)
        minimum = None if request.min_improvement is None else \
            check_min_improvement(request.min_improvement)
        snapshot = snapshot_rows(self._catalog, self._artifacts, account_id, request.query,
                                 data_uri, self._max_rows, scope, what="evaluation query")
        generation = self._fit(generation, request.generation, task, snapshot.references, base)
        return JobEvaluation(query=request.query, task=task, generation=generation,
                             min_improvement=minimum, data_uri=data_uri, rows=snapshot.rows)

    def _fit(self, generation: Generation, requested: RequestedGeneration,
             task: EvaluationTask, references: Iterable[str], base: BaseModelSpec) -> Generation:
        """max_tokens from the longest reference in the base model's tokens (as the model
        writes it: the text, then end of turn), unless the caller set it."""
        if requested.max_tokens or self._tokenizer_for is None:
            return generation
        try:
            tokenizer = self._tokenizer_for(base)
        except (FinetuneError, OSError, ValueError) as exc:   # it runs with the task's default
            log.warning("max_tokens stays %d (the references' lengths are unknown): %s",
                        generation.max_tokens, exc)
            return generation
        longest = max((len(completion_token_ids(tokenizer, r)) for r in references), default=0)
        return fit_max_tokens(generation, requested, task, longest)

    # -- GetEvaluation / ListEvaluations --------------------------------------------------

    def get(self, principal: Principal, evaluation_id: str) -> Evaluation:
        return self._store.run(lambda tx: _visible(tx, principal, evaluation_id))

    def list(self, principal: Principal, model: str = "", page_size: int = 0,
             page_token: str = "") -> EvaluationPage:
        """A model's evaluations (USAGE on it, as GetModel) or, without a model, every
        evaluation of the account the caller may see; newest first."""
        size = paging.page_size(page_size)
        after = paging.decode_created(page_token) if page_token else None
        model = model.strip()

        def work(tx: Tx) -> list[Evaluation]:
            access = load_access(tx, principal.account_id, principal.user_id)
            access.require(Privilege.FINETUNE, SecurableObject.account())
            name = None
            if model:
                name = model if model in self._base_models else \
                    str(qualified_name(model, "model"))
                if name not in self._base_models:
                    access.require(Privilege.USAGE, SecurableObject.model(name))
            found: list[Evaluation] = []
            position = after
            while len(found) <= size:
                batch = tx.evaluations.page(principal.account_id, size + 1, name, position)
                found += [e for e in batch if name is not None or _may_see(tx, access, e)]
                if len(batch) <= size:
                    break
                position = (batch[-1].created_on, batch[-1].id)
            return found

        found = self._store.run(work)
        token = ""
        if len(found) > size:
            found = found[:size]
            token = paging.encode_created(found[-1].created_on, found[-1].id)
        return EvaluationPage(found, token)

    def for_model(self, model: RegisteredModel,
                  limit: int = MODEL_EVALUATIONS_SHOWN) -> builtins.list[Evaluation]:
        """Model.evaluations: this version's (the caller's USAGE on it is already checked;
        ListEvaluations by name shows earlier versions' too)."""
        return self._store.run(lambda tx: tx.evaluations.page(
            model.account_id, limit, model.name, adapter_id=model.id))

    def for_job(self, job_id: str) -> dict[str, Evaluation]:
        """A job's evaluations by role (for the job's DESCRIBE, already authorized)."""
        return {e.role: e for e in self._store.run(lambda tx: tx.evaluations.for_job(job_id))
                if e.role}

    # -- CancelEvaluation -----------------------------------------------------------------

    def cancel(self, principal: Principal, evaluation_id: str) -> Evaluation:
        def work(tx: Tx) -> Evaluation:
            evaluation = _visible(tx, principal, evaluation_id)
            evaluation.cancel(self._clock(), f"cancelled by {principal.user_name}")
            return tx.evaluations.save(evaluation)

        cancelled = self._store.run(work)
        self._events.publish(cancelled.id)
        self._on_cancelled(cancelled.id)
        log.info("evaluation %s cancelled", cancelled.id)
        return cancelled

    # -- GetEvaluationResults -------------------------------------------------------------

    def result_chunks(self, principal: Principal, evaluation_id: str,
                      file: str = "") -> Generator[bytes, None, None]:
        name = file.strip() or METRICS_FILE
        if name not in RESULT_FILES:
            raise InvalidArgument(f"file must be one of {', '.join(RESULT_FILES)} (got {file!r})")
        evaluation = self.get(principal, evaluation_id)
        if evaluation.status is not EvaluationStatus.SUCCEEDED:
            raise FailedPrecondition(f"evaluation {evaluation.id} is "
                                     f"{evaluation.status.value}: results exist once it has "
                                     "SUCCEEDED")
        return result_chunks(self._artifacts, evaluation.id, name)


def job_evaluations(job: Job, spec: JobEvaluation, candidate: RegisteredModel,
                    now: datetime) -> list[Evaluation]:
    """The base model's and the candidate's evaluations a job runs once training is done, on
    the rows frozen at CREATE, for the job's creator."""
    def one(role: str, model: str, version: int, adapter_id: int) -> Evaluation:
        return Evaluation(
            id=new_evaluation_id(), account_id=job.account_id, user_id=job.user_id,
            model=model, base_model=job.base_model, task=spec.task, query=spec.query,
            generation=spec.generation, created_on=now, model_version=version,
            adapter_id=adapter_id, rows=spec.rows, job_id=job.id, role=role,
            data_uri=spec.data_uri)

    return [one(EvaluationRole.BASE, job.base_model, 0, 0),
            one(EvaluationRole.TUNED, candidate.name, candidate.version, candidate.id)]


def _may_see(tx: Tx, access: Access, evaluation: Evaluation) -> bool:
    """Whoever may see the model (USAGE, as GetModel), or the job that ran it."""
    if evaluation.job_id:
        job = tx.jobs.get(evaluation.job_id, evaluation.account_id)
        if job is not None and access.owns(job.owner_role_id):
            return True
    if evaluation.adapter_id:
        return access.allows(Privilege.USAGE, SecurableObject.model(evaluation.model))
    return True   # a base model: every FINETUNE_USER may use it


def _visible(tx: Tx, principal: Principal, evaluation_id: str) -> Evaluation:
    """The evaluation if the caller may see it: FINETUNE_USER first (PERMISSION_DENIED
    whether or not it exists), then its existence in the caller's account, then the model."""
    access = load_access(tx, principal.account_id, principal.user_id)
    access.require(Privilege.FINETUNE, SecurableObject.account())
    evaluation = tx.evaluations.get(evaluation_id, principal.account_id)
    if evaluation is None:
        raise NotFound(f"evaluation {evaluation_id} does not exist")
    if not _may_see(tx, access, evaluation):
        access.require(Privilege.USAGE, SecurableObject.model(evaluation.model))
    return evaluation
