"""COMPLETE inside SQL against the inference engine's own throughput, at the same concurrency.

    .venv/bin/python -m benchmarks.inference.sql_generation    # --rows 1000 --chunk 200

Starts the embedded stack (Ray head, control, vLLM inference), loads `--rows` BANKING77
customer messages into a table, and generates a completion of each on the base model two ways,
on the same engine, greedy, with the same max_tokens, so that the engine does the same work:
  direct   InferenceService.Complete over gRPC from this process, `--concurrency` at a time
           (the engine's own throughput as a client sees it)
  sql      RunQuery "SELECT COMPLETE(model, prompt, {'max_tokens': n}) FROM t WHERE ...":
           control calls inference for the query's rows, at most its
           sql_completion_concurrency (8 by default, the same) at a time
  job      GenerateText over the same rows into a new table, `--concurrency` calls in flight,
           timed from the call to the generation's SUCCEEDED (its table written)
The rows go in chunks of `--chunk`, the ways interleaved (direct chunk 1, sql chunk 1, job
chunk 1, direct chunk 2, ...), so load from elsewhere hits all alike; each chunk is its own
query or generation. The goal (issue: batch generation over tables) is >= 0.9x direct in
rows/s.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks import machine
from benchmarks.quality.banking77 import DATASET, sample
from benchmarks.results import save
from services.cli.client import FinetuneClient
from services.cli.stack import LocalStack, StackConfig
from services.common.base_models import DEFAULT_BASE_MODEL

TABLE = "bench.public.messages"
RESULTS = Path(__file__).with_name("results")


def direct(client: FinetuneClient, prompts: list[str], max_tokens: int,
           concurrency: int) -> tuple[float, int]:
    """Seconds for all of them, and the completion tokens the engine generated."""
    def one(prompt: str) -> int:
        return client.complete(DEFAULT_BASE_MODEL, prompt, max_tokens=max_tokens,
                               temperature=0.0).usage.completion_tokens
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        tokens = sum(pool.map(one, prompts))
    return time.perf_counter() - started, tokens


def sql(client: FinetuneClient, first: int, last: int, max_tokens: int) -> tuple[float, int]:
    query = (f"SELECT COMPLETE('{DEFAULT_BASE_MODEL}', prompt, {{'max_tokens': {max_tokens}}}) "
             f"AS doc FROM {TABLE} WHERE id::INTEGER BETWEEN {first} AND {last}")
    started = time.perf_counter()
    _, rows = client.query_rows(query)
    docs = [json.loads(r["doc"]) for r in rows]
    seconds = time.perf_counter() - started
    assert len(docs) == last - first + 1, len(docs)
    return seconds, sum(d["usage"]["completion_tokens"] for d in docs)


def job(client: FinetuneClient, first: int, last: int, max_tokens: int,
        concurrency: int) -> tuple[float, int]:
    started = time.perf_counter()
    generation = client.generate_text(
        DEFAULT_BASE_MODEL, f"SELECT id, prompt FROM {TABLE} WHERE id::INTEGER BETWEEN {first} "
        f"AND {last}", f"bench.public.generated_{first}", max_tokens=max_tokens,
        concurrency=concurrency)
    done = client.wait_generation(generation.id, timeout=3600)
    seconds = time.perf_counter() - started
    assert done.rows_done == last - first + 1 and not done.error, done
    return seconds, done.completion_tokens


SIDES = ("direct", "sql", "job")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--chunk", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=8,
                        help="direct side; the sql side is the stack's "
                             "sql_completion_concurrency (8 by default)")
    parser.add_argument("--output", type=Path, default=RESULTS / "sql_generation.json")
    args = parser.parse_args()
    texts = [r["text"] for r in sample(DATASET / "train.csv", 20, 7)][:args.rows]
    rows = [{"id": i, "prompt": t} for i, t in enumerate(texts)]
    load_start = os.getloadavg()
    sides: dict[str, dict] = {name: {"seconds": 0.0, "tokens": 0, "rows": 0, "chunks": []}
                              for name in SIDES}
    with tempfile.TemporaryDirectory(prefix="sql-generation-") as home, \
            LocalStack(StackConfig(home=Path(home))) as stack, \
            FinetuneClient(stack.control_address, stack.inference_address,
                           stack.admin_key()) as client:
        client.load_rows(TABLE, rows, replace=True)
        direct(client, texts[:8], args.max_tokens, args.concurrency)   # warm-up, not counted
        for first in range(0, len(rows), args.chunk):
            last = min(first + args.chunk, len(rows)) - 1
            for name in SIDES:
                if name == "direct":
                    seconds, tokens = direct(client, texts[first:last + 1], args.max_tokens,
                                             args.concurrency)
                elif name == "sql":
                    seconds, tokens = sql(client, first, last, args.max_tokens)
                else:
                    seconds, tokens = job(client, first, last, args.max_tokens,
                                          args.concurrency)
                side = sides[name]
                side["seconds"] += seconds
                side["tokens"] += tokens
                side["rows"] += last - first + 1
                side["chunks"].append(round((last - first + 1) / seconds, 2))
                print(f"  {name} rows {first}-{last}: {(last - first + 1) / seconds:.2f} rows/s",
                      flush=True)
    for side in sides.values():
        side["rows_per_s"] = round(side["rows"] / side["seconds"], 2)
        side["output_tokens_per_s"] = round(side["tokens"] / side["seconds"], 1)
        side["seconds"] = round(side["seconds"], 1)
    result = {"benchmark": "sql_generation", "command": "python -m "
              "benchmarks.inference.sql_generation " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                  if k != "output"),
              "machine": {**machine.describe(), "load_average_start": machine.load(load_start),
                          "load_average_end": machine.load()},
              "rows": len(rows), "max_tokens": args.max_tokens, "concurrency": args.concurrency,
              **sides,
              "ratio_sql_over_direct": round(sides["sql"]["rows_per_s"]
                                             / sides["direct"]["rows_per_s"], 3),
              "ratio_job_over_direct": round(sides["job"]["rows_per_s"]
                                             / sides["direct"]["rows_per_s"], 3),
              "same_tokens": len({side["tokens"] for side in sides.values()}) == 1}
    save(result, args.output)
    print(json.dumps({k: result[k] for k in ("ratio_sql_over_direct", "ratio_job_over_direct",
                                             "same_tokens")}))
    print({name: {k: v for k, v in side.items() if k != "chunks"}
           for name, side in sides.items()})
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
