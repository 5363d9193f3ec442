"""A snapshot's token tally: the rows' counts (services.common.formatting.row_tokens, the
trainer's own formatting) summed, so that CREATE and EstimateFineTuningJob can say how many
tokens a job trains on and how many rows will be truncated before a single step runs."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.formatting import RowTokens


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
