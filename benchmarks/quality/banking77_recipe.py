"""BANKING77 recipe lab: the trainer's own recipe in one process, test accuracy after every epoch.

    .venv/bin/python -m benchmarks.quality.banking77_recipe --variant baseline --variant neftune

The quality benchmark (`benchmarks.quality.banking77`) runs the whole service and reports one
accuracy at the end, about 15 minutes a run. Choosing a recipe needs more than that: how
accuracy moves epoch by epoch, free against label-constrained answers, one lever at a time. This
lab trains with `services.trainer.recipe.train` itself (the same data, holdout, schedule and
early stopping as a job with no options: control's `holdout_rows`, `auto_schedule` and
`batch_learning_rate`), in one process without Ray, and after each epoch from
`--first-eval-epoch` on greedily answers the quality benchmark's test sample with the epoch's
adapter, constrained to the training labels as the service's classification evaluations are (a
prefix tree over their token ids), and with `--free` also freely.

A variant changes one thing of the recipe. Levers the recipe does not offer as an option are
patched in here, so a lever is measured before it is built; what wins moves into the recipe.
(The first runs patched NEFTune in; it is now the job option `neftune_noise_alpha`.)
Results: benchmarks/quality/results/banking77_recipe_<date>_<variant>.json; nothing here asserts.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import tempfile
import time
from pathlib import Path

from benchmarks import machine
from benchmarks.quality import banking77

RESULTS = Path(__file__).resolve().parent / "results"


# ------------------------------------------------------------------------------- variants

@dataclasses.dataclass(frozen=True)
class Variant:
    options: dict = dataclasses.field(default_factory=dict)   # TrainerOptions fields
    label_smoothing: float = 0.0
    loraplus_ratio: float = 0.0        # lr of lora_B = ratio x lr of lora_A
    schedule: str = "linear"           # linear (the recipe's) | cosine
    ema_decay: float = 0.0             # evaluate an exponential moving average of the weights
    holdout: bool = True


VARIANTS = {
    "baseline": Variant(),            # the service's defaults
    "neftune": Variant(options={"neftune_noise_alpha": 5.0}),
    "label_smoothing": Variant(label_smoothing=0.1),
    "loraplus": Variant(loraplus_ratio=8.0),
    "cosine": Variant(schedule="cosine"),
    "dropout": Variant(options={"lora_dropout": 0.1}),
    "no_holdout_5": Variant(options={"max_epochs": 5, "early_stopping_patience": 0},
                            holdout=False),
    "epochs_5": Variant(options={"max_epochs": 5, "early_stopping_patience": 0}),
    "rank_64": Variant(options={"lora_rank": 64, "lora_alpha": 128}),
    "ema": Variant(ema_decay=0.98),
}


@contextlib.contextmanager
def patched(variant: Variant):
    """Apply a variant's levers to the recipe for the duration of one run."""
    import torch
    import torch.nn.functional as F

    from services.trainer import recipe
    from services.trainer.data import IGNORE_INDEX

    saved = (recipe.TargetLoss.forward, recipe.lr_factor, recipe.build_model, torch.optim.AdamW,
             recipe._save_checkpoint)

    def smoothed_forward(self, input_ids, attention_mask, labels):
        lm = self.model.get_base_model()
        hidden = lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                  use_cache=False).last_hidden_state
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        logits = lm.get_output_embeddings()(hidden[:, :-1][keep])
        smoothing = variant.label_smoothing if self.training else 0.0
        return F.cross_entropy(logits.float(), targets[keep], reduction="sum",
                               label_smoothing=smoothing)

    def cosine_factor(step: int, total: int) -> float:
        warmup = max(1, math.ceil(recipe.WARMUP_FRACTION * total))
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    class LoraPlusAdamW(torch.optim.AdamW):
        def __init__(self, params, lr, **kwargs):
            params = list(params)
            b_ids = {id(p) for n, p in _named_lora(params, "lora_B")}
            groups = [{"params": [p for p in params if id(p) not in b_ids], "lr": lr},
                      {"params": [p for p in params if id(p) in b_ids],
                       "lr": lr * variant.loraplus_ratio}]
            super().__init__(groups, lr=lr, **kwargs)

    class EmaAdamW(torch.optim.AdamW):
        """AdamW that keeps an exponential moving average of the weights it steps."""

        def step(self, closure=None):
            loss = super().step(closure)
            with torch.no_grad():
                for group in self.param_groups:
                    for p in group["params"]:
                        shadow = self.state[p].setdefault("ema", p.detach().clone())
                        shadow.mul_(variant.ema_decay).add_(p.detach(),
                                                            alpha=1 - variant.ema_decay)
            return loss

        def swap(self):
            with torch.no_grad():
                for group in self.param_groups:
                    for p in group["params"]:
                        if "ema" in self.state[p]:
                            tmp = p.detach().clone()
                            p.copy_(self.state[p]["ema"])
                            self.state[p]["ema"].copy_(tmp)

    def save_averaged(ctx, model, optimizer, scheduler, state, metrics, best_weights):
        """At an epoch's end the checkpoint (what the lab evaluates) holds the average."""
        averaged = state.epoch_step == 0 and hasattr(optimizer, "swap")
        if averaged:
            optimizer.swap()
        try:
            saved[4](ctx, model, optimizer, scheduler, state, metrics, best_weights)
        finally:
            if averaged:
                optimizer.swap()

    named: dict[int, str] = {}

    def _named_lora(params, part):
        return [(named.get(id(p), ""), p) for p in params if part in named.get(id(p), "")]

    def build_naming(spec, dtype, adapter_dir):
        model = saved[2](spec, dtype, adapter_dir)
        named.update({id(p): n for n, p in model.named_parameters()})
        return model

    try:
        if variant.label_smoothing:
            recipe.TargetLoss.forward = smoothed_forward  # type: ignore[method-assign]
        if variant.schedule == "cosine":
            recipe.lr_factor = cosine_factor
        recipe.build_model = build_naming  # type: ignore[assignment]
        if variant.loraplus_ratio:
            torch.optim.AdamW = LoraPlusAdamW  # type: ignore[misc]
        if variant.ema_decay:
            torch.optim.AdamW = EmaAdamW  # type: ignore[misc]
            recipe._save_checkpoint = save_averaged
        yield
    finally:
        (recipe.TargetLoss.forward, recipe.lr_factor, recipe.build_model,
         torch.optim.AdamW, recipe._save_checkpoint) = saved  # type: ignore[method-assign]


