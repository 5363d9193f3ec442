import json

import pytest

from services.common.errors import InvalidArgument
from services.trainer.spec import JobSpec, TrainerOptions, parse_spec, read_spec


def raw_spec(**overrides) -> dict:
    raw = {
        "job_id": "ft_1", "task_type": "INSTRUCTION",
        "base_model": {"name": "smollm2-135m-instruct", "path": "/models/smollm2",
                       "context_window": 2048, "prompt_tokens": 1536, "completion_tokens": 512},
        "training_data_uri": "file:///a/jobs/ft_1/data/training.jsonl",
        "validation_data_uri": None,
        "output_uri": "file:///a/jobs/ft_1/output",
        "checkpoint_uri": "file:///a/jobs/ft_1/checkpoints",
        "artifact_root": "file:///a",
        "from_adapter_uri": None,
        "options": {"max_epochs": 2, "learning_rate": 0.001, "batch_size": 4, "lora_rank": 8,
                    "lora_alpha": 16, "lora_dropout": 0.1, "target_modules": ["q_proj"],
                    "seed": 1, "num_workers": 2},
        "control_address": "127.0.0.1:50051",
    }
    raw.update(overrides)
    return raw


def test_parses_the_contract_example():
    spec = parse_spec(raw_spec())
    assert spec.job_id == "ft_1" and spec.task_type == "INSTRUCTION"
    assert spec.base_model.prompt_tokens == 1536
    assert spec.validation_data_uri is None and spec.from_adapter_uri is None
    assert spec.options == TrainerOptions(max_epochs=2, learning_rate=0.001, batch_size=4,
                                           lora_rank=8, lora_alpha=16, lora_dropout=0.1,
                                           target_modules=("q_proj",), seed=1, num_workers=2)
    assert spec.control_address == "127.0.0.1:50051"


def test_missing_options_take_defaults_and_unknown_keys_are_ignored():
    spec = parse_spec(raw_spec(options={"max_epochs": 1, "future_option": True},
                               something_new="x"))
    assert spec.options.max_epochs == 1
    assert spec.options.batch_size == TrainerOptions().batch_size
    assert parse_spec(spec.to_dict()) == spec
    # Specs written before these options existed: mid-epoch checkpoints by default, no early stop.
    assert (spec.options.checkpoint_every_steps, spec.options.early_stopping_patience) == (0, 0)


def test_checkpoint_and_early_stopping_options():
    spec = parse_spec(raw_spec(options={"checkpoint_every_steps": 25,
                                        "early_stopping_patience": 2}))
    assert (spec.options.checkpoint_every_steps, spec.options.early_stopping_patience) == (25, 2)
    assert parse_spec(spec.to_dict()) == spec


@pytest.mark.parametrize("overrides, message", [
    ({"task_type": "SUMMARIZE"}, "task_type"),
    ({"job_id": ""}, "job_id"),
    ({"training_data_uri": None}, "training_data_uri"),
    ({"base_model": {"name": "m", "path": "/m", "context_window": 100, "prompt_tokens": 90,
                     "completion_tokens": 20}}, "exceed the context window"),
    ({"options": {"max_epochs": 11}}, "max_epochs"),
    ({"options": {"lora_dropout": 1.0}}, "lora_dropout"),
    ({"options": {"batch_size": "many"}}, "options"),
    ({"options": {"target_modules": []}}, "target_modules"),
    ({"options": {"checkpoint_every_steps": -1}}, "checkpoint_every_steps"),
    ({"options": {"early_stopping_patience": -2}}, "early_stopping_patience"),
])
def test_rejects_invalid_specs(overrides, message):
    with pytest.raises(InvalidArgument, match=message):
        parse_spec(raw_spec(**overrides))


def test_the_spec_is_versioned():
    spec = parse_spec(raw_spec())   # written before spec_version existed: version 1
    assert spec.spec_version == 1 and spec.to_dict()["spec_version"] == 1
    assert parse_spec(raw_spec(spec_version=1)) == spec
    with pytest.raises(InvalidArgument, match="spec_version 2 is newer"):
        parse_spec(raw_spec(spec_version=2))
    with pytest.raises(InvalidArgument, match="spec_version"):
        parse_spec(raw_spec(spec_version="one"))


def test_task_type_is_case_insensitive():
    assert parse_spec(raw_spec(task_type="chat")).task_type == "CHAT"


def test_read_spec_from_uri_or_path(tmp_path):
    path = tmp_path / "jobs" / "ft_1" / "spec.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(raw_spec()))
    assert isinstance(read_spec(f"file://{path}"), JobSpec)
    assert read_spec(str(path)).job_id == "ft_1"
    with pytest.raises(InvalidArgument, match="does not exist"):
        read_spec(str(tmp_path / "missing.json"))
    path.write_text("{not json")
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        read_spec(str(path))


def test_the_base_models_source_travels_and_older_specs_have_none():
    assert parse_spec(raw_spec()).base_model.source == ""
    base = dict(raw_spec()["base_model"], source="s3://models/smollm2")
    spec = parse_spec(raw_spec(base_model=base))
    assert spec.base_model.source == "s3://models/smollm2"
    assert parse_spec(spec.to_dict()) == spec


def test_a_node_without_the_base_model_and_no_store_source_fails_clearly(tmp_path):
    from services.common.errors import FailedPrecondition
    from services.trainer.spec import base_model_folder

    base = dict(raw_spec()["base_model"], path=str(tmp_path / "absent"), source="path")
    with pytest.raises(FailedPrecondition, match="no model folder"):
        base_model_folder(parse_spec(raw_spec(base_model=base)))
