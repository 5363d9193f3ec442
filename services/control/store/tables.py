"""The metadata schema (SQLAlchemy 2.0). Alembic migrations in `migrations/` create it; these
classes must match the latest migration (a unit test compares them)."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UtcDateTime(TypeDecorator):
    """Stored as naive UTC (SQLite has no time zones), returned as aware UTC."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        return None if value is None else value.replace(tzinfo=timezone.utc)


ACTIVE_JOB = "status IN ('PENDING', 'IN_PROGRESS')"
LIVE_MODEL = "deleted_on IS NULL"


class Base(DeclarativeBase):
    pass


class AccountRow(Base):
    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_on: Mapped[datetime] = mapped_column(UtcDateTime)


class UserRow(Base):
    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("account_id", "name", name="uq_users_account_name"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    name: Mapped[str] = mapped_column(String(255))
    created_on: Mapped[datetime] = mapped_column(UtcDateTime)
    # The role that owns what the user creates (a role id; no FK: dropping a role clears it).
    default_role_id: Mapped[str | None] = mapped_column(String(64), nullable=True)


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    key_hash: Mapped[str] = mapped_column(String(128), unique=True)
    created_on: Mapped[datetime] = mapped_column(UtcDateTime)
    revoked_on: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class JobRow(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("account_id", "request_id", name="uq_jobs_account_request"),
        Index("ix_jobs_account_created", "account_id", "created_on"),
        Index("ix_jobs_status", "status"),
        # An active job reserves its output model name: two jobs cannot race for one name.
        Index("uq_jobs_active_model_name", "account_id", "model_name", unique=True,
              sqlite_where=text(ACTIVE_JOB), postgresql_where=text(ACTIVE_JOB)),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    request_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    base_model: Mapped[str] = mapped_column(String(255))
    model_name: Mapped[str] = mapped_column(String(800))
    task_type: Mapped[str] = mapped_column(String(32))
    training_query: Mapped[str] = mapped_column(Text)
    validation_query: Mapped[str | None] = mapped_column(Text, nullable=True)
    options: Mapped[dict] = mapped_column(JSON)
    spec_uri: Mapped[str | None] = mapped_column(Text, nullable=True)
    output_uri: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_on: Mapped[datetime] = mapped_column(UtcDateTime)
    started_on: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    finished_on: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    updated_on: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    trained_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    training_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    validation_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    step: Mapped[int] = mapped_column(BigInteger, default=0)
    total_steps: Mapped[int] = mapped_column(BigInteger, default=0)
    training_rows: Mapped[int] = mapped_column(BigInteger, default=0)
    validation_rows: Mapped[int] = mapped_column(BigInteger, default=0)
    truncated_rows: Mapped[int] = mapped_column(BigInteger, default=0)
    submit_attempts: Mapped[int] = mapped_column(Integer, default=0)
    # The creator's role: it may DESCRIBE and CANCEL the job and will own the model.
    owner_role_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Lineage: the snapshots the job trains and validates on (content hash, token counts).
    training_data_uri: Mapped[str | None] = mapped_column(Text, nullable=True)
    training_data_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    training_prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0,
                                                        server_default=text("0"))
    training_completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0,
                                                            server_default=text("0"))
    training_truncated_rows: Mapped[int] = mapped_column(BigInteger, default=0,
                                                         server_default=text("0"))
    validation_data_uri: Mapped[str | None] = mapped_column(Text, nullable=True)
    validation_data_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    validation_prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0,
                                                          server_default=text("0"))
    validation_completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0,
                                                              server_default=text("0"))
    validation_truncated_rows: Mapped[int] = mapped_column(BigInteger, default=0,
                                                           server_default=text("0"))
    validation_source: Mapped[str | None] = mapped_column(String(16), nullable=True)
    estimated_trained_tokens: Mapped[int] = mapped_column(BigInteger, default=0,
                                                          server_default=text("0"))
    # FineTuningOptions.evaluation as the job keeps it (domain JobEvaluation), or NULL.
    evaluation: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    # Optimistic locking: the reconciler, progress reports and cancels race on a job; an update
    # based on a stale read fails (StaleDataError) and is retried on fresh data.
    version: Mapped[int] = mapped_column(Integer, nullable=False)

    __mapper_args__ = {"version_id_col": version}


