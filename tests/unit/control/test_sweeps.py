"""Sweeps against the fake cluster: trials start as ordinary jobs one at a time, the best by
validation loss becomes the requested model, budgets refuse or skip, cancel stops the trial
jobs, and a runner that starts afresh (a control restart) picks up where the last one was."""

import pytest
from control_testbed import acting_as, instruction_rows, load_rows, new_user, succeed

from finetune.control.v1 import sweeps_pb2
from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from services.control.api.sweeps import SweepServicer
from services.control.core.jobs import CreateJob
from services.control.core.sweep_runner import SweepRunner
from services.control.core.sweeps import CreateSweep, creator, trial_request
from services.control.dispatch.protocol import ClusterJobStatus
from services.control.domain.jobs import JobStatus
from services.control.domain.sweeps import (
    Budget,
    Parameter,
    SearchMethod,
    SearchSpace,
    SweepStatus,
    TrialState,
)

MODEL = "public.public.bot"
LR_GRID = SearchSpace(SearchMethod.GRID, (Parameter("learning_rate", (1e-3, 2e-3)),))


@pytest.fixture
def rows(control, admin):
    load_rows(control, admin.account_id, "train", instruction_rows(10))   # 2 held out


def create(control, principal, space=LR_GRID, **overrides):
    request = dict(model="bot", base_model="tiny-base", training_query="SELECT * FROM train",
                   space=space)
    request.update(overrides)
    return control.sweeps.create(principal, CreateSweep(**request))


def advance(control):
    control.sweep_runner.advance_all()
    return control.store.run(lambda tx: tx.sweeps.unsettled())


def estimated_tokens(control, admin, trials=2):
    """The learning rate changes nothing the estimate counts: each trial trains the same."""
    return trials * control.fine_tuning.estimate(admin, CreateJob(
        model="", base_model="tiny-base", training_query="SELECT * FROM train")).trained_tokens


def view(control, admin, sweep_id):
    return control.sweeps.get(admin, sweep_id)


def job_of(control, admin, sweep_id, index):
    trial = view(control, admin, sweep_id).trials[index - 1]
    assert trial.job is not None, f"trial {index} has no job"
    return trial.job


def model(control, account_id, name):
    return control.store.run(lambda tx: tx.models.get(account_id, name))


def test_trials_run_one_at_a_time_and_the_best_becomes_the_model(control, admin, rows,
                                                                 dispatcher):
    created = create(control, admin)
    sweep = created.sweep
    assert sweep.status is SweepStatus.RUNNING and sweep.model == MODEL
    assert sweep.budget == Budget(2, 0, 1) and sweep.objective == "validation_loss"
    assert [t.trial.state for t in created.trials] == [TrialState.PLANNED] * 2
    per_trial = created.trials[0].trial.estimated_tokens
    assert per_trial > 0 and sweep.estimated_trained_tokens == 2 * per_trial
    assert created.progress == 0.0

    advance(control)
    first = job_of(control, admin, sweep.id, 1)
    assert first.model_name == f"{MODEL}__trial_1" and first.options["learning_rate"] == 1e-3
    assert len(dispatcher.submitted) == 1      # the cluster runs one trial at a time
    advance(control)
    assert len(dispatcher.submitted) == 1
    assert view(control, admin, sweep.id).trials[1].trial.state is TrialState.PLANNED

    succeed(control, dispatcher, first, validation_loss=0.50, trained_tokens=1000)
    assert view(control, admin, sweep.id).progress == 0.5
    advance(control)
    second = job_of(control, admin, sweep.id, 2)
    assert second.options["learning_rate"] == 2e-3 and len(dispatcher.submitted) == 2
    succeed(control, dispatcher, second, validation_loss=0.30, trained_tokens=1200)
    assert advance(control) == []

    done = view(control, admin, sweep.id)
    assert done.sweep.status is SweepStatus.SUCCEEDED and done.sweep.best_trial == 2
    assert done.progress == 1.0 and done.trained_tokens == 2200
    assert done.credits > 0
    best = model(control, admin.account_id, MODEL)
    assert best.job_id == second.id and best.adapter_uri == second.output_uri
    assert best.validation_loss == 0.30 and best.ready
    assert model(control, admin.account_id, f"{MODEL}__trial_2") is None   # moved, not copied
    assert model(control, admin.account_id, f"{MODEL}__trial_1").job_id == first.id
    assert [t.model for t in done.trials] == [f"{MODEL}__trial_1", MODEL]
    assert [t.objective for t in done.trials] == [0.50, 0.30]
    # the model is the creator's role's, like a job's; the best job's log says it
    assert control.registry.get(admin, MODEL).name == MODEL
    events = [e.type for e in control.fine_tuning.events(admin, second.id, 100).events]
    assert events.count("model.registered") == 2   # as the candidate, then as the model


