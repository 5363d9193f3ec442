"""An evaluation's files in the artifact store: the query's rows frozen as JSON Lines at
EvaluateModel (so a restart re-runs exactly the rows that were validated), and the result CSVs.

    evaluations/<id>/data.jsonl        {"prompt": ..., "reference": ...} per line
    evaluations/<id>/metrics.csv       type,name,value,precision,recall,f1,support
    evaluations/<id>/predictions.csv   prompt,reference,prediction,correct
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Generator, Sequence

from services.common.artifacts import ArtifactStore
from services.common.errors import InvalidArgument
from services.control.data.catalog import DataCatalog
from services.control.data.sandbox import ReadScope
from services.control.domain.evaluations import LabelMetric, evaluation_columns, evaluation_record

DATA_FILE = "data.jsonl"
METRICS_FILE = "metrics.csv"
PREDICTIONS_FILE = "predictions.csv"
RESULT_FILES = (METRICS_FILE, PREDICTIONS_FILE)


def evaluation_uri(artifacts: ArtifactStore, evaluation_id: str, name: str = "") -> str:
    return artifacts.uri("evaluations", evaluation_id, *([name] if name else []))


@dataclass(frozen=True)
class Snapshot:
    rows: int
    references: frozenset[str]     # the distinct labels / answers (they size max_tokens)


def snapshot_rows(catalog: DataCatalog, artifacts: ArtifactStore, account_id: str, sql: str,
                  uri: str, max_rows: int, scope: ReadScope | None,
                  what: str = "evaluation query") -> Snapshot:
    """Run `sql` in the sandbox (with the caller's read scope), check its columns and row count,
    and write its rows to `uri`. Nothing is left behind on failure."""
    if not sql.strip():
        raise InvalidArgument(f"{what} is required")
    rows = 0
    references: set[str] = set()
    try:
        with catalog.query(account_id, sql, scope) as result, artifacts.open(uri, "wb") as out:
            columns = evaluation_columns(result.column_names, what)
            for batch in result.batches():
                for row in batch:
                    rows += 1
                    if rows <= max_rows:
                        record = evaluation_record(columns, row, rows, what)
                        references.add(record["reference"])
                        out.write(json.dumps(record, ensure_ascii=False).encode() + b"\n")
        if rows == 0:
            raise InvalidArgument(f"{what} returned 0 rows; at least 1 is needed")
        if rows > max_rows:
            raise InvalidArgument(f"{what} returned {rows} rows, more than the limit of "
                                  f"{max_rows} rows per evaluation")
    except BaseException:
        artifacts.delete(uri)
        raise
    return Snapshot(rows, frozenset(references))


def read_rows(artifacts: ArtifactStore, uri: str) -> list[dict]:
    with artifacts.open(uri, "rb") as f:
        return [json.loads(line) for line in f if line.strip()]


def metrics_csv(metrics: dict[str, float], labels: Sequence[LabelMetric]) -> bytes:
    """One row per summary metric (type metric), then one per label (type label)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["type", "name", "value", "precision", "recall", "f1", "support"])
    for name in sorted(metrics):
        writer.writerow(["metric", name, repr(float(metrics[name])), "", "", "", ""])
    for m in labels:
        writer.writerow(["label", m.label, "", repr(m.precision), repr(m.recall), repr(m.f1),
                         m.support])
    return out.getvalue().encode()


def predictions_csv(rows: Sequence[dict], predictions: Sequence[str],
                    correct: Sequence[bool]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["prompt", "reference", "prediction", "correct"])
    for row, prediction, ok in zip(rows, predictions, correct, strict=True):
        writer.writerow([row["prompt"], row["reference"], prediction, "true" if ok else "false"])
    return out.getvalue().encode()


def result_chunks(artifacts: ArtifactStore, evaluation_id: str, name: str,
                  chunk_size: int = 1 << 20) -> Generator[bytes, None, None]:
    return artifacts.iter_chunks(evaluation_uri(artifacts, evaluation_id, name), chunk_size)
