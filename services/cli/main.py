"""The `finetune` command: run the local stack, manage data, jobs and models, call COMPLETE."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from finetune.control.v1 import evaluations_pb2, jobs_pb2
from finetune.inference.v1 import inference_pb2
from services.cli import connection, views
from services.cli.access_commands import access_app
from services.cli.client import FinetuneClient, evaluation_task_value
from services.cli.data_commands import data_app
from services.cli.evaluation_commands import evaluate as _evaluate
from services.cli.evaluation_commands import evaluations_app
from services.cli.generation_commands import generate as _generate
from services.cli.generation_commands import generations_app
from services.cli.job_commands import TASKS, jobs_app
from services.cli.model_commands import describe as _describe_model
from services.cli.model_commands import models_app
from services.cli.query_commands import sql
from services.cli.settings import Endpoints, default_home
from services.cli.sweep_commands import sweeps_app
from services.cli.usage_commands import usage_app
from services.common.base_models import DEFAULT_BASE_MODEL

app = typer.Typer(help="finetune: fine-tune LLMs on your tables and serve them.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
console = views.console

@app.callback()
def _connection(
    control: Optional[str] = typer.Option(None, help="control address (or FINETUNE_CONTROL)"),
    inference: Optional[str] = typer.Option(None, help="inference address (or FINETUNE_INFERENCE)"),
    api_key: Optional[str] = typer.Option(None, help="API key (or FINETUNE_API_KEY)"),
    home: Optional[Path] = typer.Option(None, help="local home (or FINETUNE_HOME, ~/.finetune)"),
):
    connection.options.update(control=control, inference=inference, api_key=api_key,
                              home=home or default_home())


_client = connection.client
_rpc = connection.rpc_errors
app.add_typer(access_app, name="access")
app.add_typer(usage_app, name="usage")
app.add_typer(data_app, name="data")
app.add_typer(jobs_app, name="jobs")
app.add_typer(evaluations_app, name="evaluations")
app.add_typer(generations_app, name="generations")
app.add_typer(models_app, name="models")
app.add_typer(sweeps_app, name="sweeps")
app.command("model", help="One model: lineage, losses and its evaluations (= models "
                          "describe).")(_describe_model)
app.command("sql")(sql)


# -- local stack --------------------------------------------------------------------------------

@app.command()
def up(base_model: str = typer.Option(DEFAULT_BASE_MODEL, help="base model to serve"),
       control_port: int = typer.Option(50051), inference_port: int = typer.Option(50052),
       metrics_port: int = typer.Option(50061, help="control's Prometheus /metrics"),
       http_port: int = typer.Option(50062, help="inference's OpenAI-compatible API and "
                                                 "/metrics"),
       no_inference: bool = typer.Option(False, help="start Ray and control only")):
    """Start a local Ray head, control and inference; stop them all on Ctrl-C or SIGTERM."""
    import asyncio

    from services.common.server import wait_for_signal

    stack = _start_stack(base_model, control_port, inference_port, not no_inference,
                         metrics_port, http_port)
    try:
        console.print("[bold]finetune is up[/]   (Ctrl-C stops everything)")
        console.print(f"  Ray dashboard  {stack.ray_dashboard_url}")
        console.print(f"  control        {stack.control_address}")
        console.print(f"    metrics      {stack.control_metrics_url}")
        if stack.inference_address:
            console.print(f"  inference      {stack.inference_address}")
            console.print(f"    OpenAI API   {stack.http_url}/v1")
            console.print(f"    console      {stack.http_url}/console")
            console.print(f"    metrics      {stack.http_url}/metrics")
        console.print(f"  admin API key  {stack.admin_key()}")
        console.print(f"  logs           {stack.home / 'logs'}")
        asyncio.run(wait_for_signal())
    finally:
        console.print("stopping...")
        stack.stop()


def _start_stack(base_model: str, control_port: int, inference_port: int, inference: bool,
                 metrics_port: int = 0, http_port: int = 0):
    from services.cli.stack import LocalStack, StackConfig
    from services.common.base_models import ensure_model, load_catalog

    home = connection.home()
    catalog = load_catalog()
    if base_model not in catalog:
        console.print(f"[red]unknown base model {base_model}; known: {', '.join(catalog)}")
        raise typer.Exit(2)
    with console.status(f"provisioning base model {base_model} (once)"):
        ensure_model(catalog[base_model])
    stack = LocalStack(StackConfig(home=home, base_model=base_model, control_port=control_port,
                                   inference_port=inference_port,
                                   control_metrics_port=metrics_port, http_port=http_port))
    with console.status("starting Ray, control" + (" and inference (vLLM takes ~1 min)"
                                                    if inference else "")):
        stack.start(inference=inference)
    Endpoints(stack.control_address, stack.inference_address, stack.admin_key()).save(home)
    return stack


@app.command()
def demo(keep_running: bool = typer.Option(False, help="leave the services up afterwards")):
    """The main job: start everything, fine-tune the default model on sample data, COMPLETE."""
    from services.cli.demo import run_demo

    stack = _start_stack(DEFAULT_BASE_MODEL, 0, 0, True)
    try:
        with FinetuneClient(stack.control_address, stack.inference_address,
                            stack.admin_key()) as client:
            ok = run_demo(client)
        if keep_running:
            import asyncio

            from services.common.server import wait_for_signal
            console.print(f"services stay up (control {stack.control_address}, inference "
                          f"{stack.inference_address}); Ctrl-C stops them")
            asyncio.run(wait_for_signal())
    finally:
        stack.stop()
    raise typer.Exit(0 if ok else 1)


# -- data ---------------------------------------------------------------------------------------

@app.command("load-table")
@_rpc
def load_table(table: str = typer.Argument(..., help="database.schema.table"),
               path: Path = typer.Argument(..., exists=True, dir_okay=False),
               replace: bool = typer.Option(False, help="replace an existing table")):
    """Load a CSV, JSONL or Parquet file into a table (streamed)."""
    with _client() as client:
        t = client.load_table(table, path, replace=replace)
    console.print(f"loaded {t.row_count} rows into {t.name} "
                  f"({', '.join(f'{c.name} {c.type}' for c in t.columns)})")


@app.command()
@_rpc
def tables(database: str = typer.Argument("", help="only this database")):
    """List tables."""
    from rich.table import Table
    with _client() as client:
        out = Table("table", "rows", "columns")
        for t in client.list_tables(database):
            out.add_row(t.name, str(t.row_count), ", ".join(c.name for c in t.columns))
    console.print(out)


@app.command()
@_rpc
def preview(query: str, limit: int = typer.Option(10)):
    """Run a query in the sandbox and show the first rows."""
    from rich.table import Table
    with _client() as client:
        res = client.preview(query, limit)
    out = Table(*[c.name for c in res.columns])
    for row in res.rows:
        out.add_row(*[row.values.get(c.name, "") for c in res.columns])
    console.print(out)


# -- fine-tuning --------------------------------------------------------------------------------

@app.command()
@_rpc
def create(model: str = typer.Argument(..., help="output model: name or db.schema.name"),
           base_model: str = typer.Argument(...),
           training_query: str = typer.Argument(..., help="SELECT with prompt, completion"),
           validation_query: str = typer.Option(""),
           epochs: int = typer.Option(0, help="max_epochs 1-10 (0: base model default)"),
           learning_rate: float = typer.Option(0.0), batch_size: int = typer.Option(0),
           lora_rank: int = typer.Option(0), lora_alpha: int = typer.Option(0),
           lora_dropout: float = typer.Option(0.0, help="0: base model default"),
           seed: int = typer.Option(0), num_workers: int = typer.Option(0),
           task: str = typer.Option("instruction", help=", ".join(TASKS)),
           from_model: str = typer.Option("", help="continue training this fine-tuned model"),
           early_stopping_patience: int = typer.Option(
               0, help="with validation data: stop after this many epochs without improvement "
                       "(0: off); the best epoch becomes the model either way"),
           checkpoint_every_steps: int = typer.Option(
               0, help="optimizer steps between checkpoints (0: every quarter epoch)"),
           neftune_noise_alpha: Optional[float] = typer.Option(
               None, help="noise on the input embeddings while training (NEFTune; 0: off; "
                          "default: the base model's)"),
           request_id: str = typer.Option("", help="idempotency key"),
           eval_query: str = typer.Option(
               "", help="evaluate base and tuned model on this query (prompt, label) at the end"),
           eval_task: str = typer.Option("classification",
                                         help="classification | text_generation | "
                                              "question_answering"),
           min_improvement: Optional[float] = typer.Option(
               None, help="register the model only if it beats the base model by this much "
                          "(primary metric, 0-1)"),
           wait: bool = typer.Option(False, help="follow progress until the job ends")):
    """FINETUNE('CREATE'): start a fine-tuning job."""
    evaluation = None
    if eval_query:
        evaluation = evaluations_pb2.JobEvaluationOptions(
            query=eval_query, task=evaluation_task_value(eval_task),
            min_improvement=min_improvement or 0.0,
            has_min_improvement=min_improvement is not None)
    elif min_improvement is not None:
        raise ValueError("--min-improvement needs --eval-query")
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: {', '.join(TASKS)}")
    extra = {} if neftune_noise_alpha is None else {"neftune_noise_alpha": neftune_noise_alpha}
    with _client() as client:
        job = client.create_job(model, base_model, training_query, validation_query,
                                request_id=request_id or None, max_epochs=epochs,
                                learning_rate=learning_rate, batch_size=batch_size,
                                lora_rank=lora_rank, lora_alpha=lora_alpha,
                                lora_dropout=lora_dropout, seed=seed, num_workers=num_workers,
                                task_type=TASKS[task], from_model=from_model,
                                early_stopping_patience=early_stopping_patience,
                                checkpoint_every_steps=checkpoint_every_steps,
                                evaluation=evaluation, **extra)
        console.print(f"created {job.id} ({views.status_name(job)})")
        if wait:
            _follow(client, job)


def _follow(client: FinetuneClient, job) -> "jobs_pb2.FineTuningJob":
    job = views.follow_job(client.watch_job(job.id), job)
    job = client.get_job(job.id)
    console.print(views.job_details(job))
    return job


@app.command()
@_rpc
def show(page_size: int = typer.Option(50), page_token: str = typer.Option("")):
    """FINETUNE('SHOW'): this account's jobs, newest first."""
    with _client() as client:
        res = client.list_jobs(page_size, page_token)
    console.print(views.jobs_table(res.jobs))
    if res.next_page_token:
        console.print(f"more: --page-token {res.next_page_token}")