def test_delete_candidates_leaves_only_the_best(control, admin, rows, dispatcher):
    sweep = create(control, admin, delete_candidates=True,
                   budget=Budget(max_concurrent=2)).sweep
    assert sweep.budget.max_concurrent == 1    # the cluster runs one at a time
    for index, loss in ((1, 0.2), (2, 0.4)):
        advance(control)
        succeed(control, dispatcher, job_of(control, admin, sweep.id, index),
                validation_loss=loss)
    advance(control)
    assert view(control, admin, sweep.id).sweep.best_trial == 1
    assert model(control, admin.account_id, MODEL) is not None
    assert model(control, admin.account_id, f"{MODEL}__trial_1") is None
    assert model(control, admin.account_id, f"{MODEL}__trial_2") is None


def test_a_token_budget_below_the_estimate_is_refused(control, admin, rows):
    estimate = estimated_tokens(control, admin)
    with pytest.raises(ResourceExhausted, match="over the budget"):
        create(control, admin, budget=Budget(max_trained_tokens=estimate - 1))
    with pytest.raises(ResourceExhausted, match="2 trials but the budget allows 1"):
        create(control, admin, budget=Budget(max_jobs=1))


def test_trials_that_would_pass_the_token_budget_are_skipped(control, admin, rows, dispatcher):
    """The estimate fits, but the first trial trained more than estimated (its data grew)."""
    estimate = estimated_tokens(control, admin)
    sweep = create(control, admin, budget=Budget(max_trained_tokens=estimate)).sweep
    advance(control)
    succeed(control, dispatcher, job_of(control, admin, sweep.id, 1),
            trained_tokens=estimate, validation_loss=0.4)
    advance(control)
    done = view(control, admin, sweep.id)
    assert done.trials[1].trial.state is TrialState.SKIPPED
    assert "token budget" in done.trials[1].trial.error
    assert done.sweep.status is SweepStatus.SUCCEEDED and done.sweep.best_trial == 1
    assert len(dispatcher.submitted) == 1


def test_cancel_stops_the_running_trial_and_skips_the_rest(control, admin, rows, dispatcher):
    sweep = create(control, admin).sweep
    advance(control)
    first = job_of(control, admin, sweep.id, 1)
    dispatcher.set(first.id, ClusterJobStatus.RUNNING)
    control.reconciler.reconcile_once()
    cancelled = control.sweeps.cancel(admin, sweep.id)
    assert cancelled.sweep.status is SweepStatus.CANCELLED
    assert first.id in dispatcher.stopped
    assert cancelled.trials[0].job.status is JobStatus.CANCELLED
    assert cancelled.trials[1].trial.state is TrialState.SKIPPED
    assert advance(control) == []           # settled: nothing left to follow
    assert len(dispatcher.submitted) == 1 and model(control, admin.account_id, MODEL) is None
    with pytest.raises(FailedPrecondition):
        control.sweeps.cancel(admin, sweep.id)


