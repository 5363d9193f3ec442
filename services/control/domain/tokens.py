"""Token counts of training rows, formatted and truncated the way the trainer formats them, so
that CREATE and EstimateFineTuningJob can say how many tokens a job trains on and how many rows
will be truncated before a single step runs.

Pure given a tokenizer (the base model's own, loaded by the caller). The prompt goes through
`services.common.chat_format.prompt_token_ids` (chat template, generation prompt) and keeps its
END when longer than the prompt allocation; the completion goes through `completion_token_ids`
(text + end of turn) and keeps its START.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from services.common.base_models import BaseModelSpec
from services.common.chat_format import completion_token_ids, prompt_token_ids
from services.control.domain.options import TaskType


@dataclass(frozen=True)
class TruncationLimits:
    """A base model's token allocations that a row is truncated to (the same three numbers as
    the trainer's services.trainer.data.TokenLimits, which formats the rows for training)."""

    prompt_tokens: int
    completion_tokens: int
    context_window: int

    @classmethod
    def of(cls, base: BaseModelSpec) -> "TruncationLimits":
        return cls(base.prompt_tokens, base.completion_tokens, base.context_window)


@dataclass(frozen=True)
class RowTokens:
    """One row after truncation: tokens without loss (prompt) and with loss (completion)."""

    prompt: int
    completion: int
    truncated: bool = False

    @property
    def total(self) -> int:
        return self.prompt + self.completion


@dataclass
class TokenTally:
    rows: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    truncated_rows: int = 0

    def add(self, row: RowTokens) -> None:
        self.rows += 1
        self.prompt_tokens += row.prompt
        self.completion_tokens += row.completion
        self.truncated_rows += int(row.truncated)

    @property
    def tokens(self) -> int:
        """What one epoch trains on (the trainer's trained_tokens per epoch)."""
        return self.prompt_tokens + self.completion_tokens


def row_tokens(tokenizer: Any, task_type: TaskType, record: Mapping,
               limits: TruncationLimits) -> RowTokens:
    """The tokens of one snapshot record ({"prompt", "completion"}, {"messages"} or {"text"})."""
    if task_type is TaskType.CONTINUED_PRETRAINING:
        # Texts are joined with end-of-text and cut into full windows: nothing is truncated.
        ids = tokenizer(record["text"], add_special_tokens=False)["input_ids"]
        return RowTokens(0, len(ids) + (tokenizer.eos_token_id is not None))
    if task_type is TaskType.CHAT:
        return _chat_tokens(tokenizer, record["messages"], limits)
    prompt = len(prompt_token_ids(tokenizer, prompt=record["prompt"]))
    completion = len(completion_token_ids(tokenizer, record["completion"]))
    truncated = prompt > limits.prompt_tokens or completion > limits.completion_tokens
    return RowTokens(min(prompt, limits.prompt_tokens),
                     min(completion, limits.completion_tokens), truncated)


def _chat_tokens(tokenizer: Any, messages: list[dict], limits: TruncationLimits) -> RowTokens:
    """Loss on every assistant turn (each cut to the completion allocation), its context
    rendered by the chat template; the whole conversation keeps its end within the context
    window. A row counts as truncated when any part of it is cut."""
    ids: list[int] = []
    is_target: list[bool] = []
    truncated = False
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        context = prompt_token_ids(tokenizer, messages=list(messages[:i]))
        # Templates render earlier turns identically, so each context extends what came before;
        # where one does not, the earlier turns are context only (as the trainer does).
        if context[:len(ids)] == ids:
            new = list(context[len(ids):])
        else:
            new, ids, is_target = list(context), [], []
        target = completion_token_ids(tokenizer, message["content"])
        if len(target) > limits.completion_tokens:
            target, truncated = target[:limits.completion_tokens], True
        ids += new + list(target)
        is_target += [False] * len(new) + [True] * len(target)
    if len(ids) > limits.context_window:  # the conversation keeps its end
        truncated = True
        is_target = is_target[-limits.context_window:]
    completion = sum(is_target)
    return RowTokens(len(is_target) - completion, completion, truncated)
