"""Usage history records and filters (pure): fine-tuning usage per job, inference usage per
request and aggregated by model, user, day and account (the caller's, or for the owner of a
shared model, the other accounts that used it)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class FineTuningUsage:
    """CORTEX_FINE_TUNING_USAGE_HISTORY: one row per finished job that trained."""

    job_id: str
    user_name: str
    model: str
    base_model: str
    status: str
    trained_tokens: int
    credits: float
    start_time: datetime | None
    end_time: datetime


# Request-id prefixes of the calls control makes on a user's behalf.
USAGE_SOURCES = {"gen_": "GENERATION", "ev_": "EVALUATION"}


@dataclass(frozen=True)
class InferenceUsage:
    request_id: str
    user_name: str
    model: str
    base_model: str
    prompt_tokens: int
    completion_tokens: int
    credits: float
    time: datetime

    @property
    def source(self) -> str:
        """What made the call, from the id control gives the rows it completes for a user."""
        for prefix, source in USAGE_SOURCES.items():
            if self.request_id.startswith(prefix):
                return source
        return "COMPLETE"


class Grouping(enum.Enum):
    MODEL = "model"
    USER = "user"
    DAY = "day"
    ACCOUNT = "account"


@dataclass(frozen=True)
class UsageGroup:
    model: str            # empty unless grouped by model
    user_name: str        # empty unless grouped by user
    day: str              # YYYY-MM-DD (UTC), empty unless grouped by day
    requests: int
    prompt_tokens: int
    completion_tokens: int
    credits: float
    account: str = ""     # the calling (billed) account, empty unless grouped by account


@dataclass(frozen=True)
class UsageFilter:
    start_time: datetime | None = None   # inclusive
    end_time: datetime | None = None     # exclusive
    model: str = ""                      # canonical model name (or base model name)
    user_id: str | None = None           # only this user's usage
