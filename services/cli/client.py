"""The Python client: one object for the control and inference APIs, with the API key attached.

    from finetune.client import Client      # services.cli.client: the old path, one more release
    with Client("127.0.0.1:50051", "127.0.0.1:50052", api_key) as ft:
        ft.load_table("support.public.tickets", "deploy/samples/support_tickets.csv")
        job = ft.create_job("support.public.router", "smollm2-135m-instruct",
                            "SELECT prompt, completion FROM support.public.tickets")
        for update in ft.watch_job(job.id): ...
        print(ft.complete("support.public.router", "My card was stolen").text)
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence, cast

import grpc

from finetune.control.v1 import (
    access_pb2,
    access_pb2_grpc,
    data_pb2,
    data_pb2_grpc,
    evaluations_pb2,
    evaluations_pb2_grpc,
    generations_pb2,
    generations_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    sweeps_pb2,
    sweeps_pb2_grpc,
)
from finetune.inference.v1 import inference_pb2, inference_pb2_grpc
from services.common.adapter_files import ADAPTER_FILES, PICKLE_SUFFIXES

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


# COMPLETE is idempotent under its request_id (a retry is the kept answer, billed once), so
# gRPC may resend it when the server was unreachable or went away mid-call: a restart of the
# engine is ridden out instead of surfacing as an error. Five attempts is gRPC's own cap.
_RETRY_COMPLETE = json.dumps({"methodConfig": [{
    "name": [{"service": "finetune.inference.v1.InferenceService", "method": "Complete"},
             {"service": "finetune.inference.v1.InferenceService", "method": "CompleteStream"}],
    "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.5s", "maxBackoff": "8s",
                    "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]})


def _channel(address: str, api_key: str, service_config: str = "") -> grpc.Channel:
    options: list[tuple[str, str | int]] = [("grpc.max_receive_message_length", 64 << 20)]
    if service_config:
        options += [("grpc.enable_retries", 1), ("grpc.service_config", service_config)]
    return grpc.intercept_channel(grpc.insecure_channel(address, options=options),
                                  _BearerAuth(api_key))


class FinetuneClient:
    def __init__(self, control: str | None = None, inference: str | None = None,
                 api_key: str | None = None):
        control = control or os.environ.get("FINETUNE_CONTROL", "127.0.0.1:50051")
        inference = inference or os.environ.get("FINETUNE_INFERENCE", "127.0.0.1:50052")
        api_key = api_key or os.environ.get("FINETUNE_API_KEY", "")
        self._control = _channel(control, api_key)
        self._inference = _channel(inference, api_key, _RETRY_COMPLETE)
        self.jobs = jobs_pb2_grpc.FineTuningServiceStub(self._control)
        self.models = models_pb2_grpc.ModelServiceStub(self._control)
        self.data = data_pb2_grpc.DataServiceStub(self._control)
        self.access = access_pb2_grpc.AccessServiceStub(self._control)
        self.evaluations = evaluations_pb2_grpc.EvaluationServiceStub(self._control)
        self.generations = generations_pb2_grpc.GenerationServiceStub(self._control)
        self.sweeps = sweeps_pb2_grpc.SweepServiceStub(self._control)
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
                   file_format: data_pb2.FileFormat | None = None) -> data_pb2.Table:
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

    def run_query(self, query: str, max_rows: int = 0, page_token: str = ""
                  ) -> Iterator[data_pb2.RunQueryResponse]:
        """One page of the query's rows, as the server streams it."""
        return self.data.RunQuery(data_pb2.RunQueryRequest(
            query=query, max_rows=max_rows, page_token=page_token))

    def query_rows(self, query: str, limit: int | None = None, page_rows: int = 0
                   ) -> tuple[list[data_pb2.Column], Iterator[dict[str, str | None]]]:
        """The query's columns and its rows (every page, or the first `limit` rows) as dicts;
        a SQL NULL is None."""
        responses = self.run_query(query, min(page_rows or 10_000, limit or 10_000))
        first = next(responses)
        columns = list(first.columns)
        names = [c.name for c in columns]

        def rows() -> Iterator[dict[str, str | None]]:
            sent = 0
            message, stream = first, responses
            while True:
                for row in message.rows:
                    if limit is not None and sent >= limit:
                        return
                    sent += 1
                    yield {n: row.values[n] if n in row.values else None for n in names}
                following = next(stream, None)
                if following is not None:
                    message = following
                    continue
                if not message.next_page_token or (limit is not None and sent >= limit):
                    return
                stream = self.run_query(query, page_rows, message.next_page_token)
                message = next(stream)
        return columns, rows()

    def save_query(self, query: str, into: str, replace: bool = False) -> data_pb2.Table:
        """The query's result saved as the table `into`."""
        response = next(self.data.RunQuery(data_pb2.RunQueryRequest(
            query=query, into=into, replace=replace)))
        return response.table

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

    def list_jobs(self, page_size: int = 0,
                  page_token: str = "") -> jobs_pb2.ListFineTuningJobsResponse:
        return self.jobs.ListFineTuningJobs(jobs_pb2.ListFineTuningJobsRequest(
            page_size=page_size, page_token=page_token))

    def cancel_job(self, job_id: str) -> jobs_pb2.FineTuningJob:
        return self.jobs.CancelFineTuningJob(jobs_pb2.CancelFineTuningJobRequest(id=job_id))

    def watch_job(self, job_id: str,
                  timeout: float | None = None) -> Iterator[jobs_pb2.FineTuningJob]:
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

    def list_models(self, shared: bool = False) -> list[models_pb2.Model]:
        """The account's models; `shared`: those other accounts share with the caller."""
        out: list[models_pb2.Model] = []
        token = ""
        while True:
            page = self.models.ListModels(models_pb2.ListModelsRequest(page_token=token,
                                                                       shared=shared))
            out.extend(page.models)
            token = page.next_page_token
            if not token:
                return out

    def get_model(self, name: str) -> models_pb2.Model:
        return self.models.GetModel(models_pb2.GetModelRequest(name=name))

    def download_artifact(self, model: str, artifact: str) -> bytes:
        chunks = self.models.GetModelArtifact(models_pb2.GetModelArtifactRequest(
            name=model, artifact=artifact))
        return b"".join(c.data for c in chunks)

    def import_model(self, name: str, base_model: str, source: str | os.PathLike,
                     request_id: str | None = None,
                     progress: Callable[[int], None] | None = None) -> models_pb2.Model:
        """Register a PEFT LoRA adapter trained elsewhere. `source` is a local folder (or its
        adapter_model.safetensors), whose files are uploaded, or an object-store URI
        (s3://bucket/folder) that control reads itself. `progress(n)` hears of each n bytes
        sent."""
        header = models_pb2.ImportModelHeader(name=name, base_model=base_model,
                                              request_id=request_id or str(uuid.uuid4()))
        if "://" in str(source):
            header.source_uri = str(source)
            return self.models.ImportModel(iter([models_pb2.ImportModelRequest(header=header)]))
        files = adapter_upload_files(Path(source))

        def requests() -> Iterator[models_pb2.ImportModelRequest]:
            yield models_pb2.ImportModelRequest(header=header)
            for path in files:
                with open(path, "rb") as f:
                    while chunk := f.read(CHUNK_BYTES):
                        yield models_pb2.ImportModelRequest(file_chunk=models_pb2.AdapterFileChunk(
                            file=path.name, data=chunk))
                        if progress is not None:
                            progress(len(chunk))
        return self.models.ImportModel(requests())

    def export_model(self, name: str, tar: bool = False
                     ) -> Iterator[models_pb2.ExportModelResponse]:
        """The model as a PEFT folder's files (each chunk names its file) or as one tar
        archive's bytes; the first message's total_bytes is for progress."""
        fmt = models_pb2.EXPORT_FORMAT_TAR if tar else models_pb2.EXPORT_FORMAT_FILES
        return self.models.ExportModel(models_pb2.ExportModelRequest(name=name, format=fmt))

    # -- evaluations ---------------------------------------------------------------------------

    def evaluate_model(self, model: str, query: str, task: str = "CLASSIFICATION",
                       request_id: str | None = None,
                       **generation) -> evaluations_pb2.Evaluation:
        """Starts ML.EVALUATE-style scoring of `model` on `query` (prompt + label/completion)."""
        return self.evaluations.EvaluateModel(evaluations_pb2.EvaluateModelRequest(
            model=model, query=query, task=evaluation_task_value(task),
            generation=evaluations_pb2.GenerationOptions(**generation),
            request_id=request_id or str(uuid.uuid4())))

    def get_evaluation(self, evaluation_id: str) -> evaluations_pb2.Evaluation:
        return self.evaluations.GetEvaluation(evaluations_pb2.GetEvaluationRequest(
            id=evaluation_id))

    def list_evaluations(self, model: str = "") -> list[evaluations_pb2.Evaluation]:
        out, token = [], ""
        while True:
            page = self.evaluations.ListEvaluations(evaluations_pb2.ListEvaluationsRequest(
                model=model, page_token=token))
            out.extend(page.evaluations)
            token = page.next_page_token
            if not token:
                return out

    def cancel_evaluation(self, evaluation_id: str) -> evaluations_pb2.Evaluation:
        return self.evaluations.CancelEvaluation(evaluations_pb2.CancelEvaluationRequest(
            id=evaluation_id))

    def watch_evaluation(self, evaluation_id: str,
                         timeout: float | None = None) -> Iterator[evaluations_pb2.Evaluation]:
        return self.evaluations.WatchEvaluation(
            evaluations_pb2.WatchEvaluationRequest(id=evaluation_id), timeout=timeout)

    def wait_evaluation(self, evaluation_id: str,
                        timeout: float | None = None) -> evaluations_pb2.Evaluation:
        for _ in self.watch_evaluation(evaluation_id, timeout=timeout):
            pass
        return self.get_evaluation(evaluation_id)

    def evaluation_results(self, evaluation_id: str, file: str = "metrics.csv") -> bytes:
        chunks = self.evaluations.GetEvaluationResults(
            evaluations_pb2.GetEvaluationResultsRequest(id=evaluation_id, file=file))
        return b"".join(c.data for c in chunks)

    # -- batch generation ----------------------------------------------------------------------

    def generate_text(self, model: str, query: str, into: str, request_id: str | None = None,
                      **generation) -> generations_pb2.Generation:
        """Starts ML.GENERATE_TEXT: `model` answers each row's prompt of `query`, into the new
        table `into` (the query's columns plus generated_text, finish_reason, token counts and
        error)."""
        return self.generations.GenerateText(generations_pb2.GenerateTextRequest(
            model=model, query=query, into=into,
            generation=evaluations_pb2.GenerationOptions(**generation),
            request_id=request_id or str(uuid.uuid4())))

    def get_generation(self, generation_id: str) -> generations_pb2.Generation:
        return self.generations.GetGeneration(generations_pb2.GetGenerationRequest(
            id=generation_id))

    def list_generations(self) -> list[generations_pb2.Generation]:
        out, token = [], ""
        while True:
            page = self.generations.ListGenerations(generations_pb2.ListGenerationsRequest(
                page_token=token))
            out.extend(page.generations)
            token = page.next_page_token
            if not token:
                return out

    def cancel_generation(self, generation_id: str) -> generations_pb2.Generation:
        return self.generations.CancelGeneration(generations_pb2.CancelGenerationRequest(
            id=generation_id))

    def watch_generation(self, generation_id: str,
                         timeout: float | None = None) -> Iterator[generations_pb2.Generation]:
        return self.generations.WatchGeneration(
            generations_pb2.WatchGenerationRequest(id=generation_id), timeout=timeout)

    def wait_generation(self, generation_id: str,
                        timeout: float | None = None) -> generations_pb2.Generation:
        for _ in self.watch_generation(generation_id, timeout=timeout):
            pass
        return self.get_generation(generation_id)

    # -- hyperparameter sweeps -----------------------------------------------------------------

    def create_sweep(self, model: str, base_model: str, training_query: str,
                     grid: Mapping[str, Sequence[float]] | None = None,
                     ranges: Mapping[str, tuple[float, float]] | None = None,
                     log_scale: Iterable[str] = (), random_search: bool = False,
                     trials: int = 0, seed: int = 0,
                     max_jobs: int = 0, max_trained_tokens: int = 0, max_concurrent: int = 0,
                     objective: str = "", delete_candidates: bool = False,
                     validation_query: str = "", request_id: str | None = None,
                     **options) -> sweeps_pb2.Sweep:
        """A sweep over `grid` (option -> values: every combination) or, with `random_search`
        (implied by `ranges` or `trials`), a random search: `grid` values are then choices,
        `ranges` option -> (min, max), uniform in log space for the options in `log_scale`.
        `options` are every trial's FineTuningOptions (with `evaluation`, trials are ranked by
        its metric)."""
        ranges = dict(ranges or {})
        log_scale = set(log_scale)
        parameters = [sweeps_pb2.SweepParameter(name=name, values=list(values))
                      for name, values in (grid or {}).items()]
        parameters += [sweeps_pb2.SweepParameter(name=name, min=low, max=high,
                                                 log_scale=name in log_scale)
                       for name, (low, high) in ranges.items()]
        method = sweeps_pb2.RANDOM if random_search or ranges or trials else sweeps_pb2.GRID
        return self.sweeps.CreateSweep(sweeps_pb2.CreateSweepRequest(
            model=model, base_model=base_model, training_query=training_query,
            validation_query=validation_query, options=jobs_pb2.FineTuningOptions(**options),
            space=sweeps_pb2.SearchSpace(method=method, parameters=parameters, trials=trials,
                                         seed=seed),
            budget=sweeps_pb2.SweepBudget(max_jobs=max_jobs,
                                          max_trained_tokens=max_trained_tokens,
                                          max_concurrent=max_concurrent),
            objective=objective, delete_candidates=delete_candidates,
            request_id=request_id or str(uuid.uuid4())))

    def get_sweep(self, sweep_id: str) -> sweeps_pb2.Sweep:
        return self.sweeps.GetSweep(sweeps_pb2.GetSweepRequest(id=sweep_id))

    def list_sweeps(self) -> list[sweeps_pb2.Sweep]:
        out, token = [], ""
        while True:
            page = self.sweeps.ListSweeps(sweeps_pb2.ListSweepsRequest(page_token=token))
            out.extend(page.sweeps)
            token = page.next_page_token
            if not token:
                return out

    def cancel_sweep(self, sweep_id: str) -> sweeps_pb2.Sweep:
        return self.sweeps.CancelSweep(sweeps_pb2.CancelSweepRequest(id=sweep_id))

    def watch_sweep(self, sweep_id: str,
                    timeout: float | None = None) -> Iterator[sweeps_pb2.Sweep]:
        return self.sweeps.WatchSweep(sweeps_pb2.WatchSweepRequest(id=sweep_id), timeout=timeout)

    def wait_sweep(self, sweep_id: str, timeout: float | None = None) -> sweeps_pb2.Sweep:
        """Blocks until the sweep is terminal and returns its final state."""
        for _ in self.watch_sweep(sweep_id, timeout=timeout):
            pass
        return self.get_sweep(sweep_id)

    def whoami(self) -> access_pb2.Principal:
        return self.access.WhoAmI(access_pb2.WhoAmIRequest())

    # -- inference ---------------------------------------------------------------------------

    def complete(self, model: str, prompt: str = "", messages: list[dict] | None = None,
                 timeout: float | None = None, request_id: str | None = None,
                 **options) -> inference_pb2.CompleteResponse:
        """One answer. Calling again with the same request_id (within a day) returns the same
        answer without a second usage row; without one, each call gets a fresh id."""
        return self.inference.Complete(
            _complete_request(model, prompt, messages, options, request_id), timeout=timeout)

    def complete_stream(self, model: str, prompt: str = "", messages: list[dict] | None = None,
                        timeout: float | None = None, request_id: str | None = None,
                        **options) -> Iterator[inference_pb2.CompleteStreamResponse]:
        return self.inference.CompleteStream(
            _complete_request(model, prompt, messages, options, request_id), timeout=timeout)

    def engine(self, timeout: float | None = None) -> inference_pb2.Engine:
        """The inference engine behind this client's address: base model, dtype, probe figures."""
        return self.inference.GetEngine(inference_pb2.GetEngineRequest(), timeout=timeout)

    # -- access and usage (users, roles, keys, grants; usage history) ------------------------
    # Privileges and object types are given by name: "USAGE", "CREATE MODEL", "schema", ...

    @property
    def usage(self):
        from finetune.control.v1 import usage_pb2_grpc
        return usage_pb2_grpc.UsageServiceStub(self._control)

    def create_user(self, name: str, default_role: str = "") -> access_pb2.User:
        return self.access.CreateUser(access_pb2.CreateUserRequest(
            name=name, default_role=default_role))

    def list_users(self) -> list[access_pb2.User]:
        return list(self.access.ListUsers(access_pb2.ListUsersRequest()).users)

    def set_default_role(self, role: str, user: str = "") -> access_pb2.User:
        return self.access.SetDefaultRole(access_pb2.SetDefaultRoleRequest(user=user, role=role))

    def create_role(self, name: str, comment: str = "") -> access_pb2.Role:
        return self.access.CreateRole(access_pb2.CreateRoleRequest(name=name, comment=comment))

    def drop_role(self, name: str) -> None:
        self.access.DropRole(access_pb2.DropRoleRequest(name=name))

    def list_roles(self) -> list[access_pb2.Role]:
        return list(self.access.ListRoles(access_pb2.ListRolesRequest()).roles)

    def grant_role(self, role: str, to_user: str = "", to_role: str = "") -> bool:
        kind, grantee = _grantee(to_user, to_role)
        return self.access.GrantRole(access_pb2.GrantRoleRequest(
            role=role, grantee_type=kind, grantee=grantee)).granted

    def revoke_role(self, role: str, from_user: str = "", from_role: str = "") -> bool:
        kind, grantee = _grantee(from_user, from_role)
        return self.access.RevokeRole(access_pb2.RevokeRoleRequest(
            role=role, grantee_type=kind, grantee=grantee)).revoked

    def grant(self, privilege: str, object_type: str, object_name: str, role: str = "",
              account: str = "") -> bool:
        """GRANT privilege ON object_type object_name TO ROLE role; with `account`, share a
        model with that account (USAGE only): every role of it, or `role` of it."""
        return self.access.GrantPrivilege(access_pb2.GrantPrivilegeRequest(
            privilege=privilege_value(privilege), object_type=object_type_value(object_type),
            object_name=object_name, role=role, grantee_account=account)).granted

    def revoke(self, privilege: str, object_type: str, object_name: str, role: str = "",
               account: str = "") -> bool:
        return self.access.RevokePrivilege(access_pb2.RevokePrivilegeRequest(
            privilege=privilege_value(privilege), object_type=object_type_value(object_type),
            object_name=object_name, role=role, grantee_account=account)).revoked

    def show_grants(self, to_role: str = "", to_user: str = "", on_type: str = "",
                    on_name: str = "", of_role: str = "") -> list[access_pb2.Grant]:
        if on_type:
            request = access_pb2.ShowGrantsRequest(on=access_pb2.ObjectRef(
                type=object_type_value(on_type), name=on_name))
        elif to_role:
            request = access_pb2.ShowGrantsRequest(to_role=to_role)
        elif to_user:
            request = access_pb2.ShowGrantsRequest(to_user=to_user)
        elif of_role:
            request = access_pb2.ShowGrantsRequest(of_role=of_role)
        else:
            request = access_pb2.ShowGrantsRequest()
        return list(self.access.ShowGrants(request).grants)

    def create_api_key(self, user: str = "") -> access_pb2.CreatedApiKey:
        return self.access.CreateApiKey(access_pb2.CreateApiKeyRequest(user=user))

    def list_api_keys(self, user: str = "", all_users: bool = False) -> list[access_pb2.ApiKey]:
        return list(self.access.ListApiKeys(access_pb2.ListApiKeysRequest(
            user=user, all_users=all_users)).keys)

    def revoke_api_key(self, key_id: str) -> access_pb2.ApiKey:
        return self.access.RevokeApiKey(access_pb2.RevokeApiKeyRequest(key_id=key_id))

    def fine_tuning_usage(self, start=None, end=None, model: str = "", user: str = "",
                          page_size: int = 0, page_token: str = ""):
        from finetune.control.v1 import usage_pb2
        return self.usage.ListFineTuningUsage(usage_pb2.ListFineTuningUsageRequest(
            filter=_usage_filter(start, end, model, user), page_size=page_size,
            page_token=page_token))

    def inference_usage(self, start=None, end=None, model: str = "", user: str = "",
                        page_size: int = 0, page_token: str = ""):
        from finetune.control.v1 import usage_pb2
        return self.usage.ListInferenceUsage(usage_pb2.ListInferenceUsageRequest(
            filter=_usage_filter(start, end, model, user), page_size=page_size,
            page_token=page_token))

    def aggregate_inference_usage(self, group_by: Iterable[str] = (), start=None, end=None,
                                  model: str = "", user: str = "", shared_models: bool = False):
        """group_by: any of "model", "user", "day", "account"; `shared_models`: other
        accounts' usage of this account's models."""
        from finetune.control.v1 import usage_pb2
        groupings = [usage_pb2.UsageGrouping.Value(f"GROUP_BY_{g.strip().upper()}")
                     for g in group_by]
        return list(self.usage.AggregateInferenceUsage(usage_pb2.AggregateInferenceUsageRequest(
            filter=_usage_filter(start, end, model, user), group_by=groupings,
            shared_models=shared_models)).groups)

    # -- estimates, job events, data definitions ---------------------------------------------

    def estimate_job(self, base_model: str, training_query: str, validation_query: str = "",
                     model: str = "", **options) -> jobs_pb2.FineTuningJobEstimate:
        """A dry run of create_job: rows, tokens, truncated rows and credits; nothing starts."""
        return self.jobs.EstimateFineTuningJob(jobs_pb2.EstimateFineTuningJobRequest(
            model=model, base_model=base_model, training_query=training_query,
            validation_query=validation_query, options=jobs_pb2.FineTuningOptions(**options)))

    def list_job_events(self, job_id: str, page_size: int = 0, page_token: str = "",
                        newest_first: bool = False) -> jobs_pb2.ListFineTuningJobEventsResponse:
        return self.jobs.ListFineTuningJobEvents(jobs_pb2.ListFineTuningJobEventsRequest(
            id=job_id, page_size=page_size, page_token=page_token, newest_first=newest_first))

    def job_events(self, job_id: str, newest_first: bool = False) -> Iterator[jobs_pb2.JobEvent]:
        """Every event of a job, page by page."""
        token = ""
        while True:
            page = self.list_job_events(job_id, 500, token, newest_first)
            yield from page.events
            token = page.next_page_token
            if not token:
                return

    def delete_model(self, name: str) -> None:
        self.models.DeleteModel(models_pb2.DeleteModelRequest(name=name))

    def list_databases(self) -> list[data_pb2.Database]:
        return list(self.data.ListDatabases(data_pb2.ListDatabasesRequest()).databases)

    def create_database(self, name: str) -> str:
        return self.data.CreateDatabase(data_pb2.CreateDatabaseRequest(name=name)).name

    def create_schema(self, name: str) -> str:
        return self.data.CreateSchema(data_pb2.CreateSchemaRequest(name=name)).name

    def create_view(self, name: str, query: str, replace: bool = False) -> data_pb2.Table:
        return self.data.CreateView(data_pb2.CreateViewRequest(name=name, query=query,
                                                               replace=replace))

    def drop_database(self, name: str, if_exists: bool = False) -> bool:
        return self.data.DropDatabase(data_pb2.DropDatabaseRequest(
            name=name, if_exists=if_exists)).dropped

    def drop_schema(self, name: str, if_exists: bool = False) -> bool:
        return self.data.DropSchema(data_pb2.DropSchemaRequest(
            name=name, if_exists=if_exists)).dropped

    def drop_table(self, name: str, if_exists: bool = False) -> bool:
        return self.data.DropTable(data_pb2.DropTableRequest(
            name=name, if_exists=if_exists)).dropped

    def drop_view(self, name: str, if_exists: bool = False) -> bool:
        return self.data.DropView(data_pb2.DropViewRequest(
            name=name, if_exists=if_exists)).dropped


