"""The entrypoint up to the cluster: spec, data preparation, failures as one clear line."""

import json
import re

import pytest

from services.common.artifacts import ArtifactStore
from services.common.errors import FailedPrecondition, InvalidArgument
from services.trainer import job
from services.trainer.spec import parse_spec


def write_job(tmp_path, base_model_path, rows, validation=None, task_type="INSTRUCTION"):
    store = ArtifactStore(str(tmp_path / "artifacts"))
    folder = store.uri("jobs", "ft_job")
    store.write_bytes(f"{folder}/data/training.jsonl",
                      "".join(json.dumps(r) + "\n" for r in rows).encode())
    if validation is not None:
        store.write_bytes(f"{folder}/data/validation.jsonl",
                          "".join(json.dumps(r) + "\n" for r in validation).encode())
    raw = {
        "job_id": "ft_job", "task_type": task_type,
        "base_model": {"name": "smollm2-135m-instruct", "path": str(base_model_path),
                       "context_window": 2048, "prompt_tokens": 40, "completion_tokens": 512},
        "training_data_uri": f"{folder}/data/training.jsonl",
        "validation_data_uri": f"{folder}/data/validation.jsonl" if validation else None,
        "output_uri": f"{folder}/output", "checkpoint_uri": f"{folder}/checkpoints",
        "artifact_root": store.root, "options": {}, "control_address": ""}
    store.write_bytes(f"{folder}/spec.json", json.dumps(raw).encode())
    return store, f"{folder}/spec.json", parse_spec(raw)


def test_prepare_data_tokenizes_both_sets_and_counts(tmp_path, base_model_spec):
    rows = [{"prompt": "2+2?", "completion": "4"},
            {"prompt": "a long prompt " * 20, "completion": "truncated"}]
    store, _, spec = write_job(tmp_path, base_model_spec.path, rows,
                               validation=[{"prompt": "3+3?", "completion": "6"}])
    prepared = job.prepare_data(spec, store)
    assert prepared.train.rows == 2 and prepared.train.truncated_rows == 1
    assert prepared.validation.rows == 1 and len(prepared.validation.examples) == 1
    assert prepared.pad_id == 2   # SmolLM2 pads with <|im_end|>


def test_prepare_data_errors_name_the_data_set(tmp_path, base_model_spec):
    store, _, spec = write_job(tmp_path, base_model_spec.path, [{"prompt": "x"}])
    with pytest.raises(InvalidArgument, match="training data: row 1: missing column"):
        job.prepare_data(spec, store)
    store, _, spec = write_job(tmp_path, base_model_spec.path, [])
    with pytest.raises(InvalidArgument, match="no rows"):
        job.prepare_data(spec, store)
    store.delete(spec.training_data_uri)
    with pytest.raises(FailedPrecondition, match="does not exist"):
        job.prepare_data(spec, store)


def test_main_fails_with_one_clear_line(tmp_path, base_model_spec, capsys):
    _, spec_uri, _ = write_job(tmp_path, base_model_spec.path,
                               [{"prompt": "p", "completion": "c"}, {"completion": "c"}])
    assert job.main(["--spec", spec_uri]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == "fine-tuning failed: training data: row 2: missing column 'prompt'"

    assert job.main(["--spec", str(tmp_path / "nowhere" / "spec.json")]) == 1
    assert "does not exist" in capsys.readouterr().err.strip().splitlines()[-1]


def test_prepare_data_for_chat_and_continued_pretraining(tmp_path, base_model_spec):
    chat = [{"messages": [{"role": "user", "content": "hi"},
                          {"role": "assistant", "content": "hello"}]}]
    store, _, spec = write_job(tmp_path / "chat", base_model_spec.path, chat, task_type="CHAT")
    prepared = job.prepare_data(spec, store)
    assert prepared.train.rows == 1 and prepared.train.examples[0].n_targets == 2

    texts = [{"text": "lorem ipsum " * 50}, {"text": "dolor sit amet"}]
    store, _, spec = write_job(tmp_path / "cpt", base_model_spec.path, texts,
                               task_type="CONTINUED_PRETRAINING")
    prepared = job.prepare_data(spec, store)
    assert prepared.train.rows == 2 and prepared.train.truncated_rows == 0
    assert len(prepared.train.examples) == 1          # both texts fit one 2048-token window


def test_run_exports_the_best_epoch_and_says_why_it_stopped(tmp_path, base_model_spec,
                                                            tiny_model_dir, monkeypatch):
    """The driver's export after training (the cluster replaced by a finished checkpoint)."""
    import contextlib
    import types

    from trainer_testbed import CancellingReporter, FakeContext, make_spec, synthetic_examples

    from services.trainer import launch, recipe
    from services.trainer.config import TrainerConfig

    scripted = iter([3.0, 2.0, 2.5])
    monkeypatch.setattr(recipe, "_evaluate", lambda *args: next(scripted))
    ctx = FakeContext(tmp_path / "ckpt")
    recipe.train(recipe.RecipeConfig(make_spec(tiny_model_dir, max_epochs=4,
                                               early_stopping_patience=1),
                                     pad_id=0, precision="fp32", threads=1),
                 synthetic_examples(8), synthetic_examples(2), ctx)
    final = ctx.reports[-1][1]

    class Checkpoint:
        @contextlib.contextmanager
        def as_directory(self):
            yield str(final)

    monkeypatch.setattr(launch, "run_training", lambda *args: types.SimpleNamespace(
        return_value=ctx.reports[-1][0], checkpoint=Checkpoint()))
    rows = [{"prompt": "2+2?", "completion": "4"}]
    store, spec_uri, spec = write_job(tmp_path, base_model_spec.path, rows, validation=rows)
    reporter = CancellingReporter(after=10**6)   # records what the driver reports
    manifest = job.run(spec, TrainerConfig(spec_uri=spec_uri), reporter)
    said = [update.message for update, _ in reporter.updates]
    assert said[:2] == ["preparing data", said[1]] and re.fullmatch(
        r"data ready in \d+\.\d s: 1 training and 1 validation examples; starting the "
        r"training workers", said[1]), said

    state = recipe.read_checkpoint_state(final)
    assert (manifest["epochs"], manifest["steps"], manifest["best_epoch"]) == (3, 6, 2)
    assert "did not improve for 1 epoch after epoch 2" in manifest["stop_reason"]
    assert manifest["validation_loss"] == 2.0                  # the exported epoch's
    assert manifest["training_loss"] == state.epoch_losses[1]
    assert manifest["trained_tokens"] == state.trained_tokens
    out = store.local_path(spec.output_uri)
    assert (out / "adapter_model.safetensors").read_bytes() == \
        (recipe.export_adapter_dir(final) / "adapter_model.safetensors").read_bytes()
    assert (out / "training_results.csv").read_text().count("\n") == 1 + 6
