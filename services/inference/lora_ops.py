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

Those ops still make ~25 torch calls per LoRA layer (one shrink and one expand per slice, each
deciding its path again, each casting its weights to float32), and at decode sizes the calls
are the cost. `FusedLoraWeights`, `plan_step` and `add_fused_lora` are what the fused punica
wrapper (services/inference/punica_fused.py) uses instead for every linear layer: the
batch's adapter layout is decided once per step, and each layer's weights are cast once per
adapter load, its slices' A stacked into one matrix and trimmed to the largest rank actually
loaded: a layer is one product in and one per slice out, whatever its adapters.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Sequence

import torch

if TYPE_CHECKING:
    from services.inference.lora_kernel import LoraKernel

NO_LORA = -1
COMPUTE = torch.float32   # see the module docstring
# Up to this many rows x slots, a batch with several adapters takes the one-hot path.
DENSE_MAX_ROW_SLOTS = 2048
# Large row runs go in blocks of this many rows (see _chunked).
CHUNK_ROWS = 256


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


# --- The fused path -------------------------------------------------------------------------

Rows = slice | torch.Tensor


@dataclass
class StepPlan:
    """How one engine step applies LoRA, decided once from its per-token adapter slots.

    `slot` set: one adapter for the step (`row_mask` marks its rows when base rows share the
    batch). `one_hot` set: several adapters in a small step, one product against every slot.
    `groups` set: several adapters in a large step, one product per adapter over its rows.
    None of them: no row uses an adapter. `slot_of_row` and `order` (the rows sorted by slot)
    are what the kernel reads instead, whatever the case."""

    rows: int
    slot: int | None = None
    row_mask: torch.Tensor | None = None        # [rows, 1]
    one_hot: torch.Tensor | None = None         # [rows, slots]
    groups: tuple[tuple[int, Rows], ...] = ()
    slot_of_row: torch.Tensor | None = None     # [rows] int64
    order: torch.Tensor | None = None           # [rows] int64
    kernel_rows: tuple = ()                     # both as the kernel reads them, and rows
    _masks: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.slot_of_row is not None and self.order is not None:
            self.kernel_rows = (self.slot_of_row.data_ptr(), self.order.data_ptr(), self.rows)

    @property
    def idle(self) -> bool:
        return self.slot is None and self.one_hot is None and not self.groups

    def block_mask(self, slices: int, rank: int) -> torch.Tensor:
        """[rows, slices x slots x rank], in FusedLoraWeights.a_dense's order: 1 over the rank
        rows of each row's own slot, in every slice (cached; a step's layers have at most
        three slice counts)."""
        mask = self._masks.get((slices, rank))
        if mask is None:
            assert self.one_hot is not None
            mask = self.one_hot.repeat_interleave(rank, dim=1).repeat(1, slices)
            self._masks[slices, rank] = mask
        return mask


def plan_step(indices: torch.Tensor, slots: int) -> StepPlan:
    """The plan for a step whose token t uses adapter slot indices[t] (-1: the base model)."""
    rows = int(indices.shape[0])
    if rows == 0:
        return StepPlan(0)
    used = [s for s in torch.unique(indices).tolist() if s != NO_LORA]
    if not used:
        return StepPlan(rows)
    slot_of_row = indices.to(torch.int64).contiguous()
    order = torch.argsort(slot_of_row, stable=True)
    if len(used) == 1:
        applied = indices == used[0]
        mask = None if bool(applied.all()) else applied.to(COMPUTE).unsqueeze(1)
        return StepPlan(rows, slot=used[0], row_mask=mask, slot_of_row=slot_of_row,
                        order=order)
    if rows * slots <= DENSE_MAX_ROW_SLOTS:
        return StepPlan(rows, one_hot=_one_hot(indices, slots, COMPUTE),
                        slot_of_row=slot_of_row, order=order)
    return StepPlan(rows, groups=tuple(_runs_by_slot(indices)), slot_of_row=slot_of_row,
                    order=order)


def _runs_by_slot(indices: torch.Tensor) -> Iterator[tuple[int, Rows]]:
    """(slot, its rows) per adapter: a slice when its rows are one run (a prefill's requests
    usually are), else an index tensor."""
    values, counts = torch.unique_consecutive(indices, return_counts=True)
    starts: dict[int, list[tuple[int, int]]] = {}
    at = 0
    for value, count in zip(values.tolist(), counts.tolist(), strict=True):
        if value != NO_LORA:
            starts.setdefault(value, []).append((at, at + count))
        at += count
    for slot, runs in starts.items():
        if len(runs) == 1:
            yield slot, slice(*runs[0])
        else:
            yield slot, torch.cat([torch.arange(a, b) for a, b in runs])


