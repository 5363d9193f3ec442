"""`finetune usage ...`: fine-tuning and inference usage history, in tokens and credits.

    finetune usage fine-tuning --since 2025-01-01
    finetune usage inference --model sales.public.bot --limit 20
    finetune usage summary --by model --by day

ACCOUNTADMIN sees the account's usage, other users their own. Registered in main.py as
`app.add_typer(usage_app, name="usage")`.
"""

from __future__ import annotations

from datetime import datetime
from typing import List, Optional

import typer
from rich.table import Table

from services.cli import views
from services.cli.connection import client as _client
from services.cli.connection import rpc_errors as _rpc

console = views.console

usage_app = typer.Typer(help="Usage history: fine-tuning and inference tokens and credits.",
                        no_args_is_help=True)

DATE_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]
SINCE = typer.Option(None, formats=DATE_FORMATS, help="from (UTC, inclusive)")
UNTIL = typer.Option(None, formats=DATE_FORMATS, help="until (UTC, exclusive)")
MODEL = typer.Option("", help="only this model or base model")
USER = typer.Option("", help="only this user (ACCOUNTADMIN)")


def _credits(value: float) -> str:
    return f"{value:.6f}"


@usage_app.command("fine-tuning")
@_rpc
def fine_tuning(since: Optional[datetime] = SINCE, until: Optional[datetime] = UNTIL,
                model: str = MODEL, user: str = USER, limit: int = typer.Option(50),
                page_token: str = typer.Option("")):
    """Fine-tuning usage per job (like CORTEX_FINE_TUNING_USAGE_HISTORY), newest first."""
    with _client() as client:
        res = client.fine_tuning_usage(since, until, model, user, limit, page_token)
    table = Table("job", "model", "base model", "user", "status", "trained tokens", "credits",
                  "start", "end")
    for u in res.usage:
        table.add_row(u.job_id, u.model, u.base_model, u.user, u.status, str(u.trained_tokens),
                      _credits(u.credits), views.when(u.start_time), views.when(u.end_time))
    console.print(table)
    console.print(f"total: {sum(u.trained_tokens for u in res.usage)} trained tokens, "
                  f"{_credits(sum(u.credits for u in res.usage))} credits")
    if res.next_page_token:
        console.print(f"more: --page-token {res.next_page_token}")


@usage_app.command()
@_rpc
def inference(since: Optional[datetime] = SINCE, until: Optional[datetime] = UNTIL,
              model: str = MODEL, user: str = USER, limit: int = typer.Option(50),
              page_token: str = typer.Option("")):
    """Inference usage per request (COMPLETE, batch generation rows, evaluations), newest
    first."""
    with _client() as client:
        res = client.inference_usage(since, until, model, user, limit, page_token)
    table = Table("time", "source", "request", "model", "base model", "user", "prompt",
                  "completion", "total", "credits")
    for u in res.usage:
        table.add_row(views.when(u.time), u.source, u.request_id, u.model, u.base_model, u.user,
                      str(u.prompt_tokens), str(u.completion_tokens), str(u.total_tokens),
                      _credits(u.credits))
    console.print(table)
    if res.next_page_token:
        console.print(f"more: --page-token {res.next_page_token}")


@usage_app.command()
@_rpc
def summary(by: List[str] = typer.Option([], help="model, user, day and/or account "
                                                  "(repeatable)"),
            since: Optional[datetime] = SINCE, until: Optional[datetime] = UNTIL,
            model: str = MODEL, user: str = USER,
            shared_models: bool = typer.Option(False, "--shared-models",
                                               help="other accounts' usage of your models "
                                                    "shared with them (not by user)")):
    """Inference usage aggregated by model, user, day and/or account."""
    groupings = [part.strip().lower() for item in by for part in item.split(",") if part.strip()]
    unknown = set(groupings) - {"model", "user", "day", "account"}
    if unknown:
        raise ValueError(f"--by takes model, user, day or account (not "
                         f"{', '.join(sorted(unknown))})")
    with _client() as client:
        groups = client.aggregate_inference_usage(groupings, since, until, model, user,
                                                  shared_models)
    table = Table(*groupings, "requests", "prompt", "completion", "total", "credits")
    for g in groups:
        keys = {"model": g.model, "user": g.user, "day": g.day, "account": g.account}
        table.add_row(*[keys[name] for name in groupings], str(g.requests),
                      str(g.prompt_tokens), str(g.completion_tokens), str(g.total_tokens),
                      _credits(g.credits))
    console.print(table)
