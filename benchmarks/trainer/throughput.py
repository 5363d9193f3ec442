"""Training throughput: this trainer (Ray Train, as a job runs it) vs a plain transformers
`Trainer` + peft script, on the same data, model and hyperparameters, in one run.

    .venv/bin/python -m benchmarks.trainer.throughput       # --per-intent 4 --batch-size 16

Data: BANKING77 as the quality benchmark trains on it (customer message -> intent label), a
seeded sample of `per-intent` rows of each of the 77 intents. Model: the default base model.
Hyperparameters: LoRA rank 16 / alpha 32 / dropout 0 (--dropout) on all 7 projections, batch
16, lr 1e-3, linear schedule with 5% warmup, 1 epoch, seed 42, no evaluation, no checkpoints
on the HF side.

Three measurements, one after the other (never concurrently):
  1. steps: single process, the same global batches through each way of computing a step (HF's
     full-logits loss on padded rows, ours on label positions only, padding-free packing, bf16
     autocast), so each optimisation is measured on its own;
  2. ours: `job.prepare_data` + `launch.run_training` (TorchTrainer, 2 CPU workers, DDP, the
     checkpoints a job takes) on a local Ray started here;
  3. hf: a competent user's script (chat template for the prompt, completion + EOS as the target,
     labels masked on the prompt, DataCollatorForSeq2Seq, Trainer) in a subprocess, once in
     fp32 and once with bf16=True; the faster one is the baseline (its precision is recorded).

Also in the same run: the model FLOPs per token (`training_flops_per_token`) and this machine's
matrix-product rate at the model's shapes (benchmarks/ceilings.py), so the trainer's rate is
stated as a fraction of what the hardware does.

Trained tokens = prompt + completion tokens of every example trained (no padding), the same
count for both. Writes benchmarks/trainer/results/throughput.json. Benchmarks measure; nothing
here asserts a speed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.machine import describe as machine
from benchmarks.machine import load
from benchmarks.quality import banking77
from benchmarks.results import save

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def sample(path: Path, per_label: int, seed: int) -> list[dict]:
    """The quality benchmark's training sample, as prompt/completion rows."""
    return [{"prompt": r["text"], "completion": r["category"]}
            for r in banking77.sample(path, per_label, seed)]


def base_model():
    from services.common.base_models import DEFAULT_BASE_MODEL, ensure_model, load_catalog

    spec = load_catalog()[DEFAULT_BASE_MODEL]
    return spec, Path(ensure_model(spec))


def write_spec(root: Path, rows: list[dict], spec, model_path: Path, args) -> str:
    from services.common.artifacts import ArtifactStore

    store = ArtifactStore(str(root))
    folder = store.uri("jobs", "ft_bench")
    store.write_bytes(f"{folder}/data/training.jsonl",
                      "".join(json.dumps(r) + "\n" for r in rows).encode())
    raw = {
        "job_id": "ft_bench", "task_type": "INSTRUCTION",
        "base_model": {"name": spec.name, "path": str(model_path),
                       "context_window": spec.context_window, "prompt_tokens": spec.prompt_tokens,
                       "completion_tokens": spec.completion_tokens},
        "training_data_uri": f"{folder}/data/training.jsonl", "validation_data_uri": None,
        "output_uri": f"{folder}/output", "checkpoint_uri": f"{folder}/checkpoints",
        "artifact_root": store.root, "from_adapter_uri": None,
        "options": {"max_epochs": args.epochs, "learning_rate": args.lr,
                    "batch_size": args.batch_size, "lora_rank": 16, "lora_alpha": 32,
                    "lora_dropout": args.dropout, "target_modules": TARGETS, "seed": args.seed,
                    "num_workers": args.workers},
        "control_address": ""}
    store.write_bytes(f"{folder}/spec.json", json.dumps(raw).encode())
    return f"{folder}/spec.json"


# ----------------------------------------------------------------------- 1. step variants

