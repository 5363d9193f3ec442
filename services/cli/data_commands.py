"""`finetune data ...`: databases, schemas and views of the data catalog, and dropping them.

    finetune data databases
    finetune data create-schema sales.staging
    finetune data create-view sales.public.recent "SELECT * FROM sales.public.t WHERE ..."
    finetune data drop-table sales.public.old --if-exists

Registered in main.py as `app.add_typer(data_app, name="data")`.
"""

from __future__ import annotations

import typer
from rich.table import Table

from services.cli import views
from services.cli.connection import client as _client
from services.cli.connection import rpc_errors as _rpc

console = views.console

data_app = typer.Typer(help="The data catalog: databases, schemas, tables and views.",
                       no_args_is_help=True)
IF_EXISTS = typer.Option(False, help="no error when it does not exist")


@data_app.command()
@_rpc
def databases():
    """The databases you may use, with their schemas."""
    out = Table("database", "schemas")
    with _client() as client:
        for d in client.list_databases():
            out.add_row(d.name, ", ".join(d.schemas))
    console.print(out)


@data_app.command("create-database")
@_rpc
def create_database(name: str):
    with _client() as client:
        console.print(f"created database {client.create_database(name)}")


@data_app.command("create-schema")
@_rpc
def create_schema(name: str = typer.Argument(..., help="database.schema")):
    with _client() as client:
        console.print(f"created schema {client.create_schema(name)}")


@data_app.command("create-view")
@_rpc
def create_view(name: str = typer.Argument(..., help="database.schema.view"),
                query: str = typer.Argument(..., help="one SELECT naming tables in full"),
                replace: bool = typer.Option(False)):
    with _client() as client:
        view = client.create_view(name, query, replace)
    console.print(f"created view {view.name} ({', '.join(c.name for c in view.columns)})")


def _dropped(kind: str, name: str, dropped: bool) -> None:
    console.print(f"dropped {kind} {name}" if dropped else f"{kind} {name} does not exist")


@data_app.command("drop-database")
@_rpc
def drop_database(name: str, if_exists: bool = IF_EXISTS):
    """Drop a database with everything in it (registered models stay)."""
    with _client() as client:
        _dropped("database", name, client.drop_database(name, if_exists))


@data_app.command("drop-schema")
@_rpc
def drop_schema(name: str, if_exists: bool = IF_EXISTS):
    """Drop a schema with its tables and views."""
    with _client() as client:
        _dropped("schema", name, client.drop_schema(name, if_exists))


@data_app.command("drop-table")
@_rpc
def drop_table(name: str, if_exists: bool = IF_EXISTS):
    with _client() as client:
        _dropped("table", name, client.drop_table(name, if_exists))


@data_app.command("drop-view")
@_rpc
def drop_view(name: str, if_exists: bool = IF_EXISTS):
    with _client() as client:
        _dropped("view", name, client.drop_view(name, if_exists))
