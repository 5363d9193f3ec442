"""DataService DDL: schemas, views, dropping databases, schemas, tables and views, each under
the privileges the module docstring of services/control/core/databases.py lists."""

import pytest
from control_testbed import acting_as, instruction_rows, load_rows, new_user

from finetune.control.v1 import data_pb2
from services.common.errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied
from services.control.api.data import DataServicer
from services.control.domain.privileges import Privilege, SecurableObject


@pytest.fixture
def servicer(control):
    return DataServicer(control.databases, control.catalog.spool_dir,
                        1 << 20)


@pytest.fixture
def sales(control, admin):
    """sales.public.train (3 rows), sales.private.salaries, public.public.train (2 rows)."""
    control.catalog.create_database(admin.account_id, "sales")
    load_rows(control, admin.account_id, "sales.public.train", instruction_rows(3))
    load_rows(control, admin.account_id, "sales.private.salaries", [{"who": "x", "pay": "1"}])
    load_rows(control, admin.account_id, "train", instruction_rows(2))
    return control


async def call(principal, method, request):
    with acting_as(principal):
        return await method(request, None)


async def preview(servicer, principal, query):
    return await call(principal, servicer.PreviewQuery,
                      data_pb2.PreviewQueryRequest(query=query, limit=10))


async def test_schemas_are_created_by_the_databases_owner(control, servicer, admin, sales):
    created = await call(admin, servicer.CreateSchema,
                         data_pb2.CreateSchemaRequest(name="sales.staging"))
    assert created.name == "sales.staging"
    with pytest.raises(AlreadyExists):
        await call(admin, servicer.CreateSchema, data_pb2.CreateSchemaRequest(name="sales.staging"))
    with pytest.raises(NotFound):
        await call(admin, servicer.CreateSchema, data_pb2.CreateSchemaRequest(name="nope.x"))
    listed = await call(admin, servicer.ListDatabases, data_pb2.ListDatabasesRequest())
    assert {d.name: list(d.schemas) for d in listed.databases} == {
        "public": ["public"], "sales": ["private", "public", "staging"]}

    control.directory.create_role(admin, "dev")
    dev, _ = new_user(control, admin.account_id, "dev", ("DEV",))
    with pytest.raises(PermissionDenied):
        await call(dev, servicer.CreateSchema, data_pb2.CreateSchemaRequest(name="sales.mine"))
    listed = await call(dev, servicer.ListDatabases, data_pb2.ListDatabasesRequest())
    assert list(listed.databases) == []
    control.directory.grant_privilege(admin, Privilege.OWNERSHIP,
                                      SecurableObject.database("sales"), "dev")
    await call(dev, servicer.CreateSchema, data_pb2.CreateSchemaRequest(name="sales.mine"))
    # the new schema belongs to the creator's role: others need a grant to see it
    assert control.authorizer.access(dev).allows(Privilege.OWNERSHIP,
                                                 SecurableObject.schema("sales.mine"))


async def test_views_are_sandboxed_queries_named_in_full(control, servicer, admin, sales):
    view = await call(admin, servicer.CreateView, data_pb2.CreateViewRequest(
        name="sales.public.recent",
        query="SELECT prompt, completion FROM sales.public.train WHERE prompt <> 'question 0'"))
    assert view.kind == "VIEW" and [c.name for c in view.columns] == ["prompt", "completion"]
    assert "FROM sales.public.train" in view.definition
    rows = await preview(servicer, admin, "SELECT count(*) AS n FROM sales.public.recent")
    assert rows.rows[0].values["n"] == "2"
    listed = await call(admin, servicer.ListTables, data_pb2.ListTablesRequest(database="sales"))
    assert {t.name: t.kind for t in listed.tables} == {
        "sales.private.salaries": "TABLE", "sales.public.recent": "VIEW",
        "sales.public.train": "TABLE"}
    # a view over another database reads through it, from any session
    await call(admin, servicer.CreateView, data_pb2.CreateViewRequest(
        name="sales.public.from_public", query="SELECT * FROM public.public.train"))
    rows = await preview(servicer, admin, "SELECT count(*) AS n FROM sales.public.from_public")
    assert rows.rows[0].values["n"] == "2"

    with pytest.raises(InvalidArgument, match="in full as database.schema.table"):
        await call(admin, servicer.CreateView, data_pb2.CreateViewRequest(
            name="sales.public.bare", query="SELECT * FROM train"))
    with pytest.raises(AlreadyExists):
        await call(admin, servicer.CreateView, data_pb2.CreateViewRequest(
            name="sales.public.recent", query="SELECT 1 AS x"))
    with pytest.raises(AlreadyExists, match="table"):
        await call(admin, servicer.CreateView, data_pb2.CreateViewRequest(
            name="sales.public.train", query="SELECT 1 AS x", replace=True))
    replaced = await call(admin, servicer.CreateView, data_pb2.CreateViewRequest(
        name="sales.public.recent", query="SELECT 1 AS x", replace=True))
    assert [c.name for c in replaced.columns] == ["x"]
    for hostile in ("SELECT * FROM read_csv('/etc/passwd')", "DROP TABLE sales.public.train",
                    "SELECT current_setting('memory_limit') AS m",
                    "SELECT 1 AS a; DROP TABLE sales.public.train"):
        with pytest.raises(InvalidArgument):
            await call(admin, servicer.CreateView, data_pb2.CreateViewRequest(
                name="sales.public.evil", query=hostile))
    listed = await call(admin, servicer.ListTables, data_pb2.ListTablesRequest(database="sales"))
    assert "sales.public.evil" not in {t.name for t in listed.tables}
    assert len(listed.tables) == 4


