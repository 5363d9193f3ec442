"""A job's artifacts on S3 from end to end, with no folder shared between the processes:
control (real gRPC server, DuckDB catalog, SQLite) snapshots the query into the bucket, a
separate trainer process reads the spec and snapshot from the bucket and uploads its outputs,
control registers the model from the bucket and streams its files, and inference fetches the
adapter into its own cache and validates it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import pytest
from control_components import control_components
from control_processes import ScriptedCluster

from finetune.control.v1 import (
    data_pb2,
    data_pb2_grpc,
    internal_pb2,
    internal_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
)
from services.control.app import ControlApp
from services.control.dispatch.protocol import ClusterJob, ClusterJobStatus
from services.inference.adapters import AdapterRegistry, ResolvedModel

pytestmark = pytest.mark.integration

SERVICE_TOKEN = "storage-service-token"
REPO = Path(__file__).resolve().parents[3]
CSV = b"prompt,completion\n" + b"".join(
    f'"say {i}, please",answer {i}\n'.encode() for i in range(8))

# What the Ray job's driver does with the artifact store, in its own process: read the spec and
# the snapshots, then write the outputs (the adapter stands in for a trained one).
TRAINER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from services.common.artifacts import ArtifactStore
    from services.trainer import export
    from services.trainer.job import prepare_data
    from services.trainer.spec import read_spec

    spec = read_spec(sys.argv[1])
    store = ArtifactStore(spec.artifact_root)
    prepared = prepare_data(spec, store)
    history = [export.StepRecord(1, 1, 2.0), export.StepRecord(2, 1, 1.5, None)]
    summary = export.TrainingSummary(
        job_id=spec.job_id, trained_tokens=prepared.train.tokens, training_loss=1.5,
        validation_loss=None, epochs=1, steps=2, training_rows=prepared.train.rows,
        validation_rows=prepared.validation.rows, truncated_rows=0)
    export.write_outputs(store, spec.output_uri, Path(sys.argv[2]), history, summary)
    print(json.dumps({"train_rows": prepared.train.rows,
                      "validation_rows": prepared.validation.rows,
                      "train_tokens": prepared.train.tokens,
                      "output_uri": spec.output_uri}))
""")


def auth(key):
    return [("authorization", f"Bearer {key}")]


@pytest.fixture
async def s3_control(tmp_path, s3_bucket, tiny_base):
    cluster = ScriptedCluster()
    with control_components(tmp_path / "home", tiny_base, service_token=SERVICE_TOKEN,
                            dispatcher=cluster, port=0,
                            artifact_root=f"s3://{s3_bucket}/artifacts",
                            reconcile_interval_s=0.2) as components:
        app = ControlApp(components)
        await app.start()
        try:
            yield app, cluster
        finally:
            await app.stop(0)


async def _load_csv(channel, key):
    def stream():
        yield data_pb2.LoadTableRequest(header=data_pb2.LoadTableHeader(
            table="train", format=data_pb2.CSV, replace=True))
        yield data_pb2.LoadTableRequest(file_chunk=CSV)
    return await data_pb2_grpc.DataServiceStub(channel).LoadTable(stream(), metadata=auth(key))


async def test_a_job_over_s3(s3_control, s3_server, s3_bucket, adapter_dir, inference_base,
                             tmp_path):
    app, cluster = s3_control
    key = app.components.config.bootstrap_key_file.read_text().strip()
    async with grpc.aio.insecure_channel(app.address) as channel:
        await _load_csv(channel, key)
        jobs = jobs_pb2_grpc.FineTuningServiceStub(channel)
        job = await jobs.CreateFineTuningJob(jobs_pb2.CreateFineTuningJobRequest(
            model="support_bot", base_model="tiny-base",
            training_query="SELECT prompt, completion FROM train",
            options=jobs_pb2.FineTuningOptions(max_epochs=1)), metadata=auth(key))
        assert cluster.submitted == [job.id] and job.training_rows > 0
        prefix = f"artifacts/jobs/{job.id}/"
        keys = s3_server.keys(s3_bucket, prefix)
        assert f"{prefix}spec.json" in keys and f"{prefix}data/training.jsonl" in keys
        assert f"{prefix}data/query.jsonl" not in keys  # the holdout's scratch file is gone
        assert not (tmp_path / "home" / "artifacts").exists()  # nothing went to a local folder
        spec_uri = f"s3://{s3_bucket}/{prefix}spec.json"

        # the trainer: another process, the bucket and its own environment only
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", TRAINER, spec_uri, str(adapter_dir)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        trainer = json.loads(done.stdout.strip().splitlines()[-1])
        assert trainer["train_rows"] == job.training_rows
        assert trainer["train_rows"] + trainer["validation_rows"] == 8
        assert trainer["train_tokens"] > 0
        output = f"s3://{s3_bucket}/{prefix}output"
        assert trainer["output_uri"] == output
        assert [k.removeprefix(f"{prefix}output/") for k in
                s3_server.keys(s3_bucket, f"{prefix}output/")] == [
            "adapter_config.json", "adapter_model.safetensors", "loss_curve.png",
            "manifest.json", "training_results.csv"]

        # control registers the model from the manifest in the bucket
        watch = jobs.WatchFineTuningJob(jobs_pb2.WatchFineTuningJobRequest(id=job.id),
                                        metadata=auth(key))
        cluster.jobs[job.id] = ClusterJob(ClusterJobStatus.SUCCEEDED)
        last = None
        async with asyncio.timeout(60):  # a hang guard only
            async for update in watch:
                last = update
                if update.status in (jobs_pb2.SUCCESS, jobs_pb2.ERROR):
                    break
        assert last.status == jobs_pb2.SUCCESS, last.error
        assert last.trained_tokens == trainer["train_tokens"]
        models = models_pb2_grpc.ModelServiceStub(channel)
        csv = b"".join([c.data async for c in models.GetModelArtifact(
            models_pb2.GetModelArtifactRequest(name="support_bot",
                                               artifact="training_results.csv"),
            metadata=auth(key))])
        assert csv == (b"step,epoch,training_loss,validation_loss\n1,1,2.0,\n2,1,1.5,\n")
        resolved = await internal_pb2_grpc.ModelResolutionServiceStub(channel).ResolveModel(
            internal_pb2.ResolveModelRequest(api_key=key, model="support_bot"),
            metadata=auth(SERVICE_TOKEN))
    assert resolved.adapter_uri == output and resolved.adapter_id > 0

    # inference: the adapter version downloaded into its own cache, validated, then loaded
    cache = tmp_path / "adapter-cache"
    model = ResolvedModel(model=resolved.model, base_model=resolved.base_model,
                          adapter_uri=resolved.adapter_uri, adapter_id=resolved.adapter_id)
    registry = AdapterRegistry(inference_base, 16, cache)
    lora = await registry.adapter_for(model)
    folder = cache / str(resolved.adapter_id)
    assert Path(lora.path) == folder and registry.validations == 1
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json",
                                                       "adapter_model.safetensors"]
    assert (folder / "adapter_model.safetensors").read_bytes() == \
        (adapter_dir / "adapter_model.safetensors").read_bytes()
    assert await registry.adapter_for(model) is lora and registry.validations == 1
