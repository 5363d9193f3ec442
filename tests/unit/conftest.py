"""Unit tests run without Ray, vLLM or the network: refuse to start Ray here."""

from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch):
    try:
        import ray
    except ImportError:
        return

    def refuse(*args, **kwargs):
        raise RuntimeError("unit tests must not start Ray; use a fake behind the Protocol")

    monkeypatch.setattr(ray, "init", refuse)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama with random weights (vocab 96): trains in well under a second per step.

    Embeddings are initialised large: with the final norm frozen, the default 0.02 caps every
    logit near 0.6 and no LoRA could make a prediction confident."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=32, initializer_range=0.3, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, tie_word_embeddings=True,
                         pad_token_id=0, eos_token_id=1, bos_token_id=2)
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    return folder
