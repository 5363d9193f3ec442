"""Prometheus metrics: one registry per process, and the metric families recorded into it.

Nothing registers at import time: a service builds a `CollectorRegistry` when it starts and hands
the families below to the parts that record (unit tests build their own registry). The names and
help texts are listed in docs/openai.md; keep the two in step.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import generate_latest as _generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

# Seconds, from a cached model resolution to a long completion or a slow training query.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0, 300.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


def new_registry() -> CollectorRegistry:
    return CollectorRegistry()


def exposition(registry: CollectorRegistry) -> bytes:
    """The registry in Prometheus' text format (collectors that read a database run here)."""
    return _generate_latest(registry)


class RpcMetrics:
    """gRPC requests by method and status code, with their latency (see MetricsInterceptor)."""

    def __init__(self, registry: CollectorRegistry):
        self.requests = Counter(
            "finetune_grpc_requests", "gRPC requests handled, by full method name and status "
            "code", ["method", "code"], registry=registry)
        self.latency = Histogram(
            "finetune_grpc_request_duration_seconds", "Time from a gRPC request's arrival to "
            "its answer (a stream's last message), by full method name", ["method"],
            buckets=LATENCY_BUCKETS, registry=registry)

    def observe(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method, code).inc()
        self.latency.labels(method).observe(seconds)


class HttpMetrics:
    """HTTP requests by method, route template and status code, with their latency."""

    def __init__(self, registry: CollectorRegistry):
        self.requests = Counter(
            "finetune_http_requests", "HTTP requests handled, by method, route template and "
            "status code", ["method", "route", "code"], registry=registry)
        self.latency = Histogram(
            "finetune_http_request_duration_seconds", "Time from an HTTP request's arrival to "
            "the end of its response (a stream's last event), by method and route template",
            ["method", "route"], buckets=LATENCY_BUCKETS, registry=registry)

    def observe(self, method: str, route: str, code: int, seconds: float) -> None:
        self.requests.labels(method, route, str(code)).inc()
        self.latency.labels(method, route).observe(seconds)


class InferenceMetrics:
    """What an inference process counts: tokens, adapters, and the requests it holds."""

    def __init__(self, registry: CollectorRegistry):
        self.prompt_tokens = Counter(
            "finetune_prompt_tokens", "Prompt tokens of finished completions (as the engine "
            "saw them and usage recorded them), by base model", ["base_model"],
            registry=registry)
        self.completion_tokens = Counter(
            "finetune_completion_tokens", "Completion tokens generated for finished "
            "completions, by base model", ["base_model"], registry=registry)
        self.adapters_loaded = Counter(
            "finetune_adapters_loaded", "Adapter versions fetched and validated for the "
            "engine (once per version and process)", registry=registry)
        self.adapters_failed_validation = Counter(
            "finetune_adapters_failed_validation", "Adapter versions refused by validation "
            "before the engine saw them", registry=registry)
        self.adapters_evicted = Counter(
            "finetune_adapters_evicted", "Adapters the engine dropped from memory (least "
            "recently used beyond --max-cpu-loras), seen by sampling its resident set",
            registry=registry)
        self.adapters_resident = Gauge(
            "finetune_adapters_resident", "Adapters the engine holds in memory",
            registry=registry)
        self.queue_depth = Gauge(
            "finetune_inference_queue_depth", "Requests admitted and not yet in the engine "
            "(resolving the model, fetching its adapter, rendering the prompt)",
            registry=registry)
        self.running_requests = Gauge(
            "finetune_inference_running_requests", "Requests in the vLLM engine (generating, or "
            "waiting in its scheduler for a batch slot)", registry=registry)

    def count_usage(self, base_model: str, prompt_tokens: int, completion_tokens: int) -> None:
        self.prompt_tokens.labels(base_model).inc(prompt_tokens)
        self.completion_tokens.labels(base_model).inc(completion_tokens)

    def watch_requests(self, admitted: Callable[[], int], in_engine: Callable[[], int]) -> None:
        """Read the request gauges at each scrape: `admitted` counts every request the service
        holds (what --max-queued-requests caps), `in_engine` those the engine holds."""
        self.running_requests.set_function(lambda: float(in_engine()))
        self.queue_depth.set_function(lambda: float(max(0, admitted() - in_engine())))


class TrainingThroughput:
    """Training tokens per second of each running job, from the trainer's successive progress
    reports (their trained_tokens are cumulative). Reports without new tokens (a validation
    pass, a milestone) keep the last rate; the time they took counts in the next one."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()   # fed on the event loop, read by scrapes in a thread
        self._last: dict[str, tuple[float, int]] = {}
        self._rates: dict[str, float] = {}

    def report(self, job_id: str, trained_tokens: int) -> None:
        now = self._clock()
        with self._lock:
            previous = self._last.get(job_id)
            if previous is not None and trained_tokens == previous[1]:
                return
            if previous is not None and trained_tokens > previous[1] and now > previous[0]:
                self._rates[job_id] = (trained_tokens - previous[1]) / (now - previous[0])
            elif previous is not None:   # fewer tokens: the run resumed from a checkpoint
                self._rates.pop(job_id, None)
            self._last[job_id] = (now, trained_tokens)

    def rates(self, running: Iterable[str]) -> dict[str, float]:
        """The rates of the `running` jobs that have one; jobs no longer running are forgotten."""
        running = set(running)
        with self._lock:
            for job_id in set(self._last) - running:
                self._last.pop(job_id, None)
                self._rates.pop(job_id, None)
            return {job_id: rate for job_id, rate in self._rates.items() if job_id in running}


@dataclass(frozen=True)
class JobStates:
    """Jobs as the metadata DB holds them now: a count per state, and the running ones."""

    counts: Mapping[str, int]
    running: Mapping[str, str] = field(default_factory=dict)   # job id -> base model


class JobMetrics:
    """A collector of control's job metrics, read from the metadata DB at each scrape (so
    every control replica reports the same, and a restart loses nothing)."""

    def __init__(self, read: Callable[[], JobStates], states: Iterable[str],
                 throughput: TrainingThroughput):
        self._read = read
        self._states = tuple(states)
        self._throughput = throughput

    def collect(self) -> Iterator[Metric]:
        jobs = self._read()
        by_state = GaugeMetricFamily("finetune_jobs", "Fine-tuning jobs by state",
                                     labels=["state"])
        for state in self._states:
            by_state.add_metric([state], jobs.counts.get(state, 0))
        yield by_state
        tokens = GaugeMetricFamily(
            "finetune_training_tokens_per_second", "Training tokens per second of each running "
            "job, between its last two progress reports", labels=["job_id", "base_model"])
        for job_id, rate in sorted(self._throughput.rates(jobs.running).items()):
            tokens.add_metric([job_id, jobs.running[job_id]], rate)
        yield tokens
