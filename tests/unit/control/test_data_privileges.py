"""DataService under privileges, through its servicer: creating databases and loading tables
needs CREATE privileges and makes the creator's role the owner; reading needs USAGE on the
database and the schema, checked inside the query sandbox; a restricted caller learns
PERMISSION_DENIED whether or not what it names exists."""

import pytest
from control_testbed import acting_as, instruction_rows, load_rows, new_user

from finetune.control.v1 import data_pb2
from services.common.errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied
from services.control.api.data import DataServicer
from services.control.domain.privileges import Privilege, SecurableObject

U = Privilege.USAGE


@pytest.fixture
def servicer(control):
    return DataServicer(control.databases, control.catalog.spool_dir,
                        1 << 20)


@pytest.fixture
def tables(control, admin):
    """sales.public.train, sales.private.salaries, secret.public.data, public.public.train."""
    control.catalog.create_database(admin.account_id, "sales")
    control.catalog.create_database(admin.account_id, "secret")
    load_rows(control, admin.account_id, "sales.public.train", instruction_rows(3))
    load_rows(control, admin.account_id, "sales.private.salaries", [{"who": "x", "pay": "1"}])
    load_rows(control, admin.account_id, "secret.public.data", [{"prompt": "p"}])
    load_rows(control, admin.account_id, "train", instruction_rows(2))
    return control


@pytest.fixture
def analyst(control, admin, tables):
    """USAGE on database sales and schema sales.public only."""
    d = control.directory
    d.create_role(admin, "analyst")
    d.grant_privilege(admin, U, SecurableObject.database("sales"), "analyst")
    d.grant_privilege(admin, U, SecurableObject.schema("sales.public"), "analyst")
    return new_user(control, admin.account_id, "ann", ("ANALYST",))[0]


async def preview(servicer, principal, query):
    with acting_as(principal):
        return await servicer.PreviewQuery(data_pb2.PreviewQueryRequest(query=query, limit=5),
                                           None)


async def test_reading_needs_usage_on_database_and_schema(servicer, analyst, admin):
    rows = await preview(servicer, analyst, "SELECT prompt FROM sales.public.train ORDER BY 1")
    assert [r.values["prompt"] for r in rows.rows] == [f"question {i}" for i in range(3)]
    denied = [
        "SELECT * FROM secret.public.data",          # database exists, not granted
        "SELECT * FROM nowhere.public.data",          # database does not exist
        "SELECT * FROM sales.private.salaries",       # schema exists, not granted
        "SELECT * FROM sales.private.nothing",        # table does not exist there
        "SELECT * FROM sales.public.nothing",         # nor here (granted schema)
        "SELECT * FROM train",                        # public.public: not granted
        "SELECT * FROM sales.public.train t WHERE t.prompt IN "
        "(SELECT who FROM sales.private.salaries)",   # a subquery reading past its grants
    ]
    for query in denied:
        with pytest.raises(PermissionDenied) as err:
            await preview(servicer, analyst, query)
        assert "does not exist or that you may not use" in err.value.message, query
    # nor through dynamic SQL or table functions that read tables or their statistics
    for query in ("SELECT * FROM query('SELECT * FROM sales.private.salaries')",
                  "SELECT * FROM query_table('sales.private.salaries')",
                  "SELECT * FROM pragma_storage_info('sales.private.salaries')",
                  "SELECT * FROM duckdb_table_sample('sales.private.salaries')",
                  "SELECT table_name FROM duckdb_tables()",
                  "SELECT * FROM information_schema.tables"):
        with pytest.raises(PermissionDenied):
            await preview(servicer, analyst, query)
    series = await preview(servicer, analyst, "SELECT * FROM range(3) r(i), sales.public.train")
    assert len(series.rows) == 5   # limit 5 of 9: harmless table functions still work
    # the administrator reads everything and is told plainly what does not exist
    await preview(servicer, admin, "SELECT * FROM sales.private.salaries")
    with pytest.raises(InvalidArgument, match="nothing"):
        await preview(servicer, admin, "SELECT * FROM sales.public.nothing")
    # errors that are not about objects stay INVALID_ARGUMENT
    with pytest.raises(InvalidArgument):
        await preview(servicer, analyst, "SELECT no_such_fn(prompt) FROM sales.public.train")
    with pytest.raises(InvalidArgument):
        await preview(servicer, analyst, "SELECT nope FROM sales.public.train")