# ------------------------------------------------------------------------------ evaluation

class Evaluator:
    """Greedy answers of the test sample with an adapter: free and constrained to the labels."""

    def __init__(self, model_path: str, spec, dtype, test: list[dict], labels: list[str]):
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from services.common.chat_format import completion_token_ids, prompt_token_ids

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        opts = spec.options
        base = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
        self.model = get_peft_model(base, LoraConfig(
            r=opts.lora_rank, lora_alpha=opts.lora_alpha, lora_dropout=0.0,
            target_modules=list(opts.target_modules), bias="none", task_type="CAUSAL_LM"))
        self.model.eval()
        self.test = test
        self.prompts = [prompt_token_ids(self.tokenizer, prompt=r["prompt"]) for r in test]
        self.label_ids = {label: completion_token_ids(self.tokenizer, label) for label in labels}
        self.end = self.label_ids[labels[0]][-1]          # the end-of-turn token
        self.trie: dict[tuple, set[int]] = {}
        for ids in self.label_ids.values():
            for k in range(len(ids)):
                self.trie.setdefault(tuple(ids[:k]), set()).add(ids[k])
        self.max_new = max(len(ids) for ids in self.label_ids.values()) + 4
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None \
            else self.end

    def load(self, adapter_file: Path) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(self.model, load_file(str(adapter_file)))

    def answers(self, constrained: bool, batch: int = 64) -> list[str]:
        """Greedy answers, batched by prompt length (left-padded); logits only at the last
        position (the LM head over every prompt position would cost more than the rest)."""
        torch = self.torch
        lm = self.model.get_base_model()
        order = sorted(range(len(self.prompts)), key=lambda i: len(self.prompts[i]))
        by_index: dict[int, str] = {}
        for start in range(0, len(order), batch):
            rows = order[start:start + batch]
            width = max(len(self.prompts[i]) for i in rows)
            ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):
                p = self.prompts[i]
                ids[r, width - len(p):] = torch.tensor(p)
                mask[r, width - len(p):] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            generated: list[list[int]] = [[] for _ in rows]
            done = [False] * len(rows)
            cache = None
            step_ids = ids
            with torch.no_grad():
                for _ in range(self.max_new):
                    out = lm.model(input_ids=step_ids, attention_mask=mask,
                                   position_ids=positions[:, -step_ids.shape[1]:],
                                   past_key_values=cache, use_cache=True)
                    cache = out.past_key_values
                    logits = lm.lm_head(out.last_hidden_state[:, -1]).float()
                    if constrained:
                        allowed = torch.full_like(logits, float("-inf"))
                        for r in range(len(rows)):
                            ok = sorted(self.trie.get(tuple(generated[r]), {self.end}))
                            allowed[r, ok] = 0.0
                        logits = logits + allowed
                    nxt = logits.argmax(-1)
                    for r in range(len(rows)):
                        if not done[r]:
                            token = int(nxt[r])
                            if token == self.end:
                                done[r] = True
                            else:
                                generated[r].append(token)
                    if all(done):
                        break
                    step_ids = nxt[:, None]
                    mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=torch.long)], 1)
                    positions = torch.cat([positions, positions[:, -1:] + 1], 1)
            for r, i in enumerate(rows):
                by_index[i] = self.tokenizer.decode(generated[r],
                                                    skip_special_tokens=True).strip()
        return [by_index[i] for i in range(len(self.prompts))]

    def score(self, answers: list[str]) -> dict:
        from services.control.domain.metrics import classification_metrics

        labels = [r["label"] for r in self.test]
        metrics = classification_metrics(labels, answers).metrics
        return {"accuracy": round(metrics["accuracy"], 4),
                "macro_f1": round(metrics["macro_f1"], 4)}


