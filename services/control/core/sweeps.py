"""Hyperparameter sweeps: CreateSweep validates the whole search space and records the sweep;
`SweepRunner` (core/sweep_runner.py) starts its trials as ordinary fine-tuning jobs and
registers the best. Describe, list and cancel are here.

Synchronous (database, DuckDB, artifact store): the servicer calls these in worker threads.

Privileges are CREATE's: checked here for the whole space (FINETUNE, CREATE MODEL on the
target schema, OWNERSHIP of from_model, USAGE on what the queries read, by running them for
the estimate), and again for every trial, which goes through FineTuning.create on the
creator's behalf.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Callable, Mapping

from services.common.base_models import BaseModelSpec
from services.common.errors import (
    FinetuneError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from services.control.core import paging
from services.control.core.authorization import Authorizer, load_access
from services.control.core.clock import Clock, utc_now
from services.control.core.evaluations import JobEvaluationRequest
from services.control.core.idempotency import earlier, record_once
from services.control.core.jobs import CreateJob, FineTuning
from services.control.core.lifecycle import check_model_name_free
from services.control.core.notifier import ChangeNotifier
from services.control.domain.evaluations import (
    PRIMARY_METRIC,
    EvaluationRole,
    EvaluationTask,
    RequestedGeneration,
    resolve_task,
)
from services.control.domain.jobs import Job, JobStatus
from services.control.domain.names import qualified_name
from services.control.domain.options import (
    RequestedOptions,
    TaskType,
    WorkerLimits,
    resolve_options,
)
from services.control.domain.prices import PriceTable
from services.control.domain.principals import Principal
from services.control.domain.privileges import Privilege, SecurableObject
from services.control.domain.sweeps import (
    Budget,
    SearchSpace,
    Sweep,
    SweepStatus,
    Trial,
    TrialOutcome,
    TrialState,
    candidate_name,
    effective_budget,
    new_sweep_id,
    plan_trials,
    resolve_objective,
    trial_options,
)
from services.control.store.database import Store, Tx

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CreateSweep:
    model: str
    base_model: str
    training_query: str
    space: SearchSpace
    validation_query: str = ""
    options: RequestedOptions = RequestedOptions()
    evaluation: JobEvaluationRequest | None = None
    budget: Budget = Budget()
    objective: str = ""
    delete_candidates: bool = False
    request_id: str = ""


@dataclass(frozen=True)
class TrialView:
    trial: Trial
    job: Job | None
    objective: float | None
    model: str                     # the trial's live model ("" when none)

    @property
    def ended(self) -> bool:
        if self.trial.state is not TrialState.LAUNCHED:
            return self.trial.state is not TrialState.PLANNED
        return self.job is None or self.job.terminal

    def outcome(self) -> TrialOutcome:
        job = self.job
        return TrialOutcome(self.trial.index, self.ended,
                            job is not None and job.status is JobStatus.SUCCESS,
                            job.trained_tokens if job is not None else 0, self.objective)


@dataclass(frozen=True)
class SweepView:
    """A sweep with what its trial jobs say now: progress, usage, each trial's objective."""

    sweep: Sweep
    trials: list[TrialView]
    credits: float

    @property
    def trained_tokens(self) -> int:
        return sum(t.job.trained_tokens for t in self.trials if t.job is not None)

    @property
    def progress(self) -> float:
        if self.sweep.status is SweepStatus.SUCCEEDED:
            return 1.0
        return self.sweep.progress(sum(t.ended for t in self.trials))

    def outcomes(self) -> dict[int, TrialOutcome]:
        return {t.trial.index: t.outcome() for t in self.trials
                if t.trial.state is TrialState.LAUNCHED}


@dataclass(frozen=True)
class SweepPage:
    sweeps: list[SweepView]
    next_page_token: str


# -- what a sweep stores of the shared options and the evaluation ---------------------------

def options_to_dict(options: RequestedOptions) -> dict:
    d = asdict(options)
    d["target_modules"] = list(options.target_modules)
    d["task_type"] = options.task_type.value if options.task_type else None
    return d


