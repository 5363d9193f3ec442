"""Training data: checked records -> token ids and loss labels, then batches. Pure: no files,
no Ray.

What a record is and how it becomes ids is `services.common.formatting`, which control also
uses to count a job's tokens at CREATE; this module turns its output into arrays. Labels are
IGNORE_INDEX wherever no loss is taken (prompt, padding); the loss module shifts them by one, so
a completion's first token is predicted from the prompt's last token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from services.common import formatting
from services.common.errors import InvalidArgument
from services.common.formatting import TokenLimits

__all__ = ["IGNORE_INDEX", "Example", "FormattedData", "TokenLimits", "collate", "format_chat",
           "format_instruction", "format_rows", "micro_batches", "pack_texts", "parse_jsonl",
           "plan_epoch", "shard", "steps_per_epoch"]

IGNORE_INDEX = -100


@dataclass(frozen=True, eq=False)
class Example:
    input_ids: np.ndarray   # int32
    labels: np.ndarray      # int32, IGNORE_INDEX where the loss is not taken
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_targets(self) -> int:
        """Tokens that carry loss (a label at position 0 has no preceding token to predict it)."""
        return int(np.count_nonzero(self.labels[1:] != IGNORE_INDEX))


@dataclass(frozen=True)
class FormattedData:
    examples: list[Example]
    rows: int
    truncated_rows: int

    @property
    def tokens(self) -> int:
        return sum(len(e) for e in self.examples)


def _example(formatted: formatting.Formatted) -> Example:
    labels = [i if t else IGNORE_INDEX for i, t in zip(formatted.ids, formatted.targets,
                                                       strict=True)]
    return Example(np.asarray(formatted.ids, dtype=np.int32),
                   np.asarray(labels, dtype=np.int32), formatted.truncated)


# ----------------------------------------------------------------------------------- rows

def parse_jsonl(data: bytes | str, task_type: str) -> list[dict]:
    """Decode JSON Lines and check each row as control checked it (formatting.check_record)."""
    if isinstance(data, bytes):
        data = data.decode("utf-8")
    if task_type not in formatting.TASK_TYPES:
        raise InvalidArgument(f"unknown task type {task_type!r}")
    rows = []
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidArgument(f"row {number}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise InvalidArgument(f"row {number}: expected a JSON object")
        rows.append(formatting.check_record(task_type, row, f"row {number}"))
    return rows


# ----------------------------------------------------------------------------- formatting

def format_instruction(tokenizer, prompt: str, completion: str, limits: TokenLimits) -> Example:
    return _example(formatting.format_instruction(tokenizer, prompt, completion, limits))


def format_chat(tokenizer, messages: Sequence[dict], limits: TokenLimits) -> Example:
    return _example(formatting.format_chat(tokenizer, messages, limits))


def pack_texts(tokenizer, texts, window: int) -> list[Example]:
    """Continued pretraining: every window is all targets."""
    return [_example(formatting.Formatted(chunk, [True] * len(chunk)))
            for chunk in formatting.pack_texts(tokenizer, texts, window)]


def format_rows(task_type: str, tokenizer, rows: Sequence[dict],
                limits: TokenLimits) -> FormattedData:
    if task_type == formatting.CONTINUED_PRETRAINING:
        examples = pack_texts(tokenizer, (r["text"] for r in rows), limits.context_window)
        return FormattedData(examples, rows=len(rows), truncated_rows=0)
    examples = [_example(formatting.format_record(task_type, tokenizer, r, limits))
                for r in rows]
    return FormattedData(examples, rows=len(rows),
                         truncated_rows=sum(e.truncated for e in examples))


# -------------------------------------------------------------------------------- batches

def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    return -(-n_examples // batch_size)


def plan_epoch(lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
               group: int = 16) -> list[list[int]]:
    """The global batches (example indices) of one epoch, the same on every worker.

    Shuffled, then sorted by length inside groups of `group` batches, so that a batch holds
    examples of similar length (little padding) while batches stay random (HF group_by_length).
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths)).tolist()
    span = batch_size * group
    batches = []
    for start in range(0, len(order), span):
        chunk = sorted(order[start:start + span], key=lambda i: lengths[i])
        batches += [chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def shard(batch: Sequence[int], lengths: Sequence[int], world_size: int) -> list[list[int]]:
    """Split a global batch across workers with balanced tokens (longest first, to the lightest).

    A worker's share may be empty when the batch has fewer examples than there are workers.
    """
    shares: list[list[int]] = [[] for _ in range(world_size)]
    load = [0] * world_size
    for i in sorted(batch, key=lambda i: (-lengths[i], i)):
        rank = min(range(world_size), key=lambda r: (load[r], len(shares[r]), r))
        shares[rank].append(i)
        load[rank] += lengths[i]
    return [sorted(s, key=lambda i: (lengths[i], i)) for s in shares]


def micro_batches(indices: Sequence[int], lengths: Sequence[int],
                  max_tokens: int) -> list[list[int]]:
    """Split one worker's share so that rows x longest row stays within `max_tokens`."""
    out: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in sorted(indices, key=lambda i: (lengths[i], i)):
        grown = max(longest, lengths[i])
        if current and (len(current) + 1) * grown > max_tokens:
            out.append(current)
            current, grown = [], lengths[i]
        current.append(i)
        longest = grown
    if current:
        out.append(current)
    return out


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids, attention_mask and labels (padding is never a target)."""
    width = max(len(e) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e)
        input_ids[row, :n] = torch.from_numpy(e.input_ids.astype(np.int64))
        labels[row, :n] = torch.from_numpy(e.labels.astype(np.int64))
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
