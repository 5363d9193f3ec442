"""The side effects of a job's lifecycle, each written once: registering its model (and the
OWNERSHIP grant of the role that created the job), promoting an evaluated candidate, and ending
the job. Every path that ends a job (CANCEL, the reconciler's failure or success, a failed
evaluation) calls `end_job` in the transaction that saved the terminal state, so each of these
happens exactly once and the same way whichever path got there."""

from __future__ import annotations

from datetime import datetime

from services.common.errors import AlreadyExists
from services.control.core.usage import record_fine_tuning_usage
from services.control.domain.events import EventType, NewEvent
from services.control.domain.jobs import Job, JobStatus, TrainingResult
from services.control.domain.models import ModelState, RegisteredModel
from services.control.domain.prices import PriceTable
from services.control.domain.privileges import Privilege, SecurableObject
from services.control.store.database import Tx


def register_model(tx: Tx, job: Job, result: TrainingResult, output_uri: str, now: datetime,
                   state: str = ModelState.READY) -> RegisteredModel:
    """The job's output as its model (READY, or an EVALUATING candidate), owned by the role
    that created the job; a role dropped since leaves the model to ACCOUNTADMIN. A candidate's
    owner holds OWNERSHIP already, so the job's evaluations, which run as the creator, pass
    their USAGE check on it (and fail once the role is gone)."""
    model = tx.models.add(
        account_id=job.account_id, name=job.model_name, base_model=job.base_model,
        job_id=job.id, adapter_uri=output_uri, created_on=now,
        trained_tokens=result.trained_tokens, training_loss=result.training_loss,
        validation_loss=result.validation_loss, state=state)
    grant_model_ownership(tx, job.account_id, job.owner_role_id, job.model_name, now)
    return model


def grant_model_ownership(tx: Tx, account_id: str, owner_role_id: str | None, model_name: str,
                          now: datetime) -> None:
    """OWNERSHIP of a new model for the role that created it (a job's, an import's), if that
    role still exists in the account."""
    owner = tx.access.role_by_id(owner_role_id) if owner_role_id else None
    if owner is not None and owner.account_id == account_id:
        tx.access.grant_privilege(account_id, owner.id, Privilege.OWNERSHIP,
                                  SecurableObject.model(model_name), "SYSTEM", now)


def check_model_name_free(tx: Tx, account_id: str, name: str) -> None:
    """AlreadyExists while a live model has the name, a job is training one of it, or a
    running sweep will register its best trial under it."""
    if tx.models.get(account_id, name) is not None:
        raise AlreadyExists(f"model {name} already exists")
    active = tx.jobs.active_with_model_name(account_id, name)
    if active is not None:
        raise AlreadyExists(f"job {active.id} is already training model {name}")
    sweep = tx.sweeps.running_with_model(account_id, name)
    if sweep is not None:
        raise AlreadyExists(f"sweep {sweep.id} will register model {name}")


def registered_event(model: RegisteredModel) -> NewEvent:
    return NewEvent(EventType.MODEL_REGISTERED,
                    f"model {model.name} registered (version {model.version})",
                    metrics={"version": float(model.version)})


def promote_candidate(tx: Tx, job: Job) -> RegisteredModel:
    """The candidate that passed its evaluation becomes the job's READY model."""
    model = tx.models.by_job(job.id)
    assert model is not None   # registered when training finished
    tx.models.set_state(model.id, ModelState.READY)
    return model


def end_job(tx: Tx, job: Job, prices: PriceTable, now: datetime, reason: str = "") -> None:
    """In the transaction that saved `job` terminal: a job that did not succeed stops its live
    evaluations and loses its unregistered candidate (its output files stay); every job gets
    its fine-tuning usage row, once."""
    assert job.terminal
    if job.status is not JobStatus.SUCCESS:
        ended = f"the fine-tuning job ended {job.status.value}" + (f": {reason}" if reason else "")
        for evaluation in tx.evaluations.for_job(job.id):
            if not evaluation.terminal:
                evaluation.cancel(now, ended)
                tx.evaluations.save(evaluation)
        candidate = tx.models.by_job(job.id)
        if candidate is not None and not candidate.ready:
            tx.access.delete_grants_on(job.account_id, SecurableObject.model(candidate.name))
            tx.models.purge(candidate.id)
    record_fine_tuning_usage(tx, job, prices)
