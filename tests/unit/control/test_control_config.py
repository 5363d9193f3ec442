"""ControlConfig: flags over environment over defaults derived from --home."""

import stat

import pytest

from services.control.config import ensure_service_token, load_config


def test_defaults_live_under_home(tmp_path):
    c = load_config(["--home", str(tmp_path)], environ={})
    assert c.database_url == f"sqlite:///{tmp_path}/control.db"
    assert c.data_dir == tmp_path / "data" and c.artifact_root == str(tmp_path / "artifacts")
    assert c.bootstrap_key_file == tmp_path / "bootstrap_key"
    assert (c.host, c.port, c.ray_address) == ("127.0.0.1", 50051, "http://127.0.0.1:8265")


def test_flags_beat_environment(tmp_path):
    env = {"FINETUNE_HOME": str(tmp_path), "FINETUNE_CONTROL_PORT": "6000",
           "FINETUNE_RAY_ADDRESS": "http://ray:8265", "FINETUNE_SERVICE_TOKEN": "tok",
           "FINETUNE_DATABASE_URL": "postgresql://db/finetune"}
    c = load_config(["--port", "7000"], environ=env)
    assert c.port == 7000 and c.ray_address == "http://ray:8265" and c.service_token == "tok"
    assert c.home == tmp_path and c.database_url == "postgresql://db/finetune"


def test_loading_writes_nothing(tmp_path):
    c = load_config(["--home", str(tmp_path / "home")], environ={})
    assert c.service_token == "" and not (tmp_path / "home").exists()


def test_a_missing_service_token_is_generated_once_and_kept_private(tmp_path):
    first = ensure_service_token(load_config(["--home", str(tmp_path)], environ={}))
    second = ensure_service_token(load_config(["--home", str(tmp_path)], environ={}))
    assert first.service_token and first.service_token == second.service_token
    assert stat.S_IMODE((tmp_path / "service_token").stat().st_mode) == 0o600


def test_a_configured_service_token_needs_no_file(tmp_path):
    c = ensure_service_token(load_config(["--home", str(tmp_path)],
                                         environ={"FINETUNE_SERVICE_TOKEN": "tok"}))
    assert c.service_token == "tok" and not (tmp_path / "service_token").exists()


def test_the_trainers_restart_budget_is_a_setting(tmp_path):
    assert load_config(["--home", str(tmp_path)], environ={}).trainer_max_failures == 2
    env = {"FINETUNE_TRAINER_MAX_FAILURES": "0"}
    assert load_config(["--home", str(tmp_path)], environ=env).trainer_max_failures == 0
    with pytest.raises(SystemExit):
        load_config(["--home", str(tmp_path), "--trainer-max-failures", "-1"], environ={})
