"""Checkpoint points, early stopping and the exported epoch: pure decisions."""

import math

from services.trainer.schedule import (best_epoch, checkpoint_interval, early_stop_reason,
                                       mid_epoch_checkpoint_due, step_seed)


def test_default_interval_is_a_quarter_of_an_epoch():
    assert checkpoint_interval(100, 0) == 25
    assert checkpoint_interval(10, 0) == 3
    assert checkpoint_interval(3, 0) == 1
    assert checkpoint_interval(1, 0) == 1
    assert checkpoint_interval(100, 7) == 7


def test_mid_epoch_checkpoints_leave_the_epoch_end_to_its_own_checkpoint():
    due = [s for s in range(0, 9) if mid_epoch_checkpoint_due(s, 8, 2)]
    assert due == [2, 4, 6]
    assert [s for s in range(0, 9) if mid_epoch_checkpoint_due(s, 8, 3)] == [3, 6]
    assert not any(mid_epoch_checkpoint_due(s, 4, 10) for s in range(5))


def test_best_epoch_is_the_lowest_validation_loss_earliest_on_ties():
    assert best_epoch([]) is None
    assert best_epoch([None, None]) is None
    assert best_epoch([3.0, 2.0, 2.5]) == 2
    assert best_epoch([2.0, 3.0, 2.0]) == 1
    assert best_epoch([math.nan, 2.0, math.inf]) == 2


def test_early_stopping_waits_patience_epochs_without_improvement():
    losses = [3.0, 2.0, 2.5, 2.6, 1.0]
    assert [early_stop_reason(losses[:n], 2) is not None for n in range(1, 6)] == \
        [False, False, False, True, False]
    reason = early_stop_reason(losses[:4], 2)
    assert "did not improve for 2 epochs after epoch 2" in reason and "2.0000" in reason
    assert early_stop_reason([3.0, 3.5], 1) is not None
    assert early_stop_reason([3.0, 2.9], 1) is None            # any improvement resets it
    assert early_stop_reason(losses[:4], 0) is None             # 0: off
    assert early_stop_reason([None, None, None], 1) is None     # nothing to decide on


def test_step_seeds_are_reproducible_and_distinct():
    seeds = {step_seed(42, e, i, r) for e in (1, 2) for i in range(50) for r in (0, 1)}
    assert len(seeds) == 200
    assert step_seed(42, 1, 3, 0) == step_seed(42, 1, 3, 0)
    assert step_seed(2**63 - 1, 10, 10_000, 7) >= 0
