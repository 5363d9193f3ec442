"""Training rows, the one definition both sides use: what a valid record is, and how it becomes
token ids with the positions that carry loss, truncated to the base model's allocations.

Control checks each query row with `check_record` and counts each row's tokens with
`row_tokens` when CREATE runs; the trainer checks the same records and formats them with
`format_record` / `pack_texts`. Both are these functions, so what CREATE reports (trained
tokens, truncated rows) is what the trainer trains on. Pure given a tokenizer; prompts go
through `services.common.chat_format`, which is also what inference sends to vLLM.

Records: `{"prompt", "completion"}` (INSTRUCTION), `{"messages"}` (CHAT: a non-empty list of
{role, content} with roles system, user, assistant, the last one the assistant's), `{"text"}`
(CONTINUED_PRETRAINING). NULLs are refused, other scalars become their text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from services.common.chat_format import completion_token_ids, prompt_token_ids
from services.common.errors import InvalidArgument

INSTRUCTION, CHAT, CONTINUED_PRETRAINING = "INSTRUCTION", "CHAT", "CONTINUED_PRETRAINING"
TASK_TYPES = (INSTRUCTION, CHAT, CONTINUED_PRETRAINING)
# The roles COMPLETE accepts too: a model learns only conversations it can be asked.
CHAT_ROLES = ("system", "user", "assistant")
RECORD_FIELDS = {INSTRUCTION: ("prompt", "completion"), CHAT: ("messages",),
                 CONTINUED_PRETRAINING: ("text",)}


@dataclass(frozen=True)
class TokenLimits:
    """A base model's token allocations: a prompt keeps its end within `prompt_tokens`, a
    completion (each assistant turn) its start within `completion_tokens`, a conversation its
    end within `context_window`."""

    prompt_tokens: int
    completion_tokens: int
    context_window: int

    @classmethod
    def of(cls, base: Any) -> "TokenLimits":
        """From anything with the three allocations (a BaseModelSpec, a spec's base model)."""
        return cls(base.prompt_tokens, base.completion_tokens, base.context_window)


# ----------------------------------------------------------------------------------- records

def check_record(task_type: str, record: Mapping, where: str) -> dict:
    """The record a task trains on, from a row's fields; InvalidArgument says `where` and what
    is wrong. Fields the task does not use are dropped."""
    if task_type == CHAT:
        return {"messages": _messages(record.get("messages"), where)}
    if task_type not in RECORD_FIELDS:
        raise InvalidArgument(f"unknown task type {task_type!r}")
    return {name: _text(record, name, where) for name in RECORD_FIELDS[task_type]}


def _text(record: Mapping, name: str, where: str) -> str:
    if name not in record:
        raise InvalidArgument(f"{where}: missing column {name!r}")
    value = record[name]
    if value is None:
        raise InvalidArgument(f"{where} has a NULL {name}")
    return value if isinstance(value, str) else str(value)


def _messages(value: Any, where: str) -> list[dict]:
    if isinstance(value, str):   # a JSON column read as text
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise InvalidArgument(f"{where}: messages is not valid JSON ({exc.msg})") from None
    if not isinstance(value, list) or not value:
        raise InvalidArgument(f"{where}: messages must be a non-empty list of "
                              "{role, content} objects")
    messages = []
    for m in value:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) \
                or m.get("role") not in CHAT_ROLES:
            raise InvalidArgument(f"{where}: each message needs a role "
                                  f"({', '.join(CHAT_ROLES)}) and a string content")
        messages.append({"role": m["role"], "content": m["content"]})
    if messages[-1]["role"] != "assistant":
        raise InvalidArgument(f"{where}: the last message must be the assistant's answer")
    return messages


# -------------------------------------------------------------------------------- formatting

@dataclass(frozen=True)
class Formatted:
    """One record as token ids; `targets[i]` says whether ids[i] carries loss."""

    ids: list[int]
    targets: list[bool]
    truncated: bool = False

    @property
    def completion_tokens(self) -> int:
        return sum(self.targets)

    @property
    def prompt_tokens(self) -> int:
        return len(self.ids) - self.completion_tokens


