"""Token counts with a real tokenizer agree with the trainer's own formatting; estimates, event
logs, lineage and data definitions over real gRPC and through `finetune jobs ...` and
`finetune data ...`."""

import asyncio

import pytest
import typer
from typer.testing import CliRunner

from services.cli import main
from services.cli.client import FinetuneClient
from services.cli.data_commands import data_app
from services.cli.job_commands import jobs_app

pytestmark = pytest.mark.integration

ROWS = [{"prompt": f"What is the capital of country number {i}?",
         "completion": f"Country {i} has capital city number {i * 3}."} for i in range(14)] + [
    {"prompt": "Summarize: " + "the quick brown fox jumps over the lazy dog " * 60,
     "completion": "A fox jumps."},                              # prompt over 384 tokens
    {"prompt": "List numbers.", "completion": " ".join(str(i) for i in range(300))}]  # > 128


def cli() -> typer.Typer:
    """The finetune command as main.py will register these (the lead adds them there)."""
    app = typer.Typer()
    app.callback()(main._connection)
    app.add_typer(jobs_app, name="jobs")
    app.add_typer(data_app, name="data")
    return app


@pytest.fixture
def client(control_server, api_key):
    with FinetuneClient(control_server.address, "127.0.0.1:1", api_key) as c:
        yield c


@pytest.fixture
def run(control_server, api_key, tmp_path):
    runner, app = CliRunner(), cli()

    async def invoke(*args):
        return await asyncio.to_thread(
            runner.invoke, app, ["--control", control_server.address, "--api-key", api_key,
                                 "--home", str(tmp_path), *args], env={"COLUMNS": "250"})
    return invoke


async def test_control_counts_tokens_as_the_trainer_formats_them(client, tiny_base):
    from transformers import AutoTokenizer

    from services.trainer.data import TokenLimits, format_rows

    await asyncio.to_thread(client.load_rows, "train", ROWS)
    estimate = await asyncio.to_thread(
        client.estimate_job, "tiny-base", "SELECT prompt, completion FROM train",
        "SELECT prompt, completion FROM train WHERE prompt LIKE 'What%'", max_epochs=2)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_base.path))
    limits = TokenLimits(tiny_base.prompt_tokens, tiny_base.completion_tokens,
                         tiny_base.context_window)
    trainer_view = format_rows("INSTRUCTION", tokenizer, ROWS, limits)
    assert estimate.training.rows == len(ROWS) == trainer_view.rows
    assert estimate.training.truncated_rows == trainer_view.truncated_rows == 2
    assert estimate.tokens_per_epoch == trainer_view.tokens
    assert estimate.trained_tokens == 2 * trainer_view.tokens
    assert estimate.training.completion_tokens == sum(int((e.labels != -100).sum())
                                                      for e in trainer_view.examples)
    assert estimate.validation.rows == 14 and estimate.validation_source == 1  # QUERY
    assert estimate.credits > 0


async def test_events_lineage_and_describe_through_the_cli(client, run, cluster):
    await asyncio.to_thread(client.load_rows, "train", ROWS)
    job = await asyncio.to_thread(client.create_job, "cli_model", "tiny-base",
                                  "SELECT prompt, completion FROM train", max_epochs=2)
    assert job.truncated_rows == 2 and job.validation_rows == 2 and job.training_rows == 14
    events = await asyncio.to_thread(lambda: list(client.job_events(job.id)))
    assert [e.type for e in events][:5] == ["job.created", "data.snapshot", "data.holdout",
                                            "data.truncation", "job.submitted"]
    described = await run("jobs", "describe", job.id, "--last", "3")
    assert described.exit_code == 0, described.output
    assert job.training_snapshot.sha256 in described.output
    assert "held out of the training rows" in described.output
    assert "data.truncation" in described.output and "job.created" not in described.output
    listed = await run("jobs", "events", job.id, "--all")
    assert listed.exit_code == 0 and "job.created" in listed.output
    estimated = await run("jobs", "estimate", "tiny-base",
                          "SELECT prompt, completion FROM train", "--epochs", "2")
    assert estimated.exit_code == 0, estimated.output
    assert "2 truncated" in estimated.output and "credits" in estimated.output
    over = await run("jobs", "estimate", "tiny-base", "SELECT prompt, completion FROM train",
                     "--epochs", "10")
    assert over.exit_code == 1 and "INVALID_ARGUMENT" in over.output
    assert "more than the limit of 10 rows for 10 epochs" in over.output


async def test_create_through_the_cli_passes_every_option(client, control_server, api_key,
                                                          tmp_path):
    await asyncio.to_thread(client.load_rows, "train", ROWS)

    async def create(*args):
        return await asyncio.to_thread(
            CliRunner().invoke, main.app,
            ["--control", control_server.address, "--api-key", api_key, "--home",
             str(tmp_path), "create", *args], env={"COLUMNS": "250"})

    made = await create("cli_options_model", "tiny-base", "SELECT prompt, completion FROM train",
                        "--epochs", "3", "--lora-dropout", "0.1", "--early-stopping-patience",
                        "2", "--checkpoint-every-steps", "5", "--task", "instruction")
    assert made.exit_code == 0, made.output
    job = (await asyncio.to_thread(client.list_jobs)).jobs[0]
    o = job.options
    assert (o.max_epochs, o.early_stopping_patience, o.checkpoint_every_steps) == (3, 2, 5)
    assert o.lora_dropout == pytest.approx(0.1)
    # The task's columns are checked at CREATE: a chat job needs `messages`.
    chat = await create("cli_chat_model", "tiny-base", "SELECT prompt, completion FROM train",
                        "--task", "chat")
    assert chat.exit_code == 1 and "INVALID_ARGUMENT" in chat.output, chat.output
    assert "messages" in chat.output
    unknown = await create("cli_other_model", "tiny-base", "SELECT prompt, completion FROM train",
                           "--task", "poetry")
    assert unknown.exit_code != 0 and "poetry" in unknown.output


async def test_data_definitions_through_the_cli(client, run):
    await asyncio.to_thread(client.load_rows, "sales.public.t", ROWS[:3])
    assert (await run("data", "create-schema", "sales.staging")).exit_code == 0
    made = await run("data", "create-view", "sales.staging.v",
                     "SELECT prompt FROM sales.public.t")
    assert made.exit_code == 0 and "created view sales.staging.v (prompt)" in made.output
    preview = await asyncio.to_thread(client.preview, "SELECT count(*) AS n FROM sales.staging.v")
    assert preview.rows[0].values["n"] == "3"
    listed = await run("data", "databases")
    assert "staging" in listed.output
    bare = await run("data", "create-view", "sales.staging.w", "SELECT prompt FROM t")
    assert bare.exit_code == 1 and "in full" in bare.output
    assert "dropped view" in (await run("data", "drop-view", "sales.staging.v")).output
    missing = await run("data", "drop-view", "sales.staging.v")
    assert missing.exit_code == 1 and "NOT_FOUND" in missing.output
    assert "does not exist" in (await run("data", "drop-view", "sales.staging.v",
                                          "--if-exists")).output
    assert "dropped schema" in (await run("data", "drop-schema", "sales.staging")).output
    assert "dropped database" in (await run("data", "drop-database", "sales")).output
    tables = await asyncio.to_thread(client.list_tables)
    assert [t.name for t in tables] == []
