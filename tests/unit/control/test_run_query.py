"""RunQuery: one sandboxed SELECT, its rows in pages with tokens, or saved as a table under the
privileges services/control/core/databases.py names (CREATE TABLE; replacing needs OWNERSHIP)."""

import pytest
from control_testbed import acting_as, instruction_rows, load_rows, new_user

from finetune.control.v1 import data_pb2
from services.common.errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied
from services.control.api import data as data_api
from services.control.api.data import DataServicer
from services.control.domain.privileges import Privilege, SecurableObject


@pytest.fixture
def servicer(control):
    return DataServicer(control.databases, control.catalog.spool_dir, 1 << 20)


@pytest.fixture
def sales(control, admin):
    """sales.public.train (25 rows), sales.private.salaries."""
    control.catalog.create_database(admin.account_id, "sales")
    load_rows(control, admin.account_id, "sales.public.train", instruction_rows(25))
    load_rows(control, admin.account_id, "sales.private.salaries", [{"who": "x", "pay": "1"}])
    return control


async def run(servicer, principal, **request) -> list[data_pb2.RunQueryResponse]:
    with acting_as(principal):
        return [m async for m in servicer.RunQuery(data_pb2.RunQueryRequest(**request), None)]


def rows_of(messages) -> list[dict]:
    return [dict(r.values) for m in messages for r in m.rows]


ORDERED = "SELECT prompt, completion FROM sales.public.train ORDER BY prompt"


async def test_pages_follow_the_token_to_the_last_row(servicer, admin, sales):
    seen, token, calls = [], "", 0
    while True:
        messages = await run(servicer, admin, query=ORDERED, max_rows=10, page_token=token)
        assert [c.name for c in messages[0].columns] == ["prompt", "completion"]
        assert all(not m.next_page_token for m in messages[:-1])
        seen += rows_of(messages)
        token, calls = messages[-1].next_page_token, calls + 1
        if not token:
            break
    assert calls == 3 and len(seen) == 25
    assert [r["prompt"] for r in seen] == sorted(f"question {i}" for i in range(25))


async def test_one_call_returns_everything_by_default_and_nulls_are_absent(servicer, admin,
                                                                          sales):
    messages = await run(servicer, admin,
                         query="SELECT prompt, NULL AS nothing FROM sales.public.train")
    assert len(rows_of(messages)) == 25 and messages[-1].next_page_token == ""
    assert all("nothing" not in r for r in rows_of(messages))
    assert [c.name for c in messages[0].columns] == ["prompt", "nothing"]
    empty = await run(servicer, admin, query="SELECT 1 AS x WHERE false")
    assert len(empty) == 1 and [c.name for c in empty[0].columns] == ["x"] and not empty[0].rows


async def test_wide_pages_are_split_into_messages(servicer, admin, sales, monkeypatch):
    monkeypatch.setattr(data_api, "BYTES_PER_MESSAGE", 100)
    messages = await run(servicer, admin, query=ORDERED)
    assert len(messages) > 5 and len(rows_of(messages)) == 25
    assert messages[0].columns and not any(m.columns for m in messages[1:])


@pytest.mark.parametrize("token", ["not base64!", "W10=", "WzUsICJ4Il0="])
async def test_a_bad_or_foreign_token_is_invalid(servicer, admin, sales, token):
    with pytest.raises(InvalidArgument, match="page_token"):
        await run(servicer, admin, query=ORDERED, page_token=token)


async def test_a_token_from_another_query_is_refused(servicer, admin, sales):
    first = await run(servicer, admin, query=ORDERED, max_rows=5)
    with pytest.raises(InvalidArgument, match="another query"):
        await run(servicer, admin, query="SELECT 1 AS x", page_token=first[-1].next_page_token)


async def test_the_sandbox_rules_hold(servicer, admin, sales):
    for hostile in ("DROP TABLE sales.public.train", "SELECT * FROM read_csv('/etc/passwd')",
                    "SELECT 1 AS a; SELECT 2 AS b"):
        with pytest.raises(InvalidArgument):
            await run(servicer, admin, query=hostile)
    with pytest.raises(InvalidArgument, match="negative"):
        await run(servicer, admin, query=ORDERED, max_rows=-1)
    with pytest.raises(InvalidArgument, match="into"):
        await run(servicer, admin, query=ORDERED, replace=True)


async def test_into_saves_a_table_and_never_replaces_silently(servicer, admin, sales, control):
    saved = await run(servicer, admin, into="sales.public.short",
                      query="SELECT prompt FROM sales.public.train WHERE prompt < 'question 2'")
    assert len(saved) == 1 and saved[0].table.name == "sales.public.short"
    assert saved[0].table.row_count == 12 and [c.name for c in saved[0].table.columns] == [
        "prompt"]
    again = await run(servicer, admin, query="SELECT count(*) AS n FROM sales.public.short")
    assert rows_of(again) == [{"n": "12"}]
    with pytest.raises(AlreadyExists, match="replace"):
        await run(servicer, admin, into="sales.public.short", query="SELECT 1 AS x")
    replaced = await run(servicer, admin, into="sales.public.short", query="SELECT 1 AS x",
                         replace=True)
    assert replaced[0].table.row_count == 1
    with pytest.raises(NotFound, match="schema"):
        await run(servicer, admin, into="sales.nowhere.t", query="SELECT 1 AS x")
    await call_view(servicer, admin)
    with pytest.raises(AlreadyExists, match="view"):
        await run(servicer, admin, into="sales.public.v", query="SELECT 1 AS x", replace=True)


async def call_view(servicer, admin):
    with acting_as(admin):
        await servicer.CreateView(data_pb2.CreateViewRequest(
            name="sales.public.v", query="SELECT prompt FROM sales.public.train"), None)


async def test_into_needs_create_table_and_replacing_needs_ownership(servicer, admin, sales,
                                                                     control):
    d = control.directory
    d.create_role(admin, "analyst")
    for privilege, obj in ((Privilege.USAGE, SecurableObject.database("sales")),
                           (Privilege.USAGE, SecurableObject.schema("sales.public"))):
        d.grant_privilege(admin, privilege, obj, "analyst")
    analyst, _ = new_user(control, admin.account_id, "ann", ("ANALYST",))
    query = "SELECT prompt FROM sales.public.train"
    assert len(rows_of(await run(servicer, analyst, query=query))) == 25
    with pytest.raises(PermissionDenied):   # no CREATE TABLE yet
        await run(servicer, analyst, into="sales.public.mine", query=query)
    d.grant_privilege(admin, Privilege.CREATE_TABLE, SecurableObject.schema("sales.public"),
                      "analyst")
    await run(servicer, analyst, into="sales.public.mine", query=query)
    with pytest.raises(PermissionDenied):   # the table is there, but the schema is not theirs
        await run(servicer, analyst, into="sales.public.train", query=query, replace=True)
    assert len(rows_of(await run(servicer, admin, query="SELECT * FROM sales.public.train"))) == 25
    # nor can a query launder what its caller may not read into a table it may
    with pytest.raises(PermissionDenied):
        await run(servicer, analyst, into="sales.public.pay",
                  query="SELECT * FROM sales.private.salaries")
    with pytest.raises(PermissionDenied):
        await run(servicer, analyst, query="SELECT * FROM sales.private.salaries")
