"""The grouped CPU LoRA ops with their products in bf16 (the model's dtype: what they did before)
vs fp32 (what they do now), side by side in one run, on the default model's shapes.

    .venv/bin/python -m benchmarks.inference.lora_ops_dtype      # --rank 16 --slots 4 --rounds 5

One forward's worth of LoRA (30 layers x merged qkv with 3 slices, o, merged gate_up with 2
slices, down: shrink + expand per slice), one torch thread, for a batch that uses one adapter
and one that mixes base rows (-1) with an adapter, at decode (16 tokens) to prefill (512) sizes.
Also times the bare GEMM behind the difference. Writes results/lora_ops_dtype.json.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from benchmarks.inference.common import machine
from benchmarks.results import save
from services.inference import lora_ops

RESULTS = Path(__file__).resolve().parent / "results"
HIDDEN, INTERMEDIATE, LAYERS = 576, 1536, 30
# module: (input features, output slices)
MODULES = {"qkv": (HIDDEN, [576, 192, 192]), "o": (HIDDEN, [576]),
           "gate_up": (HIDDEN, [INTERMEDIATE, INTERMEDIATE]), "down": (INTERMEDIATE, [576])}


def forward_ms(tokens: int, mixed: bool, rank: int, slots: int, rounds: int) -> float:
    """Best of `rounds`: ms of LoRA work in one forward pass of the 30-layer model."""
    indices = torch.tensor([(0 if i % 2 else lora_ops.NO_LORA) if mixed else 0
                            for i in range(tokens)])
    per_layer = []
    for features, slices in MODULES.values():
        x = torch.randn(tokens, features, dtype=torch.bfloat16)
        a = torch.randn(slots, 1, rank, features, dtype=torch.bfloat16)
        bs = [torch.randn(slots, 1, size, rank, dtype=torch.bfloat16) for size in slices]
        shrunk = torch.zeros(tokens, rank, dtype=torch.float32)  # vLLM's buffer is fp32
        out = torch.zeros(tokens, sum(slices), dtype=torch.bfloat16)

        def module(x=x, a=a, bs=bs, shrunk=shrunk, out=out, slices=slices):
            offset = 0
            for b, size in zip(bs, slices):
                lora_ops.bgmv_shrink(x, a, shrunk, indices, 1.0)
                lora_ops.bgmv_expand_slice(shrunk, b, out, indices, offset, size, True)
                offset += size
        per_layer.append(module)
    for module in per_layer:  # warm-up
        module()
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for module in per_layer:
            module()
        best = min(best, time.perf_counter() - started)
    return best * LAYERS * 1e3


def gemm_ms(dtype: torch.dtype, rows: int, rounds: int) -> float:
    """An expand's product for 4 slots of rank 16 stacked: [rows, 64] x [64, 3072]."""
    x, w = torch.randn(rows, 64, dtype=dtype), torch.randn(64, 3072, dtype=dtype)
    x @ w
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        x @ w
        best = min(best, time.perf_counter() - started)
    return best * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--slots", type=int, default=4)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--output", type=Path, default=RESULTS / "lora_ops_dtype.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    load_start = os.getloadavg()
    rows = []
    for tokens in (16, 64, 512):
        for mixed in (False, True):
            row = {"tokens": tokens, "batch": "base + adapter" if mixed else "one adapter"}
            for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
                lora_ops.COMPUTE = dtype   # interleaved per shape, the same inputs' shapes
                row[f"{name}_ms"] = round(forward_ms(tokens, mixed, args.rank, args.slots,
                                                     args.rounds), 1)
            row["speedup"] = round(row["bf16_ms"] / row["fp32_ms"], 2)
            rows.append(row)
            print(row, flush=True)
    lora_ops.COMPUTE = torch.float32
    gemm = [{"rows": r, "bf16_ms": round(gemm_ms(torch.bfloat16, r, args.rounds), 3),
             "fp32_ms": round(gemm_ms(torch.float32, r, args.rounds), 3)} for r in (16, 512)]
    print(gemm)
    result = {"benchmark": "lora_ops_dtype", "machine": machine(),
              "load_average_start": [round(x, 2) for x in load_start],
              "load_average_end": [round(x, 2) for x in os.getloadavg()],
              "rank": args.rank, "slots": args.slots, "rounds": args.rounds,
              "forward": rows, "gemm": gemm}
    save(result, args.output)


if __name__ == "__main__":
    main()
