"""Wiring: config -> store, catalog, dispatcher, use cases, servicers, gRPC server, reconciler.

Each part is built after what it needs and handed it in its constructor (no callbacks set
afterwards). The one value known only later is the port the server binds (the configured one
may be 0): the trainer's control address is a `ControlAddress`, built first and told the port
by ControlApp once the server has bound it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from finetune.control.v1 import (
    access_pb2_grpc,
    data_pb2_grpc,
    evaluations_pb2_grpc,
    generations_pb2_grpc,
    internal_pb2_grpc,
    jobs_pb2_grpc,
    models_pb2_grpc,
    sweeps_pb2_grpc,
    usage_pb2_grpc,
)
from services.common.artifacts import ArtifactStore
from services.common.base_models import BaseModelSpec, ensure_model, load_catalog
from services.common.http_server import HttpServer, metrics_app
from services.common.interceptors import AuthInterceptor, MetricsInterceptor
from services.common.server import GrpcServer, Registration, wait_for_signal
from services.control.api.access import AccessServicer
from services.control.api.data import DataServicer
from services.control.api.evaluations import EvaluationServicer
from services.control.api.generations import GenerationServicer
from services.control.api.internal import JobReportingServicer, ModelResolutionServicer
from services.control.api.jobs import FineTuningServicer
from services.control.api.models import ModelServicer
from services.control.api.sql_finetune import SqlFinetune
from services.control.api.sweeps import SweepServicer
from services.control.api.usage import UsageServicer
from services.control.config import ControlConfig
from services.control.core.access_control import AccountDirectory
from services.control.core.authentication import Authenticator, bootstrap_admin
from services.control.core.authorization import Authorizer
from services.control.core.databases import Databases
from services.control.core.evaluation_runner import EvaluationRunner, RunnerSettings
from services.control.core.evaluations import Evaluations
from services.control.core.generation_runner import GenerationRunner
from services.control.core.generations import Generations
from services.control.core.jobs import FineTuning
from services.control.core.model_exports import ModelExports
from services.control.core.model_imports import ImportSettings, ModelImports
from services.control.core.models import ModelRegistry
from services.control.core.notifier import ChangeNotifier
from services.control.core.reconciler import Reconciler, ReconcilerSettings
from services.control.core.resolution import ModelResolution
from services.control.core.sweep_runner import SweepRunner
from services.control.core.sweeps import Sweeps
from services.control.core.usage import (
    InferenceUsageRecorder,
    UsageHistory,
    load_price_table,
)
from services.control.data.catalog import DataCatalog
from services.control.data.sandbox import SandboxLimits
from services.control.data.tokenizers import Tokenizers
from services.control.dispatch.inference import CompletionClient, GrpcCompletionClient
from services.control.dispatch.protocol import JobDispatcher
from services.control.dispatch.ray_jobs import RayJobDispatcher
from services.control.dispatch.sql_completions import SqlCompletions
from services.control.domain.options import WorkerLimits
from services.control.metrics import ControlMetrics, MeteredProgress, control_metrics
from services.control.store.database import Store

log = logging.getLogger(__name__)

PACKAGE = "finetune.control.v1"


class ControlAddress:
    """How the trainer reaches control (spec.json): the advertised address, else the address
    the server is bound to, whose port is known once it has bound (`bind`)."""

    def __init__(self, config: ControlConfig):
        self._config = config
        self._bound_port: int | None = None

    def bind(self, port: int) -> None:
        self._bound_port = port

    def __call__(self) -> str:
        if self._config.advertise_address:
            return self._config.advertise_address
        host = self._config.host
        if host in ("0.0.0.0", "::", "[::]", ""):  # a wildcard is not dialable
            host = "127.0.0.1"
        return f"{host}:{self._bound_port or self._config.port}"


@dataclass
class Components:
    """The service's parts, wired but not serving (unit tests use them without a server)."""

    config: ControlConfig
    store: Store
    artifacts: ArtifactStore
    catalog: DataCatalog
    events: ChangeNotifier
    dispatcher: JobDispatcher
    fine_tuning: FineTuning
    registry: ModelRegistry
    imports: ModelImports
    exports: ModelExports
    resolution: ModelResolution
    reconciler: Reconciler
    authenticator: Authenticator
    authorizer: Authorizer
    directory: AccountDirectory
    databases: Databases
    usage: UsageHistory
    inference_usage: InferenceUsageRecorder
    evaluations: Evaluations
    evaluation_runner: EvaluationRunner
    generations: Generations
    generation_runner: GenerationRunner
    sweeps: Sweeps
    sweep_runner: SweepRunner
    base_models: Mapping[str, BaseModelSpec]
    control_address: ControlAddress
    metrics: ControlMetrics

    def registrations(self) -> list[Registration]:
        return [
            Registration(access_pb2_grpc.add_AccessServiceServicer_to_server,
                         AccessServicer(self.directory), f"{PACKAGE}.AccessService"),
            Registration(data_pb2_grpc.add_DataServiceServicer_to_server,
                         DataServicer(self.databases, self.catalog.spool_dir,
                                      self.config.max_upload_bytes,
                                      SqlFinetune(self.fine_tuning, self.evaluations)),
                         f"{PACKAGE}.DataService"),
            Registration(jobs_pb2_grpc.add_FineTuningServiceServicer_to_server,
                         FineTuningServicer(self.fine_tuning, self.events,
                                            evaluations=self.evaluations),
                         f"{PACKAGE}.FineTuningService"),
            Registration(models_pb2_grpc.add_ModelServiceServicer_to_server,
                         ModelServicer(self.registry, self.evaluations, self.imports,
                                       self.exports),
                         f"{PACKAGE}.ModelService"),
            Registration(evaluations_pb2_grpc.add_EvaluationServiceServicer_to_server,
                         EvaluationServicer(self.evaluations, self.events),
                         f"{PACKAGE}.EvaluationService"),
            Registration(generations_pb2_grpc.add_GenerationServiceServicer_to_server,
                         GenerationServicer(self.generations, self.events),
                         f"{PACKAGE}.GenerationService"),
            Registration(sweeps_pb2_grpc.add_SweepServiceServicer_to_server,
                         SweepServicer(self.sweeps, self.events), f"{PACKAGE}.SweepService"),
            Registration(usage_pb2_grpc.add_UsageServiceServicer_to_server,
                         UsageServicer(self.usage), f"{PACKAGE}.UsageService"),
            Registration(internal_pb2_grpc.add_JobReportingServiceServicer_to_server,
                         JobReportingServicer(MeteredProgress(self.fine_tuning,
                                                              self.metrics.throughput)),
                         f"{PACKAGE}.JobReportingService"),
            Registration(internal_pb2_grpc.add_ModelResolutionServiceServicer_to_server,
                         ModelResolutionServicer(self.resolution, self.inference_usage,
                                                 self.config.resolve_cache_ttl_s),
                         f"{PACKAGE}.ModelResolutionService"),
        ]


