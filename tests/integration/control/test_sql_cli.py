"""RunQuery over real gRPC and `finetune sql`: pages followed across calls, CSV and JSON Lines
output, results saved as tables, and errors as one line with their status."""

import asyncio
import csv
import io
import json

import grpc
import pytest
from typer.testing import CliRunner

from services.cli import main
from services.cli.client import FinetuneClient

pytestmark = pytest.mark.integration

ROWS = [{"prompt": f"ticket {i:03d}", "completion": "BILLING" if i % 3 else "SHIPPING"}
        for i in range(40)]


@pytest.fixture
async def client(control_server, api_key):
    with FinetuneClient(control_server.address, "127.0.0.1:1", api_key) as c:
        # Off the event loop: the control server under test runs on it.
        await asyncio.to_thread(c.load_rows, "tickets", ROWS)
        yield c


@pytest.fixture
def run(control_server, api_key, tmp_path):
    runner = CliRunner()

    async def invoke(*args):
        return await asyncio.to_thread(
            runner.invoke, main.app, ["--control", control_server.address, "--api-key", api_key,
                                      "--home", str(tmp_path), "sql", *args],
            env={"COLUMNS": "200"})
    return invoke


async def test_pages_over_grpc_add_up_to_the_table(client):
    columns, rows = await asyncio.to_thread(
        client.query_rows, "SELECT prompt, completion, NULL AS note FROM tickets ORDER BY 1",
        None, 7)   # 7 rows a call: six calls, each followed by its token
    got = await asyncio.to_thread(list, rows)
    assert [c.name for c in columns] == ["prompt", "completion", "note"]
    assert [r["prompt"] for r in got] == [r["prompt"] for r in ROWS]
    assert all(r["note"] is None for r in got)
    _, first = await asyncio.to_thread(client.query_rows, "SELECT * FROM tickets", 5)
    assert len(await asyncio.to_thread(list, first)) == 5


async def test_table_csv_and_json_output(client, run):
    query = "SELECT completion AS queue, count(*) AS n FROM tickets GROUP BY 1 ORDER BY 1"
    shown = await run(query)
    assert shown.exit_code == 0, shown.output
    assert "BILLING" in shown.output and "26" in shown.output and "2 rows" in shown.output
    as_csv = await run(query, "--csv")
    assert list(csv.reader(io.StringIO(as_csv.stdout))) == [
        ["queue", "n"], ["BILLING", "26"], ["SHIPPING", "14"]]
    as_json = await run("SELECT prompt, NULL AS note FROM tickets ORDER BY 1", "--json",
                        "--limit", "2")
    assert [json.loads(line) for line in as_json.stdout.splitlines()] == [
        {"prompt": "ticket 000", "note": None}, {"prompt": "ticket 001", "note": None}]


async def test_into_saves_a_table_the_next_query_reads(client, run):
    saved = await run("SELECT prompt FROM tickets WHERE completion = 'SHIPPING'",
                      "--into", "public.public.shipping")
    assert saved.exit_code == 0 and "saved 14 rows into public.public.shipping" in saved.output
    again = await run("SELECT prompt FROM tickets", "--into", "public.public.shipping")
    assert again.exit_code == 1 and "ALREADY_EXISTS" in again.output
    counted = await run("SELECT count(*) AS n FROM shipping", "--csv")
    assert counted.stdout.splitlines() == ["n", "14"]


async def test_errors_are_one_line_and_the_service_keeps_answering(client, run):
    for query, status in (("DROP TABLE tickets", "INVALID_ARGUMENT"),
                          ("SELECT * FROM read_csv('/etc/passwd')", "INVALID_ARGUMENT"),
                          ("SELECT * FROM nowhere", "INVALID_ARGUMENT")):
        failed = await run(query)
        assert failed.exit_code == 1 and f"error: {status}" in failed.output, failed.output
    with pytest.raises(grpc.RpcError) as err:
        await asyncio.to_thread(lambda: list(client.run_query("SELECT 1 AS x",
                                                              page_token="garbage")))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in err.value.details()
    ok = await run("SELECT count(*) AS n FROM tickets", "--csv")
    assert ok.exit_code == 0 and ok.stdout.splitlines() == ["n", "40"]


async def test_finetune_inside_sql_over_grpc(client, run, cluster):
    """FINETUNE('CREATE' | 'SHOW' | 'DESCRIBE' | 'CANCEL') as queries, through `finetune sql`:
    the job is the FineTuningService's own (the client's DESCRIBE sees it)."""
    created = await run("SELECT FINETUNE('CREATE', 'router', 'tiny-base', 'SELECT prompt, "
                        "completion FROM tickets', NULL, {'max_epochs': 1}) AS job", "--csv")
    assert created.exit_code == 0, created.output
    job_id = created.stdout.splitlines()[1]
    assert job_id.startswith("ft_")
    job = await asyncio.to_thread(client.get_job, job_id)
    assert (job.training_rows + job.validation_rows, job.options.max_epochs) == (40, 1)
    shown = await run("SELECT FINETUNE('SHOW')", "--json")
    (row,) = [json.loads(line) for line in shown.stdout.splitlines()]
    assert [j["id"] for j in json.loads(row["finetune"])] == [job_id]
    described = await run(f"SELECT FINETUNE('DESCRIBE', '{job_id}') AS d", "--json")
    doc = json.loads(json.loads(described.stdout)["d"])
    assert doc["model"] == "public.public.router"
    assert doc["training_rows"] == job.training_rows and doc["status"] in ("PENDING", "RUNNING")
    cancelled = await run(f"SELECT FINETUNE('CANCEL', '{job_id}') AS d", "--json")
    assert json.loads(json.loads(cancelled.stdout)["d"])["status"] == "CANCELLED"
    bad = await run("SELECT FINETUNE('DESCRIBE', prompt) FROM tickets")
    assert bad.exit_code == 1 and "INVALID_ARGUMENT" in bad.output and "alone" in bad.output
