"""The default base model's tokenizer, loaded without the Auto classes, gives the same token ids
as AutoTokenizer for prompts (through the chat template) and completions."""

import csv
from pathlib import Path

import pytest

from services.common.chat_format import completion_token_ids, prompt_token_ids
from services.common.tokenizer import load_tokenizer

pytestmark = pytest.mark.integration

BANKING77 = Path(__file__).resolve().parents[3] / "benchmarks" / "data" / "banking77"


def test_same_ids_as_autotokenizer(base_model_spec):
    from transformers import AutoTokenizer

    light, auto = load_tokenizer(base_model_spec.path), \
        AutoTokenizer.from_pretrained(str(base_model_spec.path))
    assert type(light) is type(auto)
    assert (light.eos_token_id, light.pad_token_id, light.chat_template) == \
        (auto.eos_token_id, auto.pad_token_id, auto.chat_template)
    with (BANKING77 / "train.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))[:500]
    rows.append({"text": "Ünïcödé, emoji 🙂 and\ttabs\n", "category": "  spaced  "})
    for row in rows:
        assert prompt_token_ids(light, row["text"]) == prompt_token_ids(auto, row["text"])
        assert completion_token_ids(light, row["category"]) == \
            completion_token_ids(auto, row["category"])
