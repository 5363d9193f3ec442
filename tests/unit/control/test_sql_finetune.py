"""FINETUNE inside RunQuery (services/control/data/finetune_statement.py and
services/control/api/sql_finetune.py): its grammar, Cortex's result shapes, and the same
privileges and errors as the FineTuningService RPCs. Real control core, fake cluster."""

import json

import pytest
from control_testbed import acting_as, instruction_rows, load_rows, new_user

from finetune.control.v1 import data_pb2
from services.common.errors import InvalidArgument, NotFound, PermissionDenied
from services.control.api.data import DataServicer
from services.control.api.sql_finetune import SqlFinetune
from services.control.core.databases import Databases
from services.control.data.finetune_statement import FinetuneCall, parse
from services.control.domain.privileges import Privilege, SecurableObject


@pytest.fixture
def servicer(control, admin):
    load_rows(control, admin.account_id, "train", instruction_rows(6))
    load_rows(control, admin.account_id, "holdout", instruction_rows(2))
    databases = Databases(control.catalog, control.store, control.authorizer)
    return DataServicer(databases, control.catalog.spool_dir, 1 << 20,
                        SqlFinetune(control.fine_tuning, control.evaluations))


async def value(servicer, principal, query: str, **request):
    """The one cell a FINETUNE query returns, and its column's name."""
    with acting_as(principal):
        messages = [m async for m in servicer.RunQuery(
            data_pb2.RunQueryRequest(query=query, **request), None)]
    (column,) = [c.name for c in messages[0].columns]
    (row,) = [r for m in messages for r in m.rows]
    return column, row.values[column]


CREATE = ("SELECT FINETUNE('CREATE', 'my_model', 'tiny-base', "
          "'SELECT prompt, completion FROM train'{rest}) AS job")


# -- grammar ------------------------------------------------------------------------------

def test_parse_takes_constants_structs_and_aliases():
    assert parse("SELECT 1") is None and parse("SELECT 'finetune' AS x") is None
    assert parse("select finetune('show')") == FinetuneCall("SHOW", (), "finetune")
    call = parse("SELECT FINETUNE('create', 'm', 'b', 'SELECT ''x''', NULL, "
                 "{'max_epochs': 2, 'learning_rate': 1e-3, 'target_modules': ['q_proj']}) AS id")
    assert call.action == "CREATE" and call.column == "id"
    assert call.arguments[:4] == ("m", "b", "SELECT 'x'", None)
    assert call.options(4) == {"max_epochs": 2, "learning_rate": 0.001,
                               "target_modules": ["q_proj"]}
    assert parse("SELECT FINETUNE('CREATE', 'm', 'b', 'q', '', "
                 "'{\"seed\": 3}')").options(4) == {"seed": 3}
    assert parse("SELECT FINETUNE('DESCRIBE', 'ft_1')").text(0, "job id") == "ft_1"


@pytest.mark.parametrize("query, reason", [
    ("SELECT FINETUNE('SHOW'), 1", "called alone"),
    ("SELECT FINETUNE('SHOW') FROM train", "called alone"),
    ("SELECT * FROM (SELECT FINETUNE('SHOW'))", "called alone"),
    ("SELECT FINETUNE('DESCRIBE', prompt) FROM train", "called alone"),
    ("SELECT FINETUNE('DESCRIBE', (SELECT max(prompt) FROM train))", "constants"),
    ("SELECT FINETUNE('DESCRIBE', read_text('/etc/passwd'))", "constants"),
    ("SELECT FINETUNE('DESCRIBE', 'a' || 'b')", "constants"),
    ("SELECT upper(FINETUNE('SHOW'))", "called alone"),
    ("SELECT COMPLETE('m', FINETUNE('SHOW'))", "called alone"),
    ("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 9) "
     "SELECT FINETUNE('DESCRIBE', i::VARCHAR) FROM n", "called alone"),
    ("SELECT FINETUNE('SHOW') LIMIT 1", "called alone"),
    ("SELECT FINETUNE('SHOW'); SELECT 1", "called alone"),
    ("SELECT FINETUNE()", "called alone"),
    ("SELECT FINETUNE(1)", "called alone"),
    ("SELECT FINETUNE('DROP', 'x')", "one of CREATE"),
    ("SELECT FINETUNE('SHOW', 'x')", "takes 0 more"),
    ("SELECT FINETUNE('DESCRIBE')", "takes 1 more"),
    ("SELECT FINETUNE('CREATE', 'm', 'b')", "takes 3 to 5 more"),
])
def test_parse_refuses_every_other_form(query, reason):
    with pytest.raises(InvalidArgument, match=reason):
        parse(query)


def test_bad_arguments_name_what_is_wrong():
    with pytest.raises(InvalidArgument, match="model must not be NULL"):
        parse("SELECT FINETUNE('CREATE', NULL, 'b', 'q')").text(0, "model")
    with pytest.raises(InvalidArgument, match="must be text"):
        parse("SELECT FINETUNE('DESCRIBE', 7)").text(0, "job id")
    for options in ("'[1]'", "'not json'", "3"):
        with pytest.raises(InvalidArgument, match="JSON object"):
            parse(f"SELECT FINETUNE('CREATE', 'm', 'b', 'q', NULL, {options})").options(4)


