"""Files, jobs and events: OpenAI's shapes to FINETUNE's and back (fine_tuning.py's rules)."""

from __future__ import annotations

import json

import pytest

from finetune.control.v1 import jobs_pb2
from services.openai_api import fine_tuning as ft
from services.openai_api.errors import InvalidRequest
from services.openai_api.protocol import FineTuningJobRequest


def rows(*records) -> list[tuple[str, dict]]:
    return list(ft.training_rows(json.dumps(r).encode() for r in records))


def test_rows_of_either_kind_become_table_rows():
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a",
                                                    "weight": 1}]
    assert rows({"messages": messages}) == [("chat", {"messages": json.dumps(messages)})]
    assert rows({"prompt": "p", "completion": "c", "extra": 1}) == [
        ("instruction", {"prompt": "p", "completion": "c"})]
    assert list(ft.training_rows([b'{"prompt": "p", "completion": "c"}', b"  ", b""])) == [
        ("instruction", {"prompt": "p", "completion": "c"})]


@pytest.mark.parametrize("lines, says", [
    ([b"{nope"], "line 1 is not valid JSON"),
    ([b"[1]"], "line 1 is not a JSON object"),
    ([b'{"messages": []}'], "line 1: messages must be a non-empty list"),
    ([b'{"prompt": "p"}'], "line 1 needs messages, or prompt and completion"),
    ([b'{"prompt": "p", "completion": "c"}',
      b'{"messages": [{"role": "user", "content": "q"}]}'], "line 2 is a chat row"),
    ([b"", b"\n"], "no rows"),
])
def test_bad_files_say_which_line(lines, says):
    with pytest.raises(InvalidRequest) as raised:
        list(ft.training_rows(lines))
    assert says in raised.value.message and raised.value.param == "file"


def test_upload_tables_and_model_names():
    assert ft.upload_table(None).startswith("public.public.file_")
    assert ft.upload_table("shop.sales").startswith("shop.sales.file_")
    with pytest.raises(InvalidRequest):
        ft.upload_table("a.b.c")
    assert ft.model_name("router", "shop.sales.file_1") == "shop.sales.router"
    assert ft.model_name("other.public.router", "shop.sales.file_1") == "other.public.router"
    assert ft.model_name(None, "tickets").startswith("public.public.ft_")


def test_table_kind_and_query_round_trip():
    assert ft.table_kind(["MESSAGES", "id"]) == "chat"
    assert ft.table_kind(["prompt", "completion"]) == "instruction"
    with pytest.raises(InvalidRequest):
        ft.table_kind(["text"])
    query = ft.training_query("shop.public.file_1", "chat")
    assert query == "SELECT messages FROM shop.public.file_1"
    assert ft.file_of_query(query) == "shop.public.file_1"
    own = "SELECT prompt, completion FROM shop.public.t WHERE split = 'train'"
    assert ft.file_of_query(own) == own   # a FINETUNE job's own query is its "file"


def request(**fields) -> FineTuningJobRequest:
    return FineTuningJobRequest(model="base", training_file="shop.public.t", **fields)


def test_hyperparameters_come_from_either_place_but_not_both():
    top = request(hyperparameters={"n_epochs": 3})
    nested = request(method={"type": "supervised",
                             "supervised": {"hyperparameters": {"batch_size": 8}}})
    assert ft.hyperparameters_of(top).n_epochs == 3
    assert ft.hyperparameters_of(nested).batch_size == 8
    for bad, param in [
        (request(hyperparameters={"n_epochs": 3}, method={
            "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}}),
         "hyperparameters"),
        (request(method={"type": "dpo"}), "method.type"),
        (request(integrations=[{"type": "wandb"}]), "integrations"),
    ]:
        with pytest.raises(InvalidRequest) as raised:
            ft.hyperparameters_of(bad)
        assert raised.value.param == param


def test_auto_leaves_options_to_the_base_model_and_multipliers_need_its_rate():
    auto = request(hyperparameters={"n_epochs": "auto", "batch_size": "auto",
                                    "learning_rate_multiplier": "auto"})
    options = ft.create_request(auto, "shop.public.t", "chat", None, None).options
    assert (options.max_epochs, options.batch_size, options.learning_rate) == (0, 0, 0)
    assert options.task_type == jobs_pb2.CHAT
    with pytest.raises(InvalidRequest):
        ft.create_request(request(hyperparameters={"learning_rate_multiplier": 2}),
                          "shop.public.t", "chat", None, None)
    with pytest.raises(InvalidRequest):
        ft.create_request(request(hyperparameters={"learning_rate_multiplier": 0}),
                          "shop.public.t", "chat", None, 0.001)


def test_a_failed_job_carries_its_error_and_no_model():
    job = jobs_pb2.FineTuningJob(
        id="ft_1", status=jobs_pb2.ERROR, base_model="base", model="shop.public.m",
        training_data="SELECT messages FROM shop.public.t", trained_tokens=50,
        error=jobs_pb2.JobError(code="TRAINING_FAILED", message="worker lost"),
        options=jobs_pb2.FineTuningOptions(max_epochs=2, batch_size=4, learning_rate=0.0005))
    obj = ft.job_object(job, {"base": 0.001})
    assert obj["status"] == "failed" and obj["fine_tuned_model"] is None
    assert obj["trained_tokens"] is None
    assert obj["error"] == {"code": "TRAINING_FAILED", "message": "worker lost", "param": None}
    assert obj["hyperparameters"] == {"n_epochs": 2, "batch_size": 4,
                                      "learning_rate_multiplier": 0.5}
    assert obj["training_file"] == "shop.public.t" and obj["validation_file"] is None
    unknown = ft.job_object(job, {})
    assert unknown["hyperparameters"]["learning_rate_multiplier"] == "auto"


def test_event_cursors():
    assert ft.event_position(None) is None
    assert ft.event_position("ftevent-12") == 12
    with pytest.raises(InvalidRequest):
        ft.event_position("12x")
    event = jobs_pb2.JobEvent(id=3, level=jobs_pb2.EVENT_WARNING, type="data.truncation",
                              message="2 rows truncated")
    assert ft.event_object(event)["level"] == "warn"
    assert ft.event_object(event)["data"] == {"event": "data.truncation"}
