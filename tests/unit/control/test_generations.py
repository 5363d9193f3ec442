"""GenerateText and its runner against a fake inference service: the table it writes,
validation, privileges, row errors, cancel, and resuming after control dies mid-run without
generating a saved row twice."""

import asyncio

import pytest
from control_testbed import load_rows, new_user
from evaluation_testbed import build_control, control, fake  # noqa: F401

from services.common.errors import (AlreadyExists, InvalidArgument, NotFound,
                                    PermissionDenied, Unavailable)
from services.control.core.generations import GenerateText
from services.control.domain.evaluations import EvaluationStatus, RequestedGeneration
from services.control.domain.generations import OUTPUT_COLUMNS


@pytest.fixture
def tickets(control, admin):
    load_rows(control, admin.account_id, "tickets",
              [{"n": str(i), "prompt": f"ticket {i}", "queue": "q"} for i in range(6)])
    return "SELECT n::INTEGER AS n, prompt, queue FROM tickets ORDER BY n"


def generate(control, principal, query, into="public.public.answers", model="tiny-base", **kw):
    return control.generations.create(principal, GenerateText(model=model, query=query,
                                                              into=into, **kw))


def table_rows(control, account_id, sql):
    with control.catalog.query(account_id, sql) as result:
        return result.columns, [row for batch in result.batches() for row in batch]


def reload(control, generation):
    return control.store.run(lambda tx: tx.generations.get(generation.id))


async def test_the_table_holds_the_input_columns_then_the_answers(control, admin, tickets,
                                                                  fake):
    fake.answers = {f"ticket {i}": f"answer {i}" for i in range(6)}
    created = generate(control, admin, tickets)
    assert created.status is EvaluationStatus.PENDING and created.rows == 6
    assert created.id.startswith("gen_") and created.options.max_tokens == 256

    done = await control.generation_runner.run_one(created.id)
    assert done.status is EvaluationStatus.SUCCEEDED and done.progress == 1.0
    assert (done.rows_done, done.rows_failed) == (6, 0)
    assert (done.prompt_tokens, done.completion_tokens) == (30, 12)
    columns, rows = table_rows(control, admin.account_id,
                               "SELECT * FROM public.public.answers ORDER BY n")
    assert [c for c, _ in columns] == ["n", "prompt", "queue", *OUTPUT_COLUMNS]
    assert dict(columns)["n"] == "INTEGER"   # the query's types are kept
    assert rows[4] == (4, "ticket 4", "q", "answer 4", "stop", 5, 2, None)
    # one call per row, each naming its row: inference bills the row once under that id
    assert sorted(c.request_id for c in fake.calls) == sorted(f"{done.id}/{i}"
                                                              for i in range(6))
    assert {(c.account_id, c.user_id) for c in fake.calls} == {(admin.account_id,
                                                                admin.user_id)}


async def test_a_bad_row_gets_an_error_value_and_a_refusal_fails_the_generation(
        control, admin, tickets, fake):
    fake.errors["ticket 2"] = InvalidArgument("the prompt is longer than the context")
    done = await control.generation_runner.run_one(generate(control, admin, tickets).id)
    assert done.status is EvaluationStatus.SUCCEEDED and done.rows_failed == 1
    _, rows = table_rows(control, admin.account_id,
                         "SELECT generated_text, error FROM answers ORDER BY n")
    assert rows[2] == (None, "row 3: the prompt is longer than the context")
    assert rows[3][1] is None

    fake.errors["ticket 4"] = PermissionDenied("USAGE on model x is required")
    failed = await control.generation_runner.run_one(
        generate(control, admin, tickets, into="answers2").id)
    assert failed.status is EvaluationStatus.FAILED and "row 5" in failed.error
    assert control.catalog.find_relation(admin.account_id, _name("answers2")) is None


def _name(table):
    from services.control.domain.names import qualified_name
    return qualified_name(table, "table name")


def test_bad_requests_are_refused_before_anything_runs(control, admin, tickets):
    for query, what in [("SELECT n FROM tickets", "must return a prompt column"),
                        ("SELECT prompt, 'x' AS error FROM tickets", "rename with AS"),
                        ("SELECT 42 AS prompt", "must be text"),
                        ("SELECT prompt FROM tickets WHERE false", "0 rows"),
                        ("SELECT prompt FROM tickets, range(30)", "more than the limit")]:
        with pytest.raises(InvalidArgument, match=what):
            generate(control, admin, query)
    with pytest.raises(InvalidArgument, match="into is required"):
        generate(control, admin, tickets, into=" ")
    with pytest.raises(NotFound, match="schema public.nowhere"):
        generate(control, admin, tickets, into="public.nowhere.t")
    with pytest.raises(AlreadyExists, match="a generation writes a new table"):
        generate(control, admin, tickets, into="tickets")
    with pytest.raises(InvalidArgument, match="temperature"):
        generate(control, admin, tickets,
                 generation=RequestedGeneration(temperature=float("nan")))
    first = generate(control, admin, tickets)
    with pytest.raises(AlreadyExists, match=f"{first.id} is already writing"):
        generate(control, admin, tickets)
    assert control.store.run(lambda tx: len(tx.generations.with_status())) == 1


