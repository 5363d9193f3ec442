"""The LoRA kernel over a whole forward pass, as the engine calls it: the default model's 30
decoder layers x 4 LoRA layers, each with its own weights, so that (as in the engine) a pass
cannot run from the caches. Compares the kernel's weights kept in float32 and in bf16 (what it
keeps when the engine's weights are bf16), interleaved in one run, at decode (16 rows, one
adapter or 8) and prefill (256 rows over 8 adapters) sizes. One thread, as vLLM's engine calls
the kernel.

    .venv/bin/python -m benchmarks.inference.lora_kernel_layers [--rank 8] [--rounds 3]

Writes benchmarks/inference/results/lora_kernel_layers.json.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.inference.common import machine, write_result
from services.inference import lora_kernel, lora_ops

SLOTS = 8
DECODER_LAYERS = 30
# (in features, output slices) of the default model's LoRA layers: qkv, o, gate_up, down.
LAYER = ((576, (576, 192, 192)), (576, (576,)), (576, (1536, 1536)), (1536, (576,)))
WORKLOADS = {"16 rows, 1 adapter": [0] * 16, "16 rows, 8 adapters": [i % 8 for i in range(16)],
             "256 rows, 8 adapters": [i % 8 for i in range(256)]}


def forward_pass(rows: int, rank: int, weight_dtype: torch.dtype, seed: int = 0) -> list:
    """(y, x, weights) for every LoRA layer, the weights drawn in bf16 as vLLM holds them."""
    original = lora_kernel.weight_dtype
    lora_kernel.weight_dtype = lambda source: weight_dtype
    try:
        g = torch.Generator().manual_seed(seed)
        layers = []
        for _ in range(DECODER_LAYERS):
            for features, slices in LAYER:
                a = [(torch.randn(SLOTS, 1, rank, features, generator=g) * 0.05)
                     .to(torch.bfloat16) for _ in slices]
                b = [(torch.randn(SLOTS, 1, out, rank, generator=g) * 0.05).to(torch.bfloat16)
                     for out in slices]
                weights = lora_ops.FusedLoraWeights(a, b, slices, with_kernel=True)
                weights.refresh(tuple(range(1, SLOTS + 1)))
                layers.append((torch.randn(rows, sum(slices)).to(torch.bfloat16),
                               torch.randn(rows, features).to(torch.bfloat16), weights))
        return layers
    finally:
        lora_kernel.weight_dtype = original


def best_ms(kernel, plan, layers, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        for y, x, weights in layers:
            kernel.add(y, x, plan.kernel_rows, weights.kernel_layer, 1.0)
        times.append(time.perf_counter() - start)
    return round(min(times) * 1000, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    kernel = lora_kernel.load()
    if kernel is None:
        raise SystemExit("the LoRA kernel is not available here (no C compiler?)")
    results = {}
    for name, indices in WORKLOADS.items():
        plan = lora_ops.plan_step(torch.tensor(indices), SLOTS)
        passes = {str(dtype).removeprefix("torch."): forward_pass(len(indices), args.rank, dtype)
                  for dtype in (torch.float32, torch.bfloat16)}
        repeat = 10 if len(indices) > 100 else 30
        times: dict[str, list[float]] = {dtype: [] for dtype in passes}
        for _ in range(args.rounds):
            for dtype, layers in passes.items():
                times[dtype].append(best_ms(kernel, plan, layers, repeat))
        results[name] = {f"{dtype} weights, ms per pass": values
                         for dtype, values in times.items()}
        print(name, {dtype: min(values) for dtype, values in times.items()})
    write_result("lora_kernel_layers", {"benchmark": "lora_kernel_layers", "machine": machine(),
                                        "kernel_isa": kernel.isa, "rank": args.rank,
                                        "lora_layers": DECODER_LAYERS * len(LAYER),
                                        "results": results})


if __name__ == "__main__":
    main()
