"""Code that runs inside vLLM's worker process (named by `worker_extension_cls`).

vLLM starts the engine core and its workers as spawned processes, so a patch applied in the
service's own process never reaches the model. The worker imports the extension class named in
the engine args before it loads the model; importing this module installs the grouped LoRA ops
and the fused punica wrapper that uses them (services/inference/punica_fused.py).
"""

from __future__ import annotations

import logging

from services.inference.config import requested_lora_path

log = logging.getLogger(__name__)

_installed = False


def install_grouped_lora_ops() -> None:
    """Replace vLLM CPU's punica torch ops with services.inference.lora_ops (idempotent)."""
    global _installed
    if _installed:
        return
    import vllm.lora.ops.torch_ops as torch_ops
    import vllm.lora.ops.torch_ops.lora_ops as torch_lora_ops
    import vllm.lora.punica_wrapper.punica_cpu as punica_cpu

    from services.inference.lora_ops import OPS

    # punica_cpu imported the functions by name, so its own module namespace is what counts.
    for module in (torch_lora_ops, torch_ops, punica_cpu):
        for name, op in OPS.items():
            if not hasattr(module, name):
                raise RuntimeError(f"{module.__name__}.{name} not found: vLLM changed its "
                                   "LoRA ops; update services/inference/lora_ops.py")
            setattr(module, name, op)
    _installed = True
    log.info("installed grouped LoRA ops in the vLLM CPU punica wrapper")


FUSED_PUNICA_WRAPPER = "services.inference.punica_fused.FusedPunicaWrapperCPU"


def install_fused_punica_wrapper() -> None:
    """Make vLLM CPU build the fused punica wrapper for the model's LoRA layers."""
    from vllm.platforms.cpu import CpuPlatform

    if not hasattr(CpuPlatform, "get_punica_wrapper"):
        raise RuntimeError("vllm.platforms.cpu.CpuPlatform.get_punica_wrapper not found: "
                           "vLLM changed how it picks the punica wrapper")
    CpuPlatform.get_punica_wrapper = classmethod(lambda cls: FUSED_PUNICA_WRAPPER)  # type: ignore[method-assign,assignment]
    log.info("the vLLM CPU platform builds %s", FUSED_PUNICA_WRAPPER)


def fused_punica_wrapper_active() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.get_punica_wrapper() == FUSED_PUNICA_WRAPPER)


def lora_path() -> str:
    """The CPU LoRA implementation this worker runs: `kernel` (punica_fused.py calling
    lora_kernel.py), `fused` (punica_fused.py with torch products), `per-op` (vLLM's punica
    wrapper calling the grouped ops) or `stock` (vLLM's own)."""
    if not grouped_lora_ops_active():
        return "stock"
    if not fused_punica_wrapper_active():
        return "per-op"
    from services.inference.punica_fused import kernel

    return "kernel" if kernel() is not None else "fused"


def grouped_lora_ops_active() -> bool:
    """Whether the CPU punica wrapper in this process calls the grouped ops."""
    import vllm.lora.punica_wrapper.punica_cpu as punica_cpu

    from services.inference.lora_ops import OPS

    return all(getattr(punica_cpu, name) is op for name, op in OPS.items())


class GroupedLoraOpsExtension:
    """Naming this class as vLLM's worker extension makes every worker import this module.

    Its method is callable through `AsyncLLM.collective_rpc("lora_path")`, so a test (or an
    operator) can check the patch really reached the worker processes.
    """

    def lora_path(self) -> str:
        return lora_path()


install_grouped_lora_ops()
# FINETUNE_LORA_PATH=per-op keeps vLLM's own punica wrapper over the grouped ops, and =fused
# the fused wrapper without the kernel: what the default (kernel) is measured against
# (benchmarks/inference/lora_mix.py), and ways back should a vLLM upgrade break it.
if requested_lora_path() != "per-op":
    install_fused_punica_wrapper()
