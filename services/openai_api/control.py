"""Control's public gRPC API as this door calls it: with the caller's own key, so that every
privilege check stays in control (the inference service's token is never used here)."""

from __future__ import annotations

from typing import AsyncGenerator, AsyncIterator, Iterable, Protocol

import grpc

from finetune.control.v1 import (
    access_pb2,
    access_pb2_grpc,
    data_pb2,
    data_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)

ROWS_PER_MESSAGE = 500
# An artifact download may be an adapter of hundreds of MB: a longer deadline than a call's.
DOWNLOAD_TIMEOUT_S = 900.0


class ControlApi(Protocol):
    async def base_models(self, key: str) -> list[models_pb2.BaseModel]: ...

    async def models(self, key: str) -> list[models_pb2.Model]: ...

    async def shared_models(self, key: str) -> list[models_pb2.Model]:
        """Models other accounts share with the key's (`shared` set, named
        `<owner account>.<db>.<schema>.<model>`)."""
        ...

    async def get_model(self, key: str, name: str) -> models_pb2.Model: ...

    async def load_rows(self, key: str, table: str,
                        rows: Iterable[dict[str, str]]) -> data_pb2.Table: ...

    async def tables(self, key: str, database: str) -> list[data_pb2.Table]: ...

    async def create_job(self, key: str, request: jobs_pb2.CreateFineTuningJobRequest
                         ) -> jobs_pb2.FineTuningJob: ...

    async def list_jobs(self, key: str, page_size: int,
                        page_token: str) -> jobs_pb2.ListFineTuningJobsResponse: ...

    async def get_job(self, key: str, job_id: str) -> jobs_pb2.FineTuningJob: ...

    async def cancel_job(self, key: str, job_id: str) -> jobs_pb2.FineTuningJob: ...

    async def job_events(self, key: str, job_id: str, page_size: int,
                         page_token: str) -> jobs_pb2.ListFineTuningJobEventsResponse: ...

    # -- what the web console calls besides (services/console) --------------------------------

    async def whoami(self, key: str) -> access_pb2.Principal: ...

    async def estimate_job(self, key: str, request: jobs_pb2.EstimateFineTuningJobRequest
                           ) -> jobs_pb2.FineTuningJobEstimate: ...

    async def preview_query(self, key: str, query: str,
                            limit: int) -> data_pb2.PreviewQueryResponse: ...

    def artifact_chunks(self, key: str, name: str,
                        artifact: str) -> AsyncGenerator[bytes, None]: ...

    async def aggregate_inference_usage(
            self, key: str, group_by: Iterable[usage_pb2.UsageGrouping]
    ) -> list[usage_pb2.InferenceUsageGroup]: ...

    async def fine_tuning_usage(self, key: str, limit: int) -> list[usage_pb2.FineTuningUsage]: ...


