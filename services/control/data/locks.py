"""A readers-writer lock per account: DuckDB refuses to attach a file that another database
instance in this process has open, so loads (writers) and queries (readers) must not overlap."""

from __future__ import annotations

import threading
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator


class ReadWriteLock:
    """Many readers or one writer; a waiting writer blocks new readers (no writer starvation)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writer and not self._writers_waiting)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            self._cond.wait_for(lambda: not self._writer and self._readers == 0)
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class AccountLocks:
    def __init__(self):
        self._guard = threading.Lock()
        self._locks: dict[str, ReadWriteLock] = defaultdict(ReadWriteLock)

    def __getitem__(self, account_id: str) -> ReadWriteLock:
        with self._guard:
            return self._locks[account_id]