# -- the calls ----------------------------------------------------------------------------

async def test_create_show_describe_cancel(servicer, admin, control, dispatcher):
    column, job_id = await value(servicer, admin, CREATE.format(
        rest=", 'SELECT * FROM holdout', {'max_epochs': 2, 'lora_rank': 4}"))
    assert column == "job" and job_id.startswith("ft_")
    assert [s[0] for s in dispatcher.submitted] == [job_id]
    job = control.fine_tuning.get(admin, job_id)
    assert (job.training_rows, job.validation_rows, job.model_name) == (
        6, 2, "public.public.my_model")
    assert (job.options["max_epochs"], job.options["lora_rank"]) == (2, 4)

    _, described = await value(servicer, admin, f"SELECT FINETUNE('DESCRIBE', '{job_id}')")
    doc = json.loads(described)
    assert doc["id"] == job_id and doc["status"] == "PENDING"
    assert doc["model"] == "public.public.my_model" and doc["base_model"] == "tiny-base"
    assert doc["training_data"] == "SELECT prompt, completion FROM train"
    assert doc["options"]["max_epochs"] == 2 and doc["trained_tokens"] == 0

    _, shown = await value(servicer, admin, "SELECT FINETUNE('SHOW') AS jobs")
    assert [j["id"] for j in json.loads(shown)] == [job_id]

    _, cancelled = await value(servicer, admin, f"SELECT FINETUNE('CANCEL', '{job_id}')")
    assert json.loads(cancelled)["status"] == "CANCELLED"
    assert control.fine_tuning.get(admin, job_id).status.value == "CANCELLED"


async def test_errors_are_the_rpcs_errors(servicer, admin):
    with pytest.raises(NotFound):
        await value(servicer, admin, "SELECT FINETUNE('DESCRIBE', 'ft_nope')")
    with pytest.raises(InvalidArgument, match="max_epoch"):   # protobuf names the field
        await value(servicer, admin, CREATE.format(rest=", NULL, {'max_epoch': 2}"))
    with pytest.raises(InvalidArgument):                      # the service's own range check
        await value(servicer, admin, CREATE.format(rest=", NULL, {'max_epochs': 99}"))
    with pytest.raises(InvalidArgument, match="cannot be saved into a table"):
        await value(servicer, admin, "SELECT FINETUNE('SHOW')", into="saved")
    with pytest.raises(InvalidArgument, match="called alone"):
        await value(servicer, admin, "SELECT prompt, FINETUNE('SHOW') FROM train")


async def test_privileges_are_the_rpcs_privileges(servicer, admin, control, dispatcher):
    """A FINETUNE_USER without USAGE on a database cannot train on it through SQL, a user
    without FINETUNE cannot create at all, and neither describes or cancels another role's
    job; SHOW lists it to the FINETUNE_USER as a summary only."""
    control.catalog.create_database(admin.account_id, "secret")
    load_rows(control, admin.account_id, "secret.public.train", instruction_rows(4))
    d = control.directory
    d.create_role(admin, "analyst")
    d.grant_role(admin, "finetune_user", "ROLE", "analyst")
    d.grant_privilege(admin, Privilege.CREATE_MODEL, SecurableObject.schema("public.public"),
                      "analyst")
    ann, _ = new_user(control, admin.account_id, "ann", ("ANALYST",))
    nick, _ = new_user(control, admin.account_id, "nick")

    with pytest.raises(PermissionDenied):
        await value(servicer, ann, "SELECT FINETUNE('CREATE', 'stolen', 'tiny-base', "
                                   "'SELECT prompt, completion FROM secret.public.train')")
    with pytest.raises(PermissionDenied):
        await value(servicer, nick, CREATE.format(rest=""))
    assert dispatcher.submitted == []

    _, job_id = await value(servicer, admin, CREATE.format(rest=""))
    _, shown = await value(servicer, nick, "SELECT FINETUNE('SHOW')")
    assert json.loads(shown) == []
    _, shown = await value(servicer, ann, "SELECT FINETUNE('SHOW')")   # FINETUNE: a summary
    (summary,) = json.loads(shown)
    assert (summary["id"], summary["status"], summary["base_model"]) == (
        job_id, "PENDING", "tiny-base")
    assert summary["training_data"] == "" and summary["model"] == ""
    for action in ("DESCRIBE", "CANCEL"):
        with pytest.raises((NotFound, PermissionDenied)):
            await value(servicer, nick, f"SELECT FINETUNE('{action}', '{job_id}')")
    assert control.fine_tuning.get(admin, job_id).status.value == "PENDING"


@pytest.mark.parametrize("depth", [50, 900, 3000])
def test_deeply_nested_arguments_are_parsed_or_refused_never_a_crash(depth):
    options = "{'a': " * depth + "1" + "}" * depth
    try:
        call = parse(f"SELECT FINETUNE('CREATE', 'm', 'b', 'q', NULL, {options})")
    except InvalidArgument:
        return
    if call is not None:   # parsed: the options are the nested object
        value = call.options(4)
        for _ in range(depth):
            value = value["a"]
        assert value == 1
