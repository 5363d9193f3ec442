"""The shared polling helper: first truthy value, timeout message, diagnostics, async twin."""

import pytest
from polling import wait_until, wait_until_async


def counter_until(n, value="done"):
    calls = {"n": 0}

    def predicate():
        calls["n"] += 1
        return value if calls["n"] >= n else None

    return predicate, calls


def test_returns_the_first_truthy_value():
    predicate, calls = counter_until(3, value={"state": "ready"})
    assert wait_until(predicate, 5, "ready", every_s=0.001) == {"state": "ready"}
    assert calls["n"] == 3


def test_times_out_naming_what_it_waited_for():
    with pytest.raises(AssertionError, match=r"timed out after 0.05s waiting for the node") as e:
        wait_until(lambda: 0, 0.05, "the node", every_s=0.01)
    assert "\n" not in str(e.value)


def test_the_diagnose_text_is_in_the_message():
    with pytest.raises(AssertionError) as e:
        wait_until(lambda: [], 0.02, "the job", every_s=0.01, diagnose=lambda: "logs: boom")
    assert str(e.value) == "timed out after 0.02s waiting for the job\nlogs: boom"


def test_predicate_exceptions_propagate():
    def predicate():
        raise KeyError("gone")

    with pytest.raises(KeyError, match="gone"):
        wait_until(predicate, 5, "never", every_s=0.001)


async def test_async_twin_takes_sync_and_async_predicates():
    predicate, _ = counter_until(2, value=7)
    assert await wait_until_async(predicate, 5, "seven", every_s=0.001) == 7

    calls = {"n": 0}

    async def async_predicate():
        calls["n"] += 1
        return "up" if calls["n"] >= 3 else ""

    assert await wait_until_async(async_predicate, 5, "up", every_s=0.001) == "up"
    assert calls["n"] == 3


async def test_async_twin_times_out_with_diagnostics_and_propagates_errors():
    async def never():
        return False

    with pytest.raises(AssertionError) as e:
        await wait_until_async(never, 0.02, "the stack", every_s=0.01, diagnose=lambda: "why")
    assert str(e.value) == "timed out after 0.02s waiting for the stack\nwhy"

    async def broken():
        raise RuntimeError("bad")

    with pytest.raises(RuntimeError, match="bad"):
        await wait_until_async(broken, 5, "never", every_s=0.001)