def adapter_upload_files(source: Path) -> list[Path]:
    """What an import uploads from a local adapter folder: its two PEFT files, and any
    pickle-based weights beside them, which control refuses with its reason."""
    folder = source.parent if source.is_file() else source
    if not folder.is_dir():
        raise ValueError(f"{source} is not an adapter folder")
    return sorted(p for p in folder.iterdir() if p.is_file() and (
        p.name in ADAPTER_FILES or p.name.endswith(PICKLE_SUFFIXES)))


def privilege_value(name: str) -> access_pb2.Privilege:
    """ "CREATE MODEL", "create_model" -> access_pb2.CREATE_MODEL."""
    key = name.strip().upper().replace(" ", "_").replace("-", "_")
    try:
        return cast(access_pb2.Privilege, access_pb2.Privilege.Value(key))
    except ValueError:
        raise ValueError(f"unknown privilege {name!r}: USAGE, OWNERSHIP, CREATE MODEL, "
                         "CREATE TABLE or CREATE DATABASE") from None


def evaluation_task_value(name: str | int) -> evaluations_pb2.EvaluationTask:
    """CLASSIFICATION | TEXT_GENERATION | QUESTION_ANSWERING (any case, - or _) -> the enum."""
    if isinstance(name, int):
        return cast(evaluations_pb2.EvaluationTask, name)
    key = name.strip().upper().replace("-", "_")
    try:
        return cast(evaluations_pb2.EvaluationTask, evaluations_pb2.EvaluationTask.Value(key))
    except ValueError:
        raise ValueError(f"unknown evaluation task {name!r} (use classification, "
                         "text_generation or question_answering)") from None


