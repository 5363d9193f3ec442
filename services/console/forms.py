"""The create-job form: its fields as typed, to CREATE's and the estimate's request messages.

Only the form's own syntax is checked here (a number field that holds no number); whether the
values are allowed is control's decision, and its message is what the user sees.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from finetune.control.v1 import evaluations_pb2, jobs_pb2
from services.common.errors import InvalidArgument

TASK_TYPES = ("INSTRUCTION", "CHAT", "CONTINUED_PRETRAINING")
EVALUATION_TASKS = ("CLASSIFICATION", "TEXT_GENERATION", "QUESTION_ANSWERING")
# FineTuningOptions' number fields; empty means "the base model's default" (zero).
INT_FIELDS = ("max_epochs", "batch_size", "lora_rank", "lora_alpha", "seed", "num_workers",
              "early_stopping_patience")
FLOAT_FIELDS = ("learning_rate", "lora_dropout")


@dataclass(frozen=True)
class JobForm:
    model: str = ""
    base_model: str = ""
    training_query: str = ""
    validation_query: str = ""
    task_type: str = "INSTRUCTION"
    numbers: Mapping[str, str] = field(default_factory=dict)   # as typed
    target_modules: str = ""                                   # comma-separated
    evaluation_query: str = ""
    evaluation_task: str = "CLASSIFICATION"
    min_improvement: str = ""
    request_id: str = ""

    @classmethod
    def parse(cls, data: Mapping[str, str]) -> "JobForm":
        def text(name: str, default: str = "") -> str:
            return str(data.get(name, default)).strip()
        return cls(
            model=text("model"), base_model=text("base_model"),
            training_query=text("training_query"), validation_query=text("validation_query"),
            task_type=text("task_type", "INSTRUCTION"),
            numbers={n: text(n) for n in INT_FIELDS + FLOAT_FIELDS},
            target_modules=text("target_modules"), evaluation_query=text("evaluation_query"),
            evaluation_task=text("evaluation_task", "CLASSIFICATION"),
            min_improvement=text("min_improvement"), request_id=text("request_id"))

    def options(self) -> jobs_pb2.FineTuningOptions:
        if self.task_type not in TASK_TYPES:
            raise InvalidArgument(f"task type must be one of {', '.join(TASK_TYPES)}")
        options = jobs_pb2.FineTuningOptions(task_type=jobs_pb2.TaskType.Value(self.task_type))
        for name in INT_FIELDS:
            value = _integer(name, self.numbers.get(name, ""))
            try:
                setattr(options, name, value)
            except ValueError:   # beyond the field's 32 or 64 bits
                raise InvalidArgument(f"{name} {value} is out of range") from None
        for name in FLOAT_FIELDS:
            setattr(options, name, _decimal(name, self.numbers.get(name, "")))
        options.target_modules.extend(m.strip() for m in self.target_modules.split(",")
                                      if m.strip())
        if self.evaluation_query:
            options.evaluation.CopyFrom(self._evaluation())
        return options

    def _evaluation(self) -> evaluations_pb2.JobEvaluationOptions:
        if self.evaluation_task not in EVALUATION_TASKS:
            raise InvalidArgument(
                f"evaluation task must be one of {', '.join(EVALUATION_TASKS)}")
        evaluation = evaluations_pb2.JobEvaluationOptions(
            query=self.evaluation_query,
            task=evaluations_pb2.EvaluationTask.Value(self.evaluation_task))
        if self.min_improvement:
            evaluation.min_improvement = _decimal("min_improvement", self.min_improvement)
            evaluation.has_min_improvement = True
        return evaluation

    def create_request(self) -> jobs_pb2.CreateFineTuningJobRequest:
        return jobs_pb2.CreateFineTuningJobRequest(
            model=self.model, base_model=self.base_model, training_query=self.training_query,
            validation_query=self.validation_query, options=self.options(),
            request_id=self.request_id)

    def estimate_request(self) -> jobs_pb2.EstimateFineTuningJobRequest:
        return jobs_pb2.EstimateFineTuningJobRequest(
            model=self.model, base_model=self.base_model, training_query=self.training_query,
            validation_query=self.validation_query, options=self.options())


def _integer(name: str, text: str) -> int:
    return int(_parsed(name, text, int, "a whole number"))


def _decimal(name: str, text: str) -> float:
    return _parsed(name, text, float, "a number")


def _parsed(name: str, text: str, kind: type[int] | type[float], what: str) -> float:
    if not text:
        return 0
    try:
        return kind(text)
    except ValueError:
        raise InvalidArgument(f"{name} must be {what}, not {text!r}") from None
