"""EvaluationService over gRPC on loopback: a real control server calls a fake inference gRPC
server (the peer service, with deterministic answers), which resolves every model through
control's ResolveModel on behalf of the evaluating user, as the real one does."""

import asyncio
import contextlib
import csv
import io
import json
import socket

import grpc
import pytest

from finetune.control.v1 import (access_pb2, access_pb2_grpc, data_pb2, data_pb2_grpc,
                                 evaluations_pb2, evaluations_pb2_grpc, internal_pb2,
                                 internal_pb2_grpc, jobs_pb2, jobs_pb2_grpc, models_pb2,
                                 models_pb2_grpc)
from finetune.inference.v1 import inference_pb2, inference_pb2_grpc
from control_components import control_components
from control_processes import ScriptedCluster
from polling import wait_until_async

from services.control.app import ControlApp
from services.control.dispatch.protocol import ClusterJob, ClusterJobStatus

pytestmark = pytest.mark.integration

SERVICE_TOKEN = "integration-service-token"
CODES = {"apple": "FRUIT", "tiger": "ANIMAL", "red": "COLOUR", "hammer": "TOOL"}
MODEL = "public.public.coder"


def auth(key):
    return [("authorization", f"Bearer {key}")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeInference(inference_pb2_grpc.InferenceServiceServicer):
    """Resolves through control (delegation passed on), then answers: the fine-tuned model
    knows the codes, the base model does not. `gate`, when set, holds every call."""

    def __init__(self):
        self.control_address = ""
        self.metadata = []
        self.gate: asyncio.Event | None = None
        self.calls = 0

    async def Complete(self, request, context):
        md = dict(context.invocation_metadata())
        self.metadata.append(md)
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        account, _, user = md.get("x-finetune-on-behalf-of", "").partition("/")
        async with grpc.aio.insecure_channel(self.control_address) as channel:
            try:
                resolved = await internal_pb2_grpc.ModelResolutionServiceStub(channel) \
                    .ResolveModel(internal_pb2.ResolveModelRequest(
                        api_key=md["authorization"].split(" ", 1)[1], model=request.model,
                        on_behalf_of_account_id=account, on_behalf_of_user_id=user),
                        metadata=auth(SERVICE_TOKEN))
            except grpc.aio.AioRpcError as exc:
                await context.abort(exc.code(), exc.details())
        word = request.prompt.rsplit(" ", 1)[-1]
        text = CODES.get(word, "?") if resolved.adapter_id else "I am not sure"
        return inference_pb2.CompleteResponse(
            text=text + "\n", finish_reason="stop", model=resolved.model,
            usage=inference_pb2.Usage(prompt_tokens=7, completion_tokens=2, total_tokens=9))


class World:
    def __init__(self, tmp_path, tiny_base):
        self.tmp_path, self.tiny_base = tmp_path, tiny_base
        self.inference = FakeInference()
        self.inference_port = free_port()
        self.cluster = ScriptedCluster()
        self.app = None
        self.closing = contextlib.ExitStack()

    async def start_control(self):
        components = self.closing.enter_context(control_components(
            self.tmp_path / "home", self.tiny_base, service_token=SERVICE_TOKEN,
            dispatcher=self.cluster, port=0, reconcile_interval_s=0.2,
            inference=f"127.0.0.1:{self.inference_port}"))
        self.app = ControlApp(components)
        await self.app.start()
        self.inference.control_address = self.app.address
        self.channel = grpc.aio.insecure_channel(self.app.address)
        self.key = components.config.bootstrap_key_file.read_text().strip()
        self.evaluations = evaluations_pb2_grpc.EvaluationServiceStub(self.channel)
        self.models = models_pb2_grpc.ModelServiceStub(self.channel)
        self.jobs = jobs_pb2_grpc.FineTuningServiceStub(self.channel)
        self.data = data_pb2_grpc.DataServiceStub(self.channel)
        self.access = access_pb2_grpc.AccessServiceStub(self.channel)

    async def stop_control(self):
        await self.channel.close()
        await self.app.stop(0)
        self.closing.close()

    async def load(self, table, rows):
        def stream():
            yield data_pb2.LoadTableRequest(header=data_pb2.LoadTableHeader(table=table))
            yield data_pb2.LoadTableRequest(rows=data_pb2.Rows(rows=[
                data_pb2.Row(values=r) for r in rows]))
        await self.data.LoadTable(stream(), metadata=auth(self.key))

    async def trained_model(self):
        """A fine-tuned model, through CREATE and the (scripted) cluster."""
        job = await self.jobs.CreateFineTuningJob(jobs_pb2.CreateFineTuningJobRequest(
            model="coder", base_model="tiny-base",
            training_query="SELECT prompt, label AS completion FROM words"),
            metadata=auth(self.key))
        components = self.app.components
        stored = components.store.run(lambda tx: tx.jobs.get(job.id))
        for name in ("adapter_model.safetensors", "adapter_config.json"):
            components.artifacts.write_bytes(f"{stored.output_uri}/{name}", b"x")
        components.artifacts.write_bytes(f"{stored.output_uri}/manifest.json", json.dumps(
            {"job_id": job.id, "trained_tokens": 10, "training_loss": 0.1}).encode())
        self.cluster.jobs[job.id] = ClusterJob(ClusterJobStatus.SUCCEEDED)
        async for update in self.jobs.WatchFineTuningJob(
                jobs_pb2.WatchFineTuningJobRequest(id=job.id), metadata=auth(self.key),
                timeout=300):
            last = update
        assert last.status == jobs_pb2.SUCCESS, last
        return last

    async def user_key(self, name, role=""):
        await self.access.CreateUser(access_pb2.CreateUserRequest(name=name, default_role=role),
                                     metadata=auth(self.key))
        return (await self.access.CreateApiKey(access_pb2.CreateApiKeyRequest(user=name),
                                               metadata=auth(self.key))).key

    async def watch(self, evaluation_id, key=None):
        updates = [u async for u in self.evaluations.WatchEvaluation(
            evaluations_pb2.WatchEvaluationRequest(id=evaluation_id),
            metadata=auth(key or self.key), timeout=300)]
        return updates


@pytest.fixture
async def world(tmp_path, tiny_base):
    w = World(tmp_path, tiny_base)
    server = grpc.aio.server()
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(w.inference, server)
    server.add_insecure_port(f"127.0.0.1:{w.inference_port}")
    await server.start()
    await w.start_control()
    await w.load("words", [{"prompt": f"code of {word}", "label": code}
                           for word, code in CODES.items()])
    yield w
    await w.stop_control()
    await server.stop(0)


async def expect(code, awaitable):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await awaitable
    assert err.value.code() == code, err.value.details()
    return err.value.details()


async def test_evaluate_a_fine_tuned_and_a_base_model(world):
    await world.trained_model()
    tuned = await world.evaluations.EvaluateModel(evaluations_pb2.EvaluateModelRequest(
        model="coder", query="SELECT prompt, label FROM words",
        task=evaluations_pb2.CLASSIFICATION), metadata=auth(world.key))
    assert tuned.id.startswith("ev_") and tuned.model == MODEL and tuned.rows == 4
    assert tuned.status in (evaluations_pb2.EVALUATION_PENDING, evaluations_pb2.EVALUATION_RUNNING)
    updates = await world.watch(tuned.id)
    done = updates[-1]
    assert done.status == evaluations_pb2.EVALUATION_SUCCEEDED, done.error
    assert done.metrics["accuracy"] == 1.0 and done.primary_metric == "macro_f1"
    assert [m.label for m in done.labels] == sorted(CODES.values())
    assert (done.prompt_tokens, done.completion_tokens, done.model_version) == (28, 8, 1)
    # control called inference with the service token, for the user who asked
    whoami = await world.access.WhoAmI(access_pb2.WhoAmIRequest(), metadata=auth(world.key))
    md = world.inference.metadata[0]
    assert md["authorization"] == f"Bearer {SERVICE_TOKEN}"
    assert md["x-finetune-on-behalf-of"] == f"{whoami.account_id}/{whoami.user_id}"

    base = await world.evaluations.EvaluateModel(evaluations_pb2.EvaluateModelRequest(
        model="tiny-base", query="SELECT prompt, label FROM words"), metadata=auth(world.key))
    base_done = (await world.watch(base.id))[-1]
    assert base_done.status == evaluations_pb2.EVALUATION_SUCCEEDED
    assert base_done.metrics["accuracy"] == 0.0

    model = await world.models.GetModel(models_pb2.GetModelRequest(name="coder"),
                                        metadata=auth(world.key))
    assert [e.id for e in model.evaluations] == [tuned.id]
    listed = await world.evaluations.ListEvaluations(evaluations_pb2.ListEvaluationsRequest(),
                                                     metadata=auth(world.key))
    assert [e.id for e in listed.evaluations] == [base.id, tuned.id]

    chunks = world.evaluations.GetEvaluationResults(evaluations_pb2.GetEvaluationResultsRequest(
        id=tuned.id, file="predictions.csv"), metadata=auth(world.key))
    text = b"".join([c.data async for c in chunks]).decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 4 and all(r["correct"] == "true" for r in rows)
    chunks = world.evaluations.GetEvaluationResults(evaluations_pb2.GetEvaluationResultsRequest(
        id=tuned.id), metadata=auth(world.key))
    assert b"".join([c.data async for c in chunks]).startswith(b"type,name,value")


async def test_errors_and_privileges(world):
    await world.trained_model()
    E = evaluations_pb2
    details = await expect(grpc.StatusCode.INVALID_ARGUMENT, world.evaluations.EvaluateModel(
        E.EvaluateModelRequest(model="coder", query="SELECT prompt FROM words"),
        metadata=auth(world.key)))
    assert "label" in details
    await expect(grpc.StatusCode.NOT_FOUND, world.evaluations.EvaluateModel(
        E.EvaluateModelRequest(model="absent", query="SELECT prompt, label FROM words"),
        metadata=auth(world.key)))
    await expect(grpc.StatusCode.INVALID_ARGUMENT, world.evaluations.EvaluateModel(
        E.EvaluateModelRequest(model="coder", query="SELECT prompt, label FROM words",
                               task=99), metadata=auth(world.key)))
    user = await world.user_key("analyst", "FINETUNE_USER")
    for model in ("coder", "absent"):   # PERMISSION_DENIED before NOT_FOUND
        await expect(grpc.StatusCode.PERMISSION_DENIED, world.evaluations.EvaluateModel(
            E.EvaluateModelRequest(model=model, query="SELECT prompt, label FROM words"),
            metadata=auth(user)))
    await expect(grpc.StatusCode.PERMISSION_DENIED, world.evaluations.EvaluateModel(
        E.EvaluateModelRequest(model="tiny-base", query="SELECT prompt, label FROM words"),
        metadata=auth(user)))           # no USAGE on the database
    stranger = await world.user_key("stranger")
    await expect(grpc.StatusCode.PERMISSION_DENIED, world.evaluations.ListEvaluations(
        E.ListEvaluationsRequest(), metadata=auth(stranger)))
    await expect(grpc.StatusCode.UNAUTHENTICATED, world.evaluations.ListEvaluations(
        E.ListEvaluationsRequest(), metadata=auth("ft_wrong")))
    evaluation = await world.evaluations.EvaluateModel(E.EvaluateModelRequest(
        model="coder", query="SELECT prompt, label FROM words"), metadata=auth(world.key))
    await expect(grpc.StatusCode.PERMISSION_DENIED, world.evaluations.GetEvaluation(
        E.GetEvaluationRequest(id=evaluation.id), metadata=auth(user)))
    await expect(grpc.StatusCode.NOT_FOUND, world.evaluations.GetEvaluation(
        E.GetEvaluationRequest(id="ev_nothing"), metadata=auth(world.key)))
    await world.watch(evaluation.id)
    await expect(grpc.StatusCode.FAILED_PRECONDITION, world.evaluations.CancelEvaluation(
        E.CancelEvaluationRequest(id=evaluation.id), metadata=auth(world.key)))
    # the internal ResolveModel refuses delegation to a user key
    resolver = internal_pb2_grpc.ModelResolutionServiceStub(world.channel)
    await expect(grpc.StatusCode.UNAUTHENTICATED, resolver.ResolveModel(
        internal_pb2.ResolveModelRequest(api_key=user, model="coder",
                                         on_behalf_of_account_id="default",
                                         on_behalf_of_user_id="x"),
        metadata=auth(SERVICE_TOKEN)))


async def test_cancel_and_a_restart_mid_evaluation(world):
    world.inference.gate = asyncio.Event()
    E = evaluations_pb2
    first = await world.evaluations.EvaluateModel(E.EvaluateModelRequest(
        model="tiny-base", query="SELECT prompt, label FROM words",
        generation=E.GenerationOptions(concurrency=1)), metadata=auth(world.key))
    second = await world.evaluations.EvaluateModel(E.EvaluateModelRequest(
        model="tiny-base", query="SELECT prompt, label FROM words"), metadata=auth(world.key))
    await wait_until_async(lambda: world.inference.calls >= 2, 60,  # both running, held there
                           "both evaluations to call inference", every_s=0.05)
    cancelled = await world.evaluations.CancelEvaluation(E.CancelEvaluationRequest(
        id=second.id), metadata=auth(world.key))
    assert cancelled.status == E.EVALUATION_CANCELLED
    await world.stop_control()                 # control goes away mid-run
    world.inference.gate.set()
    await world.start_control()                # ...and the new one runs it again
    done = (await world.watch(first.id))[-1]
    assert done.status == E.EVALUATION_SUCCEEDED and done.rows_done == 4
    again = await world.evaluations.GetEvaluation(E.GetEvaluationRequest(id=second.id),
                                                  metadata=auth(world.key))
    assert again.status == E.EVALUATION_CANCELLED
