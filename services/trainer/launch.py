"""The driver side of training: size the worker group from the cluster and run the TorchTrainer."""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass
from typing import Mapping, Sequence

from services.common.errors import FinetuneError
from services.trainer.config import TrainerConfig
from services.trainer.data import Example
from services.trainer.recipe import RecipeConfig
from services.trainer.spec import JobSpec

log = logging.getLogger(__name__)

# How often Ray Train's controller polls the workers (Ray's default is 2 s): the job's end is
# noticed one interval after the last worker returns. A poll is one small RPC per worker.
HEALTH_CHECK_INTERVAL_S = 0.5


@dataclass(frozen=True)
class WorkerPlan:
    num_workers: int
    use_gpu: bool
    cpus_per_worker: int

    @property
    def backend(self) -> str:
        """torch.distributed backend: NCCL between GPUs, gloo between CPU processes."""
        return "nccl" if self.use_gpu else "gloo"


def plan_workers(requested: int, batch_size: int, cluster: Mapping[str, float],
                 node_cpus: Sequence[float]) -> WorkerPlan:
    """One GPU per worker where the cluster has GPUs; else CPU workers that share the CPUs.

    The worker count is capped by what the cluster has, so a job never waits for resources
    that do not exist, and by the batch size, since a worker without examples in a step would
    only idle. A CPU worker gets an equal share of the CPUs (its torch threads), at most one
    node's worth so that it can be placed.
    """
    requested = max(1, min(requested, batch_size))
    gpus = int(cluster.get("GPU", 0))
    if gpus > 0:
        return WorkerPlan(max(1, min(requested, gpus)), True, 1)
    cpus = int(cluster.get("CPU", 0))
    workers = max(1, min(requested, cpus))
    share = max(1, cpus // workers)
    largest = int(max(node_cpus, default=share))
    return WorkerPlan(workers, False, max(1, min(share, largest)))


def run_training(spec: JobSpec, train: Sequence[Example], validation: Sequence[Example],
                 pad_id: int, config: TrainerConfig):
    """Run the TorchTrainer to the end; returns Ray Train's Result: the last checkpoint, and
    rank 0's return value (the final metrics and status)."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if not ray.is_initialized():
        ray.init()  # inside a Ray job RAY_ADDRESS names the cluster
    # Ray Train hands this on from the driver's environment to its controller; an operator's
    # own setting is kept.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", str(HEALTH_CHECK_INTERVAL_S))
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    plan = plan_workers(spec.options.num_workers, spec.options.batch_size,
                        ray.cluster_resources(),
                        [n.get("Resources", {}).get("CPU", 0) for n in nodes])
    if plan.num_workers != spec.options.num_workers:
        log.warning("using %d of the %d workers asked for (cluster size, batch size)",
                    plan.num_workers, spec.options.num_workers)
    log.info("job %s: %d %s workers, %d CPUs each", spec.job_id, plan.num_workers,
             "GPU" if plan.use_gpu else "CPU", plan.cpus_per_worker)

    from services.trainer.workers import train_loop_per_worker

    recipe_config = RecipeConfig(spec=spec, pad_id=pad_id, precision=config.precision,
                                 precision_cache=config.precision_cache,
                                 micro_batch_tokens=config.micro_batch_tokens,
                                 eager_attention_max_len=config.eager_attention_max_len,
                                 threads=None if plan.use_gpu else plan.cpus_per_worker)
    trainer = TorchTrainer(
        # Ray's annotation says None, but rank 0's return value is the Result's return_value.
        train_loop_per_worker,  # type: ignore[arg-type]
        train_loop_config={
            "recipe": recipe_config,
            # Tokenized once by the driver; workers read the same arrays from the object store.
            "train": ray.put(list(train)),
            "validation": ray.put(list(validation)),
            "service_token": config.service_token,
        },
        scaling_config=ScalingConfig(num_workers=plan.num_workers, use_gpu=plan.use_gpu,
                                     resources_per_worker={"CPU": plan.cpus_per_worker}),
        torch_config=TorchConfig(backend=plan.backend),
        run_config=RunConfig(
            name=spec.job_id,
            storage_path=spec.checkpoint_uri,
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
        ),
    )
    return trainer.fit()


def describe_failure(exc: BaseException) -> str:
    """One readable line for a training failure (control shows it as the job's error)."""
    failures = getattr(exc, "worker_failures", None)
    if failures:
        rank, cause = sorted(failures.items())[0]
        return f"worker {rank}: {_root_message(cause)}"
    cause = getattr(exc, "controller_failure", None)
    return _root_message(cause if cause is not None else exc)


# What a full disk or an exhausted quota says, as errno and as text (Ray and pyarrow rewrap
# the OSError, and only its text may reach here).
_FULL = {errno.ENOSPC: "No space left on device", errno.EDQUOT: "Disk quota exceeded"}


def _full_disk(exc: BaseException) -> str | None:
    reason = _FULL.get(getattr(exc, "errno", None) or 0) or next(
        (text for text in _FULL.values() if text in str(exc)), None)
    if reason is None:
        return None
    filename = getattr(exc, "filename", None)
    where = f" writing {filename}" if filename else ""
    return (f"the artifact store is full ({reason}){where}: free space or raise its quota, "
            "then create the job again")


def _root_message(exc: BaseException) -> str:
    while True:
        inner = getattr(exc, "cause", None) or exc.__cause__
        if inner is None or inner is exc:
            break
        exc = inner
    if isinstance(exc, FinetuneError):
        return exc.message
    if full := _full_disk(exc):
        return full
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1].strip() if lines else ''}".rstrip(": ")