def collate_packed(examples, pad_id: int):
    """All rows in one row, positions restarting per example (transformers then masks attention
    block-diagonally); the first label of each example is dropped (nothing predicts it)."""
    import numpy as np
    import torch

    from services.trainer.data import IGNORE_INDEX

    ids = np.concatenate([e.input_ids for e in examples]).astype(np.int64)
    labels = []
    for e in examples:
        lab = e.labels.astype(np.int64).copy()
        lab[0] = IGNORE_INDEX
        labels.append(lab)
    positions = np.concatenate([np.arange(len(e)) for e in examples])
    return {"input_ids": torch.from_numpy(ids)[None],
            "position_ids": torch.from_numpy(positions)[None],
            "labels": torch.from_numpy(np.concatenate(labels))[None]}


def step_variants(spec_uri: str, args) -> dict:
    """Time forward + backward + AdamW step for the first `--steps` global batches, one process,
    all cores, per way of computing the loss."""
    import torch
    import torch.nn.functional as F

    from services.common.artifacts import ArtifactStore
    from services.trainer import data, job, recipe
    from services.trainer.config import EAGER_ATTENTION_MAX_LEN
    from services.trainer.spec import read_spec

    spec = read_spec(spec_uri)
    prepared = job.prepare_data(spec, ArtifactStore(spec.artifact_root))
    examples = prepared.train.examples
    lengths = [len(e) for e in examples]
    batches = data.plan_epoch(lengths, args.batch_size, args.seed, 1)[:args.steps]
    torch.set_num_threads(os.cpu_count() or 1)

    def hf_loss(model, batch):   # what PeftModel(labels=...) computes: logits at every position
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        logits = out.logits[:, :-1].float()
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                               batch["labels"][:, 1:].reshape(-1), reduction="sum")

    def target_loss(model, batch):
        return recipe.TargetLoss(model)(**batch)   # SDPA attention throughout

    def target_loss_eager(model, batch):           # what the trainer does: eager for short rows
        return recipe.TargetLoss(model, EAGER_ATTENTION_MAX_LEN)(**batch)

    def packed_loss(model, batch):
        lm = model.get_base_model()
        hidden = lm.get_decoder()(input_ids=batch["input_ids"],
                                  position_ids=batch["position_ids"],
                                  use_cache=False).last_hidden_state
        targets = batch["labels"][:, 1:]
        keep = targets != data.IGNORE_INDEX
        logits = lm.get_output_embeddings()(hidden[:, :-1][keep])
        return F.cross_entropy(logits.float(), targets[keep], reduction="sum")

    # name: (loss, layout, base dtype, options); options are the levers measured one at a time
    # on top of the bf16 step the trainer takes today.
    bf16 = torch.bfloat16
    variants = {
        "full_logits_padded_fp32": (hf_loss, "padded", torch.float32, {}),
        "label_positions_padded_fp32": (target_loss, "padded", torch.float32, {}),
        "label_positions_packed_fp32": (packed_loss, "packed", torch.float32, {}),
        "label_positions_padded_bf16": (target_loss, "padded", bf16, {}),
        # Not a change we make (lora_dropout is the caller's option): what dropout costs.
        "label_positions_padded_fp32_dropout_0": (target_loss, "padded", torch.float32,
                                                  {"dropout_0": True}),
        "bf16_lora_weights_bf16": (target_loss, "padded", bf16, {"lora_bf16": True}),
        "bf16_adamw_foreach": (target_loss, "padded", bf16, {"optimizer": "foreach"}),
        "bf16_adamw_fused": (target_loss, "padded", bf16, {"optimizer": "fused"}),
        # Six minutes of compilation per run: only when named with --variant.
        "bf16_torch_compile": (target_loss, "padded", bf16, {"compile": True, "opt_in": True}),
        "bf16_eager_attention": (target_loss_eager, "padded", bf16, {}),
    }
    padded_tokens = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    real_tokens = sum(lengths[i] for b in batches for i in b)
    results = {"batches": len(batches), "tokens": real_tokens,
               "padding_fraction": round(1 - real_tokens / padded_tokens, 4)}
    for name, (loss_fn, layout, dtype, lever) in variants.items():
        named = args.variant or []
        if name not in named and (named or lever.get("opt_in")):
            continue
        torch.manual_seed(args.seed)
        model = recipe.build_model(
            dataclasses.replace(spec, options=dataclasses.replace(spec.options, lora_dropout=0.0))
            if lever.get("dropout_0") else spec, dtype, None)
        params = [p for p in model.parameters() if p.requires_grad]
        if lever.get("lora_bf16"):
            for p in params:
                p.data = p.data.to(torch.bfloat16)
        kind = lever.get("optimizer", "loop")
        optimizer = torch.optim.AdamW(params, lr=args.lr, foreach=kind == "foreach",
                                      fused=True if kind == "fused" else None)
        step_loss = loss_fn
        if lever.get("compile"):
            compiled = torch.compile(recipe.TargetLoss(model), dynamic=True)
            step_loss = lambda _model, batch, fn=compiled: fn(**batch)  # noqa: E731
        autocast = (lambda dt=dtype: torch.autocast("cpu", dtype=dt)) \
            if dtype != torch.float32 else recipe.nullcontext
        timings, losses = [], []
        for b in batches:
            rows = [examples[i] for i in sorted(b, key=lambda i: lengths[i])]
            batch = collate_packed(rows, prepared.pad_id) if layout == "packed" \
                else data.collate(rows, prepared.pad_id)
            n_targets = sum(e.n_targets for e in rows)
            started = time.perf_counter()
            with autocast():
                loss = step_loss(model, batch)
            (loss / n_targets).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            timings.append(time.perf_counter() - started)
            losses.append(round(loss.item() / n_targets, 4))
        # The first step pays one-off allocations (and compilation: reported on its own).
        timed = timings[1:] or timings
        tokens = sum(lengths[i] for b in batches[1:] or batches for i in b)
        results[name] = {"tokens_per_s": round(tokens / sum(timed), 1),
                         "step_s": round(sum(timed) / len(timed), 3),
                         "first_step_s": round(timings[0], 2), "losses": losses}
        print(f"  {name}: {results[name]['tokens_per_s']} tokens/s "
              f"(first step {timings[0]:.1f} s)", flush=True)
        del model, optimizer
    return results


