"""What every CLI command shares: the connection settings and how RPC errors are shown."""

from __future__ import annotations

import functools
from pathlib import Path

import grpc
import typer

from services.cli.client import FinetuneClient
from services.cli.settings import default_home, resolve_endpoints
from services.cli.views import console

# Filled by the top-level callback in main.py from --control/--inference/--api-key/--home.
options: dict = {}


def home() -> Path:
    return options.get("home") or default_home()


def client() -> FinetuneClient:
    ep = resolve_endpoints(options.get("control"), options.get("inference"),
                           options.get("api_key"), home())
    if not ep.api_key:
        console.print("[red]no API key: pass --api-key, set FINETUNE_API_KEY or run `finetune up`")
        raise typer.Exit(2)
    return FinetuneClient(ep.control, ep.inference, ep.api_key)


def rpc_errors(fn):
    """gRPC errors and bad arguments as one readable line and a non-zero exit code."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except grpc.RpcError as err:
            console.print(f"[red]error: {err.code().name}: {err.details()}")
            raise typer.Exit(1) from None
        except ValueError as err:
            console.print(f"[red]error: {err}")
            raise typer.Exit(2) from None
    return wrapper
