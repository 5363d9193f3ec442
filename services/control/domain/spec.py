"""Where a job's files live, and the job spec (services.common.job_spec) control writes for the
trainer."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.base_models import BaseModelSpec
from services.common.job_spec import BaseModelRef, JobSpec
from services.control.domain.options import TrainingOptions


@dataclass(frozen=True)
class JobLayout:
    """Where a job's files live in the artifact store."""

    artifact_root: str
    job_id: str

    def uri(self, *parts: str) -> str:
        return "/".join([self.artifact_root.rstrip("/"), "jobs", self.job_id, *parts])

    @property
    def spec_uri(self) -> str:
        return self.uri("spec.json")

    @property
    def training_data_uri(self) -> str:
        return self.uri("data", "training.jsonl")

    @property
    def validation_data_uri(self) -> str:
        return self.uri("data", "validation.jsonl")

    @property
    def output_uri(self) -> str:
        return self.uri("output")

    @property
    def checkpoint_uri(self) -> str:
        return self.uri("checkpoints")

    @property
    def manifest_uri(self) -> str:
        return self.uri("output", "manifest.json")


def trainer_spec(layout: JobLayout, base: BaseModelSpec, base_path: str,
                 options: TrainingOptions, has_validation: bool,
                 from_adapter_uri: str | None, control_address: str) -> JobSpec:
    return JobSpec(
        job_id=layout.job_id,
        task_type=options.task_type.value,
        base_model=BaseModelRef(name=base.name, path=base_path,
                                context_window=base.context_window,
                                prompt_tokens=base.prompt_tokens,
                                completion_tokens=base.completion_tokens,
                                source=base.source),
        training_data_uri=layout.training_data_uri,
        validation_data_uri=layout.validation_data_uri if has_validation else None,
        output_uri=layout.output_uri,
        checkpoint_uri=layout.checkpoint_uri,
        artifact_root=layout.artifact_root,
        from_adapter_uri=from_adapter_uri,
        options=options.trainer_options(),
        control_address=control_address)
