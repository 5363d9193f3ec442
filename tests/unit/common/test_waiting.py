"""A background loop waiting with a timeout must stop when cancelled, even when the cancel
arrives as its event is set (Python 3.11's asyncio.wait_for loses that cancel)."""

import asyncio

from services.common.waiting import run_for, wait_event


async def test_wait_event_reports_set_or_timeout():
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 10) is True


async def test_a_cancel_that_arrives_with_the_event_stops_the_loop():
    event = asyncio.Event()
    rounds = 0

    async def loop():
        nonlocal rounds
        while True:
            await wait_event(event, 10)
            event.clear()
            rounds += 1

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)          # the loop is waiting
    event.set()
    task.cancel()                   # same tick as the set: the race wait_for loses
    done, _ = await asyncio.wait({task}, timeout=5)   # a hang guard only
    assert task in done and task.cancelled()
    assert rounds == 0


async def test_run_for_returns_the_result_or_gives_up():
    async def answer():
        return 42

    assert await run_for(answer(), 1) == (True, 42)
    assert await run_for(asyncio.sleep(10), 0.01) == (False, None)
