"""The control service end to end over gRPC on loopback: real server, real stubs, a real API key,
real SQLite/DuckDB/artifact folder; only the cluster is scripted."""

import asyncio
import json

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from finetune.control.v1 import (access_pb2, access_pb2_grpc, data_pb2, data_pb2_grpc,
                                 internal_pb2, internal_pb2_grpc, jobs_pb2, jobs_pb2_grpc,
                                 models_pb2, models_pb2_grpc)
from services.control.dispatch.protocol import ClusterJob, ClusterJobStatus

pytestmark = pytest.mark.integration

SERVICE_TOKEN = "integration-service-token"  # what the control_server fixture configures

CSV = b"prompt,completion\n" + b"".join(
    f'"say {i}, please",answer {i}\n'.encode() for i in range(8))


def auth(key):
    return [("authorization", f"Bearer {key}")]


async def expect(code, awaitable):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await awaitable
    assert err.value.code() == code, err.value.details()
    return err.value.details()


async def load_csv(channel, key, table="train", data=CSV, chunk=10):
    def stream():
        yield data_pb2.LoadTableRequest(header=data_pb2.LoadTableHeader(
            table=table, format=data_pb2.CSV, replace=True))
        for i in range(0, len(data), chunk):
            yield data_pb2.LoadTableRequest(file_chunk=data[i:i + chunk])
    return await data_pb2_grpc.DataServiceStub(channel).LoadTable(stream(), metadata=auth(key))


async def test_health_is_serving(channel):
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_auth_failures(channel, api_key):
    access = access_pb2_grpc.AccessServiceStub(channel)
    await expect(grpc.StatusCode.UNAUTHENTICATED, access.WhoAmI(access_pb2.WhoAmIRequest()))
    await expect(grpc.StatusCode.UNAUTHENTICATED,
                 access.WhoAmI(access_pb2.WhoAmIRequest(), metadata=auth("ft_bogus")))
    await expect(grpc.StatusCode.UNAUTHENTICATED,
                 access.WhoAmI(access_pb2.WhoAmIRequest(), metadata=auth(SERVICE_TOKEN)))
    me = await access.WhoAmI(access_pb2.WhoAmIRequest(), metadata=auth(api_key))
    assert (me.account_id, me.user_name) == ("default", "admin")
    internal = internal_pb2_grpc.ModelResolutionServiceStub(channel)
    request = internal_pb2.ResolveModelRequest(api_key=api_key, model="tiny-base")
    await expect(grpc.StatusCode.UNAUTHENTICATED, internal.ResolveModel(request))
    await expect(grpc.StatusCode.UNAUTHENTICATED,
                 internal.ResolveModel(request, metadata=auth(api_key)))
    resolved = await internal.ResolveModel(request, metadata=auth(SERVICE_TOKEN))
    assert resolved.adapter_id == 0 and resolved.base_model == "tiny-base"
    # a stream is refused before it yields anything
    jobs = jobs_pb2_grpc.FineTuningServiceStub(channel)
    await expect(grpc.StatusCode.UNAUTHENTICATED, _drain(
        jobs.WatchFineTuningJob(jobs_pb2.WatchFineTuningJobRequest(id="ft_x"))))


async def _drain(stream):
    return [item async for item in stream]


async def _read_to_end(call):
    items = []
    while (item := await call.read()) is not grpc.aio.EOF:
        items.append(item)
    return items


async def test_load_list_and_preview(channel, api_key):
    table = await load_csv(channel, api_key)
    assert table.name == "public.public.train" and table.row_count == 8
    assert [(c.name, c.type) for c in table.columns] == [("prompt", "VARCHAR"),
                                                         ("completion", "VARCHAR")]
    data = data_pb2_grpc.DataServiceStub(channel)
    listed = await data.ListTables(data_pb2.ListTablesRequest(), metadata=auth(api_key))
    assert [t.name for t in listed.tables] == ["public.public.train"]
    preview = await data.PreviewQuery(data_pb2.PreviewQueryRequest(
        query="SELECT prompt, completion FROM train ORDER BY completion", limit=3),
        metadata=auth(api_key))
    assert [c.name for c in preview.columns] == ["prompt", "completion"]
    assert [dict(r.values) for r in preview.rows] == [
        {"prompt": f"say {i}, please", "completion": f"answer {i}"} for i in range(3)]
    details = await expect(grpc.StatusCode.INVALID_ARGUMENT, data.PreviewQuery(
        data_pb2.PreviewQueryRequest(query="SELECT * FROM read_csv('/etc/passwd')"),
        metadata=auth(api_key)))
    assert "disabled" in details
    await expect(grpc.StatusCode.INVALID_ARGUMENT, data.PreviewQuery(
        data_pb2.PreviewQueryRequest(query="DROP TABLE train"), metadata=auth(api_key)))
    created = await data.CreateDatabase(data_pb2.CreateDatabaseRequest(name="sales"),
                                        metadata=auth(api_key))
    assert created.name == "sales"
    await expect(grpc.StatusCode.ALREADY_EXISTS, data.CreateDatabase(
        data_pb2.CreateDatabaseRequest(name="sales"), metadata=auth(api_key)))


