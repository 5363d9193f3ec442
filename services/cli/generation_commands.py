"""`finetune generate` and `finetune generations ...`: ML.GENERATE_TEXT over a query into a
new table, as a job that shows progress, can be cancelled, and resumes after a restart.

    finetune generate support.public.router \\
        "SELECT id, prompt FROM support.public.tickets" --into support.public.routed
    finetune generations list
    finetune generations show gen_...
    finetune generations cancel gen_...
"""

from __future__ import annotations

import typer

from services.cli import views
from services.cli.connection import client as _client
from services.cli.connection import rpc_errors as _rpc

console = views.console

generations_app = typer.Typer(help="Batch generations: a model over a table, into a table.",
                              no_args_is_help=True)


def generate(model: str = typer.Argument(..., help="fine-tuned or base model"),
             query: str = typer.Argument(..., help="SELECT with a prompt column (and any others "
                                                   "to carry along)"),
             into: str = typer.Option(..., help="the new table: database.schema.table"),
             max_tokens: int = typer.Option(0, help="0: 256"),
             temperature: float = typer.Option(0.0),
             concurrency: int = typer.Option(0, help="requests in flight (0: service default)"),
             wait: bool = typer.Option(True, help="show progress until the table is written")):
    """Answer every row's prompt with a model, into a new table."""
    with _client() as client:
        g = client.generate_text(model, query, into, max_tokens=max_tokens,
                                 temperature=temperature, concurrency=concurrency)
        console.print(f"started {g.id}: {g.rows} rows into {g.into}")
        if not wait:
            return
        views.follow_evaluations([client.watch_generation(g.id)], views.generation_status)
        g = client.get_generation(g.id)
    status = views.generation_status(g)
    if status != "SUCCEEDED":
        console.print(f"[red]{g.id} {status}: {g.error}")
        raise typer.Exit(1)
    console.print(f"{g.into}: {g.rows} rows ({g.rows_failed} with an error), "
                  f"{g.prompt_tokens} prompt + {g.completion_tokens} completion tokens")


@generations_app.command("list")
@_rpc
def list_():
    """Your batch generations (an admin sees everyone's), newest first."""
    with _client() as client:
        console.print(views.generations_table(client.list_generations()))


@generations_app.command()
@_rpc
def show(generation_id: str):
    """One batch generation: settings, progress and tokens."""
    with _client() as client:
        console.print(views.generation_details(client.get_generation(generation_id)))


@generations_app.command()
@_rpc
def cancel(generation_id: str):
    """Stop a batch generation (rows already answered stay billed; no table is written)."""
    with _client() as client:
        g = client.cancel_generation(generation_id)
    console.print(f"{g.id}: {views.generation_status(g)}")