@app.command()
@_rpc
def describe(job_id: str, watch: bool = typer.Option(True, help="live progress until it ends")):
    """FINETUNE('DESCRIBE'): a job's details, with a live progress bar while it runs."""
    with _client() as client:
        job = client.get_job(job_id)
        if watch and job.status not in views.TERMINAL:
            _follow(client, job)
        else:
            console.print(views.job_details(job))


@app.command()
@_rpc
def cancel(job_id: str):
    """FINETUNE('CANCEL'): stop a job."""
    with _client() as client:
        job = client.cancel_job(job_id)
    console.print(f"{job.id}: {views.status_name(job)}")


# -- models and inference -----------------------------------------------------------------------

@app.command("base-models")
@_rpc
def base_models():
    """Base models with their context window, token allocations and row limits."""
    from rich.table import Table
    with _client() as client:
        out = Table("name", "context", "prompt tokens", "completion tokens", "rows per epoch")
        for m in client.base_models():
            out.add_row(m.name, str(m.context_window), str(m.prompt_tokens),
                        str(m.completion_tokens), str(m.rows_per_epoch))
    console.print(out)


@app.command()
@_rpc
def artifact(model: str, name: str = typer.Argument("training_results.csv"),
             output: Optional[Path] = typer.Option(None, "-o",
                                                   help="file to write (default: stdout)")):
    """Download a model artifact (training_results.csv, loss_curve.png, adapter files)."""
    with _client() as client:
        data = client.download_artifact(model, name)
    if output:
        output.write_bytes(data)
        console.print(f"wrote {len(data)} bytes to {output}")
    else:
        sys.stdout.buffer.write(data)


