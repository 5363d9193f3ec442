"""`finetune access ...` and `finetune usage ...` against a real control server on loopback."""

import asyncio
import re

import pytest
import typer
from typer.testing import CliRunner

from finetune.control.v1 import internal_pb2, internal_pb2_grpc
from services.cli import main
from services.cli.access_commands import access_app
from services.cli.client import FinetuneClient
from services.cli.usage_commands import usage_app

pytestmark = pytest.mark.integration

SERVICE_TOKEN = "integration-service-token"  # what the control_server fixture configures


def cli() -> typer.Typer:
    """The finetune command as main.py will register these (the lead adds them there)."""
    app = typer.Typer()
    app.callback()(main._connection)
    app.add_typer(access_app, name="access")
    app.add_typer(usage_app, name="usage")
    return app


@pytest.fixture
def run(control_server, tmp_path):
    runner = CliRunner()
    app = cli()

    async def invoke(key, *args):
        result = await asyncio.to_thread(
            runner.invoke, app,
            ["--control", control_server.address, "--api-key", key, "--home", str(tmp_path),
             *args], env={"COLUMNS": "250"})
        return result
    return invoke


async def test_users_roles_grants_and_keys(run, api_key, control_server):
    admin = api_key
    with FinetuneClient(control_server.address, "127.0.0.1:1", admin) as client:
        await asyncio.to_thread(client.load_rows, "sales.public.t",
                                [{"prompt": "p", "completion": "c"}])
    me = await run(admin, "access", "whoami")
    assert me.exit_code == 0 and "ACCOUNTADMIN" in me.output

    assert (await run(admin, "access", "role", "create", "analyst")).exit_code == 0
    created = await run(admin, "access", "user", "create", "alice", "--default-role", "analyst",
                        "--key")
    assert created.exit_code == 0, created.output
    alice = re.search(r"\(shown once\):\s+(ft_\S+)", created.output).group(1)
    for args in (("grant-role", "finetune_user", "--to-role", "analyst"),
                 ("grant", "usage", "database", "sales", "--to-role", "analyst"),
                 ("grant", "create model", "schema", "sales.public", "--to-role", "analyst")):
        result = await run(admin, "access", *args)
        assert result.exit_code == 0, result.output
    shown = await run(admin, "access", "show-grants", "--to-role", "analyst")
    assert "CREATE MODEL" in shown.output and "sales.public" in shown.output
    assert "FINETUNE_USER" in shown.output
    on_db = await run(admin, "access", "show-grants", "--on", "database:sales")
    assert "OWNERSHIP" in on_db.output and "ACCOUNTADMIN" in on_db.output

    as_alice = await run(alice, "access", "whoami")
    assert "ANALYST" in as_alice.output and "default role: ANALYST" in as_alice.output
    denied = await run(alice, "access", "user", "list")
    assert denied.exit_code == 1 and "PERMISSION_DENIED" in denied.output
    bad = await run(admin, "access", "grant", "reign", "database", "sales", "--to-role", "x")
    assert bad.exit_code == 2 and "unknown privilege" in bad.output

    keys = await run(admin, "access", "key", "list", "--user", "alice")
    key_id = re.search(r"(key_[0-9a-f]+)", keys.output).group(1)
    assert (await run(admin, "access", "key", "revoke", key_id)).exit_code == 0
    gone = await run(alice, "access", "whoami")
    assert gone.exit_code == 1 and "UNAUTHENTICATED" in gone.output

    revoked = await run(admin, "access", "revoke", "usage", "database", "sales",
                        "--from-role", "analyst")
    assert revoked.exit_code == 0 and "revoked USAGE" in revoked.output
    dropped = await run(admin, "access", "role", "drop", "analyst")
    assert dropped.exit_code == 0
    roles = await run(admin, "access", "role", "list")
    assert "ANALYST" not in roles.output and "FINETUNE_USER" in roles.output


async def test_usage_views(run, api_key, channel):
    me = await internal_pb2_grpc.ModelResolutionServiceStub(channel).ResolveModel(
        internal_pb2.ResolveModelRequest(api_key=api_key, model="tiny-base"),
        metadata=[("authorization", f"Bearer {SERVICE_TOKEN}")])
    reporter = internal_pb2_grpc.ModelResolutionServiceStub(channel)
    for i, tokens in enumerate((1000, 2000)):
        await reporter.ReportUsage(internal_pb2.ReportUsageRequest(
            request_id=f"req-{i}", account_id=me.account_id, user_id=me.user_id,
            model="tiny-base", base_model="tiny-base", prompt_tokens=tokens,
            completion_tokens=10), metadata=[("authorization", f"Bearer {SERVICE_TOKEN}")])
    listed = await run(api_key, "usage", "inference")
    assert listed.exit_code == 0, listed.output
    assert "req-0" in listed.output and "req-1" in listed.output
    summary = await run(api_key, "usage", "summary", "--by", "model,day")
    assert summary.exit_code == 0, summary.output
    row = next(line for line in summary.output.splitlines() if "tiny-base" in line)
    assert " 2 " in row and "3020" in row   # 2 requests, 3000 + 20 tokens
    assert (await run(api_key, "usage", "summary", "--by", "week")).exit_code == 2
    tuning = await run(api_key, "usage", "fine-tuning", "--since", "2020-01-01")
    assert tuning.exit_code == 0 and "0 trained tokens" in tuning.output
