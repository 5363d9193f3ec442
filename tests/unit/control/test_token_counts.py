"""Token counts and truncation as the trainer formats rows; the holdout split."""

import pytest
from control_testbed import WordTokenizer

from services.control.domain.datasets import holdout_rows
from services.control.domain.options import TaskType
from services.control.domain.tokens import RowTokens, TokenTally, TruncationLimits, row_tokens

LIMITS = TruncationLimits(prompt_tokens=6, completion_tokens=4, context_window=12)


def words(n, word="w"):
    return " ".join(f"{word}{i}" for i in range(n))


def test_instruction_rows_count_prompt_and_completion_with_their_special_tokens():
    tok = WordTokenizer()
    # prompt: BOS + 2 words; completion: 2 words + EOS
    assert row_tokens(tok, TaskType.INSTRUCTION, {"prompt": "a b", "completion": "c d"},
                      LIMITS) == RowTokens(3, 3, False)


@pytest.mark.parametrize("prompt_words,completion_words,expected", [
    (5, 3, RowTokens(6, 4, False)),     # exactly the allocations: not truncated
    (6, 3, RowTokens(6, 4, True)),      # prompt one over
    (5, 4, RowTokens(6, 4, True)),      # completion one over
    (20, 20, RowTokens(6, 4, True)),
])
def test_instruction_truncation_at_the_allocations(prompt_words, completion_words, expected):
    record = {"prompt": words(prompt_words, "p"), "completion": words(completion_words, "c")}
    assert row_tokens(WordTokenizer(), TaskType.INSTRUCTION, record, LIMITS) == expected


def test_chat_counts_context_and_each_assistant_turn():
    tok = WordTokenizer()
    messages = [{"role": "user", "content": "hi there"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "bye"},
                {"role": "assistant", "content": "ciao"}]
    counted = row_tokens(tok, TaskType.CHAT, {"messages": messages},
                         TruncationLimits(100, 100, 100))
    # Without a chat template each context is BOS + all earlier contents, so it does not
    # extend the previous ids (which hold an EOS): the second turn's context starts over.
    assert counted.completion == 2 and counted.prompt == 5 and not counted.truncated


def test_chat_truncation_keeps_the_end_of_the_conversation():
    tok = WordTokenizer()
    long_answer = [{"role": "user", "content": "q"},
                   {"role": "assistant", "content": words(10, "a")}]
    cut = row_tokens(tok, TaskType.CHAT, {"messages": long_answer}, LIMITS)
    assert cut == RowTokens(2, 4, True)     # the answer keeps its first 4 tokens
    long_context = [{"role": "user", "content": words(20, "u")},
                    {"role": "assistant", "content": "ok"}]
    cut = row_tokens(tok, TaskType.CHAT, {"messages": long_context}, LIMITS)
    assert cut.truncated and cut.total == LIMITS.context_window and cut.completion == 2


def test_continued_pretraining_counts_text_and_end_of_text_and_never_truncates():
    counted = row_tokens(WordTokenizer(), TaskType.CONTINUED_PRETRAINING,
                         {"text": words(50)}, LIMITS)
    assert counted == RowTokens(0, 51, False)


def test_tally():
    tally = TokenTally()
    for row in (RowTokens(3, 2), RowTokens(6, 4, True)):
        tally.add(row)
    assert (tally.rows, tally.tokens, tally.truncated_rows) == (2, 15, 1)


def test_holdout_is_a_tenth_by_seed_and_none_below_ten_rows():
    assert holdout_rows(9, seed=1) == frozenset()
    assert len(holdout_rows(10, seed=1)) == 1
    assert len(holdout_rows(101, seed=1)) == 10
    assert holdout_rows(500, seed=7) == holdout_rows(500, seed=7)
    assert holdout_rows(500, seed=7) != holdout_rows(500, seed=8)
    assert all(0 <= i < 50 for i in holdout_rows(50, seed=3))