async def test_load_rows_and_bad_streams(channel, api_key):
    data = data_pb2_grpc.DataServiceStub(channel)

    def rows():
        yield data_pb2.LoadTableRequest(header=data_pb2.LoadTableHeader(table="db_rows"))
        yield data_pb2.LoadTableRequest(rows=data_pb2.Rows(rows=[
            data_pb2.Row(values={"prompt": "p", "completion": "c"})]))
    table = await data.LoadTable(rows(), metadata=auth(api_key))
    assert table.row_count == 1

    def headless():
        yield data_pb2.LoadTableRequest(file_chunk=b"a,b\n")
    await expect(grpc.StatusCode.INVALID_ARGUMENT, data.LoadTable(headless(),
                                                                  metadata=auth(api_key)))

    def existing():
        yield data_pb2.LoadTableRequest(header=data_pb2.LoadTableHeader(
            table="db_rows", format=data_pb2.CSV))
        yield data_pb2.LoadTableRequest(file_chunk=b"a\n1\n")
    await expect(grpc.StatusCode.ALREADY_EXISTS, data.LoadTable(existing(),
                                                                metadata=auth(api_key)))


async def test_job_lifecycle(channel, api_key, cluster, control_server):
    await load_csv(channel, api_key)
    jobs = jobs_pb2_grpc.FineTuningServiceStub(channel)
    job = await jobs.CreateFineTuningJob(jobs_pb2.CreateFineTuningJobRequest(
        model="support_bot", base_model="tiny-base",
        training_query="SELECT prompt, completion FROM train",
        options=jobs_pb2.FineTuningOptions(max_epochs=2), request_id="create-1"),
        metadata=auth(api_key))
    assert job.status == jobs_pb2.PENDING and job.training_rows == 8
    assert cluster.submitted == [job.id]
    again = await jobs.CreateFineTuningJob(jobs_pb2.CreateFineTuningJobRequest(
        model="support_bot", base_model="tiny-base", training_query="SELECT 1",
        request_id="create-1"), metadata=auth(api_key))
    assert again.id == job.id

    details = await expect(grpc.StatusCode.INVALID_ARGUMENT, jobs.CreateFineTuningJob(
        jobs_pb2.CreateFineTuningJobRequest(model="other", base_model="tiny-base",
                                            training_query="SELECT prompt FROM train"),
        metadata=auth(api_key)))
    assert "completion" in details
    await expect(grpc.StatusCode.ALREADY_EXISTS, jobs.CreateFineTuningJob(
        jobs_pb2.CreateFineTuningJobRequest(model="support_bot", base_model="tiny-base",
                                            training_query="SELECT * FROM train"),
        metadata=auth(api_key)))

    # the trainer reports progress with the service token; a watcher sees it, then success
    reporting = internal_pb2_grpc.JobReportingServiceStub(channel)
    watch = jobs.WatchFineTuningJob(jobs_pb2.WatchFineTuningJobRequest(id=job.id),
                                    metadata=auth(api_key))
    first = await watch.read()
    assert first.status == jobs_pb2.PENDING
    answer = await reporting.ReportProgress(internal_pb2.ReportProgressRequest(
        job_id=job.id, progress=0.5, epoch=1, step=2, total_steps=4, trained_tokens=100,
        training_loss=2.0), metadata=auth(SERVICE_TOKEN))
    assert not answer.cancelled
    update = await watch.read()
    assert update.status == jobs_pb2.IN_PROGRESS and update.progress == 0.5

    artifacts = control_server.components.artifacts
    output = f"{artifacts.root}/jobs/{job.id}/output"
    artifacts.write_bytes(f"{output}/training_results.csv",
                          b"step,epoch,training_loss,validation_loss\n1,1,2.0,\n2,1,1.5,1.7\n")
    artifacts.write_bytes(f"{output}/adapter_model.safetensors", b"weights")
    artifacts.write_bytes(f"{output}/manifest.json", json.dumps({
        "job_id": job.id, "trained_tokens": 200, "training_loss": 1.5,
        "validation_loss": None, "epochs": 2, "steps": 4, "training_rows": 8,
        "validation_rows": 0, "truncated_rows": 0,
        "files": ["training_results.csv", "adapter_model.safetensors"]}).encode())
    cluster.jobs[job.id] = ClusterJob(ClusterJobStatus.SUCCEEDED)  # the reconciler picks it up
    rest = await asyncio.wait_for(_read_to_end(watch), timeout=60)  # a hang guard only
    assert rest[-1].status == jobs_pb2.SUCCESS and rest[-1].trained_tokens == 200

    described = await jobs.GetFineTuningJob(jobs_pb2.GetFineTuningJobRequest(id=job.id),
                                            metadata=auth(api_key))
    assert described.status == jobs_pb2.SUCCESS and described.progress == 1.0
    assert described.training_result.training_loss == 1.5
    assert not described.training_result.has_validation_loss
    assert described.model == "public.public.support_bot"
    await expect(grpc.StatusCode.FAILED_PRECONDITION, jobs.CancelFineTuningJob(
        jobs_pb2.CancelFineTuningJobRequest(id=job.id), metadata=auth(api_key)))

    models = models_pb2_grpc.ModelServiceStub(channel)
    model = await models.GetModel(models_pb2.GetModelRequest(name="support_bot"),
                                  metadata=auth(api_key))
    assert model.job_id == job.id and "training_results.csv" in model.artifacts
    csv = b"".join([c.data async for c in models.GetModelArtifact(
        models_pb2.GetModelArtifactRequest(name="support_bot", artifact="training_results.csv"),
        metadata=auth(api_key))])
    assert csv.startswith(b"step,epoch,training_loss,validation_loss\n")
    await expect(grpc.StatusCode.INVALID_ARGUMENT, _drain(models.GetModelArtifact(
        models_pb2.GetModelArtifactRequest(name="support_bot", artifact="../spec.json"),
        metadata=auth(api_key))))

    resolved = await internal_pb2_grpc.ModelResolutionServiceStub(channel).ResolveModel(
        internal_pb2.ResolveModelRequest(api_key=api_key, model="support_bot"),
        metadata=auth(SERVICE_TOKEN))
    assert resolved.adapter_uri == output and resolved.adapter_id > 0
    assert resolved.model == "public.public.support_bot"


