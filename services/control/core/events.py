"""Job change notifications inside one control process, for WatchFineTuningJob.

Changes happen in worker threads (RPC handlers, the reconciler); watchers wait on the event
loop. A watcher only learns "this job changed" and re-reads it, so bursts coalesce and a
watcher never sees a stale state.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator


class JobEvents:
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