def object_type_value(name: str) -> access_pb2.ObjectType:
    try:
        return cast(access_pb2.ObjectType, access_pb2.ObjectType.Value(name.strip().upper()))
    except ValueError:
        raise ValueError(f"unknown object type {name!r}: ACCOUNT, DATABASE, SCHEMA or MODEL") \
            from None


def _grantee(user: str, role: str) -> tuple[access_pb2.GranteeType, str]:
    if bool(user) == bool(role):
        raise ValueError("name exactly one grantee: a user or a role")
    return (access_pb2.TO_USER, user) if user else (access_pb2.TO_ROLE, role)


def _usage_filter(start, end, model: str, user: str):
    """start/end: datetimes (naive ones are taken as UTC) or None."""
    from datetime import timezone

    from finetune.control.v1 import usage_pb2
    f = usage_pb2.UsageFilter(model=model, user=user)
    for field, value in (("start_time", start), ("end_time", end)):
        if value is not None:
            if value.tzinfo is None:
                value = value.replace(tzinfo=timezone.utc)
            getattr(f, field).FromDatetime(value)
    return f


def _complete_request(model: str, prompt: str, messages: list[dict] | None, options: dict,
                      request_id: str | None = None) -> inference_pb2.CompleteRequest:
    return inference_pb2.CompleteRequest(
        model=model, prompt=prompt,
        messages=[inference_pb2.ChatMessage(**m) for m in messages or []],
        options=inference_pb2.CompletionOptions(**options),
        request_id=request_id or str(uuid.uuid4()))

