"""Training data: rows -> token ids and loss labels, then batches. Pure: no files, no Ray.

Prompt tokens come from `services.common.chat_format` so that training sees exactly the ids the
inference service will send to vLLM. Labels are IGNORE_INDEX wherever no loss is taken (prompt,
padding); the loss module shifts them by one, so a completion's first token is predicted from the
prompt's last token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch

from services.common.chat_format import completion_token_ids, prompt_token_ids
from services.common.errors import InvalidArgument

IGNORE_INDEX = -100
CHAT_ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class TokenLimits:
    prompt_tokens: int
    completion_tokens: int
    context_window: int


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


def _example(ids: list[int], labels: list[int], truncated: bool) -> Example:
    return Example(np.asarray(ids, dtype=np.int32), np.asarray(labels, dtype=np.int32), truncated)


# ----------------------------------------------------------------------------------- rows

def parse_jsonl(data: bytes | str, task_type: str) -> list[dict]:
    """Decode JSON Lines and check each row has the fields its task type needs."""
    if isinstance(data, bytes):
        data = data.decode("utf-8")
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
        rows.append(_check_row(row, task_type, number))
    return rows


def _check_row(row: dict, task_type: str, number: int) -> dict:
    if task_type == "INSTRUCTION":
        for key in ("prompt", "completion"):
            if key not in row:
                raise InvalidArgument(f"row {number}: missing column {key!r}")
        return {"prompt": _text(row["prompt"]), "completion": _text(row["completion"])}
    if task_type == "CHAT":
        messages = row.get("messages")
        if isinstance(messages, str):  # a JSON column serialized as text
            try:
                messages = json.loads(messages)
            except json.JSONDecodeError:
                raise InvalidArgument(f"row {number}: messages is not a JSON list") from None
        if not isinstance(messages, list) or not messages:
            raise InvalidArgument(f"row {number}: messages must be a non-empty list")
        checked = []
        for m in messages:
            if not isinstance(m, dict) or m.get("role") not in CHAT_ROLES:
                raise InvalidArgument(f"row {number}: each message needs a role in "
                                      f"{', '.join(CHAT_ROLES)}")
            checked.append({"role": m["role"], "content": _text(m.get("content"))})
        if not any(m["role"] == "assistant" for m in checked):
            raise InvalidArgument(f"row {number}: no assistant message to learn from")
        return {"messages": checked}
    if task_type == "CONTINUED_PRETRAINING":
        if "text" not in row:
            raise InvalidArgument(f"row {number}: missing column 'text'")
        return {"text": _text(row["text"])}
    raise InvalidArgument(f"unknown task type {task_type!r}")


def _text(value) -> str:
    # SQL NULL arrives as None; numbers and booleans as JSON scalars.
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


# ----------------------------------------------------------------------------- formatting

def format_instruction(tokenizer, prompt: str, completion: str, limits: TokenLimits) -> Example:
    """Prompt (chat template) masked, completion + EOS as the target; each truncated to its share.

    The prompt keeps its END: the question and the assistant header sit there, the template's
    system preamble does not matter as much. The completion keeps its start.
    """
    p = prompt_token_ids(tokenizer, prompt=prompt)
    c = completion_token_ids(tokenizer, completion)
    truncated = False
    if len(p) > limits.prompt_tokens:
        p, truncated = p[-limits.prompt_tokens:], True
    if len(c) > limits.completion_tokens:
        c, truncated = c[:limits.completion_tokens], True
    return _example(p + c, [IGNORE_INDEX] * len(p) + c, truncated)


def format_chat(tokenizer, messages: Sequence[dict], limits: TokenLimits) -> Example:
    """A conversation with loss on every assistant turn (its content + end of turn).

    Each assistant turn's context is rendered by `prompt_token_ids` on the messages before it,
    which is what inference sends for that conversation. Chat templates render earlier turns
    identically, so each context extends the previous ids; where a template does not (it drops
    history, say), the earlier turns are kept as context only.
    """
    ids: list[int] = []
    labels: list[int] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        context = prompt_token_ids(tokenizer, messages=list(messages[:i]))
        if context[:len(ids)] == ids:
            new = context[len(ids):]
        else:
            new, ids, labels = context, [], []
        target = completion_token_ids(tokenizer, message["content"])
        if len(target) > limits.completion_tokens:
            target = target[:limits.completion_tokens]
        ids += new + target
        labels += [IGNORE_INDEX] * len(new) + target
    truncated = len(ids) > limits.context_window
    if truncated:  # keep the end: the last assistant turn and the context right before it
        ids, labels = ids[-limits.context_window:], labels[-limits.context_window:]
    return _example(ids, labels, truncated)


def pack_texts(tokenizer, texts: Iterable[str], window: int) -> list[Example]:
    """Continued pretraining: texts joined with EOS and cut into full context windows."""
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for text in texts:
        stream += tokenizer(text, add_special_tokens=False)["input_ids"]
        if eos is not None:
            stream.append(eos)
    examples = []
    for start in range(0, len(stream), window):
        chunk = stream[start:start + window]
        if len(chunk) >= 2:  # a single token predicts nothing
            examples.append(_example(chunk, chunk, False))
    return examples


def format_rows(task_type: str, tokenizer, rows: Sequence[dict],
                limits: TokenLimits) -> FormattedData:
    if task_type == "CONTINUED_PRETRAINING":
        examples = pack_texts(tokenizer, (r["text"] for r in rows), limits.context_window)
        return FormattedData(examples, rows=len(rows), truncated_rows=0)
    if task_type == "INSTRUCTION":
        examples = [format_instruction(tokenizer, r["prompt"], r["completion"], limits)
                    for r in rows]
    elif task_type == "CHAT":
        examples = [format_chat(tokenizer, r["messages"], limits) for r in rows]
    else:
        raise InvalidArgument(f"unknown task type {task_type!r}")
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
