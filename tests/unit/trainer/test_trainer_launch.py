import errno

import pytest

from services.common.errors import InvalidArgument
from services.trainer.config import EAGER_ATTENTION_MAX_LEN, parse_config
from services.trainer.launch import WorkerPlan, describe_failure, plan_workers


def test_gpu_clusters_get_one_gpu_per_worker_capped_by_the_gpus():
    assert plan_workers(4, 8, {"CPU": 32, "GPU": 2}, [32]) == WorkerPlan(2, True, 1)
    assert plan_workers(1, 8, {"CPU": 32, "GPU": 8}, [32]) == WorkerPlan(1, True, 1)


def test_cpu_workers_share_the_cpus_and_fit_on_one_node():
    assert plan_workers(2, 8, {"CPU": 2}, [2]) == WorkerPlan(2, False, 1)
    assert plan_workers(1, 8, {"CPU": 2}, [2]) == WorkerPlan(1, False, 2)
    assert plan_workers(4, 8, {"CPU": 2}, [2]) == WorkerPlan(2, False, 1)
    assert plan_workers(2, 8, {"CPU": 64}, [8] * 8) == WorkerPlan(2, False, 8)
    assert plan_workers(2, 8, {}, []) == WorkerPlan(1, False, 1)


def test_gpu_workers_talk_nccl_and_cpu_workers_gloo():
    assert plan_workers(2, 8, {"CPU": 32, "GPU": 2}, [32]).backend == "nccl"
    assert plan_workers(2, 8, {"CPU": 2}, [2]).backend == "gloo"


def test_no_more_workers_than_examples_per_step():
    assert plan_workers(2, 1, {"CPU": 2}, [2]) == WorkerPlan(1, False, 2)
    assert plan_workers(4, 2, {"CPU": 8, "GPU": 4}, [8]) == WorkerPlan(2, True, 1)


class WorkerGroupError(Exception):
    def __init__(self, failures):
        super().__init__("Training failed due to worker errors:\n...")
        self.worker_failures = failures


def test_describe_failure_names_the_worker_and_the_root_cause():
    try:
        try:
            raise RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB")
        except RuntimeError as inner:
            raise ValueError("wrapped") from inner
    except ValueError as exc:
        wrapped = exc
    assert describe_failure(WorkerGroupError({1: wrapped, 0: InvalidArgument("bad row 3")})) \
        == "worker 0: bad row 3"
    assert describe_failure(WorkerGroupError({1: wrapped})) == \
        "worker 1: RuntimeError: Tried to allocate 2 GiB"
    assert describe_failure(KeyError("x")) == "KeyError: 'x'"


def test_a_full_disk_is_named_as_the_artifact_store_being_full():
    full = OSError(errno.ENOSPC, "No space left on device", "/artifacts/jobs/ft_1/ckpt/a.bin")
    assert describe_failure(WorkerGroupError({0: full})) == (
        "worker 0: the artifact store is full (No space left on device) writing "
        "/artifacts/jobs/ft_1/ckpt/a.bin: free space or raise its quota, then create the job "
        "again")
    # Rewrapped by Ray or pyarrow, only the text is left.
    rewrapped = RuntimeError("Failed to persist checkpoint: [Errno 122] Disk quota exceeded")
    assert describe_failure(rewrapped).startswith(
        "the artifact store is full (Disk quota exceeded): free space")


def test_config_from_flags_and_environment():
    config = parse_config(["--spec", "file:///a/spec.json"],
                          {"FINETUNE_SERVICE_TOKEN": "s3cret",
                           "FINETUNE_TRAINER_PRECISION": "fp32"})
    assert config.spec_uri == "file:///a/spec.json"
    assert config.service_token == "s3cret"
    assert config.precision == "fp32"
    assert parse_config(["--spec", "x", "--precision", "bf16"], {}).precision == "bf16"
    # The restart budget control hands every job, and a flag over it.
    assert parse_config(["--spec", "x"], {}).max_failures == 2
    env = {"FINETUNE_TRAINER_MAX_FAILURES": "5"}
    assert parse_config(["--spec", "x"], env).max_failures == 5
    assert parse_config(["--spec", "x", "--max-failures", "0"], env).max_failures == 0
    with pytest.raises(SystemExit):
        parse_config(["--spec", "x", "--max-failures", "-1"], {})


def test_eager_attention_length_from_flag_or_environment():
    assert parse_config(["--spec", "x"], {}).eager_attention_max_len == EAGER_ATTENTION_MAX_LEN
    env = {"FINETUNE_TRAINER_EAGER_ATTENTION_MAX_LEN": "0"}
    assert parse_config(["--spec", "x"], env).eager_attention_max_len == 0
    assert parse_config(["--spec", "x", "--eager-attention-max-len", "128"],
                        env).eager_attention_max_len == 128
    with pytest.raises(SystemExit):
        parse_config(["--spec", "x", "--eager-attention-max-len", "-1"], {})
