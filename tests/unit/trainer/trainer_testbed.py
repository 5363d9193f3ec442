"""Fakes for the trainer unit tests: a single-process WorkerContext (no Ray, no torch.distributed),
a reporter that cancels, a spec for the tiny model, learnable synthetic examples."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import numpy as np
import torch

from services.trainer.data import IGNORE_INDEX, Example
from services.trainer.spec import parse_spec

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_spec(model_dir, **options):
    raw_options = {"max_epochs": 3, "learning_rate": 0.02, "batch_size": 4, "lora_rank": 4,
                   "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": TARGETS, "seed": 7,
                   "num_workers": 1, **options}
    return parse_spec({
        "job_id": "ft_unit", "task_type": "INSTRUCTION",
        "base_model": {"name": "tiny", "path": str(model_dir), "context_window": 128,
                       "prompt_tokens": 96, "completion_tokens": 32},
        "training_data_uri": "file:///unused/training.jsonl", "validation_data_uri": None,
        "output_uri": "file:///unused/output", "checkpoint_uri": "file:///unused/checkpoints",
        "artifact_root": "file:///unused", "options": raw_options, "control_address": ""})


def synthetic_examples(n: int, seed: int = 0) -> list[Example]:
    """Prompt of random ids -> a short completion that depends a little on the prompt."""
    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(n):
        prompt = rng.integers(3, 96, size=int(rng.integers(4, 12))).tolist()
        completion = [40 + prompt[-1] % 2, 50, 1]
        examples.append(Example(np.asarray(prompt + completion, dtype=np.int32),
                                np.asarray([IGNORE_INDEX] * len(prompt) + completion,
                                           dtype=np.int32)))
    return examples


class FakeContext:
    """One worker, no cluster: keeps every reported checkpoint folder (copied) and metrics."""

    def __init__(self, workdir: Path, rank: int = 0, world_size: int = 1,
                 resume_from: Path | None = None):
        self.rank, self.world_size = rank, world_size
        self.device = torch.device("cpu")
        self.workdir = Path(workdir)
        self.resume_from = resume_from
        self.reports: list[tuple[dict, Path | None]] = []

    def wrap(self, module):
        return module

    def all_reduce_sum(self, tensor):
        return tensor

    @contextlib.contextmanager
    def latest_checkpoint(self):
        yield self.resume_from

    def report(self, metrics, checkpoint_dir):
        kept = None
        if checkpoint_dir is not None:
            kept = self.workdir / f"checkpoint_{len(self.reports)}"
            shutil.copytree(checkpoint_dir, kept)
        self.reports.append((dict(metrics), kept))


class CancellingReporter:
    """Says `cancelled` once it has seen `after` reports."""

    def __init__(self, after: int):
        self.after = after
        self.updates = []

    @property
    def cancelled(self) -> bool:
        return len(self.updates) >= self.after

    def report(self, update, force=False):
        self.updates.append((update, force))

    def close(self):
        pass
