"""The bounds of a response_format's choices: inference refuses a request beyond them, and
control's classification evaluations answer freely rather than send labels beyond them."""

from __future__ import annotations

from typing import Sequence

MAX_CHOICES = 1024
MAX_CHOICE_CHARS = 256


def choice_length_ok(choice: str) -> bool:
    return 0 < len(choice) <= MAX_CHOICE_CHARS


def choices_fit(choices: Sequence[str]) -> bool:
    """At most MAX_CHOICES choices, each of 1 to MAX_CHOICE_CHARS characters."""
    return len(choices) <= MAX_CHOICES and all(map(choice_length_ok, choices))