def options_from_dict(d: dict) -> RequestedOptions:
    return RequestedOptions(**{**d, "target_modules": tuple(d.get("target_modules", ())),
                               "task_type": TaskType(d["task_type"]) if d.get("task_type")
                               else None})


def evaluation_to_dict(evaluation: JobEvaluationRequest | None) -> dict | None:
    if evaluation is None:
        return None
    return {"query": evaluation.query,
            "task": evaluation.task.value if evaluation.task else None,
            "generation": {**asdict(evaluation.generation),
                           "stop": list(evaluation.generation.stop)},
            "min_improvement": evaluation.min_improvement}


def evaluation_from_dict(d: dict | None) -> JobEvaluationRequest | None:
    if d is None:
        return None
    generation = d.get("generation") or {}
    return JobEvaluationRequest(
        query=d["query"], task=EvaluationTask(d["task"]) if d.get("task") else None,
        generation=RequestedGeneration(**{**generation,
                                          "stop": tuple(generation.get("stop", ()))}),
        min_improvement=d.get("min_improvement"))


def trial_request(sweep: Sweep, trial: Trial) -> CreateJob:
    """The fine-tuning job of one trial: its candidate name, the shared options with its
    values, and a request id that makes a retry (after a restart) find the job it created."""
    return CreateJob(
        model=candidate_name(sweep.model, trial.index), base_model=sweep.base_model,
        training_query=sweep.training_query, validation_query=sweep.validation_query,
        options=trial_options(options_from_dict(sweep.options), trial.values),
        request_id=f"{sweep.id}/trial/{trial.index}",
        evaluation=evaluation_from_dict(sweep.evaluation))


def creator(sweep: Sweep) -> Principal:
    """The user a sweep's trials are created for (their privileges are checked as of then)."""
    return Principal(account_id=sweep.account_id, user_id=sweep.user_id,
                     user_name=sweep.user_name, key_id="")


def sweep_view(tx: Tx, sweep: Sweep, prices: PriceTable) -> SweepView:
    trials = []
    credits = 0.0
    for trial in sweep.trials:
        job = tx.jobs.get(trial.job_id) if trial.job_id else None
        objective, model = None, ""
        if job is not None:
            objective = _objective(tx, job, sweep.objective)
            registered = tx.models.by_job(job.id)
            live = tx.models.get(sweep.account_id, registered.name) if registered else None
            model = live.name if live is not None and registered is not None and \
                live.id == registered.id else ""
            credits += prices.training_credits(job.base_model, job.trained_tokens)
        trials.append(TrialView(trial, job, objective, model))
    return SweepView(sweep, trials, credits)


def _objective(tx: Tx, job: Job, metric: str) -> float | None:
    if metric == "validation_loss":
        return job.validation_loss
    if metric == "training_loss":
        return job.training_loss
    for evaluation in tx.evaluations.for_job(job.id):
        if evaluation.role == EvaluationRole.TUNED and evaluation.terminal:
            value = evaluation.metrics.get(metric)
            return float(value) if value is not None and math.isfinite(value) else None
    return None