async def test_describe_list_cancel(channel, api_key, cluster):
    await load_csv(channel, api_key)
    jobs = jobs_pb2_grpc.FineTuningServiceStub(channel)
    created = [await jobs.CreateFineTuningJob(jobs_pb2.CreateFineTuningJobRequest(
        model=f"m{i}", base_model="tiny-base", training_query="SELECT * FROM train"),
        metadata=auth(api_key)) for i in range(3)]
    listed = await jobs.ListFineTuningJobs(jobs_pb2.ListFineTuningJobsRequest(page_size=2),
                                           metadata=auth(api_key))
    assert [j.id for j in listed.jobs] == [created[2].id, created[1].id]
    rest = await jobs.ListFineTuningJobs(jobs_pb2.ListFineTuningJobsRequest(
        page_size=2, page_token=listed.next_page_token), metadata=auth(api_key))
    assert [j.id for j in rest.jobs] == [created[0].id] and not rest.next_page_token

    cancelled = await jobs.CancelFineTuningJob(
        jobs_pb2.CancelFineTuningJobRequest(id=created[0].id), metadata=auth(api_key))
    assert cancelled.status == jobs_pb2.CANCELLED and cluster.stopped == [created[0].id]
    await expect(grpc.StatusCode.FAILED_PRECONDITION, jobs.CancelFineTuningJob(
        jobs_pb2.CancelFineTuningJobRequest(id=created[0].id), metadata=auth(api_key)))
    answer = await internal_pb2_grpc.JobReportingServiceStub(channel).ReportProgress(
        internal_pb2.ReportProgressRequest(job_id=created[0].id, progress=0.1),
        metadata=auth(SERVICE_TOKEN))
    assert answer.cancelled
    await expect(grpc.StatusCode.NOT_FOUND, jobs.GetFineTuningJob(
        jobs_pb2.GetFineTuningJobRequest(id="ft_does-not-exist"), metadata=auth(api_key)))
