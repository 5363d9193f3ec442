"""The create-job form as CREATE's and the estimate's requests."""

import pytest

from finetune.control.v1 import evaluations_pb2, jobs_pb2
from services.common.errors import InvalidArgument
from services.console.forms import JobForm


def test_fields_become_the_request_and_empty_numbers_the_defaults():
    form = JobForm.parse({"model": " m ", "base_model": "b", "training_query": "SELECT 1",
                          "validation_query": "", "task_type": "CHAT", "max_epochs": "2",
                          "learning_rate": "1e-4", "lora_rank": "", "target_modules":
                          "q_proj, v_proj,", "request_id": "r1"})
    request = form.create_request()
    assert (request.model, request.base_model, request.request_id) == ("m", "b", "r1")
    o = request.options
    assert (o.task_type, o.max_epochs, o.lora_rank) == (jobs_pb2.CHAT, 2, 0)
    assert o.learning_rate == pytest.approx(1e-4)
    assert list(o.target_modules) == ["q_proj", "v_proj"]
    assert not o.HasField("evaluation")
    estimate = form.estimate_request()
    assert estimate.model == "m" and estimate.options == o


def test_an_evaluation_query_adds_the_job_evaluation():
    options = JobForm.parse({"evaluation_query": "SELECT prompt, label FROM t",
                             "evaluation_task": "TEXT_GENERATION",
                             "min_improvement": "0.05"}).options()
    assert options.evaluation.task == evaluations_pb2.TEXT_GENERATION
    assert options.evaluation.has_min_improvement
    assert options.evaluation.min_improvement == pytest.approx(0.05)
    without_gate = JobForm.parse({"evaluation_query": "SELECT 1"}).options().evaluation
    assert not without_gate.has_min_improvement


@pytest.mark.parametrize("fields, message", [
    ({"max_epochs": "2.5"}, "max_epochs must be a whole number"),
    ({"learning_rate": "fast"}, "learning_rate must be a number"),
    ({"batch_size": str(2 ** 40)}, "batch_size 1099511627776 is out of range"),
    ({"task_type": "DANCE"}, "task type must be one of"),
    ({"evaluation_query": "q", "evaluation_task": "GUESS"}, "evaluation task must be one of"),
])
def test_what_the_form_cannot_send_is_named(fields, message):
    with pytest.raises(InvalidArgument, match=message):
        JobForm.parse(fields).options()