class ModelRow(Base):
    __tablename__ = "models"
    __table_args__ = (
        Index("uq_models_live_name", "account_id", "name", unique=True,
              sqlite_where=text(LIVE_MODEL), postgresql_where=text(LIVE_MODEL)),
        UniqueConstraint("account_id", "request_id", name="uq_models_account_request"),
        # AUTOINCREMENT: SQLite must never hand out the id of a deleted row again (it is the
        # adapter id inference caches adapters under).
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    name: Mapped[str] = mapped_column(String(800))
    version: Mapped[int] = mapped_column(Integer)
    base_model: Mapped[str] = mapped_column(String(255))
    # NULL for an imported model (no job made it)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"), unique=True, nullable=True)
    adapter_uri: Mapped[str] = mapped_column(Text)
    created_on: Mapped[datetime] = mapped_column(UtcDateTime)
    # An imported model's lineage: where its files came from ("upload" or a URI), their sha256.
    imported_from: Mapped[str | None] = mapped_column(Text, nullable=True)
    file_sha256: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    trained_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    training_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    validation_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    deleted_on: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    # EVALUATING: a job's candidate, resolvable only for the job's own evaluations; READY: usable.
    state: Mapped[str] = mapped_column(String(16), default="READY",
                                       server_default=text("'READY'"))


class UsageRow(Base):
    __tablename__ = "usage_records"
    __table_args__ = (
        UniqueConstraint("account_id", "request_id", name="uq_usage_account_request"),
        Index("ix_usage_account_created", "account_id", "created_on"),
        Index("ix_usage_model_account", "model_account_id", "model", "created_on"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(255))
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    user_id: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(800))
    base_model: Mapped[str] = mapped_column(String(255))
    prompt_tokens: Mapped[int] = mapped_column(BigInteger)
    completion_tokens: Mapped[int] = mapped_column(BigInteger)
    created_on: Mapped[datetime] = mapped_column(UtcDateTime)
    credits: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))
    # The account owning the model when it is not the caller's (a shared model), else NULL.
    model_account_id: Mapped[str | None] = mapped_column(String(64), nullable=True)


