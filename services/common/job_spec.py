"""The job spec (`<artifact root>/jobs/<job_id>/spec.json`): the one contract between control,
which writes it when CREATE runs, and the trainer, which reads it on the cluster. Versioned:
`spec_version` says which shape a file has; a spec without one is version 1 (written before
the field existed), and a newer version than this code knows is refused rather than misread.

Pure: `JobSpec.to_dict()` and `parse_spec(dict)`; reading the file is services.trainer.spec's.
Unknown keys are ignored, so a newer control may add fields a running trainer does not use.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from services.common.errors import InvalidArgument
from services.common.formatting import TASK_TYPES

SPEC_VERSION = 1
DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                          "down_proj")
MAX_NEFTUNE_NOISE_ALPHA = 100.0


@dataclass(frozen=True)
class BaseModelRef:
    name: str
    path: str
    context_window: int
    prompt_tokens: int
    completion_tokens: int
    # The catalog's source: where a node that lacks `path` gets the folder from when it is an
    # object-store URL (services.common.base_models.ensure_folder); empty in older specs.
    source: str = ""


@dataclass(frozen=True)
class TrainerOptions:
    """The options the trainer runs with. Control always writes every one (resolved from the
    request and the base-model catalog, services.control.domain.options, whose fallbacks are
    these defaults); the defaults fill hand-written or older specs."""

    max_epochs: int = 3
    learning_rate: float = 5e-4
    batch_size: int = 8              # examples per optimizer step, across all workers
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES
    seed: int = 42
    num_workers: int = 2
    # Optimizer steps between mid-epoch checkpoints (there is always one at each epoch end);
    # 0: every quarter of an epoch, see `checkpoint_interval`.
    checkpoint_every_steps: int = 0
    # Stop once validation loss has not improved for this many epochs; 0: never stop early.
    early_stopping_patience: int = 0
    # NEFTune's alpha: noise on the input embeddings while training; 0: none (older specs).
    neftune_noise_alpha: float = 0.0


@dataclass(frozen=True)
class JobSpec:
    job_id: str
    task_type: str
    base_model: BaseModelRef
    training_data_uri: str
    validation_data_uri: str | None
    output_uri: str
    checkpoint_uri: str
    artifact_root: str
    from_adapter_uri: str | None = None
    options: TrainerOptions = field(default_factory=TrainerOptions)
    control_address: str = ""
    spec_version: int = SPEC_VERSION

    def to_dict(self) -> dict:
        raw = asdict(self)
        raw["options"]["target_modules"] = list(self.options.target_modules)
        return raw


def parse_spec(raw: dict) -> JobSpec:
    """Validate a decoded spec.json. Unknown keys are ignored so control can add fields."""
    if not isinstance(raw, dict):
        raise InvalidArgument("spec: expected a JSON object")
    version = raw.get("spec_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidArgument(f"spec.spec_version: expected a positive integer, got {version!r}")
    if version > SPEC_VERSION:
        raise InvalidArgument(f"spec.spec_version {version} is newer than this trainer reads "
                              f"({SPEC_VERSION}): upgrade the trainer image")
    task_type = _str(raw, "task_type").upper()
    if task_type not in TASK_TYPES:
        raise InvalidArgument(f"spec.task_type: {task_type!r} is not one of "
                              f"{', '.join(TASK_TYPES)}")
    return JobSpec(
        job_id=_str(raw, "job_id"),
        task_type=task_type,
        base_model=_base_model(raw.get("base_model")),
        training_data_uri=_str(raw, "training_data_uri"),
        validation_data_uri=_optional_str(raw, "validation_data_uri"),
        output_uri=_str(raw, "output_uri"),
        checkpoint_uri=_str(raw, "checkpoint_uri"),
        artifact_root=_str(raw, "artifact_root"),
        from_adapter_uri=_optional_str(raw, "from_adapter_uri"),
        options=_options(raw.get("options") or {}),
        control_address=_optional_str(raw, "control_address") or "",
        spec_version=SPEC_VERSION,
    )


def _base_model(raw) -> BaseModelRef:
    if not isinstance(raw, dict):
        raise InvalidArgument("spec.base_model: expected an object")
    ref = BaseModelRef(
        name=_str(raw, "name", "base_model."),
        path=_str(raw, "path", "base_model."),
        context_window=_int(raw, "context_window", "base_model."),
        prompt_tokens=_int(raw, "prompt_tokens", "base_model."),
        completion_tokens=_int(raw, "completion_tokens", "base_model."),
        source=_optional_str(raw, "source") or "",
    )
    if min(ref.context_window, ref.prompt_tokens, ref.completion_tokens) < 1:
        raise InvalidArgument("spec.base_model: token allocations must be positive")
    if ref.prompt_tokens + ref.completion_tokens > ref.context_window:
        raise InvalidArgument("spec.base_model: prompt_tokens + completion_tokens exceed the "
                              "context window")
    return ref


def _options(raw) -> TrainerOptions:
    if not isinstance(raw, dict):
        raise InvalidArgument("spec.options: expected an object")
    defaults = TrainerOptions()
    values = {}
    for f in fields(TrainerOptions):
        value = raw.get(f.name)
        values[f.name] = getattr(defaults, f.name) if value is None else value
    try:
        opts = TrainerOptions(
            max_epochs=int(values["max_epochs"]),
            learning_rate=float(values["learning_rate"]),
            batch_size=int(values["batch_size"]),
            lora_rank=int(values["lora_rank"]),
            lora_alpha=int(values["lora_alpha"]),
            lora_dropout=float(values["lora_dropout"]),
            target_modules=tuple(str(m) for m in values["target_modules"]),
            seed=int(values["seed"]),
            num_workers=int(values["num_workers"]),
            checkpoint_every_steps=int(values["checkpoint_every_steps"]),
            early_stopping_patience=int(values["early_stopping_patience"]),
            neftune_noise_alpha=float(values["neftune_noise_alpha"]),
        )
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"spec.options: {exc}") from None
    checks = [
        (1 <= opts.max_epochs <= 10, "max_epochs must be between 1 and 10"),
        (opts.learning_rate > 0, "learning_rate must be positive"),
        (opts.batch_size >= 1, "batch_size must be at least 1"),
        (opts.lora_rank >= 1, "lora_rank must be at least 1"),
        (opts.lora_alpha >= 1, "lora_alpha must be at least 1"),
        (0 <= opts.lora_dropout < 1, "lora_dropout must be in [0, 1)"),
        (bool(opts.target_modules), "target_modules must not be empty"),
        (opts.num_workers >= 1, "num_workers must be at least 1"),
        (opts.checkpoint_every_steps >= 0, "checkpoint_every_steps must not be negative"),
        (opts.early_stopping_patience >= 0, "early_stopping_patience must not be negative"),
        (0 <= opts.neftune_noise_alpha <= MAX_NEFTUNE_NOISE_ALPHA,
         f"neftune_noise_alpha must be between 0 and {MAX_NEFTUNE_NOISE_ALPHA:g}"),
    ]
    for ok, message in checks:
        if not ok:
            raise InvalidArgument(f"spec.options: {message}")
    return opts


def _str(raw: dict, key: str, prefix: str = "") -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"spec.{prefix}{key}: expected a non-empty string")
    return value


def _optional_str(raw: dict, key: str) -> str | None:
    value = raw.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidArgument(f"spec.{key}: expected a string or null")
    return value


def _int(raw: dict, key: str, prefix: str = "") -> int:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"spec.{prefix}{key}: expected an integer")
    return value