# -------------------------------------------------------------------------------- 2. ours

def training_flops_per_token(model_path: Path, examples, rank: int) -> dict:
    """Model FLOPs per trained token of a LoRA step (T4's numerator), counted, not measured.

    The base is frozen: its linear layers run forward (2 FLOPs per weight) and backward for the
    activation gradient only (2 more), no weight gradient: 4 per weight per token. LoRA's A and
    B get all three products (6 per weight). Causal attention scores and values: 2 x 2 x s x d
    per token forward over half the sequence on average, x3 with backward. The LM head runs on
    target positions only (the recipe's TargetLoss): 4 x vocab x d per target token.
    """
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model_path)
    d, inter, layers = c.hidden_size, c.intermediate_size, c.num_hidden_layers
    kv = (c.num_key_value_heads or c.num_attention_heads) * (d // c.num_attention_heads)
    shapes = [(d, d), (d, kv), (d, kv), (d, d), (d, inter), (d, inter), (inter, d)]
    base = layers * sum(i * o for i, o in shapes)
    lora = layers * rank * sum(i + o for i, o in shapes)
    tokens = sum(len(e) for e in examples)
    mean_len = tokens / len(examples)
    targets = sum(e.n_targets for e in examples) / tokens
    attention = layers * 3 * 2 * 2 * (mean_len / 2) * d
    head = 4 * c.vocab_size * d * targets
    total = 4 * base + 6 * lora + attention + head
    return {"flops_per_token": round(total), "base_linear_params": base,
            "mean_example_tokens": round(mean_len, 1), "target_fraction": round(targets, 3),
            "parts": {"base_linear": 4 * base, "lora": 6 * lora, "attention": round(attention),
                      "lm_head": round(head)}}


def ours(spec_uri: str, args) -> dict:
    import ray

    from services.common.artifacts import ArtifactStore
    from services.trainer import job, launch
    from services.trainer.config import TrainerConfig
    from services.trainer.spec import read_spec

    spec = read_spec(spec_uri)
    config = TrainerConfig(spec_uri=spec_uri, precision=args.precision)
    ray_dir = tempfile.mkdtemp(prefix="rtp", dir="/tmp")   # short: unix socket path limit
    # A new local ray.init() cluster otherwise turns on token auth and writes ~/.ray/auth_token,
    # which then turns it on for every later `ray start` on this machine (tests, `finetune up`).
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=os.cpu_count(), include_dashboard=True, _temp_dir=ray_dir,
             logging_level="WARNING")
    try:
        started = time.perf_counter()
        prepared = job.prepare_data(spec, ArtifactStore(spec.artifact_root))
        prepared_s = time.perf_counter() - started
        flops = training_flops_per_token(Path(spec.base_model.path), prepared.train.examples,
                                         spec.options.lora_rank)
        result = launch.run_training(spec, prepared.train.examples, [], prepared.pad_id, config)
        total_s = time.perf_counter() - started
    finally:
        ray.shutdown()
        shutil.rmtree(ray_dir, ignore_errors=True)
    metrics = result.return_value
    tokens = metrics["trained_tokens"]
    return {"workers": spec.options.num_workers, "precision": metrics.get("precision"),
            "precision_asked": args.precision, "model_flops": flops,
            "trained_tokens": tokens, "steps": metrics["step"],
            "final_epoch_loss": round(metrics["training_loss"], 4),
            "steps_s": round(metrics["train_seconds"], 1),
            "loop_s": round(metrics["loop_seconds"], 1),
            "prepare_s": round(prepared_s, 1), "total_s": round(total_s, 1),
            "tokens_per_s": round(tokens / metrics["train_seconds"], 1),
            "tokens_per_s_loop": round(tokens / metrics["loop_seconds"], 1),
            "tokens_per_s_total": round(tokens / total_s, 1)}


