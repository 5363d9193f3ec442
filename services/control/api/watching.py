"""The server-streaming Watch RPCs (jobs, evaluations): send the resource, then each visible
change, until it reaches a terminal state."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Awaitable, Callable, TypeVar

from google.protobuf.message import Message

from services.common.waiting import wait_event
from services.control.core.notifier import ChangeNotifier

T = TypeVar("T")


async def watch(events: ChangeNotifier, resource_id: str, load: Callable[[], T],
                to_message: Callable[[T], Awaitable[Message]], terminal: Callable[[T], bool],
                poll_s: float) -> AsyncIterator[Message]:
    """`load` (blocking, run in a worker thread) re-reads the resource whenever this process
    signals a change and at least every `poll_s`, for changes made by another control replica."""
    with events.subscribe(resource_id) as changed:
        current = await asyncio.to_thread(load)
        last = None
        while True:
            message = await to_message(current)
            if message != last:  # bookkeeping the caller cannot see is not a change
                yield message
                last = message
            if terminal(current):
                return
            await wait_event(changed, poll_s)
            changed.clear()
            current = await asyncio.to_thread(load)
