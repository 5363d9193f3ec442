"""The fused LoRA path (one plan per step, slices fused, weights cast once per adapter load)
against a per-row, per-slice reference, on each of its paths: one adapter, one adapter beside
base rows, several adapters in a small step (one-hot) and in a large one (per adapter, rows
in one run or scattered)."""

import pytest
import torch

from services.inference import lora_ops

SLOTS, MAX_RANK, IN = 4, 8, 12
SLICES = (10, 6, 6)    # a merged qkv-like layer


@pytest.fixture(autouse=True)
def seeded():
    """Inputs drawn from torch's global generator are the same on every run."""
    torch.manual_seed(0)


def stacks(ranks, dtype=torch.bfloat16, seed=0, features=IN, slices=SLICES,
           max_rank=MAX_RANK):
    """vLLM's stacked layout: [slots, 1, max_rank, in] and [slots, 1, out_i, max_rank] per
    slice, each adapter's rank zero-padded to max_rank."""
    g = torch.Generator().manual_seed(seed)
    a = [torch.zeros(SLOTS, 1, max_rank, features, dtype=dtype) for _ in slices]
    b = [torch.zeros(SLOTS, 1, out, max_rank, dtype=dtype) for out in slices]
    for slot, rank in enumerate(ranks):
        for a_i, b_i in zip(a, b):
            a_i[slot, 0, :rank] = torch.randn(rank, features, generator=g)
            b_i[slot, 0, :, :rank] = torch.randn(b_i.shape[2], rank, generator=g)
    return a, b


def reference(y, x, a, b, indices, scale):
    y = y.float().clone()
    for t, slot in enumerate(indices):
        if slot < 0:
            continue
        offset = 0
        for a_i, b_i in zip(a, b):
            size = b_i.shape[2]
            h = scale * (x[t].float() @ a_i[slot, 0].float().t())
            y[t, offset:offset + size] += h @ b_i[slot, 0].float().t()
            offset += size
    return y


INDICES = {
    "one adapter": [1, 1, 1, 1],
    "base only": [-1, -1, -1],
    "one adapter and base rows": [-1, 2, 2, -1, 2],
    "several, interleaved": [-1, 0, 1, -1, 3, 0, -1, 1],
    "several, in runs": [0, 0, 0, 2, 2, -1, -1, 3],
}


