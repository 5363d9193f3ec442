"""A real control gRPC server on a loopback port, with a scriptable cluster behind the
JobDispatcher Protocol (the Ray dispatcher has its own test against a real local Ray)."""

from __future__ import annotations

import socket

import grpc
import pytest

from control_components import control_components
from control_processes import ScriptedCluster, with_tokenizer

from services.common.base_models import BaseModelSpec
from services.control.app import ControlApp

SERVICE_TOKEN = "integration-service-token"  # test_control_grpc.py presents the same value


@pytest.fixture
def cluster():
    return ScriptedCluster()


@pytest.fixture
def tiny_base(tmp_path, base_model_spec) -> BaseModelSpec:
    folder = with_tokenizer(tmp_path / "tiny-base", base_model_spec)
    return BaseModelSpec(name="tiny-base", source="path", path=folder, context_window=512,
                         prompt_tokens=384, completion_tokens=128, rows_per_epoch=100,
                         max_lora_rank=16, target_modules=("q_proj", "v_proj"), defaults={})


@pytest.fixture
async def control_server(tmp_path, cluster, tiny_base):
    with control_components(tmp_path / "home", tiny_base, service_token=SERVICE_TOKEN,
                            dispatcher=cluster, port=0,
                            reconcile_interval_s=0.2) as components:
        app = ControlApp(components)
        await app.start()
        yield app
        await app.stop(0)


@pytest.fixture
def api_key(control_server) -> str:
    return control_server.components.config.bootstrap_key_file.read_text().strip()


@pytest.fixture
async def channel(control_server):
    async with grpc.aio.insecure_channel(control_server.address) as ch:
        yield ch


# -- PostgreSQL ---------------------------------------------------------------------------------
# The store's tests run on SQLite and on a real PostgreSQL server started here on a loopback port
# in a temp dir (Debian: apt-get install -y postgresql), as the `postgres` user when run as root.

def _postgres_bin(name: str) -> str | None:
    import glob
    import shutil

    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return candidates[-1] if candidates else None


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server for this test session: its base URL (no database)."""
    import os
    import shutil
    import subprocess
    import tempfile

    pytest.importorskip("psycopg", reason="psycopg (v3) is not installed: pip install "
                                          "'psycopg[binary]'")
    initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL is not installed (Debian/Ubuntu: apt-get install -y "
                    "postgresql); the store's PostgreSQL tests need initdb and pg_ctl")
    folder = tempfile.mkdtemp(prefix="ftpg", dir="/tmp")  # short: the socket lives here too
    data = os.path.join(folder, "data")
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        import pwd
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run PostgreSQL as")
        os.chown(folder, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def run(*argv):
        return subprocess.run([*as_user, *argv], check=True, capture_output=True, text=True)

    try:
        run(initdb, "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
            "--no-instructions")
        run(pg_ctl, "-D", data, "-l", os.path.join(folder, "server.log"), "-w", "-t", "120",
            "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off "
                  "-c max_connections=60", "start")
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.fail(f"PostgreSQL did not start: {exc.stderr or exc.stdout}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh, empty database on the session's server, dropped afterwards."""
    import uuid

    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin_url = postgres_server.replace("postgresql+psycopg", "postgresql") + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    yield f"{postgres_server}/{name}"
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """The metadata store's URL, once per supported backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'control.db'}"
    return request.getfixturevalue("postgres_url")

