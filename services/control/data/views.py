"""Views, kept by the catalog itself and expanded into the queries that read them.

DuckDB's own views do not survive this catalog's naming: DuckDB stores a view's query relative
to the view's database (`sales.public.train` inside a view of `sales` becomes `public.train`),
and `public.train` is ambiguous wherever the default database `public` is attached too, which
is every session here. So each database keeps its views' queries in a table of its own
(`"$catalog".views`, a schema no identifier can name) and a query that names a view gets it
replaced by its query as a subquery, through DuckDB's own parser (json_serialize_sql and back).
The expanded query then passes the sandbox's checks like any other, so a view never reads more
than its reader may.
"""

from __future__ import annotations

import json
from typing import Iterable

from services.common.errors import InvalidArgument, PermissionDenied
from services.control.data.sandbox import NOT_USABLE, ReadScope, quote, run_sql, syntax_tree

CATALOG_SCHEMA = "$catalog"
VIEWS = f"{quote(CATALOG_SCHEMA)}.views"
MAX_VIEW_DEPTH = 8

ViewName = tuple[str, str, str]   # database, schema, view


def is_hidden_schema(schema: str) -> bool:
    return schema.startswith("$")


def ensure_views_table(connection, database: str) -> None:
    connection.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(database)}.{quote(CATALOG_SCHEMA)}")
    connection.execute(
        f"CREATE TABLE IF NOT EXISTS {quote(database)}.{VIEWS} (schema_name VARCHAR, "
        "view_name VARCHAR, query VARCHAR, PRIMARY KEY (schema_name, view_name))")


def load_views(connection, databases: Iterable[str]) -> dict[ViewName, str]:
    """Every view of the attached `databases`, by (database, schema, view)."""
    views: dict[ViewName, str] = {}
    for database in databases:
        has_table = connection.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE database_name = ? AND schema_name = ? "
            "AND table_name = 'views'", [database, CATALOG_SCHEMA]).fetchone()[0]
        if not has_table:
            continue
        for schema, name, query in connection.execute(
                f"SELECT schema_name, view_name, query FROM {quote(database)}.{VIEWS}"
        ).fetchall():
            views[(database, schema, name)] = query
    return views


def save_view(connection, name: ViewName, query: str) -> None:
    database, schema, view = name
    ensure_views_table(connection, database)
    connection.execute(f"DELETE FROM {quote(database)}.{VIEWS} WHERE schema_name = ? AND "
                       "view_name = ?", [schema, view])
    connection.execute(f"INSERT INTO {quote(database)}.{VIEWS} VALUES (?, ?, ?)",
                       [schema, view, query])


def delete_views(connection, database: str, schema: str, view: str | None = None) -> int:
    """Forget one view, or (view None) every view of a schema; how many were deleted."""
    if not load_views(connection, [database]):
        return 0
    condition, params = "schema_name = ?", [schema]
    if view is not None:
        condition, params = condition + " AND view_name = ?", params + [view]
    count = connection.execute(f"SELECT count(*) FROM {quote(database)}.{VIEWS} WHERE "
                               f"{condition}", params).fetchone()[0]
    connection.execute(f"DELETE FROM {quote(database)}.{VIEWS} WHERE {condition}", params)
    return int(count)


def expand_views(connection, query: str, views: dict[ViewName, str],
                 scope: ReadScope | None = None) -> str:
    """`query` with every view it names replaced by the view's query (nested views too). With a
    scope, reading a view needs USAGE on its schema, as reading a table does."""
    if not views:
        return query
    current = connection.execute("SELECT current_database(), current_schema()").fetchone()
    tree = syntax_tree(connection, query)
    expander = _Expander(connection, views, (current[0], current[1]), scope)
    expanded = expander.rewrite(tree, depth=0)
    if not expander.expanded:
        return query
    return run_sql(lambda: connection.execute("SELECT json_deserialize_sql(?::JSON)",
                                              [json.dumps(expanded)]).fetchone()[0])


class _Expander:
    def __init__(self, connection, views: dict[ViewName, str], default: tuple[str, str],
                 scope: ReadScope | None):
        self._connection = connection
        self._views = views
        self._default = default
        self._scope = scope
        self._trees: dict[ViewName, dict] = {}
        self.expanded = False

    def rewrite(self, node, depth: int, ctes: frozenset[str] = frozenset()):
        if isinstance(node, list):
            return [self.rewrite(item, depth, ctes) for item in node]
        if not isinstance(node, dict):
            return node
        names = {entry["key"].lower() for entry in (node.get("cte_map") or {}).get("map", [])
                 if isinstance(entry, dict) and isinstance(entry.get("key"), str)}
        ctes = ctes | names
        if node.get("type") == "BASE_TABLE":
            view = self._view_named(node, ctes)
            if view is not None:
                return self._subquery(node, view, depth)
        return {key: self.rewrite(value, depth, ctes) for key, value in node.items()}

    def _view_named(self, ref: dict, ctes: frozenset[str]) -> ViewName | None:
        catalog, schema = ref.get("catalog_name") or "", ref.get("schema_name") or ""
        table = ref.get("table_name") or ""
        if catalog:
            candidates = [(catalog, schema or "main", table)]
        elif schema:  # DuckDB reads a.b as schema a of the current database, else database a
            candidates = [(self._default[0], schema, table), (schema, "main", table)]
        else:
            if table.lower() in ctes:
                return None
            candidates = [(self._default[0], self._default[1], table)]
        for candidate in candidates:
            found = self._lookup(candidate)
            if found is not None:
                return found
        return None

    def _lookup(self, name: ViewName) -> ViewName | None:
        for view in self._views:   # identifiers are case-insensitive
            if tuple(p.lower() for p in view) == tuple(p.lower() for p in name):
                return view
        return None

    def _subquery(self, ref: dict, view: ViewName, depth: int) -> dict:
        if depth >= MAX_VIEW_DEPTH:
            raise InvalidArgument(f"views nest more than {MAX_VIEW_DEPTH} deep (does view "
                                  f"{'.'.join(view)} read itself?)")
        if self._scope is not None and not self._scope.can_read_schema(view[0], view[1]):
            raise PermissionDenied(NOT_USABLE)
        if view not in self._trees:
            tree = syntax_tree(self._connection, self._views[view])
            self._trees[view] = tree["statements"][0]
        self.expanded = True
        statement = self.rewrite(self._trees[view], depth + 1)
        return {"type": "SUBQUERY", "alias": ref.get("alias") or view[2],
                "sample": ref.get("sample"), "query_location": ref.get("query_location", 0),
                "query_location_length": ref.get("query_location_length", 0),
                "subquery": statement,
                "column_name_alias": ref.get("column_name_alias") or []}


def view_sql(name: ViewName) -> str:
    """How a view is read in full: for describing its columns."""
    return "SELECT * FROM " + ".".join(quote(p) for p in name)

