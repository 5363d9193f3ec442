"""Benchmark (a): throughput with 8 different LoRA adapters mixed in one batch vs the base model
alone, side by side in one run: the fused punica wrapper calling the LoRA kernel
(services/inference/lora_kernel.py, the default), the same wrapper with torch products
(FINETUNE_LORA_PATH=fused), vLLM's wrapper over our grouped ops (services/inference/lora_ops.py:
FINETUNE_LORA_PATH=per-op), vLLM's stock ops, and the base model in an engine without LoRA
support as the ceiling.

    .venv/bin/python -m benchmarks.inference.lora_mix [--requests 16] [--prompt-tokens 64]
        [--engine kernel --engine fused ...]    # a subset of the engines (default: all)

Each engine serves three workloads, each as one concurrent wave of `--requests` requests:
  base      every request on the base model
  1 adapter every request on the same adapter
  8 mixed   requests spread round-robin over 8 adapters (all 8 in one batch)
and each workload in two passes: prefill (random prompts of --prompt-tokens, 1 output token) and
decode (8-token prompts, --decode-tokens output tokens, EOS ignored). Prompts are random token
ids, fresh for every pass, so the prefix cache never helps. All four engines run at once and
`--rounds` rounds interleave them, so load from elsewhere on the machine hits all alike; the
best and the median round are reported.

Then the LoRA ops alone, on the default model's layer shapes at prefill and decode batch sizes,
show where the stock ops lose their time.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.inference.common import (base_model, engine_config, machine, random_adapter,
                                         spawn_environment, write_result)
from services.inference.engine import GiB, VllmEngine, configured_dtype


def start_plain_engine(config):
    """The base model in an AsyncLLM without LoRA support: what LoRA support costs is measured
    against this."""
    from vllm import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    args = AsyncEngineArgs(
        model=str(config.base_model.path), served_model_name=[config.base_model.name],
        enable_lora=False, max_model_len=config.max_model_len, max_num_seqs=config.max_num_seqs,
        dtype=configured_dtype(config)[0], gpu_memory_utilization=config.gpu_memory_utilization,
        kv_cache_memory_bytes=int(config.kv_cache_gib * GiB), enforce_eager=True,
        disable_log_stats=True)
    return AsyncLLM.from_engine_args(args)


async def wave(llm, prompts: list[list[int]], loras: list, max_tokens: int) -> dict:
    """All prompts at once; returns tokens in and out and the wall time of the whole wave."""
    from vllm import SamplingParams
    from vllm.inputs import tokens_input
    from vllm.sampling_params import RequestOutputKind

    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True,
                            output_kind=RequestOutputKind.FINAL_ONLY)

    async def one(i):
        out = None
        async for out in llm.generate(tokens_input(prompts[i]), params, f"b-{time.time_ns()}-{i}",
                                      lora_request=loras[i]):
            pass
        return len(out.prompt_token_ids), len(out.outputs[0].token_ids)

    start = time.perf_counter()
    counts = await asyncio.gather(*[one(i) for i in range(len(prompts))])
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 3), "prompt_tokens": sum(c[0] for c in counts),
            "output_tokens": sum(c[1] for c in counts)}


def random_prompts(rng: torch.Generator, n: int, length: int, vocab: int) -> list[list[int]]:
    # Ids above 1000 avoid the special and byte tokens at the start of the vocabulary.
    return torch.randint(1000, vocab, (n, length), generator=rng).tolist()


def workloads(lora_requests: list | None, n: int) -> dict[str, list]:
    """Each request's LoRARequest (None: the base model) per workload."""
    if lora_requests is None:  # the engine without LoRA support serves the base model only
        return {"base": [None] * n}
    return {"base": [None] * n,
            "1 adapter": [lora_requests[0]] * n,
            "8 mixed": [lora_requests[i % len(lora_requests)] for i in range(n)]}


async def measure(llm, plan: dict[str, list], args, rng, vocab: int) -> dict:
    results = {}
    for workload, loras in plan.items():
        prefill = await wave(llm, random_prompts(rng, len(loras), args.prompt_tokens, vocab),
                             loras, 1)
        decode = await wave(llm, random_prompts(rng, len(loras), 8, vocab), loras,
                            args.decode_tokens)
        prefill["prompt_tokens_per_s"] = round(prefill["prompt_tokens"] / prefill["seconds"], 1)
        decode["output_tokens_per_s"] = round(decode["output_tokens"] / decode["seconds"], 1)
        results[workload] = {"prefill": prefill, "decode": decode}
        print(f"  {workload:10s} prefill {prefill['prompt_tokens_per_s']:8.1f} prompt tok/s   "
              f"decode {decode['output_tokens_per_s']:7.1f} output tok/s", flush=True)
    return results


async def warm_up(llm, lora_requests, vocab, rng):
    """One short request per adapter (and the base): loads every adapter into its slot and
    runs the first-call paths before anything is timed."""
    for lora in [None, *(lora_requests or [])]:
        await wave(llm, random_prompts(rng, 1, 16, vocab), [lora], 2)


