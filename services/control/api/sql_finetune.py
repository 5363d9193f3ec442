"""FINETUNE inside RunQuery (services.control.data.finetune_statement has its grammar).

The call goes through the same FineTuning methods as the FineTuningService RPCs, as the query's
caller: the same privilege checks (FINETUNE, CREATE MODEL, USAGE on what the training query
reads) and the same errors. Results are Cortex's shapes: CREATE gives the job id; SHOW,
DESCRIBE and CANCEL give the RPCs' job messages as JSON, with the API's field names.
"""

from __future__ import annotations

import json

from google.protobuf import json_format

from finetune.control.v1 import jobs_pb2
from services.common.errors import InvalidArgument
from services.control.api.jobs import create_request, job_message, listed_job_messages
from services.control.core.evaluations import Evaluations
from services.control.core.jobs import FineTuning
from services.control.core.paging import MAX_PAGE_SIZE
from services.control.data.catalog import Preview
from services.control.data.finetune_statement import FinetuneCall
from services.control.domain.principals import Principal

# SHOW lists at most this many jobs (newest first), as one JSON array in one row.
MAX_SHOWN_JOBS = 10_000


class SqlFinetune:
    def __init__(self, jobs: FineTuning, evaluations: Evaluations | None = None):
        self._jobs = jobs
        self._evaluations = evaluations

    def run(self, principal: Principal, call: FinetuneCall) -> Preview:
        """The call's result as one row of one VARCHAR column (blocking: run it off the
        event loop)."""
        return Preview([(call.column, "VARCHAR")], [[self._value(principal, call)]])

    def _value(self, principal: Principal, call: FinetuneCall) -> str:
        if call.action == "CREATE":
            request = jobs_pb2.CreateFineTuningJobRequest(
                model=call.text(0, "model"), base_model=call.text(1, "base_model"),
                training_query=call.text(2, "training_query"),
                validation_query=call.text(3, "validation_query", required=False))
            try:
                json_format.ParseDict(call.options(4), request.options)
            except json_format.ParseError as exc:
                raise InvalidArgument(f"FINETUNE options: {exc}") from None
            return self._jobs.create(principal, create_request(request)).id
        if call.action == "SHOW":
            return json.dumps([_document(m) for m in self._all_jobs(principal)])
        job_id = call.text(0, "job id")
        job = self._jobs.get(principal, job_id) if call.action == "DESCRIBE" \
            else self._jobs.cancel(principal, job_id)
        return json.dumps(_document(job_message(job, self._evaluations)))

    def _all_jobs(self, principal: Principal) -> list[jobs_pb2.FineTuningJob]:
        listed: list[jobs_pb2.FineTuningJob] = []
        token = ""
        while len(listed) < MAX_SHOWN_JOBS:
            page = self._jobs.list(principal, MAX_PAGE_SIZE, token)
            listed.extend(listed_job_messages(page, self._evaluations))
            token = page.next_page_token
            if not token:
                break
        return listed[:MAX_SHOWN_JOBS]


def _document(message: jobs_pb2.FineTuningJob) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True,
                                     unquote_int64_if_possible=True)
