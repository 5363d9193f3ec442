"""The grouped LoRA ops against a per-row reference: rows without an adapter (-1) get none, on
both of their paths for batches with several adapters."""

import pytest
import torch

from services.inference import lora_ops

torch.manual_seed(0)
NUM_SLOTS, RANK, IN, OUT = 3, 4, 12, 10


def reference_shrink(x, a, idx, scale):
    out = torch.zeros(x.shape[0], RANK)
    for t, slot in enumerate(idx.tolist()):
        if slot >= 0:
            out[t] = scale * (x[t] @ a[slot].squeeze(0).float().t())
    return out


def reference_expand(x, b, y, idx, offset, size, add):
    y = y.clone()
    for t, slot in enumerate(idx.tolist()):
        if slot >= 0:
            val = (x[t] @ b[slot].squeeze(0).float().t())[:size]
            y[t, offset:offset + size] = y[t, offset:offset + size] + val if add else val
    return y


@pytest.fixture(autouse=True, params=["one-hot", "grouped"])
def mixed_batch_path(request, monkeypatch):
    """Every test runs on both paths for batches with several adapters (small and large)."""
    if request.param == "grouped":
        monkeypatch.setattr(lora_ops, "DENSE_MAX_ROW_SLOTS", 0)
    return request.param


@pytest.fixture
def weights():
    a = torch.randn(NUM_SLOTS, 1, RANK, IN, dtype=torch.bfloat16)
    b = torch.randn(NUM_SLOTS, 1, OUT, RANK, dtype=torch.bfloat16)
    return a, b


INDICES = [
    [0, 0, 0, 0, 0],           # one adapter: the whole-batch path
    [-1, -1, -1],              # base only: nothing applied
    [-1, 0, 1, -1, 2, 0, -1],  # mixed, base rows interleaved
    [2, -1],                   # one adapter and base rows: one product and a mask
    [-1, 1, 1, -1, 1, -1],
]


@pytest.mark.parametrize("indices", INDICES)
def test_shrink_matches_the_reference(weights, indices):
    a, _ = weights
    idx = torch.tensor(indices)
    x = torch.randn(len(indices), IN)
    out = torch.full((len(indices), RANK), 7.0)  # stale buffer contents must not survive
    lora_ops.bgmv_shrink(x, a, out, idx, 0.5)
    torch.testing.assert_close(out, reference_shrink(x, a, idx, 0.5))


@pytest.mark.parametrize("indices", INDICES)
@pytest.mark.parametrize("add", [True, False])
def test_expand_matches_the_reference_and_leaves_base_rows_alone(weights, indices, add):
    _, b = weights
    idx = torch.tensor(indices)
    x = torch.randn(len(indices), RANK)
    y = torch.randn(len(indices), OUT)
    expected = reference_expand(x, b, y, idx, 0, OUT, add)
    lora_ops.bgmv_expand(x, b, y, idx, add)
    torch.testing.assert_close(y, expected)
    base_rows = idx == -1
    torch.testing.assert_close(y[base_rows], expected[base_rows])


@pytest.mark.parametrize("indices", INDICES)
def test_expand_slice_writes_only_its_slice(weights, indices):
    _, b = weights
    idx = torch.tensor(indices)
    x = torch.randn(len(indices), RANK)
    y = torch.randn(len(indices), 3 * OUT)
    expected = reference_expand(x, b, y, idx, OUT, OUT, True)
    lora_ops.bgmv_expand_slice(x, b, y, idx, OUT, OUT, True)
    torch.testing.assert_close(y, expected)


def test_prefill_ops_expand_indices_per_sequence(weights):
    a, b = weights
    seq_lens = torch.tensor([2, 3, 1])
    per_seq = torch.tensor([1, -1, 0])
    per_token = torch.repeat_interleave(per_seq, seq_lens)
    x = torch.randn(6, IN)
    shrunk = torch.zeros(6, RANK)
    lora_ops.sgmv_shrink(x, a, shrunk, None, seq_lens, per_seq, 3, 3, 6, 2.0)
    torch.testing.assert_close(shrunk, reference_shrink(x, a, per_token, 2.0))
    y = torch.randn(6, OUT)
    expected = reference_expand(shrunk, b, y, per_token, 0, OUT, True)
    lora_ops.sgmv_expand(shrunk, b, y, None, seq_lens, per_seq, 3, 3, 6, True)
    torch.testing.assert_close(y, expected)
    y2 = torch.randn(6, 2 * OUT)
    expected2 = reference_expand(shrunk, b, y2, per_token, OUT, OUT, False)
    lora_ops.sgmv_expand_slice(shrunk, b, y2, None, seq_lens, per_seq, 3, 3, 6, OUT, OUT, False)
    torch.testing.assert_close(y2, expected2)


def test_three_dimensional_weights_are_accepted(weights):
    a, _ = weights
    idx = torch.tensor([1, -1, 1])
    x = torch.randn(3, IN)
    out = torch.zeros(3, RANK)
    lora_ops.bgmv_shrink(x, a.squeeze(1), out, idx, 1.0)
    torch.testing.assert_close(out, reference_shrink(x, a, idx, 1.0))


def test_the_ops_keep_vllms_names():
    assert sorted(lora_ops.OPS) == ["bgmv_expand", "bgmv_expand_slice", "bgmv_shrink",
                                    "sgmv_expand", "sgmv_expand_slice", "sgmv_shrink"]