def test_a_cancel_the_process_did_not_finish_is_finished_by_the_runner(control, admin, rows,
                                                                        dispatcher):
    """Control stopped between recording CANCELLED and cancelling the trial's job."""
    sweep = create(control, admin).sweep
    advance(control)

    def cancel_only_the_sweep(tx):
        s = tx.sweeps.get(sweep.id)
        s.cancel(s.created_on, "cancelled")
        tx.sweeps.save(s)
    control.store.run(cancel_only_the_sweep)
    first = job_of(control, admin, sweep.id, 1)
    assert not first.terminal
    assert advance(control) == []
    assert job_of(control, admin, sweep.id, 1).status is JobStatus.CANCELLED


def test_a_fresh_runner_finds_the_job_a_crash_left_unrecorded(control, admin, rows,
                                                               dispatcher):
    """The trial's job was created, then control died before the sweep recorded it: the next
    runner's CREATE under the same request id finds that job instead of a second one."""
    sweep = create(control, admin).sweep
    orphan = control.fine_tuning.create(creator(sweep), trial_request(sweep, sweep.trials[0]))
    restarted = SweepRunner(control.store, control.fine_tuning, control.events)
    restarted.advance_all()
    assert job_of(control, admin, sweep.id, 1).id == orphan.id
    assert len(dispatcher.submitted) == 1
    succeed(control, dispatcher, orphan, validation_loss=0.1)
    restarted.advance_all()
    succeed(control, dispatcher, job_of(control, admin, sweep.id, 2), validation_loss=0.2)
    SweepRunner(control.store, control.fine_tuning, control.events).advance_all()
    assert view(control, admin, sweep.id).sweep.best_trial == 1


def test_a_sweep_whose_trials_all_fail_registers_nothing(control, admin, rows, dispatcher):
    sweep = create(control, admin).sweep
    for index in (1, 2):
        advance(control)
        job = job_of(control, admin, sweep.id, index)
        dispatcher.set(job.id, ClusterJobStatus.FAILED, "out of memory")
        control.reconciler.reconcile_once()
    advance(control)
    done = view(control, admin, sweep.id)
    assert done.sweep.status is SweepStatus.FAILED
    assert "no trial succeeded" in done.sweep.error and "2 ERROR" in done.sweep.error
    assert "out of memory" in done.sweep.error
    assert model(control, admin.account_id, MODEL) is None


def test_a_trial_whose_job_is_refused_is_an_error_and_the_others_run(control, admin, rows,
                                                                      dispatcher):
    sweep = create(control, admin).sweep
    control.fine_tuning.create(admin, CreateJob(   # someone takes trial 1's candidate name
        model="bot__trial_1", base_model="tiny-base", training_query="SELECT * FROM train"))
    advance(control)
    current = view(control, admin, sweep.id)
    assert current.trials[0].trial.state is TrialState.REFUSED
    assert "AlreadyExists" in current.trials[0].trial.error
    succeed(control, dispatcher, current.trials[1].job, validation_loss=0.9)
    advance(control)
    assert view(control, admin, sweep.id).sweep.best_trial == 2


def test_the_name_is_held_while_the_sweep_runs(control, admin, rows):
    create(control, admin)
    with pytest.raises(AlreadyExists, match="will register model"):
        control.fine_tuning.create(admin, CreateJob(
            model="bot", base_model="tiny-base", training_query="SELECT * FROM train"))
    with pytest.raises(AlreadyExists):
        create(control, admin)
    control.fine_tuning.create(admin, CreateJob(
        model="other__trial_2", base_model="tiny-base", training_query="SELECT * FROM train"))
    with pytest.raises(AlreadyExists, match="other__trial_2"):   # a trial's name is taken
        create(control, admin, model="other")


