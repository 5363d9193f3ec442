"""The training recipe run by every worker: LoRA on a causal LM, data parallel.

    seed -> precision (measured once per machine, agreed by all workers)
    -> model (bf16 base + fp32 LoRA, or fp32) -> resume from the latest checkpoint if any
    -> for each epoch: global batches of `batch_size` examples split across workers, gradient
       accumulation over micro-batches, AdamW with linear warmup/decay, one gradient all-reduce
       per optimizer step, a checkpoint every `checkpoint_every_steps` -> validation loss ->
       checkpoint (rank 0) -> stop early if validation loss stopped improving -> next epoch

A checkpoint holds the adapter, the optimizer and the RunState (position in the epoch included),
and the adapter of the best validation epoch when that is not the current one: a resumed run
skips exactly the batches already trained (the epoch's order comes from the seed) and the export
takes the best epoch's adapter. The cluster is behind `WorkerContext` (Ray Train in
`workers.py`, a fake in unit tests).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from services.common import precision as precision_probe
from services.trainer import schedule
from services.trainer.config import EAGER_ATTENTION_MAX_LEN
from services.trainer.data import (
    IGNORE_INDEX,
    Example,
    collate,
    micro_batches,
    plan_epoch,
    shard,
    steps_per_epoch,
)
from services.trainer.export import StepRecord
from services.trainer.reporting import NullReporter, Progress, ProgressSink
from services.trainer.spec import JobSpec, base_model_folder

log = logging.getLogger(__name__)

WARMUP_FRACTION = 0.05
MAX_GRAD_NORM = 1.0
ADAPTER_DIR = "adapter"
BEST_ADAPTER_DIR = "best_adapter"   # only when the best epoch is not the checkpoint's own weights
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.pt"


@dataclass(frozen=True)
class RecipeConfig:
    spec: JobSpec
    pad_id: int
    precision: str = "auto"          # auto (measured, see pick_dtype) | bf16 | fp32
    precision_cache: str | None = None   # the probe's cache file (default: ~/.cache/finetune)
    micro_batch_tokens: int = 4096   # padded tokens per forward pass
    eager_attention_max_len: int = EAGER_ATTENTION_MAX_LEN   # see attention_for; 0: SDPA only
    threads: int | None = None       # torch threads per worker
    adapter_dir: str | None = None   # local copy of spec.from_adapter_uri


@dataclass
class RunState:
    """What a checkpoint restores besides weights and optimizer."""

    epoch: int = 0                   # epochs completed
    step: int = 0                    # optimizer steps completed
    trained_tokens: int = 0
    history: list[StepRecord] = field(default_factory=list)
    epoch_losses: list[float] = field(default_factory=list)        # token-weighted, per epoch
    validation_losses: list[float | None] = field(default_factory=list)
    # The epoch in progress (after a mid-epoch checkpoint): batches done, summed loss, targets.
    epoch_step: int = 0
    epoch_loss_sum: float = 0.0
    epoch_targets: int = 0
    best_epoch: int | None = None    # lowest validation loss so far (its adapter is exported)
    stop_reason: str | None = None   # why training stopped before max_epochs
    train_seconds: float = 0.0       # rank 0's time in optimizer steps (throughput), all attempts

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "history": [asdict(r) for r in self.history]})

    @classmethod
    def from_json(cls, text: str) -> "RunState":
        raw = json.loads(text)
        raw["history"] = [StepRecord(**r) for r in raw["history"]]
        return cls(**raw)


class WorkerContext(Protocol):
    rank: int
    world_size: int
    device: torch.device

    def wrap(self, module: nn.Module) -> nn.Module:
        """Make `module` data parallel (gradients averaged across workers on backward)."""

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor: ...

    def latest_checkpoint(self) -> AbstractContextManager[Path | None]: ...

    def report(self, metrics: dict, checkpoint_dir: Path | None) -> None:
        """Called by every worker at the same points (a barrier); rank 0 passes the checkpoint."""


EAGER, SDPA = "eager", "sdpa"


def attention_for(padded_length: int, device_type: str, eager_max_len: int) -> str:
    """The attention implementation for a micro-batch of rows padded to `padded_length`.

    On a CPU, torch's flash attention kernel costs a fixed amount per call that short rows
    never earn back, its backward most of all; the plain product-softmax-product path is
    faster there, and its S x S score matrix is small. Long rows keep SDPA, whose memory grows
    linearly. GPUs always keep SDPA.
    """
    return EAGER if device_type == "cpu" and padded_length <= eager_max_len else SDPA


class TargetLoss(nn.Module):
    """Summed cross-entropy over target tokens only.

    The LM head (49k x 576 for the default model) runs only on the positions that carry a label:
    for instruction data most tokens are prompt, so this skips most of the head's work and the
    float32 log-softmax over the vocabulary. Attention is picked per micro-batch by its padded
    length (`attention_for`); `eager_max_len` 0 keeps SDPA throughout.
    """

    def __init__(self, model: nn.Module, eager_max_len: int = 0):
        super().__init__()
        self.model = model  # a peft model
        self.eager_max_len = eager_max_len

    def forward(self, input_ids, attention_mask, labels) -> torch.Tensor:
        lm = self.model.get_base_model()  # type: ignore[operator]  # peft's, not a tensor
        wanted = attention_for(input_ids.shape[1], input_ids.device.type, self.eager_max_len)
        if lm.config._attn_implementation != wanted:
            lm.set_attn_implementation(wanted)  # the decoder reads it at every forward
        hidden = lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                  use_cache=False).last_hidden_state
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        logits = lm.get_output_embeddings()(hidden[:, :-1][keep])
        return F.cross_entropy(logits.float(), targets[keep], reduction="sum")


# ---------------------------------------------------------------------------------- setup

def pick_dtype(precision: str, device: torch.device, model_path: str,
               cache: precision_probe.ProbeCache | None = None) -> precision_probe.Choice:
    """The dtype of the frozen base weights (LoRA weights stay float32, under autocast).

    auto: measured on this machine by the precision probe (services.common.precision), cached
    per machine and model; bf16 and fp32 force a dtype (bf16 falls back to fp32 where the
    hardware cannot run it at all).
    """
    if precision == "fp32":
        return precision_probe.Choice(precision_probe.FP32, precision_probe.TRAINING, "requested")
    if precision == "bf16":
        supported = torch.cuda.is_bf16_supported() if device.type == "cuda" \
            else precision_probe.cpu_bf16_supported()
        if supported:
            return precision_probe.Choice(precision_probe.BF16, precision_probe.TRAINING,
                                          "requested")
        log.warning("bf16 requested but not supported on this %s: using fp32", device.type)
        return precision_probe.Choice(precision_probe.FP32, precision_probe.TRAINING,
                                      "unsupported")
    return precision_probe.choose_training(model_path, device, cache)


def agree_on_dtype(choice: precision_probe.Choice, ctx: "WorkerContext") -> torch.dtype:
    """Every worker trains in the same dtype: bf16 only where all of them chose it (workers on
    different machines can measure differently)."""
    votes = ctx.all_reduce_sum(torch.tensor([float(choice.dtype == precision_probe.BF16)],
                                            dtype=torch.float64))
    return torch.bfloat16 if votes[0].item() >= ctx.world_size else torch.float32


def build_model(spec: JobSpec, dtype: torch.dtype, adapter_dir: str | None) -> nn.Module:
    """The base model frozen in `dtype`, with trainable LoRA weights in float32."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from peft.tuners.tuners_utils import BaseTunerLayer
    from transformers import AutoModelForCausalLM

    opts = spec.options
    base = AutoModelForCausalLM.from_pretrained(spec.base_model.path, dtype=dtype,
                                                attn_implementation=SDPA)
    base.config.use_cache = False
    if adapter_dir:  # continue training an earlier adapter (its rank and modules win)
        model = PeftModel.from_pretrained(base, adapter_dir, is_trainable=True)
    else:
        model = get_peft_model(base, LoraConfig(
            r=opts.lora_rank, lora_alpha=opts.lora_alpha, lora_dropout=opts.lora_dropout,
            target_modules=list(opts.target_modules), bias="none", task_type="CAUSAL_LM"))
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    if dtype != torch.float32:
        # Under autocast peft's cast of every input to the fp32 adapter dtype is a wasted copy.
        for module in model.modules():
            if isinstance(module, BaseTunerLayer):
                module.cast_input_dtype_enabled = False  # type: ignore[assignment]
    return model


