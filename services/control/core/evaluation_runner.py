"""Runs evaluations in the background of the control process: claims PENDING ones, sends their
prompts to the inference service (`concurrency` requests in flight), records progress at most
about once a second, honours cancel, computes the metrics and writes the result files.

It keeps no state that matters outside the database and the artifact store: when control
starts, evaluations a previous process left RUNNING are put back to PENDING and run again from
scratch (their rows were frozen at EvaluateModel, so the rerun sees the same data).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from services.common.artifacts import ArtifactStore
from services.common.errors import FinetuneError, ResourceExhausted, Unavailable
from services.common.waiting import wait_event
from services.control.core.authorization import load_access
from services.control.core.clock import Clock, utc_now
from services.control.core.notifier import ChangeNotifier
from services.control.data.evaluation_data import (
    METRICS_FILE,
    PREDICTIONS_FILE,
    evaluation_uri,
    metrics_csv,
    predictions_csv,
    read_rows,
)
from services.control.dispatch.inference import CompletionCall, CompletionClient
from services.control.domain.evaluations import (
    Evaluation,
    EvaluationStatus,
    IllegalEvaluationTransition,
    prediction_text,
)
from services.control.domain.metrics import compute_metrics
from services.control.domain.privileges import Privilege, SecurableObject
from services.control.store.database import Store, Tx

log = logging.getLogger(__name__)

MAX_ERROR = 4000


@dataclass(frozen=True)
class RunnerSettings:
    poll_interval_s: float = 2.0      # a backstop: new evaluations wake the runner at once
    flush_interval_s: float = 1.0     # progress writes, at most this often
    max_running: int = 2              # evaluations at once (each with its own concurrency)
    # A row's call is retried on UNAVAILABLE / RESOURCE_EXHAUSTED at least this many times and
    # for at least `retry_window_s` after its first failure: an inference service that is
    # (re)starting its engine answers UNAVAILABLE for a minute or more, which must not fail
    # an evaluation (nor the fine-tuning job waiting on it).
    max_call_attempts: int = 6
    retry_window_s: float = 300.0
    retry_backoff_s: float = 1.0      # doubling each time, up to max_backoff_s
    max_backoff_s: float = 10.0


class _Stopped(Exception):
    """The evaluation was cancelled (or removed) while it ran."""


@dataclass
class _Tally:
    done: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class EvaluationRunner:
    def __init__(self, store: Store, artifacts: ArtifactStore, client: CompletionClient | None,
                 events: ChangeNotifier, settings: RunnerSettings = RunnerSettings(),
                 clock: Clock = utc_now, monotonic: Callable[[], float] = time.monotonic):
        self._store = store
        self._artifacts = artifacts
        self._client = client
        self._events = events
        self._settings = settings
        self._clock = clock
        self._monotonic = monotonic
        self._running: dict[str, asyncio.Task] = {}
        self._stop_flags: dict[str, asyncio.Event] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None

    # -- the background loop --------------------------------------------------------------

    async def run(self) -> None:
        """Requeue what a previous process left running, then run evaluations forever."""
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        requeued = await asyncio.to_thread(self.requeue_interrupted)
        if requeued:
            log.info("%d interrupted evaluation(s) will run again from scratch", requeued)
        try:
            while True:
                try:
                    await self.start_pending()
                except Exception:  # noqa: BLE001 - one bad round must not stop the runner
                    log.exception("starting evaluations failed")
                await wait_event(self._wakeup, self._settings.poll_interval_s)
                self._wakeup.clear()
        finally:
            tasks = list(self._running.values())
            for task in tasks:
                task.cancel()
            for task in tasks:   # left RUNNING in the DB: the next start requeues them
                with contextlib.suppress(BaseException):
                    await task

    async def close(self) -> None:
        close = getattr(self._client, "close", None)
        if close is not None:
            await close()

    def wake(self) -> None:
        """Thread-safe: a new evaluation is waiting."""
        if self._loop is not None and self._wakeup is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._wakeup.set)

    def stop(self, evaluation_id: str) -> None:
        """Thread-safe: the evaluation was cancelled; stop its calls now, not at the next
        progress write."""
        if self._loop is None:
            return

        def signal():
            flag = self._stop_flags.get(evaluation_id)
            if flag is not None:
                flag.set()
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(signal)

    def requeue_interrupted(self) -> int:
        def work(tx: Tx) -> int:
            count = 0
            for evaluation in tx.evaluations.with_status([EvaluationStatus.RUNNING]):
                evaluation.requeue(self._clock())
                tx.evaluations.save(evaluation)
                count += 1
            return count
        return self._store.run(work)

    async def start_pending(self) -> None:
        free = self._settings.max_running - len(self._running)
        if free <= 0:
            return
        pending = await asyncio.to_thread(
            self._store.run, lambda tx: tx.evaluations.with_status([EvaluationStatus.PENDING]))
        for evaluation in pending:
            if free <= 0:
                break
            if evaluation.id in self._running:
                continue
            task = asyncio.create_task(self.run_one(evaluation.id), name=evaluation.id)
            self._running[evaluation.id] = task
            task.add_done_callback(functools.partial(self._done, evaluation.id))
            free -= 1

    def _done(self, evaluation_id: str, _: asyncio.Task) -> None:
        self._running.pop(evaluation_id, None)
        if self._wakeup is not None:
            self._wakeup.set()   # a slot is free

    # -- one evaluation -------------------------------------------------------------------

    async def run_one(self, evaluation_id: str) -> Evaluation | None:
        """Run a PENDING evaluation to its end; None if it was not PENDING (another runner
        has it, or it was cancelled). Errors end it FAILED with a message that says why."""
        evaluation = await asyncio.to_thread(self._claim, evaluation_id)
        if evaluation is None:
            return None
        self._events.publish(evaluation_id)
        stop = self._stop_flags.setdefault(evaluation_id, asyncio.Event())
        try:
            if self._client is None:
                raise Unavailable("no inference service configured")
            await asyncio.to_thread(self._check_access, evaluation)
            assert evaluation.data_uri is not None   # set when the evaluation was created
            rows = await asyncio.to_thread(read_rows, self._artifacts, evaluation.data_uri)
            tally = _Tally()
            predictions = await self._generate(evaluation, rows, tally, stop)
            return await asyncio.to_thread(self._finish, evaluation, rows, predictions, tally)
        except _Stopped:
            log.info("evaluation %s stopped: it was cancelled", evaluation_id)
            return await asyncio.to_thread(self._reload, evaluation_id)
        except FinetuneError as exc:
            return await asyncio.to_thread(self._fail, evaluation_id, exc.message)
        except asyncio.CancelledError:
            raise   # control is stopping: left RUNNING, requeued at the next start
        except Exception as exc:  # noqa: BLE001 - the evaluation fails, the runner goes on
            log.exception("evaluation %s failed", evaluation_id)
            return await asyncio.to_thread(self._fail, evaluation_id,
                                           f"internal error: {type(exc).__name__}")
        finally:
            self._stop_flags.pop(evaluation_id, None)
            self._events.publish(evaluation_id)

    def _claim(self, evaluation_id: str) -> Evaluation | None:
        def work(tx: Tx) -> Evaluation | None:
            evaluation = tx.evaluations.get(evaluation_id)
            if evaluation is None or evaluation.status is not EvaluationStatus.PENDING:
                return None
            evaluation.start(self._clock())
            return tx.evaluations.save(evaluation)
        return self._store.run(work)

    def _check_access(self, evaluation: Evaluation) -> None:
        """Privileges as of now (the user may have lost them since EvaluateModel); inference
        checks them again on every call it does not have cached."""
        def work(tx: Tx) -> None:
            access = load_access(tx, evaluation.account_id, evaluation.user_id)
            access.require(Privilege.FINETUNE, SecurableObject.account())
            if evaluation.adapter_id:
                access.require(Privilege.USAGE, SecurableObject.model(evaluation.model))
        self._store.run(work)

    async def _generate(self, evaluation: Evaluation, rows: list[dict], tally: _Tally,
                        stop: asyncio.Event) -> list[str]:
        predictions: list[str | None] = [None] * len(rows)
        queue = iter(range(len(rows)))
        flushing = asyncio.Lock()
        last_flush = self._monotonic()

        async def flush(force: bool = False) -> None:
            nonlocal last_flush
            if flushing.locked() or (not force and self._monotonic() - last_flush
                                     < self._settings.flush_interval_s):
                return
            async with flushing:
                last_flush = self._monotonic()
                still_running = await asyncio.to_thread(self._report, evaluation.id, tally)
                if still_running:
                    self._events.publish(evaluation.id)
                else:
                    stop.set()

        async def worker() -> None:
            for i in queue:
                if stop.is_set():
                    raise _Stopped()
                answer = await self._call(evaluation, i, rows[i])
                predictions[i] = prediction_text(answer.text, evaluation.task)
                tally.done += 1
                tally.prompt_tokens += answer.prompt_tokens
                tally.completion_tokens += answer.completion_tokens
                await flush()

        workers = [asyncio.create_task(worker())
                   for _ in range(min(evaluation.generation.concurrency, len(rows)) or 1)]
        stopper = asyncio.create_task(stop.wait())
        try:
            pending: set[asyncio.Task[Any]] = set(workers)
            while pending:
                done, pending = await asyncio.wait(pending | {stopper},
                                                   return_when=asyncio.FIRST_COMPLETED)
                if stopper in done:
                    raise _Stopped()
                pending.discard(stopper)
                for task in done:
                    task.result()   # the first failure ends the evaluation
        finally:
            for task in [*workers, stopper]:
                task.cancel()
            await asyncio.gather(*workers, stopper, return_exceptions=True)
        if stop.is_set():
            raise _Stopped()
        return [p or "" for p in predictions]

    async def _call(self, evaluation: Evaluation, index: int, row: dict):
        g = evaluation.generation
        call = CompletionCall(
            model=evaluation.model, prompt=row["prompt"], account_id=evaluation.account_id,
            user_id=evaluation.user_id, max_tokens=g.max_tokens, temperature=g.temperature,
            top_p=g.top_p, stop=g.stop, seed=g.seed,
            request_id=f"{evaluation.id}/{evaluation.attempts}/{index}")
        assert self._client is not None   # run_one refuses to start without one
        attempt, first_failure = 0, None
        while True:
            attempt += 1
            try:
                return await self._client.complete(call)
            except (Unavailable, ResourceExhausted) as exc:
                now = self._monotonic()
                first_failure = now if first_failure is None else first_failure
                if attempt >= self._settings.max_call_attempts and \
                        now - first_failure >= self._settings.retry_window_s:
                    raise Unavailable(f"row {index + 1}: the inference service failed "
                                      f"{attempt} times in {now - first_failure:.0f} s: "
                                      f"{exc.message}") from None
                await asyncio.sleep(min(self._settings.max_backoff_s,
                                        self._settings.retry_backoff_s * 2 ** (attempt - 1)))
            except FinetuneError as exc:
                raise type(exc)(f"row {index + 1}: {exc.message}") from None

    def _report(self, evaluation_id: str, tally: _Tally) -> bool:
        """Write progress; False when the evaluation is no longer RUNNING (cancelled)."""
        def work(tx: Tx) -> bool:
            evaluation = tx.evaluations.get(evaluation_id)
            if evaluation is None or evaluation.status is not EvaluationStatus.RUNNING:
                return False
            evaluation.report(tally.done, tally.prompt_tokens, tally.completion_tokens,
                              self._clock())
            tx.evaluations.save(evaluation)
            return True
        return self._store.run(work)

    def _finish(self, evaluation: Evaluation, rows: list[dict], predictions: list[str],
                tally: _Tally) -> Evaluation:
        references = [row["reference"] for row in rows]
        result = compute_metrics(evaluation.task, references, predictions)
        self._artifacts.write_bytes(
            evaluation_uri(self._artifacts, evaluation.id, METRICS_FILE),
            metrics_csv(result.metrics, result.labels))
        self._artifacts.write_bytes(
            evaluation_uri(self._artifacts, evaluation.id, PREDICTIONS_FILE),
            predictions_csv(rows, predictions, result.correct))

        def work(tx: Tx) -> Evaluation:
            current = tx.evaluations.get(evaluation.id)
            if current is None or current.status is not EvaluationStatus.RUNNING:
                raise _Stopped()
            current.report(tally.done, tally.prompt_tokens, tally.completion_tokens,
                           self._clock())
            current.succeed(result.metrics, result.labels, self._clock())
            return tx.evaluations.save(current)

        finished = self._store.run(work)
        log.info("evaluation %s succeeded: %s %.4f", finished.id, finished.primary_metric,
                 finished.primary_value or 0.0)
        return finished

    def _fail(self, evaluation_id: str, message: str) -> Evaluation | None:
        def work(tx: Tx) -> Evaluation | None:
            evaluation = tx.evaluations.get(evaluation_id)
            if evaluation is None or evaluation.terminal:
                return evaluation
            try:
                evaluation.fail(message[-MAX_ERROR:], self._clock())
            except IllegalEvaluationTransition:
                return evaluation
            return tx.evaluations.save(evaluation)
        failed = self._store.run(work)
        log.info("evaluation %s failed: %s", evaluation_id, message)
        return failed

    def _reload(self, evaluation_id: str) -> Evaluation | None:
        return self._store.run(lambda tx: tx.evaluations.get(evaluation_id))