def test_privileges_and_visibility(control, admin, tickets):
    stranger, _ = new_user(control, admin.account_id, "stranger", ("FINETUNE_USER",))
    with pytest.raises(PermissionDenied):   # no CREATE TABLE on public.public
        generate(control, stranger, tickets)
    mine = generate(control, admin, tickets, request_id="r-1")
    assert generate(control, admin, tickets, request_id="r-1").id == mine.id   # idempotent
    with pytest.raises(NotFound):
        control.generations.get(stranger, mine.id)
    assert control.generations.list(stranger).generations == []
    assert [g.id for g in control.generations.list(admin).generations] == [mine.id]


async def test_cancel_stops_the_calls_and_writes_no_table(control, admin, fake):
    load_rows(control, admin.account_id, "many",
              [{"prompt": f"p{i}"} for i in range(12)])
    created = generate(control, admin, "SELECT prompt FROM many",
                       generation=RequestedGeneration(concurrency=1))

    async def cancel_on_the_third(call):
        if len(fake.calls) == 3:
            control.generations.cancel(admin, created.id)
    fake.before = cancel_on_the_third
    result = await control.generation_runner.run_one(created.id)
    assert result.status is EvaluationStatus.CANCELLED and "cancelled by" in result.error
    assert len(fake.calls) <= 4
    assert control.catalog.find_relation(admin.account_id, _name("answers")) is None


async def test_a_run_killed_midway_resumes_without_generating_a_saved_row_again(
        control, admin, fake, tmp_path, tiny_base, dispatcher):
    load_rows(control, admin.account_id, "many",
              [{"n": str(i), "prompt": f"p{i}"} for i in range(10)])
    created = generate(control, admin, "SELECT n::INTEGER AS n, prompt FROM many",
                       generation=RequestedGeneration(concurrency=1))
    killed = asyncio.Event()

    async def die_on_the_fifth(call):
        if len(fake.calls) == 5:
            killed.set()
            await asyncio.sleep(3600)   # in flight when control dies
    fake.before = die_on_the_fifth
    run = asyncio.create_task(control.generation_runner.run_one(created.id))
    await killed.wait()
    run.cancel()                        # control stops: the run is left RUNNING
    await asyncio.gather(run, return_exceptions=True)
    assert reload(control, created).status is EvaluationStatus.RUNNING
    first_run = [c.request_id for c in fake.calls]
    fake.before, fake.calls = None, []

    with build_control(tmp_path / "home", tiny_base, dispatcher, fake) as again:
        assert again.generation_runner.requeue_interrupted() == 1
        done = await again.generation_runner.run_one(created.id)
    assert done.status is EvaluationStatus.SUCCEEDED and done.attempts == 2
    second_run = [c.request_id for c in fake.calls]
    # the four saved rows are not asked again; the one in flight is, under the same id
    assert len(second_run) == 6 and not set(first_run[:4]) & set(second_run)
    assert first_run[4] in second_run
    assert (done.rows_done, done.prompt_tokens) == (10, 50)
    _, rows = table_rows(control, admin.account_id, "SELECT n FROM answers ORDER BY n")
    assert [r[0] for r in rows] == list(range(10))


async def test_an_inference_service_that_restarts_is_waited_for(control, admin, tickets, fake):
    """UNAVAILABLE (inference killed, its engine starting again) is retried under the same
    request id, so the row is generated once it is back and billed once."""
    failures = iter([Unavailable("connection refused")] * 3)

    async def down_for_a_while(call):
        if call.prompt == "ticket 3" and (error := next(failures, None)) is not None:
            raise error
    fake.before = down_for_a_while
    done = await control.generation_runner.run_one(generate(control, admin, tickets).id)
    assert done.status is EvaluationStatus.SUCCEEDED and done.rows_failed == 0
    retried = [c.request_id for c in fake.calls if c.prompt == "ticket 3"]
    assert len(retried) == 4 and len(set(retried)) == 1
