"""Option defaults come from the base-model catalog; ranges are checked with clear messages."""

from dataclasses import asdict, fields

import pytest

from services.common.base_models import DEFAULT_BASE_MODEL, load_catalog
from services.common.errors import InvalidArgument
from services.common.job_spec import TrainerOptions, parse_spec
from services.control.domain.options import (AUTO_MAX_STEPS, AUTO_PATIENCE, FALLBACK_DEFAULTS,
                                             MAX_EPOCHS, RequestedOptions,
                                             TaskType, TrainingOptions, WorkerLimits,
                                             auto_schedule, resolve_options)


@pytest.fixture(scope="module")
def smollm():
    return load_catalog()[DEFAULT_BASE_MODEL]  # reads the TOML only; no model is provisioned


def test_defaults_come_from_the_catalog_entry(smollm):
    o = resolve_options(RequestedOptions(), smollm, WorkerLimits(default_num_workers=2))
    assert o.auto == ("max_epochs", "batch_size", "learning_rate")
    assert o.learning_rate == 0.002   # the catalog's 1e-3 at batch 4, at the provisional 16
    assert (o.lora_rank, o.lora_alpha, o.lora_dropout) == (16, 32, 0.0)
    assert o.target_modules == smollm.target_modules
    assert o.seed == 42 and o.num_workers == 2 and o.task_type is TaskType.INSTRUCTION
    assert o.from_model is None


def test_requested_values_override_defaults(tiny_base):
    o = resolve_options(RequestedOptions(max_epochs=1, learning_rate=0.01, lora_rank=32,
                                         target_modules=("q_proj",), seed=7, num_workers=1,
                                         task_type=TaskType.CHAT), tiny_base)
    assert (o.max_epochs, o.learning_rate, o.lora_rank, o.seed, o.num_workers) == \
        (1, 0.01, 32, 7, 1)
    assert o.target_modules == ("q_proj",) and o.task_type is TaskType.CHAT
    assert o.batch_size == 4  # tiny_base's own default


@pytest.mark.parametrize("requested,message", [
    (RequestedOptions(max_epochs=11), "max_epochs must be between 1 and 10 (got 11)"),
    (RequestedOptions(max_epochs=-1), "max_epochs must not be negative"),
    (RequestedOptions(learning_rate=-0.1), "learning_rate must not be negative"),
    (RequestedOptions(learning_rate=2.0), "learning_rate must be in (0, 1]"),
    (RequestedOptions(learning_rate=float("nan")), "learning_rate must be a finite number"),
    (RequestedOptions(lora_rank=33), "lora_rank must be between 1 and 32 for tiny-base"),
    (RequestedOptions(lora_dropout=1.0), "lora_dropout must be in [0, 1)"),
    (RequestedOptions(batch_size=5000), "batch_size must be between 1 and 1024"),
    (RequestedOptions(num_workers=9), "num_workers must be between 1 and 8"),
    (RequestedOptions(target_modules=("lm_head",)), "target_modules ['lm_head'] are not"),
    (RequestedOptions(target_modules=("q_proj", "q_proj")), "lists a module twice"),
])
def test_out_of_range_options_are_invalid(tiny_base, requested, message):
    with pytest.raises(InvalidArgument) as err:
        resolve_options(requested, tiny_base)
    assert message in err.value.message


def test_every_problem_is_reported_at_once(tiny_base):
    with pytest.raises(InvalidArgument) as err:
        resolve_options(RequestedOptions(max_epochs=12, lora_rank=64), tiny_base)
    assert "max_epochs" in err.value.message and "lora_rank" in err.value.message


def test_options_round_trip_through_storage(tiny_base):
    o = resolve_options(RequestedOptions(task_type=TaskType.CONTINUED_PRETRAINING,
                                         from_model="PUBLIC.PUBLIC.M"), tiny_base)
    assert TrainingOptions.from_dict(o.to_dict()) == o


