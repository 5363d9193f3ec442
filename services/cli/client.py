"""The Python client: one object for the control and inference APIs, with the API key attached.

    from services.cli.client import FinetuneClient
    with FinetuneClient("127.0.0.1:50051", "127.0.0.1:50052", api_key) as ft:
        ft.load_table("support.public.tickets", "tickets.csv")
        job = ft.create_job("support.public.router", "smollm2-135m-instruct",
                            "SELECT prompt, completion FROM support.public.tickets")
        for update in ft.watch_job(job.id): ...
        print(ft.complete("support.public.router", "My card was stolen").text)
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Iterable, Iterator

import grpc

from finetune.control.v1 import (access_pb2, access_pb2_grpc, data_pb2, data_pb2_grpc, jobs_pb2,
                                 jobs_pb2_grpc, models_pb2, models_pb2_grpc)
from finetune.inference.v1 import inference_pb2, inference_pb2_grpc

CHUNK_BYTES = 1 << 20
_FORMATS = {".csv": data_pb2.CSV, ".jsonl": data_pb2.JSONL, ".json": data_pb2.JSONL,
            ".parquet": data_pb2.PARQUET}


class _BearerAuth(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                  grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds `authorization: Bearer <key>` to every call (insecure loopback channels included)."""

    def __init__(self, api_key: str):
        self._metadata = ("authorization", f"Bearer {api_key}")

    def _details(self, details):
        # grpc passes its own namedtuple of call details through intercept_channel.
        return details._replace(metadata=[*(details.metadata or ()), self._metadata])

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)


def _channel(address: str, api_key: str) -> grpc.Channel:
    options = [("grpc.max_receive_message_length", 64 << 20)]
    return grpc.intercept_channel(grpc.insecure_channel(address, options=options),
                                  _BearerAuth(api_key))


