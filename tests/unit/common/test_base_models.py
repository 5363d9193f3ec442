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
