"""In-process change notifications for WatchFineTuningJob and WatchEvaluation: "job (or
evaluation) X changed" within one control process. Not the stored event log a job keeps
(services.control.domain.events, ListFineTuningJobEvents): nothing here is persisted.

Changes happen in worker threads (RPC handlers, the reconciler, the evaluation runner);
watchers wait on the event loop. A watcher only learns "this resource changed" and re-reads it,
so bursts coalesce and a watcher never sees a stale state.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator


class ChangeNotifier:
    """Subscribers per resource id (a job's or an evaluation's); publish from any thread."""

    def __init__(self):
        self._lock = threading.Lock()
        self._waiters: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = \
            defaultdict(set)

    @contextmanager
    def subscribe(self, job_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever the job changes; subscribe before reading to miss nothing."""
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._waiters[job_id].add(entry)
        try:
            yield entry[1]
        finally:
            with self._lock:
                self._waiters[job_id].discard(entry)
                if not self._waiters[job_id]:
                    del self._waiters[job_id]

    def publish(self, job_id: str) -> None:
        """Thread-safe: may be called from any thread."""
        with self._lock:
            entries = list(self._waiters.get(job_id, ()))
        for loop, event in entries:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that watcher's loop has closed
                pass
