"""The durable usage outbox: a record is written to a local SQLite file before its answer leaves,
and a background task delivers it to control, deleting it only once control has it.

Why this is exact across crashes:
- A completion's record is committed (WAL, synchronous=FULL) before the caller gets the end of
  the answer, so no answered request is without a row here.
- A row is deleted only after ReportUsage succeeded. A crash between control's commit and our
  delete sends the row again after the restart; control ignores a request_id it already has,
  and the id is the row's primary key, so it is the same on every retry.
- Delivery failures are retried with capped exponential backoff for as long as it takes; only
  a permanent refusal (UsageRejected) parks a row as `dead`, kept for an operator, never lost.

One file per process is the intended use; two processes sharing one is still safe (both may
send a row, control counts it once).

The same file keeps, for a day, the answers to requests the caller named with its own
request_id, written in the usage row's transaction: a retry of such a request is answered from
here, so it is neither generated nor billed twice, even when the first answer was lost with the
process that made it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from services.common.waiting import run_for, wait_event
from services.inference.accounting import (
    Answer,
    KeptAnswer,
    Usage,
    UsageRecord,
    UsageRejected,
    UsageReporter,
)

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage_outbox (
    request_id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    model TEXT NOT NULL,
    base_model TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    dead INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS usage_outbox_due ON usage_outbox (dead, next_attempt_at);
CREATE TABLE IF NOT EXISTS answers (
    account_id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    text TEXT NOT NULL,
    finish_reason TEXT NOT NULL,
    usage_id TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (account_id, request_id)
);
CREATE INDEX IF NOT EXISTS answers_age ON answers (created_at);
"""
# How long a named request's answer is kept for its retries (as idempotency keys usually are).
ANSWER_RETENTION_S = 24 * 3600
_PRUNE_EVERY_S = 600

_COLUMNS = ("request_id, account_id, user_id, model, base_model, prompt_tokens, "
            "completion_tokens, attempts")


@dataclass(frozen=True)
class PendingUsage:
    record: UsageRecord
    attempts: int