# The LoRA path each engine must report (VllmEngine.lora_path), and how it is chosen.
KINDS = {"no LoRA": None, "kernel": "kernel", "fused": "fused", "per-op": "per-op",
         "stock ops": "stock"}


async def start_engine(kind: str, config, adapters: list[Path], vocab: int):
    """(engine or None, the AsyncLLM, its LoRARequests or None), warmed up."""
    from vllm.lora.request import LoRARequest

    if kind == "no LoRA":
        engine, llm, lora_requests = None, start_plain_engine(config), None
    else:
        # The engine core reads FINETUNE_LORA_PATH when it imports vllm_worker.
        with spawn_environment(FINETUNE_LORA_PATH=KINDS[kind]):
            engine = VllmEngine.start(config)
        llm = engine.async_llm
        lora_requests = [LoRARequest(lora_name=f"bench-{i}", lora_int_id=i + 1,
                                     lora_path=str(path)) for i, path in enumerate(adapters)]
    await warm_up(llm, lora_requests, vocab, torch.Generator().manual_seed(99))
    if engine is not None:  # the setting really chose what runs in the worker
        path = await engine.lora_path()
        assert path == KINDS[kind], f"{kind}: the worker runs {path}"
    return engine, llm, lora_requests


def stop_engine(engine, llm) -> None:
    if engine is not None:
        engine.shutdown()
    else:
        llm.shutdown()


# --- the ops alone ----------------------------------------------------------------------------

# One decoder layer of SmolLM2-135M as vLLM's LoRA layers call the punica ops: merged qkv
# (3 slices), o, merged gate_up (2 slices), down. (in_features, [out_features per slice])
LAYER = [(576, [576, 192, 192]), (576, [576]), (576, [1536, 1536]), (1536, [576])]
LAYERS = 30


def ops_profile(tokens: int, adapters_in_batch: int, rank: int = 8, slots: int = 8,
                repeat: int = 5) -> dict:
    """Time one layer's LoRA shrink+expand with each implementation; count the bytes the stock
    ops materialise by gathering one adapter matrix per token."""
    import vllm.lora.ops.torch_ops.lora_ops as stock

    from services.inference import lora_kernel
    from services.inference import lora_ops as grouped

    dtype = torch.bfloat16
    torch.manual_seed(0)
    indices = torch.arange(tokens) % adapters_in_batch
    x = torch.randn(tokens, 1536, dtype=dtype)
    modules = []
    for in_f, outs in LAYER:
        a = [torch.randn(slots, 1, rank, in_f, dtype=dtype) for _ in outs]
        b = [torch.randn(slots, 1, out, rank, dtype=dtype) for out in outs]
        modules.append((in_f, outs, a, b))

    def layer(ops):
        for in_f, outs, a, b in modules:
            y = torch.zeros(tokens, sum(outs), dtype=dtype)
            buffers = [torch.zeros(tokens, rank, dtype=torch.float32) for _ in outs]
            for i in range(len(outs)):
                ops.bgmv_shrink(x[:, :in_f], a[i], buffers[i], indices, 1.0)
            offset = 0
            for i, out in enumerate(outs):
                ops.bgmv_expand_slice(buffers[i], b[i], y, indices, offset, out, True)
                offset += out

    kernel = lora_kernel.load()
    fused = [(grouped.FusedLoraWeights(a, b, outs, with_kernel=kernel is not None), in_f, outs)
             for in_f, outs, a, b in modules]
    for weights, _, _ in fused:
        weights.refresh(tuple(range(1, slots + 1)))

    def fused_layer(with_kernel):
        plan = grouped.plan_step(indices, slots)   # once per step in the engine
        for weights, in_f, outs in fused:
            y = torch.zeros(tokens, sum(outs), dtype=dtype)
            grouped.add_fused_lora(y, x[:, :in_f], weights, plan,
                                   kernel=kernel if with_kernel else None)

    def best_ms_per_forward(ops, run=layer) -> float:
        run(ops)
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            run(ops)
            times.append(time.perf_counter() - start)
        return round(min(times) * LAYERS * 1000, 2)   # the least disturbed repetition

    result = {"tokens": tokens, "adapters_in_batch": adapters_in_batch, "rank": rank,
              "stock_ms_per_forward": best_ms_per_forward(stock),
              "per_op_ms_per_forward": best_ms_per_forward(grouped),
              "fused_ms_per_forward": best_ms_per_forward(False, fused_layer)}
    if kernel is not None:
        result["kernel_ms_per_forward"] = best_ms_per_forward(True, fused_layer)
        result["kernel_isa"] = kernel.isa
    if adapters_in_batch > 1:  # both of our paths for several adapters, whichever is chosen
        default = grouped.DENSE_MAX_ROW_SLOTS
        try:
            grouped.DENSE_MAX_ROW_SLOTS = 0
            result["per_adapter_path_ms_per_forward"] = best_ms_per_forward(grouped)
            grouped.DENSE_MAX_ROW_SLOTS = 1 << 62
            result["one_hot_path_ms_per_forward"] = best_ms_per_forward(grouped)
        finally:
            grouped.DENSE_MAX_ROW_SLOTS = default
    # Stock: weights[indices] copies [tokens, rank, in] (bf16), then .to(float32) copies it
    # again; the same for B. Per forward pass, all layers:
    gathered = sum(tokens * rank * (in_f + out) * (2 + 4)
                   for in_f, outs in LAYER for out in outs)
    result["stock_gathered_gb_per_forward"] = round(gathered * LAYERS / 1e9, 2)
    # The useful work is tiny: 2 * tokens * rank * (in + out) FLOPs per slice.
    flops = sum(2 * tokens * rank * (in_f + out) for in_f, outs in LAYER for out in outs)
    result["lora_gflop_per_forward"] = round(flops * LAYERS / 1e9, 3)
    return result


