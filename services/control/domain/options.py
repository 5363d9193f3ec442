"""Fine-tuning options: the caller's choices merged over the base model's defaults, then checked.

Zero values in a request mean "use the default" (proto3 cannot tell unset from zero), so the
base-model catalog entry's `[defaults]` fill them, then the fallbacks below.
"""

from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass, field, fields, replace

from services.common.base_models import BaseModelSpec
from services.common.errors import InvalidArgument
from services.common.formatting import RECORD_FIELDS
from services.common.job_spec import MAX_NEFTUNE_NOISE_ALPHA, TrainerOptions

MAX_EPOCHS = 10
MAX_BATCH_SIZE = 1024
MAX_LORA_ALPHA = 4096

AUTO = "auto"
# Where neither the request nor the catalog says: epochs and batch fitted to the data, the rest
# the trainer's own defaults (one set of numbers, services.common.job_spec).
_TRAINER = TrainerOptions()
FALLBACK_DEFAULTS = {
    "max_epochs": AUTO,
    "learning_rate": _TRAINER.learning_rate,
    "batch_size": AUTO,
    "lora_rank": _TRAINER.lora_rank,
    "lora_alpha": _TRAINER.lora_alpha,
    "lora_dropout": _TRAINER.lora_dropout,
    "seed": _TRAINER.seed,
    "neftune_noise_alpha": _TRAINER.neftune_noise_alpha,
}


class TaskType(enum.Enum):
    INSTRUCTION = "INSTRUCTION"
    CHAT = "CHAT"
    CONTINUED_PRETRAINING = "CONTINUED_PRETRAINING"


# The columns a task's queries must return (other columns are ignored).
REQUIRED_COLUMNS: dict[TaskType, tuple[str, ...]] = {
    task: RECORD_FIELDS[task.value] for task in TaskType}


@dataclass(frozen=True)
class RequestedOptions:
    """What the caller asked for; zero/empty means default."""

    max_epochs: int = 0
    learning_rate: float = 0.0
    batch_size: int = 0
    lora_rank: int = 0
    lora_alpha: int = 0
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] = ()
    seed: int = 0
    task_type: TaskType | None = None
    from_model: str = ""
    num_workers: int = 0
    checkpoint_every_steps: int = 0
    early_stopping_patience: int = 0
    neftune_noise_alpha: float | None = None   # None: the default; 0 is off


# The automatic schedule (max_epochs / batch_size left to the service). Epochs: train until the
# validation loss stops improving (early stopping with AUTO_PATIENCE, the best epoch exported),
# within about AUTO_MAX_STEPS optimizer steps and MAX_EPOCHS, so a small table gets enough steps
# to be learnt (a 20-row table at 3 epochs x batch 8 got 9 steps and learnt nothing) and a
# large one no more passes than that. Batches grow with the table.
AUTO_MAX_STEPS = 350
AUTO_PATIENCE = 1                # with automatic epochs and no patience asked for
AUTO_ROWS_PER_BATCH_ROW = 40     # one example per batch for every 40 rows ...
AUTO_BATCH_RANGE = (2, 16)       # ... as a power of two in this range
PROVISIONAL = {"max_epochs": 1, "batch_size": AUTO_BATCH_RANGE[1]}  # until the rows are known
# A learning rate left to the service follows the batch: the catalog's `learning_rate` is the
# rate for its `learning_rate_batch` examples per step, scaled by sqrt(batch / that batch)
# (square-root scaling keeps the update's noise level as the batch grows). Measured through
# the service (docs/benchmarks.md, "Quality"): on BANKING77 at batch 16, 2e-3 beat both 1e-3
# and 3e-3; the demo (batch 4) is best at 1e-3.
# A catalog entry without `learning_rate_batch` keeps its rate at every batch.


def batch_learning_rate(base: BaseModelSpec, batch_size: int) -> float:
    """The default learning rate of `base` at `batch_size` examples per step."""
    defaults = {**FALLBACK_DEFAULTS, **base.defaults}
    rate = float(defaults["learning_rate"])
    reference = defaults.get("learning_rate_batch")
    if not reference:
        return rate
    return float(f"{rate * math.sqrt(batch_size / float(reference)):.6g}")


