"""`finetune sql`: one sandboxed SELECT over the catalog, shown as a table, CSV or JSON Lines,
or saved as a table.

    finetune sql "SELECT label, count(*) AS n FROM shop.public.held_out GROUP BY 1 ORDER BY 2 DESC"
    finetune sql "SELECT * FROM shop.public.tickets" --csv > tickets.csv
    finetune sql "SELECT prompt, completion FROM shop.public.tickets WHERE ..." \\
        --into shop.public.billing_tickets

Registered in main.py as `app.command("sql")(sql)`.
"""

from __future__ import annotations

import csv
import json
import sys
from typing import Optional

import typer
from rich.table import Table

from services.cli import views
from services.cli.connection import client as _client
from services.cli.connection import rpc_errors as _rpc

console = views.console
# Rows a table on the terminal shows unless --limit says otherwise; CSV and JSON stream all.
SHOWN_ROWS = 1000


@_rpc
def sql(query: str = typer.Argument(..., help="one SELECT over your tables and views"),
        as_csv: bool = typer.Option(False, "--csv", help="CSV on standard output"),
        as_json: bool = typer.Option(False, "--json", help="JSON Lines on standard output "
                                                           "(NULL as null)"),
        limit: Optional[int] = typer.Option(None, min=1,
                                            help=f"at most this many rows (a table shows "
                                                 f"{SHOWN_ROWS} unless told)"),
        into: str = typer.Option("", help="save the result as this table "
                                          "(database.schema.table) instead of showing it"),
        replace: bool = typer.Option(False, help="with --into: replace an existing table "
                                                 "(needs OWNERSHIP of its schema)")):
    """Run a query in the sandbox: every page of its rows, or the result saved as a table."""
    if as_csv and as_json:
        raise ValueError("choose one of --csv and --json")
    with _client() as client:
        if into:
            table = client.save_query(query, into, replace)
            console.print(f"saved {table.row_count} rows into {table.name} "
                          f"({', '.join(c.name for c in table.columns)})")
            return
        if replace:
            raise ValueError("--replace applies only with --into")
        shown = limit if limit is not None else (None if as_csv or as_json else SHOWN_ROWS)
        columns, rows = client.query_rows(query, limit=shown)
        names = [c.name for c in columns]
        if as_csv:
            writer = csv.writer(sys.stdout)
            writer.writerow(names)
            for row in rows:
                writer.writerow(["" if row[n] is None else row[n] for n in names])
        elif as_json:
            for row in rows:
                sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
        else:
            out = Table(*names)
            count = 0
            for row in rows:
                out.add_row(*["NULL" if row[n] is None else row[n] for n in names])
                count += 1
            console.print(out)
            more = " (the first rows only: --limit or --csv for more)" \
                if shown is not None and count == shown and limit is None else ""
            console.print(f"{count} row{'s' if count != 1 else ''}{more}")