def _rank_in_use(slices: Sequence[torch.Tensor]) -> int:
    """The highest nonzero rank row over one slot's A slices ([max_rank, in] each): vLLM pads
    every adapter with zero rows to the engine's max_lora_rank."""
    rank = 0
    for a in slices:
        nonzero = a.ne(0).any(dim=1).nonzero()
        if nonzero.numel():
            rank = max(rank, int(nonzero[-1]) + 1)
    return rank


class FusedLoraWeights:
    """One LoRA layer's adapter slots in float32, cast once per adapter load, its slices' A
    fused so the layer's shrink is one product:
      a        [slots, slices x rank, in]   one slot's rows, every slice stacked
      a_dense  [slices x slots x rank, in]  slice-major: all slots, for the one-hot path
      b[i]     [slots, rank, out_i]         per slice (a block-diagonal B would read 2-3x the
                                            bytes, and at decode the products are bound by
                                            the bytes of weight they read)
      a_t      [slots, in, >= slices x rank] `a` transposed and zero-padded to the kernel's
                                            vector width (with_kernel only), and b_kernel:
                                            both in bf16 where vLLM's weights are (the same
                                            values), else float32

    `rank` is the largest rank loaded, not the engine's max_lora_rank (64 by default, where
    adapters are usually 8-16). `refresh` rewrites only the slots whose adapter changed, when
    the slot layout (vLLM's lora_index_to_id: an adapter id never names other weights) does."""

    def __init__(self, a_stacked: Sequence[torch.Tensor], b_stacked: Sequence[torch.Tensor],
                 output_slices: Sequence[int], with_kernel: bool = False):
        self.a_stacked = tuple(_matrices(a) for a in a_stacked)    # [slots, max_rank, in]
        self.b_stacked = tuple(_matrices(b) for b in b_stacked)    # [slots, out_i, max_rank]
        self.source = a_stacked[0]
        self.output_slices = tuple(output_slices)
        self.slots = self.a_stacked[0].shape[0]
        self.layout: tuple | None = None
        self.ids: list = [None] * self.slots
        self.rank = 0
        self.a = self.a_dense = torch.zeros(0)
        self.b: tuple[torch.Tensor, ...] = ()
        self.with_kernel = with_kernel
        self.a_t = torch.zeros(0)
        self.b_kernel: tuple[torch.Tensor, ...] = ()   # b as the kernel reads it (a_t's dtype)
        # The kernel's view of b and the slices' sizes, as C arrays (kept alive here), and the
        # layer's arguments to it.
        self.b_pointers = (ctypes.c_void_p * 0)()
        self.out_sizes = (ctypes.c_int64 * len(self.output_slices))(*self.output_slices)
        self.kernel_layer: tuple = ()

    def refresh(self, layout: tuple) -> None:
        if layout is self.layout:
            return
        ids = [layout[s] if s < len(layout) else None for s in range(self.slots)]
        changed = [s for s in range(self.slots) if ids[s] != self.ids[s]]
        rank = max([self.rank] + [_rank_in_use([a[s] for a in self.a_stacked])
                                  for s in changed])
        if rank != self.rank or not self.b:
            slices, features = len(self.a_stacked), self.a_stacked[0].shape[2]
            self.rank = rank
            self.a = torch.zeros(self.slots, slices * rank, features, dtype=COMPUTE)
            self.a_dense = torch.zeros(slices * self.slots * rank, features, dtype=COMPUTE)
            self.b = tuple(torch.zeros(self.slots, rank, size, dtype=COMPUTE)
                           for size in self.output_slices)
            if self.with_kernel:
                self._allocate_kernel_weights(slices, rank, features)
            changed = list(range(self.slots))
        for slot in changed:
            self._fill(slot)
        self.layout, self.ids = layout, ids

    def _fill(self, slot: int) -> None:
        r = self.rank
        for i, (a, b, size, fused_b) in enumerate(zip(self.a_stacked, self.b_stacked,
                                                      self.output_slices, self.b, strict=True)):
            self.a[slot, i * r:(i + 1) * r].copy_(a[slot, :r])
            dense_at = (i * self.slots + slot) * r
            self.a_dense[dense_at:dense_at + r].copy_(a[slot, :r])
            fused_b[slot].copy_(b[slot, :size, :r].t())
        if self.with_kernel:
            self.a_t[slot, :, :self.a.shape[1]].copy_(self.a[slot].t())
            if self.b_kernel is not self.b:
                for fused_b, kernel_b in zip(self.b, self.b_kernel, strict=True):
                    kernel_b[slot].copy_(fused_b[slot])

    def _allocate_kernel_weights(self, slices: int, rank: int, features: int) -> None:
        from services.inference.lora_kernel import layer_arguments, padded, weight_dtype

        dtype = weight_dtype(self.a_stacked[0].dtype)
        self.a_t = torch.zeros(self.slots, features, padded(slices * rank), dtype=dtype)
        self.b_kernel = self.b if dtype == COMPUTE else tuple(b.to(dtype) for b in self.b)
        self.b_pointers = (ctypes.c_void_p * slices)(*(b.data_ptr() for b in self.b_kernel))
        self.kernel_layer = layer_arguments(self.a_t, slices, rank, self.b_pointers,
                                            self.out_sizes)


