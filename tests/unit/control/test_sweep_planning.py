"""Sweep planning without I/O: grids and random draws, the budget's refusals, the objective and
the choice of the best trial."""

import math

import pytest

from services.common.errors import InvalidArgument, ResourceExhausted
from services.control.domain.options import RequestedOptions
from services.control.domain.sweeps import (
    MAX_TRIALS,
    Budget,
    Parameter,
    SearchMethod,
    SearchSpace,
    Trial,
    TrialOutcome,
    TrialState,
    best_trial,
    candidate_name,
    effective_budget,
    plan_trials,
    resolve_objective,
    tokens_committed,
    trial_options,
)

GRID = SearchMethod.GRID
RANDOM = SearchMethod.RANDOM


def grid(*parameters: Parameter) -> SearchSpace:
    return SearchSpace(GRID, parameters)


def test_a_grid_is_every_combination_the_last_parameter_fastest():
    trials = plan_trials(grid(Parameter("learning_rate", (1e-3, 2e-3)),
                              Parameter("lora_rank", (8, 16, 32))), 0)
    assert trials == [{"learning_rate": lr, "lora_rank": r}
                      for lr in (1e-3, 2e-3) for r in (8, 16, 32)]


def test_a_grid_larger_than_the_job_budget_is_refused():
    space = grid(Parameter("learning_rate", (1e-3, 2e-3)), Parameter("max_epochs", (1, 2)))
    with pytest.raises(ResourceExhausted, match="4 trials but the budget allows 3 jobs"):
        plan_trials(space, 3)
    assert len(plan_trials(space, 4)) == 4


@pytest.mark.parametrize("space, message", [
    (grid(), "no parameters"),
    (grid(Parameter("optimizer", (1, 2))), "cannot search over 'optimizer'"),
    (grid(Parameter("lora_rank", (8,)), Parameter("lora_rank", (16,))), "appears twice"),
    (grid(Parameter("lora_rank", (8, 8.5))), "whole numbers"),
    (grid(Parameter("lora_rank", (8, 8))), "lists a value twice"),
    (grid(Parameter("learning_rate", min=1e-4, max=1e-3)), "a grid needs the values"),
    (grid(Parameter("learning_rate", (1e-3,), min=1e-4, max=1e-3)), "not both"),
    (grid(Parameter("learning_rate", (math.inf,))), "finite"),
    (SearchSpace(RANDOM, (Parameter("learning_rate", min=1e-3, max=1e-4),), 2), "min < max"),
    (SearchSpace(RANDOM, (Parameter("learning_rate", min=0, max=1e-3, log_scale=True),), 2),
     "log-scale range needs min > 0"),
    (SearchSpace(RANDOM, (Parameter("seed", (1, 2)),)), "needs space.trials or"),
    (SearchSpace(GRID, (Parameter("seed", (1, 2)),), trials=3), "leave trials 0"),
    (grid(Parameter("seed", tuple(range(MAX_TRIALS + 1)))), f"at most {MAX_TRIALS}"),
])
def test_malformed_spaces_are_invalid(space, message):
    with pytest.raises(InvalidArgument, match=message):
        plan_trials(space, 0)


def test_random_draws_are_reproducible_and_inside_their_ranges():
    space = SearchSpace(RANDOM, (
        Parameter("learning_rate", min=1e-4, max=1e-2, log_scale=True),
        Parameter("lora_rank", (4, 8, 16)),
        Parameter("max_epochs", min=1, max=3)), trials=20, seed=7)
    trials = plan_trials(space, 0)
    assert trials == plan_trials(space, 0)             # the seed decides
    assert trials != plan_trials(SearchSpace(RANDOM, space.parameters, 20, seed=8), 0)
    assert len(trials) == 20
    for t in trials:
        assert 1e-4 <= t["learning_rate"] <= 1e-2
        assert t["lora_rank"] in (4, 8, 16)
        assert t["max_epochs"] in (1, 2, 3)
    # a log scale reaches the low decade about as often as the high one
    assert sum(t["learning_rate"] < 1e-3 for t in trials) >= 5


def test_random_trials_default_to_the_job_budget_and_may_not_exceed_it():
    space = SearchSpace(RANDOM, (Parameter("seed", min=0, max=1000),))
    assert len(plan_trials(space, 5)) == 5
    with pytest.raises(ResourceExhausted):
        plan_trials(SearchSpace(RANDOM, space.parameters, trials=6), 5)


def test_trial_options_override_the_shared_ones_with_the_right_types():
    shared = RequestedOptions(max_epochs=2, learning_rate=1e-3, lora_rank=4)
    options = trial_options(shared, {"learning_rate": 5e-4, "lora_rank": 16.0})
    assert options.learning_rate == 5e-4 and options.max_epochs == 2
    assert options.lora_rank == 16 and isinstance(options.lora_rank, int)
    assert candidate_name("db.s.bot", 3) == "db.s.bot__trial_3"


def test_the_budget_defaults_to_every_trial_and_the_clusters_concurrency():
    assert effective_budget(Budget(), 6, 1) == Budget(6, 0, 1)
    assert effective_budget(Budget(max_concurrent=4), 6, 2).max_concurrent == 2   # capped
    assert effective_budget(Budget(8, 1000, 1), 6, 3) == Budget(8, 1000, 1)
    with pytest.raises(InvalidArgument):
        Budget(max_jobs=-1).check()


def test_the_objective_is_validation_loss_or_the_evaluation_metric():
    assert resolve_objective("", None) == resolve_objective("validation_loss", None)
    assert resolve_objective("", None).minimize
    assert resolve_objective("", "macro_f1").metric == "macro_f1"
    assert not resolve_objective("Accuracy", "macro_f1").minimize
    assert resolve_objective("accuracy", "macro_f1").metric == "accuracy"
    assert resolve_objective("training_loss", "macro_f1").minimize
    with pytest.raises(InvalidArgument, match="evaluation query"):
        resolve_objective("accuracy", None)


def outcome(index, objective, succeeded=True, tokens=100):
    return TrialOutcome(index, True, succeeded, tokens, objective)


def test_the_best_trial_is_the_lowest_loss_or_the_highest_metric_first_on_ties():
    outcomes = [outcome(1, 0.5), outcome(2, 0.3), outcome(3, 0.3), outcome(4, 0.1, False),
                outcome(5, None), outcome(6, math.nan)]
    assert best_trial(outcomes, minimize=True) == 2
    assert best_trial(outcomes, minimize=False) == 1
    assert best_trial([outcome(1, 0.1, False), outcome(2, None)], True) is None


def test_the_token_budget_counts_what_ended_trials_trained_and_running_ones_will():
    trials = [Trial(1, {}, 100, TrialState.LAUNCHED, "a"), Trial(2, {}, 100, TrialState.LAUNCHED,
                                                                   "b"),
              Trial(3, {}, 100, TrialState.PLANNED), Trial(4, {}, 100, TrialState.SKIPPED)]
    outcomes = {1: outcome(1, 0.2, tokens=150),
                2: TrialOutcome(2, False, False, 30, None)}
    assert tokens_committed(trials, outcomes) == 150 + 100
