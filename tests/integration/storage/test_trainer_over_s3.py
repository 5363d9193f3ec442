"""The trainer as a Ray job on a real local Ray, with every artifact on S3: the Ray processes
reach the bucket through their own environment (as pods of a KubeRay cluster do), download the
base model, the snapshot and the adapter to continue from, keep Ray Train's checkpoints in the
bucket and upload the outputs. No folder is shared with the test."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from control_processes import ray_head, wait_for_ray_job
from ray.job_submission import JobSubmissionClient

from services.common.artifacts import ArtifactStore

pytestmark = pytest.mark.integration

OUTPUTS = ["adapter_config.json", "adapter_model.safetensors", "loss_curve.png",
           "manifest.json", "training_results.csv"]
ROWS = [{"prompt": f"Code for item {i}?", "completion": f"C-{i}"} for i in range(4)]


@pytest.fixture
def bucket_base(s3_bucket, base_model_spec, tmp_path) -> dict:
    """A small Llama with the default model's tokenizer and vocabulary, only in the bucket:
    the job spec's base model as control writes it for a catalog entry whose source is an
    object-store URL, with a path that no node has yet."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path / "upload"
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(
        vocab_size=len(AutoTokenizer.from_pretrained(base_model_spec.path)), hidden_size=32,
        intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048,
    )).save_pretrained(folder, safe_serialization=True)
    for path in base_model_spec.path.iterdir():
        if path.is_file() and path.name.startswith(("tokenizer", "special_tokens", "chat_")):
            shutil.copy(path, folder / path.name)
    source = f"s3://{s3_bucket}/models/tiny-llama"
    ArtifactStore(source).put_dir(folder, source)
    shutil.rmtree(folder)
    return {"name": "tiny-llama", "path": str(tmp_path / "node-cache" / "tiny-llama"),
            "source": source, "context_window": 2048, "prompt_tokens": 1536,
            "completion_tokens": 512}


def write_job(store: ArtifactStore, job_id: str, base: dict, targets,
              from_adapter_uri: str | None, lora_rank: int) -> str:
    folder = store.uri("jobs", job_id)
    store.write_bytes(f"{folder}/data/training.jsonl",
                      "".join(json.dumps(r) + "\n" for r in ROWS).encode())
    spec = {
        "job_id": job_id, "task_type": "INSTRUCTION",
        "base_model": base,
        "training_data_uri": f"{folder}/data/training.jsonl", "validation_data_uri": None,
        "output_uri": f"{folder}/output", "checkpoint_uri": f"{folder}/checkpoints",
        "artifact_root": store.root, "from_adapter_uri": from_adapter_uri,
        "options": {"max_epochs": 1, "learning_rate": 0.005, "batch_size": 2,
                    "lora_rank": lora_rank, "lora_alpha": 16, "lora_dropout": 0.0, "seed": 42,
                    "num_workers": 2,
                    "target_modules": list(targets)},
        "control_address": "",
    }
    store.write_bytes(f"{folder}/spec.json", json.dumps(spec).encode())
    return f"{folder}/spec.json"


def test_a_job_and_its_continuation_train_from_and_into_s3(s3_server, s3_bucket, bucket_base,
                                                          base_model_spec):
    store = ArtifactStore(f"s3://{s3_bucket}/artifacts")
    with ray_head(num_cpus=2) as address:   # it inherits the S3 settings of this process
        client = JobSubmissionClient(address)
        # The continuation asks for rank 4; the adapter it continues (rank 8) wins, if the
        # workers really downloaded it.
        for job_id, parent, rank in (
                ("ft_s3_a", None, 8), ("ft_s3_b", store.uri("jobs", "ft_s3_a", "output"), 4)):
            spec_uri = write_job(store, job_id, bucket_base, base_model_spec.target_modules,
                                 parent, rank)
            # As control submits: only the service token travels with the job, not S3 settings.
            client.submit_job(entrypoint=f"{sys.executable} -m services.trainer.job "
                                         f"--spec {spec_uri}", submission_id=job_id,
                              runtime_env={"env_vars": {"FINETUNE_SERVICE_TOKEN": "t"}})
            status = wait_for_ray_job(client, job_id)
            assert status == "SUCCEEDED", client.get_job_logs(job_id)[-4000:]

    # The workers downloaded the base model from the bucket into the spec's path, once.
    node_copy = sorted(p.name for p in Path(bucket_base["path"]).iterdir())
    assert node_copy == store_names(bucket_base["source"])
    assert [p.name for p in Path(bucket_base["path"]).parent.iterdir()] == ["tiny-llama"]
    for job_id in ("ft_s3_a", "ft_s3_b"):
        out = store.uri("jobs", job_id, "output")
        assert store.list(out) == OUTPUTS
        manifest = json.loads(store.read_bytes(f"{out}/manifest.json"))
        assert (manifest["steps"], manifest["training_rows"]) == (2, 4)
        # Ray Train kept its checkpoints in the bucket too
        assert any("/checkpoints/" in k for k in s3_server.keys(s3_bucket,
                                                                 f"artifacts/jobs/{job_id}/"))
    # the continuation started from the first adapter: its rank, new weights
    configs = [json.loads(store.read_bytes(store.uri("jobs", j, "output", "adapter_config.json")))
               for j in ("ft_s3_a", "ft_s3_b")]
    assert [c["r"] for c in configs] == [8, 8]
    first, second = (store.read_bytes(store.uri("jobs", j, "output",
                                                "adapter_model.safetensors"))
                     for j in ("ft_s3_a", "ft_s3_b"))
    assert first != second


def store_names(uri: str) -> list[str]:
    return ArtifactStore(uri).list(uri)