class FinetuneClient:
    def __init__(self, control: str | None = None, inference: str | None = None,
                 api_key: str | None = None):
        control = control or os.environ.get("FINETUNE_CONTROL", "127.0.0.1:50051")
        inference = inference or os.environ.get("FINETUNE_INFERENCE", "127.0.0.1:50052")
        api_key = api_key or os.environ.get("FINETUNE_API_KEY", "")
        self._control = _channel(control, api_key)
        self._inference = _channel(inference, api_key)
        self.jobs = jobs_pb2_grpc.FineTuningServiceStub(self._control)
        self.models = models_pb2_grpc.ModelServiceStub(self._control)
        self.data = data_pb2_grpc.DataServiceStub(self._control)
        self.access = access_pb2_grpc.AccessServiceStub(self._control)
        self.inference = inference_pb2_grpc.InferenceServiceStub(self._inference)

    def close(self) -> None:
        self._control.close()
        self._inference.close()

    def __enter__(self) -> "FinetuneClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- data --------------------------------------------------------------------------------

    def load_table(self, table: str, path: str | os.PathLike, replace: bool = False,
                   file_format: int | None = None) -> data_pb2.Table:
        """Streams a CSV, JSONL or Parquet file into `table` without reading it whole."""
        path = Path(path)
        fmt = file_format or _FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise ValueError(f"cannot tell the format of {path}: use .csv, .jsonl or .parquet")

        def requests() -> Iterator[data_pb2.LoadTableRequest]:
            yield data_pb2.LoadTableRequest(header=data_pb2.LoadTableHeader(
                table=table, format=fmt, replace=replace))
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK_BYTES):
                    yield data_pb2.LoadTableRequest(file_chunk=chunk)
        return self.data.LoadTable(requests())

    def load_rows(self, table: str, rows: Iterable[dict], replace: bool = False,
                  batch: int = 500) -> data_pb2.Table:
        def requests() -> Iterator[data_pb2.LoadTableRequest]:
            yield data_pb2.LoadTableRequest(header=data_pb2.LoadTableHeader(
                table=table, replace=replace))
            pending: list[data_pb2.Row] = []
            for row in rows:
                pending.append(data_pb2.Row(values={k: str(v) for k, v in row.items()}))
                if len(pending) >= batch:
                    yield data_pb2.LoadTableRequest(rows=data_pb2.Rows(rows=pending))
                    pending = []
            if pending:
                yield data_pb2.LoadTableRequest(rows=data_pb2.Rows(rows=pending))
        return self.data.LoadTable(requests())

    def preview(self, query: str, limit: int = 10) -> data_pb2.PreviewQueryResponse:
        return self.data.PreviewQuery(data_pb2.PreviewQueryRequest(query=query, limit=limit))

    def list_tables(self, database: str = "") -> list[data_pb2.Table]:
        return list(self.data.ListTables(data_pb2.ListTablesRequest(database=database)).tables)

    # -- fine-tuning -------------------------------------------------------------------------

    def create_job(self, model: str, base_model: str, training_query: str,
                   validation_query: str = "", request_id: str | None = None,
                   **options) -> jobs_pb2.FineTuningJob:
        return self.jobs.CreateFineTuningJob(jobs_pb2.CreateFineTuningJobRequest(
            model=model, base_model=base_model, training_query=training_query,
            validation_query=validation_query, options=jobs_pb2.FineTuningOptions(**options),
            request_id=request_id or str(uuid.uuid4())))

    def get_job(self, job_id: str) -> jobs_pb2.FineTuningJob:
        return self.jobs.GetFineTuningJob(jobs_pb2.GetFineTuningJobRequest(id=job_id))

    def list_jobs(self, page_size: int = 0, page_token: str = "") -> jobs_pb2.ListFineTuningJobsResponse:
        return self.jobs.ListFineTuningJobs(jobs_pb2.ListFineTuningJobsRequest(
            page_size=page_size, page_token=page_token))

    def cancel_job(self, job_id: str) -> jobs_pb2.FineTuningJob:
        return self.jobs.CancelFineTuningJob(jobs_pb2.CancelFineTuningJobRequest(id=job_id))

    def watch_job(self, job_id: str, timeout: float | None = None) -> Iterator[jobs_pb2.FineTuningJob]:
        return self.jobs.WatchFineTuningJob(jobs_pb2.WatchFineTuningJobRequest(id=job_id),
                                            timeout=timeout)

    def wait_job(self, job_id: str, timeout: float | None = None) -> jobs_pb2.FineTuningJob:
        """Blocks until the job is terminal and returns its final state."""
        for _ in self.watch_job(job_id, timeout=timeout):
            pass
        return self.get_job(job_id)

    # -- models ------------------------------------------------------------------------------

    def base_models(self) -> list[models_pb2.BaseModel]:
        return list(self.models.ListBaseModels(models_pb2.ListBaseModelsRequest()).base_models)

    def list_models(self) -> list[models_pb2.Model]:
        return list(self.models.ListModels(models_pb2.ListModelsRequest()).models)

    def get_model(self, name: str) -> models_pb2.Model:
        return self.models.GetModel(models_pb2.GetModelRequest(name=name))

    def download_artifact(self, model: str, artifact: str) -> bytes:
        chunks = self.models.GetModelArtifact(models_pb2.GetModelArtifactRequest(
            name=model, artifact=artifact))
        return b"".join(c.data for c in chunks)

    def whoami(self) -> access_pb2.Principal:
        return self.access.WhoAmI(access_pb2.WhoAmIRequest())

    # -- inference ---------------------------------------------------------------------------

    def complete(self, model: str, prompt: str = "", messages: list[dict] | None = None,
                 timeout: float | None = None, **options) -> inference_pb2.CompleteResponse:
        return self.inference.Complete(_complete_request(model, prompt, messages, options),
                                       timeout=timeout)

    def complete_stream(self, model: str, prompt: str = "", messages: list[dict] | None = None,
                        timeout: float | None = None,
                        **options) -> Iterator[inference_pb2.CompleteStreamResponse]:
        return self.inference.CompleteStream(_complete_request(model, prompt, messages, options),
                                             timeout=timeout)


def _complete_request(model: str, prompt: str, messages: list[dict] | None,
                      options: dict) -> inference_pb2.CompleteRequest:
    return inference_pb2.CompleteRequest(
        model=model, prompt=prompt,
        messages=[inference_pb2.ChatMessage(**m) for m in messages or []],
        options=inference_pb2.CompletionOptions(**options), request_id=str(uuid.uuid4()))