class OutboxStore:
    """The SQLite file. Thread-safe; every method is one short transaction (call from a thread)."""

    def __init__(self, path: Path, answer_retention_s: float = ANSWER_RETENTION_S):
        self.path = Path(path)
        self._retention_s = answer_retention_s
        self._pruned_at = 0.0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit: each statement is its own transaction, durable when it returns.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=30)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: fsync the WAL on every commit, so a record survives a machine crash too,
            # not only a killed process.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)

    def add(self, record: UsageRecord, now: float) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")   # the row and its answer, or neither
            try:
                # OR IGNORE: the id is unique per generation; a repeated add changes nothing.
                self._db.execute(
                    "INSERT OR IGNORE INTO usage_outbox (request_id, account_id, user_id, "
                    "model, base_model, prompt_tokens, completion_tokens, created_at, "
                    "next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (record.request_id, record.account_id, record.user_id, record.model,
                     record.base_model, record.usage.prompt_tokens,
                     record.usage.completion_tokens, now, now))
                if (answer := record.answer) is not None:
                    self._db.execute(
                        "INSERT OR REPLACE INTO answers (account_id, request_id, fingerprint, "
                        "text, finish_reason, usage_id, prompt_tokens, completion_tokens, "
                        "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (record.account_id, answer.request_id, answer.fingerprint, answer.text,
                         answer.finish_reason, record.request_id, record.usage.prompt_tokens,
                         record.usage.completion_tokens, now))
                if now - self._pruned_at >= _PRUNE_EVERY_S:
                    self._db.execute("DELETE FROM answers WHERE created_at < ?",
                                     (now - self._retention_s,))
                    self._pruned_at = now
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def answered(self, account_id: str, request_id: str, now: float) -> KeptAnswer | None:
        with self._lock:
            row = self._db.execute(
                "SELECT fingerprint, text, finish_reason, usage_id, prompt_tokens, "
                "completion_tokens FROM answers WHERE account_id = ? AND request_id = ? "
                "AND created_at >= ?", (account_id, request_id, now - self._retention_s)
            ).fetchone()
        if row is None:
            return None
        return KeptAnswer(Answer(request_id, row[0], row[1], row[2]), usage_id=row[3],
                          usage=Usage(row[4], row[5]))

    def due(self, now: float, limit: int) -> list[PendingUsage]:
        """Rows to send now, oldest first (now=inf: every live row, whatever its backoff)."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM usage_outbox WHERE dead = 0 AND next_attempt_at <= ? "
                "ORDER BY next_attempt_at, created_at LIMIT ?", (now, limit)).fetchall()
        return [PendingUsage(UsageRecord(request_id=r[0], account_id=r[1], user_id=r[2],
                                         model=r[3], base_model=r[4], usage=Usage(r[5], r[6])),
                             attempts=r[7]) for r in rows]

    def next_attempt_at(self) -> float | None:
        with self._lock:
            (at,) = self._db.execute(
                "SELECT MIN(next_attempt_at) FROM usage_outbox WHERE dead = 0").fetchone()
        return at

    def delete(self, request_ids: list[str]) -> None:
        if not request_ids:
            return
        with self._lock:
            self._db.executemany("DELETE FROM usage_outbox WHERE request_id = ?",
                                 [(i,) for i in request_ids])

    def defer(self, request_id: str, next_attempt_at: float, error: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE usage_outbox SET attempts = attempts + 1, next_attempt_at = ?, "
                "last_error = ? WHERE request_id = ?", (next_attempt_at, error[:500], request_id))

    def bury(self, request_id: str, error: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE usage_outbox SET attempts = attempts + 1, dead = 1, last_error = ? "
                "WHERE request_id = ?", (error[:500], request_id))

    def counts(self) -> tuple[int, int]:
        """(rows waiting for delivery, rows control refused for good)."""
        with self._lock:
            live, dead = self._db.execute(
                "SELECT COALESCE(SUM(dead = 0), 0), COALESCE(SUM(dead = 1), 0) "
                "FROM usage_outbox").fetchone()
        return live, dead

    def close(self) -> None:
        with self._lock:
            self._db.close()


@dataclass(frozen=True)
class Backoff:
    """Delay before the n-th retry: base * 2**(n-1), capped, times a jitter in [0.5, 1]."""

    base_s: float = 0.5
    max_s: float = 30.0

    def delay(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        raw = min(self.max_s, self.base_s * 2 ** max(0, attempt - 1))
        return raw * (0.5 + 0.5 * rng())


class UsageOutbox:
    """The UsageLedger of the service: `record` writes durably, a background task delivers.

    `start()` begins delivery (rows left by an earlier run go first), `stop()` tries once more
    within a time limit and closes the file; whatever is left is sent by the next start.
    """

    def __init__(self, store: OutboxStore, reporter: UsageReporter,
                 backoff: Backoff = Backoff(), batch_size: int = 32,
                 clock: Callable[[], float] = time.time):
        self._store = store
        self._reporter = reporter
        self._backoff = backoff
        self._batch_size = batch_size
        self._clock = clock
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._round = asyncio.Lock()   # one delivery round at a time (loop, flush)
        self.delivered = 0             # records control confirmed, in this process

    @property
    def store(self) -> OutboxStore:
        return self._store

    async def record(self, record: UsageRecord) -> None:
        await asyncio.to_thread(self._store.add, record, self._clock())
        self._wake.set()

    async def answered(self, account_id: str, request_id: str) -> KeptAnswer | None:
        return await asyncio.to_thread(self._store.answered, account_id, request_id,
                                       self._clock())

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(),
                                                                name="usage-outbox")

    async def flush(self, timeout_s: float | None = None) -> int:
        """Try every waiting row now, ignoring backoff, until none is left or one round fails
        to deliver anything; returns how many rows are still waiting."""
        async def rounds():
            while True:
                sent, failed = await self._deliver_round(now=float("inf"))
                if failed or not sent:
                    return

        await run_for(rounds(), timeout_s)
        live, _ = await asyncio.to_thread(self._store.counts)
        return live

    async def stop(self, flush_timeout_s: float = 5.0) -> int:
        """Stop delivery, give waiting rows one last chance, close; returns rows left waiting."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        left = await self.flush(flush_timeout_s)
        if left:
            log.warning("%d usage records wait in %s for the next start", left,
                        self._store.path)
        self._store.close()
        return left

    async def _run(self) -> None:
        while True:
            try:
                sent, failed = await self._deliver_round(now=self._clock())
                if sent or failed:
                    continue  # more may be due; a fully failed round deferred its rows
                self._wake.clear()
                next_at = await asyncio.to_thread(self._store.next_attempt_at)
                timeout = None if next_at is None else max(0.0, next_at - self._clock())
                await wait_event(self._wake, timeout)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - e.g. the disk: keep the loop alive, retry later
                log.exception("usage outbox delivery failed; retrying")
                await asyncio.sleep(self._backoff.max_s)

    async def _deliver_round(self, now: float) -> tuple[int, int]:
        """Send one batch of due rows concurrently; returns (delivered, failed)."""
        async with self._round:
            rows = await asyncio.to_thread(self._store.due, now, self._batch_size)
            if not rows:
                return 0, 0
            errors = await asyncio.gather(*(self._send(r) for r in rows))
            delivered = [r.record.request_id
                         for r, e in zip(rows, errors, strict=True) if e is None]
            await asyncio.to_thread(self._store.delete, delivered)
            self.delivered += len(delivered)
            failed = [e for e in errors if e is not None]
            if failed:  # one line per round, not per row: control being down is one event
                log.warning("%d usage records not delivered (will retry), first error: %s",
                            len(failed), failed[0])
            return len(delivered), len(failed)

    async def _send(self, row: PendingUsage) -> str | None:
        """Deliver one row; None on success, else why not (the row is deferred or buried)."""
        rid = row.record.request_id
        try:
            await self._reporter.report(row.record)
            return None
        except asyncio.CancelledError:
            raise
        except UsageRejected as exc:
            log.error("control refused usage record %s for good, kept as dead: %s", rid, exc)
            await asyncio.to_thread(self._store.bury, rid, str(exc))
            return str(exc)
        except Exception as exc:  # noqa: BLE001 - any other failure is retried
            delay = self._backoff.delay(row.attempts + 1)
            await asyncio.to_thread(self._store.defer, rid, self._clock() + delay, repr(exc))
            return repr(exc)
