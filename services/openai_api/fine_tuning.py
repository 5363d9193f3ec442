"""OpenAI's files and fine-tuning jobs as the FINETUNE jobs control already runs.

Conversions only, both ways; every decision (privileges, limits, the data's checks, the job's
lifecycle) is control's, reached through its public gRPC API with the caller's own key.

- A file is a catalog table. An upload (purpose `fine-tune`) becomes the table
  `<database>.<schema>.file_<hex>`, in the schema the request names (form or query field
  `schema`, `database.schema`; default `public.public`), and the file's id is the table's
  name. Any table the caller may read can serve as a training file by its name.
- A job's training query reads the file's table: `SELECT messages FROM <table>` (a chat task)
  or `SELECT prompt, completion FROM <table>` (an instruction task), as its columns say.
- The model a job trains is named by `suffix`: a full `database.schema.name` as given, or a
  bare name placed in the training file's schema; without one, `ft_<hex>` there.
- Hyperparameters: n_epochs is max_epochs, batch_size is batch_size ("auto" leaves both to
  the base model's defaults), learning_rate_multiplier times the base model's catalog
  learning rate (its rate at `learning_rate_batch` examples per step) is the learning rate;
  "auto" lets the service scale that rate to the batch, and a job reports its rate in the
  same unit (2.0 for an automatic batch of 16 when the catalog rate is for 4).
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any, Iterable, Iterator, Mapping

from finetune.control.v1 import jobs_pb2
from services.openai_api.errors import InvalidRequest
from services.openai_api.protocol import FineTuningJobRequest, Hyperparameters

DEFAULT_SCHEMA = "public.public"
CHAT = "chat"
INSTRUCTION = "instruction"
COLUMNS = {CHAT: "messages", INSTRUCTION: "prompt, completion"}
TASK_TYPES = {CHAT: jobs_pb2.CHAT, INSTRUCTION: jobs_pb2.INSTRUCTION}
_QUERY = re.compile(r"^SELECT (messages|prompt, completion) FROM ([A-Za-z0-9_$.]+)$")

STATUS = {
    jobs_pb2.PENDING: "queued",          # its data was validated when it was created
    jobs_pb2.IN_PROGRESS: "running",
    jobs_pb2.SUCCESS: "succeeded",
    jobs_pb2.ERROR: "failed",
    jobs_pb2.CANCELLED: "cancelled",
}
LEVELS = {jobs_pb2.EVENT_INFO: "info", jobs_pb2.EVENT_WARNING: "warn",
          jobs_pb2.EVENT_ERROR: "error"}
EVENT_PREFIX = "ftevent-"


# -- files -------------------------------------------------------------------------------------

def upload_table(schema: str | None) -> str:
    """The table a new upload goes to (control checks the name and the caller's privileges)."""
    schema = (schema or "").strip() or DEFAULT_SCHEMA
    if schema.count(".") > 1:
        raise InvalidRequest("schema must be database.schema or schema", "schema")
    return f"{schema}.file_{uuid.uuid4().hex[:12]}"


def training_rows(lines: Iterable[bytes]) -> Iterator[tuple[str, dict[str, str]]]:
    """Each JSONL line as the table row it becomes, with its kind (chat or instruction):
    {"messages": [...]} keeps its messages as JSON text (control reads them when the job is
    created and checks roles and order there), {"prompt", "completion"} its two texts. The
    file's rows must all be of one kind."""
    kind = None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"line {number}"
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InvalidRequest(f"{where} is not valid JSON", "file") from None
        if not isinstance(record, dict):
            raise InvalidRequest(f"{where} is not a JSON object", "file")
        if "messages" in record:
            row_kind = CHAT
            if not isinstance(record["messages"], list) or not record["messages"]:
                raise InvalidRequest(f"{where}: messages must be a non-empty list", "file")
            row = {"messages": json.dumps(record["messages"], ensure_ascii=False)}
        elif isinstance(record.get("prompt"), str) and isinstance(record.get("completion"), str):
            row_kind = INSTRUCTION
            row = {"prompt": record["prompt"], "completion": record["completion"]}
        else:
            raise InvalidRequest(f"{where} needs messages, or prompt and completion strings",
                                 "file")
        if kind is not None and row_kind != kind:
            raise InvalidRequest(f"{where} is a {row_kind} row in a file of {kind} rows", "file")
        kind = row_kind
        yield kind, row
    if kind is None:
        raise InvalidRequest("the file holds no rows", "file")


def file_object(table: str, size: int, filename: str, created_at: int) -> dict[str, Any]:
    return {"id": table, "object": "file", "bytes": size, "created_at": created_at,
            "filename": filename, "purpose": "fine-tune", "status": "processed"}


def table_kind(columns: Iterable[str]) -> str:
    """Chat or instruction, from a training table's columns."""
    names = {c.lower() for c in columns}
    if "messages" in names:
        return CHAT
    if {"prompt", "completion"} <= names:
        return INSTRUCTION
    raise InvalidRequest("a training file needs a messages column, or prompt and completion "
                         f"columns (it has: {', '.join(sorted(names)) or 'none'})",
                         "training_file")


def training_query(table: str, kind: str) -> str:
    return f"SELECT {COLUMNS[kind]} FROM {table}"


def file_of_query(query: str) -> str:
    """The file id a job's query reads: the table of a query this API wrote, else the query
    itself (a job created by FINETUNE with a query of its own)."""
    match = _QUERY.match(query)
    return match.group(2) if match else query


def split_table(table: str) -> tuple[str, str, str]:
    """database, schema, name of a file id, as control's names read (fewer parts: public)."""
    parts = table.strip().split(".")
    if not 1 <= len(parts) <= 3 or not all(parts):
        raise InvalidRequest(f"{table!r} is not a file id (database.schema.table)",
                             "training_file")
    while len(parts) < 3:
        parts.insert(0, "public")
    return parts[0], parts[1], parts[2]


# -- jobs --------------------------------------------------------------------------------------

def hyperparameters_of(body: FineTuningJobRequest) -> Hyperparameters:
    """`method.supervised.hyperparameters` (the current place) or `hyperparameters`."""
    if body.integrations:
        raise InvalidRequest("integrations are not supported", "integrations")
    if body.method is not None:
        if body.method.type != "supervised":
            raise InvalidRequest(f"fine-tuning method {body.method.type!r} is not supported "
                                 "(supervised only)", "method.type")
        nested = body.method.supervised.hyperparameters if body.method.supervised else None
        if nested is not None and body.hyperparameters is not None:
            raise InvalidRequest("give hyperparameters in method.supervised or at the top, not "
                                 "both", "hyperparameters")
        if nested is not None:
            return nested
    return body.hyperparameters or Hyperparameters()


def model_name(suffix: str | None, training_table: str) -> str:
    database, schema, _ = split_table(training_table)
    name = (suffix or "").strip()
    if "." in name:
        return name
    return f"{database}.{schema}.{name or 'ft_' + uuid.uuid4().hex[:12]}"


def create_request(body: FineTuningJobRequest, training_table: str, kind: str,
                   validation_table: str | None, default_learning_rate: float | None,
                   request_id: str = "") -> jobs_pb2.CreateFineTuningJobRequest:
    params = hyperparameters_of(body)
    options = jobs_pb2.FineTuningOptions(task_type=TASK_TYPES[kind])
    if isinstance(params.n_epochs, int):
        options.max_epochs = params.n_epochs
    if isinstance(params.batch_size, int):
        options.batch_size = params.batch_size
    if isinstance(params.learning_rate_multiplier, (int, float)):
        if default_learning_rate is None:
            raise InvalidRequest(f"learning_rate_multiplier needs the default learning rate of "
                                 f"{body.model}, which this service does not know",
                                 "learning_rate_multiplier")
        if params.learning_rate_multiplier <= 0:
            raise InvalidRequest("learning_rate_multiplier must be positive",
                                 "learning_rate_multiplier")
        options.learning_rate = params.learning_rate_multiplier * default_learning_rate
    if body.seed is not None:
        options.seed = body.seed
    return jobs_pb2.CreateFineTuningJobRequest(
        model=model_name(body.suffix, training_table), base_model=body.model,
        training_query=training_query(training_table, kind),
        validation_query=training_query(validation_table, kind) if validation_table else "",
        options=options, request_id=request_id)


def hyperparameters_object(options: jobs_pb2.FineTuningOptions,
                           default_learning_rate: float | None) -> dict[str, Any]:
    multiplier = None
    if default_learning_rate and options.learning_rate:
        multiplier = float(f"{options.learning_rate / default_learning_rate:.6g}")
    return {"n_epochs": options.max_epochs or "auto", "batch_size": options.batch_size or "auto",
            "learning_rate_multiplier": multiplier if multiplier is not None else "auto"}


def job_object(job: jobs_pb2.FineTuningJob,
               default_learning_rates: Mapping[str, float]) -> dict[str, Any]:
    hyperparameters = hyperparameters_object(job.options,
                                             default_learning_rates.get(job.base_model))
    succeeded = job.status == jobs_pb2.SUCCESS
    error = None
    if job.HasField("error") and (job.error.code or job.error.message):
        error = {"code": job.error.code or "error", "message": job.error.message,
                 "param": None}
    return {
        "id": job.id, "object": "fine_tuning.job", "model": job.base_model,
        "created_at": job.created_on.seconds,
        "finished_at": job.finished_on.seconds if job.HasField("finished_on") else None,
        "status": STATUS.get(job.status, "queued"),
        # Another role's job, listed as a summary, names no model (nor data).
        "fine_tuned_model": (job.model or None) if succeeded else None,
        "trained_tokens": job.trained_tokens if succeeded else None,
        "training_file": file_of_query(job.training_data),
        "validation_file": file_of_query(job.validation_data) if job.validation_data else None,
        "hyperparameters": hyperparameters,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
        "seed": job.options.seed, "error": error, "result_files": [], "organization_id": "",
        "estimated_finish": None, "integrations": [], "metadata": None,
    }


def event_id(event: jobs_pb2.JobEvent) -> str:
    return f"{EVENT_PREFIX}{event.id}"


def event_position(after: str | None) -> int | None:
    """The event number of a cursor `after` (an event id)."""
    if not after:
        return None
    number = after.removeprefix(EVENT_PREFIX)
    if not number.isdigit():
        raise InvalidRequest(f"after must be an event id ({EVENT_PREFIX}<n>)", "after")
    return int(number)


def event_object(event: jobs_pb2.JobEvent) -> dict[str, Any]:
    metrics = dict(event.metrics)
    return {"id": event_id(event), "object": "fine_tuning.job.event",
            "created_at": event.time.seconds, "level": LEVELS.get(event.level, "info"),
            "message": event.message, "type": "metrics" if metrics else "message",
            "data": {"event": event.type, **metrics}}


def page(items: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    return {"object": "list", "data": items[:limit], "has_more": len(items) > limit}
