"""The usage outbox delivering over real gRPC to a ModelResolutionService on loopback that stores
usage idempotently, as control does: control down for a while, answers lost after commit, a
sender killed and restarted, a record control refuses for good."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from polling import wait_until_async

from services.inference.accounting import GrpcUsageReporter, Usage, UsageRecord
from services.inference.outbox import Backoff, OutboxStore, UsageOutbox

pytestmark = pytest.mark.integration

TOKEN = "svc-token-for-tests"


def rec(i: int, account="acct-1") -> UsageRecord:
    return UsageRecord(request_id=f"cmpl-{i:04d}", account_id=account, user_id="alice",
                       model="db.public.m", base_model="base", usage=Usage(10 + i, i))


async def until(predicate, what: str, limit_s: float = 60.0):
    """Bounded wait: a delivery that never happens fails the test instead of hanging it."""
    await wait_until_async(predicate, limit_s, what, every_s=0.02)


@pytest.fixture
async def channel(usage_control):
    async with grpc.aio.insecure_channel(usage_control.address) as ch:
        yield ch


def outbox_on(path, channel, token=TOKEN, batch_size=32):
    return UsageOutbox(OutboxStore(path), GrpcUsageReporter(channel, token, timeout_s=5),
                       Backoff(base_s=0.02, max_s=0.2), batch_size=batch_size)


async def test_control_down_for_a_while_then_everything_once(usage_control, channel, tmp_path):
    outbox = outbox_on(tmp_path / "o.sqlite3", channel)
    usage_control.usage_down = True
    outbox.start()
    try:
        for i in range(20):
            await outbox.record(rec(i))
        await until(lambda: len(usage_control.usage_calls) >= 40,  # retried while down
                    "40 ReportUsage calls while control refuses them")
        assert usage_control.usage == {}
        usage_control.usage_down = False
        await until(lambda: outbox.store.counts() == (0, 0), "the outbox to be delivered")
    finally:
        await outbox.stop(1)
    assert sorted(usage_control.usage) == [rec(i).request_id for i in range(20)]
    assert [u.prompt_tokens for u in sorted(usage_control.usage.values(),
                                            key=lambda u: u.request_id)] == [
        10 + i for i in range(20)]


async def test_a_sender_killed_midway_and_restarted_loses_and_doubles_nothing(
        usage_control, channel, tmp_path):
    path = tmp_path / "o.sqlite3"
    first = outbox_on(path, channel, batch_size=4)
    usage_control.usage_lose_acks = 5   # control commits five, their answers are lost
    for i in range(30):
        await first.record(rec(i))
    first.start()
    await until(lambda: len(usage_control.usage_calls) >= 10, "10 ReportUsage calls")
    # Killed: the task is cancelled wherever it is and the file is left as it is.
    first._task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first._task
    assert first.store.counts()[0] > 0   # killed with records still waiting
    first.store.close()

    second = outbox_on(path, channel)
    second.start()
    try:
        await until(lambda: second.store.counts() == (0, 0),
                    "the restarted outbox to deliver everything")
    finally:
        await second.stop(1)
    assert sorted(usage_control.usage) == [rec(i).request_id for i in range(30)]
    # Some records were sent twice (lost answers, the kill); control stored each once.
    assert len(usage_control.usage_calls) >= 35


async def test_a_refused_record_is_parked_and_the_rest_flow(usage_control, channel, tmp_path):
    usage_control.closed_accounts = {"gone"}
    outbox = outbox_on(tmp_path / "o.sqlite3", channel)
    await outbox.record(rec(1))
    await outbox.record(rec(2, account="gone"))
    await outbox.record(rec(3))
    assert await outbox.flush(10) == 0
    assert sorted(usage_control.usage) == ["cmpl-0001", "cmpl-0003"]
    assert outbox.store.counts() == (0, 1)
    await outbox.stop(1)


async def test_a_wrong_service_token_is_retried_not_dropped(usage_control, channel, tmp_path):
    outbox = outbox_on(tmp_path / "o.sqlite3", channel, token="wrong")
    await outbox.record(rec(1))
    assert await outbox.flush(10) == 1     # UNAUTHENTICATED: kept for a fixed token
    await outbox.stop(1)
    fixed = outbox_on(tmp_path / "o.sqlite3", channel)
    assert await fixed.flush(10) == 0
    assert list(usage_control.usage) == ["cmpl-0001"]
    await fixed.stop(1)
