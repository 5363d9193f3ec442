"""FINETUNE('CREATE' | 'SHOW' | 'DESCRIBE' | 'CANCEL') and the trainer's progress reports.

Synchronous (database, DuckDB, artifact store and the cluster client all block): the servicers
call these methods in worker threads.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from sqlalchemy.exc import IntegrityError

from services.common.artifacts import ArtifactStore
from services.common.base_models import BaseModelSpec
from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from services.common.formatting import TokenLimits, row_tokens
from services.control.core import paging
from services.control.core.authorization import Authorizer, load_access
from services.control.core.clock import Clock, utc_now
from services.control.core.evaluations import NO_INFERENCE, Evaluations, JobEvaluationRequest
from services.control.core.idempotency import earlier, record_once
from services.control.core.lifecycle import check_model_name_free, end_job
from services.control.core.models import base_model_named
from services.control.core.notifier import ChangeNotifier
from services.control.data.catalog import DataCatalog
from services.control.data.snapshots import SnapshotRequest, Snapshots, take_snapshots
from services.control.data.tokenizers import Tokenizers
from services.control.dispatch.protocol import DispatchError, JobDispatcher
from services.control.domain.estimates import JobEstimate
from services.control.domain.events import (
    EventLevel,
    EventType,
    JobEvent,
    NewEvent,
    data_events,
    progress_event,
    transition_events,
)
from services.control.domain.jobs import Job, JobProgress, JobStatus, new_job_id
from services.control.domain.models import RegisteredModel
from services.control.domain.names import qualified_name
from services.control.domain.options import (
    RequestedOptions,
    TrainingOptions,
    WorkerLimits,
    resolve_options,
)
from services.control.domain.prices import PriceTable
from services.control.domain.principals import Principal
from services.control.domain.privileges import Privilege, SecurableObject
from services.control.domain.spec import JobLayout, trainer_spec
from services.control.store.database import Store, Tx

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CreateJob:
    model: str
    base_model: str
    training_query: str
    validation_query: str = ""
    options: RequestedOptions = RequestedOptions()
    request_id: str = ""
    evaluation: JobEvaluationRequest | None = None   # evaluate base and tuned model at the end


@dataclass(frozen=True)
class _Plan:
    model_name: str
    base: BaseModelSpec
    base_path: str
    options: TrainingOptions
    parent: RegisteredModel | None


@dataclass(frozen=True)
class JobPage:
    jobs: list[Job]
    next_page_token: str
    # Listed jobs the caller may not DESCRIBE (another role's): shown by their id, status,
    # base model and times only, as Cortex's SHOW shows every job of the account.
    summaries: frozenset[str] = frozenset()


@dataclass(frozen=True)
class EventPage:
    events: list[JobEvent]
    next_page_token: str


# (base model, its folder) -> the base model's tokenizer (services.control.data.tokenizers)
TokenizerSource = Callable[[BaseModelSpec, str], Any]


class FineTuning:
    def __init__(self, store: Store, catalog: DataCatalog, artifacts: ArtifactStore,
                 dispatcher: JobDispatcher, events: ChangeNotifier,
                 base_models: Mapping[str, BaseModelSpec],
                 provision: Callable[[BaseModelSpec], Path],
                 control_address: Callable[[], str], submit_env: Mapping[str, str],
                 limits: WorkerLimits = WorkerLimits(), clock: Clock = utc_now, *,
                 authorizer: Authorizer, prices: PriceTable = PriceTable(),
                 tokenizers: TokenizerSource | None = None, scratch_dir: Path | None = None,
                 evaluations: Evaluations | None = None):
        self._store = store
        self._evaluations = evaluations
        self._tokenizers = tokenizers or Tokenizers()
        # Estimates run their queries into a local scratch folder, deleted afterwards.
        self._scratch_dir = scratch_dir
        self._authorizer = authorizer
        self._prices = prices
        self._catalog = catalog
        self._artifacts = artifacts
        self._dispatcher = dispatcher
        self._events = events
        self._base_models = base_models
        self._provision = provision
        self._control_address = control_address
        self._env = dict(submit_env)
        self._limits = limits
        self._clock = clock

    # -- CREATE ---------------------------------------------------------------------------

    def create(self, principal: Principal, request: CreateJob) -> Job:
        """Validate, snapshot the data, write the spec, record the job, submit it.

        Needs FINETUNE, CREATE MODEL on the target schema and OWNERSHIP of from_model; the
        queries run with the caller's privileges as they are now (USAGE on what they read),
        and the caller's default role will own the job and its model."""
        self._authorize_create(principal, request)
        account = principal.account_id
        request_id = request.request_id.strip() or None

        def find(tx: Tx, request_id: str) -> Job | None:
            return tx.jobs.by_request_id(account, request_id)

        existing = earlier(self._store, request_id, find)
        if existing is not None:  # a retry; another role's request id tells it nothing
            return self.get(principal, existing.id)
        owner_role_id = self._authorizer.owner_role(principal)
        plan = self._plan(account, request)
        layout = JobLayout(self._artifacts.root, new_job_id())
        try:
            job = record_once(
                lambda: self._record(principal, request, request_id, plan, layout,
                                     owner_role_id),
                lambda: self._artifacts.delete(layout.uri()), request_id, find, self._store)
        except IntegrityError:   # a concurrent create of the same model name won
            self._check_name_free(account, plan.model_name)
            raise AlreadyExists(f"model {plan.model_name} is already being created") from None
        if job.id != layout.job_id:   # a concurrent retry with the same request id won
            return self.get(principal, job.id)
        log.info("job %s created for model %s (%d training rows)", job.id, plan.model_name,
                 job.training_rows)
        self._submit(job)
        return self.get(principal, job.id)

    def _authorize_create(self, principal: Principal, request: CreateJob,
                          model_required: bool = True) -> None:
        """Before anything is looked up: FINETUNE on the account, CREATE MODEL on the target
        schema (when there is a target), OWNERSHIP of from_model; one read of the access."""
        if model_required or request.model.strip():
            access = self._authorizer.authorize_model_creation(principal, request.model)
        else:
            access = self._authorizer.authorize(principal, Privilege.FINETUNE,
                                                SecurableObject.account())
        if request.options.from_model.strip():
            access.require(Privilege.OWNERSHIP, SecurableObject.model(request.options.from_model))

    def _plan(self, account: str, request: CreateJob, model_required: bool = True) -> _Plan:
        """Every check that needs no data: names, base model, options, the name being free."""
        model_name = ""
        if model_required or request.model.strip():
            model_name = str(qualified_name(request.model, "model name"))
        if not request.training_query.strip():
            raise InvalidArgument("training_query is required")
        parent = self._parent_model(account, request.options.from_model)
        base = base_model_named(self._base_models, request.base_model.strip() or (
            parent.base_model if parent else ""))
        if parent is not None and parent.base_model != base.name:
            raise InvalidArgument(f"from_model {parent.name} was trained on {parent.base_model}, "
                                  f"not {base.name}")
        options = resolve_options(
            replace(request.options, from_model=parent.name if parent else ""), base,
            self._limits)
        if model_name:
            self._check_name_free(account, model_name)
        try:
            base_path = str(self._provision(base))
        except OSError as exc:
            raise FailedPrecondition(f"base model {base.name} is not available: {exc}") from None
        return _Plan(model_name, base, base_path, options, parent)

    def _snapshots(self, principal: Principal, request: CreateJob, plan: _Plan,
                   artifacts: ArtifactStore, layout: JobLayout) -> Snapshots:
        """Run the queries into `layout`'s data files, with their token counts."""
        # Read now, when the queries run: a grant revoked since the request began counts.
        scope = self._authorizer.access(principal)
        options = plan.options
        tokenizer = self._tokenizers(plan.base, plan.base_path)
        limits = TokenLimits.of(plan.base)

        def count(record: dict):
            return row_tokens(tokenizer, options.task_type.value, record, limits)

        return take_snapshots(self._catalog, artifacts, SnapshotRequest(
            account_id=principal.account_id, task_type=options.task_type,
            training_query=request.training_query, validation_query=request.validation_query,
            rows_per_epoch=plan.base.rows_per_epoch, epochs=options.max_epochs,
            seed=options.seed, training_uri=layout.training_data_uri,
            validation_uri=layout.validation_data_uri,
            scratch_uri=layout.uri("data", "query.jsonl")), count, scope)

    def _record(self, principal: Principal, request: CreateJob, request_id: str | None,
                plan: _Plan, layout: JobLayout, owner_role_id: str) -> Job:
        """Snapshot the queries, write spec.json, insert the job PENDING with its first
        events."""
        evaluation = self._job_evaluation(principal, request, layout, plan.base)
        snaps = self._snapshots(principal, request, plan, self._artifacts, layout)
        options = plan.options.scheduled(snaps.training.rows, plan.base)
        spec = trainer_spec(layout, plan.base, plan.base_path, options,
                            snaps.validation is not None,
                            plan.parent.adapter_uri if plan.parent else None,
                            self._control_address())
        self._artifacts.write_bytes(layout.spec_uri,
                                   json.dumps(spec.to_dict(), indent=2).encode())
        now = self._clock()
        job = Job(
            id=layout.job_id, account_id=principal.account_id, user_id=principal.user_id,
            model_name=plan.model_name, base_model=plan.base.name,
            task_type=options.task_type.value, training_query=request.training_query,
            validation_query=request.validation_query.strip() or None,
            options=options.to_dict(), created_on=now, request_id=request_id,
            spec_uri=layout.spec_uri, output_uri=layout.output_uri,
            owner_role_id=owner_role_id,
            evaluation=evaluation.to_dict() if evaluation is not None else None)
        job.record_snapshots(snaps.training, snaps.validation, snaps.source,
                             options.max_epochs)
        events = [NewEvent(
            EventType.CREATED,
            f"job created by {principal.user_name}: model {plan.model_name}, base model "
            f"{plan.base.name}, {options.task_type.value.lower()} task, {options.max_epochs} "
            f"epoch{'s' if options.max_epochs != 1 else ''}"
            + (f", continuing from {plan.parent.name}" if plan.parent else "")
            + f"; about {job.estimated_trained_tokens} trained tokens",
            metrics={"estimated_trained_tokens": float(job.estimated_trained_tokens)}),
            *data_events(plan.base, options.seed, snaps.query_rows, snaps.training,
                         snaps.validation, snaps.source)]

        def insert(tx: Tx) -> Job:
            added = tx.jobs.add(job)
            tx.events.add(added.id, events, now)
            return added
        return self._store.run(insert)

    def _job_evaluation(self, principal: Principal, request: CreateJob, layout: JobLayout,
                        base: BaseModelSpec):
        """FineTuningOptions.evaluation checked (task, options, the query's columns and rows,
        USAGE on what it reads) and its rows frozen in the job's folder; None without one."""
        if request.evaluation is None:
            return None
        if self._evaluations is None:
            raise FailedPrecondition(NO_INFERENCE)
        return self._evaluations.prepare_job_evaluation(
            principal.account_id, request.evaluation, self._authorizer.access(principal),
            layout.uri("data", "evaluation.jsonl"), base)

    # -- EstimateFineTuningJob ------------------------------------------------------------

    def estimate(self, principal: Principal, request: CreateJob) -> JobEstimate:
        """CREATE's checks and queries, with nothing written but a scratch folder that is gone
        when this returns. Needs what CREATE needs, except CREATE MODEL without a model name."""
        self._authorize_create(principal, request, model_required=False)
        plan = self._plan(principal.account_id, request, model_required=False)
        if self._scratch_dir is not None:
            self._scratch_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="estimate-", dir=self._scratch_dir) as folder:
            scratch = ArtifactStore(folder)
            snaps = self._snapshots(principal, request, plan, scratch,
                                    JobLayout(scratch.root, "estimate"))
        options = plan.options.scheduled(snaps.training.rows, plan.base)
        notes = tuple(e.message for e in data_events(plan.base, options.seed,
                                                     snaps.query_rows, snaps.training,
                                                     snaps.validation, snaps.source))
        return JobEstimate(
            base_model=plan.base.name, options=options,
            max_rows=plan.base.max_rows(options.max_epochs),
            training=replace(snaps.training, uri=""),
            validation=replace(snaps.validation, uri="") if snaps.validation else None,
            validation_source=snaps.source,
            credits_per_million_tokens=self._prices.price(plan.base.name).training,
            notes=notes)

    def _parent_model(self, account: str, from_model: str) -> RegisteredModel | None:
        if not from_model.strip():
            return None
        name = str(qualified_name(from_model, "from_model"))
        parent = self._store.run(lambda tx: tx.models.get(account, name))
        if parent is None:
            raise NotFound(f"model {name} (from_model) does not exist")
        return parent

    def _check_name_free(self, account: str, model_name: str) -> None:
        self._store.run(lambda tx: check_model_name_free(tx, account, model_name))

    def _submit(self, job: Job) -> None:
        """Hand the job to the cluster. A failure leaves it PENDING: the reconciler retries."""
        assert job.spec_uri is not None   # written before the job is stored
        error = None
        try:
            self._dispatcher.submit(job.id, job.spec_uri, self._env)
        except DispatchError as exc:
            log.warning("submitting job %s failed, the reconciler will retry: %s", job.id, exc)
            error = str(exc)

        def count(tx):
            current = tx.jobs.get(job.id)
            if current is not None and not current.terminal:
                current.submit_attempts += 1
                tx.jobs.save(current)
                tx.events.add(job.id, [submit_event(current.submit_attempts, error)],
                              self._clock())
        self._store.run(count)
        if error is not None:
            self._events.publish(job.id)

    # -- SHOW / DESCRIBE ------------------------------------------------------------------

    def get(self, principal: Principal, job_id: str) -> Job:
        """DESCRIBE: for the job's owner role (the creator's) and ACCOUNTADMIN."""
        return self._store.run(lambda tx: _visible_job(tx, principal, job_id))

    def list(self, principal: Principal, page_size: int = 0, page_token: str = "") -> JobPage:
        """SHOW: every job of the account for ACCOUNTADMIN and for holders of FINETUNE (as
        Cortex's SHOW), those of other roles as summaries (JobPage.summaries); for anyone
        else, the jobs its roles own."""
        size = paging.page_size(page_size)
        after = paging.decode_created(page_token) if page_token else None

        def work(tx):
            access = load_access(tx, principal.account_id, principal.user_id)
            everyone = access.allows(Privilege.FINETUNE, SecurableObject.account())
            return access, tx.jobs.page(principal.account_id, size + 1, after,
                                        None if everyone else access.role_ids)
        access, jobs = self._store.run(work)
        token = ""
        if len(jobs) > size:
            jobs = jobs[:size]
            token = paging.encode_created(jobs[-1].created_on, jobs[-1].id)
        return JobPage(jobs, token,
                       frozenset(j.id for j in jobs if not access.owns(j.owner_role_id)))

    def events(self, principal: Principal, job_id: str, page_size: int = 0,
               page_token: str = "", newest_first: bool = False) -> EventPage:
        """The job's event log, for whoever may DESCRIBE the job."""
        size = paging.page_size(page_size)
        after = None
        if page_token:
            position = paging.decode_token(page_token)
            if len(position) != 2 or position[1] != newest_first or \
                    not isinstance(position[0], int):
                raise InvalidArgument("invalid page_token (or newest_first changed)")
            after = position[0]

        def work(tx):
            _visible_job(tx, principal, job_id)
            return tx.events.page(job_id, size + 1, after, newest_first)
        events = self._store.run(work)
        token = ""
        if len(events) > size:
            events = events[:size]
            token = paging.encode_token([events[-1].id, newest_first])
        return EventPage(events, token)

    # -- CANCEL ---------------------------------------------------------------------------

    def cancel(self, principal: Principal, job_id: str) -> Job:
        def work(tx):
            job = _visible_job(tx, principal, job_id)
            before = job.status
            now = self._clock()
            job.cancel(now)
            saved = tx.jobs.save(job)
            end_job(tx, saved, self._prices, now, f"cancelled by {principal.user_name}")
            tx.events.add(job_id, transition_events(before, saved,
                                                    f"by {principal.user_name}"), now)
            return saved

        job = self._store.run(work)
        self._events.publish(job.id)
        log.info("job %s cancelled", job.id)
        try:
            self._dispatcher.stop(job.id)
        except DispatchError as exc:
            # The job is CANCELLED either way: the trainer learns it from its next progress report.
            log.warning("stopping job %s on the cluster failed: %s", job.id, exc)
        return job

    # -- progress from the trainer --------------------------------------------------------

    def report_progress(self, job_id: str, progress: JobProgress) -> bool:
        """Record a progress report; True when the trainer should stop (job cancelled)."""
        def work(tx) -> tuple[bool, bool]:
            job = tx.jobs.get(job_id)
            if job is None:
                raise NotFound(f"job {job_id} does not exist")
            if job.terminal:
                return job.status is JobStatus.CANCELLED, False
            before = job.status
            now = self._clock()
            job.report(progress, now)
            saved = tx.jobs.save(job)
            events = transition_events(before, saved)
            milestone = progress_event(progress, progress.message)
            if milestone is not None:
                events.append(milestone)
            if events:
                tx.events.add(job_id, events, now)
            return False, True

        cancelled, changed = self._store.run(work)
        if changed:
            self._events.publish(job_id)
        return cancelled


def submit_event(attempt: int, error: str | None) -> NewEvent:
    if error is None:
        return NewEvent(EventType.SUBMITTED, f"submitted to the cluster (attempt {attempt})",
                        metrics={"attempt": float(attempt)})
    return NewEvent(EventType.SUBMIT_FAILED,
                    f"the cluster did not accept the job (attempt {attempt}), retrying: "
                    f"{error}"[:2000], EventLevel.WARNING, metrics={"attempt": float(attempt)})


def _visible_job(tx, principal: Principal, job_id: str) -> Job:
    """The job if the caller may see it. Whether it may is decided first, so a caller that may
    not learns PERMISSION_DENIED whether or not the job exists (in any account)."""
    job = tx.jobs.get(job_id, principal.account_id)
    access = load_access(tx, principal.account_id, principal.user_id)
    if not access.owns(job.owner_role_id if job is not None else None):
        raise PermissionDenied(f"job {job_id}: only its owner role or ACCOUNTADMIN may see it")
    if job is None:
        raise NotFound(f"job {job_id} does not exist")
    return job
