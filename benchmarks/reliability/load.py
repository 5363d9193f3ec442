"""What the reliability runs share: a local stack with a trained model, COMPLETE clients that
retry under their request_id, and the usage and job lookups their checks need."""

from __future__ import annotations

import collections
import csv
import random
import threading
import time
from dataclasses import dataclass, field

import grpc

from finetune.control.v1 import jobs_pb2
from finetune.inference.v1 import inference_pb2, inference_pb2_grpc
from services.cli.client import FinetuneClient, _channel
from services.cli.demo import TRAINING_FILE
from services.common.base_models import DEFAULT_BASE_MODEL

TABLE = "faults.public.tickets"
FIRST_MODEL = "faults.public.router"
QUERY = f"SELECT prompt, completion FROM {TABLE}"
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


def train_first_model(client: FinetuneClient) -> list[str]:
    """Loads the sample tickets and trains FIRST_MODEL on them; returns the prompts."""
    client.load_table(TABLE, TRAINING_FILE, replace=True)
    print("training the first model ...", flush=True)
    first = wait_job(client, client.create_job(FIRST_MODEL, DEFAULT_BASE_MODEL, QUERY,
                                               seed=7).id, 1800)
    if first.status != jobs_pb2.SUCCESS:
        raise RuntimeError(f"the first job ended {first.status}: {first.error.message}")
    with TRAINING_FILE.open() as f:
        return [r["prompt"] for r in csv.DictReader(f)]


@dataclass
class Traffic:
    """COMPLETE clients that never give up on a request: the same request_id until OK."""

    address: str
    api_key: str
    models: tuple[str, str]
    prompts: list[str]
    concurrency: int
    rate_per_s: float = 0.0   # all clients together; 0: no pause between requests
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    answers: dict[str, tuple[str, str, int, int]] = field(default_factory=dict)
    codes: collections.Counter = field(default_factory=collections.Counter)
    retried: int = 0          # requests that needed more than one attempt
    mismatched: list[str] = field(default_factory=list)   # a retry answered differently
    unexpected: list[str] = field(default_factory=list)   # any other failure
    latencies: list[float] = field(default_factory=list)   # per answer, retries included
    finished: list[float] = field(default_factory=list)    # when each answer came (monotonic)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for worker in range(self.concurrency):
            t = threading.Thread(target=self._run, args=(worker,), daemon=True)
            t.start()
            self.threads.append(t)

    def finish(self, timeout_s: float = 600) -> None:
        self.stop.set()
        deadline = time.monotonic() + timeout_s
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in self.threads):
            self.unexpected.append("a client was still waiting for its answer after 600 s")

    def _run(self, worker: int) -> None:
        channel = _channel(self.address, self.api_key)   # no gRPC retries: we count them
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        rng = random.Random(worker)
        n = 0
        pause = self.concurrency / self.rate_per_s if self.rate_per_s else 0.0
        due = time.monotonic()
        while not self.stop.is_set():
            if pause:   # starts spaced by `pause` on average, however long the answers take
                due = max(due, time.monotonic() - pause) + pause * rng.uniform(0.5, 1.5)
                if self.stop.wait(max(0.0, due - time.monotonic())):
                    break
            n += 1
            model = self.models[n % 2]
            request = inference_pb2.CompleteRequest(
                model=model, prompt=rng.choice(self.prompts), request_id=f"load-{worker}-{n}",
                options=inference_pb2.CompletionOptions(max_tokens=12, temperature=0.8))
            self._until_answered(stub, request)
        channel.close()

    def _until_answered(self, stub, request) -> None:
        start = time.monotonic()
        attempts = 0
        seen: set[str] = set()
        while True:
            attempts += 1
            try:
                r = stub.Complete(request, timeout=120)
            except grpc.RpcError as err:
                with self.lock:
                    self.codes[err.code().name] += 1
                if err.code() not in RETRYABLE:
                    with self.lock:
                        self.unexpected.append(f"{request.request_id}: {err.code().name}: "
                                               f"{err.details()}")
                    return
                if time.monotonic() - start > 900:
                    with self.lock:
                        self.unexpected.append(f"{request.request_id}: no answer in 900 s")
                    return
                time.sleep(min(8.0, 0.25 * 2 ** min(attempts, 5)))
                continue
            seen.add(r.text)
            with self.lock:
                self.codes["OK"] += 1
                if attempts > 1:
                    self.retried += 1
                if request.request_id in self.answers and \
                        self.answers[request.request_id][1] != r.text:
                    self.mismatched.append(request.request_id)
                self.answers[request.request_id] = (request.model, r.text,
                                                    r.usage.prompt_tokens,
                                                    r.usage.completion_tokens)
                self.latencies.append(time.monotonic() - start)
                self.finished.append(time.monotonic())
            return


def wait_job(client: FinetuneClient, job_id: str, timeout_s: float) -> jobs_pb2.FineTuningJob:
    """Polls until the job is over, riding out control's restarts (UNAVAILABLE)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            job = client.get_job(job_id)
            if job.status not in (jobs_pb2.PENDING, jobs_pb2.IN_PROGRESS):
                return job
        except grpc.RpcError as err:
            if err.code() not in RETRYABLE:
                raise
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still running after {timeout_s:.0f} s")
        time.sleep(2)


def usage_rows(client: FinetuneClient, user: str) -> list:
    rows, token = [], ""
    while True:
        page = client.inference_usage(user=user, page_size=1000, page_token=token)
        rows += [u for u in page.usage if u.source == "COMPLETE"]
        token = page.next_page_token
        if not token:
            return rows


def tally(entries) -> dict[str, list[int]]:
    """Per model: [requests, prompt tokens, completion tokens]."""
    out: dict[str, list[int]] = {}
    for model, prompt_tokens, completion_tokens in entries:
        t = out.setdefault(model, [0, 0, 0])
        t[0] += 1
        t[1] += prompt_tokens
        t[2] += completion_tokens
    return out




def billed_once_delivered(client: FinetuneClient, user: str, answered: dict,
                          timeout_s: float = 300) -> tuple[dict, int]:
    """Control's COMPLETE usage tallied like `answered`, polled until the outboxes have
    delivered (they match) or the timeout passes; also the number of rows."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = usage_rows(client, user)
        billed = tally((u.model, u.prompt_tokens, u.completion_tokens) for u in rows)
        if billed == answered or time.monotonic() > deadline:
            return billed, len(rows)
        time.sleep(5)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values) or [0.0]
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 3)