def add_embedding_noise(model: nn.Module, alpha: float) -> None:
    """NEFTune: while the model trains, add uniform noise of magnitude alpha / sqrt(L x d) to
    the input embeddings (L tokens per row, d their width). A regularizer that lets a small
    table be learnt without being memorized; evaluation (eval mode) sees none. The noise comes
    from torch's generator, which the loop seeds per step, so a resumed run draws the same."""
    embeddings = model.get_input_embeddings()   # type: ignore[operator]  # peft's, not a tensor

    def noisy(module: nn.Module, _args, output: torch.Tensor) -> torch.Tensor:
        if not module.training:
            return output
        scale = alpha / math.sqrt(output.shape[-2] * output.shape[-1])
        return output + torch.empty_like(output).uniform_(-scale, scale)

    embeddings.register_forward_hook(noisy)


def lr_factor(step: int, total_steps: int) -> float:
    """Linear warmup then linear decay; the first and last steps both get a non-zero rate."""
    warmup = max(1, math.ceil(WARMUP_FRACTION * total_steps))
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup))


# ------------------------------------------------------------------------------ the loop

def train(cfg: RecipeConfig, train_examples: Sequence[Example],
          validation_examples: Sequence[Example], ctx: WorkerContext,
          reporter: ProgressSink | None = None) -> dict:
    """Run (or resume) the whole training; returns the final metrics and status."""
    spec, opts = cfg.spec, cfg.spec.options
    reporter = reporter if reporter is not None and ctx.rank == 0 else NullReporter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(opts.seed)  # identical LoRA init on every worker
    entered = time.perf_counter()
    choice = pick_dtype(cfg.precision, ctx.device, base_model_folder(spec),
                        precision_probe.ProbeCache(cfg.precision_cache))
    dtype = agree_on_dtype(choice, ctx)
    autocast = (lambda: torch.autocast(ctx.device.type, dtype=dtype)) \
        if dtype != torch.float32 else nullcontext
    decided = time.perf_counter()
    model = build_model(spec, dtype, cfg.adapter_dir)
    if opts.neftune_noise_alpha:
        add_embedding_noise(model, opts.neftune_noise_alpha)
    model.to(ctx.device)
    built = time.perf_counter()

    state = RunState()
    optimizer_state = None
    best_weights: dict[str, torch.Tensor] | None = None   # rank 0: the best epoch's adapter
    with ctx.latest_checkpoint() as checkpoint:
        if checkpoint is not None:
            state, optimizer_state, best_weights = _load_checkpoint(checkpoint, model)
            log.info("resuming %s after epoch %d, step %d (%d steps into epoch %d)",
                     spec.job_id, state.epoch, state.step, state.epoch_step, state.epoch + 1)

    loss_module = TargetLoss(model, cfg.eager_attention_max_len)
    parallel = ctx.wrap(loss_module)
    params = [p for p in model.parameters() if p.requires_grad]
    lengths = [len(e) for e in train_examples]
    targets = [e.n_targets for e in train_examples]
    epoch_steps = steps_per_epoch(len(train_examples), opts.batch_size)
    total_steps = opts.max_epochs * epoch_steps
    interval = schedule.checkpoint_interval(epoch_steps, opts.checkpoint_every_steps)
    optimizer = torch.optim.AdamW(params, lr=opts.learning_rate, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                  lambda s: lr_factor(s, total_steps))
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state["optimizer"])
        scheduler.load_state_dict(optimizer_state["scheduler"])
    if ctx.rank == 0:
        log.info("training %s: %d examples, %d steps, %d workers, %s, %d trainable params, "
                 "a checkpoint every %d steps", spec.job_id, len(train_examples), total_steps,
                 ctx.world_size, dtype, sum(p.numel() for p in params), interval)
    precision_note = choice.summary() if dtype == _torch_dtype(choice.dtype) else \
        f"{choice.summary()}; training in {_dtype_name(dtype)}, as every worker agreed"
    precision_note += (f"; worker ready: precision decided in {decided - entered:.1f} s, "
                       f"model built in {built - decided:.1f} s")
    reporter.report(Progress(state.step / total_steps, state.epoch, state.step, total_steps,
                             state.trained_tokens, message=precision_note), force=True)
    if opts.early_stopping_patience and not validation_examples and ctx.rank == 0:
        log.warning("early stopping asked for, but there is no validation data: it is off")

    cancelled = False
    loop_started = time.perf_counter()
    for epoch in range(state.epoch + 1, opts.max_epochs + 1):
        model.train()
        started, epoch_tokens = time.perf_counter(), 0
        batches = plan_epoch(lengths, opts.batch_size, opts.seed, epoch)
        for index in range(state.epoch_step, len(batches)):  # skips what a checkpoint holds
            batch = batches[index]
            torch.manual_seed(schedule.step_seed(opts.seed, epoch, index, ctx.rank))  # dropout
            step_started = time.perf_counter()
            share = shard(batch, lengths, ctx.world_size)[ctx.rank]
            n_targets = sum(targets[i] for i in batch)
            local_loss = _accumulate(parallel, train_examples, share, batch[0], lengths,
                                     n_targets, cfg, ctx, autocast)
            torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            totals = ctx.all_reduce_sum(torch.tensor([local_loss, float(reporter.cancelled)],
                                                     dtype=torch.float64))
            state.train_seconds += time.perf_counter() - step_started
            state.step += 1
            state.epoch_step = index + 1
            step_tokens = sum(lengths[i] for i in batch)
            state.trained_tokens += step_tokens
            epoch_tokens += step_tokens
            loss = totals[0].item() / max(1, n_targets)
            state.epoch_loss_sum += totals[0].item()
            state.epoch_targets += n_targets
            state.history.append(StepRecord(state.step, epoch, loss))
            reporter.report(Progress(state.step / total_steps, epoch, state.step, total_steps,
                                     state.trained_tokens, loss))
            if totals[1].item() > 0:
                cancelled = True
                break
            if schedule.mid_epoch_checkpoint_due(state.epoch_step, len(batches), interval):
                _save_checkpoint(ctx, model, optimizer, scheduler, state,
                                 _metrics(state, "running"), best_weights)
        if cancelled:
            break
        if ctx.rank == 0:
            elapsed = time.perf_counter() - started
            log.info("epoch %d: loss %.4f, %d tokens in %.1fs (%.0f tokens/s)", epoch,
                     state.epoch_loss_sum / max(1, state.epoch_targets), epoch_tokens, elapsed,
                     epoch_tokens / max(elapsed, 1e-9))

        validation_loss = _evaluate(loss_module, validation_examples, cfg, ctx, autocast)
        last = state.history[-1]
        state.history[-1] = StepRecord(last.step, last.epoch, last.training_loss, validation_loss)
        state.epoch = epoch
        state.epoch_losses.append(state.epoch_loss_sum / max(1, state.epoch_targets))
        state.epoch_step, state.epoch_loss_sum, state.epoch_targets = 0, 0.0, 0
        state.validation_losses.append(validation_loss)
        state.best_epoch = schedule.best_epoch(state.validation_losses)
        if state.best_epoch == epoch:
            best_weights = None  # the checkpoint's own adapter is the best one
        elif state.best_epoch is not None and best_weights is None and ctx.rank == 0:
            raise RuntimeError("the best epoch's adapter was lost")  # cannot happen: see below
        state.stop_reason = schedule.early_stop_reason(state.validation_losses,
                                                       opts.early_stopping_patience)
        finished = epoch == opts.max_epochs or state.stop_reason is not None
        metrics = _metrics(state, "completed" if finished else "running")
        reporter.report(Progress(state.step / total_steps, epoch, state.step, total_steps,
                                 state.trained_tokens, last.training_loss, validation_loss,
                                 _epoch_message(epoch, opts.max_epochs, state.stop_reason)),
                        force=True)
        _save_checkpoint(ctx, model, optimizer, scheduler, state, metrics, best_weights)
        if state.best_epoch == epoch and ctx.rank == 0:
            best_weights = _adapter_weights(model)  # kept for later checkpoints of this run
        if state.stop_reason is not None:
            if ctx.rank == 0:
                log.info("%s: %s", spec.job_id, state.stop_reason)
            break

    # Rank 0's return value reaches the driver (Ray Train's Result.return_value).
    return {**_metrics(state, "cancelled" if cancelled else "completed"),
            "loop_seconds": time.perf_counter() - loop_started,  # this attempt, checkpoints too
            "precision": _dtype_name(dtype), "precision_source": choice.source,
            "precision_probe": {t.dtype: t.seconds for t in choice.timings}}