class Sweeps:
    def __init__(self, store: Store, fine_tuning: FineTuning, authorizer: Authorizer,
                 events: ChangeNotifier, base_models: Mapping[str, BaseModelSpec], *,
                 limits: WorkerLimits = WorkerLimits(), cluster_concurrency: int = 1,
                 prices: PriceTable = PriceTable(), clock: Clock = utc_now,
                 on_changed: Callable[[], None] = lambda: None):
        self._store = store
        self._fine_tuning = fine_tuning
        self._authorizer = authorizer
        self._events = events
        self._base_models = base_models
        self._limits = limits
        self._cluster_concurrency = cluster_concurrency
        self._prices = prices
        self._clock = clock
        self._on_changed = on_changed   # the runner's wake-up

    # -- CreateSweep ----------------------------------------------------------------------

    def create(self, principal: Principal, request: CreateSweep) -> SweepView:
        """Check everything a trial's CREATE would (for every trial's options), estimate the
        trained tokens against the budget, and record the sweep RUNNING for the runner."""
        self._authorizer.authorize_model_creation(principal, request.model)
        account = principal.account_id
        request_id = request.request_id.strip() or None

        def find(tx: Tx, request_id: str) -> Sweep | None:
            return tx.sweeps.by_request_id(account, request_id)

        existing = earlier(self._store, request_id, find)
        if existing is not None:
            return self.get(principal, existing.id)
        model = str(qualified_name(request.model, "model name"))
        request.budget.check()
        values = plan_trials(request.space, request.budget.max_jobs)
        budget = effective_budget(request.budget, len(values), self._cluster_concurrency)
        evaluation_metric = None
        if request.evaluation is not None:
            evaluation_metric = PRIMARY_METRIC[resolve_task(request.evaluation.task)]
        objective = resolve_objective(request.objective, evaluation_metric)
        # The estimate runs the queries as the caller (USAGE on what they read), checks
        # FINETUNE and from_model's OWNERSHIP, and counts the tokens of one epoch.
        estimate = self._fine_tuning.estimate(principal, CreateJob(
            model="", base_model=request.base_model, training_query=request.training_query,
            validation_query=request.validation_query, options=request.options))
        if objective.metric == "validation_loss" and estimate.validation is None:
            raise InvalidArgument(
                "the trials would have no validation rows to rank them by (the training query "
                "has too few rows to hold any out): give a validation query, or rank by "
                "training_loss or an evaluation metric")
        base = self._base_models[estimate.base_model]
        trials = [Trial(i, v, self._estimated_tokens(request.options, i, v, base,
                                                    estimate.training.rows,
                                                    estimate.tokens_per_epoch))
                  for i, v in enumerate(values, start=1)]
        total = sum(t.estimated_tokens for t in trials)
        if budget.max_trained_tokens and total > budget.max_trained_tokens:
            raise ResourceExhausted(
                f"the {len(trials)} trials would train about {total} tokens, over the budget "
                f"of {budget.max_trained_tokens}: raise budget.max_trained_tokens or search less")
        self._check_names_free(account, model, len(trials))
        owner_role_id = self._authorizer.owner_role(principal)
        sweep = Sweep(
            id=new_sweep_id(), account_id=account, user_id=principal.user_id,
            user_name=principal.user_name, model=model, base_model=estimate.base_model,
            training_query=request.training_query, validation_query=request.validation_query,
            options=options_to_dict(request.options), space=request.space, budget=budget,
            objective=objective.metric, minimize=objective.minimize, created_on=self._clock(),
            trials=trials, evaluation=evaluation_to_dict(request.evaluation),
            delete_candidates=request.delete_candidates, owner_role_id=owner_role_id,
            estimated_trained_tokens=total, request_id=request_id)

        def record() -> Sweep:
            def work(tx: Tx) -> Sweep:
                check_model_name_free(tx, account, model)   # a concurrent sweep or job
                return tx.sweeps.add(sweep)
            return self._store.run(work)

        added = record_once(record, lambda: None, request_id, find, self._store)
        log.info("sweep %s created for model %s: %d trials, about %d trained tokens", added.id,
                 model, len(trials), total)
        self._on_changed()
        return self.get(principal, added.id)

    def _estimated_tokens(self, options: RequestedOptions, index: int, values: dict,
                          base: BaseModelSpec, rows: int, tokens_per_epoch: int) -> int:
        """The trial's options checked as its CREATE will check them; its trained tokens are
        one epoch's times the epochs it would run (the automatic count fitted to `rows`)."""
        try:
            resolved = resolve_options(trial_options(options, values), base, self._limits)
        except InvalidArgument as exc:
            shown = ", ".join(f"{k}={v:g}" for k, v in values.items())
            raise InvalidArgument(f"trial {index} ({shown}): {exc.message}") from None
        return tokens_per_epoch * resolved.scheduled(rows, base).max_epochs

    def _check_names_free(self, account: str, model: str, trials: int) -> None:
        def work(tx: Tx) -> None:
            check_model_name_free(tx, account, model)
            for index in range(1, trials + 1):
                check_model_name_free(tx, account, candidate_name(model, index))
        self._store.run(work)

    # -- GetSweep / ListSweeps ------------------------------------------------------------

    def get(self, principal: Principal, sweep_id: str) -> SweepView:
        """For the sweep's owner role (the creator's default role) and ACCOUNTADMIN."""
        return self._store.run(lambda tx: sweep_view(tx, _visible(tx, principal, sweep_id),
                                                     self._prices))

    def list(self, principal: Principal, page_size: int = 0, page_token: str = "") -> SweepPage:
        """The sweeps the caller's roles own (every one for ACCOUNTADMIN), newest first."""
        size = paging.page_size(page_size)
        after = paging.decode_created(page_token) if page_token else None

        def work(tx: Tx) -> list[SweepView]:
            access = load_access(tx, principal.account_id, principal.user_id)
            access.require(Privilege.FINETUNE, SecurableObject.account())
            found = tx.sweeps.page(principal.account_id, size + 1,
                                   None if access.admin else access.role_ids, after)
            return [sweep_view(tx, s, self._prices) for s in found]

        views = self._store.run(work)
        token = ""
        if len(views) > size:
            views = views[:size]
            last = views[-1].sweep
            token = paging.encode_created(last.created_on, last.id)
        return SweepPage(views, token)

    # -- CancelSweep ----------------------------------------------------------------------

    def cancel(self, principal: Principal, sweep_id: str) -> SweepView:
        """The sweep ends CANCELLED (trials not started are skipped) and its live trial jobs
        are cancelled; the runner cancels any this misses (a restart in between) before it
        lets the sweep go."""
        def work(tx: Tx) -> Sweep:
            sweep = _visible(tx, principal, sweep_id)
            sweep.cancel(self._clock(), f"cancelled by {principal.user_name}")
            return tx.sweeps.save(sweep)

        sweep = self._store.run(work)
        self._events.publish(sweep.id)
        log.info("sweep %s cancelled", sweep.id)
        cancel_trial_jobs(self._store, self._fine_tuning, sweep, principal)
        self._on_changed()
        return self.get(principal, sweep.id)


