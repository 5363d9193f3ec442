"""Creates a caller may retry under a request_id: the first call creates, every retry (or a
concurrent twin that lost the unique constraint) gets what the first one created.
"""

from __future__ import annotations

from typing import Callable, TypeVar

from sqlalchemy.exc import IntegrityError

from services.control.store.database import Store, Tx

T = TypeVar("T")


def earlier(store: Store, request_id: str | None,
            find: Callable[[Tx, str], T | None]) -> T | None:
    """What an earlier call under `request_id` created (`find` looks it up in the caller's
    account), or None; None without a request id."""
    if not request_id:
        return None
    return store.run(lambda tx: find(tx, request_id))


def record_once(record: Callable[[], T], discard: Callable[[], None], request_id: str | None,
                find: Callable[[Tx, str], T | None], store: Store) -> T:
    """`record()`'s result; when it fails, `discard()` removes what was written for it first.
    A unique constraint lost to a concurrent call under the same request id returns that
    call's record (callers tell it from their own by its id); any other IntegrityError is
    raised again for the caller to explain."""
    try:
        return record()
    except IntegrityError:
        discard()
        winner = earlier(store, request_id, find)
        if winner is None:
            raise
        return winner
    except BaseException:
        discard()
        raise