class GrpcControl:
    """ControlApi over a grpc.aio channel to control."""

    def __init__(self, channel: grpc.aio.Channel, timeout_s: float = 60.0):
        self._jobs = jobs_pb2_grpc.FineTuningServiceStub(channel)
        self._models = models_pb2_grpc.ModelServiceStub(channel)
        self._data = data_pb2_grpc.DataServiceStub(channel)
        self._access = access_pb2_grpc.AccessServiceStub(channel)
        self._usage = usage_pb2_grpc.UsageServiceStub(channel)
        self._timeout_s = timeout_s

    @staticmethod
    def _auth(key: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {key}"),)

    async def base_models(self, key: str) -> list[models_pb2.BaseModel]:
        response = await self._models.ListBaseModels(
            models_pb2.ListBaseModelsRequest(), metadata=self._auth(key),
            timeout=self._timeout_s)
        return list(response.base_models)

    async def models(self, key: str) -> list[models_pb2.Model]:
        return await self._list_models(key, shared=False)

    async def shared_models(self, key: str) -> list[models_pb2.Model]:
        return await self._list_models(key, shared=True)

    async def _list_models(self, key: str, shared: bool) -> list[models_pb2.Model]:
        out: list[models_pb2.Model] = []
        token = ""
        while True:
            page = await self._models.ListModels(
                models_pb2.ListModelsRequest(page_token=token, shared=shared),
                metadata=self._auth(key), timeout=self._timeout_s)
            out += page.models
            token = page.next_page_token
            if not token:
                return out

    async def get_model(self, key: str, name: str) -> models_pb2.Model:
        return await self._models.GetModel(models_pb2.GetModelRequest(name=name),
                                           metadata=self._auth(key), timeout=self._timeout_s)

    async def load_rows(self, key: str, table: str,
                        rows: Iterable[dict[str, str]]) -> data_pb2.Table:
        async def requests() -> AsyncIterator[data_pb2.LoadTableRequest]:
            yield data_pb2.LoadTableRequest(header=data_pb2.LoadTableHeader(table=table))
            batch: list[data_pb2.Row] = []
            for row in rows:
                batch.append(data_pb2.Row(values=row))
                if len(batch) >= ROWS_PER_MESSAGE:
                    yield data_pb2.LoadTableRequest(rows=data_pb2.Rows(rows=batch))
                    batch = []
            if batch:
                yield data_pb2.LoadTableRequest(rows=data_pb2.Rows(rows=batch))
        return await self._data.LoadTable(requests(), metadata=self._auth(key),
                                          timeout=self._timeout_s)

    async def tables(self, key: str, database: str) -> list[data_pb2.Table]:
        response = await self._data.ListTables(data_pb2.ListTablesRequest(database=database),
                                               metadata=self._auth(key),
                                               timeout=self._timeout_s)
        return list(response.tables)

    async def create_job(self, key: str, request: jobs_pb2.CreateFineTuningJobRequest
                         ) -> jobs_pb2.FineTuningJob:
        return await self._jobs.CreateFineTuningJob(request, metadata=self._auth(key),
                                                    timeout=self._timeout_s)

    async def list_jobs(self, key: str, page_size: int,
                        page_token: str) -> jobs_pb2.ListFineTuningJobsResponse:
        return await self._jobs.ListFineTuningJobs(
            jobs_pb2.ListFineTuningJobsRequest(page_size=page_size, page_token=page_token),
            metadata=self._auth(key), timeout=self._timeout_s)

    async def get_job(self, key: str, job_id: str) -> jobs_pb2.FineTuningJob:
        return await self._jobs.GetFineTuningJob(jobs_pb2.GetFineTuningJobRequest(id=job_id),
                                                 metadata=self._auth(key),
                                                 timeout=self._timeout_s)

    async def cancel_job(self, key: str, job_id: str) -> jobs_pb2.FineTuningJob:
        return await self._jobs.CancelFineTuningJob(
            jobs_pb2.CancelFineTuningJobRequest(id=job_id), metadata=self._auth(key),
            timeout=self._timeout_s)

    async def job_events(self, key: str, job_id: str, page_size: int,
                         page_token: str) -> jobs_pb2.ListFineTuningJobEventsResponse:
        return await self._jobs.ListFineTuningJobEvents(
            jobs_pb2.ListFineTuningJobEventsRequest(id=job_id, page_size=page_size,
                                                    page_token=page_token,
                                                    newest_first=True),
            metadata=self._auth(key), timeout=self._timeout_s)

    async def whoami(self, key: str) -> access_pb2.Principal:
        return await self._access.WhoAmI(access_pb2.WhoAmIRequest(), metadata=self._auth(key),
                                         timeout=self._timeout_s)

    async def estimate_job(self, key: str, request: jobs_pb2.EstimateFineTuningJobRequest
                           ) -> jobs_pb2.FineTuningJobEstimate:
        return await self._jobs.EstimateFineTuningJob(request, metadata=self._auth(key),
                                                      timeout=self._timeout_s)

    async def preview_query(self, key: str, query: str,
                            limit: int) -> data_pb2.PreviewQueryResponse:
        return await self._data.PreviewQuery(
            data_pb2.PreviewQueryRequest(query=query, limit=limit), metadata=self._auth(key),
            timeout=self._timeout_s)

    async def artifact_chunks(self, key: str, name: str,
                              artifact: str) -> AsyncGenerator[bytes, None]:
        call = self._models.GetModelArtifact(
            models_pb2.GetModelArtifactRequest(name=name, artifact=artifact),
            metadata=self._auth(key), timeout=DOWNLOAD_TIMEOUT_S)
        async for chunk in call:
            yield chunk.data

    async def aggregate_inference_usage(
            self, key: str, group_by: Iterable[usage_pb2.UsageGrouping]
    ) -> list[usage_pb2.InferenceUsageGroup]:
        response = await self._usage.AggregateInferenceUsage(
            usage_pb2.AggregateInferenceUsageRequest(group_by=list(group_by)),
            metadata=self._auth(key), timeout=self._timeout_s)
        return list(response.groups)

    async def fine_tuning_usage(self, key: str, limit: int) -> list[usage_pb2.FineTuningUsage]:
        """The newest `limit` rows (pages followed until then)."""
        out: list[usage_pb2.FineTuningUsage] = []
        token = ""
        while len(out) < limit:
            page = await self._usage.ListFineTuningUsage(
                usage_pb2.ListFineTuningUsageRequest(page_size=min(limit - len(out), 100),
                                                     page_token=token),
                metadata=self._auth(key), timeout=self._timeout_s)
            out += page.usage
            token = page.next_page_token
            if not token:
                break
        return out[:limit]
