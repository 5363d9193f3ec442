"""Control's job metrics read from the real metadata DB, and progress reports metered."""

from __future__ import annotations

from control_testbed import instruction_rows, load_rows, succeed
from prometheus_client.parser import text_string_to_metric_families

from services.common.metrics import exposition
from services.control.core.jobs import CreateJob
from services.control.domain.jobs import JobProgress
from services.control.metrics import MeteredProgress, read_job_states


def create(control, admin, name):
    return control.fine_tuning.create(admin, CreateJob(
        model=name, base_model="tiny-base", training_query="SELECT * FROM train"))


def samples(control) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(
                exposition(control.metrics.registry).decode()) for s in f.samples}


def test_jobs_by_state_and_throughput_of_running_jobs(control, admin, dispatcher):
    load_rows(control, admin.account_id, "train", instruction_rows(4))
    done, running, pending = (create(control, admin, n) for n in ("m1", "m2", "m3"))
    succeed(control, dispatcher, done)
    progress = MeteredProgress(control.fine_tuning, control.metrics.throughput)
    for tokens in (0, 64):
        assert progress.report_progress(running.id, JobProgress(
            progress=0.5, epoch=1, step=1, total_steps=2, trained_tokens=tokens)) is False

    states = read_job_states(control.store)
    assert dict(states.counts) == {"SUCCESS": 1, "IN_PROGRESS": 1, "PENDING": 1}
    assert dict(states.running) == {running.id: "tiny-base"}
    got = samples(control)
    assert got[("finetune_jobs", (("state", "PENDING"),))] == 1
    assert got[("finetune_jobs", (("state", "CANCELLED"),))] == 0
    rate = got[("finetune_training_tokens_per_second",
                (("base_model", "tiny-base"), ("job_id", running.id)))]
    assert rate > 0

    control.fine_tuning.cancel(admin, running.id)
    got = samples(control)
    assert got[("finetune_jobs", (("state", "CANCELLED"),))] == 1
    assert not [k for k in got if k[0] == "finetune_training_tokens_per_second"]
    # A report for a cancelled job tells the trainer to stop and feeds no rate.
    assert progress.report_progress(running.id, JobProgress(
        progress=0.6, epoch=1, step=2, total_steps=2, trained_tokens=128)) is True
    assert control.metrics.throughput.rates([running.id]) == {}
