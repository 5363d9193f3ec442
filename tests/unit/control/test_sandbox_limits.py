"""More of the sandbox: what even an administrator's query may not touch (the service's files,
settings and environment), its time and memory limits, and hostile training queries in CREATE
leaving nothing behind."""

import os

import pytest
from control_testbed import files_under, instruction_rows, load_rows

from services.common.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted
from services.control.core.jobs import CreateJob
from services.control.data.catalog import DataCatalog
from services.control.data.sandbox import SandboxLimits
from services.control.store.tables import JobEventRow, JobRow

SERVICE_SECRETS = {
    "settings": "SELECT current_setting('memory_limit') AS m",
    "settings, method call": "SELECT 'threads'.current_setting() AS t",
    "settings table": "SELECT * FROM duckdb_settings()",
    "settings view": "SELECT * FROM pg_catalog.pg_settings",
    "database files": "SELECT path FROM duckdb_databases()",
    "in a subquery": "SELECT * FROM train WHERE prompt IN (SELECT current_setting('threads'))",
    "in a lambda": "SELECT list_transform([1], x -> current_setting('threads')) AS l",
    "memory": "SELECT * FROM duckdb_memory()",
    "extensions": "SELECT * FROM duckdb_extensions()",
    "secrets": "SELECT * FROM duckdb_secrets()",
    "variables": "SELECT getvariable('x') AS v",
    "serialized sql": "SELECT * FROM json_execute_serialized_sql("
                      "json_serialize_sql('SELECT 1'))",
    "checkpoint": "SELECT * FROM checkpoint()",
}


@pytest.fixture
def tables(control, admin):
    load_rows(control, admin.account_id, "train", instruction_rows(3))
    return control


@pytest.mark.parametrize("name", sorted(SERVICE_SECRETS))
def test_the_service_is_not_the_accounts_to_read(tables, admin, name):
    """Administrators read everything in their account, nothing of the service's."""
    with pytest.raises(InvalidArgument):
        tables.catalog.preview(admin.account_id, SERVICE_SECRETS[name], 10)


def test_account_metadata_stays_readable_for_administrators(tables, admin):
    found = tables.catalog.preview(
        admin.account_id, "SELECT table_name FROM duckdb_tables() WHERE table_name = 'train'", 5)
    assert found.rows == [["train"]]


def test_a_query_that_runs_too_long_is_interrupted(tmp_path, control, admin):
    slow = DataCatalog(control.catalog.data_dir, SandboxLimits(timeout_s=0.5))
    with pytest.raises(DeadlineExceeded):
        slow.preview(admin.account_id, "SELECT count(*) AS n FROM range(1000000000) a, "
                     "range(1000000000) b", 1)


def test_a_query_that_needs_too_much_memory_fails(control, admin):
    small = DataCatalog(control.catalog.data_dir, SandboxLimits(memory_limit="64MB"))
    with pytest.raises(ResourceExhausted):
        small.preview(admin.account_id, "SELECT list(i || repeat('x', 64)) AS l "
                      "FROM range(20000000) r(i)", 1)


HOSTILE_TRAINING = [
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT prompt, completion FROM train; DROP TABLE train",
    "COPY train TO '{dir}/leak.csv'",
    "ATTACH '{dir}/other.duckdb' AS other",
    "SELECT current_setting('memory_limit') AS prompt, 'x' AS completion",
    "SELECT prompt, completion FROM duckdb_databases() d, train",
    "INSTALL httpfs",
]


@pytest.mark.parametrize("query", HOSTILE_TRAINING)
def test_hostile_training_queries_leave_nothing_behind(tables, admin, query, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    query = query.format(dir=outside)
    before = files_under(tables.config.home / "artifacts")
    with pytest.raises(InvalidArgument):
        tables.fine_tuning.create(admin, CreateJob(model="m", base_model="tiny-base",
                                                   training_query=query))
    with pytest.raises(InvalidArgument):
        tables.fine_tuning.create(admin, CreateJob(
            model="m", base_model="tiny-base", training_query="SELECT * FROM train",
            validation_query=query))
    assert files_under(tables.config.home / "artifacts") == before
    with tables.store.transaction() as tx:
        assert tx.session.query(JobRow).count() == 0
        assert tx.session.query(JobEventRow).count() == 0
    assert not os.listdir(outside)
    assert len(tables.catalog.preview(admin.account_id, "SELECT * FROM train", 10).rows) == 3
