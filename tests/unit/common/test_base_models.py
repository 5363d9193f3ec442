import pytest

from services.common.base_models import DEFAULT_BASE_MODEL, ensure_model, load_catalog


def test_default_catalog_has_the_default_model(tmp_path):
    spec = load_catalog(model_cache=tmp_path)[DEFAULT_BASE_MODEL]
    assert spec.path == tmp_path / DEFAULT_BASE_MODEL
    assert spec.prompt_tokens + spec.completion_tokens <= spec.context_window
    assert spec.max_rows(1) == spec.rows_per_epoch
    assert spec.max_rows(4) == spec.rows_per_epoch // 4
    # Epochs and batch size come from the table size unless the catalog fixes them.
    for name in ("max_epochs", "batch_size"):
        value = spec.defaults[name]
        assert value == "auto" or (isinstance(value, int) and value >= 1)
    assert spec.defaults["learning_rate"] > 0


def test_path_models_must_exist(tmp_path):
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(f"""
[models.mine]
source = "path"
path = "{tmp_path / 'nowhere'}"
context_window = 1024
prompt_tokens = 768
completion_tokens = 256
rows_per_epoch = 100
""")
    spec = load_catalog(catalog)["mine"]
    with pytest.raises(FileNotFoundError, match="no model folder"):
        ensure_model(spec)


def test_a_provisioned_folder_follows_the_catalog_chat_template(tmp_path):
    folder = tmp_path / "cache" / "mine"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    (folder / "chat_template.jinja").write_text("{{ 'old' }}")
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "new.jinja").write_text("{{ 'new' }}")
    catalog = tmp_path / "catalog.toml"
    catalog.write_text("""
[models.mine]
source = "gguf-package:nothing/x.gguf"
context_window = 1024
prompt_tokens = 768
completion_tokens = 256
rows_per_epoch = 100
chat_template = "templates/new.jinja"
""")
    spec = load_catalog(catalog, model_cache=tmp_path / "cache")["mine"]
    assert spec.chat_template == tmp_path / "templates" / "new.jinja"
    assert ensure_model(spec) == folder          # provisioned already: only the template
    assert (folder / "chat_template.jinja").read_text() == "{{ 'new' }}"
    assert ensure_model(spec) == folder          # idempotent
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []


def test_the_default_model_prompt_has_no_persona_line(base_model_spec):
    """The catalog's template drops the system turn SmolLM2 adds by default; a system message
    the caller sends is kept."""
    from transformers import AutoTokenizer

    from services.common.chat_format import prompt_token_ids

    tokenizer = AutoTokenizer.from_pretrained(base_model_spec.path)
    text = tokenizer.decode(prompt_token_ids(tokenizer, prompt="hello"))
    assert text == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    text = tokenizer.decode(prompt_token_ids(tokenizer, messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]))
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")


def _fake_model_folder(folder):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(b"weights" * 1000)
    (folder / "tokenizer.json").write_text("{}")
    return folder


def test_a_model_in_the_object_store_is_downloaded_once_per_node(tmp_path, s3_bucket,
                                                                  monkeypatch):
    from services.common.artifacts import ArtifactStore
    from services.common.base_models import ensure_folder

    source = f"s3://{s3_bucket}/models/mine"
    ArtifactStore(source).put_dir(_fake_model_folder(tmp_path / "upload"), source)
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(f"""
[models.mine]
source = "{source}"
context_window = 1024
prompt_tokens = 768
completion_tokens = 256
rows_per_epoch = 100
""")
    spec = load_catalog(catalog, model_cache=tmp_path / "cache")["mine"]
    assert ensure_model(spec) == tmp_path / "cache" / "mine"
    assert sorted(p.name for p in spec.path.iterdir()) == ["config.json", "model.safetensors",
                                                           "tokenizer.json"]
    assert (spec.path / "model.safetensors").read_bytes() == b"weights" * 1000
    assert [p.name for p in spec.path.parent.iterdir()] == ["mine"]   # no temporary left

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded again")

    monkeypatch.setattr(ArtifactStore, "get_dir", no_download)
    assert ensure_folder("mine", source, spec.path) == spec.path   # provisioned: kept


def test_an_object_store_source_without_a_model_leaves_nothing(tmp_path, s3_bucket):
    from services.common.artifacts import ArtifactStore
    from services.common.base_models import ensure_folder

    source = f"s3://{s3_bucket}/models/half"
    half = _fake_model_folder(tmp_path / "upload")
    (half / "model.safetensors").unlink()
    ArtifactStore(source).put_dir(half, source)
    for uri in (source, f"s3://{s3_bucket}/models/absent"):
        with pytest.raises(FileNotFoundError):
            ensure_folder("half", uri, tmp_path / "cache" / "half")
    assert list((tmp_path / "cache").iterdir()) == []


def test_concurrent_downloads_of_one_model_both_succeed(tmp_path, s3_bucket):
    from concurrent.futures import ThreadPoolExecutor

    from services.common.artifacts import ArtifactStore
    from services.common.base_models import ensure_folder

    source = f"s3://{s3_bucket}/models/shared"
    ArtifactStore(source).put_dir(_fake_model_folder(tmp_path / "upload"), source)
    dest = tmp_path / "cache" / "shared"
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: ensure_folder("shared", source, dest), range(4)))
    assert results == [dest] * 4
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["shared"]