def _epoch_message(epoch: int, max_epochs: int, stop_reason: str | None) -> str:
    """The epoch-end progress message; it says when and why training stops early, so that the
    job's events tell it (DESCRIBE shows the shortened step count)."""
    done = f"epoch {epoch} of {max_epochs} done"
    return f"{done}; {stop_reason}" if stop_reason else done


def _torch_dtype(name: str) -> torch.dtype:
    return torch.bfloat16 if name == precision_probe.BF16 else torch.float32


def _dtype_name(dtype: torch.dtype) -> str:
    return precision_probe.BF16 if dtype == torch.bfloat16 else precision_probe.FP32


def _accumulate(parallel: nn.Module, examples: Sequence[Example], share: list[int],
                stand_in: int, lengths: Sequence[int], n_targets: int, cfg: RecipeConfig,
                ctx: WorkerContext, autocast) -> float:
    """Forward/backward this worker's share of one global batch; returns its summed loss.

    Each micro-batch's summed loss is scaled by world_size / (targets in the global batch):
    data parallelism averages gradients over workers, so the result is the exact token mean of
    the global batch however it is split. A worker with no examples (a batch smaller than the
    worker count) still joins the gradient all-reduce with a zero-weighted stand-in.
    """
    weight = ctx.world_size / max(1, n_targets)
    groups = micro_batches(share, lengths, cfg.micro_batch_tokens)
    if not groups:
        groups, weight = [[stand_in]], 0.0
    total = 0.0
    for k, group in enumerate(groups):
        last = k == len(groups) - 1
        sync = nullcontext() if last or not hasattr(parallel, "no_sync") \
            else parallel.no_sync()  # type: ignore[operator]  # DDP's, found by hasattr
        batch = {name: t.to(ctx.device)
                 for name, t in collate([examples[i] for i in group], cfg.pad_id).items()}
        with sync:
            with autocast():
                loss_sum = parallel(**batch)
            (loss_sum * weight).backward()
        total += loss_sum.item() if weight else 0.0
    return total


