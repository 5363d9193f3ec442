"""Waiting with a timeout that never loses a cancellation.

Python 3.11's `asyncio.wait_for` swallows a `cancel()` that arrives as the awaited event is set
(cpython gh-86296): a background loop cancelled at that moment runs on, and whoever awaits it
to stop (ControlApp.stop) hangs. `asyncio.timeout` does not have that race.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, TypeVar

T = TypeVar("T")


async def wait_event(event: asyncio.Event, timeout_s: float | None) -> bool:
    """Wait until `event` is set or `timeout_s` passes; True if it was set."""
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def run_for(awaitable: Awaitable[T], timeout_s: float | None) -> tuple[bool, T | None]:
    """Run `awaitable` for at most `timeout_s`: (finished, its result)."""
    try:
        async with asyncio.timeout(timeout_s):
            return True, await awaitable
    except TimeoutError:
        return False, None
