"""record_once: a create retried under a request id, and one that loses a race to its twin."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import IntegrityError

from services.control.core.idempotency import earlier, record_once


class FakeStore:
    """Runs the work against a dict of request id -> record (the unit-test Store stand-in)."""

    def __init__(self, rows: dict[str, str]):
        self.rows = rows

    def run(self, work):
        return work(self.rows)


def find(tx, request_id):
    return tx.get(request_id)


def lost_race():
    raise IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed"))


def test_earlier_is_none_without_a_request_id():
    store = FakeStore({"": "anything"})
    assert earlier(store, None, find) is None
    assert earlier(store, "", find) is None
    assert earlier(FakeStore({"r1": "job-1"}), "r1", find) == "job-1"


def test_the_first_call_records_and_discards_nothing():
    discarded = []
    got = record_once(lambda: "job-1", lambda: discarded.append(1), "r1", find, FakeStore({}))
    assert got == "job-1" and discarded == []


def test_a_lost_race_under_the_same_request_id_returns_the_winner():
    discarded = []
    got = record_once(lost_race, lambda: discarded.append(1), "r1", find,
                      FakeStore({"r1": "job-winner"}))
    assert got == "job-winner"
    assert discarded == [1]   # the loser's files are removed


@pytest.mark.parametrize("request_id", [None, "r1"])
def test_another_constraint_is_raised_for_the_caller_to_explain(request_id):
    discarded = []
    with pytest.raises(IntegrityError):
        record_once(lost_race, lambda: discarded.append(1), request_id, find, FakeStore({}))
    assert discarded == [1]


def test_any_other_failure_discards_and_propagates():
    discarded = []

    def fails():
        raise OSError("disk full")

    with pytest.raises(OSError):
        record_once(fails, lambda: discarded.append(1), "r1", find, FakeStore({"r1": "x"}))
    assert discarded == [1]