# ---------------------------------------------------------------------------------- a run

class LabContext:
    """One worker, no cluster (the recipe's WorkerContext): evaluates every epoch's adapter."""

    def __init__(self, on_epoch):
        import torch

        self.rank, self.world_size = 0, 1
        self.device = torch.device("cpu")
        self.on_epoch = on_epoch

    def wrap(self, module):
        return module

    def all_reduce_sum(self, tensor):
        return tensor

    @contextlib.contextmanager
    def latest_checkpoint(self):
        yield None

    def report(self, metrics, checkpoint_dir):
        if checkpoint_dir is None:
            return
        state = json.loads((checkpoint_dir / "state.json").read_text())
        if state["epoch_step"] == 0:   # an epoch-end checkpoint
            self.on_epoch(state, checkpoint_dir / "adapter" / "adapter_model.safetensors")


def run_variant(name: str, variant: Variant, args) -> dict:
    import torch

    from services.common.base_models import DEFAULT_BASE_MODEL, ensure_model, load_catalog
    from services.common.job_spec import parse_spec
    from services.control.domain.datasets import holdout_rows
    from services.control.domain.options import auto_schedule, batch_learning_rate
    from services.trainer import job, recipe

    base = load_catalog()[DEFAULT_BASE_MODEL]
    model_path = str(ensure_model(base))
    rows = [{"prompt": r["text"], "completion": r["category"]}
            for r in banking77.sample(args.dataset / "train.csv", args.per_intent, args.seed)]
    test = [{"prompt": r["text"], "label": r["category"]}
            for r in banking77.sample(args.dataset / "test.csv", args.eval_per_intent,
                                      args.seed + 1)]
    seed = 42
    held = holdout_rows(len(rows), seed) if variant.holdout else frozenset()
    train = [r for i, r in enumerate(rows) if i not in held]
    validation = [r for i, r in enumerate(rows) if i in held]
    epochs, batch = auto_schedule(len(train), base)
    defaults = base.defaults
    options = {"max_epochs": epochs, "batch_size": batch,
               "learning_rate": batch_learning_rate(base, batch),
               "lora_rank": int(defaults["lora_rank"]), "lora_alpha": int(defaults["lora_alpha"]),
               "lora_dropout": float(defaults["lora_dropout"]),
               "neftune_noise_alpha": float(defaults.get("neftune_noise_alpha", 0.0)),
               "target_modules": list(base.target_modules), "seed": seed, "num_workers": 1,
               "early_stopping_patience": 1 if held else 0, **variant.options}

    home = Path(tempfile.mkdtemp(prefix="b77-recipe-"))
    for part, data in (("training", train), ("validation", validation)):
        (home / f"{part}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    spec = parse_spec({
        "job_id": f"ft_lab_{name}", "task_type": "INSTRUCTION",
        "base_model": {"name": base.name, "path": model_path,
                       "context_window": base.context_window,
                       "prompt_tokens": base.prompt_tokens,
                       "completion_tokens": base.completion_tokens},
        "training_data_uri": f"file://{home}/training.jsonl",
        "validation_data_uri": f"file://{home}/validation.jsonl" if validation else None,
        "output_uri": f"file://{home}/output", "checkpoint_uri": f"file://{home}/checkpoints",
        "artifact_root": f"file://{home}", "options": options, "control_address": ""})
    from services.common.artifacts import ArtifactStore

    prepared = job.prepare_data(spec, ArtifactStore(f"file://{home}"))
    torch.set_num_threads(args.threads)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.precision]
    labels = sorted({r["completion"] for r in train})
    evaluator = Evaluator(model_path, spec, dtype, test, labels)
    epochs_seen: list[dict] = []
    started = time.perf_counter()
    eval_seconds = 0.0

    def on_epoch(state: dict, adapter: Path) -> None:
        nonlocal eval_seconds
        t0 = time.perf_counter()
        if state["epoch"] < args.first_eval_epoch:
            return
        evaluator.load(adapter)
        free = evaluator.score(evaluator.answers(constrained=False)) if args.free else None
        constrained = evaluator.score(evaluator.answers(constrained=True))
        eval_seconds += time.perf_counter() - t0
        row = {"epoch": state["epoch"], "training_loss": round(state["epoch_losses"][-1], 4),
               "validation_loss": state["validation_losses"][-1],
               "free": free, "constrained": constrained,
               "train_seconds": round(state["train_seconds"], 1),
               "eval_seconds": round(time.perf_counter() - t0, 1)}
        epochs_seen.append(row)
        print(f"[{name}] {json.dumps(row)}", flush=True)

    with patched(variant):
        cfg = recipe.RecipeConfig(spec=spec, pad_id=prepared.pad_id, precision=args.precision,
                                  threads=args.threads)
        result = recipe.train(cfg, prepared.train.examples, prepared.validation.examples,
                              LabContext(on_epoch))
    return {"variant": name, "levers": dataclasses.asdict(variant), "options": options,
            "training_rows": len(train), "validation_rows": len(validation),
            "test_rows": len(test), "precision": args.precision, "threads": args.threads,
            "epochs": epochs_seen, "best_epoch": result.get("best_epoch"),
            "stop_reason": result.get("stop_reason"),
            "trained_tokens": result.get("trained_tokens"),
            "train_seconds": round(result.get("train_seconds", 0.0), 1),
            "wall_seconds": round(time.perf_counter() - started - eval_seconds, 1),
            "machine": {**machine.describe(), "load_average_end": machine.load()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", action="append", choices=sorted(VARIANTS), default=[])
    p.add_argument("--dataset", type=Path, default=banking77.DATASET)
    p.add_argument("--per-intent", type=int, default=10)
    p.add_argument("--eval-per-intent", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--first-eval-epoch", type=int, default=3)
    p.add_argument("--free", action="store_true", help="also answer freely (slower)")
    args = p.parse_args()
    RESULTS.mkdir(exist_ok=True)
    for name in args.variant or ["baseline"]:
        result = run_variant(name, VARIANTS[name], args)
        out = RESULTS / f"banking77_recipe_{time.strftime('%Y-%m-%d')}_{name}.json"
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps({k: result[k] for k in ("variant", "best_epoch", "train_seconds")}),
              flush=True)


if __name__ == "__main__":
    main()