def cancel_trial_jobs(store: Store, fine_tuning: FineTuning, sweep: Sweep,
                      principal: Principal) -> bool:
    """Cancel the sweep's trial jobs that are still live; True when none is left live."""
    job_ids = [t.job_id for t in sweep.trials if t.job_id]
    jobs = store.run(lambda tx: [tx.jobs.get(j) for j in job_ids])
    left = False
    for job in jobs:
        if job is None or job.terminal:
            continue
        try:
            fine_tuning.cancel(principal, job.id)
        except PermissionDenied as exc:   # the creator lost the job's role: nobody can stop it
            log.warning("sweep %s cannot cancel trial job %s: %s", sweep.id, job.id, exc)
        except FinetuneError as exc:       # it ended meanwhile (FAILED_PRECONDITION), or the DB
            log.info("sweep %s: trial job %s not cancelled: %s", sweep.id, job.id, exc)
            left = left or _still_live(store, job.id)
    return not left


def _still_live(store: Store, job_id: str) -> bool:
    job = store.run(lambda tx: tx.jobs.get(job_id))
    return job is not None and not job.terminal


def _visible(tx: Tx, principal: Principal, sweep_id: str) -> Sweep:
    """The sweep if the caller may see it; decided before existence, as for jobs."""
    sweep = tx.sweeps.get(sweep_id, principal.account_id)
    access = load_access(tx, principal.account_id, principal.user_id)
    if not access.owns(sweep.owner_role_id if sweep is not None else None):
        raise PermissionDenied(f"sweep {sweep_id}: only its owner role or ACCOUNTADMIN may "
                               "see it")
    if sweep is None:
        raise NotFound(f"sweep {sweep_id} does not exist")
    return sweep
