"""`finetune models ...`: the account's models, one model's lineage, and adapters in and out.

    finetune models                                     # the list
    finetune models describe support.public.router      # lineage, losses, evaluations
    finetune models import team.public.bot smollm2-135m-instruct ./my-peft-adapter
    finetune models import team.public.bot smollm2-135m-instruct s3://team/adapters/bot/
    finetune models export team.public.bot --out ./bot-adapter      # a PEFT folder
    finetune models export team.public.bot --tar bot.tar            # a tar with manifest.json

Registered in main.py as `app.add_typer(models_app, name="models")`; `finetune model NAME` is
`describe`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Optional

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from services.cli import views
from services.cli.client import adapter_upload_files
from services.cli.connection import client as _client
from services.cli.connection import rpc_errors as _rpc

console = views.console

models_app = typer.Typer(help="Fine-tuned and imported models: list, describe, import, "
                              "export.")


@models_app.callback(invoke_without_command=True)
def _list(ctx: typer.Context,
          shared: bool = typer.Option(False, "--shared", help="the models other accounts share "
                                                             "with you instead")):
    """Fine-tuned and imported models of this account (a subcommand does more)."""
    if ctx.invoked_subcommand is None:
        _rpc(_print_shared if shared else _print_models)()


def _print_models():
    with _client() as client:
        out = Table("name", "base model", "job / source", "version", "trained tokens",
                    "training loss")
        for m in client.list_models():
            out.add_row(m.name, m.base_model, m.job_id or f"imported ({m.imported_from})",
                        str(m.version), str(m.trained_tokens), f"{m.training_loss:.4f}")
    console.print(out)


def _print_shared():
    with _client() as client:
        out = Table("name", "owner account", "base model", "version", "created")
        for m in client.list_models(shared=True):
            out.add_row(m.name, m.owner_account, m.base_model, str(m.version),
                        views.when(m.created_on))
    console.print(out)


@models_app.command()
@_rpc
def describe(name: str, labels: bool = typer.Option(False, help="per-label metrics of the "
                                                                "latest evaluation")):
    """One model: lineage, losses and its evaluations."""
    with _client() as client:
        m = client.get_model(name)
    out = Table(show_header=False, box=None)
    out.add_column(style="bold")
    out.add_column()
    rows = [("name", m.name), ("base_model", m.base_model)]
    if m.imported_from:
        rows += [("imported_from", m.imported_from)]
        rows += [(f"sha256 {file}", digest) for file, digest in sorted(m.file_sha256.items())]
    else:
        rows += [("job", m.job_id)]
    rows += [("version", str(m.version)), ("created_on", views.when(m.created_on)),
             ("trained_tokens", str(m.trained_tokens)),
             ("training_loss", f"{m.training_loss:.4f}"),
             ("validation_loss", f"{m.validation_loss:.4f}"),
             ("artifacts", ", ".join(m.artifacts))]
    for key, value in rows:
        out.add_row(key, value)
    console.print(out)
    if m.evaluations:
        console.print(views.evaluations_table(m.evaluations))
        latest = [e for e in m.evaluations if e.metrics][:1]
        if latest:
            console.print(views.metrics_side_by_side(latest))
            if labels:
                console.print(views.labels_side_by_side(latest))


def _transfer(description: str) -> Progress:
    return Progress(TextColumn(f"[bold]{description}"), BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), console=console)


@models_app.command("import")
@_rpc
def import_(name: str = typer.Argument(..., help="the model to create: name or db.schema.name"),
            base_model: str = typer.Argument(..., help="the base model it was trained on"),
            source: str = typer.Argument(..., help="a local PEFT folder (adapter_config.json "
                                                   "+ adapter_model.safetensors) or an "
                                                   "object-store URI such as s3://bucket/dir"),
            request_id: Optional[str] = typer.Option(None, help="idempotency key (default: "
                                                                "a new one)")):
    """Register a PEFT LoRA adapter trained elsewhere; control checks it first."""
    with _client() as client:
        if "://" in source:
            m = client.import_model(name, base_model, source, request_id)
        else:
            total = sum(p.stat().st_size for p in adapter_upload_files(Path(source)))
            with _transfer("uploading") as progress:
                task = progress.add_task("upload", total=total)
                m = client.import_model(name, base_model, Path(source), request_id,
                                        progress=lambda n: progress.advance(task, n))
    console.print(f"imported {m.name} (version {m.version}) on {m.base_model} from "
                  f"{m.imported_from}")
    for file, digest in sorted(m.file_sha256.items()):
        console.print(f"  {file}  sha256 {digest}")


@models_app.command()
@_rpc
def export(name: str,
           out: Optional[Path] = typer.Option(None, "--out", help="folder to write the PEFT "
                                                                  "files and manifest.json into"),
           tar: Optional[Path] = typer.Option(None, "--tar", help="tar archive to write")):
    """Download a model as a PEFT folder (peft and vLLM load it as it is) or a tar archive."""
    if (out is None) == (tar is None):
        raise ValueError("give exactly one of --out DIR or --tar FILE")
    target = out if out is not None else tar
    assert target is not None
    with _client() as client:
        responses = client.export_model(name, tar=tar is not None)
        first = next(responses, None)
        if first is None:
            raise ValueError(f"the export of {name} was empty")
        with _transfer("downloading") as progress:
            task = progress.add_task("download", total=first.total_bytes or None)
            if tar is not None:
                written = _write_tar(tar, first, responses, lambda n: progress.advance(task, n))
            else:
                assert out is not None
                written = _write_folder(out, first, responses,
                                        lambda n: progress.advance(task, n))
    console.print(f"wrote {written} bytes to {target}")


def _write_tar(path: Path, first, responses, advance) -> int:
    """The archive, written to a temporary sibling and renamed: never half an archive."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    size = 0
    try:
        with os.fdopen(fd, "wb") as f:
            for message in _chain(first, responses):
                f.write(message.data)
                size += len(message.data)
                advance(len(message.data))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return size


def _write_folder(folder: Path, first, responses, advance) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, IO[bytes]] = {}
    size = 0
    try:
        for message in _chain(first, responses):
            name = message.file
            if not name or "/" in name or "\\" in name or name in (".", ".."):
                raise ValueError(f"the server sent a file named {name!r}")
            if name not in files:
                files[name] = open(folder / name, "wb")
            files[name].write(message.data)
            size += len(message.data)
            advance(len(message.data))
    finally:
        for f in files.values():
            f.close()
    return size


def _chain(first, rest):
    yield first
    yield from rest