@pytest.mark.parametrize("path", ["small step", "large step"])
@pytest.mark.parametrize("name", list(INDICES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_fused_path_matches_the_reference(monkeypatch, path, name, dtype):
    if path == "large step":
        monkeypatch.setattr(lora_ops, "DENSE_MAX_ROW_SLOTS", 0)
    indices = INDICES[name]
    a, b = stacks([8, 3, 5, 8], dtype)
    weights = lora_ops.FusedLoraWeights(a, b, SLICES)
    weights.refresh((11, 12, 13, 14))
    x = torch.randn(len(indices), IN).to(dtype)
    y = torch.randn(len(indices), sum(SLICES)).to(dtype)
    expected = reference(y, x, a, b, indices, 0.5)
    lora_ops.add_fused_lora(y, x, weights, lora_ops.plan_step(torch.tensor(indices), SLOTS),
                            0.5)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(y.float(), expected, rtol=tolerance, atol=tolerance * 10)


def test_a_long_step_is_done_in_blocks_with_the_same_result(monkeypatch):
    monkeypatch.setattr(lora_ops, "CHUNK_ROWS", 3)
    a, b = stacks([8, 3, 5, 8])
    weights = lora_ops.FusedLoraWeights(a, b, SLICES)
    weights.refresh((11, 12, 13, 14))
    for indices in ([2] * 10, [2, -1] * 5, [0] * 4 + [1] * 7):
        x = torch.randn(len(indices), IN)
        y = torch.randn(len(indices), sum(SLICES))
        expected = reference(y, x, a, b, indices, 1.0)
        monkeypatch.setattr(lora_ops, "DENSE_MAX_ROW_SLOTS", 0)
        lora_ops.add_fused_lora(y, x, weights, lora_ops.plan_step(torch.tensor(indices), SLOTS))
        torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-4)


def test_base_rows_are_left_exactly_as_they_were():
    a, b = stacks([8, 8, 8, 8])
    weights = lora_ops.FusedLoraWeights(a, b, SLICES)
    weights.refresh((1, 2, 3, 4))
    indices = [-1, 0, 3, -1, 1, 2]
    y = torch.randn(len(indices), sum(SLICES)).to(torch.bfloat16)
    before = y.clone()
    lora_ops.add_fused_lora(y, torch.randn(len(indices), IN).to(torch.bfloat16), weights,
                            lora_ops.plan_step(torch.tensor(indices), SLOTS))
    assert torch.equal(y[[0, 3]], before[[0, 3]])
    assert not torch.equal(y[[1, 2, 4, 5]], before[[1, 2, 4, 5]])


def test_a_row_gets_the_same_answer_alone_and_in_any_batch():
    """Every path computes in float32 and adds once: a row's result alone and in batches that
    take the other paths differ at most by float32 rounding (BLAS may pick another kernel
    for another number of rows, so not bit for bit: up to ~20 ulps seen here, values ~10),
    never by a rounding step of a path's own: a bf16 intermediate is off by ~5e-2 here."""
    a, b = stacks([8, 4, 8, 2], torch.float32)
    weights = lora_ops.FusedLoraWeights(a, b, SLICES)
    weights.refresh((1, 2, 3, 4))
    x = torch.randn(1, IN)
    y = torch.randn(1, sum(SLICES))
    alone = y.clone()
    lora_ops.add_fused_lora(alone, x, weights, lora_ops.plan_step(torch.tensor([1]), SLOTS))
    for batch in ([1, -1, -1], [1, 0, 2, 3], [1, 1, 3]):
        rows = len(batch)
        together = torch.cat([y, torch.randn(rows - 1, sum(SLICES))])
        xs = torch.cat([x, torch.randn(rows - 1, IN)])
        lora_ops.add_fused_lora(together, xs, weights,
                                lora_ops.plan_step(torch.tensor(batch), SLOTS))
        torch.testing.assert_close(together[:1], alone, rtol=1e-5, atol=1e-5)


def test_weights_are_trimmed_to_the_largest_rank_loaded_and_follow_the_slots():
    a, b = stacks([3, 0, 2, 0])
    weights = lora_ops.FusedLoraWeights(a, b, SLICES)
    weights.refresh((7, None, 9, None))
    assert weights.rank == 3
    assert weights.a.shape == (SLOTS, len(SLICES) * 3, IN)

    # vLLM loads a rank-5 adapter into slot 1: the layout changes, the rank grows.
    g = torch.Generator().manual_seed(1)
    for a_i, b_i in zip(a, b):
        a_i[1, 0, :5] = torch.randn(5, IN, generator=g)
        b_i[1, 0, :, :5] = torch.randn(b_i.shape[2], 5, generator=g)
    layout = (7, 8, 9, None)
    weights.refresh(layout)
    assert weights.rank == 5
    x, y = torch.randn(2, IN), torch.zeros(2, sum(SLICES))
    lora_ops.add_fused_lora(y, x, weights, lora_ops.plan_step(torch.tensor([1, 0]), SLOTS))
    torch.testing.assert_close(y, reference(torch.zeros(2, sum(SLICES)), x, a, b, [1, 0], 1.0),
                               rtol=1e-2, atol=1e-2)

    # The same layout object again: nothing is re-read, even if the stacks change under it.
    for a_i in a:
        a_i[1].zero_()
    weights.refresh(layout)
    assert weights.a[1].abs().sum() > 0
    # A new layout where slot 1 holds another adapter: only then is it re-read.
    weights.refresh((7, 10, 9, None))
    assert weights.a[1].abs().sum() == 0


def test_an_idle_step_touches_nothing():
    a, b = stacks([4, 4, 4, 4])
    weights = lora_ops.FusedLoraWeights(a, b, SLICES)
    weights.refresh((1, 2, 3, 4))
    y = torch.randn(3, sum(SLICES))
    before = y.clone()
    plan = lora_ops.plan_step(torch.tensor([-1, -1, -1]), SLOTS)
    assert plan.idle
    lora_ops.add_fused_lora(y, torch.randn(3, IN), weights, plan)
    assert torch.equal(y, before)


def test_plans_pick_their_path():
    plan = lora_ops.plan_step(torch.tensor([2, 2, 2]), SLOTS)
    assert (plan.slot, plan.row_mask) == (2, None)
    plan = lora_ops.plan_step(torch.tensor([2, -1, 2]), SLOTS)
    assert plan.slot == 2 and plan.row_mask.flatten().tolist() == [1.0, 0.0, 1.0]
    plan = lora_ops.plan_step(torch.tensor([0, 1, -1]), SLOTS)
    assert plan.one_hot is not None and plan.one_hot.sum().item() == 2
    many = torch.tensor([0] * 600 + [1] * 500 + [0] * 10)
    groups = dict(lora_ops.plan_step(many, SLOTS).groups)
    assert groups[1] == slice(600, 1100)
    assert groups[0].tolist() == list(range(600)) + list(range(1100, 1110))


# --- the LoRA kernel (services/inference/lora_kernel.py) ------------------------------------

def built_kernel():
    """The kernel's library, built if need be; skips where no C compiler can build it (the
    engine then runs the torch path, which the tests above cover)."""
    from services.inference import lora_kernel

    if not lora_kernel.library_path().exists() and lora_kernel._compiler() is None:
        pytest.skip("no C compiler to build the LoRA kernel")
    return lora_kernel.build()


@pytest.fixture(scope="module", params=["avx512", "avx2", "baseline"])
def kernel(request):
    """Each of the kernel's variants this CPU can run (the one it picks among them), built
    from the repository's source (gcc is part of the install)."""
    from services.inference import lora_kernel

    path = built_kernel()
    if not lora_kernel.LoraKernel(path).supported(request.param):
        pytest.skip(f"this CPU cannot run the {request.param} variant")
    return lora_kernel.LoraKernel(path, request.param)


def kernel_weights(ranks, dtype=torch.bfloat16, **shape):
    a, b = stacks(ranks, dtype, **shape)
    weights = lora_ops.FusedLoraWeights(a, b, shape.get("slices", SLICES), with_kernel=True)
    weights.refresh((11, 12, 13, 14))
    return weights, a, b


def kernel_add(kernel, y, x, weights, indices, scale=1.0):
    """The kernel itself, asserting it took the layer (add_fused_lora would fall back)."""
    plan = lora_ops.plan_step(torch.tensor(indices), SLOTS)
    if plan.idle:
        return
    assert kernel.add(y, x, plan.kernel_rows, weights.kernel_layer, scale)


def test_the_fused_path_calls_the_kernel_when_given_one(kernel, monkeypatch):
    weights, a, b = kernel_weights([8, 3, 5, 8], torch.float32)
    calls = []
    monkeypatch.setattr(type(kernel), "add", lambda self, *args: calls.append(args) or True)
    y = torch.zeros(2, sum(SLICES))
    lora_ops.add_fused_lora(y, torch.randn(2, IN), weights,
                            lora_ops.plan_step(torch.tensor([0, 1]), SLOTS), 1.0, kernel)
    assert len(calls) == 1 and torch.equal(y, torch.zeros(2, sum(SLICES)))


@pytest.mark.parametrize("name", list(INDICES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("ranks", [[8, 3, 5, 8], [1, 1, 1, 1]])
def test_the_kernel_matches_the_reference(kernel, name, dtype, ranks):
    """Slices of 10 and 6 outputs over 12 inputs: every tail of the kernel's vector loops."""
    indices = INDICES[name]
    weights, a, b = kernel_weights(ranks, dtype)
    x = torch.randn(len(indices), IN).to(dtype)
    y = torch.randn(len(indices), sum(SLICES)).to(dtype)
    expected = reference(y, x, a, b, indices, 0.5)
    kernel_add(kernel, y, x, weights, indices, 0.5)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(y.float(), expected, rtol=tolerance, atol=tolerance * 10)


def test_the_kernel_takes_real_layer_shapes_and_strided_rows(kernel):
    """A merged qkv layer of the default model (576 in; 576, 192, 192 out) at rank 16, over
    row views with strides wider than their rows, as vLLM hands them over."""
    features, slices = 576, (576, 192, 192)
    weights, a, b = kernel_weights([16, 16, 8, 16], torch.bfloat16, features=features,
                                   slices=slices, max_rank=64)
    indices = [0, 1, -1, 2, 3, 0, 0, 0, 0, 1]
    x = torch.randn(len(indices), features + 64).to(torch.bfloat16)[:, :features]
    y = torch.randn(len(indices), sum(slices) + 32).to(torch.bfloat16)[:, :sum(slices)]
    expected = reference(y, x, a, b, indices, 2.0)
    kernel_add(kernel, y, x, weights, indices, 2.0)
    torch.testing.assert_close(y.float(), expected, rtol=2e-2, atol=2e-1)


def test_the_kernel_gives_a_row_the_same_bits_alone_and_in_any_batch(kernel):
    """A fixed summation order per row: unlike BLAS, the kernel's answer for a request does
    not depend on which rows share its step, its tile of four or its position."""
    weights, _, _ = kernel_weights([8, 4, 8, 2], torch.bfloat16)
    x = torch.randn(1, IN).to(torch.bfloat16)
    y = torch.randn(1, sum(SLICES)).to(torch.bfloat16)
    alone = y.clone()
    kernel_add(kernel, alone, x, weights, [1])
    for batch in ([1, -1, -1], [1, 0, 2, 3], [1, 1, 3], [1] * 9, [0, 0, 0, 0, 1, 1, 1]):
        rows = len(batch)
        at = batch.index(1) if batch[0] != 1 else 0
        together = torch.randn(rows, sum(SLICES)).to(torch.bfloat16)
        xs = torch.randn(rows, IN).to(torch.bfloat16)
        together[at], xs[at] = y[0], x[0]
        kernel_add(kernel, together, xs, weights, batch)
        assert torch.equal(together[at], alone[0]), batch


@pytest.mark.parametrize("shape", [dict(), dict(features=576, slices=(576, 192, 192),
                                               max_rank=64)])
def test_bf16_weights_stay_bf16_with_the_same_bits_as_in_float32(kernel, monkeypatch, shape):
    """vLLM's weights in bf16 are kept in bf16 for the kernel (half the bytes a step reads)
    and give exactly the answers of their float32 copies; float32 weights stay float32."""
    from services.inference import lora_kernel

    slices = shape.get("slices", SLICES)
    features = shape.get("features", IN)
    indices = [0, 1, -1, 2, 3, 0, 0, 0, 0, 1, 1, 2]
    x = torch.randn(len(indices), features).to(torch.bfloat16)
    y = torch.randn(len(indices), sum(slices)).to(torch.bfloat16)
    half, _, _ = kernel_weights([8, 3, 5, 8], torch.bfloat16, **shape)
    assert half.a_t.dtype == torch.bfloat16 and all(b.dtype == torch.bfloat16
                                                    for b in half.b_kernel)
    monkeypatch.setattr(lora_kernel, "weight_dtype", lambda source: torch.float32)
    full, _, _ = kernel_weights([8, 3, 5, 8], torch.bfloat16, **shape)
    assert full.a_t.dtype == torch.float32
    from_half, from_full = y.clone(), y.clone()
    kernel_add(kernel, from_half, x, half, indices, 0.5)
    kernel_add(kernel, from_full, x, full, indices, 0.5)
    assert torch.equal(from_half, from_full)
    monkeypatch.undo()
    assert kernel_weights([8, 3, 5, 8], torch.float32)[0].a_t.dtype == torch.float32


def test_the_kernel_leaves_base_rows_and_idle_steps_exactly_as_they_were(kernel):
    weights, _, _ = kernel_weights([8, 8, 8, 8])
    indices = [-1, 0, 3, -1, 1, 2]
    y = torch.randn(len(indices), sum(SLICES)).to(torch.bfloat16)
    before = y.clone()
    kernel_add(kernel, y, torch.randn(len(indices), IN).to(torch.bfloat16), weights, indices)
    assert torch.equal(y[[0, 3]], before[[0, 3]])
    assert not torch.equal(y[[1, 2, 4, 5]], before[[1, 2, 4, 5]])
    y = before.clone()
    lora_ops.add_fused_lora(y, torch.randn(len(indices), IN).to(torch.bfloat16), weights,
                            lora_ops.plan_step(torch.tensor([-1] * len(indices)), SLOTS), 1.0,
                            kernel)
    assert torch.equal(y, before)


def test_tensors_the_kernel_does_not_take_go_the_torch_way(kernel):
    """float16 rows are not the kernel's: the same call answers through the torch products."""
    weights, a, b = kernel_weights([8, 3, 5, 8], torch.float16)
    indices = [0, 1, -1, 2]
    x = torch.randn(len(indices), IN).to(torch.float16)
    y = torch.randn(len(indices), sum(SLICES)).to(torch.float16)
    expected = reference(y, x, a, b, indices, 1.0)
    plan = lora_ops.plan_step(torch.tensor(indices), SLOTS)
    assert not kernel.add(y, x, plan.kernel_rows, weights.kernel_layer, 1.0)
    lora_ops.add_fused_lora(y, x, weights, plan, 1.0, kernel)
    torch.testing.assert_close(y.float(), expected, rtol=2e-2, atol=2e-1)


def test_the_kernel_follows_slot_changes(kernel):
    """vLLM loads another adapter into a slot: the kernel reads the new weights."""
    weights, a, b = kernel_weights([3, 0, 2, 0], torch.float32)
    g = torch.Generator().manual_seed(1)
    for a_i, b_i in zip(a, b):
        a_i[1, 0, :5] = torch.randn(5, IN, generator=g)
        b_i[1, 0, :, :5] = torch.randn(b_i.shape[2], 5, generator=g)
    weights.refresh((11, 15, 13, 14))
    x, y = torch.randn(3, IN), torch.zeros(3, sum(SLICES))
    kernel_add(kernel, y, x, weights, [1, 0, 2])
    torch.testing.assert_close(y, reference(torch.zeros(3, sum(SLICES)), x, a, b, [1, 0, 2],
                                            1.0), rtol=1e-5, atol=1e-4)


def test_the_cpu_picks_the_widest_variant_it_runs():
    from services.inference import lora_kernel

    kernel = lora_kernel.LoraKernel(built_kernel())
    widest = next(isa for isa in lora_kernel.ISAS if kernel.supported(isa))
    assert kernel.isa == widest and kernel.supported("baseline")


def test_the_kernel_build_is_named_by_its_source_and_cached(tmp_path, monkeypatch):
    from services.inference import lora_kernel

    built_kernel()
    monkeypatch.setenv("FINETUNE_KERNEL_CACHE", str(tmp_path))
    built = lora_kernel.build()
    assert built.parent == tmp_path and built.exists()
    stamp = built.stat().st_mtime_ns
    assert lora_kernel.build() == built and built.stat().st_mtime_ns == stamp
    source = tmp_path / "lora_add.c"
    source.write_text(lora_kernel.SOURCE.read_text() + "\n/* changed */\n")
    monkeypatch.setattr(lora_kernel, "SOURCE", source)
    assert lora_kernel.library_path() != built


def test_without_a_compiler_the_engine_runs_the_torch_path(tmp_path, monkeypatch, caplog):
    from services.inference import lora_kernel

    monkeypatch.setenv("FINETUNE_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    lora_kernel.load.cache_clear()
    try:
        assert lora_kernel.load() is None
        assert "LoRA kernel is unavailable" in caplog.text
        monkeypatch.delenv("CC")
        monkeypatch.setenv("FINETUNE_LORA_KERNEL", "0")
        lora_kernel.load.cache_clear()
        assert lora_kernel.load() is None
    finally:
        lora_kernel.load.cache_clear()
