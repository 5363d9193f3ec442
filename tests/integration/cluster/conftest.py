"""An external Ray cluster of two nodes on loopback, with control (`python -m services.control
--ray-address ...`) in front of it, its metadata in PostgreSQL and its artifacts on an
S3-compatible server (moto): nothing but the base model is shared between the processes
through the file system.

The cluster's head has no CPUs, so training workers can only run on a worker node; the
tests start (and kill) their own worker nodes, see cluster_processes.py."""

from __future__ import annotations

import importlib.util
import uuid
from pathlib import Path

import pytest

CONTROL_TESTS = Path(__file__).resolve().parents[1] / "control"  # on sys.path: ../conftest.py


def _control_conftest():
    """tests/integration/control/conftest.py under another module name: its PostgreSQL server
    fixture, reused here as it is."""
    spec = importlib.util.spec_from_file_location("_cluster_control_conftest",
                                                  CONTROL_TESTS / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


postgres_server = _control_conftest().postgres_server   # noqa: E305 - a re-exported fixture

from cluster_processes import SERVICE_TOKEN, ray_head  # noqa: E402
from control_processes import ControlProcess, free_port  # noqa: E402


@pytest.fixture(scope="module")
def s3_env(s3_server):
    """A fresh bucket, and this process's environment pointing at the S3 server: what it
    starts from now on (Ray nodes, control) inherits that, as pods inherit their settings."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in s3_server.env.items():
            patch.setenv(name, value)
        patch.setenv("AWS_CONFIG_FILE", "/nonexistent")          # no profile of the machine's
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        yield s3_server, s3_server.new_bucket()


@pytest.fixture(scope="module")
def database_url(postgres_server):
    """A database of its own on the session's PostgreSQL server, dropped afterwards."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin_url = postgres_server.replace("postgresql+psycopg", "postgresql") + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    yield f"{postgres_server}/{name}"
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def head(s3_env):
    """The cluster's head: no CPUs. The trainer's precision is fixed (fp32) through the
    environment its Ray job driver inherits, which skips the per-machine precision probe."""
    import os

    with ray_head(num_cpus=0, env={**os.environ, "FINETUNE_TRAINER_PRECISION": "fp32"}) as h:
        yield h


@pytest.fixture(scope="module")
def control(tmp_path_factory, head, s3_env, database_url, base_model_spec):
    _, bucket = s3_env
    home = tmp_path_factory.mktemp("cluster-control") / "home"
    process = ControlProcess(home, free_port(), head.dashboard, SERVICE_TOKEN,
                             "--artifact-root", f"s3://{bucket}/artifacts",
                             "--database-url", database_url,
                             "--reconcile-interval-s", "1", "--default-num-workers", "1")
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def api_key(control) -> str:
    return (control.home / "bootstrap_key").read_text().strip()