async def test_views_do_not_read_past_the_readers_grants(control, servicer, analyst, admin):
    import duckdb
    path = control.catalog.databases(admin.account_id)["sales"]
    with duckdb.connect(str(path)) as connection:  # a view in a granted schema over a private one
        connection.execute("CREATE VIEW public.leak AS SELECT * FROM private.salaries")
    with pytest.raises(PermissionDenied):
        await preview(servicer, analyst, "SELECT * FROM sales.public.leak")
    assert (await preview(servicer, admin, "SELECT * FROM sales.public.leak")).rows


async def test_list_tables_shows_only_usable_schemas(servicer, analyst, admin):
    with acting_as(analyst):
        listed = await servicer.ListTables(data_pb2.ListTablesRequest(), None)
        assert [t.name for t in listed.tables] == ["sales.public.train"]
        listed = await servicer.ListTables(data_pb2.ListTablesRequest(database="sales"), None)
        assert [t.name for t in listed.tables] == ["sales.public.train"]
        for database in ("secret", "nowhere"):
            with pytest.raises(PermissionDenied):
                await servicer.ListTables(data_pb2.ListTablesRequest(database=database), None)
    with acting_as(admin), pytest.raises(NotFound):
        await servicer.ListTables(data_pb2.ListTablesRequest(database="nowhere"), None)


async def load(servicer, principal, table, rows=({"a": "1"},)):
    async def stream():
        yield data_pb2.LoadTableRequest(header=data_pb2.LoadTableHeader(table=table,
                                                                        replace=True))
        yield data_pb2.LoadTableRequest(rows=data_pb2.Rows(
            rows=[data_pb2.Row(values=r) for r in rows]))
    with acting_as(principal):
        return await servicer.LoadTable(stream(), None)


async def test_loading_and_creating_databases(control, servicer, admin, tables):
    d = control.directory
    d.create_role(admin, "loader")
    loader, _ = new_user(control, admin.account_id, "lou", ("LOADER",))
    for table in ("sales.public.t", "brand_new.public.t"):
        with pytest.raises(PermissionDenied):
            await load(servicer, loader, table)
    with acting_as(loader), pytest.raises(PermissionDenied):
        await servicer.CreateDatabase(data_pb2.CreateDatabaseRequest(name="mine"), None)
    assert not control.catalog.database_exists(admin.account_id, "brand_new")

    d.grant_privilege(admin, Privilege.CREATE_TABLE, SecurableObject.schema("sales.staging"),
                      "loader")
    assert (await load(servicer, loader, "sales.staging.t")).row_count == 1
    with pytest.raises(PermissionDenied):  # only that schema
        await load(servicer, loader, "sales.public.t")

    d.grant_privilege(admin, Privilege.CREATE_DATABASE, SecurableObject.account(), "loader")
    with acting_as(loader):
        await servicer.CreateDatabase(data_pb2.CreateDatabaseRequest(name="mine"), None)
        with pytest.raises(AlreadyExists):   # the default database is nobody's to take
            await servicer.CreateDatabase(data_pb2.CreateDatabaseRequest(name="PUBLIC"), None)
    await load(servicer, loader, "implicit.public.t")   # a load that creates its database
    me = control.authorizer.access(loader)
    for database in ("mine", "implicit"):  # the creator's role owns what it created
        assert me.allows(Privilege.OWNERSHIP, SecurableObject.database(database))
        assert me.can_read_schema(database, "anything")
    rows = await preview(servicer, loader, "SELECT a FROM implicit.public.t")
    assert [r.values["a"] for r in rows.rows] == ["1"]
    assert not me.can_read_database("sales")
