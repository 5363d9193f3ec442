"""The training loop on a tiny random Llama, one process, no Ray (FakeContext)."""

import copy
import json

import re

import pytest
import torch
import torch.nn.functional as F
from trainer_testbed import CancellingReporter, FakeContext, make_spec, synthetic_examples

from services.trainer import recipe
from services.trainer.data import collate
from services.common import precision
from services.trainer.recipe import RecipeConfig, TargetLoss, build_model, lr_factor, train


def config(spec, **kw) -> RecipeConfig:
    return RecipeConfig(spec=spec, pad_id=0, precision="fp32", threads=1, **kw)


def test_lr_schedule_warms_up_then_decays_and_wastes_no_step():
    total = 40
    factors = [lr_factor(s, total) for s in range(total)]
    assert all(f > 0 for f in factors)
    peak = factors.index(max(factors))
    assert max(factors) == 1.0 and 0 < peak <= 3
    assert all(a >= b for a, b in zip(factors[peak:], factors[peak + 1:]))
    assert factors[0] < 1.0 and factors[-1] < 0.1
    assert lr_factor(0, 1) > 0


def test_target_loss_is_the_token_sum_of_hf_loss(tiny_model_dir):
    """Shift and mask: a one-token completion and padded rows count exactly once per target."""
    spec = make_spec(tiny_model_dir)
    model = build_model(spec, torch.float32, None).eval()
    examples = synthetic_examples(3)
    # The third example keeps only its last target (a one-token completion).
    short = examples[2]
    short.labels[:-1] = -100
    batch = collate(examples, pad_id=0)
    ours = TargetLoss(model)(**batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    shifted = batch["labels"][:, 1:]
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                               shifted.reshape(-1), ignore_index=-100, reduction="sum")
    assert torch.allclose(ours, expected, rtol=1e-5, atol=1e-5)
    assert int((shifted != -100).sum()) == sum(e.n_targets for e in examples)


def test_attention_is_eager_only_for_short_rows_on_a_cpu():
    assert recipe.attention_for(64, "cpu", 256) == recipe.EAGER
    assert recipe.attention_for(256, "cpu", 256) == recipe.EAGER
    assert recipe.attention_for(257, "cpu", 256) == recipe.SDPA
    assert recipe.attention_for(8, "cpu", 0) == recipe.SDPA      # 0: SDPA throughout
    assert recipe.attention_for(8, "cuda", 256) == recipe.SDPA