def test_trainer_options_match_the_spec_contract(tiny_base):
    """Every option of a job but its task, lineage and auto list goes to the trainer, whose spec
    parser reads back exactly what control wrote."""
    o = resolve_options(RequestedOptions(), tiny_base)
    job_only = {"task_type", "from_model", "auto"}
    assert {f.name for f in fields(TrainingOptions)} - job_only == \
        {f.name for f in fields(TrainerOptions)}
    sent = o.trainer_options()
    assert all(getattr(sent, f.name) == getattr(o, f.name) for f in fields(TrainerOptions))
    assert parse_spec({"job_id": "ft_1", "task_type": "INSTRUCTION",
                       "base_model": {"name": "b", "path": "/b", "context_window": 8,
                                      "prompt_tokens": 4, "completion_tokens": 4},
                       "training_data_uri": "t", "output_uri": "o", "checkpoint_uri": "c",
                       "artifact_root": "r", "options": asdict(sent)}).options == sent


def test_the_fallback_defaults_are_the_trainers():
    for name in ("learning_rate", "lora_rank", "lora_alpha", "lora_dropout", "seed",
                 "neftune_noise_alpha"):
        assert FALLBACK_DEFAULTS[name] == getattr(TrainerOptions(), name)


@pytest.mark.parametrize("rows,expected", [
    (20, (10, 2)),       # 10 steps an epoch, capped at MAX_EPOCHS
    (40, (10, 2)),
    (200, (7, 4)),       # 50 steps an epoch
    (693, (8, 16)),      # BANKING77, 10 examples per intent less the holdout: 44 steps an epoch
    (5000, (2, 16)),
    (20000, (1, 16)),    # enough steps in one pass
])
def test_auto_schedule_gives_small_tables_enough_steps(smollm, rows, expected):
    epochs, batch = auto_schedule(rows, smollm)
    assert (epochs, batch) == expected
    steps = epochs * -(-rows // batch)
    assert steps >= AUTO_MAX_STEPS or epochs == MAX_EPOCHS or epochs == 1
    assert (epochs - 1) * -(-rows // batch) < AUTO_MAX_STEPS   # no epoch past the budget


def test_automatic_epochs_stop_at_the_validation_plateau(smollm):
    """Epochs left to the service run until the validation loss stops improving; a patience or
    epoch count the caller gives is kept."""
    assert resolve_options(RequestedOptions(), smollm).early_stopping_patience == AUTO_PATIENCE
    assert resolve_options(RequestedOptions(early_stopping_patience=3),
                           smollm).early_stopping_patience == 3
    assert resolve_options(RequestedOptions(max_epochs=3), smollm).early_stopping_patience == 0


def test_auto_schedule_keeps_what_the_caller_chose(smollm):
    assert auto_schedule(770, smollm, epochs=2) == (2, 16)
    assert auto_schedule(770, smollm, batch_size=4) == (2, 4)


def test_auto_schedule_respects_the_row_limit(smollm):
    rows = smollm.rows_per_epoch // 2 + 1   # at most one epoch fits the limit
    assert auto_schedule(rows, smollm, batch_size=1000)[0] == 1


def test_scheduled_options_fit_the_table_and_survive_storage(smollm):
    o = resolve_options(RequestedOptions(max_epochs=2), smollm)
    assert o.auto == ("batch_size", "learning_rate")
    fitted = o.scheduled(770, smollm)
    assert (fitted.max_epochs, fitted.batch_size, fitted.learning_rate) == (2, 16, 0.002)
    assert fitted.auto == ("batch_size", "learning_rate")
    assert TrainingOptions.from_dict(fitted.to_dict()) == fitted
    assert fitted.trainer_options().learning_rate == 0.002
    explicit = resolve_options(RequestedOptions(max_epochs=3, batch_size=8), smollm)
    assert explicit.scheduled(20, smollm) == explicit


def test_checkpoint_and_early_stopping_options(tiny_base):
    o = resolve_options(RequestedOptions(), tiny_base)
    assert (o.checkpoint_every_steps, o.early_stopping_patience) == (0, 0)   # defaults: trainer's
    o = resolve_options(RequestedOptions(checkpoint_every_steps=50, early_stopping_patience=2),
                        tiny_base)
    assert o.trainer_options().checkpoint_every_steps == 50
    assert o.trainer_options().early_stopping_patience == 2
    assert TrainingOptions.from_dict(o.to_dict()) == o
    stored_before = {k: v for k, v in o.to_dict().items()
                     if k not in ("checkpoint_every_steps", "early_stopping_patience")}
    assert TrainingOptions.from_dict(stored_before).early_stopping_patience == 0
    with pytest.raises(InvalidArgument) as err:
        resolve_options(RequestedOptions(checkpoint_every_steps=-1,
                                         early_stopping_patience=-1), tiny_base)
    assert "checkpoint_every_steps" in err.value.message
    assert "early_stopping_patience" in err.value.message
    with pytest.raises(InvalidArgument, match="early_stopping_patience"):
        resolve_options(RequestedOptions(early_stopping_patience=11), tiny_base)


def test_checkpoint_and_early_stopping_options_cross_the_api(tiny_base):
    from finetune.control.v1 import jobs_pb2
    from services.control.api.messages import options_message, requested_options

    requested = requested_options(jobs_pb2.FineTuningOptions(checkpoint_every_steps=7,
                                                             early_stopping_patience=2))
    message = options_message(resolve_options(requested, tiny_base))
    assert (message.checkpoint_every_steps, message.early_stopping_patience) == (7, 2)


def test_neftune_noise_defaults_to_the_catalog_and_zero_turns_it_off(smollm, tiny_base):
    from finetune.control.v1 import jobs_pb2
    from services.control.api.messages import options_message, requested_options

    assert resolve_options(RequestedOptions(), smollm).neftune_noise_alpha == 0.0
    assert resolve_options(RequestedOptions(), tiny_base).neftune_noise_alpha == 0.0  # fallback
    unset = requested_options(jobs_pb2.FineTuningOptions())
    off = requested_options(jobs_pb2.FineTuningOptions(neftune_noise_alpha=0.0))
    strong = requested_options(jobs_pb2.FineTuningOptions(neftune_noise_alpha=15.0))
    assert (unset.neftune_noise_alpha, off.neftune_noise_alpha) == (None, 0.0)
    assert resolve_options(off, smollm).neftune_noise_alpha == 0.0
    assert resolve_options(RequestedOptions(neftune_noise_alpha=5.0),
                           smollm).neftune_noise_alpha == 5.0
    resolved = resolve_options(strong, smollm)
    assert options_message(resolved).neftune_noise_alpha == 15.0
    assert resolved.trainer_options().neftune_noise_alpha == 15.0
    for bad in (-1.0, 101.0, float("nan"), float("inf")):
        with pytest.raises(InvalidArgument, match="neftune_noise_alpha"):
            resolve_options(RequestedOptions(neftune_noise_alpha=bad), smollm)


def test_a_spec_without_neftune_trains_without_noise():
    raw = {"job_id": "ft_1", "task_type": "INSTRUCTION",
           "base_model": {"name": "b", "path": "/b", "context_window": 8, "prompt_tokens": 4,
                          "completion_tokens": 4},
           "training_data_uri": "t", "output_uri": "o", "checkpoint_uri": "c",
           "artifact_root": "r", "options": {}}
    assert parse_spec(raw).options.neftune_noise_alpha == 0.0   # written before the option
    raw["options"] = {"neftune_noise_alpha": -2}
    with pytest.raises(InvalidArgument, match="neftune_noise_alpha"):
        parse_spec(raw)


@pytest.mark.parametrize("rows,batch,rate", [
    (200, 4, 0.001),       # the catalog's reference batch: its rate as written
    (693, 16, 0.002),      # BANKING77: sqrt(16 / 4) = 2x
    (20, 2, 0.000707107),
])
def test_a_learning_rate_left_to_the_service_follows_the_batch(smollm, rows, batch, rate):
    fitted = resolve_options(RequestedOptions(), smollm).scheduled(rows, smollm)
    assert (fitted.batch_size, fitted.learning_rate) == (batch, rate)
    assert TrainingOptions.from_dict(fitted.to_dict()) == fitted


def test_a_requested_learning_rate_or_batch_is_kept(smollm, tiny_base):
    asked = resolve_options(RequestedOptions(learning_rate=0.003), smollm)
    assert "learning_rate" not in asked.auto
    assert asked.scheduled(693, smollm).learning_rate == 0.003
    batch8 = resolve_options(RequestedOptions(batch_size=8), smollm).scheduled(693, smollm)
    assert (batch8.batch_size, batch8.learning_rate) == (8, 0.00141421)
    # A catalog entry without learning_rate_batch keeps its rate at any batch.
    assert resolve_options(RequestedOptions(batch_size=64), tiny_base).learning_rate == 0.001
