"""The sandbox runs exactly one SELECT over the account's own tables and nothing else."""

import os

import pytest
from control_testbed import files_under, instruction_rows, load_rows

from services.common.errors import InvalidArgument
from services.control.data.sandbox import single_select

HOSTILE = {
    "copy out": "COPY (SELECT 1) TO '{dir}/leak.csv'",
    "copy table": "COPY PUBLIC.PUBLIC.TRAIN TO '{dir}/leak.parquet' (FORMAT parquet)",
    "attach": "ATTACH '{dir}/new.duckdb' AS other",
    "install": "INSTALL httpfs",
    "load": "LOAD httpfs",
    "read_csv": "SELECT * FROM read_csv('/etc/passwd')",
    "read_text": "SELECT * FROM read_text('/etc/hostname')",
    "replacement scan": "SELECT * FROM '/etc/passwd'",
    "glob": "SELECT * FROM glob('{dir}/*')",
    "set": "SET enable_external_access = true",
    "set memory": "SET memory_limit = '100GB'",
    "pragma": "PRAGMA enable_profiling",
    "two statements": "SELECT 1; SELECT 2",
    "select then drop": "SELECT 1; DROP TABLE PUBLIC.PUBLIC.TRAIN",
    "drop": "DROP TABLE PUBLIC.PUBLIC.TRAIN",
    "insert": "INSERT INTO PUBLIC.PUBLIC.TRAIN VALUES ('a', 'b', 'c')",
    "create": "CREATE TABLE PUBLIC.PUBLIC.X AS SELECT 1",
    "ctas via select into": "SELECT * INTO x FROM PUBLIC.PUBLIC.TRAIN",
    "export": "EXPORT DATABASE '{dir}/dump'",
    "call": "CALL pragma_version()",
    "detach": "DETACH PUBLIC",
    "write via function": "SELECT * FROM write_csv('x')",
}


@pytest.fixture
def tables(control, admin):
    load_rows(control, admin.account_id, "train", instruction_rows(3))
    return control


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_queries_are_invalid_and_leave_nothing_behind(tables, admin, tmp_path, name):
    outside = tmp_path / "outside"
    outside.mkdir()
    sql = HOSTILE[name].format(dir=outside)
    before = files_under(tmp_path)
    with pytest.raises(InvalidArgument):
        tables.catalog.preview(admin.account_id, sql, 10)
    assert files_under(tmp_path) == before
    assert not os.listdir(outside)
    # and the table is intact
    assert tables.catalog.preview(admin.account_id, "SELECT count(*) AS n FROM train", 1) \
        .rows == [["3"]]


def test_only_select_passes_the_statement_check():
    assert single_select("  SELECT 1  ").strip() == "SELECT 1"
    assert single_select("WITH x AS (SELECT 1 AS a) SELECT a FROM x")
    for bad in ("", "   ", "-- nothing", "SELECT 1; SELECT 2", "DELETE FROM t"):
        with pytest.raises(InvalidArgument):
            single_select(bad)


def test_bad_sql_reports_duckdb_message(tables, admin):
    with pytest.raises(InvalidArgument, match="syntax error"):
        tables.catalog.preview(admin.account_id, "SELEC prompt FROM train", 10)
    with pytest.raises(InvalidArgument, match="nope does not exist"):
        tables.catalog.preview(admin.account_id, "SELECT * FROM nope", 10)


def test_queries_see_only_their_own_account(tables, admin):
    load_rows(tables, "other_account", "secret", [{"x": "1"}])
    with pytest.raises(InvalidArgument, match="(?i)secret"):
        tables.catalog.preview(admin.account_id, "SELECT * FROM secret", 10)
    other = tables.catalog.preview("other_account", "SELECT * FROM secret", 10)
    assert other.rows == [["1"]]


def test_bare_names_resolve_in_public_public(tables, admin):
    full = tables.catalog.preview(admin.account_id, "SELECT prompt FROM PUBLIC.PUBLIC.TRAIN "
                                  "ORDER BY prompt", 10)
    bare = tables.catalog.preview(admin.account_id, "SELECT prompt FROM train ORDER BY 1", 10)
    assert full.rows == bare.rows == [["question 0"], ["question 1"], ["question 2"]]


@pytest.mark.parametrize("depth", [100, 300, 350, 900, 3000])
def test_deeply_nested_queries_answer_or_are_invalid_never_a_crash(tables, admin, depth):
    """DuckDB parses deeper expressions than Python's stack can hold as its JSON tree: those
    are INVALID_ARGUMENT, not INTERNAL (found while adding FINETUNE's argument parser)."""
    for sql in ("SELECT " + "{'a': " * depth + "1" + "}" * depth + " AS v",
                "SELECT " + "(" * depth + "1" + ")" * depth + " AS v FROM train"):
        try:
            preview = tables.catalog.preview(admin.account_id, sql, 10)
        except InvalidArgument:
            continue
        assert preview.rows
