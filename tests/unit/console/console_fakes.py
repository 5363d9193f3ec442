"""Fakes behind the console's two seams: control's public API (ControlApi) and the COMPLETE core.

Two keys: ADMIN owns everything; VIEWER (no roles) sees no jobs, gets PERMISSION_DENIED for a
job or an artifact, as control answers them. Control's decisions live here, in the fake: the
console under test must show them, not make them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from google.protobuf.timestamp_pb2 import Timestamp

from finetune.control.v1 import (
    access_pb2,
    data_pb2,
    evaluations_pb2,
    jobs_pb2,
    models_pb2,
    usage_pb2,
)
from services.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from services.inference.accounting import Usage
from services.inference.completions import Chunk, check_input

ADMIN = "ft_admin_key"
VIEWER = "ft_viewer_key"
BASE = "tiny-base"
TUNED = "shop.public.router"
DONE_JOB = "ft_done"
RUNNING_JOB = "ft_running"
RESULTS_CSV = ("step,epoch,training_loss,validation_loss\n"
               "1,1,2.5,\n2,1,1.75,1.9\n3,2,1.0,\n4,2,0.5,0.8\n")


def ts(seconds: int) -> Timestamp:
    return Timestamp(seconds=seconds)


def evaluation(role: str, accuracy: float, macro_f1: float) -> evaluations_pb2.Evaluation:
    return evaluations_pb2.Evaluation(
        id=f"ev_{role}", model=TUNED if role == "tuned" else BASE, role=role,
        status=evaluations_pb2.EVALUATION_SUCCEEDED, primary_metric="macro_f1",
        query="SELECT prompt, label FROM shop.public.held_out",
        metrics={"accuracy": accuracy, "macro_f1": macro_f1})


def done_job() -> jobs_pb2.FineTuningJob:
    return jobs_pb2.FineTuningJob(
        id=DONE_JOB, status=jobs_pb2.SUCCESS, progress=1.0, base_model=BASE, model=TUNED,
        created_on=ts(1_700_000_000), started_on=ts(1_700_000_010),
        finished_on=ts(1_700_000_100), training_data="SELECT prompt, completion FROM shop.t",
        trained_tokens=1234, step=4, total_steps=4, epoch=2,
        training_result=jobs_pb2.TrainingResult(training_loss=0.5, validation_loss=0.8,
                                                has_validation_loss=True),
        options=jobs_pb2.FineTuningOptions(max_epochs=2, learning_rate=0.0002, batch_size=4,
                                           lora_rank=8, lora_alpha=16, seed=7,
                                           target_modules=["q_proj", "v_proj"]),
        training_rows=20, validation_rows=4,
        training_snapshot=jobs_pb2.DataSnapshot(uri="mem://snap/train.jsonl", rows=20,
                                                sha256="ab" * 32, truncated_rows=1),
        validation_snapshot=jobs_pb2.DataSnapshot(rows=4, sha256="cd" * 32),
        validation_source=jobs_pb2.HOLDOUT,
        base_evaluation=evaluation("base", 0.0, 0.0),
        tuned_evaluation=evaluation("tuned", 0.9, 0.85))


def running_job() -> jobs_pb2.FineTuningJob:
    return jobs_pb2.FineTuningJob(
        id=RUNNING_JOB, status=jobs_pb2.IN_PROGRESS, progress=0.5, base_model=BASE,
        model="shop.public.next", created_on=ts(1_700_000_200), step=2, total_steps=4,
        training_data="SELECT prompt, completion FROM shop.t",
        options=jobs_pb2.FineTuningOptions(max_epochs=2))


def event(i: int, type_: str, message: str, **metrics: float) -> jobs_pb2.JobEvent:
    return jobs_pb2.JobEvent(id=i, time=ts(1_700_000_000 + i), level=jobs_pb2.EVENT_INFO,
                             type=type_, message=message, metrics=metrics)


@dataclass
class FakeControl:
    jobs: dict = field(default_factory=lambda: {DONE_JOB: done_job(),
                                                RUNNING_JOB: running_job()})
    created: list = field(default_factory=list)
    estimated: list = field(default_factory=list)
    previewed: list = field(default_factory=list)
    keys_seen: list = field(default_factory=list)
    revoked: set = field(default_factory=set)
    results_csv: str = RESULTS_CSV
    failure: Exception | None = None     # raised by every call once set

    def _check(self, key: str) -> None:
        self.keys_seen.append(key)
        if self.failure is not None:
            raise self.failure
        if key not in (ADMIN, VIEWER) or key in self.revoked:
            raise Unauthenticated("invalid API key")

    def _own(self, key: str, what: str) -> None:
        self._check(key)
        if key != ADMIN:
            raise PermissionDenied(f"{what} requires OWNERSHIP (the job's owner role)")

    async def whoami(self, key):
        self._check(key)
        if key == ADMIN:
            return access_pb2.Principal(user_name="admin", roles=["ACCOUNTADMIN", "PUBLIC"],
                                        default_role="ACCOUNTADMIN")
        return access_pb2.Principal(user_name="viewer", roles=["PUBLIC"])

    async def base_models(self, key):
        self._check(key)
        return [models_pb2.BaseModel(name=BASE, context_window=2048, prompt_tokens=1024,
                                     completion_tokens=1024, rows_per_epoch=1000)]

    async def models(self, key):
        """As ListModels answers: without evaluations and artifact names."""
        self._check(key)
        return [models_pb2.Model(
            name=TUNED, base_model=BASE, job_id=DONE_JOB, version=2, created_on=ts(1_700_000_100),
            trained_tokens=1234, training_loss=0.5, validation_loss=0.8)]

    async def get_model(self, key, name):
        model = next(m for m in await self.models(key) if m.name == name)
        model.artifacts.extend(["adapter_config.json", "training_results.csv"])
        model.evaluations.append(evaluation("tuned", 0.9, 0.85))
        return model

    async def list_jobs(self, key, page_size, page_token):
        self._check(key)
        if key != ADMIN:   # SHOW: the jobs of the caller's roles only
            return jobs_pb2.ListFineTuningJobsResponse()
        jobs = sorted(self.jobs.values(), key=lambda j: -j.created_on.seconds)
        start = int(page_token or 0)
        token = str(start + 1) if start + 1 < len(jobs) else ""
        return jobs_pb2.ListFineTuningJobsResponse(jobs=jobs[start:start + 1],
                                                   next_page_token=token)

    async def get_job(self, key, job_id):
        self._own(key, f"job {job_id}")
        if job_id not in self.jobs:
            raise NotFound(f"job {job_id} does not exist")
        return self.jobs[job_id]

    async def cancel_job(self, key, job_id):
        job = await self.get_job(key, job_id)
        if job.status in (jobs_pb2.SUCCESS, jobs_pb2.ERROR, jobs_pb2.CANCELLED):
            raise FailedPrecondition(f"job {job_id} is already finished")
        job.status = jobs_pb2.CANCELLED
        return job

    async def job_events(self, key, job_id, page_size, page_token):
        await self.get_job(key, job_id)
        events = [event(1, "job.created", "job created"),
                  event(2, "training.progress",
                        "training precision fp32 (measured: bf16 0.6x); worker ready: 2.0 s"),
                  event(3, "training.progress", "epoch 1 done", step=2, epoch=1,
                        training_loss=1.75, validation_loss=1.9)]
        return jobs_pb2.ListFineTuningJobEventsResponse(events=list(reversed(events)))

    async def create_job(self, key, request):
        self._check(key)
        if not request.model:
            raise InvalidArgument("model name is required")
        self.created.append(request)
        job = jobs_pb2.FineTuningJob(id="ft_new", status=jobs_pb2.PENDING,
                                     base_model=request.base_model, model=request.model)
        self.jobs[job.id] = job
        return job

    async def estimate_job(self, key, request):
        self._check(key)
        self.estimated.append(request)
        if "missing" in request.training_query:
            raise InvalidArgument("the training query must return prompt and completion "
                                  "columns; it returns prompt")
        return jobs_pb2.FineTuningJobEstimate(
            base_model=request.base_model, max_rows=500, epochs=2, tokens_per_epoch=3000,
            trained_tokens=6000, credits=0.012, credits_per_million_tokens=2.0,
            training=jobs_pb2.DataSnapshot(rows=20, truncated_rows=3),
            notes=["3 rows are truncated to the prompt allocation"])

    async def preview_query(self, key, query, limit):
        self._check(key)
        self.previewed.append((query, limit))
        if "nope" in query:
            raise PermissionDenied("USAGE on database nope is required")
        return data_pb2.PreviewQueryResponse(
            columns=[data_pb2.Column(name="prompt", type="VARCHAR"),
                     data_pb2.Column(name="completion", type="VARCHAR")],
            rows=[data_pb2.Row(values={"prompt": "<b>apple</b>", "completion": "QF-17"})])

    async def artifact_chunks(self, key, name, artifact):
        self._own(key, f"model {name}")
        if artifact != "training_results.csv" and artifact != "adapter_config.json":
            raise NotFound(f"model {name} has no artifact {artifact}")
        data = self.results_csv.encode() if artifact == "training_results.csv" else b"{}"
        for i in range(0, len(data), 16):
            await asyncio.sleep(0)
            yield data[i:i + 16]

    async def aggregate_inference_usage(self, key, group_by):
        self._check(key)
        by_day = usage_pb2.GROUP_BY_DAY in list(group_by)
        rows = [(TUNED, "2025-03-01", 3, 120, 0.001), (TUNED, "2025-03-03", 1, 40, 0.0004),
                (BASE, "2025-03-01", 2, 60, 0.0002)]
        groups: dict = {}
        for model, day, requests, tokens, credits in rows:
            group = groups.setdefault((model, day if by_day else ""),
                                      usage_pb2.InferenceUsageGroup(model=model,
                                                                    day=day if by_day else ""))
            group.requests += requests
            group.prompt_tokens += tokens // 2
            group.completion_tokens += tokens // 2
            group.total_tokens += tokens
            group.credits += credits
        return list(groups.values())

    async def fine_tuning_usage(self, key, limit):
        self._check(key)
        return [usage_pb2.FineTuningUsage(job_id=DONE_JOB, model=TUNED, base_model=BASE,
                                          status="SUCCESS", trained_tokens=1234, credits=0.0025,
                                          start_time=ts(1_740_787_200),
                                          end_time=ts(1_740_790_800))]


class FakeCore:
    """COMPLETE: answers each model with its own words; USAGE is refused to VIEWER on TUNED;
    `fail_after` breaks a stream after that many chunks."""

    def __init__(self):
        self.calls: list = []
        self.fail_after: int | None = None

    async def complete(self, api_key, inp):
        raise AssertionError("the console streams")

    async def stream(self, api_key, inp, usage_id=None):
        self.calls.append((api_key, inp))
        check_input(inp)
        if api_key == VIEWER and inp.model == TUNED:
            raise PermissionDenied(f"USAGE on model {TUNED} is required")
        words = ["QF-17", "is", "the", "code"] if inp.model == TUNED else ["I", "don't", "know"]
        for i, word in enumerate(words):
            if self.fail_after is not None and i == self.fail_after:
                raise PermissionDenied("USAGE on the model was revoked")
            last = i == len(words) - 1
            await asyncio.sleep(0)
            yield Chunk(("" if i == 0 else " ") + word, "stop" if last else None,
                        Usage(7, len(words)) if last else None)


def sign_in(client, key: str = ADMIN):
    """The sign-in form, posted."""
    return client.post("/console/signin", data={"api_key": key})