# ---------------------------------------------------------------------------------- 3. hf

def hf(rows_path: Path, model_path: Path, args) -> dict:
    """A plain transformers Trainer + peft script, as a competent user writes it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    rows = json.loads(rows_path.read_text())
    tokenizer = AutoTokenizer.from_pretrained(model_path)

    def tokenize(row):
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": row["prompt"]}],
                                               add_generation_prompt=True, tokenize=True)
        if isinstance(prompt, dict) or hasattr(prompt, "keys"):
            prompt = prompt["input_ids"]
        completion = tokenizer(row["completion"] + tokenizer.eos_token,
                               add_special_tokens=False)["input_ids"]
        return {"input_ids": prompt + completion,
                "attention_mask": [1] * (len(prompt) + len(completion)),
                "labels": [-100] * len(prompt) + completion}

    dataset = [tokenize(r) for r in rows]
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=args.dropout,
                                             target_modules=TARGETS, task_type="CAUSAL_LM"))
    steps = args.epochs * math.ceil(len(dataset) / args.batch_size)
    with tempfile.TemporaryDirectory(prefix="hf-bench-") as out:
        trainer = Trainer(
            model=model,
            args=TrainingArguments(
                output_dir=out, per_device_train_batch_size=args.batch_size,
                num_train_epochs=args.epochs, learning_rate=args.lr,
                lr_scheduler_type="linear", warmup_steps=math.ceil(0.05 * steps),
                weight_decay=0.0, max_grad_norm=1.0, seed=args.seed, logging_steps=5,
                save_strategy="no", eval_strategy="no", report_to=[], use_cpu=True,
                dataloader_num_workers=0, disable_tqdm=True, bf16=args.hf_bf16),
            train_dataset=dataset,
            data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True,
                                                 label_pad_token_id=-100))
        output = trainer.train()
    total_s = time.perf_counter() - started
    tokens = args.epochs * sum(len(d["input_ids"]) for d in dataset)
    runtime = output.metrics["train_runtime"]
    return {"processes": 1, "torch_threads": torch.get_num_threads(),
            "precision": "bf16" if args.hf_bf16 else "fp32", "trained_tokens": tokens,
            "steps": output.global_step, "final_loss": round(output.training_loss, 4),
            "train_runtime_s": round(runtime, 1), "total_s": round(total_s, 1),
            "tokens_per_s": round(tokens / runtime, 1),
            "tokens_per_s_total": round(tokens / total_s, 1)}


# ------------------------------------------------------------------------------------ main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-intent", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--dropout", type=float, default=0.0,
                        help="lora_dropout on both sides (the service's default is 0)")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    parser.add_argument("--steps", type=int, default=6, help="batches per step variant")
    parser.add_argument("--variant", action="append",
                        help="with the steps part: only these step variants (repeatable)")
    parser.add_argument("--only", choices=("steps", "ours", "hf"), action="append",
                        help="run only these parts (repeatable)")
    parser.add_argument("--hf-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--hf-bf16", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, default=RESULTS / "throughput.json")
    args = parser.parse_args()
    spec, model_path = base_model()
    if args.hf_child:   # the subprocess of part 3
        print(json.dumps(hf(args.hf_child, model_path, args)), flush=True)
        return

    parts = args.only or ["steps", "ours", "hf"]
    rows = sample(banking77.DATASET / "train.csv", args.per_intent, args.seed)
    command = " ".join(["python -m benchmarks.trainer.throughput", *sys.argv[1:]])
    result = {"benchmark": "trainer_throughput", "command": command,
              "machine": machine(), "load_average_start": load(),
              "data": {"dataset": "banking77", "rows": len(rows), "per_intent": args.per_intent},
              "hyperparameters": {"lora_rank": 16, "lora_alpha": 32, "lora_dropout": args.dropout,
                                  "target_modules": TARGETS, "batch_size": args.batch_size,
                                  "learning_rate": args.lr, "epochs": args.epochs,
                                  "seed": args.seed}}
    with tempfile.TemporaryDirectory(prefix="trainer-bench-") as tmp:
        tmp = Path(tmp)
        spec_uri = write_spec(tmp / "artifacts", rows, spec, model_path, args)
        if "steps" in parts:
            print("1. step variants (one process)", flush=True)
            result["steps"] = step_variants(spec_uri, args)
        if "ours" in parts:
            print("2. ours: Ray Train job path", flush=True)
            result["ours"] = ours(spec_uri, args)
            print(f"  {result['ours']}", flush=True)
        if "hf" in parts:
            print("3. transformers Trainer + peft", flush=True)
            rows_path = tmp / "rows.json"
            rows_path.write_text(json.dumps(rows))
            # The script at each precision a user could pick (TrainingArguments bf16=True or
            # not); the comparison takes its faster one, as a competent user would.
            runs = []
            for bf16 in (False, True):
                child = subprocess.run(
                    [sys.executable, "-m", "benchmarks.trainer.throughput", "--hf-child",
                     str(rows_path), "--batch-size", str(args.batch_size), "--epochs",
                     str(args.epochs), "--lr", str(args.lr), "--seed", str(args.seed),
                     "--dropout", str(args.dropout), *(["--hf-bf16"] if bf16 else [])],
                    check=True, capture_output=True, text=True)
                runs.append(json.loads(child.stdout.strip().splitlines()[-1]))
                print(f"  {runs[-1]}", flush=True)
            result["hf_runs"] = runs
            result["hf"] = max(runs, key=lambda r: r["tokens_per_s"])
    if "ours" in result:
        # T4: model FLOP/s in steps against the matrix-product rate of the model's shapes at the
        # precision the job trained in, measured now (both cores, as the two workers use them).
        from benchmarks import ceilings

        rates = ceilings.measure(verbose=False)
        dtype = {"bf16": "bfloat16", "fp32": "float32"}[result["ours"]["precision"]]
        model_gflops = result["ours"]["tokens_per_s"] * \
            result["ours"]["model_flops"]["flops_per_token"] / 1e9
        ceiling = ceilings.model_shapes_rate(rates, dtype)
        result["ceilings"] = rates
        result["model_gflops_in_steps"] = round(model_gflops, 1)
        result["fraction_of_matmul_rate"] = round(model_gflops / ceiling, 3)
    if "ours" in result and "hf" in result:
        result["ratio_ours_over_hf"] = round(result["ours"]["tokens_per_s"]
                                             / result["hf"]["tokens_per_s"], 2)
        result["ratio_ours_over_hf_end_to_end"] = round(
            result["ours"]["tokens_per_s_total"] / result["hf"]["tokens_per_s_total"], 2)
        if result["ours"]["trained_tokens"] != result["hf"]["trained_tokens"]:
            result["note"] = "the two tokenizations differ in length"
    result["load_average_end"] = load()
    save(result, args.output)
    print(json.dumps({k: result.get(k) for k in ("ratio_ours_over_hf",
                                                 "ratio_ours_over_hf_end_to_end",
                                                 "model_gflops_in_steps",
                                                 "fraction_of_matmul_rate")}))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