def test_eager_and_sdpa_attention_give_the_same_loss_and_gradients(tiny_model_dir):
    """Padded rows of different lengths: the switch changes the kernel, not the numbers."""
    spec = make_spec(tiny_model_dir)
    model = build_model(spec, torch.float32, None)
    examples = synthetic_examples(4)
    assert len({len(e) for e in examples}) > 1   # so the batch has padding
    batch = collate(examples, pad_id=0)
    length = batch["input_ids"].shape[1]
    results = {}
    for eager_max_len in (0, length):
        model.zero_grad(set_to_none=True)
        loss = TargetLoss(model, eager_max_len)(**batch)
        loss.backward()
        results[model.get_base_model().config._attn_implementation] = (loss.detach(),
                                                                       _grads(model))
    assert set(results) == {recipe.EAGER, recipe.SDPA}
    (eager_loss, eager_grads), (sdpa_loss, sdpa_grads) = results[recipe.EAGER], \
        results[recipe.SDPA]
    assert torch.allclose(eager_loss, sdpa_loss, rtol=1e-5, atol=1e-5)
    for name, g in sdpa_grads.items():
        assert torch.allclose(eager_grads[name], g, rtol=1e-4, atol=1e-6), name


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_split_across_micro_batches_and_workers_gives_the_global_mean_gradient(tiny_model_dir):
    spec = make_spec(tiny_model_dir)
    examples = synthetic_examples(6, seed=3)
    lengths = [len(e) for e in examples]
    batch = list(range(6))
    n_targets = sum(e.n_targets for e in examples)
    nocast = recipe.nullcontext

    def run(world_size, rank, micro_tokens, model):
        ctx = FakeContext("/unused", rank=rank, world_size=world_size)
        share = recipe.shard(batch, lengths, world_size)[rank]
        module = TargetLoss(model)
        loss = recipe._accumulate(module, examples, share, batch[0], lengths, n_targets,
                                  config(spec, micro_batch_tokens=micro_tokens), ctx, nocast)
        return loss, _grads(model)

    torch.manual_seed(0)
    base = build_model(spec, torch.float32, None)
    for name, p in base.named_parameters():
        if "lora_B" in name:  # zero at init, which would make every lora_A gradient zero
            p.data.normal_(0, 0.1)
    whole_loss, whole = run(1, 0, 10_000, copy.deepcopy(base))
    _, tiny_micro = run(1, 0, 12, copy.deepcopy(base))          # one example per micro-batch
    loss0, g0 = run(2, 0, 20, copy.deepcopy(base))
    loss1, g1 = run(2, 1, 20, copy.deepcopy(base))
    for name, g in whole.items():
        assert torch.allclose(tiny_micro[name], g, atol=1e-6)
        assert torch.allclose((g0[name] + g1[name]) / 2, g, atol=1e-6)  # what DDP averages
    assert whole_loss == pytest.approx(loss0 + loss1, rel=1e-5)


def test_a_worker_without_examples_contributes_zero_gradient(tiny_model_dir):
    spec = make_spec(tiny_model_dir)
    examples = synthetic_examples(1)
    model = build_model(spec, torch.float32, None)
    loss = recipe._accumulate(TargetLoss(model), examples, [], 0, [len(examples[0])],
                              examples[0].n_targets, config(spec),
                              FakeContext("/unused", rank=1, world_size=2), recipe.nullcontext)
    assert loss == 0.0
    assert all(torch.count_nonzero(g) == 0 for g in _grads(model).values())


def test_training_lowers_the_loss_and_records_every_step(tiny_model_dir, tmp_path):
    spec = make_spec(tiny_model_dir, max_epochs=4, batch_size=4)
    train_set, validation = synthetic_examples(16), synthetic_examples(4, seed=9)
    ctx = FakeContext(tmp_path)
    metrics = train(config(spec), train_set, validation, ctx)

    assert metrics["status"] == "completed"
    # 4 steps an epoch: a checkpoint after every step (a quarter epoch), epoch ends included.
    assert [m["step"] for m, _ in ctx.reports] == list(range(1, 17))
    assert [m["epoch"] for m, _ in ctx.reports if m["step"] % 4 == 0] == [1, 2, 3, 4]
    assert all(folder is not None for _, folder in ctx.reports)
    state = recipe.read_checkpoint_state(ctx.reports[-1][1])
    assert [r.step for r in state.history] == list(range(1, 17))
    assert [r.epoch for r in state.history] == [e for e in (1, 2, 3, 4) for _ in range(4)]
    with_validation = [r.step for r in state.history if r.validation_loss is not None]
    assert with_validation == [4, 8, 12, 16]
    assert state.epoch_losses[-1] < state.epoch_losses[0] * 0.5
    assert state.validation_losses[-1] < state.validation_losses[0]
    assert state.trained_tokens == 4 * sum(len(e) for e in train_set)
    adapter = recipe.checkpoint_adapter_dir(ctx.reports[-1][1])
    assert (adapter / "adapter_model.safetensors").exists()
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4


