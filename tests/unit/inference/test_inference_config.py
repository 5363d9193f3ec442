"""InferenceConfig from flags and environment."""

import pytest

from services.common.base_models import DEFAULT_BASE_MODEL, load_catalog
from services.inference.config import parse_config


def test_defaults_come_from_the_catalog_and_environment():
    config = parse_config([], {"FINETUNE_SERVICE_TOKEN": "svc", "VLLM_CPU_KVCACHE_SPACE": "2"})
    spec = load_catalog()[DEFAULT_BASE_MODEL]
    assert config.base_model.name == DEFAULT_BASE_MODEL
    assert config.base_model.path == spec.path
    assert config.base_model.target_modules == spec.target_modules
    assert config.max_model_len == spec.context_window
    assert config.service_token == "svc"
    assert config.kv_cache_gib == 2
    assert config.listen_address == "127.0.0.1:50052"
    assert config.grouped_lora_ops
    assert config.structured_output_backend == "xgrammar"


def test_flags_override():
    config = parse_config(
        ["--host", "0.0.0.0", "--port", "6000", "--control", "ctl:1", "--max-loras", "2",
         "--max-cpu-loras", "3", "--max-lora-rank", "16", "--max-model-len", "512",
         "--kv-cache-gib", "0.5", "--max-queued-requests", "9", "--default-max-tokens", "20",
         "--resolution-cache-ttl", "3", "--base-model-path", "/m/x", "--no-grouped-lora-ops"],
        {"FINETUNE_SERVICE_TOKEN": "svc"})
    assert config.listen_address == "0.0.0.0:6000" and config.control_address == "ctl:1"
    assert (config.max_loras, config.max_cpu_loras, config.max_lora_rank) == (2, 3, 16)
    assert (config.max_model_len, config.kv_cache_gib) == (512, 0.5)
    assert (config.max_queued_requests, config.default_max_tokens) == (9, 20)
    assert config.resolution_cache_ttl_s == 3
    assert str(config.base_model.path) == "/m/x"
    assert not config.grouped_lora_ops
    assert config.adapter_rank_limit == 16


def test_the_usage_outbox_lives_in_the_state_dir():
    config = parse_config([], {"FINETUNE_SERVICE_TOKEN": "s",
                               "FINETUNE_INFERENCE_STATE_DIR": "/var/lib/ft"})
    assert str(config.usage_outbox_path) == "/var/lib/ft/usage-outbox.sqlite3"
    config = parse_config(["--state-dir", "/srv/x", "--usage-flush-seconds", "3"],
                          {"FINETUNE_SERVICE_TOKEN": "s"})
    assert str(config.usage_outbox_path) == "/srv/x/usage-outbox.sqlite3"
    assert config.usage_flush_seconds == 3


def test_the_structured_output_backend_can_be_chosen():
    config = parse_config(["--structured-output-backend", "guidance"],
                          {"FINETUNE_SERVICE_TOKEN": "s"})
    assert config.structured_output_backend == "guidance"


@pytest.mark.parametrize("argv, env", [
    ([], {}),                                              # no service token
    (["--max-lora-rank", "12"], {"FINETUNE_SERVICE_TOKEN": "s"}),   # not a vLLM rank
    (["--max-loras", "8", "--max-cpu-loras", "4"], {"FINETUNE_SERVICE_TOKEN": "s"}),
    (["--max-model-len", "999999"], {"FINETUNE_SERVICE_TOKEN": "s"}),
    (["--base-model", "nope"], {"FINETUNE_SERVICE_TOKEN": "s"}),
    (["--usage-flush-seconds", "-1"], {"FINETUNE_SERVICE_TOKEN": "s"}),
    (["--structured-output-backend", "outlines"], {"FINETUNE_SERVICE_TOKEN": "s"}),
])
def test_bad_settings_stop_the_start(argv, env, capsys):
    with pytest.raises(SystemExit):
        parse_config(argv, env)