def build_components(config: ControlConfig, dispatcher: JobDispatcher | None = None,
                     base_models: Mapping[str, BaseModelSpec] | None = None,
                     provision: Callable[[BaseModelSpec], Path] = ensure_model,
                     tokenizers: Callable[[BaseModelSpec, str], Any] | None = None,
                     completions: CompletionClient | None = None,
                     runner_settings: RunnerSettings | None = None) -> Components:
    """Open the store (migrating it), bootstrap the admin key on an empty database, and wire
    everything. `dispatcher`, `base_models`, `provision` and `tokenizers` are injectable for
    tests (the Ray dispatcher, the catalog file, ensure_model and the base models' own
    tokenizers otherwise), and so are the evaluations' inference client (a gRPC client of
    config.inference_address otherwise) and runner settings."""
    if not config.service_token:
        raise ValueError("no service token: configure one, or call "
                         "services.control.config.ensure_service_token at startup")
    store = Store.open(config.database_url)
    bootstrap_admin(store, config.bootstrap_key_file)
    if base_models is None:
        base_models = load_catalog(config.catalog_path, config.model_cache)
    prices = load_price_table(config.prices_path)
    if dispatcher is None:
        dispatcher = RayJobDispatcher(config.ray_address, config.trainer_python)
    artifacts = ArtifactStore(config.artifact_root)
    catalog = DataCatalog(config.data_dir, SandboxLimits(
        memory_limit=config.query_memory_limit, threads=config.query_threads,
        timeout_s=config.query_timeout_s))
    events = ChangeNotifier()
    authorizer = Authorizer(store)
    control_address = ControlAddress(config)
    # What every training job's Ray job gets in its environment (the trainer reads both).
    submit_env = {"FINETUNE_SERVICE_TOKEN": config.service_token,
                  "FINETUNE_TRAINER_MAX_FAILURES": str(config.trainer_max_failures)}
    if completions is None and config.inference_address:
        completions = GrpcCompletionClient(config.inference_address, config.service_token)
    tokenizers = tokenizers or Tokenizers()
    runner = EvaluationRunner(store, artifacts, completions, events, runner_settings or
                              RunnerSettings(max_running=config.max_running_evaluations))
    evaluations = Evaluations(store, catalog, artifacts, base_models, authorizer, events,
                              inference_configured=completions is not None,
                              max_rows=config.max_evaluation_rows,
                              tokenizer_for=lambda base: tokenizers(base, str(provision(base))),
                              on_created=runner.wake, on_cancelled=runner.stop)
    generation_runner = GenerationRunner(
        store, artifacts, catalog, completions, events, replace(
            runner_settings or RunnerSettings(), max_running=config.max_running_generations))
    generations = Generations(store, catalog, artifacts, base_models, authorizer, events,
                              inference_configured=completions is not None,
                              max_rows=config.max_generation_rows,
                              on_created=generation_runner.wake,
                              on_cancelled=generation_runner.stop)
    fine_tuning = FineTuning(
        store, catalog, artifacts, dispatcher, events, base_models, provision,
        control_address, submit_env,
        WorkerLimits(config.default_num_workers, config.max_num_workers),
        authorizer=authorizer, prices=prices, tokenizers=tokenizers,
        scratch_dir=catalog.spool_dir, evaluations=evaluations)
    reconciler = Reconciler(store, dispatcher, artifacts, events, submit_env,
                            ReconcilerSettings(interval_s=config.reconcile_interval_s,
                                               max_submit_attempts=config.max_submit_attempts),
                            prices=prices, on_evaluations_created=runner.wake)
    sweep_runner = SweepRunner(store, fine_tuning, events, prices,
                               interval_s=config.reconcile_interval_s)
    sweeps = Sweeps(store, fine_tuning, authorizer, events, base_models,
                    limits=WorkerLimits(config.default_num_workers, config.max_num_workers),
                    cluster_concurrency=config.max_concurrent_trials, prices=prices,
                    on_changed=sweep_runner.wake)
    return Components(
        config=config, store=store, artifacts=artifacts, catalog=catalog, events=events,
        dispatcher=dispatcher, fine_tuning=fine_tuning,
        registry=ModelRegistry(store, artifacts, base_models, authorizer),
        imports=ModelImports(store, artifacts, base_models, authorizer, provision, ImportSettings(
            spool_dir=catalog.spool_dir, max_bytes=config.max_upload_bytes,
            allowed_sources=config.import_sources)),
        exports=ModelExports(store, artifacts, authorizer, evaluations.for_model),
        resolution=ModelResolution(store, base_models, service_token=config.service_token),
        reconciler=reconciler,
        authenticator=Authenticator(store, config.service_token), authorizer=authorizer,
        directory=AccountDirectory(store, catalog.database_exists),
        databases=Databases(catalog, store, authorizer, completions=SqlCompletions(
            completions, config.max_sql_completions, config.sql_completion_concurrency,
            config.query_timeout_s) if completions is not None else None),
        usage=UsageHistory(store, authorizer),
        inference_usage=InferenceUsageRecorder(store, prices=prices),
        evaluations=evaluations, evaluation_runner=runner, generations=generations,
        generation_runner=generation_runner, sweeps=sweeps, sweep_runner=sweep_runner,
        base_models=base_models,
        control_address=control_address, metrics=control_metrics(store))