@torch.no_grad()
def _evaluate(loss_module: nn.Module, examples: Sequence[Example], cfg: RecipeConfig,
              ctx: WorkerContext, autocast) -> float | None:
    """Token-mean loss over the validation set, split across workers."""
    if not examples:
        return None
    loss_module.eval()
    lengths = [len(e) for e in examples]
    ordered = sorted(range(len(examples)), key=lambda i: (lengths[i], i))
    mine = ordered[ctx.rank::ctx.world_size]
    loss_sum = 0.0
    for group in micro_batches(mine, lengths, cfg.micro_batch_tokens):
        batch = {name: t.to(ctx.device)
                 for name, t in collate([examples[i] for i in group], cfg.pad_id).items()}
        with autocast():
            loss_sum += loss_module(**batch).item()
    n_targets = sum(examples[i].n_targets for i in mine)
    totals = ctx.all_reduce_sum(torch.tensor([loss_sum, float(n_targets)], dtype=torch.float64))
    loss_module.train()
    return totals[0].item() / max(1.0, totals[1].item())


def _metrics(state: RunState, status: str) -> dict:
    return {"status": status, "epoch": state.epoch, "step": state.step,
            "trained_tokens": state.trained_tokens,
            "training_loss": state.epoch_losses[-1] if state.epoch_losses else None,
            "validation_loss": state.validation_losses[-1] if state.validation_losses else None,
            "best_epoch": state.best_epoch, "stop_reason": state.stop_reason,
            "train_seconds": state.train_seconds}


