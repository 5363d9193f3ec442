"""Control unit-test fixtures: a real SQLite file and real DuckDB files in tmp_path, a fake
cluster behind the JobDispatcher Protocol, a tiny base-model catalog (no model is loaded)."""

from __future__ import annotations

import pytest
from control_components import control_components
from control_testbed import (
    SERVICE_TOKEN,
    FakeDispatcher,
    instruction_rows,
    load_rows,
    succeed,
    word_tokenizers,
)

from services.common.base_models import BaseModelSpec
from services.control.app import Components
from services.control.core.jobs import CreateJob


@pytest.fixture
def tiny_base(tmp_path) -> BaseModelSpec:
    folder = tmp_path / "models" / "tiny-base"
    folder.mkdir(parents=True)
    return BaseModelSpec(
        name="tiny-base", source="path", path=folder, context_window=512, prompt_tokens=384,
        completion_tokens=128, rows_per_epoch=30, max_lora_rank=32,
        target_modules=("q_proj", "k_proj", "v_proj", "o_proj"),
        defaults={"max_epochs": 3, "learning_rate": 0.001, "batch_size": 4, "lora_rank": 8,
                  "lora_alpha": 16, "lora_dropout": 0.05})


@pytest.fixture
def dispatcher() -> FakeDispatcher:
    return FakeDispatcher()


@pytest.fixture
def control(tmp_path, tiny_base, dispatcher) -> Components:
    with control_components(tmp_path / "home", tiny_base, service_token=SERVICE_TOKEN,
                            dispatcher=dispatcher, tokenizers=word_tokenizers(),
                            port=50999) as components:
        yield components


@pytest.fixture
def admin_key(control) -> str:
    return control.config.bootstrap_key_file.read_text().strip()


@pytest.fixture
def admin(control, admin_key):
    return control.store.run(lambda tx: tx.accounts.authenticate(admin_key))


@pytest.fixture
def bot(control, admin, dispatcher):
    """Database sales with a table, and model sales.public.bot (owned by ACCOUNTADMIN)."""
    control.catalog.create_database(admin.account_id, "sales")
    load_rows(control, admin.account_id, "sales.public.train", instruction_rows(3))
    job = control.fine_tuning.create(admin, CreateJob(
        model="sales.public.bot", base_model="tiny-base",
        training_query="SELECT * FROM sales.public.train"))
    succeed(control, dispatcher, job)
    return control.registry.get(admin, "sales.public.bot")
