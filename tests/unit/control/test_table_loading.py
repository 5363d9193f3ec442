"""Tables are loaded from spooled CSV, JSONL, Parquet or rows into DuckDB files per database."""

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from control_testbed import load_file, load_rows

from services.common.errors import AlreadyExists, InvalidArgument, NotFound, ResourceExhausted
from services.control.data.uploads import FileFormat, TableUpload
from services.control.domain.names import qualified_name


def test_csv_with_quotes_and_newlines(control, admin):
    load_file(control, admin.account_id, "t",
              b'prompt,completion\n"a, b","line1\nline2"\nc,d\n', FileFormat.CSV)
    preview = control.catalog.preview(admin.account_id, "SELECT * FROM t ORDER BY prompt", 10)
    assert [c for c, _ in preview.columns] == ["prompt", "completion"]
    assert preview.rows == [["a, b", "line1\nline2"], ["c", "d"]]


def test_jsonl_and_parquet(control, admin):
    load_file(control, admin.account_id, "j", b'{"a": 1, "b": "x"}\n{"a": 2, "b": null}\n',
              FileFormat.JSONL)
    sink = io.BytesIO()
    pq.write_table(pa.table({"prompt": ["p"], "completion": ["c"]}), sink)
    load_file(control, admin.account_id, "p", sink.getvalue(), FileFormat.PARQUET)
    tables = {t.name: t for t in control.catalog.list_tables(admin.account_id)}
    assert tables["public.public.j"].row_count == 2
    assert tables["public.public.j"].columns == [("a", "BIGINT"), ("b", "VARCHAR")]
    assert tables["public.public.p"].columns == [("prompt", "VARCHAR"), ("completion", "VARCHAR")]


def test_rows_are_text_and_missing_keys_are_null(control, admin):
    load_rows(control, admin.account_id, "r", [{"a": "1"}, {"b": "it's"}])
    preview = control.catalog.preview(admin.account_id, "SELECT a, b FROM r ORDER BY a", 10)
    assert preview.columns == [("a", "VARCHAR"), ("b", "VARCHAR")]
    assert preview.rows == [["1", None], [None, "it's"]]


def test_existing_table_needs_replace(control, admin):
    load_rows(control, admin.account_id, "t", [{"a": "1"}])
    upload = TableUpload(control.catalog.spool_dir, None, 1 << 20)
    upload.add_rows([{"a": "2"}, {"a": "3"}])
    spooled = upload.finish()
    with pytest.raises(AlreadyExists):
        control.catalog.load_table(admin.account_id, qualified_name("t"), spooled, False)
    info = control.catalog.load_table(admin.account_id, qualified_name("t"), spooled, True)
    assert info.row_count == 2 and info.name == "public.public.t"
    upload.discard()
    assert not spooled.path.exists()


def test_databases(control, admin):
    assert control.catalog.create_database(admin.account_id, "Sales") == "sales"
    with pytest.raises(AlreadyExists):
        control.catalog.create_database(admin.account_id, "SALES")
    upload = TableUpload(control.catalog.spool_dir, None, 1 << 20)
    upload.add_rows([{"a": "1"}])
    info = control.catalog.load_table(admin.account_id, qualified_name("sales.s.t"),
                                      upload.finish(), False)
    assert info.name == "sales.s.t"
    # loading into a database that does not exist yet creates it
    other = control.catalog.load_table(admin.account_id, qualified_name("Demo.Public.T"),
                                       upload.finish(), False)
    assert other.name == "demo.public.t"
    upload.discard()
    assert [t.name for t in control.catalog.list_tables(admin.account_id, "sales")] == \
        ["sales.s.t"]
    assert [t.name for t in control.catalog.list_tables(admin.account_id)] == \
        ["demo.public.t", "sales.s.t"]
    with pytest.raises(NotFound, match="database nope does not exist"):
        control.catalog.list_tables(admin.account_id, "nope")
    assert control.catalog.list_tables(admin.account_id, "public") == []
    # and the sandbox sees them under their database names
    assert control.catalog.preview(admin.account_id, "SELECT a FROM sales.s.t", 5).rows == [["1"]]
    assert control.catalog.preview(admin.account_id,
                                   "SELECT a FROM DEMO.PUBLIC.T", 5).rows == [["1"]]


def test_bad_file_is_invalid_argument(control, admin):
    with pytest.raises(InvalidArgument, match="cannot load PARQUET data"):
        load_file(control, admin.account_id, "t", b"not parquet", FileFormat.PARQUET)


def test_upload_limits(control):
    upload = TableUpload(control.catalog.spool_dir, FileFormat.CSV, max_bytes=10)
    with pytest.raises(ResourceExhausted):
        upload.add_chunk(b"x" * 11)
    upload.discard()
    mixed = TableUpload(control.catalog.spool_dir, FileFormat.CSV, max_bytes=100)
    mixed.add_chunk(b"a\n1\n")
    with pytest.raises(InvalidArgument, match="not both"):
        mixed.add_rows([{"a": "1"}])
    mixed.discard()
    empty = TableUpload(control.catalog.spool_dir, FileFormat.CSV, max_bytes=100)
    with pytest.raises(InvalidArgument, match="no data"):
        empty.finish()
    empty.discard()
    assert list(control.catalog.spool_dir.iterdir()) == []


def test_file_chunks_need_a_format(control):
    upload = TableUpload(control.catalog.spool_dir, None, max_bytes=100)
    with pytest.raises(InvalidArgument, match="file format"):
        upload.add_chunk(b"a,b\n")
    upload.discard()
