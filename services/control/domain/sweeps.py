"""A hyperparameter sweep: a grid or random search over fine-tuning options, each trial an
ordinary fine-tuning job, within a budget; the best trial (by validation loss, or by an
evaluation metric) becomes the requested model.

Pure: planning the trials, the budget arithmetic, the objective and the choice of the best, the
sweep's states. No I/O.
"""

from __future__ import annotations

import enum
import itertools
import math
import random
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Iterable, Sequence

from services.common.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from services.control.domain.options import RequestedOptions

SWEEP_ID_PREFIX = "sw_"
MAX_TRIALS = 64
# The trial's candidate model is `<requested name>__trial_<index>` (in the same schema).
TRIAL_SUFFIX = "__trial_"

# The searchable options and whether each is an integer.
PARAMETERS: dict[str, bool] = {
    "learning_rate": False, "lora_dropout": False, "max_epochs": True, "batch_size": True,
    "lora_rank": True, "lora_alpha": True, "seed": True, "early_stopping_patience": True}

LOSSES = ("validation_loss", "training_loss")   # lower is better; every other metric higher


def new_sweep_id() -> str:
    return f"{SWEEP_ID_PREFIX}{uuid.uuid4()}"


def candidate_name(model: str, index: int) -> str:
    return f"{model}{TRIAL_SUFFIX}{index}"


class SweepStatus(enum.Enum):
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self is not SweepStatus.RUNNING


class SearchMethod(enum.Enum):
    GRID = "GRID"
    RANDOM = "RANDOM"


class TrialState(enum.Enum):
    """Where the sweep is with a trial; once LAUNCHED its job says the rest."""

    PLANNED = "PLANNED"
    LAUNCHED = "LAUNCHED"
    SKIPPED = "SKIPPED"      # never started: over budget, or the sweep ended first
    REFUSED = "REFUSED"      # its job could not be created (the error says why)


@dataclass(frozen=True)
class Parameter:
    name: str
    values: tuple[float, ...] = ()
    min: float = 0.0
    max: float = 0.0
    log_scale: bool = False

    @property
    def ranged(self) -> bool:
        return not self.values

    def to_dict(self) -> dict:
        return {"name": self.name, "values": list(self.values), "min": self.min,
                "max": self.max, "log_scale": self.log_scale}

    @classmethod
    def from_dict(cls, d: dict) -> "Parameter":
        return cls(d["name"], tuple(d.get("values", ())), float(d.get("min", 0.0)),
                   float(d.get("max", 0.0)), bool(d.get("log_scale", False)))


@dataclass(frozen=True)
class SearchSpace:
    method: SearchMethod
    parameters: tuple[Parameter, ...]
    trials: int = 0          # random: how many draws (0: the budget's max_jobs)
    seed: int = 0

    def to_dict(self) -> dict:
        return {"method": self.method.value, "parameters": [p.to_dict() for p in self.parameters],
                "trials": self.trials, "seed": self.seed}

    @classmethod
    def from_dict(cls, d: dict) -> "SearchSpace":
        return cls(SearchMethod(d["method"]),
                   tuple(Parameter.from_dict(p) for p in d.get("parameters", ())),
                   int(d.get("trials", 0)), int(d.get("seed", 0)))


@dataclass(frozen=True)
class Budget:
    max_jobs: int = 0
    max_trained_tokens: int = 0      # 0: no limit
    max_concurrent: int = 0

    def to_dict(self) -> dict:
        return {"max_jobs": self.max_jobs, "max_trained_tokens": self.max_trained_tokens,
                "max_concurrent": self.max_concurrent}

    @classmethod
    def from_dict(cls, d: dict) -> "Budget":
        return cls(int(d.get("max_jobs", 0)), int(d.get("max_trained_tokens", 0)),
                   int(d.get("max_concurrent", 0)))

    def check(self) -> None:
        for name, value in self.to_dict().items():
            if value < 0:
                raise InvalidArgument(f"budget.{name} must not be negative (0 means the default)")


def effective_budget(requested: Budget, trials: int, cluster_concurrency: int) -> Budget:
    """Defaults filled in: every planned trial, no token limit, as many at once as the cluster
    runs side by side (never more)."""
    cap = max(1, cluster_concurrency)
    concurrent = min(requested.max_concurrent or cap, cap)
    return Budget(requested.max_jobs or trials, requested.max_trained_tokens, concurrent)


Values = dict[str, float]