def test_resume_continues_after_the_checkpointed_epoch(tiny_model_dir, tmp_path):
    spec = make_spec(tiny_model_dir, max_epochs=3, batch_size=4)
    train_set = synthetic_examples(8)
    first = FakeContext(tmp_path / "a")
    train(config(spec), train_set, [], first)
    after_epoch_1 = next(folder for m, folder in first.reports if m["step"] == 2)

    resumed = FakeContext(tmp_path / "b", resume_from=after_epoch_1)
    metrics = train(config(spec), train_set, [], resumed)
    assert [m["step"] for m, _ in resumed.reports] == [3, 4, 5, 6]
    assert [m["epoch"] for m, _ in resumed.reports] == [1, 2, 2, 3]   # epochs completed
    full = recipe.read_checkpoint_state(first.reports[-1][1])
    again = recipe.read_checkpoint_state(resumed.reports[-1][1])
    assert [r.step for r in again.history] == [r.step for r in full.history]
    assert again.trained_tokens == full.trained_tokens == metrics["trained_tokens"]
    # Same data order, same restored weights and optimizer: the same losses.
    for a, b in zip(again.history, full.history):
        assert a.training_loss == pytest.approx(b.training_loss, rel=1e-4)


def test_cancellation_stops_training_without_a_checkpoint(tiny_model_dir, tmp_path):
    spec = make_spec(tiny_model_dir, max_epochs=3, batch_size=4, checkpoint_every_steps=100)
    ctx = FakeContext(tmp_path)
    reporter = CancellingReporter(after=3)   # the precision note, then steps 1 and 2
    metrics = train(config(spec), synthetic_examples(16), [], ctx, reporter)
    assert metrics["status"] == "cancelled"
    # Control said so in the response to step 2's report; workers agree on it with step 3's
    # all-reduce, so every worker stops after the same step.
    assert metrics["step"] == 3
    assert ctx.reports == []


def test_rank_zero_reports_progress_with_validation_at_epoch_ends(tiny_model_dir, tmp_path):
    spec = make_spec(tiny_model_dir, max_epochs=2, batch_size=4)
    reporter = CancellingReporter(after=10**6)
    train(config(spec), synthetic_examples(8), synthetic_examples(2, seed=5),
          FakeContext(tmp_path), reporter)
    forced = [u for u, force in reporter.updates if force]
    assert forced[0].message.startswith("training precision") and forced[0].step == 0
    assert re.search(r"precision decided in \d+\.\d s, model built in \d+\.\d s$",
                     forced[0].message), forced[0].message
    forced = forced[1:]
    assert [u.epoch for u in forced] == [1, 2]
    assert all(u.validation_loss is not None for u in forced)
    steps = [u.step for u, force in reporter.updates if not force]
    assert steps == [1, 2, 3, 4]
    assert reporter.updates[-1][0].progress == 1.0
    assert reporter.updates[-1][0].trained_tokens > 0


def test_only_rank_zero_reports(tiny_model_dir, tmp_path):
    spec = make_spec(tiny_model_dir, max_epochs=1, batch_size=4)
    reporter = CancellingReporter(after=10**6)
    ctx = FakeContext(tmp_path, rank=1, world_size=2)
    train(config(spec), synthetic_examples(8), [], ctx, reporter)
    assert reporter.updates == []
    assert ctx.reports[0][1] is None   # rank 1 reports metrics, never a checkpoint


def test_pick_dtype_honours_a_request_and_measures_auto(monkeypatch, tmp_path):
    cpu = torch.device("cpu")
    assert recipe.pick_dtype("fp32", cpu, "unused").dtype == "fp32"
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: False)
    forced = recipe.pick_dtype("bf16", cpu, "unused")
    assert (forced.dtype, forced.source) == ("fp32", "unsupported")
    asked = []
    monkeypatch.setattr(precision, "choose_training",
                        lambda path, device, cache: asked.append(path) or
                        precision.Choice("bf16", "training", "probe"))
    assert recipe.pick_dtype("auto", cpu, "/models/m").dtype == "bf16"
    assert asked == ["/models/m"]


