"""Artifacts on a real S3-compatible server (moto, see tests/conftest.py): a tiny base model
whose tokenizer is the default model's, and a real peft LoRA adapter trained on nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from services.common.base_models import BaseModelSpec
from services.inference.config import BaseModel

TARGETS = ("q_proj", "v_proj")


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory, base_model_spec) -> Path:
    """A 2-layer Llama with random weights, and the default model's tokenizer (control counts
    tokens with it; the adapter's shapes are checked against its weights)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("models") / "tiny-base"
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
    )).save_pretrained(folder, safe_serialization=True)
    for path in base_model_spec.path.iterdir():
        if path.is_file() and path.name.startswith(("tokenizer", "special_tokens", "chat_")):
            shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture(scope="session")
def tiny_base(tiny_base_dir) -> BaseModelSpec:
    return BaseModelSpec(name="tiny-base", source="path", path=tiny_base_dir, context_window=512,
                         prompt_tokens=384, completion_tokens=128, rows_per_epoch=100,
                         max_lora_rank=16, target_modules=TARGETS, defaults={})


@pytest.fixture(scope="session")
def inference_base(tiny_base) -> BaseModel:
    return BaseModel.from_spec(tiny_base)


@pytest.fixture(scope="session")
def adapter_dir(tmp_path_factory, tiny_base_dir) -> Path:
    """What the trainer exports: adapter_model.safetensors + adapter_config.json."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_base_dir)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=list(TARGETS)))
    folder = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(folder, safe_serialization=True)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "adapter_config.json",
                                                        "adapter_model.safetensors"]
    return folder
