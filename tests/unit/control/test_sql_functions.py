"""COMPLETE and TRY_COMPLETE inside RunQuery (services/control/data/sql_functions.py): Cortex's
shapes, one call per row, failing rows, the generation budget and the sandbox around them. The
inference service is a fake CompletionClient; everything else is the real control core."""

import json

import pytest
from control_testbed import acting_as, load_rows

from finetune.control.v1 import data_pb2
from services.common.errors import InvalidArgument, PermissionDenied, ResourceExhausted
from services.control.api.data import DataServicer
from services.control.core.databases import Databases
from services.control.data.sql_functions import calls_functions, parse_options
from services.control.dispatch.inference import CompletionAnswer
from services.control.dispatch.sql_completions import SqlCompletions


class FakeInference:
    """Answers upper-cased prompts; refuses the model `secret` as inference refuses a caller
    without USAGE. Records every call."""

    def __init__(self):
        self.calls = []

    async def complete(self, call):
        self.calls.append(call)
        if call.model == "secret":
            raise PermissionDenied("USAGE on model secret is required")
        return CompletionAnswer(f"{call.prompt.upper()}", len(call.prompt.split()), 2)


@pytest.fixture
def inference():
    return FakeInference()


@pytest.fixture
def servicer(control, admin, inference):
    load_rows(control, admin.account_id, "tickets",
              [{"prompt": f"ticket {i}", "queue": "A" if i % 2 else "B"} for i in range(6)])
    databases = Databases(control.catalog, control.store, control.authorizer,
                          completions=SqlCompletions(inference, max_rows=20, concurrency=3,
                                                     timeout_s=30))
    return DataServicer(databases, control.catalog.spool_dir, 1 << 20)


async def run(servicer, principal, **request):
    with acting_as(principal):
        messages = [m async for m in servicer.RunQuery(data_pb2.RunQueryRequest(**request),
                                                       None)]
    names = [c.name for c in messages[0].columns] if messages and messages[0].columns else []
    return messages, [{n: r.values.get(n) for n in names} for m in messages for r in m.rows]


async def test_complete_returns_the_text_one_call_per_row(servicer, admin, inference):
    _, rows = await run(servicer, admin, query=(
        "SELECT prompt, COMPLETE('my_model', prompt) AS answer FROM tickets ORDER BY prompt"))
    assert rows == [{"prompt": f"ticket {i}", "answer": f"TICKET {i}"} for i in range(6)]
    assert sorted(c.prompt for c in inference.calls) == [f"ticket {i}" for i in range(6)]
    assert {(c.model, c.account_id, c.user_id) for c in inference.calls} == {
        ("my_model", admin.account_id, admin.user_id)}   # made as the query's caller


async def test_options_give_cortexs_json_document(servicer, admin, inference):
    _, rows = await run(servicer, admin, query=(
        "SELECT COMPLETE('m', prompt, {'temperature': 0.5, 'max_tokens': 7}) AS doc "
        "FROM tickets WHERE prompt = 'ticket 1'"))
    doc = json.loads(rows[0]["doc"])
    assert doc["choices"] == [{"messages": "TICKET 1"}] and doc["model"] == "m"
    assert doc["usage"] == {"completion_tokens": 2, "prompt_tokens": 2, "total_tokens": 4}
    assert isinstance(doc["created"], int)
    assert (inference.calls[0].temperature, inference.calls[0].max_tokens) == (0.5, 7)
    _, as_text = await run(servicer, admin, query=(
        "SELECT COMPLETE('m', 'x', '{\"response_format\": {\"type\": \"json\", \"schema\": "
        "{\"type\": \"object\"}}, \"stop\": \"END\"}') AS doc"))
    assert json.loads(as_text[0]["doc"])["choices"][0]["messages"] == "X"
    assert json.loads(inference.calls[-1].json_schema) == {"type": "object"}
    assert inference.calls[-1].stop == ("END",)


async def test_null_inputs_give_null_without_a_call(servicer, admin, inference):
    _, rows = await run(servicer, admin,
                        query="SELECT COMPLETE('m', NULL) AS a, COMPLETE(NULL, 'p') AS b")
    assert rows == [{"a": None, "b": None}] and inference.calls == []


async def test_a_failing_row_fails_complete_and_is_null_under_try_complete(servicer, admin,
                                                                           inference):
    query = ("SELECT {f}(CASE WHEN prompt = 'ticket 3' THEN 'secret' ELSE 'm' END, prompt) "
             "AS a FROM tickets ORDER BY prompt")
    with pytest.raises(PermissionDenied, match="USAGE on model secret"):
        await run(servicer, admin, query=query.format(f="COMPLETE"))
    _, rows = await run(servicer, admin, query=query.format(f="TRY_COMPLETE"))
    assert [r["a"] for r in rows] == ["TICKET 0", "TICKET 1", "TICKET 2", None, "TICKET 4",
                                      "TICKET 5"]


