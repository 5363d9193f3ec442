"""Which class loads a base model's tokenizer: the plain fast class where the folder names it,
AutoTokenizer for anything else."""

import json

import pytest
import transformers

from services.common import tokenizer


def folder_with(tmp_path, cls: str | None, tokenizer_json: bool = True):
    if cls is not None:
        (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": cls}))
    if tokenizer_json:
        (tmp_path / "tokenizer.json").write_text("{}")
    return tmp_path


@pytest.fixture
def loaders(monkeypatch):
    calls = []
    for name in ("TokenizersBackend", "AutoTokenizer"):
        cls = getattr(transformers, name)
        monkeypatch.setattr(cls, "from_pretrained",
                            classmethod(lambda c, path, _n=name: calls.append((_n, path)) or _n))
    return calls


@pytest.mark.parametrize("cls", ["TokenizersBackend", "PreTrainedTokenizerFast"])
def test_plain_fast_classes_load_without_the_auto_classes(tmp_path, loaders, cls):
    folder = folder_with(tmp_path, cls)
    assert tokenizer.load_tokenizer(folder) == "TokenizersBackend"
    assert loaders == [("TokenizersBackend", str(folder))]


@pytest.mark.parametrize("cls,has_json", [("LlamaTokenizer", True), (None, True),
                                          ("TokenizersBackend", False)])
def test_anything_else_goes_through_autotokenizer(tmp_path, loaders, cls, has_json):
    folder = folder_with(tmp_path, cls, tokenizer_json=has_json)
    assert tokenizer.load_tokenizer(folder) == "AutoTokenizer"
    assert loaders == [("AutoTokenizer", str(folder))]


def test_unreadable_config_names_no_class(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    assert tokenizer.tokenizer_class(tmp_path) == ""
    assert tokenizer.tokenizer_class(tmp_path / "missing") == ""