def _check_parameters(space: SearchSpace) -> None:
    if not space.parameters:
        raise InvalidArgument("the search space has no parameters: give each searched option "
                              "its values (grid) or values or a range (random)")
    seen: set[str] = set()
    for p in space.parameters:
        if p.name not in PARAMETERS:
            raise InvalidArgument(f"cannot search over {p.name!r}: the searchable options are "
                                  f"{', '.join(PARAMETERS)}")
        if p.name in seen:
            raise InvalidArgument(f"{p.name} appears twice in the search space")
        seen.add(p.name)
        integer = PARAMETERS[p.name]
        if any(not math.isfinite(v) for v in (*p.values, p.min, p.max)):
            raise InvalidArgument(f"{p.name}: every value must be a finite number")
        if p.values:
            if len(set(p.values)) != len(p.values):
                raise InvalidArgument(f"{p.name} lists a value twice")
            if integer and any(v != int(v) for v in p.values):
                raise InvalidArgument(f"{p.name} takes whole numbers")
            if p.min or p.max or p.log_scale:
                raise InvalidArgument(f"{p.name}: give values or a range, not both")
            continue
        if space.method is SearchMethod.GRID:
            raise InvalidArgument(f"{p.name}: a grid needs the values to try (a range is for a "
                                  "random search)")
        if not p.min < p.max:
            raise InvalidArgument(f"{p.name}: the range needs min < max (got {p.min}, {p.max})")
        if p.log_scale and p.min <= 0:
            raise InvalidArgument(f"{p.name}: a log-scale range needs min > 0")


def plan_trials(space: SearchSpace, max_jobs: int) -> list[Values]:
    """Each trial's values of the searched options. A grid is every combination (in the
    order given, the last parameter varying fastest); a random search is `trials` draws (or
    `max_jobs`), reproducible from the seed. More trials than `max_jobs` allows is
    RESOURCE_EXHAUSTED; a malformed space INVALID_ARGUMENT."""
    _check_parameters(space)
    if max_jobs < 0 or space.trials < 0:
        raise InvalidArgument("trial counts must not be negative")
    if space.method is SearchMethod.GRID:
        if space.trials:
            raise InvalidArgument("a grid has as many trials as combinations: leave trials 0")
        count = math.prod(len(p.values) for p in space.parameters)
    else:
        count = space.trials or max_jobs
        if not count:
            raise InvalidArgument("a random search needs space.trials or budget.max_jobs")
    if count > MAX_TRIALS:
        raise InvalidArgument(f"the search has {count} trials; at most {MAX_TRIALS} per sweep")
    if max_jobs and count > max_jobs:
        raise ResourceExhausted(f"the search has {count} trials but the budget allows "
                                f"{max_jobs} jobs: raise budget.max_jobs or search less")
    if space.method is SearchMethod.GRID:
        names = [p.name for p in space.parameters]
        return [dict(zip(names, combo, strict=True))
                for combo in itertools.product(*(p.values for p in space.parameters))]
    rng = random.Random(space.seed)
    return [{p.name: _draw(rng, p) for p in space.parameters} for _ in range(count)]


def _draw(rng: random.Random, p: Parameter) -> float:
    if p.values:
        return rng.choice(p.values)
    if p.log_scale:
        value = math.exp(rng.uniform(math.log(p.min), math.log(p.max)))
    else:
        value = rng.uniform(p.min, p.max)
    if PARAMETERS[p.name]:
        return float(min(math.floor(p.max), max(math.ceil(p.min), round(value))))
    return float(f"{value:.4g}")   # 0.0012345678 reads as 0.001235


def trial_options(base: RequestedOptions, values: Values) -> RequestedOptions:
    """The shared options with the trial's values over them."""
    changes: dict[str, Any] = {name: int(v) if PARAMETERS[name] else float(v)
                               for name, v in values.items()}
    return replace(base, **changes)


@dataclass(frozen=True)
class Objective:
    metric: str
    minimize: bool


def resolve_objective(requested: str, evaluation_metric: str | None) -> Objective:
    """What the trials are ranked by: validation loss by default, the evaluation's primary
    metric when trials are evaluated; losses are minimized, evaluation metrics maximized."""
    metric = requested.strip().lower()
    if not metric:
        metric = evaluation_metric or "validation_loss"
    if metric in LOSSES:
        return Objective(metric, True)
    if evaluation_metric is None:
        raise InvalidArgument(f"objective {metric!r} is an evaluation metric: give the options "
                              "an evaluation (an evaluation query), or rank by "
                              f"{' or '.join(LOSSES)}")
    return Objective(metric, False)


