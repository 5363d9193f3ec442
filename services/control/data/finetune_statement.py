"""FINETUNE inside RunQuery, with Cortex's shapes:

    SELECT FINETUNE('CREATE', model, base_model, training_query [, validation_query [, options]])
    SELECT FINETUNE('SHOW')
    SELECT FINETUNE('DESCRIBE', job_id)
    SELECT FINETUNE('CANCEL', job_id)

FINETUNE is a statement written as a function: it must be the query's only expression, with
constant arguments and no FROM. As a function over rows it would create a job per row, and a
job's training query run inside another query's read of the catalog could wait on itself.
`options` is a JSON object, as text or as a struct literal ({'max_epochs': 2}), with the field
names of the API's FineTuningOptions. Parsing is pure (DuckDB's own parser, no tables): what
the call does is control's business (services.control.api.sql_finetune).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from services.common.errors import InvalidArgument
from services.control.data.sandbox import function_names, parsed

NAME = "finetune"
ACTIONS = {"CREATE": (3, 5), "SHOW": (0, 0), "DESCRIBE": (1, 1), "CANCEL": (1, 1)}
USAGE = ("FINETUNE is called alone, with constant arguments: SELECT FINETUNE('SHOW'), "
         "FINETUNE('DESCRIBE', 'ft_...'), FINETUNE('CANCEL', 'ft_...') or FINETUNE('CREATE', "
         "model, base_model, training_query [, validation_query [, options]])")


@dataclass(frozen=True)
class FinetuneCall:
    action: str                       # CREATE | SHOW | DESCRIBE | CANCEL
    arguments: tuple[Any, ...]        # after the action; None for SQL NULL
    column: str = NAME                # the result's column name (the call's alias)

    def text(self, index: int, what: str, required: bool = True) -> str:
        """Argument `index` as text; a missing or NULL optional one is ''."""
        value = self.arguments[index] if index < len(self.arguments) else None
        if value is None:
            if required:
                raise InvalidArgument(f"FINETUNE('{self.action}'): {what} must not be NULL")
            return ""
        if not isinstance(value, str):
            raise InvalidArgument(f"FINETUNE('{self.action}'): {what} must be text")
        return value

    def options(self, index: int) -> dict:
        """Argument `index` as a JSON object ({} when missing or NULL)."""
        value = self.arguments[index] if index < len(self.arguments) else None
        if value is None:
            return {}
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise InvalidArgument("FINETUNE options must be a JSON object") from None
        if not isinstance(value, dict):
            raise InvalidArgument("FINETUNE options must be a JSON object")
        return value


def mentions_finetune(sql: str) -> bool:
    """A cheap test before parsing: most queries never name the function."""
    return NAME in sql.lower()


def parse(sql: str) -> FinetuneCall | None:
    """The query's FINETUNE call, or None when the query names no FINETUNE function (a
    query that names it any other way than as a lone call is InvalidArgument)."""
    if not mentions_finetune(sql):
        return None
    tree = parsed(sql)
    if tree is None or NAME not in {name.lower() for name in function_names(tree)}:
        return None
    try:
        return _call(tree)
    except RecursionError:   # literals nested past Python's stack: refused, not INTERNAL
        raise InvalidArgument("FINETUNE's arguments nest too deeply") from None


def _call(tree: dict) -> FinetuneCall:
    statements = tree.get("statements") or []
    node = statements[0].get("node", {}) if len(statements) == 1 else {}
    select = node.get("select_list") or []
    lone = (node.get("type") == "SELECT_NODE" and len(select) == 1 and _is_call(select[0])
            and (node.get("from_table") or {}).get("type") == "EMPTY"
            and not node.get("modifiers") and not (node.get("cte_map") or {}).get("map")
            and not any(node.get(k) for k in ("where_clause", "group_expressions", "having",
                                              "qualify", "sample")))
    if not lone:
        raise InvalidArgument(USAGE)
    call = select[0]
    values = [_constant(a["expression"]) for a in call.get("arguments", [])]
    if not values or not isinstance(values[0], str):
        raise InvalidArgument(USAGE)
    action = values[0].strip().upper()
    if action not in ACTIONS:
        raise InvalidArgument(f"FINETUNE's first argument is one of {', '.join(ACTIONS)}, "
                              f"not {values[0]!r}")
    low, high = ACTIONS[action]
    if not low <= len(values) - 1 <= high:
        wanted = str(low) if low == high else f"{low} to {high}"
        raise InvalidArgument(f"FINETUNE('{action}') takes {wanted} more arguments, "
                              f"not {len(values) - 1}")
    return FinetuneCall(action, tuple(values[1:]), call.get("alias") or NAME)


def _is_call(node: dict) -> bool:
    return (node.get("class") == "FUNCTION"
            and str(node.get("function_name", "")).lower() == NAME)


_NUMBERS = {"INTEGER": int, "BIGINT": int, "HUGEINT": int, "UBIGINT": int, "NUMERIC": float,
            "DECIMAL": float, "DOUBLE": float, "FLOAT": float}


def _constant(expression: dict) -> Any:
    """A literal, or a struct / list literal of them, as Python; anything else (a column, a
    function, a subquery) is refused: the call's arguments are fixed before it runs."""
    kind = expression.get("class")
    if kind == "CONSTANT":
        literal = expression.get("literal") or {}
        text, literal_kind = literal.get("text", ""), literal.get("kind", "")
        if literal_kind == "NULL_LITERAL":
            return None
        if literal_kind == "STRING":
            return text
        if literal_kind == "BOOLEAN":
            return text.lower() == "true"
        if literal_kind in _NUMBERS:
            return _NUMBERS[literal_kind](text)
    elif kind == "FUNCTION" and not expression.get("schema"):
        name = str(expression.get("function_name", "")).lower()
        arguments = expression.get("arguments", [])
        if name == "struct_pack":
            return {a.get("name") or a["expression"].get("alias", ""): _constant(a["expression"])
                    for a in arguments}
        if name == "list_value":
            return [_constant(a["expression"]) for a in arguments]
    raise InvalidArgument(f"FINETUNE's arguments must be constants. {USAGE}")
