"""Trainer unit-test fixtures: the default model's tokenizer (a local file); the tiny random Llama
is in tests/unit/conftest.py. Fakes live in trainer_testbed.py."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tokenizer(base_model_spec):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_model_spec.path)
