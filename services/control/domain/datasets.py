"""Training rows: which columns a task needs and how one query row becomes one JSONL record.

The trainer reads `{"prompt", "completion"}` (INSTRUCTION), `{"messages"}` (CHAT) or
`{"text"}` (CONTINUED_PRETRAINING) per line; other columns of the query are ignored. The
completion column may also be named `label`, as BigQuery's supervised tuning names its target.
"""

from __future__ import annotations

import random
from typing import Sequence

from services.common.errors import InvalidArgument
from services.common.formatting import check_record
from services.control.domain.options import REQUIRED_COLUMNS, TaskType

# Without a validation query a job holds out this fraction of its training rows (at least one)
# for validation, picked by its seed; below MIN_ROWS_FOR_HOLDOUT rows it holds out none, since
# taking rows away would hurt more than a validation loss on one or two rows would tell.
HOLDOUT_FRACTION = 0.1
MIN_ROWS_FOR_HOLDOUT = 10
# Other names a required column may go by, tried in order when the column itself is absent.
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {"completion": ("label",)}


def holdout_rows(rows: int, seed: int, fraction: float = HOLDOUT_FRACTION,
                 min_rows: int = MIN_ROWS_FOR_HOLDOUT) -> frozenset[int]:
    """Which row numbers (0-based, in result order) go to validation: deterministic per seed."""
    if rows < min_rows:
        return frozenset()
    count = min(rows - 1, max(1, round(rows * fraction)))
    return frozenset(random.Random(seed).sample(range(rows), count))


def column_positions(task_type: TaskType, columns: Sequence[str], what: str) -> dict[str, int]:
    """Where each required column is in the result (names match case-insensitively)."""
    by_name: dict[str, int] = {}
    for i, name in enumerate(columns):
        by_name.setdefault(name.lower(), i)
    required = REQUIRED_COLUMNS[task_type]
    for column in required:
        for alias in COLUMN_ALIASES.get(column, ()):
            if column not in by_name and alias in by_name:
                by_name[column] = by_name[alias]
    missing = [c for c in required if c not in by_name]
    if missing:
        raise InvalidArgument(
            f"{what} must return column{'s' if len(missing) > 1 else ''} "
            f"{', '.join(_with_aliases(c) for c in missing)} for a {task_type.value} job "
            f"(it returns: {', '.join(columns) or 'no columns'})")
    return {c: by_name[c] for c in required}


def _with_aliases(column: str) -> str:
    aliases = COLUMN_ALIASES.get(column, ())
    return f"{column} (or {' or '.join(aliases)})" if aliases else column


def training_record(task_type: TaskType, positions: dict[str, int], row: Sequence,
                    row_number: int, what: str) -> dict:
    """The JSONL record of one query row, checked as the trainer checks it
    (services.common.formatting); InvalidArgument names the row and column at fault."""
    return check_record(task_type.value, {c: row[i] for c, i in positions.items()},
                        f"{what}: row {row_number}")
