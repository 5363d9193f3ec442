"""The reconciler against a fake cluster: each cluster state maps to one job transition, and
success registers exactly one model however often (or concurrently) it runs."""

import threading

import pytest
from control_testbed import instruction_rows, load_rows, succeed, write_manifest

from services.control.core.jobs import CreateJob
from services.control.dispatch.protocol import ClusterJobStatus, ClusterUnavailable, DispatchError
from services.control.domain.jobs import ErrorCode, JobStatus
from services.control.store.tables import ModelRow


@pytest.fixture
def job(control, admin):
    load_rows(control, admin.account_id, "train", instruction_rows(4))
    return control.fine_tuning.create(admin, CreateJob(
        model="m", base_model="tiny-base", training_query="SELECT * FROM train"))


def reload(control, job):
    return control.store.run(lambda tx: tx.jobs.get(job.id))


def model_rows(control):
    with control.store.transaction() as tx:
        return tx.session.query(ModelRow).all()


def test_pending_on_the_cluster_changes_nothing(control, job):
    assert control.reconciler.reconcile_once() == 0
    assert reload(control, job).status is JobStatus.PENDING


def test_running_starts_the_job(control, job, dispatcher):
    dispatcher.set(job.id, ClusterJobStatus.RUNNING)
    assert control.reconciler.reconcile_once() == 1
    running = reload(control, job)
    assert running.status is JobStatus.IN_PROGRESS and running.started_on is not None
    assert control.reconciler.reconcile_once() == 0  # nothing new


def test_success_registers_the_model_exactly_once(control, job, dispatcher, admin):
    succeed(control, dispatcher, job)
    control.reconciler.reconcile_once()
    control.reconciler.reconcile_job(reload(control, job), dispatcher.status(job.id))
    done = reload(control, job)
    assert done.status is JobStatus.SUCCESS and done.progress == 1.0
    assert done.finished_on is not None and done.started_on is not None
    assert (done.trained_tokens, done.training_loss, done.validation_loss) == (4321, 0.42, 0.55)
    rows = model_rows(control)
    assert len(rows) == 1
    model = control.registry.get(admin, "m")
    assert model.name == "public.public.m" and model.job_id == job.id
    assert model.adapter_uri == job.output_uri and model.version == 1
    assert model.trained_tokens == 4321 and model.base_model == "tiny-base"
    assert control.registry.artifacts(model) == sorted([
        "adapter_config.json", "adapter_model.safetensors", "loss_curve.png", "manifest.json",
        "training_results.csv"])


def test_concurrent_reconcilers_register_one_model(control, job, dispatcher):
    write_manifest(control, job)
    dispatcher.set(job.id, ClusterJobStatus.SUCCEEDED)
    stale = reload(control, job)  # both start from the same read
    barrier = threading.Barrier(4)
    errors = []

    def run():
        barrier.wait()
        try:
            control.reconciler.reconcile_job(stale, dispatcher.status(job.id))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(model_rows(control)) == 1
    assert reload(control, job).status is JobStatus.SUCCESS


def test_success_without_manifest_is_an_error(control, job, dispatcher):
    dispatcher.set(job.id, ClusterJobStatus.SUCCEEDED)
    control.reconciler.reconcile_once()
    failed = reload(control, job)
    assert failed.status is JobStatus.ERROR and failed.error_code == ErrorCode.NO_MANIFEST
    assert model_rows(control) == []


def test_failure_keeps_the_clusters_message_and_log_tail(control, job, dispatcher):
    dispatcher.set(job.id, ClusterJobStatus.FAILED, "Job entrypoint command failed with exit code 1")
    dispatcher.logs[job.id] = "Traceback (most recent call last):\nRuntimeError: CUDA? no, CPU"
    control.reconciler.reconcile_once()
    failed = reload(control, job)
    assert failed.status is JobStatus.ERROR and failed.error_code == ErrorCode.TRAINING_FAILED
    assert "exit code 1" in failed.error_message and "RuntimeError" in failed.error_message


def test_stopped_is_cancelled(control, job, dispatcher):
    dispatcher.set(job.id, ClusterJobStatus.RUNNING)
    control.reconciler.reconcile_once()
    dispatcher.set(job.id, ClusterJobStatus.STOPPED)
    control.reconciler.reconcile_once()
    assert reload(control, job).status is JobStatus.CANCELLED