def auto_schedule(rows: int, base: BaseModelSpec, epochs: int = 0,
                  batch_size: int = 0) -> tuple[int, int]:
    """(max_epochs, batch_size) for a table of `rows`; a non-zero argument is kept as given."""
    rows = max(1, rows)
    if not batch_size:
        lo, hi = AUTO_BATCH_RANGE
        batch_size = max(lo, min(hi, 1 << max(0, (rows // AUTO_ROWS_PER_BATCH_ROW).bit_length()
                                              - 1)))
    if not epochs:
        steps_per_epoch = math.ceil(rows / batch_size)
        epochs = max(1, min(MAX_EPOCHS, math.ceil(AUTO_MAX_STEPS / steps_per_epoch),
                            base.rows_per_epoch // rows or 1))
    return epochs, batch_size


@dataclass(frozen=True)
class WorkerLimits:
    default_num_workers: int = 2
    max_num_workers: int = 8


@dataclass(frozen=True)
class TrainingOptions:
    """The effective options of a job: every field set and checked."""

    max_epochs: int
    learning_rate: float
    batch_size: int
    lora_rank: int
    lora_alpha: int
    lora_dropout: float
    target_modules: tuple[str, ...]
    seed: int
    num_workers: int
    task_type: TaskType = TaskType.INSTRUCTION
    from_model: str | None = None   # canonical name of the model training continues from
    checkpoint_every_steps: int = 0    # mid-epoch checkpoints; 0: every quarter of an epoch
    early_stopping_patience: int = 0   # epochs without validation improvement; 0: never stop
    neftune_noise_alpha: float = 0.0   # noise on the input embeddings while training; 0: none
    # Options the service picks from the data (auto_schedule), fixed once the rows are counted.
    auto: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        d["task_type"] = self.task_type.value
        d["auto"] = list(self.auto)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainingOptions":
        return cls(**{**d, "target_modules": tuple(d["target_modules"]),
                      "task_type": TaskType(d["task_type"]),
                      "auto": tuple(d.get("auto", ()))})

    def scheduled(self, rows: int, base: BaseModelSpec) -> "TrainingOptions":
        """These options with the automatic ones fitted to a training table of `rows`."""
        if not self.auto:
            return self
        epochs, batch = auto_schedule(
            rows, base, 0 if "max_epochs" in self.auto else self.max_epochs,
            0 if "batch_size" in self.auto else self.batch_size)
        rate = batch_learning_rate(base, batch) if "learning_rate" in self.auto \
            else self.learning_rate
        return replace(self, max_epochs=epochs, batch_size=batch, learning_rate=rate)

    def trainer_options(self) -> TrainerOptions:
        """The `options` of the trainer's spec.json."""
        return TrainerOptions(**{f.name: getattr(self, f.name) for f in fields(TrainerOptions)})


@dataclass
class _Problems:
    items: list[str] = field(default_factory=list)

    def check(self, ok: bool, message: str) -> None:
        if not ok:
            self.items.append(message)


def resolve_options(requested: RequestedOptions, base: BaseModelSpec,
                    limits: WorkerLimits = WorkerLimits()) -> TrainingOptions:
    """Fill defaults from the base model and check ranges; InvalidArgument lists every problem."""
    defaults = {**FALLBACK_DEFAULTS, **base.defaults}
    problems = _Problems()
    for name in ("max_epochs", "learning_rate", "batch_size", "lora_rank", "lora_alpha",
                 "lora_dropout", "seed", "num_workers", "checkpoint_every_steps",
                 "early_stopping_patience"):
        value = getattr(requested, name)
        problems.check(not (isinstance(value, float) and not math.isfinite(value)),
                       f"{name} must be a finite number")
        problems.check(value >= 0 if math.isfinite(value) else True,
                       f"{name} must not be negative (got {value}; 0 means the default)")
    if problems.items:
        raise InvalidArgument("invalid options: " + "; ".join(problems.items))

    auto = tuple(n for n in ("max_epochs", "batch_size")
                 if not getattr(requested, n) and defaults.get(n) == AUTO)
    if not requested.learning_rate and defaults.get("learning_rate_batch"):
        auto += ("learning_rate",)

    def pick(name):
        value = getattr(requested, name)
        if value:
            return value
        if name == "learning_rate":
            return batch_learning_rate(base, int(pick("batch_size")))
        return PROVISIONAL[name] if name in auto else defaults[name]

    target_modules = tuple(requested.target_modules) or tuple(
        defaults.get("target_modules", ()) or base.target_modules)
    options = TrainingOptions(
        max_epochs=int(pick("max_epochs")),
        learning_rate=float(pick("learning_rate")),
        batch_size=int(pick("batch_size")),
        lora_rank=int(pick("lora_rank")),
        lora_alpha=int(pick("lora_alpha")),
        lora_dropout=float(pick("lora_dropout")),
        target_modules=target_modules,
        seed=int(pick("seed")),
        num_workers=int(requested.num_workers or limits.default_num_workers),
        task_type=requested.task_type or TaskType.INSTRUCTION,
        from_model=requested.from_model or None,
        checkpoint_every_steps=int(requested.checkpoint_every_steps),
        early_stopping_patience=int(requested.early_stopping_patience
                                    or (AUTO_PATIENCE if "max_epochs" in auto else 0)),
        neftune_noise_alpha=float(defaults["neftune_noise_alpha"]
                                  if requested.neftune_noise_alpha is None
                                  else requested.neftune_noise_alpha),
        auto=auto,
    )

    problems.check(1 <= options.max_epochs <= MAX_EPOCHS,
                   f"max_epochs must be between 1 and {MAX_EPOCHS} (got {options.max_epochs})")
    problems.check(0 < options.learning_rate <= 1,
                   f"learning_rate must be in (0, 1] (got {options.learning_rate})")
    problems.check(1 <= options.batch_size <= MAX_BATCH_SIZE,
                   f"batch_size must be between 1 and {MAX_BATCH_SIZE} (got {options.batch_size})")
    problems.check(1 <= options.lora_rank <= base.max_lora_rank,
                   f"lora_rank must be between 1 and {base.max_lora_rank} for {base.name} "
                   f"(got {options.lora_rank})")
    problems.check(1 <= options.lora_alpha <= MAX_LORA_ALPHA,
                   f"lora_alpha must be between 1 and {MAX_LORA_ALPHA} (got {options.lora_alpha})")
    problems.check(0 <= options.lora_dropout < 1,
                   f"lora_dropout must be in [0, 1) (got {options.lora_dropout})")
    problems.check(math.isfinite(options.neftune_noise_alpha)
                   and 0 <= options.neftune_noise_alpha <= MAX_NEFTUNE_NOISE_ALPHA,
                   f"neftune_noise_alpha must be between 0 and {MAX_NEFTUNE_NOISE_ALPHA:g} "
                   f"(got {options.neftune_noise_alpha}; 0 turns it off)")
    problems.check(1 <= options.num_workers <= limits.max_num_workers,
                   f"num_workers must be between 1 and {limits.max_num_workers} "
                   f"(got {options.num_workers})")
    problems.check(options.seed < 2**63, "seed must fit in 63 bits")
    problems.check(options.checkpoint_every_steps < 2**31,
                   "checkpoint_every_steps must fit in 31 bits")
    problems.check(options.early_stopping_patience <= MAX_EPOCHS,
                   f"early_stopping_patience must be at most {MAX_EPOCHS} "
                   f"(got {options.early_stopping_patience}; 0 means off)")
    problems.check(bool(options.target_modules), "target_modules must not be empty")
    problems.check(len(set(options.target_modules)) == len(options.target_modules),
                   "target_modules lists a module twice")
    if base.target_modules:
        unknown = [m for m in options.target_modules if m not in base.target_modules]
        problems.check(not unknown,
                       f"target_modules {unknown} are not LoRA targets of {base.name} "
                       f"(allowed: {', '.join(base.target_modules)})")
    if problems.items:
        raise InvalidArgument("invalid options: " + "; ".join(problems.items))
    return options