def test_every_trials_options_are_checked_before_anything_runs(control, admin, rows,
                                                               dispatcher):
    space = SearchSpace(SearchMethod.GRID, (Parameter("lora_rank", (8, 64)),))
    with pytest.raises(InvalidArgument, match=r"trial 2 \(lora_rank=64\)"):
        create(control, admin, space=space)
    with pytest.raises(InvalidArgument, match="evaluation query"):
        create(control, admin, objective="accuracy")
    assert dispatcher.submitted == []
    assert control.store.run(lambda tx: tx.sweeps.unsettled()) == []


def test_ranking_by_validation_loss_needs_validation_rows(control, admin):
    load_rows(control, admin.account_id, "few", instruction_rows(2))
    with pytest.raises(InvalidArgument, match="no validation rows"):
        create(control, admin, training_query="SELECT * FROM few")
    ranked = create(control, admin, training_query="SELECT * FROM few",
                    objective="training_loss")
    assert ranked.sweep.objective == "training_loss" and ranked.sweep.minimize


def test_a_retry_under_the_request_id_is_the_same_sweep(control, admin, rows):
    first = create(control, admin, request_id="r-1")
    again = create(control, admin, request_id="r-1")
    assert again.sweep.id == first.sweep.id


def test_privileges_are_creates_and_a_sweep_is_its_owners(control, admin, rows):
    nobody, _ = new_user(control, admin.account_id, "nobody")
    with pytest.raises(PermissionDenied):
        create(control, nobody)
    sweep = create(control, admin).sweep
    with pytest.raises(PermissionDenied):
        control.sweeps.get(nobody, sweep.id)
    with pytest.raises(PermissionDenied):
        control.sweeps.cancel(nobody, sweep.id)
    with pytest.raises(NotFound):
        control.sweeps.get(admin, "sw_missing")
    assert [v.sweep.id for v in control.sweeps.list(admin).sweeps] == [sweep.id]


async def test_the_servicer_shows_progress_and_a_table_of_trials(control, admin, rows,
                                                                 dispatcher):
    servicer = SweepServicer(control.sweeps, control.events)
    request = sweeps_pb2.CreateSweepRequest(
        model="bot", base_model="tiny-base", training_query="SELECT * FROM train",
        space=sweeps_pb2.SearchSpace(method=sweeps_pb2.GRID, parameters=[
            sweeps_pb2.SweepParameter(name="lora_rank", values=[4, 8])]),
        budget=sweeps_pb2.SweepBudget(max_jobs=2))
    request.options.max_epochs = 1
    with acting_as(admin):
        created = await servicer.CreateSweep(request, None)
        assert created.status == sweeps_pb2.SWEEP_RUNNING and created.options.max_epochs == 1
        assert [t.status for t in created.trials] == [sweeps_pb2.TRIAL_PLANNED] * 2
        assert created.trials[1].parameters == {"lora_rank": 8.0}
        advance(control)
        job = job_of(control, admin, created.id, 1)
        succeed(control, dispatcher, job, validation_loss=0.25, training_loss=0.2)
        shown = await servicer.GetSweep(sweeps_pb2.GetSweepRequest(id=created.id), None)
        trial = shown.trials[0]
        assert trial.status == sweeps_pb2.TRIAL_SUCCESS and trial.job_id == job.id
        assert trial.validation_loss == 0.25 and trial.objective == 0.25
        assert not shown.trials[1].HasField("validation_loss") and shown.progress == 0.5
        listed = await servicer.ListSweeps(sweeps_pb2.ListSweepsRequest(), None)
        assert [s.id for s in listed.sweeps] == [created.id]
        cancelled = await servicer.CancelSweep(sweeps_pb2.CancelSweepRequest(id=created.id),
                                               None)
    assert cancelled.status == sweeps_pb2.SWEEP_CANCELLED
    assert cancelled.trials[1].status == sweeps_pb2.TRIAL_SKIPPED
    assert cancelled.trained_tokens == 4321   # the manifest's: usage is the jobs' sum
