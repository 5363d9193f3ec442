"""The metric families on a registry of the test's own: names, labels, help texts and the
throughput arithmetic."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.common.metrics import (
    HttpMetrics,
    InferenceMetrics,
    JobMetrics,
    JobStates,
    RpcMetrics,
    TrainingThroughput,
    exposition,
    new_registry,
)


def scrape(registry) -> dict[str, dict]:
    """name -> {labels tuple: value}, with each family's help under '_help'."""
    out: dict[str, dict] = {}
    for family in text_string_to_metric_families(exposition(registry).decode()):
        for sample in family.samples:
            out.setdefault(sample.name, {"_help": family.documentation})[
                tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_every_family_has_a_help_text():
    registry = new_registry()
    RpcMetrics(registry), HttpMetrics(registry), InferenceMetrics(registry)
    registry.register(JobMetrics(lambda: JobStates({}), ["PENDING"], TrainingThroughput()))
    families = list(text_string_to_metric_families(exposition(registry).decode()))
    assert len(families) >= 12
    assert all(f.documentation and f.name.startswith("finetune_") for f in families)


def test_two_registries_do_not_share_counts():
    a, b = new_registry(), new_registry()
    RpcMetrics(a).observe("/svc/M", "OK", 0.1)
    RpcMetrics(b)
    assert scrape(a)["finetune_grpc_requests_total"][(("code", "OK"), ("method", "/svc/M"))] == 1
    assert "finetune_grpc_requests_total" not in scrape(b)


def test_tokens_by_base_model_and_request_gauges():
    registry = new_registry()
    metrics = InferenceMetrics(registry)
    metrics.count_usage("base-a", 10, 3)
    metrics.count_usage("base-a", 5, 2)
    metrics.count_usage("base-b", 1, 1)
    held = {"admitted": 5, "engine": 3}
    metrics.watch_requests(lambda: held["admitted"], lambda: held["engine"])
    got = scrape(registry)
    assert got["finetune_prompt_tokens_total"][(("base_model", "base-a"),)] == 15
    assert got["finetune_completion_tokens_total"][(("base_model", "base-a"),)] == 5
    assert got["finetune_prompt_tokens_total"][(("base_model", "base-b"),)] == 1
    assert got["finetune_inference_queue_depth"][()] == 2
    assert got["finetune_inference_running_requests"][()] == 3
    held["engine"] = 7   # finished in the engine before the core released it: never negative
    assert scrape(registry)["finetune_inference_queue_depth"][()] == 0


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_throughput_is_tokens_between_reports_over_their_interval():
    clock = Clock()
    throughput = TrainingThroughput(clock)
    throughput.report("ft_1", 0)
    assert throughput.rates(["ft_1"]) == {}        # one report: no rate yet
    clock.now += 2
    throughput.report("ft_1", 1000)
    assert throughput.rates(["ft_1"]) == {"ft_1": pytest.approx(500)}
    clock.now += 3
    throughput.report("ft_1", 1000)                # a validation pass: no new tokens
    clock.now += 1
    throughput.report("ft_1", 1800)                # its time counts in the next rate
    assert throughput.rates(["ft_1"]) == {"ft_1": pytest.approx(200)}
    clock.now += 1
    throughput.report("ft_1", 400)                 # resumed from a checkpoint
    assert throughput.rates(["ft_1"]) == {}


def test_jobs_no_longer_running_are_forgotten():
    clock = Clock()
    throughput = TrainingThroughput(clock)
    for job in ("ft_1", "ft_2"):
        throughput.report(job, 0)
    clock.now += 1
    for job in ("ft_1", "ft_2"):
        throughput.report(job, 100)
    assert set(throughput.rates(["ft_1", "ft_2"])) == {"ft_1", "ft_2"}
    assert set(throughput.rates(["ft_2"])) == {"ft_2"}
    assert set(throughput.rates(["ft_1", "ft_2"])) == {"ft_2"}   # ft_1 starts over


def test_job_metrics_read_at_each_scrape():
    clock = Clock()
    throughput = TrainingThroughput(clock)
    throughput.report("ft_run", 0)
    clock.now += 4
    throughput.report("ft_run", 2000)
    states = JobStates({"PENDING": 2, "IN_PROGRESS": 1}, {"ft_run": "base-a"})
    registry = new_registry()
    registry.register(JobMetrics(lambda: states, ["PENDING", "IN_PROGRESS", "SUCCESS"],
                                 throughput))
    got = scrape(registry)
    assert {k: v for k, v in got["finetune_jobs"].items() if k != "_help"} == {
        (("state", "PENDING"),): 2, (("state", "IN_PROGRESS"),): 1, (("state", "SUCCESS"),): 0}
    assert got["finetune_training_tokens_per_second"][
        (("base_model", "base-a"), ("job_id", "ft_run"))] == 500
    states = JobStates({"SUCCESS": 3})
    assert "finetune_training_tokens_per_second" not in scrape(registry)
