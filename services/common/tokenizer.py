"""Loading a base model's tokenizer without transformers' Auto classes.

`AutoTokenizer` imports the model-configuration registry and, through it, generation and every
optional library transformers finds installed: seconds of imports in each process that only
tokenizes (control at CREATE, the trainer's driver). A folder saved by transformers names its
tokenizer class; the plain fast-tokenizer classes are loaded directly, with the same vocabulary,
special tokens and chat template, and any other class still goes through AutoTokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Classes that are tokenizer.json plus tokenizer_config.json and nothing model-specific.
_PLAIN = {"TokenizersBackend", "PreTrainedTokenizerFast"}


def tokenizer_class(folder: str | Path) -> str:
    try:
        config = json.loads((Path(folder) / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return ""
    return str(config.get("tokenizer_class") or "")


def load_tokenizer(folder: str | Path) -> Any:
    if tokenizer_class(folder) in _PLAIN and (Path(folder) / "tokenizer.json").is_file():
        try:
            from transformers import TokenizersBackend as Plain
        except ImportError:   # transformers 4: the same class under its old name
            from transformers import PreTrainedTokenizerFast as Plain
        return Plain.from_pretrained(str(folder))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))