def add_fused_lora(y: torch.Tensor, x: torch.Tensor, weights: FusedLoraWeights,
                   plan: StepPlan, scale: float = 1.0,
                   kernel: LoraKernel | None = None) -> None:
    """y[t] += scale * x[t] @ A[slot(t)].T @ B[slot(t)].T for the plan's rows with an adapter
    (rows without one add exact zeros, or nothing).

    In float32 whatever the engine's dtype, cast once when added to y: no path adds a rounding
    step of its own, so the paths agree to float32's last bit (BLAS itself may round a row
    differently with the number of rows beside it: docs/benchmarks.md, inference (g)). bf16
    products were 1.5-3x faster at prefill sizes on a CPU with AVX512-BF16 but 2.5x slower at
    decode sizes, where each bf16 call costs ~20 us against ~6 in float32, and using them for
    large steps only would round a request differently by the size of its step.

    With `kernel` (services/inference/lora_kernel.py; `weights` built with_kernel) the layer is
    one call to it when it takes these tensors, and each row is then summed in one fixed order
    whatever its batch."""
    if plan.idle or weights.rank == 0:
        return
    if kernel is not None and weights.kernel_layer and plan.kernel_rows \
            and kernel.add(y, x, plan.kernel_rows, weights.kernel_layer, scale):
        return
    n, r = plan.rows, weights.rank
    xs = x[:n].to(COMPUTE)
    target = y[:n]
    if plan.one_hot is not None:
        block = weights.slots * r
        h = torch.mm(xs, weights.a_dense.t())
        h.mul_(plan.block_mask(len(weights.b), r))
        _expand(target, h, [b.view(block, -1) for b in weights.b], weights.output_slices,
                block, scale)
        return
    groups = plan.groups or ((plan.slot, slice(None)),)
    for slot, rows in _chunked(groups, n):
        h = torch.mm(xs[rows], weights.a[slot].t())
        if plan.row_mask is not None:
            h.mul_(plan.row_mask[rows])
        b = [fused[slot] for fused in weights.b]
        if isinstance(rows, slice):
            _expand(target[rows], h, b, weights.output_slices, r, scale)
        else:
            part = target.index_select(0, rows)
            _expand(part, h, b, weights.output_slices, r, scale)
            target.index_copy_(0, rows, part)


def _chunked(groups, n: int):
    """Large row runs in blocks of CHUNK_ROWS: a block's float32 products stay in cache until
    they are added to y (a 1024-row gate_up product is 12 MiB). A one-adapter prefill of 1024
    tokens in a bf16 engine took 228 ms of LoRA per forward in blocks of 256 rows, 356 ms in
    one block (docs/benchmarks.md, inference (a))."""
    for slot, rows in groups:
        if not isinstance(rows, slice):
            yield slot, rows
            continue
        start, stop, _ = rows.indices(n)
        for at in range(start, stop, CHUNK_ROWS):
            yield slot, slice(at, min(at + CHUNK_ROWS, stop))


def _expand(target: torch.Tensor, h: torch.Tensor, b: Sequence[torch.Tensor],
            output_slices: Sequence[int], block: int, scale: float) -> None:
    """target[:, slice i] += scale * h[:, block i] @ b[i], for each slice: accumulated in
    place when the target is float32, else computed in float32 and added (cast once)."""
    if scale != 1.0:
        h.mul_(scale)
    in_place = target.dtype == COMPUTE
    offset = 0
    for i, (weights, size) in enumerate(zip(b, output_slices, strict=True)):
        out, part = target[:, offset:offset + size], h[:, i * block:(i + 1) * block]
        out.addmm_(part, weights) if in_place else out.add_(torch.mm(part, weights))
        offset += size