def test_workers_train_in_bf16_only_when_every_one_chose_it(tmp_path):
    bf16 = precision.Choice("bf16", "training", "probe")
    fp32 = precision.Choice("fp32", "training", "probe")

    class Votes(FakeContext):
        def __init__(self, others: float):
            super().__init__(tmp_path, rank=0, world_size=2)
            self.others = others

        def all_reduce_sum(self, tensor):
            return tensor + self.others

    assert recipe.agree_on_dtype(bf16, Votes(others=1.0)) == torch.bfloat16
    assert recipe.agree_on_dtype(bf16, Votes(others=0.0)) == torch.float32
    assert recipe.agree_on_dtype(fp32, Votes(others=1.0)) == torch.float32


def test_the_job_reports_its_precision(tiny_model_dir, tmp_path):
    spec = make_spec(tiny_model_dir, max_epochs=1, batch_size=4)
    reporter = CancellingReporter(after=10**6)
    metrics = train(config(spec), synthetic_examples(8), [], FakeContext(tmp_path), reporter)
    assert metrics["precision"] == "fp32" and metrics["precision_source"] == "requested"
    assert any("training precision fp32 (requested)" in update.message
               for update, _ in reporter.updates)


def test_continue_training_from_an_earlier_adapter(tiny_model_dir, tmp_path):
    train_set = synthetic_examples(8)
    first = FakeContext(tmp_path / "a")
    train(config(make_spec(tiny_model_dir, max_epochs=3, batch_size=4)), train_set, [], first)
    before = recipe.read_checkpoint_state(first.reports[-1][1])
    adapter = recipe.checkpoint_adapter_dir(first.reports[-1][1])

    later = FakeContext(tmp_path / "b")
    spec = make_spec(tiny_model_dir, max_epochs=1, batch_size=4, lora_rank=8)
    train(config(spec, adapter_dir=str(adapter)), train_set, [], later)
    after = recipe.read_checkpoint_state(later.reports[-1][1])
    # It starts where the earlier run ended, not from a fresh adapter, whose rank it keeps.
    assert after.history[0].training_loss < before.history[0].training_loss * 0.5
    saved = json.loads((recipe.checkpoint_adapter_dir(later.reports[-1][1])
                        / "adapter_config.json").read_text())
    assert saved["r"] == 4


