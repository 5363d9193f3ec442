"""Runs sweeps in the background of the control process: starts each sweep's trials as
fine-tuning jobs (through FineTuning.create, as the sweep's creator, at most `max_concurrent`
live at once and within the token budget), follows them, and when every trial has ended
registers the best trial's model under the sweep's name.

It keeps nothing in memory: each round reads the sweeps and their jobs from the store, and a
trial's job is created under the request id `<sweep id>/trial/<n>`, so a control restart
between creating a job and recording it on the sweep finds that job again instead of starting
a second one. Training itself runs on the cluster; the reconciler ends the jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from services.common.errors import FinetuneError, ResourceExhausted, Unavailable
from services.common.waiting import wait_event
from services.control.core.clock import Clock, utc_now
from services.control.core.jobs import FineTuning
from services.control.core.lifecycle import grant_model_ownership, registered_event
from services.control.core.notifier import ChangeNotifier
from services.control.core.sweeps import (
    SweepView,
    cancel_trial_jobs,
    creator,
    sweep_view,
    trial_request,
)
from services.control.domain.jobs import Job
from services.control.domain.prices import PriceTable
from services.control.domain.privileges import SecurableObject
from services.control.domain.sweeps import (
    Sweep,
    TrialState,
    best_trial,
    tokens_committed,
)
from services.control.store.database import Store, Tx

log = logging.getLogger(__name__)

MAX_ERROR = 2000


class SweepRunner:
    def __init__(self, store: Store, fine_tuning: FineTuning, events: ChangeNotifier,
                 prices: PriceTable = PriceTable(), interval_s: float = 2.0,
                 clock: Clock = utc_now):
        self._store = store
        self._fine_tuning = fine_tuning
        self._events = events
        self._prices = prices
        self._interval_s = interval_s
        self._clock = clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None

    async def run(self) -> None:
        """Advance every unsettled sweep, then again when woken or every `interval_s`."""
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        while True:
            try:
                await asyncio.to_thread(self.advance_all)
            except Exception:  # noqa: BLE001 - one bad round must not stop the sweeps
                log.exception("advancing sweeps failed")
            await wait_event(self._wakeup, self._interval_s)
            self._wakeup.clear()

    def wake(self) -> None:
        """Thread-safe: a sweep was created or cancelled."""
        if self._loop is not None and self._wakeup is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._wakeup.set)

    def advance_all(self) -> int:
        """One round over every sweep still following trials; how many changed."""
        changed = 0
        for sweep in self._store.run(lambda tx: tx.sweeps.unsettled()):
            try:
                changed += self.advance(sweep.id)
            except Unavailable as exc:
                log.warning("sweep %s waits for the metadata database: %s", sweep.id, exc)
        return changed

    def advance(self, sweep_id: str) -> bool:
        view = self._view(sweep_id)
        if view is None or view.sweep.settled:
            return False
        sweep = view.sweep
        if sweep.terminal:   # cancelled: its live trial jobs go, then the sweep is settled
            if cancel_trial_jobs(self._store, self._fine_tuning, sweep, creator(sweep)):
                return self._save(sweep_id, lambda s, tx: setattr(s, "settled", True))
            return False
        changed = self._launch(view)
        if changed:
            view = self._view(sweep_id)
            if view is None or view.sweep.terminal:
                return True
        return self._finish_if_done(view) or changed

    # -- starting trials ----------------------------------------------------------------

    def _launch(self, view: SweepView) -> bool:
        """Start planned trials while fewer than max_concurrent are live and the token budget
        allows; a trial over the budget is skipped."""
        sweep = view.sweep
        outcomes = view.outcomes()
        live = sum(1 for o in outcomes.values() if not o.terminal)
        committed = tokens_committed(sweep.trials, outcomes)
        limit = sweep.budget.max_trained_tokens
        changed = False
        for trial in sweep.trials:
            if live >= sweep.budget.max_concurrent:
                break
            if trial.state is not TrialState.PLANNED:
                continue
            if limit and committed + trial.estimated_tokens > limit:
                reason = (f"over the token budget: {committed} trained or committed + about "
                          f"{trial.estimated_tokens} for this trial > {limit}")
                changed |= self._mark(sweep.id, trial.index, TrialState.SKIPPED, None, reason)
                continue
            try:
                job = self._fine_tuning.create(creator(sweep), trial_request(sweep, trial))
            except (Unavailable, ResourceExhausted) as exc:   # passing: the next round retries
                log.warning("sweep %s: trial %d waits: %s", sweep.id, trial.index, exc)
                break
            except FinetuneError as exc:
                log.info("sweep %s: trial %d refused: %s", sweep.id, trial.index, exc)
                changed |= self._mark(sweep.id, trial.index, TrialState.REFUSED, None,
                                      f"{type(exc).__name__}: {exc.message}")
                continue
            if not self._mark(sweep.id, trial.index, TrialState.LAUNCHED, job, None):
                # The sweep was cancelled while the job was being created.
                cancel_trial_jobs(self._store, self._fine_tuning, self._reload(sweep.id),
                                  creator(sweep))
                return True
            log.info("sweep %s: trial %d started as job %s", sweep.id, trial.index, job.id)
            changed = True
            live += 1
            committed += trial.estimated_tokens
        return changed

    def _mark(self, sweep_id: str, index: int, state: TrialState, job: Job | None,
              error: str | None) -> bool:
        """Record a trial's new state; False when the sweep has ended meanwhile. A job created
        for the trial is recorded either way, so that cancelling the sweep finds it."""
        ended = False

        def mutate(sweep: Sweep, tx: Tx) -> None:
            nonlocal ended
            ended = sweep.terminal
            trial = sweep.trial(index)
            if job is not None:
                trial.state, trial.job_id = TrialState.LAUNCHED, job.id
            elif not ended and trial.state is TrialState.PLANNED:
                trial.state = state
            trial.error = error[:MAX_ERROR] if error else trial.error
            sweep.updated_on = self._clock()

        if not self._save(sweep_id, mutate):   # settled: nobody would cancel the job later
            if job is not None:
                self._fine_tuning.cancel(creator(self._reload(sweep_id)), job.id)
            return False
        return not ended

    # -- the end ------------------------------------------------------------------------

    def _finish_if_done(self, view: SweepView) -> bool:
        if not all(t.ended for t in view.trials):
            return False
        sweep = view.sweep
        best = best_trial(view.outcomes().values(), sweep.minimize)

        def finish(s: Sweep, tx: Tx) -> None:
            now = self._clock()
            if best is None:
                s.fail(_nothing_to_register(view), now)
                return
            error = self._register_best(tx, s, best)
            if error is not None:
                s.fail(error, now)
                return
            s.succeed(best, now)
            if s.delete_candidates:
                for trial in s.trials:
                    if trial.index != best and trial.job_id:
                        _delete_candidate(tx, s, trial.job_id, now)

        changed = self._save(sweep.id, finish)
        if changed:
            done = self._reload(sweep.id)
            log.info("sweep %s %s (best trial %d)", sweep.id, done.status.value,
                     done.best_trial)
        return changed

    def _register_best(self, tx: Tx, sweep: Sweep, best: int) -> str | None:
        """The best trial's candidate model becomes `sweep.model` (a new model row on the same
        adapter files, owned by the sweep's owner role; the candidate name and its grants go).
        An error message when it cannot."""
        job_id = sweep.trial(best).job_id
        assert job_id is not None   # only launched trials are ranked
        job = tx.jobs.get(job_id)
        candidate = tx.models.by_job(job_id)
        live = tx.models.get(sweep.account_id, candidate.name) if candidate else None
        if job is None or candidate is None or live is None or live.id != candidate.id:
            return (f"the best trial ({best}) has no model any more: its candidate "
                    f"was deleted before the sweep ended")
        if tx.models.get(sweep.account_id, sweep.model) is not None:
            return f"model {sweep.model} was registered by someone else meanwhile"
        now = self._clock()
        tx.access.delete_grants_on(sweep.account_id, SecurableObject.model(candidate.name))
        tx.models.purge(candidate.id)
        model = tx.models.add(
            account_id=sweep.account_id, name=sweep.model, base_model=candidate.base_model,
            job_id=job_id, adapter_uri=candidate.adapter_uri, created_on=now,
            trained_tokens=candidate.trained_tokens, training_loss=candidate.training_loss,
            validation_loss=candidate.validation_loss)
        grant_model_ownership(tx, sweep.account_id, job.owner_role_id, sweep.model, now)
        tx.events.add(job_id, [registered_event(model)], now)
        return None

    # -- the store ------------------------------------------------------------------------

    def _view(self, sweep_id: str) -> SweepView | None:
        def work(tx: Tx) -> SweepView | None:
            sweep = tx.sweeps.get(sweep_id)
            return None if sweep is None else sweep_view(tx, sweep, self._prices)
        return self._store.run(work)

    def _reload(self, sweep_id: str) -> Sweep:
        sweep = self._store.run(lambda tx: tx.sweeps.get(sweep_id))
        assert sweep is not None   # sweeps are never deleted
        return sweep

    def _save(self, sweep_id: str, mutate) -> bool:
        """Apply `mutate` to the sweep in one transaction (rerun on a lost optimistic lock);
        False when the sweep is already settled."""
        def work(tx: Tx) -> bool:
            sweep = tx.sweeps.get(sweep_id)
            if sweep is None or sweep.settled:
                return False
            mutate(sweep, tx)
            tx.sweeps.save(sweep)
            return True
        changed = self._store.run(work)
        if changed:
            self._events.publish(sweep_id)
        return changed


def _delete_candidate(tx: Tx, sweep: Sweep, job_id: str, now) -> None:
    model = tx.models.by_job(job_id)
    if model is None or tx.models.get(sweep.account_id, model.name) is None:
        return
    tx.models.delete(sweep.account_id, model.name, now)
    tx.access.delete_grants_on(sweep.account_id, SecurableObject.model(model.name))


def _nothing_to_register(view: SweepView) -> str:
    states = [t.job.status.value if t.job is not None else t.trial.state.value
              for t in view.trials]
    counts = ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states)))
    first = next((t.job.error_message or "" for t in view.trials
                  if t.job is not None and t.job.error_message), "") or \
        next((t.trial.error or "" for t in view.trials if t.trial.error), "")
    reason = f"no trial succeeded with a {view.sweep.objective} to rank ({counts})"
    return (reason + (f"; first error: {first}" if first else ""))[:MAX_ERROR]

