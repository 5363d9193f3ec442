"""The worker side on Ray Train: the WorkerContext over Ray Train + torch.distributed, and the
function each TorchTrainer worker runs."""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn

from services.common.artifacts import ArtifactStore
from services.common.errors import FailedPrecondition
from services.trainer import recipe, reporting

log = logging.getLogger(__name__)


class RayWorkerContext:
    def __init__(self):
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.device = ray.train.torch.get_device()

    def wrap(self, module: nn.Module) -> nn.Module:
        import ray.train.torch

        if self.world_size == 1:
            return module
        # Every worker loads the same frozen base weights from disk: DDP need not broadcast them
        # (135M parameters) at start, nor the buffers (rotary tables) on every forward.
        frozen = [n for n, p in module.named_parameters() if not p.requires_grad]
        buffers = [n for n, _ in module.named_buffers()]
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            module, frozen + buffers)
        return ray.train.torch.prepare_model(module, move_to_device=False)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return tensor
        on_device = tensor.to(self.device)  # nccl reduces CUDA tensors only
        dist.all_reduce(on_device, op=dist.ReduceOp.SUM)
        return on_device.cpu()

    @contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as folder:
            yield Path(folder)

    def report(self, metrics: dict, checkpoint_dir: Path | None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) \
            if checkpoint_dir is not None else None
        ray.train.report(metrics, checkpoint=checkpoint)


def train_loop_per_worker(config: dict) -> dict:
    """What TorchTrainer runs on each worker (`config` comes from `launch.run_training`).

    Returns the final metrics; rank 0's reach the driver as Result.return_value."""
    import ray

    _log_to_stderr()
    cfg: recipe.RecipeConfig = config["recipe"]
    ctx = RayWorkerContext()
    train_examples = ray.get(config["train"])
    validation_examples = ray.get(config["validation"])
    reporter: reporting.ProgressSink = reporting.NullReporter()
    if ctx.rank == 0:
        reporter = reporting.connect(cfg.spec.control_address, config["service_token"],
                                     cfg.spec.job_id)
    try:
        with _adapter_copy(cfg) as adapter_dir:
            if adapter_dir:
                cfg = dataclasses.replace(cfg, adapter_dir=str(adapter_dir))
            return recipe.train(cfg, train_examples, validation_examples, ctx, reporter)
    finally:
        reporter.close()


@contextmanager
def _adapter_copy(cfg: recipe.RecipeConfig) -> Iterator[Path | None]:
    """A local copy of the adapter to continue training from, if the job names one."""
    if not cfg.spec.from_adapter_uri:
        yield None
        return
    # Downloaded on every worker's own node: nothing says the nodes share a disk with control.
    with tempfile.TemporaryDirectory(prefix="ft-adapter-") as tmp:
        store = ArtifactStore(cfg.spec.artifact_root)
        try:
            folder = store.get_dir(cfg.spec.from_adapter_uri, tmp)
        except FileNotFoundError:
            raise FailedPrecondition(
                f"the adapter to continue from, {cfg.spec.from_adapter_uri}, has no files") \
                from None
        yield folder


def _log_to_stderr() -> None:
    # Ray's worker log handlers sit on the root logger; only the level needs raising.
    logger = logging.getLogger("services")
    logger.setLevel(logging.INFO)
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