async def test_a_view_cannot_launder_what_its_creator_may_not_read(control, servicer, admin,
                                                                   sales):
    d = control.directory
    d.create_role(admin, "analyst")
    for privilege, obj in ((Privilege.USAGE, SecurableObject.database("sales")),
                           (Privilege.USAGE, SecurableObject.schema("sales.public")),
                           (Privilege.CREATE_TABLE, SecurableObject.schema("sales.public"))):
        d.grant_privilege(admin, privilege, obj, "analyst")
    analyst, _ = new_user(control, admin.account_id, "ann", ("ANALYST",))
    with pytest.raises(PermissionDenied):
        await call(analyst, servicer.CreateView, data_pb2.CreateViewRequest(
            name="sales.public.leak", query="SELECT * FROM sales.private.salaries"))
    await call(analyst, servicer.CreateView, data_pb2.CreateViewRequest(
        name="sales.public.mine", query="SELECT prompt FROM sales.public.train"))
    assert len((await preview(servicer, analyst, "SELECT * FROM sales.public.mine")).rows) == 3
    # an administrator's view over the private schema is still unreadable for the analyst
    await call(admin, servicer.CreateView, data_pb2.CreateViewRequest(
        name="sales.public.pay", query="SELECT * FROM sales.private.salaries"))
    with pytest.raises(PermissionDenied):
        await preview(servicer, analyst, "SELECT * FROM sales.public.pay")
    with pytest.raises(PermissionDenied):  # CREATE TABLE on sales.public only
        await call(analyst, servicer.CreateView, data_pb2.CreateViewRequest(
            name="sales.private.mine", query="SELECT prompt FROM sales.public.train"))


async def test_dropping_tables_and_views(control, servicer, admin, sales):
    await call(admin, servicer.CreateView, data_pb2.CreateViewRequest(
        name="sales.public.v", query="SELECT * FROM sales.public.train"))
    with pytest.raises(InvalidArgument, match="is a view, not a table"):
        await call(admin, servicer.DropTable, data_pb2.DropTableRequest(name="sales.public.v"))
    assert (await call(admin, servicer.DropView,
                       data_pb2.DropViewRequest(name="sales.public.v"))).dropped
    with pytest.raises(NotFound):
        await call(admin, servicer.DropView, data_pb2.DropViewRequest(name="sales.public.v"))
    assert not (await call(admin, servicer.DropView, data_pb2.DropViewRequest(
        name="sales.public.v", if_exists=True))).dropped
    control.directory.create_role(admin, "reader")
    reader, _ = new_user(control, admin.account_id, "rita", ("READER",))
    with pytest.raises(PermissionDenied):
        await call(reader, servicer.DropTable, data_pb2.DropTableRequest(name="sales.public.train"))
    assert (await call(admin, servicer.DropTable,
                       data_pb2.DropTableRequest(name="sales.public.train"))).dropped
    with pytest.raises(InvalidArgument):
        await preview(servicer, admin, "SELECT * FROM sales.public.train")


