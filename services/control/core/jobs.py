"""FINETUNE('CREATE' | 'SHOW' | 'DESCRIBE' | 'CANCEL') and the trainer's progress reports.

Synchronous (database, DuckDB, artifact store and the cluster client all block): the servicers
call these methods in worker threads.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Callable, Mapping

from sqlalchemy.exc import IntegrityError

from services.common.artifacts import ArtifactStore
from services.common.base_models import BaseModelSpec
from services.common.errors import (AlreadyExists, FailedPrecondition, InvalidArgument,
                                    NotFound, PermissionDenied)
from services.control.core import paging
from services.control.core.authorization import Authorizer, load_access
from services.control.core.clock import Clock, utc_now
from services.control.core.events import JobEvents
from services.control.core.usage import record_fine_tuning_usage
from services.control.data.catalog import DataCatalog
from services.control.data.snapshots import snapshot_query
from services.control.dispatch.protocol import DispatchError, JobDispatcher
from services.control.domain.jobs import Job, JobStatus, Progress, new_job_id
from services.control.domain.names import qualified_name
from services.control.domain.models import RegisteredModel
from services.control.domain.options import (RequestedOptions, TrainingOptions, WorkerLimits,
                                             resolve_options)
from services.control.domain.prices import PriceTable
from services.control.domain.principals import Principal
from services.control.domain.spec import JobLayout, trainer_spec
from services.control.store.database import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CreateJob:
    model: str
    base_model: str
    training_query: str
    validation_query: str = ""
    options: RequestedOptions = RequestedOptions()
    request_id: str = ""


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


class FineTuning:
    def __init__(self, store: Store, catalog: DataCatalog, artifacts: ArtifactStore,
                 dispatcher: JobDispatcher, events: JobEvents,
                 base_models: Mapping[str, BaseModelSpec],
                 provision: Callable[[BaseModelSpec], Path],
                 control_address: Callable[[], str], submit_env: Mapping[str, str],
                 limits: WorkerLimits = WorkerLimits(), clock: Clock = utc_now, *,
                 authorizer: Authorizer, prices: PriceTable = PriceTable()):
        self._store = store
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

        The caller's FINETUNE and CREATE MODEL privileges are the servicer's to check; the
        queries run with the caller's privileges as they are now (USAGE on what they read),
        and the caller's default role will own the job and its model."""
        account = principal.account_id
        request_id = request.request_id.strip() or None
        if request_id:
            existing = self._store.run(lambda tx: tx.jobs.by_request_id(account, request_id))
            if existing is not None:  # a retry; another role's request id tells it nothing
                return self.get(principal, existing.id)
        owner_role_id = self._authorizer.owner_role(principal)
        plan = self._plan(account, request)
        layout = JobLayout(self._artifacts.root, new_job_id())
        try:
            job = self._record(principal, request, request_id, plan, layout, owner_role_id)
        except IntegrityError:
            self._artifacts.delete(layout.uri())
            return self._lost_race(principal, request_id, plan.model_name)
        except BaseException:
            self._artifacts.delete(layout.uri())
            raise
        log.info("job %s created for model %s (%d training rows)", job.id, plan.model_name,
                 job.training_rows)
        self._submit(job)
        return self.get(principal, job.id)

    def _plan(self, account: str, request: CreateJob) -> _Plan:
        """Every check that needs no data: names, base model, options, the name being free."""
        model_name = str(qualified_name(request.model, "model name"))
        if not request.training_query.strip():
            raise InvalidArgument("training_query is required")
        parent = self._parent_model(account, request.options.from_model)
        base_name = request.base_model.strip() or (parent.base_model if parent else "")
        if not base_name:
            raise InvalidArgument("base_model is required")
        base = self._base_models.get(base_name)
        if base is None:
            raise InvalidArgument(f"unknown base model {base_name!r} (available: "
                                  f"{', '.join(sorted(self._base_models)) or 'none'})")
        if parent is not None and parent.base_model != base.name:
            raise InvalidArgument(f"from_model {parent.name} was trained on {parent.base_model}, "
                                  f"not {base.name}")
        options = resolve_options(
            replace(request.options, from_model=parent.name if parent else ""), base,
            self._limits)
        self._check_name_free(account, model_name)
        try:
            base_path = str(self._provision(base))
        except OSError as exc:
            raise FailedPrecondition(f"base model {base.name} is not available: {exc}") from None
        return _Plan(model_name, base, base_path, options, parent)

    def _record(self, principal: Principal, request: CreateJob, request_id: str | None,
                plan: _Plan, layout: JobLayout, owner_role_id: str) -> Job:
        """Snapshot the queries, write spec.json, insert the job PENDING."""
        account = principal.account_id
        options = plan.options
        # Read now, when the queries run: a grant revoked since the request began counts.
        scope = self._authorizer.access(principal)

        def snapshot(sql: str, uri: str, what: str):
            return snapshot_query(self._catalog, self._artifacts, account, sql,
                                  options.task_type, uri, plan.base.rows_per_epoch,
                                  options.max_epochs, what, scope)

        training = snapshot(request.training_query, layout.training_data_uri, "training query")
        validation = None
        if request.validation_query.strip():
            validation = snapshot(request.validation_query, layout.validation_data_uri,
                                  "validation query")
        spec = trainer_spec(layout, plan.base, plan.base_path, options, validation is not None,
                            plan.parent.adapter_uri if plan.parent else None,
                            self._control_address())
        self._artifacts.write_bytes(layout.spec_uri, json.dumps(spec, indent=2).encode())
        job = Job(
            id=layout.job_id, account_id=account, user_id=principal.user_id,
            model_name=plan.model_name, base_model=plan.base.name,
            task_type=options.task_type.value, training_query=request.training_query,
            validation_query=request.validation_query.strip() or None,
            options=options.to_dict(), created_on=self._clock(), request_id=request_id,
            spec_uri=layout.spec_uri, output_uri=layout.output_uri,
            training_rows=training.rows, validation_rows=validation.rows if validation else 0,
            owner_role_id=owner_role_id)
        return self._store.run(lambda tx: tx.jobs.add(job))

    def _parent_model(self, account: str, from_model: str) -> RegisteredModel | None:
        if not from_model.strip():
            return None
        name = str(qualified_name(from_model, "from_model"))
        parent = self._store.run(lambda tx: tx.models.get(account, name))
        if parent is None:
            raise NotFound(f"model {name} (from_model) does not exist")
        return parent

    def _check_name_free(self, account: str, model_name: str) -> None:
        def check(tx):
            if tx.models.get(account, model_name) is not None:
                raise AlreadyExists(f"model {model_name} already exists")
            active = tx.jobs.active_with_model_name(account, model_name)
            if active is not None:
                raise AlreadyExists(f"job {active.id} is already training model {model_name}")
        self._store.run(check)

    def _lost_race(self, principal: Principal, request_id: str | None,
                   model_name: str) -> Job:
        """A concurrent create won a unique constraint: same request id, or same model name."""
        account = principal.account_id
        if request_id:
            existing = self._store.run(lambda tx: tx.jobs.by_request_id(account, request_id))
            if existing is not None:
                return self.get(principal, existing.id)
        self._check_name_free(account, model_name)
        raise AlreadyExists(f"model {model_name} is already being created")

    def _submit(self, job: Job) -> None:
        """Hand the job to the cluster. A failure leaves it PENDING: the reconciler retries."""
        try:
            self._dispatcher.submit(job.id, job.spec_uri, self._env)
            attempt_failed = False
        except DispatchError as exc:
            log.warning("submitting job %s failed, the reconciler will retry: %s", job.id, exc)
            attempt_failed = True

        def count(tx):
            current = tx.jobs.get(job.id)
            if current is not None and not current.terminal:
                current.submit_attempts += 1
                tx.jobs.save(current)
        self._store.run(count)
        if attempt_failed:
            self._events.publish(job.id)

    # -- SHOW / DESCRIBE ------------------------------------------------------------------

    def get(self, principal: Principal, job_id: str) -> Job:
        """DESCRIBE: for the job's owner role (the creator's) and ACCOUNTADMIN."""
        return self._store.run(lambda tx: _visible_job(tx, principal, job_id))

    def list(self, principal: Principal, page_size: int = 0, page_token: str = "") -> JobPage:
        """SHOW: the account's jobs the caller may DESCRIBE (all of them for ACCOUNTADMIN)."""
        size = paging.page_size(page_size)
        after = _decode_job_token(page_token) if page_token else None

        def work(tx):
            access = load_access(tx, principal.account_id, principal.user_id)
            return tx.jobs.page(principal.account_id, size + 1, after,
                                None if access.admin else access.role_ids)
        jobs = self._store.run(work)
        token = ""
        if len(jobs) > size:
            jobs = jobs[:size]
            token = paging.encode_token([jobs[-1].created_on.isoformat(), jobs[-1].id])
        return JobPage(jobs, token)

    # -- CANCEL ---------------------------------------------------------------------------

    def cancel(self, principal: Principal, job_id: str) -> Job:
        def work(tx):
            job = _visible_job(tx, principal, job_id)
            job.cancel(self._clock())
            saved = tx.jobs.save(job)
            record_fine_tuning_usage(tx, saved, self._prices)
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

    def report_progress(self, job_id: str, progress: Progress) -> bool:
        """Record a progress report; True when the trainer should stop (job cancelled)."""
        def work(tx) -> tuple[bool, bool]:
            job = tx.jobs.get(job_id)
            if job is None:
                raise NotFound(f"job {job_id} does not exist")
            if job.terminal:
                return job.status is JobStatus.CANCELLED, False
            job.report(progress, self._clock())
            tx.jobs.save(job)
            return False, True

        cancelled, changed = self._store.run(work)
        if changed:
            self._events.publish(job_id)
        return cancelled


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


def _decode_job_token(token: str) -> tuple[datetime, str]:
    position = paging.decode_token(token)
    try:
        created_on, job_id = position
        return datetime.fromisoformat(created_on), str(job_id)
    except (ValueError, TypeError):
        raise InvalidArgument("invalid page_token") from None
