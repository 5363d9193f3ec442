"""Proto <-> domain conversions for the control API."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Iterator, Sequence

from google.protobuf.timestamp_pb2 import Timestamp

from finetune.control.v1 import access_pb2, data_pb2, jobs_pb2, models_pb2, usage_pb2
from services.common.base_models import BaseModelSpec
from services.common.errors import InvalidArgument
from services.control.data.catalog import Preview, TableInfo
from services.control.data.uploads import FileFormat
from services.control.domain.estimates import JobEstimate
from services.control.domain.events import EventLevel, JobEvent
from services.control.domain.jobs import Job, SnapshotInfo, ValidationSource
from services.control.domain.models import RegisteredModel
from services.control.domain.options import RequestedOptions, TaskType, TrainingOptions
from services.control.domain.principals import ApiKeyInfo, Role, User
from services.control.domain.privileges import GrantRecord, ObjectType, Privilege, SecurableObject
from services.control.domain.usage import FineTuningUsage, Grouping, InferenceUsage, UsageGroup

_TASK_TYPES = {
    jobs_pb2.INSTRUCTION: TaskType.INSTRUCTION,
    jobs_pb2.CHAT: TaskType.CHAT,
    jobs_pb2.CONTINUED_PRETRAINING: TaskType.CONTINUED_PRETRAINING,
}
_TASK_TYPE_PROTOS = {v: k for k, v in _TASK_TYPES.items()}

_VALIDATION_SOURCES = {
    ValidationSource.QUERY: jobs_pb2.VALIDATION_QUERY,
    ValidationSource.HOLDOUT: jobs_pb2.HOLDOUT,
    ValidationSource.NONE: jobs_pb2.NO_VALIDATION,
}
_EVENT_LEVELS = {
    EventLevel.INFO: jobs_pb2.EVENT_INFO,
    EventLevel.WARNING: jobs_pb2.EVENT_WARNING,
    EventLevel.ERROR: jobs_pb2.EVENT_ERROR,
}

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
    if options.task_type and options.task_type not in _TASK_TYPES:
        raise InvalidArgument(f"invalid options: task_type {options.task_type} is not one of "
                              "INSTRUCTION, CHAT, CONTINUED_PRETRAINING")
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
        checkpoint_every_steps=options.checkpoint_every_steps,
        early_stopping_patience=options.early_stopping_patience,
        neftune_noise_alpha=(options.neftune_noise_alpha
                             if options.HasField("neftune_noise_alpha") else None),
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
        checkpoint_every_steps=options.checkpoint_every_steps,
        early_stopping_patience=options.early_stopping_patience,
        neftune_noise_alpha=options.neftune_noise_alpha,
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
        estimated_trained_tokens=job.estimated_trained_tokens,
    )
    if job.validation_source:
        message.validation_source = _VALIDATION_SOURCES[ValidationSource(job.validation_source)]
    if job.training_snapshot is not None:
        message.training_snapshot.CopyFrom(snapshot_message(job.training_snapshot))
    if job.validation_snapshot is not None:
        message.validation_snapshot.CopyFrom(snapshot_message(job.validation_snapshot))
    if job.error_code or job.error_message:
        message.error.CopyFrom(jobs_pb2.JobError(code=job.error_code or "",
                                                 message=job.error_message or ""))
    return message


def job_summary_message(job: Job) -> jobs_pb2.FineTuningJob:
    """What SHOW tells of a job the caller may not DESCRIBE: Cortex's SHOW fields, and times."""
    return jobs_pb2.FineTuningJob(id=job.id, status=jobs_pb2.JobStatus.Value(job.status.value),
                                  base_model=job.base_model,
                                  created_on=timestamp(job.created_on),
                                  started_on=timestamp(job.started_on),
                                  finished_on=timestamp(job.finished_on))


def snapshot_message(snapshot: SnapshotInfo) -> jobs_pb2.DataSnapshot:
    return jobs_pb2.DataSnapshot(
        uri=snapshot.uri, rows=snapshot.rows, sha256=snapshot.sha256,
        prompt_tokens=snapshot.prompt_tokens, completion_tokens=snapshot.completion_tokens,
        truncated_rows=snapshot.truncated_rows)


def estimate_message(estimate: JobEstimate) -> jobs_pb2.FineTuningJobEstimate:
    message = jobs_pb2.FineTuningJobEstimate(
        base_model=estimate.base_model, options=options_message(estimate.options),
        max_rows=estimate.max_rows, training=snapshot_message(estimate.training),
        validation_source=_VALIDATION_SOURCES[estimate.validation_source],
        epochs=estimate.epochs, tokens_per_epoch=estimate.tokens_per_epoch,
        trained_tokens=estimate.trained_tokens, credits=estimate.credits,
        credits_per_million_tokens=estimate.credits_per_million_tokens,
        notes=list(estimate.notes))
    if estimate.validation is not None:
        message.validation.CopyFrom(snapshot_message(estimate.validation))
    return message


