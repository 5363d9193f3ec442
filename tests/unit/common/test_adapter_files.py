"""The shared adapter checks against an adapter written by plain peft on the tiny Llama, and a
corpus of broken ones built here: each refused with its documented kind and a clear reason."""

from __future__ import annotations

import json
import pickle
import shutil
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from services.common import adapter_files
from services.common.adapter_files import (
    IncompatibleAdapter,
    MalformedAdapter,
    base_layer_shapes,
    base_linear_shapes,
    read_safetensors_header,
    shapes_from_config,
    validate_adapter,
)
from services.common.errors import FailedPrecondition, InvalidArgument

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Base:
    name: str
    path: Path
    target_modules: tuple[str, ...] = TARGETS


@pytest.fixture(scope="module")
def base(tiny_model_dir) -> Base:
    return Base(name=tiny_model_dir.name, path=tiny_model_dir)


@pytest.fixture(scope="module")
def shapes(tiny_model_dir):
    return base_linear_shapes(tiny_model_dir)


@pytest.fixture(scope="module")
def peft_adapter(tiny_model_dir, tmp_path_factory) -> Path:
    """Written by plain peft: get_peft_model on the tiny Llama, save_pretrained."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    out = tmp_path_factory.mktemp("peft") / "adapter"
    get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=list(TARGETS),
                                     init_lora_weights=False, task_type="CAUSAL_LM")) \
        .save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture
def adapter(peft_adapter, tmp_path) -> Path:
    """A fresh copy of the peft adapter, for a test to break."""
    return Path(shutil.copytree(peft_adapter, tmp_path / "adapter"))


def weights(folder: Path) -> Path:
    return folder / "adapter_model.safetensors"


def edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "adapter_config.json").read_text())
    config.update(changes)
    (folder / "adapter_config.json").write_text(json.dumps(config))


def rewrite_tensors(folder: Path, change) -> None:
    """Re-save the weights after `change(tensors)` edits the dict of tensors in place."""
    from safetensors.torch import load_file

    tensors = load_file(str(weights(folder)))
    change(tensors)
    save_file(tensors, str(weights(folder)))


def raw_safetensors(header: dict | bytes, data: bytes = b"", length: int | None = None) -> bytes:
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(body) if length is None else length) + body + data


Q = "base_model.model.model.layers.0.self_attn.q_proj"


def test_the_peft_adapter_passes(adapter, base, shapes):
    info = validate_adapter(adapter, base, 16, shapes)
    assert (info.rank, info.alpha, info.target_modules) == (4, 8.0, tuple(sorted(TARGETS)))


def test_config_shapes_agree_with_the_weights(tiny_model_dir, shapes, tmp_path):
    config = json.loads((tiny_model_dir / "config.json").read_text())
    from_config = shapes_from_config(config)
    assert from_config == {name: shape for name, shape in shapes.items() if name in from_config}
    assert len(from_config) == 2 * len(TARGETS)      # every projection of both layers
    # A folder without weights (control's copy of a base model may hold only its config)
    shutil.copy(tiny_model_dir / "config.json", tmp_path / "config.json")
    assert base_layer_shapes(tmp_path) == from_config
    assert base_layer_shapes(tiny_model_dir) == shapes


def test_the_peft_adapter_passes_against_config_shapes(adapter, base, tiny_model_dir):
    config = json.loads((tiny_model_dir / "config.json").read_text())
    validate_adapter(adapter, base, 16, shapes_from_config(config))


def test_a_hub_id_of_the_base_model_is_compatible(adapter, shapes):
    edit_config(adapter, base_model_name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct")
    validate_adapter(adapter, Base("smollm2-135m-instruct", Path("/m/smollm2-135m-instruct")),
                     16, shapes)


# Each broken adapter: (how it is broken, the refusal's kind, words of its reason)
def _pickle_weights(folder):
    weights(folder).write_bytes(pickle.dumps({"q": [1, 2, 3]}, protocol=4))


def _zip_weights(folder):
    with zipfile.ZipFile(weights(folder), "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps([1]))


def _header_length_past_the_end(folder):
    data = weights(folder).read_bytes()
    weights(folder).write_bytes(struct.pack("<Q", len(data)) + data[8:])


def _oversized_header(folder):
    weights(folder).write_bytes(raw_safetensors(b"{}", length=adapter_files.MAX_HEADER_BYTES + 1))


def _truncated_data(folder):
    data = weights(folder).read_bytes()
    weights(folder).write_bytes(data[:-100])


def _trailing_bytes(folder):
    with open(weights(folder), "ab") as f:
        f.write(b"\0" * 16)


def _header_not_json(folder):
    weights(folder).write_bytes(raw_safetensors(b"{not json"))


def _duplicate_tensor_names(folder):
    entry = '{"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}'
    weights(folder).write_bytes(raw_safetensors(f'{{"t": {entry}, "t": {entry}}}'.encode(),
                                                b"\0" * 4))


def _overlapping_tensors(folder):
    header = {f"{Q}.lora_A.weight": {"dtype": "F32", "shape": [4, 32], "data_offsets": [0, 512]},
              f"{Q}.lora_B.weight": {"dtype": "F32", "shape": [32, 4],
                                     "data_offsets": [256, 768]}}
    weights(folder).write_bytes(raw_safetensors(header, b"\0" * 768))


def _shape_that_lies_about_its_bytes(folder):
    header = {f"{Q}.lora_A.weight": {"dtype": "F32", "shape": [4, 32], "data_offsets": [0, 8]}}
    weights(folder).write_bytes(raw_safetensors(header, b"\0" * 8))


def _pickle_file_beside(folder):
    (folder / "adapter_model.bin").write_bytes(pickle.dumps("x"))


def _no_config(folder):
    (folder / "adapter_config.json").unlink()


def _no_weights(folder):
    weights(folder).unlink()


def _config_not_json(folder):
    (folder / "adapter_config.json").write_text("{nope")


def _config_too_large(folder):
    (folder / "adapter_config.json").write_text(" " * (adapter_files.MAX_CONFIG_BYTES + 1))


def _wrong_shapes(folder):
    # Trained on a 64-wide model: lora_A's input size does not fit q_proj's 32.
    def change(t):
        t[f"{Q}.lora_A.weight"] = torch.zeros(4, 64)
    rewrite_tensors(folder, change)


def _rank_over_the_limit(folder):
    edit_config(folder, r=32)


def _rank_pattern_over_the_limit(folder):
    edit_config(folder, rank_pattern={"q_proj": 64})


def _tensor_rank_not_in_the_config(folder):
    def change(t):
        t[f"{Q}.lora_A.weight"] = torch.zeros(2, 32)
        t[f"{Q}.lora_B.weight"] = torch.zeros(32, 2)
    rewrite_tensors(folder, change)


def _a_and_b_of_different_ranks(folder):
    edit_config(folder, rank_pattern={"k_proj": 2})

    def change(t):
        t[f"{Q}.lora_B.weight"] = torch.zeros(32, 2)
    rewrite_tensors(folder, change)


def _a_without_b(folder):
    rewrite_tensors(folder, lambda t: t.pop(f"{Q}.lora_B.weight"))


def _unsupported_target_module(folder):
    edit_config(folder, target_modules=["q_proj", "lm_head"])


def _tensor_on_an_unsupported_module(folder):
    def change(t):
        t["base_model.model.lm_head.lora_A.weight"] = torch.zeros(4, 32)
        t["base_model.model.lm_head.lora_B.weight"] = torch.zeros(96, 4)
    rewrite_tensors(folder, change)


def _layer_out_of_range(folder):
    def change(t):
        t[Q.replace("layers.0", "layers.5") + ".lora_A.weight"] = torch.zeros(4, 32)
        t[Q.replace("layers.0", "layers.5") + ".lora_B.weight"] = torch.zeros(32, 4)
    rewrite_tensors(folder, change)


def _integer_weights(folder):
    def change(t):
        t[f"{Q}.lora_A.weight"] = torch.zeros(4, 32, dtype=torch.int32)
    rewrite_tensors(folder, change)


def _not_a_lora_tensor(folder):
    def change(t):
        t[Q + ".weight"] = torch.zeros(32, 32)
    rewrite_tensors(folder, change)


def _wrong_base_model(folder):
    edit_config(folder, base_model_name_or_path="meta-llama/Llama-2-7b-hf")


def _dora(folder):
    edit_config(folder, use_dora=True)


def _not_lora(folder):
    edit_config(folder, peft_type="IA3")


def _rank_pattern_not_a_mapping(folder):
    edit_config(folder, rank_pattern=[4])


BROKEN = [
    (_pickle_weights, MalformedAdapter, "is a Python pickle, not safetensors"),
    (_zip_weights, MalformedAdapter, "zip archive (torch.save"),
    (_header_length_past_the_end, MalformedAdapter, "truncated: its header needs"),
    (_oversized_header, MalformedAdapter, "over the limit of 100000000"),
    (_truncated_data, MalformedAdapter, "truncated: its tensors need"),
    (_trailing_bytes, MalformedAdapter, "16 bytes after its last tensor"),
    (_header_not_json, MalformedAdapter, "header that is not JSON"),
    (_duplicate_tensor_names, MalformedAdapter, "duplicate key 't'"),
    (_overlapping_tensors, MalformedAdapter, "overlap"),
    (_shape_that_lies_about_its_bytes, MalformedAdapter, "does not fill its 8 bytes"),
    (_pickle_file_beside, MalformedAdapter, "pickle-based weights (adapter_model.bin)"),
    (_no_config, MalformedAdapter, "no adapter_config.json"),
    (_no_weights, MalformedAdapter, "no adapter_model.safetensors"),
    (_config_not_json, MalformedAdapter, "not valid JSON"),
    (_config_too_large, MalformedAdapter, "larger than 1048576 bytes"),
    (_wrong_shapes, IncompatibleAdapter, "has shape [4, 64], which does not fit"),
    (_rank_over_the_limit, IncompatibleAdapter, "rank 32 exceeds the maximum rank 16"),
    (_rank_pattern_over_the_limit, IncompatibleAdapter, "rank 64 exceeds"),
    (_tensor_rank_not_in_the_config, MalformedAdapter, "has rank 2; adapter_config.json "
                                                       "declares [4]"),
    (_a_and_b_of_different_ranks, MalformedAdapter, "lora_A of rank 4 and lora_B of rank 2"),
    (_a_without_b, MalformedAdapter, "has no lora_B weight"),
    (_unsupported_target_module, IncompatibleAdapter, "['lm_head'] that are not supported"),
    (_tensor_on_an_unsupported_module, IncompatibleAdapter, "targets an unsupported module"),
    (_layer_out_of_range, IncompatibleAdapter, "layer 5 is past its last layer (2 layers)"),
    (_integer_weights, IncompatibleAdapter, "is I32; LoRA weights must be"),
    (_not_a_lora_tensor, MalformedAdapter, "is not a LoRA A/B weight"),
    (_wrong_base_model, IncompatibleAdapter, "trained on meta-llama/Llama-2-7b-hf, not on"),
    (_dora, IncompatibleAdapter, "DoRA"),
    (_not_lora, IncompatibleAdapter, "IA3"),
    (_rank_pattern_not_a_mapping, MalformedAdapter, "rank_pattern must map"),
]


@pytest.mark.parametrize("breaks, kind, reason", BROKEN, ids=[b[0].__name__ for b in BROKEN])
def test_broken_adapters_are_refused_with_their_reason(adapter, base, shapes, breaks, kind,
                                                       reason):
    breaks(adapter)
    with pytest.raises(kind) as refused:
        validate_adapter(adapter, base, 16, shapes)
    assert reason in refused.value.message
    # The documented codes: malformed files are the caller's input, incompatible ones the
    # base model's state.
    expected = InvalidArgument if kind is MalformedAdapter else FailedPrecondition
    assert isinstance(refused.value, expected)


def test_the_header_parser_never_reads_past_a_short_file(tmp_path):
    for data in (b"", b"\x01", struct.pack("<Q", 2) + b"{"):
        path = tmp_path / "w.safetensors"
        path.write_bytes(data)
        with pytest.raises(MalformedAdapter, match="truncated"):
            read_safetensors_header(path)


def test_a_missing_folder_is_refused(tmp_path, base, shapes):
    with pytest.raises(MalformedAdapter, match="missing"):
        validate_adapter(tmp_path / "absent", base, 16, shapes)