def test_terminal_jobs_are_left_alone(control, job, dispatcher, admin):
    control.fine_tuning.cancel(admin, job.id)
    write_manifest(control, job)
    dispatcher.set(job.id, ClusterJobStatus.SUCCEEDED)  # a late success after the cancel
    assert control.reconciler.reconcile_once() == 0
    assert reload(control, job).status is JobStatus.CANCELLED
    assert model_rows(control) == []


def test_unknown_pending_job_is_resubmitted(control, job, dispatcher):
    del dispatcher.jobs[job.id]  # e.g. control stopped between recording and submitting
    dispatcher.submitted.clear()
    control.reconciler.reconcile_once()
    assert [s[0] for s in dispatcher.submitted] == [job.id]
    assert reload(control, job).status is JobStatus.PENDING


def test_submission_gives_up_after_the_attempt_limit(control, job, dispatcher):
    del dispatcher.jobs[job.id]
    dispatcher.fail_submit = DispatchError("entrypoint rejected")
    for _ in range(10):
        control.reconciler.reconcile_once()
    failed = reload(control, job)
    assert failed.status is JobStatus.ERROR and failed.error_code == ErrorCode.SUBMIT_FAILED
    assert failed.submit_attempts == 5 and "entrypoint rejected" in failed.error_message


def test_unknown_running_job_is_lost(control, job, dispatcher):
    dispatcher.set(job.id, ClusterJobStatus.RUNNING)
    control.reconciler.reconcile_once()
    del dispatcher.jobs[job.id]
    control.reconciler.reconcile_once()
    lost = reload(control, job)
    assert lost.status is JobStatus.ERROR and lost.error_code == ErrorCode.LOST


def test_an_unreachable_cluster_changes_nothing(control, job, dispatcher, monkeypatch):
    def down(job_id):
        raise ClusterUnavailable("connection refused")

    monkeypatch.setattr(dispatcher, "status", down)
    assert control.reconciler.reconcile_once() == 0
    assert reload(control, job).status is JobStatus.PENDING


def test_adapter_ids_are_never_reused(control, job, dispatcher, admin):
    succeed(control, dispatcher, job)
    first = control.registry.get(admin, "m")
    control.registry.delete(admin, "m")
    again = control.fine_tuning.create(admin, CreateJob(
        model="m", base_model="tiny-base", training_query="SELECT * FROM train"))
    succeed(control, dispatcher, again)
    second = control.registry.get(admin, "m")
    assert second.id > first.id and second.version == 2
    assert second.job_id == again.id


def test_a_vanished_job_that_left_its_results_is_finalized_once(control, job, dispatcher):
    dispatcher.set(job.id, ClusterJobStatus.RUNNING)
    control.reconciler.reconcile_once()
    write_manifest(control, job)
    del dispatcher.jobs[job.id]   # e.g. the Ray head restarted after the job finished
    control.reconciler.reconcile_once()
    control.reconciler.reconcile_once()
    done = reload(control, job)
    assert done.status is JobStatus.SUCCESS and len(model_rows(control)) == 1


def test_a_vanished_job_without_results_says_why(control, job, dispatcher, admin):
    dispatcher.set(job.id, ClusterJobStatus.RUNNING)
    control.reconciler.reconcile_once()
    del dispatcher.jobs[job.id]
    control.reconciler.reconcile_once()
    lost = reload(control, job)
    assert lost.status is JobStatus.ERROR and lost.error_code == ErrorCode.LOST
    assert "Ray run vanished" in lost.error_message
    failed = [e for e in control.fine_tuning.events(admin, job.id).events
              if e.type == "job.failed"]
    assert len(failed) == 1 and "LOST" in failed[0].message


def test_a_job_crashed_before_its_first_submit_is_submitted_after_a_grace(control, job,
                                                                          dispatcher):
    from datetime import timedelta

    def crashed_before_submitting(created_ago_s):
        def work(tx):
            j = tx.jobs.get(job.id)
            j.submit_attempts = 0
            j.created_on = j.created_on - timedelta(seconds=created_ago_s)
            tx.jobs.save(j)
        control.store.run(work)
        dispatcher.jobs.pop(job.id, None)
        dispatcher.submitted.clear()

    crashed_before_submitting(0)   # CREATE may still be submitting it itself
    control.reconciler.reconcile_once()
    assert dispatcher.submitted == []
    crashed_before_submitting(60)
    control.reconciler.reconcile_once()
    assert [s[0] for s in dispatcher.submitted] == [job.id]
    assert reload(control, job).submit_attempts == 1