def event_message(event: JobEvent) -> jobs_pb2.JobEvent:
    return jobs_pb2.JobEvent(id=event.id, time=timestamp(event.time),
                             level=_EVENT_LEVELS[event.level], type=event.type,
                             message=event.message, metrics=dict(event.metrics))


def base_model_message(spec: BaseModelSpec) -> models_pb2.BaseModel:
    return models_pb2.BaseModel(
        name=spec.name, context_window=spec.context_window, prompt_tokens=spec.prompt_tokens,
        completion_tokens=spec.completion_tokens, rows_per_epoch=spec.rows_per_epoch,
        max_lora_rank=spec.max_lora_rank)


def model_message(model: RegisteredModel,
                  artifacts: Sequence[str] = ()) -> models_pb2.Model:
    return models_pb2.Model(
        name=model.name, base_model=model.base_model, job_id=model.job_id,
        version=model.version, created_on=timestamp(model.created_on),
        trained_tokens=model.trained_tokens, training_loss=model.training_loss or 0.0,
        validation_loss=model.validation_loss or 0.0, artifacts=list(artifacts),
        imported_from=model.imported_from, file_sha256=model.file_sha256,
        owner_account=model.shared_from, shared=bool(model.shared_from))


def file_format(value: data_pb2.FileFormat) -> FileFormat | None:
    return _FILE_FORMATS.get(value)


def table_message(table: TableInfo) -> data_pb2.Table:
    return data_pb2.Table(
        name=table.name, row_count=table.row_count, kind=table.kind,
        definition=table.definition,
        columns=[data_pb2.Column(name=n, type=t) for n, t in table.columns])


def preview_message(preview: Preview) -> data_pb2.PreviewQueryResponse:
    return data_pb2.PreviewQueryResponse(columns=column_messages(preview.columns),
                                         rows=row_messages(preview.columns, preview.rows))


def column_messages(columns: list[tuple[str, str]]) -> list[data_pb2.Column]:
    return [data_pb2.Column(name=n, type=t) for n, t in columns]


def row_messages(columns: list[tuple[str, str]], rows: list[list[str | None]]
                 ) -> list[data_pb2.Row]:
    names = [name for name, _ in columns]
    # A SQL NULL is an absent key: proto maps cannot hold nulls.
    return [data_pb2.Row(values={n: v for n, v in zip(names, row, strict=True) if v is not None})
            for row in rows]


def query_page_messages(page: Preview, next_page_token: str, max_bytes: int
                        ) -> Iterator[data_pb2.RunQueryResponse]:
    """A page as a stream: the columns first, rows in messages of about `max_bytes` of text
    (at least one row each), the next page's token last."""
    chunks: list[list[list[str | None]]] = [[]]
    size = 0
    for row in page.rows:
        width = sum(len(v) + 16 for v in row if v is not None)
        if chunks[-1] and size + width > max_bytes:
            chunks.append([])
            size = 0
        chunks[-1].append(row)
        size += width
    for i, chunk in enumerate(chunks):
        last = i == len(chunks) - 1
        yield data_pb2.RunQueryResponse(
            columns=column_messages(page.columns) if i == 0 else [],
            rows=row_messages(page.columns, chunk),
            next_page_token=next_page_token if last else "")


# -- access ------------------------------------------------------------------------------------

_OBJECT_TYPES = {
    access_pb2.ACCOUNT: ObjectType.ACCOUNT,
    access_pb2.DATABASE: ObjectType.DATABASE,
    access_pb2.SCHEMA: ObjectType.SCHEMA,
    access_pb2.MODEL: ObjectType.MODEL,
}
_OBJECT_TYPE_PROTOS = {**{v.value: k for k, v in _OBJECT_TYPES.items()},
                       "ROLE": access_pb2.ROLE}
_PRIVILEGES = {
    access_pb2.USAGE: Privilege.USAGE,
    access_pb2.OWNERSHIP: Privilege.OWNERSHIP,
    access_pb2.CREATE_MODEL: Privilege.CREATE_MODEL,
    access_pb2.CREATE_TABLE: Privilege.CREATE_TABLE,
    access_pb2.CREATE_DATABASE: Privilege.CREATE_DATABASE,
}
_GRANTEE_TYPES = {access_pb2.TO_USER: "USER", access_pb2.TO_ROLE: "ROLE"}
_GRANTEE_TYPE_PROTOS = {**{v: k for k, v in _GRANTEE_TYPES.items()},
                        "ACCOUNT": access_pb2.TO_ACCOUNT}   # SHOW GRANTS: a model's shares
