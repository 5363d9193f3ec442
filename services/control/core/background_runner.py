"""What evaluations and batch generations share as background work in control: a loop that
claims PENDING items (at most `max_running` at once, woken when one is created), stop signals
for cancels, requeueing what a previous process left RUNNING, and the inference calls retried
through an inference service that is restarting.

Subclasses say which repository holds their items and how one runs (`run_one`).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from services.common.errors import FinetuneError, ResourceExhausted, Unavailable
from services.common.waiting import wait_event
from services.control.core.clock import Clock, utc_now
from services.control.core.notifier import ChangeNotifier
from services.control.dispatch.inference import CompletionAnswer, CompletionCall, CompletionClient
from services.control.domain.evaluations import EvaluationStatus, IllegalEvaluationTransition
from services.control.store.database import Store, Tx

log = logging.getLogger(__name__)

MAX_ERROR = 4000   # characters of an error message kept


@dataclass(frozen=True)
class RunnerSettings:
    poll_interval_s: float = 2.0      # a backstop: new items wake the runner at once
    flush_interval_s: float = 1.0     # progress writes, at most this often
    max_running: int = 2              # items at once (each with its own concurrency)
    # A row's call is retried on UNAVAILABLE / RESOURCE_EXHAUSTED at least this many times and
    # for at least `retry_window_s` after its first failure: an inference service that is
    # (re)starting its engine answers UNAVAILABLE for a minute or more, which must not fail
    # the work (nor the fine-tuning job waiting on an evaluation).
    max_call_attempts: int = 6
    retry_window_s: float = 300.0
    retry_backoff_s: float = 1.0      # doubling each time, up to max_backoff_s
    max_backoff_s: float = 10.0


class Stopped(Exception):
    """The item was cancelled (or removed) while it ran."""


class BackgroundRunner(abc.ABC):
    what = "item"                     # for logs: "evaluation", "generation"

    def __init__(self, store: Store, client: CompletionClient | None, events: ChangeNotifier,
                 settings: RunnerSettings = RunnerSettings(), clock: Clock = utc_now,
                 monotonic: Callable[[], float] = time.monotonic):
        self._store = store
        self._client = client
        self._events = events
        self._settings = settings
        self._clock = clock
        self._monotonic = monotonic
        self._running: dict[str, asyncio.Task] = {}
        self._stop_flags: dict[str, asyncio.Event] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None

    @abc.abstractmethod
    def _items(self, tx: Tx) -> Any:
        """The repository (with_status, save) of this runner's items."""

    @abc.abstractmethod
    async def _execute(self, item: Any, stop: asyncio.Event) -> Any:
        """Run a claimed (RUNNING) item to its end and return it; raise Stopped when `stop` is
        set (it was cancelled), a FinetuneError to fail it with its message."""

    async def run_one(self, item_id: str) -> Any:
        """Run a PENDING item to its end; None if it was not PENDING (another runner has it,
        or it was cancelled). Errors end it FAILED with a message that says why."""
        item = await asyncio.to_thread(self._claim, item_id)
        if item is None:
            return None
        self._events.publish(item_id)
        stop = self._stop_flags.setdefault(item_id, asyncio.Event())
        try:
            return await self._execute(item, stop)
        except Stopped:
            log.info("%s %s stopped: it was cancelled", self.what, item_id)
            return await asyncio.to_thread(self._reload, item_id)
        except FinetuneError as exc:
            return await asyncio.to_thread(self._fail, item_id, exc.message)
        except asyncio.CancelledError:
            raise   # control is stopping: left RUNNING, requeued at the next start
        except Exception as exc:  # noqa: BLE001 - the item fails, the runner goes on
            log.exception("%s %s failed", self.what, item_id)
            return await asyncio.to_thread(self._fail, item_id,
                                           f"internal error: {type(exc).__name__}")
        finally:
            self._stop_flags.pop(item_id, None)
            self._events.publish(item_id)

    def _claim(self, item_id: str) -> Any:
        def work(tx: Tx):
            items = self._items(tx)
            item = items.get(item_id)
            if item is None or item.status is not EvaluationStatus.PENDING:
                return None
            item.start(self._clock())
            return items.save(item)
        return self._store.run(work)

    def _fail(self, item_id: str, message: str) -> Any:
        def work(tx: Tx):
            items = self._items(tx)
            item = items.get(item_id)
            if item is None or item.terminal:
                return item
            try:
                item.fail(message[-MAX_ERROR:], self._clock())
            except IllegalEvaluationTransition:
                return item
            return items.save(item)
        failed = self._store.run(work)
        log.info("%s %s failed: %s", self.what, item_id, message)
        return failed

    def _reload(self, item_id: str) -> Any:
        return self._store.run(lambda tx: self._items(tx).get(item_id))

    async def run(self) -> None:
        """Requeue what a previous process left running, then run items forever."""
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        requeued = await asyncio.to_thread(self.requeue_interrupted)
        if requeued:
            log.info("%d interrupted %s(s) will run again", requeued, self.what)
        try:
            while True:
                try:
                    await self.start_pending()
                except Exception:  # noqa: BLE001 - one bad round must not stop the runner
                    log.exception("starting %ss failed", self.what)
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
        """Thread-safe: a new item is waiting."""
        if self._loop is not None and self._wakeup is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._wakeup.set)

    def stop(self, item_id: str) -> None:
        """Thread-safe: the item was cancelled; stop its calls now, not at the next progress
        write."""
        if self._loop is None:
            return

        def signal():
            flag = self._stop_flags.get(item_id)
            if flag is not None:
                flag.set()
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(signal)

    def requeue_interrupted(self) -> int:
        def work(tx: Tx) -> int:
            items = self._items(tx)
            count = 0
            for item in items.with_status([EvaluationStatus.RUNNING]):
                item.requeue(self._clock())
                items.save(item)
                count += 1
            return count
        return self._store.run(work)

    async def start_pending(self) -> None:
        free = self._settings.max_running - len(self._running)
        if free <= 0:
            return
        pending = await asyncio.to_thread(
            self._store.run, lambda tx: self._items(tx).with_status([EvaluationStatus.PENDING]))
        for item in pending:
            if free <= 0:
                break
            if item.id in self._running:
                continue
            task = asyncio.create_task(self.run_one(item.id), name=item.id)
            self._running[item.id] = task
            task.add_done_callback(functools.partial(self._done, item.id))
            free -= 1

    def _done(self, item_id: str, _: asyncio.Task) -> None:
        self._running.pop(item_id, None)
        if self._wakeup is not None:
            self._wakeup.set()   # a slot is free

    async def _run_workers(self, indices: list[int], concurrency: int,
                           one: Callable[[int], Awaitable[None]], stop: asyncio.Event) -> None:
        """`one(i)` for every index, on up to `concurrency` tasks, until all are done; the first
        failure is raised, and `stop` raises Stopped. Either way every task is cancelled and
        awaited before this returns, so nothing runs on behind the caller's cleanup."""
        queue = iter(indices)

        async def worker() -> None:
            for i in queue:
                if stop.is_set():
                    raise Stopped()
                await one(i)

        workers = [asyncio.create_task(worker())
                   for _ in range(min(concurrency, len(indices)) or 1)]
        stopper = asyncio.create_task(stop.wait())
        try:
            pending: set[asyncio.Task[Any]] = set(workers)
            while pending:
                done, pending = await asyncio.wait(pending | {stopper},
                                                   return_when=asyncio.FIRST_COMPLETED)
                if stopper in done:
                    break
                pending.discard(stopper)
                for task in done:
                    task.result()   # the first failure ends the run
        finally:
            for task in [*workers, stopper]:
                task.cancel()
            await asyncio.gather(*workers, stopper, return_exceptions=True)
        if stop.is_set():
            raise Stopped()

    async def _complete(self, call: CompletionCall, index: int) -> CompletionAnswer:
        """One row's COMPLETE, retried while inference is unavailable or full; other errors
        (and the last retry's) are raised with the row's number."""
        if self._client is None:
            raise Unavailable("no inference service configured")
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
