"""Grouped LoRA ops for vLLM's CPU punica wrapper: one matrix product per adapter in the batch.

vLLM CPU's own ops (vllm/lora/ops/torch_ops/lora_ops.py) gather one adapter matrix per token
(`weights[indices]`), which copies the weights once per token, and they index the "no adapter"
marker -1 as the last adapter slot, so base-model rows batched with adapter rows get an adapter
applied. These keep the same signatures and semantics but skip -1 rows (as vLLM's GPU kernels
do) and never copy weights per token:
- one adapter in the batch: one matrix product for the whole batch (with base rows: and a row
  mask);
- several, in a large batch (prefill): one matrix product per adapter over its rows;
- several, in a small batch (decode): one product against all slots stacked, keeping each row's
  own slot through a one-hot mask. It does slots-times the (tiny) arithmetic but a fixed handful
  of torch calls, where per-adapter grouping costs ~5 calls per adapter per op, and at decode
  sizes the calls, not the arithmetic, are the cost.
The products run in float32 and only the result is cast to the output's dtype: on CPUs without
native bf16 matrix instructions torch's bf16 GEMM for LoRA's thin shapes (K = rank, or N = rank)
is many times slower than fp32 (docs/benchmarks.md, inference (d)), which made LoRA most of a
decode step.
Pure torch: no vLLM import, so unit tests can compare them directly.
"""

from __future__ import annotations

from typing import Iterator

import torch

NO_LORA = -1
COMPUTE = torch.float32   # see the module docstring
# Up to this many rows x slots, a batch with several adapters takes the one-hot path.
DENSE_MAX_ROW_SLOTS = 2048


def _matrices(weights: torch.Tensor) -> torch.Tensor:
    # Stacked weights come as [num_loras, 1, out, in] or [num_loras, out, in].
    return weights.squeeze(1) if weights.dim() == 4 else weights


def _uniform(indices: torch.Tensor) -> int | None:
    """The one slot every row uses (NO_LORA included), or None when rows differ."""
    first = int(indices[0])
    return first if bool((indices == first).all()) else None


def _single(indices: torch.Tensor) -> int | None:
    """The one adapter slot of a batch that mixes it only with base rows (-1), else None:
    the common "a fine-tuned model and its base" traffic, done as one product and a row mask
    instead of the several-adapter paths (at decode sizes every torch call counts)."""
    top = int(indices.max())
    if top == NO_LORA or not bool(((indices == top) | (indices == NO_LORA)).all()):
        return None
    return top


def _dense(indices: torch.Tensor, slots: int) -> bool:
    return indices.shape[0] * slots <= DENSE_MAX_ROW_SLOTS


def _one_hot(indices: torch.Tensor, slots: int, dtype: torch.dtype) -> torch.Tensor:
    """[rows, slots]: 1 at each row's slot; rows without an adapter (-1) are all zero."""
    return (indices.unsqueeze(1) == torch.arange(slots, device=indices.device)).to(dtype)


