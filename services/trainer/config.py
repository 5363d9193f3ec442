"""The trainer job's settings: built once from the command line and the environment."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Mapping, Sequence

PRECISIONS = ("auto", "bf16", "fp32")
# CPU workers: micro-batches padded to at most this many tokens use eager attention, longer
# ones SDPA (recipe.attention_for). Below it eager was the faster where measured, and it tied
# at twice this length (docs/benchmarks.md); its memory grows with the square of the length.
EAGER_ATTENTION_MAX_LEN = 256


@dataclass(frozen=True)
class TrainerConfig:
    spec_uri: str
    service_token: str = ""          # for JobReportingService; empty: reports go unauthenticated
    precision: str = "auto"          # auto: the faster of bf16 and fp32, measured per machine
    precision_cache: str | None = None   # the precision probe's cache file (per worker machine)
    micro_batch_tokens: int = 4096   # padded tokens per forward pass (memory vs. speed)
    eager_attention_max_len: int = EAGER_ATTENTION_MAX_LEN   # 0: SDPA throughout
    max_failures: int = 2            # worker-group restarts (from the last checkpoint) per run
    log_level: str = "INFO"


def parse_config(argv: Sequence[str] | None, environ: Mapping[str, str]) -> TrainerConfig:
    parser = argparse.ArgumentParser(
        prog="python -m services.trainer.job",
        description="Train a LoRA adapter on a Ray cluster from a fine-tuning job spec.")
    parser.add_argument("--spec", required=True, help="URI or path of the job's spec.json")
    parser.add_argument("--precision", choices=PRECISIONS,
                        default=environ.get("FINETUNE_TRAINER_PRECISION", "auto"))
    parser.add_argument("--micro-batch-tokens", type=int,
                        default=int(environ.get("FINETUNE_TRAINER_MICRO_BATCH_TOKENS", 4096)))
    parser.add_argument("--eager-attention-max-len", type=int,
                        default=int(environ.get("FINETUNE_TRAINER_EAGER_ATTENTION_MAX_LEN")
                                    or EAGER_ATTENTION_MAX_LEN),
                        help="CPU: micro-batches padded to at most this many tokens use eager "
                             "attention, longer ones SDPA; 0: SDPA throughout (env "
                             "FINETUNE_TRAINER_EAGER_ATTENTION_MAX_LEN)")
    parser.add_argument("--max-failures", type=int,
                        default=int(environ.get("FINETUNE_TRAINER_MAX_FAILURES") or 2),
                        help="worker-group restarts from the last checkpoint before the job "
                             "fails (env FINETUNE_TRAINER_MAX_FAILURES, set by control)")
    parser.add_argument("--log-level", default=environ.get("FINETUNE_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    if args.micro_batch_tokens < 1:
        parser.error("--micro-batch-tokens must be positive")
    if args.eager_attention_max_len < 0:
        parser.error("--eager-attention-max-len must be 0 or more")
    if args.max_failures < 0:
        parser.error("--max-failures must be 0 or more")
    return TrainerConfig(
        spec_uri=args.spec,
        service_token=environ.get("FINETUNE_SERVICE_TOKEN", ""),
        precision=args.precision,
        precision_cache=environ.get("FINETUNE_PRECISION_CACHE") or None,
        micro_batch_tokens=args.micro_batch_tokens,
        eager_attention_max_len=args.eager_attention_max_len,
        max_failures=args.max_failures,
        log_level=args.log_level,
    )