def _adapter(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def _same_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_step_checkpoints_resume_mid_epoch_exactly(tiny_model_dir, tmp_path):
    """Resumed from a checkpoint taken mid-epoch, a run skips exactly the batches already
    trained and continues with the same losses (dropout on: per-step seeds make it exact)."""
    spec = make_spec(tiny_model_dir, max_epochs=2, batch_size=4, lora_dropout=0.1,
                     checkpoint_every_steps=2)
    train_set, validation = synthetic_examples(24), synthetic_examples(4, seed=9)
    full = FakeContext(tmp_path / "full")
    train(config(spec), train_set, validation, full)
    # 6 steps an epoch: checkpoints after steps 2 and 4, the epoch end (6), then 8, 10, 12.
    steps = [m["step"] for m, _ in full.reports]
    assert steps == [2, 4, 6, 8, 10, 12]
    assert [m["status"] for m, _ in full.reports] == ["running"] * 5 + ["completed"]
    reference = recipe.read_checkpoint_state(full.reports[-1][1])

    for kept in (1, 3):                    # mid-epoch 1 (step 4), mid-epoch 2 (step 8)
        checkpoint = full.reports[kept][1]
        saved = recipe.read_checkpoint_state(checkpoint)
        assert saved.epoch_step == 4 - 2 * (kept == 3) and saved.epoch_step > 0
        resumed = FakeContext(tmp_path / f"resumed{kept}", resume_from=checkpoint)
        metrics = train(config(spec), train_set, validation, resumed)
        assert [m["step"] for m, _ in resumed.reports] == steps[kept + 1:]
        again = recipe.read_checkpoint_state(resumed.reports[-1][1])
        assert [(r.step, r.epoch) for r in again.history] == \
            [(r.step, r.epoch) for r in reference.history]               # each step once
        for a, b in zip(again.history, reference.history):
            assert a.training_loss == pytest.approx(b.training_loss, rel=1e-5)
            assert (a.validation_loss is None) == (b.validation_loss is None)
        assert again.epoch_losses == pytest.approx(reference.epoch_losses, rel=1e-5)
        assert again.validation_losses == pytest.approx(reference.validation_losses, rel=1e-5)
        assert again.trained_tokens == reference.trained_tokens == metrics["trained_tokens"]
        assert again.trained_tokens == 2 * sum(len(e) for e in train_set)


def test_default_checkpoints_every_quarter_epoch(tiny_model_dir, tmp_path):
    spec = make_spec(tiny_model_dir, max_epochs=1, batch_size=2)   # 8 steps: every 2
    ctx = FakeContext(tmp_path)
    train(config(spec), synthetic_examples(16), [], ctx)
    assert [m["step"] for m, _ in ctx.reports] == [2, 4, 6, 8]


def test_early_stopping_exports_the_best_epoch(tiny_model_dir, tmp_path, monkeypatch):
    """Validation loss (scripted) is best at epoch 2 and worse for the next 2: with patience 2
    training stops after epoch 4 and the checkpoint exports epoch 2's adapter."""
    scripted = iter([3.0, 2.0, 2.5, 2.6, 1.0])
    monkeypatch.setattr(recipe, "_evaluate", lambda *args: next(scripted))
    spec = make_spec(tiny_model_dir, max_epochs=5, batch_size=4, early_stopping_patience=2)
    train_set = synthetic_examples(8)
    ctx = FakeContext(tmp_path / "run")
    metrics = train(config(spec), train_set, synthetic_examples(2), ctx)

    assert metrics["status"] == "completed" and metrics["epoch"] == 4
    assert metrics["best_epoch"] == 2 and "did not improve for 2 epochs" in metrics["stop_reason"]
    ends = {m["epoch"]: folder for m, folder in ctx.reports if m["step"] % 2 == 0}
    final = ctx.reports[-1][1]
    state = recipe.read_checkpoint_state(final)
    assert (state.epoch, state.step, state.best_epoch) == (4, 8, 2)
    assert [r.step for r in state.history] == list(range(1, 9))    # every step trained
    assert state.trained_tokens == 4 * sum(len(e) for e in train_set)
    exported = recipe.export_adapter_dir(final)
    assert exported != recipe.checkpoint_adapter_dir(final)
    epoch2 = _adapter(recipe.checkpoint_adapter_dir(ends[2]))
    assert _same_weights(_adapter(exported), epoch2)
    assert not _same_weights(_adapter(recipe.checkpoint_adapter_dir(final)), epoch2)
    assert (exported / "adapter_config.json").is_file()


def test_the_best_adapter_survives_a_resume(tiny_model_dir, tmp_path, monkeypatch):
    losses = [3.0, 2.0, 2.5, 2.6]
    spec = make_spec(tiny_model_dir, max_epochs=4, batch_size=4, checkpoint_every_steps=1)
    train_set, validation = synthetic_examples(8), synthetic_examples(2)
    scripted = iter(losses)
    monkeypatch.setattr(recipe, "_evaluate", lambda *args: next(scripted))
    full = FakeContext(tmp_path / "full")
    train(config(spec), train_set, validation, full)
    epoch2 = _adapter(recipe.checkpoint_adapter_dir(full.reports[3][1]))   # step 4: epoch 2 end

    # Resume from step 5 (mid-epoch 3, best epoch 2 held apart) and from step 6 (epoch 3 end).
    for kept in (4, 5):
        scripted = iter(losses[2:])
        monkeypatch.setattr(recipe, "_evaluate", lambda *args: next(scripted))
        resumed = FakeContext(tmp_path / f"resumed{kept}", resume_from=full.reports[kept][1])
        assert train(config(spec), train_set, validation, resumed)["best_epoch"] == 2
        assert _same_weights(_adapter(recipe.export_adapter_dir(resumed.reports[-1][1])), epoch2)


def test_without_validation_the_last_epoch_is_exported(tiny_model_dir, tmp_path):
    spec = make_spec(tiny_model_dir, max_epochs=2, batch_size=4, early_stopping_patience=1)
    ctx = FakeContext(tmp_path)
    metrics = train(config(spec), synthetic_examples(8), [], ctx)
    assert (metrics["epoch"], metrics["best_epoch"], metrics["stop_reason"]) == (2, None, None)
    final = ctx.reports[-1][1]
    assert recipe.export_adapter_dir(final) == recipe.checkpoint_adapter_dir(final)


def test_pick_dtype_on_cuda_follows_the_device(monkeypatch):
    """The GPU path cannot run here: a bf16 request holds where the GPU supports bf16, falls back
    to fp32 where it does not; auto measures on the GPU."""
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert recipe.pick_dtype("bf16", cuda, "unused").dtype == "bf16"
    assert recipe.pick_dtype("fp32", cuda, "unused").dtype == "fp32"
    monkeypatch.setattr(precision, "choose_training",
                        lambda path, device, cache: precision.Choice(
                            "bf16" if device.type == "cuda" else "fp32", "training", "probe"))
    assert recipe.pick_dtype("auto", cuda, "unused").dtype == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert recipe.pick_dtype("bf16", cuda, "unused").dtype == "fp32"


def test_the_last_epoch_report_says_why_training_stopped_early():
    assert recipe._epoch_message(2, 8, None) == "epoch 2 of 8 done"
    assert recipe._epoch_message(6, 8, "early stopping: no better after epoch 5") == \
        "epoch 6 of 8 done; early stopping: no better after epoch 5"


def test_neftune_noise_is_bounded_training_only_and_seeded(tiny_model_dir):
    spec = make_spec(tiny_model_dir)
    model = build_model(spec, torch.float32, None)
    embeddings = model.get_input_embeddings()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    clean = embeddings(ids).detach()
    recipe.add_embedding_noise(model, alpha=5.0)
    model.train()
    torch.manual_seed(3)
    noisy = embeddings(ids).detach()
    bound = 5.0 / (ids.shape[1] * clean.shape[-1]) ** 0.5
    assert 0 < (noisy - clean).abs().max() <= bound * (1 + 1e-6)
    torch.manual_seed(3)
    assert torch.equal(embeddings(ids).detach(), noisy)   # a resumed step draws the same
    model.eval()
    assert torch.equal(embeddings(ids).detach(), clean)   # validation and export see none


def test_a_job_with_neftune_trains_and_resumes_exactly(tiny_model_dir, tmp_path):
    spec = make_spec(tiny_model_dir, max_epochs=2, batch_size=4, neftune_noise_alpha=5.0,
                     checkpoint_every_steps=2)
    train_set = synthetic_examples(16)
    full = FakeContext(tmp_path / "full")
    train(config(spec), train_set, [], full)
    reference = recipe.read_checkpoint_state(full.reports[-1][1])
    resumed = FakeContext(tmp_path / "resumed", resume_from=full.reports[1][1])
    train(config(spec), train_set, [], resumed)
    again = recipe.read_checkpoint_state(resumed.reports[-1][1])
    assert [r.training_loss for r in again.history] == \
        pytest.approx([r.training_loss for r in reference.history], rel=1e-5)
    plain = FakeContext(tmp_path / "plain")
    train(config(make_spec(tiny_model_dir, max_epochs=2, batch_size=4,
                           checkpoint_every_steps=2)), train_set, [], plain)
    without = recipe.read_checkpoint_state(plain.reports[-1][1])
    assert without.history[-1].training_loss != reference.history[-1].training_loss
