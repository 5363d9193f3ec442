"""Where a decode step's time goes with LoRA: one process, engines in-process, variants
interleaved round by round.

    .venv/bin/python -m benchmarks.inference.decode_split [--rounds 7] [--steps 64]

Two vLLM engines in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0): the base model without
LoRA support, and the service's engine with the fused punica wrapper and the LoRA kernel. 16
requests decode `--steps` tokens each (8-token prompts, EOS ignored), as:
  plain engine              the base model on the engine without LoRA support (the ceiling)
  base on the LoRA engine   base-model requests on the LoRA engine (vLLM's LoRA layers idle)
  ..., LoRA add skipped     adapter requests with the fused wrapper's add_lora_linear a no-op:
                            vLLM's LoRA layers and bookkeeping without any LoRA arithmetic
  ..., float32 weights      the kernel with its weights kept in float32 instead of bf16
  1 adapter / 8 mixed       the service as it runs
The differences between rows split the step: what the LoRA engine costs base requests, what
vLLM's LoRA layers cost, and what the LoRA work itself costs.

Writes benchmarks/inference/results/decode_split.json.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"   # the engines run in this process

from benchmarks.inference.common import (  # noqa: E402
    base_model,
    engine_config,
    machine,
    random_adapter,
    write_result,
)
from services.inference.engine import engine_arguments  # noqa: E402

VARIANTS = ("plain engine", "base on the LoRA engine",
            "1 adapter, LoRA add skipped", "1 adapter, float32 weights", "1 adapter",
            "8 mixed, LoRA add skipped", "8 mixed, float32 weights", "8 mixed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()

    import torch
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    import services.inference.vllm_worker  # noqa: F401 - installs the fused wrapper here
    from services.inference import lora_kernel, punica_fused

    tmp = Path(tempfile.mkdtemp(prefix="decode-split-"))
    base = base_model()
    lora_args = engine_arguments(engine_config(base, tmp), args.dtype, on_cpu=True)
    lora_args.pop("worker_extension_cls")   # imported above, in this process
    plain_args = {k: v for k, v in lora_args.items()
                  if k not in ("max_loras", "max_cpu_loras", "max_lora_rank")}
    plain = LLM(**{**plain_args, "enable_lora": False})
    llm = LLM(**lora_args)
    gc.unfreeze()   # vLLM freezes its start-up objects, which hides them from get_objects
    wrappers = [o for o in gc.get_objects() if isinstance(o, punica_fused.FusedPunicaWrapperCPU)]
    gc.freeze()
    adapters = [LoRARequest(f"a{i}", i + 1, str(random_adapter(base, tmp / f"a{i}", seed=i,
                                                                 rank=args.rank)))
                for i in range(8)]
    sampling = SamplingParams(max_tokens=args.steps, ignore_eos=True, temperature=0)
    prompts = [{"prompt_token_ids": [100 + i, 200, 300, 400, 500, 600, 700, 800]}
               for i in range(16)]
    add = punica_fused.FusedPunicaWrapperCPU.add_lora_linear
    weight_dtype = lora_kernel.weight_dtype
    current = {"float32": None}

    def kernel_weights(float32: bool) -> None:
        """Switch the kernel's weight dtype: every layer's fused weights are rebuilt."""
        if current["float32"] is float32:
            return
        lora_kernel.weight_dtype = (lambda source: torch.float32) if float32 else weight_dtype
        for wrapper in wrappers:
            wrapper._weights.clear()
        current["float32"] = float32

    def run(variant: str):
        punica_fused.FusedPunicaWrapperCPU.add_lora_linear = \
            (lambda *a, **k: None) if variant.endswith("skipped") else add
        kernel_weights(variant.endswith("float32 weights"))
        if variant == "plain engine":
            return plain.generate(prompts, sampling, use_tqdm=False)
        if variant == "base on the LoRA engine":
            return llm.generate(prompts, sampling, use_tqdm=False)
        loras = [adapters[0]] * 16 if variant.startswith("1 adapter") else \
            [adapters[i % 8] for i in range(16)]
        return llm.generate(prompts, sampling, lora_request=loras, use_tqdm=False)

    for variant in VARIANTS:   # warm-up: every adapter loaded, every path built once
        run(variant)
    load_before = os.getloadavg()
    ms: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    for _ in range(args.rounds):
        for variant in VARIANTS:
            start = time.perf_counter()
            run(variant)
            ms[variant].append(round((time.perf_counter() - start) / args.steps * 1000, 2))
    ceiling = statistics.median(ms["plain engine"])
    summary = {variant: {"median_ms_per_step": statistics.median(values),
                         "min_ms_per_step": min(values),
                         "plain_over_this_median": round(ceiling / statistics.median(values), 3),
                         "ms_per_step": values}
               for variant, values in ms.items()}
    for variant, row in summary.items():
        print(f"{variant:30s} median {row['median_ms_per_step']:6.2f}  min "
              f"{row['min_ms_per_step']:6.2f}  ratio {row['plain_over_this_median']:.3f}")
    write_result("decode_split", {
        "benchmark": "decode_split",
        "machine": {**machine(), "load_average_before": [round(x, 2) for x in load_before]},
        "dtype": args.dtype, "rank": args.rank, "requests": len(prompts), "steps": args.steps,
        "kernel_isa": kernel.isa if (kernel := lora_kernel.load()) else None,
        "variants": summary})


if __name__ == "__main__":
    main()
