"""Code that runs inside vLLM's worker process (named by `worker_extension_cls`).

vLLM starts the engine core and its workers as spawned processes, so a patch applied in the
service's own process never reaches the model. The worker imports the extension class named in
the engine args before it loads the model; importing this module installs the grouped LoRA ops.
"""

from __future__ import annotations

import logging

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


def grouped_lora_ops_active() -> bool:
    """Whether the CPU punica wrapper in this process calls the grouped ops."""
    import vllm.lora.punica_wrapper.punica_cpu as punica_cpu

    from services.inference.lora_ops import OPS

    return all(getattr(punica_cpu, name) is op for name, op in OPS.items())


class GroupedLoraOpsExtension:
    """Naming this class as vLLM's worker extension makes every worker import this module.

    Its method is callable through `AsyncLLM.collective_rpc("grouped_lora_ops_active")`, so a
    test (or an operator) can check the patch really reached the worker processes.
    """

    def grouped_lora_ops_active(self) -> bool:
        return grouped_lora_ops_active()


install_grouped_lora_ops()