@app.command()
@_rpc
def engine():
    """The inference engine: its base model and the precision it serves in (and why)."""
    with _client() as client:
        info = client.engine()
    console.print(f"{info.base_model}: {info.dtype} ({info.precision_source}), "
                  f"max_model_len {info.max_model_len}, max_loras {info.max_loras}")
    for t in info.probe:
        console.print(f"  probe {t.dtype}: {t.seconds * 1e3:.1f} ms per step, "
                      f"error {t.error:.2g} against fp32")


@app.command()
@_rpc
def complete(model: str, prompt: str, max_tokens: int = typer.Option(128),
             temperature: float = typer.Option(0.0), stream: bool = typer.Option(False),
             choice: list[str] = typer.Option([], help="answer exactly one of these "
                                                       "(repeat the option)")):
    """COMPLETE: generate with a base or fine-tuned model."""
    options: dict = {"max_tokens": max_tokens, "temperature": temperature}
    if choice:
        options["response_format"] = inference_pb2.ResponseFormat(choices=choice)
    with _client() as client:
        if stream:
            last = None
            for msg in client.complete_stream(model, prompt, **options):
                sys.stdout.write(msg.delta)
                sys.stdout.flush()
                last = msg
            sys.stdout.write("\n")
            if last is not None:
                console.print(f"[dim]{last.finish_reason}  {views.usage_line(last.usage)}")
            return
        res = client.complete(model, prompt, **options)
    console.print(res.text)
    console.print(f"[dim]{res.finish_reason}  {views.usage_line(res.usage)}")


app.command("evaluate")(_rpc(_evaluate))
app.command("generate")(_rpc(_generate))


if __name__ == "__main__":
    app()