class RoleRow(Base):
    __tablename__ = "roles"
    __table_args__ = (UniqueConstraint("account_id", "name", name="uq_roles_account_name"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    name: Mapped[str] = mapped_column(String(255))
    comment: Mapped[str] = mapped_column(Text, default="")
    created_on: Mapped[datetime] = mapped_column(UtcDateTime)


class RoleGrantRow(Base):
    """Role `role_id` granted to a user or to another role (which then inherits it)."""

    __tablename__ = "role_grants"
    __table_args__ = (
        UniqueConstraint("role_id", "grantee_type", "grantee_id", name="uq_role_grants"),
        Index("ix_role_grants_grantee", "grantee_type", "grantee_id"),
        Index("ix_role_grants_account", "account_id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    role_id: Mapped[str] = mapped_column(ForeignKey("roles.id"))
    grantee_type: Mapped[str] = mapped_column(String(8))      # USER | ROLE
    grantee_id: Mapped[str] = mapped_column(String(64))
    granted_by: Mapped[str] = mapped_column(String(255))
    created_on: Mapped[datetime] = mapped_column(UtcDateTime)


class PrivilegeGrantRow(Base):
    __tablename__ = "privilege_grants"
    __table_args__ = (
        UniqueConstraint("role_id", "privilege", "object_type", "object_name",
                         name="uq_privilege_grants"),
        Index("ix_privilege_grants_object", "account_id", "object_type", "object_name"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    role_id: Mapped[str] = mapped_column(ForeignKey("roles.id"), index=True)
    privilege: Mapped[str] = mapped_column(String(32))
    object_type: Mapped[str] = mapped_column(String(16))
    object_name: Mapped[str] = mapped_column(String(800))
    granted_by: Mapped[str] = mapped_column(String(255))
    created_on: Mapped[datetime] = mapped_column(UtcDateTime)


class ModelShareRow(Base):
    """A privilege (USAGE) on a model granted to another account: to all of its roles
    (grantee_role "") or to one of them by name."""

    __tablename__ = "model_shares"
    __table_args__ = (
        UniqueConstraint("account_id", "model_name", "privilege", "grantee_account_id",
                         "grantee_role", name="uq_model_shares"),
        Index("ix_model_shares_grantee", "grantee_account_id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))   # the model's owner
    model_name: Mapped[str] = mapped_column(String(800))
    privilege: Mapped[str] = mapped_column(String(32))
    grantee_account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    grantee_role: Mapped[str] = mapped_column(String(255), default="", server_default="")
    granted_by: Mapped[str] = mapped_column(String(255))
    created_on: Mapped[datetime] = mapped_column(UtcDateTime)


class FineTuningUsageRow(Base):
    """One row per finished job that trained (CORTEX_FINE_TUNING_USAGE_HISTORY)."""

    __tablename__ = "fine_tuning_usage"
    __table_args__ = (
        Index("ix_fine_tuning_usage_account_end", "account_id", "end_time"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), unique=True)  # exactly once
    user_id: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(800))
    base_model: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))
    trained_tokens: Mapped[int] = mapped_column(BigInteger)
    credits: Mapped[float] = mapped_column(Float)
    start_time: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    end_time: Mapped[datetime] = mapped_column(UtcDateTime)


class JobEventRow(Base):
    """The job event log; ids increase, so they order a job's events."""

    __tablename__ = "job_events"
    __table_args__ = (
        Index("ix_job_events_job", "job_id", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    created_on: Mapped[datetime] = mapped_column(UtcDateTime)
    level: Mapped[str] = mapped_column(String(8))
    type: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)
    metrics: Mapped[dict | None] = mapped_column(JSON, nullable=True)


ACTIVE_EVALUATION = "status IN ('PENDING', 'RUNNING')"


class EvaluationRow(Base):
    """One evaluation of a model (EvaluateModel, or the end of a fine-tuning job)."""

    __tablename__ = "evaluations"
    __table_args__ = (
        UniqueConstraint("account_id", "request_id", name="uq_evaluations_account_request"),
        Index("ix_evaluations_account_created", "account_id", "created_on"),
        Index("ix_evaluations_model", "account_id", "model", "created_on"),
        Index("ix_evaluations_job", "job_id"),
        Index("ix_evaluations_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    request_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    model: Mapped[str] = mapped_column(String(800))
    base_model: Mapped[str] = mapped_column(String(255))
    model_version: Mapped[int] = mapped_column(Integer, default=0)
    adapter_id: Mapped[int] = mapped_column(BigInteger, default=0)
    task: Mapped[str] = mapped_column(String(32))
    query: Mapped[str] = mapped_column(Text)
    generation: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    rows: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_done: Mapped[int] = mapped_column(BigInteger, default=0)
    metrics: Mapped[dict] = mapped_column(JSON)
    # Per-label precision/recall/F1/support (classification), sorted by label.
    labels: Mapped[list] = mapped_column(JSON)
    created_on: Mapped[datetime] = mapped_column(UtcDateTime)
    started_on: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    finished_on: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    updated_on: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"), nullable=True)
    role: Mapped[str | None] = mapped_column(String(16), nullable=True)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    data_uri: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Optimistic locking, as for jobs: the runner, cancels and the reconciler race on a row.
    version: Mapped[int] = mapped_column(Integer, nullable=False)

    __mapper_args__ = {"version_id_col": version}


class GenerationRow(Base):
    """One batch generation (GenerateText): a model over a frozen query, into a new table."""

    __tablename__ = "generations"
    __table_args__ = (
        UniqueConstraint("account_id", "request_id", name="uq_generations_account_request"),
        Index("ix_generations_account_created", "account_id", "created_on"),
        Index("ix_generations_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    request_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    model: Mapped[str] = mapped_column(String(800))
    base_model: Mapped[str] = mapped_column(String(255))
    model_version: Mapped[int] = mapped_column(Integer, default=0)
    adapter_id: Mapped[int] = mapped_column(BigInteger, default=0)
    query: Mapped[str] = mapped_column(Text)
    into: Mapped[str] = mapped_column(String(800))
    options: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    rows: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_done: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_failed: Mapped[int] = mapped_column(BigInteger, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    created_on: Mapped[datetime] = mapped_column(UtcDateTime)
    started_on: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    finished_on: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    updated_on: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    data_uri: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    version: Mapped[int] = mapped_column(Integer, nullable=False)

    __mapper_args__ = {"version_id_col": version}
