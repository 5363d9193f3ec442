"""ControlConfig: every setting of the control service, built once from flags and environment.

Precedence: command-line flag, then FINETUNE_* environment variable, then the default (derived
from --home where it is a path). Loading only reads flags and environment: it writes nothing.
The one setting that may need a file, a local service token, is `ensure_service_token`'s, an
explicit step at startup.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

SERVICE_TOKEN_FILE = "service_token"
# A free port unless configured: never a clash between processes on one machine; `finetune up`
# and the deployments name theirs.
DEFAULT_METRICS_PORT = 0


@dataclass(frozen=True)
class ControlConfig:
    host: str
    port: int
    home: Path
    database_url: str
    data_dir: Path
    artifact_root: str
    bootstrap_key_file: Path
    ray_address: str
    service_token: str                # empty: ensure_service_token provides the local one
    catalog_path: Path | None = None
    model_cache: Path | None = None
    advertise_address: str = ""        # how the trainer reaches control (spec.json)
    trainer_python: str = sys.executable
    # How often a job's training workers may fail (a lost node, a crashed process) and be
    # restarted from the last checkpoint before the job fails: handed to the trainer.
    trainer_max_failures: int = 2
    default_num_workers: int = 2
    max_num_workers: int = 8
    reconcile_interval_s: float = 2.0
    max_submit_attempts: int = 5
    query_timeout_s: float = 120.0
    query_memory_limit: str = "1GB"
    query_threads: int = 2
    max_upload_bytes: int = 4 << 30
    # URI prefixes ImportModel may read an adapter folder from (s3://bucket/adapters/, ...);
    # none: adapters are imported by upload only. Comma-separated on the command line.
    import_sources: tuple[str, ...] = ()
    # How long inference may cache a ResolveModel answer: the bound on how long a revoked key
    # or grant still works for COMPLETE (inference uses the smaller of this and its own TTL).
    resolve_cache_ttl_s: int = 30
    prices_path: Path | None = None    # credits per million tokens (default deploy/prices.toml)
    worker_threads: int = 32           # blocking work (DB, DuckDB, Ray client) runs here
    # The inference service evaluations call (host:port); empty: EvaluateModel is refused.
    inference_address: str = ""
    max_evaluation_rows: int = 5000    # rows one evaluation's query may return
    max_running_evaluations: int = 2   # evaluations run at once (each `concurrency` calls)
    max_generation_rows: int = 100_000  # rows one batch generation's query may return
    max_running_generations: int = 2   # batch generations run at once
    # Training jobs the cluster runs side by side: a sweep runs at most this many trials at
    # once (1 on a small machine, where two jobs would only share its cores).
    max_concurrent_trials: int = 1
    # COMPLETE inside queries (RunQuery): rows one query may generate, and calls at a time.
    max_sql_completions: int = 1000
    sql_completion_concurrency: int = 8
    # Prometheus /metrics on host:metrics_port (0: a free port, printed at start; -1: off).
    metrics_port: int = DEFAULT_METRICS_PORT
    log_level: str = "INFO"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


# flag -> (environment variable, type)
_SETTINGS = {
    "host": ("FINETUNE_CONTROL_HOST", str),
    "port": ("FINETUNE_CONTROL_PORT", int),
    "home": ("FINETUNE_HOME", str),
    "database_url": ("FINETUNE_DATABASE_URL", str),
    "data_dir": ("FINETUNE_DATA_DIR", str),
    "artifact_root": ("FINETUNE_ARTIFACT_ROOT", str),
    "bootstrap_key_file": ("FINETUNE_BOOTSTRAP_KEY_FILE", str),
    "ray_address": ("FINETUNE_RAY_ADDRESS", str),
    "service_token": ("FINETUNE_SERVICE_TOKEN", str),
    "catalog_path": ("FINETUNE_BASE_MODELS", str),
    "model_cache": ("FINETUNE_MODEL_CACHE", str),
    "advertise_address": ("FINETUNE_CONTROL_ADVERTISE_ADDRESS", str),
    "trainer_python": ("FINETUNE_TRAINER_PYTHON", str),
    "trainer_max_failures": ("FINETUNE_TRAINER_MAX_FAILURES", int),
    "default_num_workers": ("FINETUNE_DEFAULT_NUM_WORKERS", int),
    "max_num_workers": ("FINETUNE_MAX_NUM_WORKERS", int),
    "reconcile_interval_s": ("FINETUNE_RECONCILE_INTERVAL_S", float),
    "max_submit_attempts": ("FINETUNE_MAX_SUBMIT_ATTEMPTS", int),
    "query_timeout_s": ("FINETUNE_QUERY_TIMEOUT_S", float),
    "query_memory_limit": ("FINETUNE_QUERY_MEMORY_LIMIT", str),
    "query_threads": ("FINETUNE_QUERY_THREADS", int),
    "max_upload_bytes": ("FINETUNE_MAX_UPLOAD_BYTES", int),
    "import_sources": ("FINETUNE_IMPORT_SOURCES", str),
    "resolve_cache_ttl_s": ("FINETUNE_RESOLVE_CACHE_TTL_S", int),
    "prices_path": ("FINETUNE_PRICES", str),
    "worker_threads": ("FINETUNE_CONTROL_WORKER_THREADS", int),
    "inference_address": ("FINETUNE_INFERENCE_ADDRESS", str),
    "max_evaluation_rows": ("FINETUNE_MAX_EVALUATION_ROWS", int),
    "max_running_evaluations": ("FINETUNE_MAX_RUNNING_EVALUATIONS", int),
    "max_generation_rows": ("FINETUNE_MAX_GENERATION_ROWS", int),
    "max_running_generations": ("FINETUNE_MAX_RUNNING_GENERATIONS", int),
    "max_concurrent_trials": ("FINETUNE_MAX_CONCURRENT_TRIALS", int),
    "max_sql_completions": ("FINETUNE_MAX_SQL_COMPLETIONS", int),
    "sql_completion_concurrency": ("FINETUNE_SQL_COMPLETION_CONCURRENCY", int),
    "metrics_port": ("FINETUNE_METRICS_PORT", int),
    "log_level": ("FINETUNE_LOG_LEVEL", str),
}


# Flags not spelled after their setting's name.
_FLAGS = {"inference_address": "--inference"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m services.control",
                                description="The finetune control service (gRPC).")
    for name, (env, kind) in _SETTINGS.items():
        flag = _FLAGS.get(name, "--" + name.replace("_", "-"))
        help_text = f"(env {env})"
        if name == "service_token":
            help_text = f"shared secret of the internal RPCs (env {env}; prefer the env var: " \
                        "flags are visible in the process list)"
        p.add_argument(flag, dest=name, type=kind, default=None, help=help_text)
    return p


def load_config(argv: Sequence[str] | None = None,
                environ: Mapping[str, str] | None = None) -> ControlConfig:
    environ = os.environ if environ is None else environ
    args = vars(parser().parse_args(argv))
    values = {}
    for name, (env, kind) in _SETTINGS.items():
        if args[name] is not None:
            values[name] = args[name]
        elif environ.get(env):
            try:
                values[name] = kind(environ[env])
            except ValueError:
                raise SystemExit(
                    f"{env}={environ[env]!r} is not a valid {kind.__name__}") from None
    home = Path(values.pop("home", None) or "~/.finetune").expanduser().resolve()
    defaults = {
        "host": "127.0.0.1",
        "port": 50051,
        "database_url": f"sqlite:///{home / 'control.db'}",
        "data_dir": home / "data",
        "artifact_root": str(home / "artifacts"),
        "bootstrap_key_file": home / "bootstrap_key",
        "ray_address": "http://127.0.0.1:8265",
        "service_token": "",   # none configured: ensure_service_token's local one
    }
    merged = {**defaults, **values}
    if merged.get("trainer_max_failures", 0) < 0:
        raise SystemExit("--trainer-max-failures must be 0 or more")
    for name in ("max_sql_completions", "sql_completion_concurrency"):
        if merged.get(name, 1) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be 1 or more")
    if isinstance(merged.get("import_sources"), str):
        merged["import_sources"] = tuple(
            p.strip() for p in merged["import_sources"].split(",") if p.strip())
    for name in ("data_dir", "bootstrap_key_file", "catalog_path", "model_cache", "prices_path"):
        if merged.get(name) is not None:
            merged[name] = Path(merged[name]).expanduser()
    return ControlConfig(home=home, **merged)


def ensure_service_token(config: ControlConfig) -> ControlConfig:
    """Startup step: the config with a service token. Without a configured one, the token kept
    in <home>/service_token (0600), generated and written there on the first start, where a local
    launcher can hand it to the trainer and inference."""
    if config.service_token:
        return config
    from services.control.core.authentication import write_secret

    path = config.home / SERVICE_TOKEN_FILE
    token = path.read_text().strip() if path.exists() else ""
    if not token:
        token = secrets.token_urlsafe(32)
        write_secret(path, token)
    return replace(config, service_token=token)
