"""vLLM CPU's punica wrapper with every linear layer's LoRA done by the fused path of
services.inference.lora_ops (imports vLLM: only the engine's worker process loads it).

vLLM's own CPU wrapper applies a layer's LoRA as one shrink and one expand per slice (three
each for q/k/v, two for gate/up), each op deciding again which rows use which adapter. At
decode sizes those ~25 torch calls per layer, not arithmetic, were most of a step: with one
adapter, decode ran at 0.43x the base model. Here the step's plan is made once per batch
layout (`update_metadata`, which vLLM calls only when the mapping or the slot layout changes)
and each layer is one product each way against weights fused once per adapter load.

With the LoRA kernel (services/inference/lora_kernel.py, the default where it builds) a layer
is one call into C instead of one product each way; FINETUNE_LORA_PATH=fused keeps the torch
products.

Embedding and logits LoRA stay with the parent class, which calls the grouped ops installed by
services.inference.vllm_worker. vLLM wraps the logits processor whether or not any adapter
trains lm_head, and its B there is [slots, vocabulary, rank]: with no loaded adapter touching
lm_head (A all zero, checked once per slot layout) the logits step is skipped, where it cost
more than every other LoRA layer together with several adapters in the batch.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

from services.inference import lora_kernel
from services.inference.config import requested_lora_path
from services.inference.lora_ops import FusedLoraWeights, StepPlan, add_fused_lora, plan_step


def kernel() -> lora_kernel.LoraKernel | None:
    """The LoRA kernel this process's layers call, or None for the torch products."""
    if requested_lora_path() != "kernel":
        return None
    return lora_kernel.load()


class FusedPunicaWrapperCPU(PunicaWrapperCPU):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._plan = StepPlan(0)
        self._layout: tuple = ()
        self._weights: dict[int, FusedLoraWeights] = {}
        self._logits_checked: tuple | None = None
        self._logits_used = True
        self._kernel = kernel()

    def update_metadata(self, mapping: Any, lora_index_to_id: list[int | None], max_loras: int,
                        vocab_size: int, **kwargs: Any) -> None:
        super().update_metadata(mapping, lora_index_to_id, max_loras, vocab_size, **kwargs)
        layout = tuple(lora_index_to_id)
        if layout != self._layout:
            self._layout = layout   # a new object: every layer's weights refresh once
        self._plan = plan_step(self.token_lora_indices, len(layout))

    def add_lora_linear(self, y: torch.Tensor, x: torch.Tensor,
                        lora_a_stacked: tuple[torch.Tensor, ...],
                        lora_b_stacked: tuple[torch.Tensor, ...], scale: float,
                        output_slices: tuple[int, ...], *, buffer: Any = None,
                        **kwargs: Any) -> None:
        weights = self._weights.get(id(lora_a_stacked[0]))
        if weights is None or weights.source is not lora_a_stacked[0]:
            weights = FusedLoraWeights(lora_a_stacked, lora_b_stacked, output_slices,
                                       with_kernel=self._kernel is not None)
            self._weights[id(lora_a_stacked[0])] = weights
        weights.refresh(self._layout)
        add_fused_lora(y, x.view(-1, x.shape[-1]), weights, self._plan, scale, self._kernel)

    def add_lora_logits(self, y: torch.Tensor, x: torch.Tensor, lora_a_stacked: torch.Tensor,
                        lora_b_stacked: torch.Tensor, scale: Any, *, buffer: Any = None,
                        **kwargs: Any) -> None:
        if self._logits_checked is not self._layout:
            self._logits_used = bool(lora_a_stacked.ne(0).any())
            self._logits_checked = self._layout
        if self._logits_used:
            super().add_lora_logits(y, x, lora_a_stacked, lora_b_stacked, scale, buffer=buffer,
                                    **kwargs)