def format_instruction(tokenizer: Any, prompt: str, completion: str,
                       limits: TokenLimits) -> Formatted:
    """Prompt (chat template, generation prompt) without loss, then completion + end of turn.

    The prompt keeps its END: the question and the assistant header sit there, the template's
    system preamble matters less. The completion keeps its start."""
    p = prompt_token_ids(tokenizer, prompt=prompt)
    c = completion_token_ids(tokenizer, completion)
    truncated = len(p) > limits.prompt_tokens or len(c) > limits.completion_tokens
    p, c = p[len(p) - min(len(p), limits.prompt_tokens):], c[:limits.completion_tokens]
    return Formatted(p + c, [False] * len(p) + [True] * len(c), truncated)


def format_chat(tokenizer: Any, messages: Sequence[dict], limits: TokenLimits) -> Formatted:
    """A conversation with loss on every assistant turn (its content + end of turn), each cut
    to the completion allocation; the whole keeps its end within the context window.

    Each assistant turn's context is `prompt_token_ids` of the messages before it, which is
    what inference sends for that conversation. Templates render earlier turns identically,
    so each context extends the previous ids; where one does not (it drops history, say), the
    earlier turns are kept as context only."""
    ids: list[int] = []
    targets: list[bool] = []
    truncated = False
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        context = prompt_token_ids(tokenizer, messages=list(messages[:i]))
        if context[:len(ids)] == ids:
            new = list(context[len(ids):])
        else:
            new, ids, targets = list(context), [], []
        target = completion_token_ids(tokenizer, message["content"])
        if len(target) > limits.completion_tokens:
            target, truncated = target[:limits.completion_tokens], True
        ids += new + list(target)
        targets += [False] * len(new) + [True] * len(target)
    if len(ids) > limits.context_window:  # keep the last turn and the context right before it
        truncated = True
        ids, targets = ids[-limits.context_window:], targets[-limits.context_window:]
    return Formatted(ids, targets, truncated)


def format_record(task_type: str, tokenizer: Any, record: Mapping,
                  limits: TokenLimits) -> Formatted:
    """An INSTRUCTION or CHAT record (checked by check_record) as ids and targets."""
    if task_type == INSTRUCTION:
        return format_instruction(tokenizer, record["prompt"], record["completion"], limits)
    if task_type == CHAT:
        return format_chat(tokenizer, record["messages"], limits)
    raise InvalidArgument(f"{task_type} records are packed (pack_texts), not formatted alone")


def text_token_ids(tokenizer: Any, text: str) -> list[int]:
    """A continued-pretraining text as the stream packs it: its ids, then end of text."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return list(ids) + ([eos] if eos is not None else [])


def pack_texts(tokenizer: Any, texts: Iterable[str], window: int) -> list[list[int]]:
    """Continued pretraining: texts joined (each ends with end of text) and cut into windows;
    a last window of one token predicts nothing and is dropped."""
    stream: list[int] = []
    for text in texts:
        stream += text_token_ids(tokenizer, text)
    chunks = [stream[start:start + window] for start in range(0, len(stream), window)]
    return [chunk for chunk in chunks if len(chunk) >= 2]


# ---------------------------------------------------------------------------- token counts

@dataclass(frozen=True)
class RowTokens:
    """One row after truncation: tokens without loss (prompt) and with loss (completion)."""

    prompt: int
    completion: int
    truncated: bool = False

    @property
    def total(self) -> int:
        return self.prompt + self.completion


def row_tokens(tokenizer: Any, task_type: str, record: Mapping,
               limits: TokenLimits) -> RowTokens:
    """What one checked record trains on, formatted exactly as the trainer formats it."""
    if task_type == CONTINUED_PRETRAINING:   # packed into full windows: nothing is truncated
        return RowTokens(0, len(text_token_ids(tokenizer, record["text"])))
    formatted = format_record(task_type, tokenizer, record, limits)
    return RowTokens(formatted.prompt_tokens, formatted.completion_tokens, formatted.truncated)
