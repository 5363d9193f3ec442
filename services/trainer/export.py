"""The job's outputs in `output_uri`: adapter, training_results.csv, loss_curve.png, manifest.json.

manifest.json is written last (and an old one removed first): control treats the job as done only
when it exists, so its presence means every other file is complete.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from services.common.artifacts import ArtifactStore

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
RESULTS_FILE = "training_results.csv"
CURVE_FILE = "loss_curve.png"
MANIFEST_FILE = "manifest.json"
RESULTS_COLUMNS = ("step", "epoch", "training_loss", "validation_loss")


@dataclass(frozen=True)
class StepRecord:
    step: int                        # from 1, over the whole run
    epoch: int                       # from 1
    training_loss: float
    validation_loss: float | None = None   # only on the last step of an epoch


@dataclass(frozen=True)
class TrainingSummary:
    job_id: str
    trained_tokens: int              # tokens of every step trained (all epochs run)
    training_loss: float             # token-weighted mean over the exported epoch
    validation_loss: float | None    # after the exported epoch
    epochs: int                      # epochs run
    steps: int                       # optimizer steps run
    training_rows: int
    validation_rows: int
    truncated_rows: int
    best_epoch: int | None = None    # the exported epoch (lowest validation loss), if validated
    stop_reason: str | None = None   # why training stopped before max_epochs (early stopping)
    precision: str | None = None     # the base weights' dtype the workers trained in


def results_csv(history: Sequence[StepRecord]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(RESULTS_COLUMNS)
    for r in history:
        writer.writerow([r.step, r.epoch, _number(r.training_loss),
                         "" if r.validation_loss is None else _number(r.validation_loss)])
    return out.getvalue()


def _number(x: float) -> str:
    return repr(round(float(x), 6)) if math.isfinite(x) else str(x)


def loss_curve_png(history: Sequence[StepRecord]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")  # no display on workers and servers
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot()
    ax.plot([r.step for r in history], [r.training_loss for r in history],
            label="training loss", linewidth=1.2)
    val = [(r.step, r.validation_loss) for r in history if r.validation_loss is not None]
    if val:
        ax.plot([step for step, _ in val], [loss for _, loss in val], "o-",
                label="validation loss (end of epoch)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def manifest(summary: TrainingSummary, files: Sequence[str]) -> dict:
    return {
        "job_id": summary.job_id,
        "trained_tokens": summary.trained_tokens,
        "training_loss": summary.training_loss,
        "validation_loss": summary.validation_loss,
        "epochs": summary.epochs,
        "steps": summary.steps,
        "training_rows": summary.training_rows,
        "validation_rows": summary.validation_rows,
        "truncated_rows": summary.truncated_rows,
        "best_epoch": summary.best_epoch,
        "stop_reason": summary.stop_reason,
        "precision": summary.precision,
        "files": list(files),
    }


def write_outputs(store: ArtifactStore, output_uri: str, adapter_dir: Path,
                  history: Sequence[StepRecord], summary: TrainingSummary) -> dict:
    """Write every output, the manifest last; returns the manifest."""
    output_uri = output_uri.rstrip("/")
    store.delete(f"{output_uri}/{MANIFEST_FILE}")
    for name in ADAPTER_FILES:
        source = Path(adapter_dir) / name
        if not source.is_file():
            raise FileNotFoundError(f"the trained adapter lacks {name}")
        store.write_bytes(f"{output_uri}/{name}", source.read_bytes())
    store.write_bytes(f"{output_uri}/{RESULTS_FILE}", results_csv(history).encode())
    store.write_bytes(f"{output_uri}/{CURVE_FILE}", loss_curve_png(history))
    files = [*ADAPTER_FILES, RESULTS_FILE, CURVE_FILE]
    result = manifest(summary, files)
    store.write_bytes(f"{output_uri}/{MANIFEST_FILE}",
                      json.dumps(result, indent=2).encode())
    return result
