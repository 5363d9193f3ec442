"""The job state machine: legal moves only, terminal states final."""

from datetime import datetime, timezone

import pytest

from services.common.errors import FailedPrecondition
from services.control.domain.jobs import (TERMINAL, TRANSITIONS, IllegalTransition, Job,
                                          JobProgress, JobStatus, TrainingResult, can_move,
                                          new_job_id)

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
T1 = datetime(2025, 1, 1, 0, 5, tzinfo=timezone.utc)
RESULT = TrainingResult(trained_tokens=1234, training_loss=0.5, validation_loss=0.7, epochs=2,
                        steps=10, training_rows=20, validation_rows=5, truncated_rows=1)


def job(status=JobStatus.PENDING) -> Job:
    return Job(id=new_job_id(), account_id="a", user_id="u", model_name="PUBLIC.PUBLIC.M",
               base_model="b", task_type="INSTRUCTION", training_query="select 1",
               validation_query=None, options={}, created_on=T0, status=status)


def test_job_ids_are_prefixed_and_unique():
    ids = {new_job_id() for _ in range(100)}
    assert len(ids) == 100 and all(i.startswith("ft_") for i in ids)


@pytest.mark.parametrize("current", list(JobStatus))
@pytest.mark.parametrize("target", list(JobStatus))
def test_transition_table(current, target):
    legal = {
        (JobStatus.PENDING, JobStatus.IN_PROGRESS), (JobStatus.PENDING, JobStatus.ERROR),
        (JobStatus.PENDING, JobStatus.CANCELLED), (JobStatus.IN_PROGRESS, JobStatus.SUCCESS),
        (JobStatus.IN_PROGRESS, JobStatus.ERROR), (JobStatus.IN_PROGRESS, JobStatus.CANCELLED),
    }
    assert can_move(current, target) == ((current, target) in legal)


def test_terminal_states_have_no_way_out():
    assert TERMINAL == {JobStatus.SUCCESS, JobStatus.ERROR, JobStatus.CANCELLED}
    for status in TERMINAL:
        assert status.terminal and not TRANSITIONS[status]
    assert not JobStatus.PENDING.terminal and not JobStatus.IN_PROGRESS.terminal


def test_start_sets_started_on_once():
    j = job()
    j.start(T0)
    j.start(T1)
    assert j.status is JobStatus.IN_PROGRESS and j.started_on == T0


def test_succeed_from_pending_passes_through_in_progress():
    j = job()
    j.succeed(RESULT, T1)
    assert j.status is JobStatus.SUCCESS
    assert j.started_on == T1 and j.finished_on == T1
    assert j.progress == 1.0 and j.trained_tokens == 1234
    assert (j.training_loss, j.validation_loss) == (0.5, 0.7)
    assert (j.epoch, j.step, j.truncated_rows) == (2, 10, 1)


@pytest.mark.parametrize("final", sorted(TERMINAL, key=lambda s: s.value))
def test_terminal_jobs_refuse_every_change(final):
    j = job(final)
    with pytest.raises(IllegalTransition):
        j.cancel(T1)
    with pytest.raises(IllegalTransition):
        j.fail("X", "boom", T1)
    with pytest.raises(IllegalTransition):
        j.succeed(RESULT, T1)
    with pytest.raises(IllegalTransition):
        j.report(JobProgress(0.5, 1, 1, 2, 10), T1)
    j.start(T1)  # a late RUNNING from the cluster is ignored, not applied
    assert j.status is final


def test_cancel_of_a_terminal_job_is_failed_precondition():
    with pytest.raises(FailedPrecondition, match="cannot be cancelled"):
        job(JobStatus.SUCCESS).cancel(T1)


def test_report_starts_a_pending_job_and_clamps_progress():
    j = job()
    j.report(JobProgress(progress=1.7, epoch=1, step=3, total_steps=6, trained_tokens=99,
                         training_loss=1.5), T1)
    assert j.status is JobStatus.IN_PROGRESS and j.started_on == T1
    assert j.progress == 1.0 and (j.epoch, j.step, j.total_steps) == (1, 3, 6)
    assert j.training_loss == 1.5 and j.validation_loss is None
    j.report(JobProgress(progress=-1, epoch=1, step=4, total_steps=6, trained_tokens=120,
                         validation_loss=1.9), T1)
    assert j.progress == 0.0 and j.training_loss == 1.5 and j.validation_loss == 1.9


def test_fail_records_code_and_message():
    j = job(JobStatus.IN_PROGRESS)
    j.fail("TRAINING_FAILED", "out of memory", T1)
    assert (j.status, j.error_code, j.error_message, j.finished_on) == (
        JobStatus.ERROR, "TRAINING_FAILED", "out of memory", T1)


def test_manifest_parsing_tolerates_missing_validation_loss():
    r = TrainingResult.from_manifest({"job_id": "ft_x", "trained_tokens": "77",
                                      "training_loss": 0.25, "validation_loss": None,
                                      "epochs": 1, "steps": 2, "training_rows": 3,
                                      "validation_rows": 0, "truncated_rows": 0, "files": []})
    assert r.trained_tokens == 77 and r.validation_loss is None and r.training_loss == 0.25