async def test_dropping_schemas_and_databases_takes_their_grants(control, servicer, admin,
                                                                 sales):
    d = control.directory
    d.create_role(admin, "analyst")
    d.grant_privilege(admin, Privilege.USAGE, SecurableObject.database("sales"), "analyst")
    d.grant_privilege(admin, Privilege.USAGE, SecurableObject.schema("sales.private"), "analyst")
    analyst, _ = new_user(control, admin.account_id, "ann", ("ANALYST",))
    with pytest.raises(PermissionDenied):
        await call(analyst, servicer.DropSchema, data_pb2.DropSchemaRequest(name="sales.private"))
    assert (await call(admin, servicer.DropSchema,
                       data_pb2.DropSchemaRequest(name="sales.private"))).dropped
    with pytest.raises(InvalidArgument):
        await preview(servicer, admin, "SELECT * FROM sales.private.salaries")
    assert not control.authorizer.access(analyst).can_read_schema("sales", "private")
    with pytest.raises(NotFound):
        await call(admin, servicer.DropSchema, data_pb2.DropSchemaRequest(name="sales.private"))

    assert (await call(admin, servicer.DropDatabase,
                       data_pb2.DropDatabaseRequest(name="sales"))).dropped
    assert not control.catalog.database_exists(admin.account_id, "sales")
    assert not control.authorizer.access(analyst).can_read_database("sales")
    with pytest.raises(NotFound):
        await call(admin, servicer.DropDatabase, data_pb2.DropDatabaseRequest(name="sales"))
    assert not (await call(admin, servicer.DropDatabase, data_pb2.DropDatabaseRequest(
        name="sales", if_exists=True))).dropped
    # a new database of the name starts empty and ungranted
    await call(admin, servicer.CreateDatabase, data_pb2.CreateDatabaseRequest(name="sales"))
    listed = await call(admin, servicer.ListTables, data_pb2.ListTablesRequest(database="sales"))
    assert list(listed.tables) == []


async def test_nested_views_and_views_that_would_read_themselves(control, servicer, admin,
                                                                 sales):
    async def view(name, query, replace=False):
        return await call(admin, servicer.CreateView, data_pb2.CreateViewRequest(
            name=name, query=query, replace=replace))

    await view("sales.public.a", "SELECT prompt FROM sales.public.train")
    await view("sales.public.b", "SELECT upper(prompt) AS p FROM sales.public.a")
    rows = await preview(servicer, admin,
                         "WITH x AS (SELECT * FROM sales.public.b) SELECT min(p) AS m FROM x")
    assert rows.rows[0].values["m"] == "QUESTION 0"
    with pytest.raises(InvalidArgument, match="nest more than"):
        await view("sales.public.a", "SELECT p AS prompt FROM sales.public.b", replace=True)
    assert len((await preview(servicer, admin, "SELECT * FROM sales.public.b")).rows) == 3
    # a view whose table is dropped stays listed, and reading it says what is missing
    await call(admin, servicer.DropTable, data_pb2.DropTableRequest(name="sales.public.train"))
    with pytest.raises(InvalidArgument, match="train"):
        await preview(servicer, admin, "SELECT * FROM sales.public.b")
    listed = await call(admin, servicer.ListTables, data_pb2.ListTablesRequest(database="sales"))
    assert {t.name: len(t.columns) for t in listed.tables if t.kind == "VIEW"} == {
        "sales.public.a": 0, "sales.public.b": 0}


async def test_reading_a_view_needs_usage_on_its_schema(control, servicer, admin, sales):
    await call(admin, servicer.CreateView, data_pb2.CreateViewRequest(
        name="sales.private.v", query="SELECT prompt FROM sales.public.train"))
    d = control.directory
    d.create_role(admin, "analyst")
    d.grant_privilege(admin, Privilege.USAGE, SecurableObject.database("sales"), "analyst")
    d.grant_privilege(admin, Privilege.USAGE, SecurableObject.schema("sales.public"), "analyst")
    analyst, _ = new_user(control, admin.account_id, "ann", ("ANALYST",))
    with pytest.raises(PermissionDenied):
        await preview(servicer, analyst, "SELECT * FROM sales.private.v")
    d.grant_privilege(admin, Privilege.USAGE, SecurableObject.schema("sales.private"), "analyst")
    assert len((await preview(servicer, analyst, "SELECT * FROM sales.private.v")).rows) == 3