async def test_bad_options_are_invalid_and_null_under_try_complete(servicer, admin):
    for options, reason in (("'[1]'", "JSON object"), ("{'temprature': 1}", "temprature"),
                            ("'not json'", "JSON object"),
                            ("{'response_format': {'type': 'xml'}}", "response_format")):
        with pytest.raises(InvalidArgument, match=reason):
            await run(servicer, admin, query=f"SELECT COMPLETE('m', 'p', {options}) AS a")
    _, rows = await run(servicer, admin, query="SELECT TRY_COMPLETE('m', 'p', '[1]') AS a")
    assert rows == [{"a": None}]


async def test_the_budget_stops_a_cross_join_before_generating(servicer, admin, inference):
    with pytest.raises(ResourceExhausted, match="more than 20 rows"):
        await run(servicer, admin, query=(
            "SELECT COMPLETE('m', a.prompt || b.prompt) FROM tickets a, tickets b, "
            "range(1000000) r"))
    with pytest.raises(ResourceExhausted):
        await run(servicer, admin, query=(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000) "
            "SELECT COMPLETE('m', i::VARCHAR) FROM n"))
    assert len(inference.calls) <= 20


async def test_a_generating_query_comes_in_one_page_each_row_once(servicer, admin, inference):
    messages, rows = await run(servicer, admin, max_rows=2,
                               query="SELECT COMPLETE('m', prompt) AS a FROM tickets")
    assert len(rows) == 6 and messages[-1].next_page_token == ""
    assert len(inference.calls) == 6
    _, limited = await run(servicer, admin,
                           query="SELECT COMPLETE('m', prompt) AS a FROM tickets LIMIT 2")
    assert len(limited) == 2 and len(inference.calls) == 8   # LIMIT generates only its rows


async def test_into_saves_the_generated_column(servicer, admin, inference):
    saved, _ = await run(servicer, admin, into="public.public.answers", query=(
        "SELECT prompt, COMPLETE('m', prompt) AS answer FROM tickets"))
    assert saved[0].table.row_count == 6 and len(inference.calls) == 6
    _, rows = await run(servicer, admin, query="SELECT count(*) AS n FROM answers "
                                               "WHERE answer = upper(prompt)")
    assert rows == [{"n": "6"}] and len(inference.calls) == 6


async def test_nested_calls_each_count_against_the_budget(servicer, admin, inference):
    _, rows = await run(servicer, admin, query=(
        "SELECT COMPLETE('m', COMPLETE('m', prompt) || '!') AS a FROM tickets ORDER BY 1"))
    assert [r["a"] for r in rows] == [f"TICKET {i}!" for i in range(6)]
    assert len(inference.calls) == 12
    with pytest.raises(ResourceExhausted):   # 18 inner + 18 outer calls > 20
        await run(servicer, admin, query=(
            "SELECT COMPLETE('m', COMPLETE('m', a.prompt)) FROM tickets a, "
            "(SELECT * FROM tickets LIMIT 3) b"))
    assert len(inference.calls) <= 12 + 20


async def test_the_sandbox_still_holds_around_complete(servicer, admin, inference):
    for hostile in ("SELECT COMPLETE('m', content) FROM read_text('/etc/passwd')",
                    "SELECT COMPLETE('m', getenv('HOME'))",
                    "SELECT COMPLETE('m', current_setting('memory_limit'))"):
        with pytest.raises(InvalidArgument):
            await run(servicer, admin, query=hostile)
    assert inference.calls == []


def test_calls_functions_reads_the_parse_not_the_text():
    assert calls_functions("SELECT try_complete('m', p) FROM t")
    assert calls_functions("SELECT upper(COMPLETE('m', 'p'))")
    assert not calls_functions("SELECT 'COMPLETE(' AS text")
    assert not calls_functions("not sql at all")


def test_options_parse_as_cortex_documents_them():
    options = parse_options('{"temperature": 0.3, "top_p": 0.9, "max_tokens": 5, '
                            '"stop": ["a", "b"], "seed": 4}')
    assert (options.temperature, options.top_p, options.max_tokens, options.stop,
            options.seed) == (0.3, 0.9, 5, ("a", "b"), 4)
    assert parse_options(json.dumps('{"max_tokens": 3}')).max_tokens == 3   # to_json of text
    with pytest.raises(InvalidArgument):
        parse_options('{"max_tokens": "many"}')
