"""Proto <-> domain conversions for the control API."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from finetune.control.v1 import data_pb2, jobs_pb2, models_pb2
from services.common.base_models import BaseModelSpec
from services.control.data.catalog import Preview, TableInfo
from services.control.data.uploads import FileFormat
from services.control.domain.jobs import Job
from services.control.domain.models import RegisteredModel
from services.control.domain.options import RequestedOptions, TaskType, TrainingOptions

_TASK_TYPES = {
    jobs_pb2.INSTRUCTION: TaskType.INSTRUCTION,
    jobs_pb2.CHAT: TaskType.CHAT,
    jobs_pb2.CONTINUED_PRETRAINING: TaskType.CONTINUED_PRETRAINING,
}
_TASK_TYPE_PROTOS = {v: k for k, v in _TASK_TYPES.items()}

_FILE_FORMATS = {
    data_pb2.CSV: FileFormat.CSV,
    data_pb2.JSONL: FileFormat.JSONL,
    data_pb2.PARQUET: FileFormat.PARQUET,
}


def timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def requested_options(options: jobs_pb2.FineTuningOptions) -> RequestedOptions:
    return RequestedOptions(
        max_epochs=options.max_epochs,
        learning_rate=options.learning_rate,
        batch_size=options.batch_size,
        lora_rank=options.lora_rank,
        lora_alpha=options.lora_alpha,
        lora_dropout=options.lora_dropout,
        target_modules=tuple(options.target_modules),
        seed=options.seed,
        task_type=_TASK_TYPES.get(options.task_type),
        from_model=options.from_model,
        num_workers=options.num_workers,
    )


def options_message(options: TrainingOptions) -> jobs_pb2.FineTuningOptions:
    return jobs_pb2.FineTuningOptions(
        max_epochs=options.max_epochs,
        learning_rate=options.learning_rate,
        batch_size=options.batch_size,
        lora_rank=options.lora_rank,
        lora_alpha=options.lora_alpha,
        lora_dropout=options.lora_dropout,
        target_modules=list(options.target_modules),
        seed=options.seed,
        task_type=_TASK_TYPE_PROTOS[options.task_type],
        from_model=options.from_model or "",
        num_workers=options.num_workers,
    )


def job_message(job: Job) -> jobs_pb2.FineTuningJob:
    message = jobs_pb2.FineTuningJob(
        id=job.id,
        status=jobs_pb2.JobStatus.Value(job.status.value),
        progress=job.progress,
        base_model=job.base_model,
        created_on=timestamp(job.created_on),
        started_on=timestamp(job.started_on),
        finished_on=timestamp(job.finished_on),
        model=job.model_name,
        training_data=job.training_query,
        validation_data=job.validation_query or "",
        trained_tokens=job.trained_tokens,
        training_result=jobs_pb2.TrainingResult(
            training_loss=job.training_loss or 0.0,
            validation_loss=job.validation_loss or 0.0,
            has_validation_loss=job.validation_loss is not None),
        options=options_message(TrainingOptions.from_dict(job.options)),
        training_rows=job.training_rows,
        validation_rows=job.validation_rows,
        truncated_rows=job.truncated_rows,
        epoch=job.epoch,
        step=job.step,
        total_steps=job.total_steps,
    )
    if job.error_code or job.error_message:
        message.error.CopyFrom(jobs_pb2.JobError(code=job.error_code or "",
                                                 message=job.error_message or ""))
    return message


def base_model_message(spec: BaseModelSpec) -> models_pb2.BaseModel:
    return models_pb2.BaseModel(
        name=spec.name, context_window=spec.context_window, prompt_tokens=spec.prompt_tokens,
        completion_tokens=spec.completion_tokens, rows_per_epoch=spec.rows_per_epoch,
        max_lora_rank=spec.max_lora_rank)


def model_message(model: RegisteredModel, artifacts: list[str] = ()) -> models_pb2.Model:
    return models_pb2.Model(
        name=model.name, base_model=model.base_model, job_id=model.job_id,
        version=model.version, created_on=timestamp(model.created_on),
        trained_tokens=model.trained_tokens, training_loss=model.training_loss or 0.0,
        validation_loss=model.validation_loss or 0.0, artifacts=list(artifacts))


def file_format(value: int) -> FileFormat | None:
    return _FILE_FORMATS.get(value)


def table_message(table: TableInfo) -> data_pb2.Table:
    return data_pb2.Table(
        name=table.name, row_count=table.row_count,
        columns=[data_pb2.Column(name=n, type=t) for n, t in table.columns])


def preview_message(preview: Preview) -> data_pb2.PreviewQueryResponse:
    names = [name for name, _ in preview.columns]
    return data_pb2.PreviewQueryResponse(
        columns=[data_pb2.Column(name=n, type=t) for n, t in preview.columns],
        # A SQL NULL is an absent key: proto maps cannot hold nulls.
        rows=[data_pb2.Row(values={n: v for n, v in zip(names, row) if v is not None})
              for row in preview.rows])