_GROUPINGS = {usage_pb2.GROUP_BY_MODEL: Grouping.MODEL, usage_pb2.GROUP_BY_USER: Grouping.USER,
              usage_pb2.GROUP_BY_DAY: Grouping.DAY, usage_pb2.GROUP_BY_ACCOUNT: Grouping.ACCOUNT}


def privilege(value: access_pb2.Privilege) -> Privilege:
    if value not in _PRIVILEGES:
        raise InvalidArgument("privilege is required (USAGE, OWNERSHIP, CREATE_MODEL, "
                              "CREATE_TABLE or CREATE_DATABASE)")
    return _PRIVILEGES[value]


def securable(object_type: access_pb2.ObjectType, name: str) -> SecurableObject:
    if object_type not in _OBJECT_TYPES:
        raise InvalidArgument("object_type must be ACCOUNT, DATABASE, SCHEMA or MODEL")
    return SecurableObject.parse(_OBJECT_TYPES[object_type], name)


def grantee_type(value: access_pb2.GranteeType) -> str:
    if value not in _GRANTEE_TYPES:
        raise InvalidArgument("grantee_type must be TO_USER or TO_ROLE")
    return _GRANTEE_TYPES[value]


def user_message(user: User) -> access_pb2.User:
    return access_pb2.User(id=user.id, name=user.name, default_role=user.default_role or "",
                           created_on=timestamp(user.created_on))


def role_message(role: Role) -> access_pb2.Role:
    return access_pb2.Role(id=role.id, name=role.name, comment=role.comment,
                           created_on=timestamp(role.created_on))


def grant_message(grant: GrantRecord) -> access_pb2.Grant:
    return access_pb2.Grant(
        created_on=timestamp(grant.created_on), privilege=grant.privilege,
        granted_on=_OBJECT_TYPE_PROTOS[grant.granted_on], name=grant.name,
        granted_to=_GRANTEE_TYPE_PROTOS[grant.granted_to], grantee_name=grant.grantee_name,
        granted_by=grant.granted_by, grantee_account=grant.grantee_account)


def api_key_message(key: ApiKeyInfo) -> access_pb2.ApiKey:
    return access_pb2.ApiKey(id=key.id, user=key.user_name, created_on=timestamp(key.created_on),
                             revoked_on=timestamp(key.revoked_on))


# -- usage -------------------------------------------------------------------------------------

def time_or_none(ts, field: str = "time") -> datetime | None:
    """A request's Timestamp (unset: None); one protobuf itself cannot read (nanos outside
    0..999,999,999, seconds outside years 1-9999) is the caller's error."""
    if not ts.seconds and not ts.nanos:
        return None
    try:
        return ts.ToDatetime(tzinfo=timezone.utc)
    except (ValueError, OverflowError) as exc:
        raise InvalidArgument(f"{field} is not a valid timestamp: {exc}") from None


def groupings(values) -> list[Grouping]:
    out = []
    for value in values:
        if value not in _GROUPINGS:
            raise InvalidArgument("group_by takes GROUP_BY_MODEL, GROUP_BY_USER, GROUP_BY_DAY, "
                                  "GROUP_BY_ACCOUNT")
        out.append(_GROUPINGS[value])
    return out


def fine_tuning_usage_message(u: FineTuningUsage) -> usage_pb2.FineTuningUsage:
    return usage_pb2.FineTuningUsage(
        job_id=u.job_id, model=u.model, base_model=u.base_model, user=u.user_name,
        status=u.status, trained_tokens=u.trained_tokens, credits=u.credits,
        start_time=timestamp(u.start_time), end_time=timestamp(u.end_time))


def inference_usage_message(u: InferenceUsage) -> usage_pb2.InferenceUsage:
    return usage_pb2.InferenceUsage(
        request_id=u.request_id, model=u.model, base_model=u.base_model, user=u.user_name,
        prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens,
        total_tokens=u.prompt_tokens + u.completion_tokens, credits=u.credits,
        time=timestamp(u.time), source=u.source)


def usage_group_message(g: UsageGroup) -> usage_pb2.InferenceUsageGroup:
    return usage_pb2.InferenceUsageGroup(
        model=g.model, user=g.user_name, day=g.day, requests=g.requests,
        prompt_tokens=g.prompt_tokens, completion_tokens=g.completion_tokens,
        total_tokens=g.prompt_tokens + g.completion_tokens, credits=g.credits,
        account=g.account)
