"""When things happen in a run: checkpoints, early stopping, the epoch whose adapter is exported,
and the random seed of each step. Pure: numbers in, numbers out.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

CHECKPOINTS_PER_EPOCH = 4   # the default: a lost worker costs at most a quarter of an epoch


def checkpoint_interval(steps_per_epoch: int, every_steps: int) -> int:
    """Optimizer steps between mid-epoch checkpoints (`every_steps`, or 0 for the default)."""
    if every_steps > 0:
        return every_steps
    return max(1, math.ceil(steps_per_epoch / CHECKPOINTS_PER_EPOCH))


def mid_epoch_checkpoint_due(epoch_step: int, steps_per_epoch: int, interval: int) -> bool:
    """After `epoch_step` steps of an epoch; the epoch's last step always checkpoints anyway."""
    return 0 < epoch_step < steps_per_epoch and epoch_step % interval == 0


def step_seed(seed: int, epoch: int, index: int, rank: int) -> int:
    """The torch seed (dropout) of one step on one worker.

    Seeding every step, rather than once per run, makes a run resumed from a mid-epoch
    checkpoint draw the same dropout masks as an uninterrupted one without saving RNG states.
    """
    return int(np.random.SeedSequence([seed, epoch, index, rank]).generate_state(1)[0])


def best_epoch(validation_losses: Sequence[float | None]) -> int | None:
    """The epoch (from 1) with the lowest validation loss, the earliest on ties; None without
    validation."""
    scored = [(loss, epoch) for epoch, loss in enumerate(validation_losses, start=1)
              if loss is not None and math.isfinite(loss)]
    return min(scored)[1] if scored else None


def early_stop_reason(validation_losses: Sequence[float | None], patience: int) -> str | None:
    """Why training should stop after the last epoch in `validation_losses`, or None to go on.

    Stops when the last `patience` epochs all failed to beat the best loss before them
    (patience 0 never stops; without validation loss there is nothing to decide on).
    """
    if patience <= 0:
        return None
    best = best_epoch(validation_losses)
    if best is None:
        return None
    since = len(validation_losses) - best
    if since < patience:
        return None
    return (f"early stopping: validation loss did not improve for {since} epoch"
            f"{'s' if since != 1 else ''} after epoch {best} "
            f"({validation_losses[best - 1]:.4f})")