@dataclass
class Trial:
    index: int                       # 1-based
    values: Values
    estimated_tokens: int = 0
    state: TrialState = TrialState.PLANNED
    job_id: str | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        return {"index": self.index, "values": dict(self.values),
                "estimated_tokens": self.estimated_tokens, "state": self.state.value,
                "job_id": self.job_id, "error": self.error}

    @classmethod
    def from_dict(cls, d: dict) -> "Trial":
        return cls(int(d["index"]), {k: float(v) for k, v in d["values"].items()},
                   int(d.get("estimated_tokens", 0)), TrialState(d["state"]), d.get("job_id"),
                   d.get("error"))


@dataclass(frozen=True)
class TrialOutcome:
    """What a launched trial's job says now (read from the job and its evaluation)."""

    index: int
    terminal: bool
    succeeded: bool
    trained_tokens: int
    objective: float | None


def best_trial(outcomes: Iterable[TrialOutcome], minimize: bool) -> int | None:
    """The index of the succeeded trial with the best objective (the first on a tie); None if
    no succeeded trial has a value."""
    ranked = [o for o in outcomes if o.succeeded and o.objective is not None
              and math.isfinite(o.objective)]
    if not ranked:
        return None
    sign = 1.0 if minimize else -1.0
    return min(ranked, key=lambda o: (sign * (o.objective or 0.0), o.index)).index


def tokens_committed(trials: Sequence[Trial], outcomes: dict[int, TrialOutcome]) -> int:
    """Trained tokens the budget counts: what ended trials trained, what running ones are
    estimated to train."""
    total = 0
    for trial in trials:
        if trial.state is not TrialState.LAUNCHED:
            continue
        outcome = outcomes.get(trial.index)
        total += outcome.trained_tokens if outcome is not None and outcome.terminal \
            else trial.estimated_tokens
    return total


class IllegalSweepTransition(FailedPrecondition):
    pass


@dataclass
class Sweep:
    id: str
    account_id: str
    user_id: str
    user_name: str                   # trials are created on this user's behalf
    model: str                       # canonical db.schema.name
    base_model: str
    training_query: str
    validation_query: str
    options: dict                    # the shared RequestedOptions (core's to_dict)
    space: SearchSpace
    budget: Budget                   # effective
    objective: str
    minimize: bool
    created_on: datetime
    trials: list[Trial] = field(default_factory=list)
    evaluation: dict | None = None   # the trials' job-end evaluation (core's to_dict)
    delete_candidates: bool = False
    owner_role_id: str | None = None
    status: SweepStatus = SweepStatus.RUNNING
    # False while trial jobs may still be live: a cancelled sweep stays unsettled until the
    # runner has seen every trial job end (so a restart between CANCEL and its job cancels
    # still cancels them).
    settled: bool = False
    best_trial: int = 0
    error: str | None = None
    estimated_trained_tokens: int = 0
    finished_on: datetime | None = None
    updated_on: datetime | None = None
    request_id: str | None = None
    version: int = field(default=0, compare=False)

    @property
    def terminal(self) -> bool:
        return self.status.terminal

    def trial(self, index: int) -> Trial:
        return self.trials[index - 1]

    def progress(self, ended: int) -> float:
        """`ended`: trials whose job has ended, plus those skipped or refused."""
        return ended / len(self.trials) if self.trials else 0.0

    def _end(self, status: SweepStatus, now: datetime, error: str | None = None) -> None:
        if self.terminal:
            raise IllegalSweepTransition(
                f"sweep {self.id} is already {self.status.value}")
        self.status = status
        self.error = error
        self.finished_on = self.updated_on = now
        for trial in self.trials:
            if trial.state is TrialState.PLANNED:
                trial.state = TrialState.SKIPPED
                trial.error = trial.error or f"the sweep ended {status.value}"

    def succeed(self, best: int, now: datetime) -> None:
        self._end(SweepStatus.SUCCEEDED, now)
        self.best_trial = best
        self.settled = True

    def fail(self, message: str, now: datetime) -> None:
        self._end(SweepStatus.FAILED, now, message)
        self.settled = True

    def cancel(self, now: datetime, reason: str) -> None:
        if self.terminal:
            raise IllegalSweepTransition(
                f"sweep {self.id} is already {self.status.value} and cannot be cancelled")
        self._end(SweepStatus.CANCELLED, now, reason)
