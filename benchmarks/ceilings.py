#!/usr/bin/env python3
"""Measure this machine's ceilings with PyTorch, so benchmark results can be stated as a fraction
of what the hardware does: matrix-product rate (fp32 and bf16, square and the default model's
shapes) and memory bandwidth. Run it in the same run as a benchmark; numbers drift between runs.

    .venv/bin/python -m benchmarks.ceilings   # prints a table; the last line is machine-readable JSON
"""
import json
import time

import torch


def _seconds(fn, repeat=5):
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def measure(verbose: bool = True) -> dict:
    """GFLOP/s per dtype and shape, and bandwidth; prints a table when `verbose`."""
    torch.manual_seed(0)
    shapes = {"square-2048": (2048, 2048, 2048), "qkv-like 2048x576x1536": (2048, 576, 1536),
              "mlp-down 2048x1536x576": (2048, 1536, 576), "lm-head 2048x576x49152": (2048, 576, 49152)}
    result = {"threads": torch.get_num_threads()}
    for dtype in (torch.float32, torch.bfloat16):
        for name, (m, k, n) in shapes.items():
            a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
            gflops = 2 * m * k * n / _seconds(lambda: a @ b) / 1e9
            key = f"{str(dtype).removeprefix('torch.')} {name}"
            result[key + " GFLOP/s"] = round(gflops, 1)
            if verbose:
                print(f"{key:36s} {gflops:8.1f} GFLOP/s")
    x = torch.rand(256 * 1024 * 1024 // 4)
    y = torch.empty_like(x)
    read = x.numel() * 4 / _seconds(lambda: x.sum()) / 1e9
    copy = 2 * x.numel() * 4 / _seconds(lambda: y.copy_(x)) / 1e9
    result["read GB/s"], result["copy GB/s"] = round(read, 1), round(copy, 1)
    if verbose:
        print(f"{'read bandwidth':36s} {read:8.1f} GB/s\n"
              f"{'copy bandwidth (read+write)':36s} {copy:8.1f} GB/s")
    return result


def model_shapes_rate(result: dict, dtype: str) -> float:
    """The mean GFLOP/s of the default model's own shapes (not the square or LM-head ones)."""
    rates = [v for k, v in result.items()
             if k.startswith(f"{dtype} ") and ("qkv" in k or "mlp" in k)]
    return sum(rates) / len(rates)


def main():
    print(json.dumps(measure()))


if __name__ == "__main__":
    main()
