"""One polling helper for every test layer: wait until a predicate holds, or fail saying what.

tests/ is on sys.path (pytest puts the directory of tests/conftest.py there), so tests import
this as `from polling import wait_until, wait_until_async`.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any


def _timeout_message(timeout_s: float, what: str, diagnose: Callable[[], Any] | None) -> str:
    message = f"timed out after {timeout_s}s waiting for {what}"
    if diagnose is not None:
        detail = diagnose()
        if detail:
            message += f"\n{detail}"
    return message


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.5,
               diagnose: Callable[[], Any] | None = None) -> Any:
    """Call `predicate` every `every_s` seconds until it returns something truthy, and return
    that value. After `timeout_s` seconds raise AssertionError naming `what`, followed by
    `diagnose()`'s text when given. Exceptions from the predicate propagate."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(_timeout_message(timeout_s, what, diagnose))
        time.sleep(every_s)


async def wait_until_async(predicate: Callable[[], Any], timeout_s: float, what: str,
                           every_s: float = 0.5,
                           diagnose: Callable[[], Any] | None = None) -> Any:
    """The async twin of wait_until: `predicate` may be sync or return an awaitable, and the
    wait between tries does not block the event loop."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(_timeout_message(timeout_s, what, diagnose))
        await asyncio.sleep(every_s)
