import csv
import io
import json

import pytest

from services.common.artifacts import ArtifactStore
from services.trainer.export import (StepRecord, TrainingSummary, manifest, results_csv,
                                     write_outputs)

HISTORY = [StepRecord(1, 1, 2.5), StepRecord(2, 1, 2.0, 2.2), StepRecord(3, 2, 1.5),
           StepRecord(4, 2, 1.25, 1.4)]
SUMMARY = TrainingSummary(job_id="ft_1", trained_tokens=1234, training_loss=1.375,
                          validation_loss=1.4, epochs=2, steps=4, training_rows=8,
                          validation_rows=2, truncated_rows=1)


def test_results_csv_has_exactly_the_four_columns():
    text = results_csv(HISTORY)
    assert text.splitlines()[0] == "step,epoch,training_loss,validation_loss"
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(r["step"], r["epoch"]) for r in rows] == [("1", "1"), ("2", "1"), ("3", "2"),
                                                       ("4", "2")]
    assert [r["validation_loss"] for r in rows] == ["", "2.2", "", "1.4"]
    assert float(rows[0]["training_loss"]) == 2.5


def test_manifest_fields():
    m = manifest(SUMMARY, ["a"])
    assert m == {"job_id": "ft_1", "trained_tokens": 1234, "training_loss": 1.375,
                 "validation_loss": 1.4, "epochs": 2, "steps": 4, "training_rows": 8,
                 "validation_rows": 2, "truncated_rows": 1, "best_epoch": None,
                 "stop_reason": None, "precision": None, "files": ["a"]}
    stopped = manifest(TrainingSummary(**{**SUMMARY.__dict__, "best_epoch": 1,
                                          "stop_reason": "early stopping: ..."}), [])
    assert (stopped["best_epoch"], stopped["stop_reason"]) == (1, "early stopping: ...")
    assert manifest(TrainingSummary(**{**SUMMARY.__dict__, "precision": "bf16"}), [])[
        "precision"] == "bf16"
    assert json.loads(json.dumps(manifest(
        TrainingSummary(**{**SUMMARY.__dict__, "validation_loss": None}), [])))[
        "validation_loss"] is None


class RecordingStore(ArtifactStore):
    def __init__(self, root):
        super().__init__(root)
        self.written = []

    def write_bytes(self, uri, data):
        self.written.append(uri.rsplit("/", 1)[-1])
        super().write_bytes(uri, data)


@pytest.fixture
def adapter_dir(tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    (folder / "adapter_config.json").write_text('{"r": 4}')
    (folder / "README.md").write_text("peft's model card: not an output")
    return folder


def test_write_outputs_writes_everything_and_the_manifest_last(tmp_path, adapter_dir):
    store = RecordingStore(str(tmp_path / "artifacts"))
    out = store.uri("jobs", "ft_1", "output")
    store.write_bytes(f"{out}/manifest.json", b"{}")          # from an earlier attempt
    store.written.clear()
    result = write_outputs(store, out, adapter_dir, HISTORY, SUMMARY)
    assert store.written[-1] == "manifest.json"
    assert store.written.count("manifest.json") == 1
    assert sorted(store.list(out)) == sorted(["adapter_model.safetensors", "adapter_config.json",
                                              "training_results.csv", "loss_curve.png",
                                              "manifest.json"])
    assert store.read_bytes(f"{out}/loss_curve.png").startswith(b"\x89PNG")
    assert json.loads(store.read_bytes(f"{out}/manifest.json")) == result
    assert sorted(result["files"]) == sorted(f for f in store.list(out) if f != "manifest.json")


def test_a_missing_adapter_file_leaves_no_manifest(tmp_path, adapter_dir):
    (adapter_dir / "adapter_config.json").unlink()
    store = ArtifactStore(str(tmp_path / "artifacts"))
    out = store.uri("jobs", "ft_1", "output")
    store.write_bytes(f"{out}/manifest.json", b"{}")
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        write_outputs(store, out, adapter_dir, HISTORY, SUMMARY)
    assert not store.exists(f"{out}/manifest.json")
