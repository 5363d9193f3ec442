"""The durable usage outbox on a real SQLite file, with a fake ReportUsage: delivery, retries with
backoff, permanent refusals, restarts, and duplicates that control's idempotency absorbs."""

from __future__ import annotations

import sqlite3
import time

import pytest
from polling import wait_until_async

from services.inference.accounting import Usage, UsageRecord
from services.inference.outbox import Backoff, OutboxStore, UsageOutbox


class Clock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self):
        return self.now


class IdempotentControl:
    """ReportUsage as control does it: one row per request_id, whatever arrives twice."""

    def __init__(self):
        self.rows: dict[str, UsageRecord] = {}
        self.calls: list[UsageRecord] = []
        self.down = False
        self.lose_acks = 0   # store the record but fail the call, this many times

    async def report(self, record):
        self.calls.append(record)
        if self.down:
            raise ConnectionError("control is down")
        self.rows.setdefault(record.request_id, record)
        if self.lose_acks:
            self.lose_acks -= 1
            raise ConnectionError("the connection dropped before the answer")


def rec(i: int, prompt=5, completion=7) -> UsageRecord:
    return UsageRecord(request_id=f"cmpl-{i}", account_id="acct", user_id="u1", model="m",
                       base_model="base", usage=Usage(prompt, completion))


@pytest.fixture
def path(tmp_path):
    return tmp_path / "state" / "usage-outbox.sqlite3"


@pytest.fixture
def control():
    return IdempotentControl()


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def outboxes(path, control, clock):
    made = []

    def make(**kw):
        kw.setdefault("clock", clock)
        kw.setdefault("backoff", Backoff(base_s=1, max_s=8))
        outbox = UsageOutbox(OutboxStore(path), control, **kw)
        made.append(outbox)
        return outbox

    yield make
    for outbox in made:
        outbox.store.close()


async def test_records_are_delivered_once_and_then_deleted(outboxes, control):
    outbox = outboxes()
    for i in range(3):
        await outbox.record(rec(i))
    assert outbox.store.counts() == (3, 0)
    assert await outbox.flush() == 0
    assert sorted(control.rows) == ["cmpl-0", "cmpl-1", "cmpl-2"]
    assert control.rows["cmpl-1"] == rec(1)
    assert len(control.calls) == 3 and outbox.delivered == 3
    assert outbox.store.counts() == (0, 0)


async def test_a_record_is_on_disk_when_record_returns(outboxes, path):
    outbox = outboxes()
    await outbox.record(rec(1, prompt=11, completion=22))
    # Another connection (as after a crash of this process) sees the committed row.
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT request_id, prompt_tokens, completion_tokens "
                          "FROM usage_outbox").fetchall() == [("cmpl-1", 11, 22)]


async def test_the_same_record_twice_is_one_row(outboxes):
    outbox = outboxes()
    await outbox.record(rec(1))
    await outbox.record(rec(1))
    assert outbox.store.counts() == (1, 0)


async def test_failed_deliveries_back_off_and_are_retried(outboxes, control, clock):
    outbox = outboxes()
    control.down = True
    await outbox.record(rec(1))
    assert await outbox._deliver_round(clock()) == (0, 1)
    # Backed off: not due again until the delay has passed (1 s base, jitter in [0.5, 1]).
    assert await outbox._deliver_round(clock()) == (0, 0)
    next_at = outbox.store.next_attempt_at()
    assert clock() + 0.5 <= next_at <= clock() + 1
    control.down = False
    clock.now = next_at
    assert await outbox._deliver_round(clock()) == (1, 0)
    assert list(control.rows) == ["cmpl-1"] and len(control.calls) == 2


def test_backoff_doubles_up_to_its_cap():
    backoff = Backoff(base_s=0.5, max_s=30)
    assert [backoff.delay(n, rng=lambda: 1.0) for n in (1, 2, 3, 4)] == [0.5, 1, 2, 4]
    assert backoff.delay(20, rng=lambda: 1.0) == 30
    assert backoff.delay(20, rng=lambda: 0.0) == 15


async def test_a_permanent_refusal_is_kept_as_dead_and_not_retried(path, clock, fakes):
    reporter = fakes.RecordingReporter()
    reporter.reject = True
    outbox = UsageOutbox(OutboxStore(path), reporter, clock=clock)
    await outbox.record(rec(1))
    assert await outbox.flush() == 0
    assert outbox.store.counts() == (0, 1)   # not lost: parked for an operator
    clock.now += 3600
    await outbox.flush()
    assert len(reporter.calls) == 1
    outbox.store.close()


async def test_a_restart_delivers_what_a_crash_left(outboxes, control, path):
    first = outboxes()
    control.down = True
    for i in range(5):
        await first.record(rec(i))
    await first.flush()
    # The process dies here: no stop(), nothing delivered. A new process opens the same file.
    control.down = False
    second = outboxes()
    assert second.store.counts() == (5, 0)
    assert await second.flush() == 0
    assert sorted(control.rows) == [f"cmpl-{i}" for i in range(5)]


async def test_a_lost_acknowledgement_resends_the_same_record_and_control_counts_it_once(
        outboxes, control):
    outbox = outboxes()
    control.lose_acks = 2
    await outbox.record(rec(1))
    await outbox.record(rec(2))
    assert await outbox.flush() == 2          # control has both, we do not know it yet
    assert await outbox.flush() == 0
    assert len(control.calls) == 4
    # The retries carried the very same records (same id, same counts): stored once each.
    assert [c for c in control.calls if c.request_id == "cmpl-1"] == [rec(1), rec(1)]
    assert sorted(control.rows) == ["cmpl-1", "cmpl-2"]


async def test_the_background_task_delivers_without_being_asked(outboxes, control):
    outbox = outboxes(clock=time.time)
    outbox.start()
    try:
        await outbox.record(rec(1))
        # Bounded wait: a sender that never delivers fails the test instead of hanging it.
        await wait_until_async(lambda: control.rows, 5, "the background task to deliver",
                               every_s=0.01)
        assert list(control.rows) == ["cmpl-1"]
    finally:
        await outbox.stop(flush_timeout_s=1)


async def test_the_background_task_retries_after_control_comes_back(outboxes, control):
    outbox = outboxes(clock=time.time, backoff=Backoff(base_s=0.01, max_s=0.05))
    control.down = True
    outbox.start()
    try:
        await outbox.record(rec(1))
        await wait_until_async(lambda: len(control.calls) >= 3, 5,
                               "three delivery attempts while control is down", every_s=0.01)
        assert len(control.calls) >= 3 and not control.rows  # retried while down
        control.down = False
        await wait_until_async(lambda: control.rows, 5,
                               "delivery after control came back", every_s=0.01)
        assert list(control.rows) == ["cmpl-1"]
    finally:
        await outbox.stop(flush_timeout_s=1)


async def test_stop_keeps_what_it_could_not_deliver(outboxes, control, path):
    outbox = outboxes()
    control.down = True
    await outbox.record(rec(1))
    outbox.start()
    assert await outbox.stop(flush_timeout_s=1) == 1
    control.down = False
    again = outboxes()
    assert await again.flush() == 0 and list(control.rows) == ["cmpl-1"]