def copy_bandwidth_gbs() -> float:
    x = torch.rand(64 * 1024 * 1024)
    y = torch.empty_like(x)
    y.copy_(x)
    start = time.perf_counter()
    for _ in range(5):
        y.copy_(x)
    return round(5 * 2 * x.numel() * 4 / (time.perf_counter() - start) / 1e9, 1)


def rates(runs: list[dict]) -> dict:
    """Per workload and pass: the best and the median rate over the rounds, and each round's."""
    out = {}
    for workload in runs[0]:
        out[workload] = {}
        for phase, key in (("prefill", "prompt_tokens_per_s"), ("decode", "output_tokens_per_s")):
            values = [r[workload][phase][key] for r in runs]
            out[workload][phase] = {"best_" + key: max(values),
                                    "median_" + key: round(statistics.median(values), 1),
                                    "rounds": values}
    return out


async def main_async(args) -> None:
    logging.basicConfig(level=logging.WARNING)
    base = base_model()
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(base.path).vocab_size
    result = {"benchmark": "lora_mix", "machine_before": machine(),
              "settings": vars(args) | {"dtype": configured_dtype(engine_config(base, Path(tempfile.gettempdir())))[0],
                                        "max_loras": 8, "lora_rank": 8}}
    kinds = () if args.ops_only else tuple(args.engine or KINDS)
    with tempfile.TemporaryDirectory(prefix="bench-lora-") as tmp:
        tmp = Path(tmp)
        adapters = [random_adapter(base, tmp / f"adapter-{i}", seed=i) for i in range(8)]
        engines, started = {}, {}
        try:
            for kind in kinds:
                t0 = time.perf_counter()
                engines[kind] = await start_engine(
                    kind, engine_config(base, tmp, grouped_lora_ops=(kind != "stock ops")),
                    adapters, vocab)
                started[kind] = round(time.perf_counter() - t0, 1)
            # Rounds interleave the engines, so a burst of load from elsewhere on this shared
            # machine hits all of them rather than one.
            runs = {kind: [] for kind in kinds}
            for round_ in range(args.rounds):
                rng = torch.Generator().manual_seed(1234 + round_)  # fresh prompts each round
                for kind in kinds:
                    print(f"round {round_ + 1}, {kind}:", flush=True)
                    _, llm, lora_requests = engines[kind]
                    state = rng.get_state()
                    runs[kind].append(await measure(llm, workloads(lora_requests, args.requests),
                                                    args, rng, vocab))
                    rng.set_state(state)  # the same prompts for every engine in a round
                    del llm  # only `engines` may hold an engine, or it outlives shutdown
        finally:
            for engine, llm, _ in engines.values():
                stop_engine(engine, llm)
            engines.clear()
            gc.collect()
        if kinds:
            result["engine_start_s"] = started
            result["engines"] = {kind: rates(runs[kind]) for kind in kinds}
    # The ops alone on one thread: with OpenMP's two threads, another process on either core
    # stalls every parallel region, which on this shared machine buried the differences.
    torch.set_num_threads(1)
    print("LoRA ops alone (one forward pass, 30 layers, 1 thread):", flush=True)
    result["ops"] = [ops_profile(t, n) for t, n in ((1024, 8), (1024, 1), (16, 8), (16, 1))]
    for row in result["ops"]:
        print("  ", row, flush=True)
    result["copy_bandwidth_gb_s_1_thread"] = copy_bandwidth_gbs()
    result["machine_after"] = machine()
    write_result("lora_mix_ops" if args.ops_only else "lora_mix", result)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--engine", action="append", choices=tuple(KINDS),
                   help="run only these engines (repeatable; default: all)")
    p.add_argument("--ops-only", action="store_true", help="only the LoRA ops alone")
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":  # vLLM's engine core is a spawned process: it re-imports this module
    main()