def test_precision_cache_and_dtype_come_from_flags_and_env():
    env = {"FINETUNE_SERVICE_TOKEN": "s", "FINETUNE_PRECISION_CACHE": "/tmp/p.json"}
    config = parse_config([], env)
    assert (config.dtype, str(config.precision_cache)) == ("auto", "/tmp/p.json")
    assert parse_config(["--dtype", "float32"], env).dtype == "float32"
    assert parse_config([], {"FINETUNE_SERVICE_TOKEN": "s"}).precision_cache is None


def test_engine_threads_are_every_core_unless_the_operator_reserves_some():
    import os

    from services.inference.engine import cpu_compute_threads

    cores = len(os.sched_getaffinity(0))
    assert cpu_compute_threads({}) == cores
    assert cpu_compute_threads({"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}) == cores
    assert cpu_compute_threads({"VLLM_CPU_NUM_OF_RESERVED_CPU": "1"}) == max(1, cores - 1)


GPU_FLAGS = ["--kv-cache-gib=8", "--gpu-memory-utilization=0.9", "--max-num-seqs=128",
             "--max-loras=8", "--max-cpu-loras=64"]   # the gpu overlay's inference args


def test_engine_arguments_on_cpu_run_eager_with_the_grouped_lora_ops():
    from services.inference.engine import GROUPED_LORA_OPS_EXTENSION, engine_arguments

    config = parse_config(["--kv-cache-gib", "1.5"], {"FINETUNE_SERVICE_TOKEN": "svc"})
    args = engine_arguments(config, "bfloat16", on_cpu=True)
    assert args["enforce_eager"] and args["worker_extension_cls"] == GROUPED_LORA_OPS_EXTENSION
    assert args["kv_cache_memory_bytes"] == int(1.5 * (1 << 30))
    assert args["dtype"] == "bfloat16" and args["enable_lora"]
    assert args["served_model_name"] == [DEFAULT_BASE_MODEL]
    off = parse_config(["--no-grouped-lora-ops"], {"FINETUNE_SERVICE_TOKEN": "svc"})
    assert engine_arguments(off, "float32", on_cpu=True)["worker_extension_cls"] == ""


def test_engine_arguments_on_a_gpu_use_cuda_graphs_and_vllms_lora_kernels():
    from services.inference.engine import engine_arguments

    config = parse_config(GPU_FLAGS, {"FINETUNE_SERVICE_TOKEN": "svc"})
    args = engine_arguments(config, "auto", on_cpu=False)
    assert not args["enforce_eager"]                # CUDA graphs
    assert args["worker_extension_cls"] == ""       # the grouped ops patch vLLM CPU only
    assert args["gpu_memory_utilization"] == 0.9
    assert args["kv_cache_memory_bytes"] == 8 * (1 << 30)
    assert (args["max_num_seqs"], args["max_loras"], args["max_cpu_loras"]) == (128, 8, 64)
    assert args["dtype"] == "auto"                  # the model's own dtype on a GPU


@pytest.mark.parametrize("on_cpu", [True, False])
def test_engine_arguments_are_vllms(on_cpu):
    """Every key is a field of the installed vLLM's AsyncEngineArgs (a rename upstream fails
    here, not at an engine start on a GPU node)."""
    import dataclasses

    from vllm import AsyncEngineArgs

    from services.inference.engine import engine_arguments

    config = parse_config(GPU_FLAGS, {"FINETUNE_SERVICE_TOKEN": "svc"})
    names = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    assert set(engine_arguments(config, "auto", on_cpu)) <= names


def test_the_lora_path_setting_is_checked_at_start(capsys):
    from services.inference.config import LORA_PATHS, requested_lora_path

    assert requested_lora_path({}) == "kernel"
    assert [requested_lora_path({"FINETUNE_LORA_PATH": p}) for p in LORA_PATHS] == \
        list(LORA_PATHS)
    env = {"FINETUNE_SERVICE_TOKEN": "s", "FINETUNE_LORA_PATH": "kernal"}
    with pytest.raises(SystemExit) as exit_info:
        parse_config([], env)
    assert exit_info.value.code == 2
    assert "FINETUNE_LORA_PATH='kernal': expected one of kernel, fused, per-op" in \
        capsys.readouterr().err