# --------------------------------------------------------------------------- checkpoints

def _adapter_weights(model) -> dict[str, torch.Tensor]:
    """A CPU copy of the LoRA weights, keyed as peft saves them."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().to("cpu", copy=True).contiguous()
            for k, v in get_peft_model_state_dict(model).items()}


def _save_checkpoint(ctx: WorkerContext, model, optimizer, scheduler, state: RunState,
                     metrics: dict, best_weights: dict[str, torch.Tensor] | None) -> None:
    if ctx.rank != 0:
        ctx.report(metrics, None)
        return
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory(prefix="ft-ckpt-") as tmp:
        folder = Path(tmp)
        model.save_pretrained(folder / ADAPTER_DIR, safe_serialization=True)
        if best_weights is not None:
            best = folder / BEST_ADAPTER_DIR
            best.mkdir()
            save_file(best_weights, str(best / "adapter_model.safetensors"),
                      metadata={"format": "pt"})
            shutil.copy(folder / ADAPTER_DIR / "adapter_config.json", best)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                   folder / OPTIMIZER_FILE)
        (folder / STATE_FILE).write_text(state.to_json())
        ctx.report(metrics, folder)


def _load_checkpoint(folder: Path, model) -> tuple[RunState, dict, dict | None]:
    """Restore the adapter into `model`; returns the run state, optimizer state and the best
    epoch's adapter weights (None when there is no validation)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(folder / ADAPTER_DIR / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, weights)
    missing = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if missing:
        raise RuntimeError(f"checkpoint does not match the model: {missing[:3]}")
    state = RunState.from_json((folder / STATE_FILE).read_text())
    optimizer_state = torch.load(folder / OPTIMIZER_FILE, weights_only=True)
    best_file = folder / BEST_ADAPTER_DIR / "adapter_model.safetensors"
    best_weights = None
    if best_file.is_file():
        best_weights = load_file(str(best_file))
    elif state.best_epoch is not None:
        # Saved without a separate best adapter: its own weights are the best epoch's.
        if (state.best_epoch, state.epoch_step) != (state.epoch, 0):
            raise RuntimeError("checkpoint lacks the best epoch's adapter")
        best_weights = _adapter_weights(model)
    return state, optimizer_state, best_weights


def read_checkpoint_state(folder: Path) -> RunState:
    """The run state stored in a checkpoint (for export by the driver)."""
    return RunState.from_json((Path(folder) / STATE_FILE).read_text())


def checkpoint_adapter_dir(folder: Path) -> Path:
    """The checkpoint's current adapter (the last step's weights)."""
    return Path(folder) / ADAPTER_DIR


def export_adapter_dir(folder: Path) -> Path:
    """The adapter to export from a final checkpoint: the best validation epoch's, else the
    last."""
    state = read_checkpoint_state(folder)
    best = Path(folder) / BEST_ADAPTER_DIR
    if state.best_epoch is not None and state.best_epoch != state.epoch:
        if not (best / "adapter_model.safetensors").is_file():
            raise FileNotFoundError(f"checkpoint lacks epoch {state.best_epoch}'s adapter")
        return best
    return checkpoint_adapter_dir(folder)
