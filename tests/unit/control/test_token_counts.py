"""Token counts and truncation as the trainer formats rows (the same rows through control and
trainer agree), the holdout split."""

import json
import random

import pytest
from control_testbed import WordTokenizer

from services.common.formatting import RowTokens, TokenLimits, row_tokens
from services.control.domain.datasets import column_positions, holdout_rows, training_record
from services.control.domain.options import REQUIRED_COLUMNS, TaskType
from services.control.domain.tokens import TokenTally
from services.trainer.data import IGNORE_INDEX, format_rows, parse_jsonl

LIMITS = TokenLimits(prompt_tokens=6, completion_tokens=4, context_window=12)


def words(n, word="w"):
    return " ".join(f"{word}{i}" for i in range(n))


def test_instruction_rows_count_prompt_and_completion_with_their_special_tokens():
    tok = WordTokenizer()
    # prompt: BOS + 2 words; completion: 2 words + EOS
    assert row_tokens(tok, "INSTRUCTION", {"prompt": "a b", "completion": "c d"},
                      LIMITS) == RowTokens(3, 3, False)


@pytest.mark.parametrize("prompt_words,completion_words,expected", [
    (5, 3, RowTokens(6, 4, False)),     # exactly the allocations: not truncated
    (6, 3, RowTokens(6, 4, True)),      # prompt one over
    (5, 4, RowTokens(6, 4, True)),      # completion one over
    (20, 20, RowTokens(6, 4, True)),
])
def test_instruction_truncation_at_the_allocations(prompt_words, completion_words, expected):
    record = {"prompt": words(prompt_words, "p"), "completion": words(completion_words, "c")}
    assert row_tokens(WordTokenizer(), "INSTRUCTION", record, LIMITS) == expected


def test_chat_counts_context_and_each_assistant_turn():
    tok = WordTokenizer()
    messages = [{"role": "user", "content": "hi there"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "bye"},
                {"role": "assistant", "content": "ciao"}]
    counted = row_tokens(tok, "CHAT", {"messages": messages},
                         TokenLimits(100, 100, 100))
    # Without a chat template each context is BOS + all earlier contents, so it does not
    # extend the previous ids (which hold an EOS): the second turn's context starts over.
    assert counted.completion == 2 and counted.prompt == 5 and not counted.truncated


def test_chat_truncation_keeps_the_end_of_the_conversation():
    tok = WordTokenizer()
    long_answer = [{"role": "user", "content": "q"},
                   {"role": "assistant", "content": words(10, "a")}]
    cut = row_tokens(tok, "CHAT", {"messages": long_answer}, LIMITS)
    assert cut == RowTokens(2, 4, True)     # the answer keeps its first 4 tokens
    long_context = [{"role": "user", "content": words(20, "u")},
                    {"role": "assistant", "content": "ok"}]
    cut = row_tokens(tok, "CHAT", {"messages": long_context}, LIMITS)
    assert cut.truncated and cut.total == LIMITS.context_window and cut.completion == 2


def test_continued_pretraining_counts_text_and_end_of_text_and_never_truncates():
    counted = row_tokens(WordTokenizer(), "CONTINUED_PRETRAINING",
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


class TemplateWordTokenizer(WordTokenizer):
    """WordTokenizer with a chat template: each turn renders as `<role> words <end>`, and the
    generation prompt as `<assistant>`, so each assistant context extends the ids before it."""

    chat_template = "word-chat"

    def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=True):
        text = " ".join(f"<{m['role']}> {m['content']} <end>" for m in messages)
        return self(text + (" <assistant>" if add_generation_prompt else ""),
                    add_special_tokens=False)["input_ids"]


def random_rows(rng, task_type, n):
    def text(most):
        return " ".join(rng.choice(["a", "b", "c", "d", "e", "f"])
                        for _ in range(rng.randint(0, most)))

    rows = []
    for _ in range(n):
        if task_type == "INSTRUCTION":
            rows.append((text(12), text(9)))
        else:
            turns = [{"role": "system", "content": text(4)}] if rng.random() < 0.3 else []
            for _ in range(rng.randint(1, 3)):
                turns += [{"role": "user", "content": text(6)},
                          {"role": "assistant", "content": text(6)}]
            rows.append((json.dumps(turns),))
    return rows


@pytest.mark.parametrize("tokenizer_type", [WordTokenizer, TemplateWordTokenizer])
@pytest.mark.parametrize("task_type", ["INSTRUCTION", "CHAT"])
def test_control_counts_what_the_trainer_trains_on(task_type, tokenizer_type):
    """The same query rows through both sides: control's record and count at CREATE, the
    trainer's parse and format of the JSONL control wrote. Every row's counts and truncation
    agree, and so do the totals CREATE reports as trained tokens per epoch."""
    tokenizer = tokenizer_type()
    limits = TokenLimits(prompt_tokens=7, completion_tokens=5, context_window=16)
    rng = random.Random(f"{task_type}-{tokenizer_type.__name__}")
    columns = REQUIRED_COLUMNS[TaskType(task_type)]
    positions = column_positions(TaskType(task_type), columns, "training_query")
    records = [training_record(TaskType(task_type), positions, row, number, "training_query")
               for number, row in enumerate(random_rows(rng, task_type, 300), start=1)]
    tally = TokenTally()
    counts = [row_tokens(tokenizer, task_type, record, limits) for record in records]
    for count in counts:
        tally.add(count)

    jsonl = "\n".join(json.dumps(r) for r in records)
    trained = format_rows(task_type, tokenizer, parse_jsonl(jsonl, task_type), limits)
    assert len(trained.examples) == len(counts) == 300
    for count, example in zip(counts, trained.examples, strict=True):
        assert count.total == len(example)
        assert count.completion == int((example.labels != IGNORE_INDEX).sum())
        assert count.truncated == example.truncated
    assert tally.tokens == trained.tokens
    assert tally.truncated_rows == trained.truncated_rows > 0   # the limits were reached