def _adapter_rows(indices: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    """(adapter slot, its rows) for each adapter in a batch of several."""
    for slot in torch.unique(indices).tolist():
        if slot != NO_LORA:
            yield slot, (indices == slot).nonzero(as_tuple=True)[0]


def _product(inputs: torch.Tensor, rows, weight: torch.Tensor) -> torch.Tensor:
    return inputs[rows].to(COMPUTE) @ weight.to(COMPUTE).t()


# At decode sizes these ops are bound by the number of torch calls, not by arithmetic (one decode
# step makes ~400 of them), so the common case - one adapter, or none, for the whole batch - is
# decided once per call and done in as few calls as possible.

def bgmv_shrink(inputs: torch.Tensor, lora_a_weights: torch.Tensor,
                output_tensor: torch.Tensor, lora_indices_tensor: torch.Tensor,
                scaling: float = 1.0) -> None:
    """output[t, :r] = scaling * inputs[t] @ A[idx[t]].T; zero for rows without an adapter."""
    weights = _matrices(lora_a_weights)
    slots, rank = weights.shape[0], weights.shape[1]
    out = output_tensor[:, :rank]
    indices = lora_indices_tensor
    n = indices.shape[0]
    if n == 0:
        return
    first = _uniform(indices)
    if first is not None:
        if first == NO_LORA:
            out.zero_()
        else:
            out.copy_(torch.mm(inputs[:n].to(COMPUTE), weights[first].to(COMPUTE).t())
                      .mul_(scaling))
        return
    single = _single(indices)
    if single is not None:
        mask = (indices == single).to(COMPUTE).unsqueeze(1)
        out.copy_(torch.mm(inputs[:n].to(COMPUTE), weights[single].to(COMPUTE).t())
                  .mul_(mask).mul_(scaling))
        return
    if _dense(indices, slots):
        every = inputs[:n].to(COMPUTE) @ weights.to(COMPUTE).reshape(slots * rank, -1).t()
        mask = _one_hot(indices, slots, COMPUTE).unsqueeze(2)
        out.copy_(scaling * (every.view(n, slots, rank) * mask).sum(1))
        return
    out.zero_()  # rows without an adapter stay zero
    for slot, rows in _adapter_rows(indices):
        out[rows] = scaling * _product(inputs, rows, weights[slot])


def bgmv_expand(inputs: torch.Tensor, lora_b_weights: torch.Tensor,
                output_tensor: torch.Tensor, lora_indices_tensor: torch.Tensor,
                add_inputs: bool = True) -> None:
    """output[t, :n] (+)= inputs[t] @ B[idx[t]].T for rows with an adapter; others untouched."""
    weights = _matrices(lora_b_weights)
    common = min(weights.shape[1], output_tensor.shape[1])
    _expand_into(inputs, weights, output_tensor, lora_indices_tensor, 0, common, add_inputs)


def bgmv_expand_slice(inputs: torch.Tensor, lora_b_weights: torch.Tensor,
                      output_tensor: torch.Tensor, lora_indices_tensor: torch.Tensor,
                      slice_offset: int, slice_size: int, add_inputs: bool = True) -> None:
    weights = _matrices(lora_b_weights)
    _expand_into(inputs, weights, output_tensor, lora_indices_tensor, slice_offset, slice_size,
                 add_inputs)


def _expand_into(inputs, weights, output_tensor, indices, offset, size, add_inputs) -> None:
    n_out = output_tensor.shape[0]
    dtype = output_tensor.dtype
    if indices.shape[0] == 1 and n_out != 1:
        # One input row for many output rows: vLLM's op broadcasts it; keep that behaviour.
        slot = int(indices[0])
        if slot != NO_LORA:
            y = _product(inputs, slice(0, 1), weights[slot])[:, :size].to(dtype)
            target = output_tensor[:, offset:offset + size]
            target.add_(y) if add_inputs else target.copy_(y.expand_as(target))
        return
    indices = indices[:n_out]
    n = indices.shape[0]
    if n == 0:
        return
    target = output_tensor[:n, offset:offset + size]
    first = _uniform(indices)
    if first is not None:
        if first != NO_LORA:
            y = torch.mm(inputs[:n].to(COMPUTE), weights[first, :size].to(COMPUTE).t())
            target.add_(y) if add_inputs else target.copy_(y)
        return
    single = _single(indices)
    if single is not None:
        y = torch.mm(inputs[:n].to(COMPUTE), weights[single, :size].to(COMPUTE).t())
        applied = (indices == single).unsqueeze(1)
        if add_inputs:
            target.add_(y.mul_(applied))  # base rows add exact zeros
        else:
            target.copy_(torch.where(applied, y, target))
        return
    slots, out_features, rank = weights.shape
    if _dense(indices, slots):
        # Each row's rank-r input placed in its own slot's block, zero elsewhere (and for -1).
        spread = (_one_hot(indices, slots, COMPUTE).unsqueeze(2)
                  * inputs[:n, :rank].to(COMPUTE).unsqueeze(1)).reshape(n, slots * rank)
        stacked = weights[:, :size].to(COMPUTE).transpose(1, 2).reshape(slots * rank, size)
        y = spread @ stacked
        if add_inputs:
            target.add_(y)  # rows without an adapter add exact zeros
        else:
            target.copy_(torch.where((indices != NO_LORA).unsqueeze(1), y, target))
        return
    for slot, rows in _adapter_rows(indices):
        y = _product(inputs, rows, weights[slot, :size]).to(dtype)
        if add_inputs:
            output_tensor[rows, offset:offset + size] += y
        else:
            output_tensor[rows, offset:offset + size] = y


def sgmv_shrink(inputs, lora_a_weights, output_tensor, b_seq_start_loc, seq_len_tensor,
                lora_indices_tensor, batches, max_seq_length, token_nums, scaling) -> None:
    indices = torch.repeat_interleave(lora_indices_tensor, seq_len_tensor)
    bgmv_shrink(inputs, lora_a_weights, output_tensor, indices, scaling)


def sgmv_expand(inputs, lora_b_weights, output_tensor, b_seq_start_loc, seq_len_tensor,
                lora_indices_tensor, batches, max_seq_length, token_nums,
                add_inputs: bool = False) -> None:
    indices = torch.repeat_interleave(lora_indices_tensor, seq_len_tensor)
    bgmv_expand(inputs, lora_b_weights, output_tensor, indices, add_inputs)


def sgmv_expand_slice(inputs, lora_b_weights, output_tensor, b_seq_start_loc, seq_len_tensor,
                      lora_indices_tensor, batches, max_seq_length, token_nums, slice_offset,
                      slice_size, add_inputs: bool = False) -> None:
    indices = torch.repeat_interleave(lora_indices_tensor, seq_len_tensor)
    bgmv_expand_slice(inputs, lora_b_weights, output_tensor, indices, slice_offset, slice_size,
                      add_inputs)


OPS = {f.__name__: f for f in (bgmv_shrink, bgmv_expand, bgmv_expand_slice, sgmv_shrink,
                               sgmv_expand, sgmv_expand_slice)}