class ControlApp:
    """The serving control plane: the gRPC server, the reconciler task and, with a metrics
    port, the /metrics server."""

    def __init__(self, components: Components):
        self.components = components
        config = components.config
        self.server = GrpcServer(config.address, components.registrations(),
                                 interceptors=[MetricsInterceptor(components.metrics.rpc),
                                               AuthInterceptor(components.authenticator)])
        components.control_address.bind(self.server.port)
        self.metrics_server = HttpServer(metrics_app(components.metrics.registry),
                                         config.host, config.metrics_port) \
            if config.metrics_port >= 0 else None
        self._reconcile_task: asyncio.Task | None = None
        self._evaluation_task: asyncio.Task | None = None
        self._generation_task: asyncio.Task | None = None
        self._sweep_task: asyncio.Task | None = None

    @property
    def address(self) -> str:
        return self.server.address

    async def start(self, reconcile: bool = True, evaluate: bool = True) -> None:
        await self.server.start()
        if self.metrics_server is not None:
            await self.metrics_server.start()
        if reconcile:
            self._reconcile_task = asyncio.create_task(self.components.reconciler.run(),
                                                       name="reconciler")
            self._sweep_task = asyncio.create_task(self.components.sweep_runner.run(),
                                                   name="sweeps")
        if evaluate:
            self._evaluation_task = asyncio.create_task(
                self.components.evaluation_runner.run(), name="evaluations")
            self._generation_task = asyncio.create_task(
                self.components.generation_runner.run(), name="generations")

    async def stop(self, grace: float = 5.0) -> None:
        for task in (self._reconcile_task, self._sweep_task, self._evaluation_task,
                     self._generation_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.components.evaluation_runner.close()
        await self.server.stop(grace)
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        self.components.store.close()


async def serve(config: ControlConfig) -> None:
    """Run until SIGINT/SIGTERM, then stop gracefully."""
    # Handlers run their blocking work in the default executor: size it so that a few slow
    # snapshot queries cannot starve authentication and progress reports.
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=config.worker_threads, thread_name_prefix="control"))
    app = ControlApp(build_components(config))
    await app.start()
    print(f"control listening on {app.address}", flush=True)
    if app.metrics_server is not None:
        print(f"control metrics on {app.metrics_server.url}/metrics", flush=True)
    log.info("artifacts in %s, data in %s, Ray at %s", config.artifact_root, config.data_dir,
             config.ray_address)
    try:
        await wait_for_signal()
        log.info("stopping")
    finally:
        await app.stop()
