"""The reconciler: brings every active job in line with what the cluster and the artifact store
say. It decides; the side effects of registering and ending a job are core.lifecycle's.

It reads only the cluster and the artifact store, never in-process state, so after a control
restart it simply picks the jobs up again. Every change is one transaction guarded by the job's
optimistic lock, so running it twice (or concurrently with a progress report) changes nothing
twice: a job becomes SUCCESS and gets its model row, its owner's OWNERSHIP grant and its
fine-tuning usage row exactly once (a job that ends otherwise gets its usage row once too).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Callable, Mapping

from sqlalchemy.exc import IntegrityError

from services.common.artifacts import ArtifactStore
from services.control.core.clock import Clock, utc_now
from services.control.core.evaluations import job_evaluations
from services.control.core.jobs import submit_event
from services.control.core.lifecycle import (
    end_job,
    promote_candidate,
    register_model,
    registered_event,
)
from services.control.core.notifier import ChangeNotifier
from services.control.dispatch.protocol import (
    ClusterJob,
    ClusterJobStatus,
    ClusterUnavailable,
    DispatchError,
    JobDispatcher,
)
from services.control.domain.evaluations import (
    Evaluation,
    EvaluationRole,
    EvaluationStatus,
    JobEvaluation,
    judge,
)
from services.control.domain.events import EventLevel, EventType, NewEvent, transition_events
from services.control.domain.jobs import TRAINED_PROGRESS, ErrorCode, Job, JobStatus, TrainingResult
from services.control.domain.models import ModelState
from services.control.domain.prices import PriceTable
from services.control.domain.spec import JobLayout
from services.control.store.database import Store, Tx

log = logging.getLogger(__name__)

MAX_ERROR_MESSAGE = 4000

# After the job has been saved, in the same transaction: more rows (the model) and events.
AfterSave = Callable[[Job, Tx], list[NewEvent]]


@dataclass(frozen=True)
class ReconcilerSettings:
    interval_s: float = 2.0
    max_submit_attempts: int = 5
    log_tail_lines: int = 40
    # A job CREATE has just recorded is being submitted by CREATE itself: not before this
    # long (or CREATE's attempt) does the reconciler submit it (a retry would be harmless, since
    # submissions are idempotent, but would count and log a second attempt).
    first_submit_grace_s: float = 30.0


class Reconciler:
    def __init__(self, store: Store, dispatcher: JobDispatcher, artifacts: ArtifactStore,
                 events: ChangeNotifier, submit_env: Mapping[str, str],
                 settings: ReconcilerSettings = ReconcilerSettings(), clock: Clock = utc_now,
                 prices: PriceTable = PriceTable(),
                 on_evaluations_created: Callable[[], None] = lambda: None):
        self._store = store
        self._prices = prices
        self._dispatcher = dispatcher
        self._artifacts = artifacts
        self._events = events
        self._env = dict(submit_env)
        self._settings = settings
        self._clock = clock
        # The evaluation runner's wake-up: a job's evaluations were created.
        self._on_evaluations_created = on_evaluations_created

    async def run(self) -> None:
        """Reconcile forever, every `interval_s` (the cluster client blocks: worker thread)."""
        while True:
            try:
                await asyncio.to_thread(self.reconcile_once)
            except Exception:  # noqa: BLE001 - one bad round must not stop reconciling
                log.exception("reconciliation round failed")
            await asyncio.sleep(self._settings.interval_s)

    def reconcile_once(self) -> int:
        """One pass over every active job; returns how many jobs changed."""
        changed = 0
        for job in self._store.run(lambda tx: tx.jobs.active()):
            try:
                cluster_job = self._dispatcher.status(job.id)
            except ClusterUnavailable as exc:
                log.warning("cannot reach the cluster, will retry: %s", exc)
                break
            except DispatchError as exc:
                log.warning("cannot get the state of job %s: %s", job.id, exc)
                continue
            if self.reconcile_job(job, cluster_job):
                changed += 1
        return changed

    def reconcile_job(self, job: Job, cluster_job: ClusterJob | None) -> bool:
        if cluster_job is None:
            if job.status is JobStatus.PENDING:
                if job.submit_attempts == 0 and (self._clock() - job.created_on).total_seconds() \
                        < self._settings.first_submit_grace_s:
                    return False
                return self._resubmit(job)
            return self._vanished(job)
        status = cluster_job.status
        if status is ClusterJobStatus.RUNNING:
            return self._update(job.id, lambda j, tx: j.start(self._clock())) \
                if job.status is JobStatus.PENDING else False
        if status is ClusterJobStatus.SUCCEEDED:
            return self._finish(job)
        if status is ClusterJobStatus.FAILED:
            return self._fail(job.id, ErrorCode.TRAINING_FAILED, self._failure_message(
                job.id, cluster_job.message))
        if status is ClusterJobStatus.STOPPED:
            return self._update(job.id, lambda j, tx: j.cancel(self._clock()),
                                detail="(the cluster stopped it)")
        return False  # PENDING on the cluster: nothing to do yet

    def _vanished(self, job: Job) -> bool:
        """A started job the cluster no longer knows (its run was deleted, or the cluster was
        replaced). Results it left are finalized; otherwise it failed."""
        if self._artifacts.exists(self._manifest_uri(job)):
            log.info("job %s vanished from the cluster after writing its results", job.id)
            return self._finish(job)
        return self._fail(job.id, ErrorCode.LOST,
                          "the cluster no longer knows this job and it left no results: its "
                          "Ray run vanished (the cluster was restarted or the run deleted); "
                          "create the job again")

    def _update(self, job_id: str, mutate: Callable[[Job, Tx], None],
                after_save: AfterSave | None = None, detail: str = "") -> bool:
        """Apply `mutate` to an active job in one transaction; False if it is terminal now.
        The job row is written first, so of two reconcilers racing on one job the second
        fails on the job's version before it writes anything else."""
        def work(tx: Tx) -> bool:
            job = tx.jobs.get(job_id)
            if job is None or job.terminal:
                return False
            before = job.status
            mutate(job, tx)
            saved = tx.jobs.save(job)
            events = transition_events(before, saved, detail)
            if after_save is not None:
                events += after_save(saved, tx)
            if saved.terminal:  # in the transaction that ends the job: exactly once
                end_job(tx, saved, self._prices, self._clock(), detail)
            if events:
                tx.events.add(job_id, events, self._clock())
            return True

        changed = self._store.run(work)
        if changed:
            self._events.publish(job_id)
        return changed

    def _fail(self, job_id: str, code: str, message: str) -> bool:
        message = message[-MAX_ERROR_MESSAGE:]
        changed = self._update(job_id, lambda j, tx: j.fail(code, message, self._clock()))
        if changed:
            log.info("job %s failed (%s): %s", job_id, code, message.splitlines()[0:1])
        return changed

    def _failure_message(self, job_id: str, message: str) -> str:
        tail = self._dispatcher.logs_tail(job_id, self._settings.log_tail_lines)
        return "\n".join(part for part in (message.strip(), tail.strip()) if part) or \
            "the training job failed"

    def _resubmit(self, job: Job) -> bool:
        """A PENDING job the cluster does not know: control stopped between recording it and
        submitting it, or the submission failed. Submit again (idempotent on the job id)."""
        assert job.spec_uri is not None   # written before the job is stored
        error = None
        try:
            self._dispatcher.submit(job.id, job.spec_uri, self._env)
        except DispatchError as exc:
            error = str(exc)
            log.warning("resubmitting job %s failed: %s", job.id, exc)

        def count(j: Job, tx: Tx) -> None:
            j.submit_attempts += 1
            if error is not None and j.submit_attempts >= self._settings.max_submit_attempts:
                j.fail(ErrorCode.SUBMIT_FAILED,
                       f"the cluster did not accept the job after {j.submit_attempts} "
                       f"attempts: {error}", self._clock())

        def log_attempt(saved: Job, tx: Tx) -> list[NewEvent]:
            return [] if saved.terminal else [submit_event(saved.submit_attempts, error)]

        return self._update(job.id, count, log_attempt)

    def _manifest_uri(self, job: Job) -> str:
        return self._output_uri(job).rstrip("/") + "/manifest.json"

    def _output_uri(self, job: Job) -> str:
        return job.output_uri or JobLayout(self._artifacts.root, job.id).output_uri

    def _finish(self, job: Job) -> bool:
        output_uri = self._output_uri(job)
        manifest_uri = self._manifest_uri(job)
        try:
            if not self._artifacts.exists(manifest_uri):
                return self._fail(job.id, ErrorCode.NO_MANIFEST,
                                  "the trainer finished without writing manifest.json")
            result = TrainingResult.from_manifest(
                json.loads(self._artifacts.read_bytes(manifest_uri)))
        except (ValueError, TypeError, OSError) as exc:
            return self._fail(job.id, ErrorCode.NO_MANIFEST, f"unreadable manifest.json: {exc}")
        if job.evaluation:
            return self._evaluate(job, result, output_uri)

        def register(j: Job, tx: Tx) -> list[NewEvent]:
            return [registered_event(register_model(tx, j, result, output_uri, self._clock()))]

        try:
            return self._update(job.id, lambda j, tx: j.succeed(result, self._clock()),
                                register)
        except IntegrityError as exc:
            # The name was taken after all (a model registered outside a job reservation).
            log.error("cannot register the model of job %s: %s", job.id, exc)
            return self._fail(job.id, ErrorCode.REGISTRATION_FAILED,
                              f"model {job.model_name} could not be registered: the name is taken")

    # -- evaluation at the end of a job (FineTuningOptions.evaluation) -------------------------

    def _evaluate(self, job: Job, result: TrainingResult, output_uri: str) -> bool:
        """Training is done: register the output as an EVALUATING candidate and start the base
        and tuned evaluations (first round); follow their progress (later rounds); then
        register the model or refuse it (the round that sees both finished). Every step is one
        transaction on the job, so a restart anywhere in between picks up from the DB."""
        assert job.evaluation is not None   # only jobs created with an evaluation come here
        spec = JobEvaluation.from_dict(job.evaluation)
        candidate, evaluations = self._store.run(
            lambda tx: (tx.models.by_job(job.id), tx.evaluations.for_job(job.id)))
        if candidate is None:
            try:
                changed = self._update(job.id, lambda j, tx: j.trained(result, self._clock()),
                                       lambda j, tx: self._start_evaluations(j, tx, spec,
                                                                             output_uri, result))
            except IntegrityError as exc:
                log.error("cannot register the candidate model of job %s: %s", job.id, exc)
                return self._fail(job.id, ErrorCode.REGISTRATION_FAILED,
                                  f"model {job.model_name} could not be registered: the name "
                                  "is taken")
            if changed:
                self._on_evaluations_created()
            return changed
        by_role = {e.role: e for e in evaluations}
        base, tuned = by_role.get(EvaluationRole.BASE), by_role.get(EvaluationRole.TUNED)
        if base is None or tuned is None:   # cannot happen: they are created with the candidate
            return self._end_evaluation(job.id, ErrorCode.EVALUATION_FAILED,
                                        "the job's evaluations are missing", [])
        for evaluation in (base, tuned):
            if evaluation.status in (EvaluationStatus.FAILED, EvaluationStatus.CANCELLED):
                what = "failed" if evaluation.status is EvaluationStatus.FAILED \
                    else "was cancelled"
                return self._end_evaluation(
                    job.id, ErrorCode.EVALUATION_FAILED,
                    f"the {evaluation.role} model's evaluation {evaluation.id} {what}: "
                    f"{evaluation.error or 'no reason given'}", [base, tuned])
        if not (base.terminal and tuned.terminal):
            progress = TRAINED_PROGRESS + (1 - TRAINED_PROGRESS) * (
                base.progress + tuned.progress) / 2
            if progress - job.progress < 0.01:
                return False
            return self._update(job.id, lambda j, tx: j.trained(result, self._clock(), progress))
        verdict = judge(base, tuned, spec.min_improvement)
        if not verdict.passed:
            return self._end_evaluation(job.id, ErrorCode.EVALUATION_BELOW_THRESHOLD,
                                        verdict.message, [base, tuned])

        def register(j: Job, tx: Tx) -> list[NewEvent]:
            model = promote_candidate(tx, j)
            return [_evaluation_event(base, tuned, f"evaluation finished: {verdict.message}"),
                    registered_event(model)]

        return self._update(job.id, lambda j, tx: j.succeed(result, self._clock()), register)

    def _start_evaluations(self, j: Job, tx: Tx, spec: JobEvaluation, output_uri: str,
                           result: TrainingResult) -> list[NewEvent]:
        now = self._clock()
        candidate = register_model(tx, j, result, output_uri, now, ModelState.EVALUATING)
        created = job_evaluations(j, spec, candidate, now)
        for evaluation in created:
            tx.evaluations.add(evaluation)
        threshold = "" if spec.min_improvement is None else \
            f", the tuned model must beat it by {spec.min_improvement:.4f}"
        return [NewEvent(
            EventType.EVALUATION_STARTED,
            f"training finished; evaluating the base model ({created[0].id}) and the tuned "
            f"model ({created[1].id}) on {spec.rows} rows, {spec.task.value.lower()}, "
            f"{created[1].primary_metric}{threshold}",
            metrics={"rows": float(spec.rows)})]

    def _end_evaluation(self, job_id: str, code: str, message: str,
                        evaluations: list[Evaluation]) -> bool:
        """The job fails after training: no model is registered (its files stay)."""
        message = message[-MAX_ERROR_MESSAGE:]

        def verdict(j: Job, tx: Tx) -> list[NewEvent]:   # end_job drops the candidate after
            if len(evaluations) == 2:
                return [_evaluation_event(evaluations[0], evaluations[1],
                                          f"evaluation finished: {message}", EventLevel.ERROR)]
            return []

        changed = self._update(job_id, lambda j, tx: j.fail(code, message, self._clock()),
                               verdict)
        if changed:
            log.info("job %s failed after training (%s): %s", job_id, code, message)
        return changed


def _evaluation_event(base: Evaluation, tuned: Evaluation, message: str,
                      level: EventLevel = EventLevel.INFO) -> NewEvent:
    metrics = {}
    for role, evaluation in (("base", base), ("tuned", tuned)):
        if evaluation.primary_value is not None:
            metrics[f"{role}_{evaluation.primary_metric}"] = float(evaluation.primary_value)
    if len(metrics) == 2:
        metrics["improvement"] = float((tuned.primary_value or 0.0) - (base.primary_value or 0.0))
    return NewEvent(EventType.EVALUATION_FINISHED, message[:2000], level, metrics=metrics)
