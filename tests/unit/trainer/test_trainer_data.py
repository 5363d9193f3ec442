import numpy as np
import pytest
import torch

from services.common.chat_format import completion_token_ids, prompt_token_ids
from services.common.errors import InvalidArgument
from services.trainer.data import (IGNORE_INDEX, Example, TokenLimits, collate, format_chat,
                                   format_instruction, format_rows, micro_batches, pack_texts,
                                   parse_jsonl, plan_epoch, shard, steps_per_epoch)

WIDE = TokenLimits(prompt_tokens=1536, completion_tokens=512, context_window=2048)


def _targets(example: Example) -> list[int]:
    return [int(t) for t in example.labels if t != IGNORE_INDEX]


# ------------------------------------------------------------------------------- formatting

def test_instruction_ids_are_what_inference_sends_plus_the_completion(tokenizer):
    e = format_instruction(tokenizer, "Translate 'chat' to English", "cat", WIDE)
    prompt = prompt_token_ids(tokenizer, prompt="Translate 'chat' to English")
    completion = completion_token_ids(tokenizer, "cat")
    assert e.input_ids.tolist() == prompt + completion
    assert e.labels.tolist() == [IGNORE_INDEX] * len(prompt) + completion
    assert completion[-1] == tokenizer.eos_token_id
    assert not e.truncated


def test_a_one_token_completion_still_has_its_target(tokenizer):
    e = format_instruction(tokenizer, "Answer with nothing", "", WIDE)
    assert _targets(e) == [tokenizer.eos_token_id]
    assert e.n_targets == 1
    # The target sits right after the prompt, so the last prompt token predicts it.
    assert e.labels[-2] == IGNORE_INDEX and e.labels[-1] == tokenizer.eos_token_id


def test_long_prompt_keeps_its_end_and_long_completion_its_start(tokenizer):
    limits = TokenLimits(prompt_tokens=16, completion_tokens=5, context_window=21)
    prompt = "word " * 200 + "the question is here"
    completion = "one two three four five six seven eight"
    e = format_instruction(tokenizer, prompt, completion, limits)
    full_prompt = prompt_token_ids(tokenizer, prompt=prompt)
    full_completion = completion_token_ids(tokenizer, completion)
    assert e.truncated
    assert e.input_ids.tolist() == full_prompt[-16:] + full_completion[:5]
    assert _targets(e) == full_completion[:5]
    assert tokenizer.decode(e.input_ids[:16]).count("the question is here") == 1


def test_format_rows_counts_truncated_rows(tokenizer):
    limits = TokenLimits(prompt_tokens=40, completion_tokens=8, context_window=48)
    rows = [{"prompt": "short", "completion": "ok"},
            {"prompt": "long " * 100, "completion": "ok"},
            {"prompt": "short", "completion": "long " * 50}]
    formatted = format_rows("INSTRUCTION", tokenizer, rows, limits)
    assert formatted.rows == 3
    assert formatted.truncated_rows == 2
    assert formatted.tokens == sum(len(e) for e in formatted.examples)


def test_chat_learns_every_assistant_turn_and_nothing_else(tokenizer):
    messages = [{"role": "system", "content": "Be terse."},
                {"role": "user", "content": "Capital of France?"},
                {"role": "assistant", "content": "Paris"},
                {"role": "user", "content": "And of Italy?"},
                {"role": "assistant", "content": "Rome"}]
    e = format_chat(tokenizer, messages, WIDE)
    # The whole sequence is what inference sends for the conversation, then the last answer.
    assert e.input_ids.tolist() == (prompt_token_ids(tokenizer, messages=messages[:4])
                                    + completion_token_ids(tokenizer, "Rome"))
    target_text = tokenizer.decode(_targets(e))
    assert target_text == "Paris<|im_end|>Rome<|im_end|>"
    assert "Italy" not in target_text and "Be terse" not in target_text


def test_chat_ignores_messages_after_the_last_assistant_turn(tokenizer):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "trailing question"}]
    e = format_chat(tokenizer, messages, WIDE)
    assert "trailing" not in tokenizer.decode(e.input_ids)


def test_continued_pretraining_packs_full_windows(tokenizer):
    texts = ["alpha beta gamma " * 20, "delta epsilon " * 30, "zeta"]
    examples = pack_texts(tokenizer, texts, window=32)
    stream = []
    for t in texts:
        stream += tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert [t for e in examples for t in e.input_ids.tolist()] == stream
    assert all(len(e) == 32 for e in examples[:-1])
    assert all(e.labels.tolist() == e.input_ids.tolist() for e in examples)


# ------------------------------------------------------------------------------------ rows

def test_parse_jsonl_checks_columns_and_reports_the_row():
    rows = parse_jsonl(b'{"prompt": "a", "completion": "b", "extra": 1}\n\n'
                       b'{"prompt": "c", "completion": 42}\n', "INSTRUCTION")
    assert rows == [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "42"}]
    with pytest.raises(InvalidArgument, match="row 2 has a NULL prompt"):   # as control says
        parse_jsonl('{"prompt": "a", "completion": "b"}\n{"prompt": null, "completion": "b"}',
                    "INSTRUCTION")
    with pytest.raises(InvalidArgument, match="row 2: missing column 'completion'"):
        parse_jsonl('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n', "INSTRUCTION")
    with pytest.raises(InvalidArgument, match="row 1: not valid JSON"):
        parse_jsonl("{nope\n", "INSTRUCTION")


def test_parse_jsonl_chat_and_text():
    chat = parse_jsonl('{"messages": "[{\\"role\\": \\"user\\", \\"content\\": \\"q\\"}, '
                       '{\\"role\\": \\"assistant\\", \\"content\\": \\"a\\"}]"}', "CHAT")
    assert chat[0]["messages"][1] == {"role": "assistant", "content": "a"}
    with pytest.raises(InvalidArgument, match="last message must be the assistant's"):
        parse_jsonl('{"messages": [{"role": "user", "content": "q"}]}', "CHAT")
    for role in ("robot", "tool"):   # the roles COMPLETE accepts, no others
        with pytest.raises(InvalidArgument, match="role"):
            parse_jsonl('{"messages": [{"role": "%s", "content": "q"}, '
                        '{"role": "assistant", "content": "a"}]}' % role, "CHAT")
    assert parse_jsonl('{"text": "t"}', "CONTINUED_PRETRAINING") == [{"text": "t"}]
    with pytest.raises(InvalidArgument, match="'text'"):
        parse_jsonl('{"prompt": "t"}', "CONTINUED_PRETRAINING")


# --------------------------------------------------------------------------------- batches

def test_plan_epoch_covers_every_example_once_in_full_batches():
    lengths = [int(x) for x in np.random.default_rng(1).integers(5, 300, size=203)]
    batches = plan_epoch(lengths, batch_size=8, seed=3, epoch=1, group=4)
    assert len(batches) == steps_per_epoch(203, 8) == 26
    assert sorted(i for b in batches for i in b) == list(range(203))
    assert sum(len(b) < 8 for b in batches) == 1
    assert plan_epoch(lengths, 8, 3, 1, group=4) == batches          # same on every worker
    assert plan_epoch(lengths, 8, 3, 2, group=4) != batches          # reshuffled each epoch


def test_plan_epoch_groups_similar_lengths():
    lengths = [int(x) for x in np.random.default_rng(2).integers(5, 500, size=512)]
    grouped = plan_epoch(lengths, 8, seed=0, epoch=1)
    random = plan_epoch(lengths, 8, seed=0, epoch=1, group=1)

    def padding(batches):
        return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b)
                   for b in batches)

    assert padding(grouped) < padding(random) / 4


def test_shard_balances_tokens_and_may_leave_a_worker_empty():
    lengths = [100, 10, 10, 10, 10, 10, 10, 90]
    shares = shard(range(8), lengths, 2)
    assert sorted(shares[0] + shares[1]) == list(range(8))
    loads = [sum(lengths[i] for i in s) for s in shares]
    assert abs(loads[0] - loads[1]) <= 10
    assert shard([3], lengths, 2)[1] == []


def test_micro_batches_respect_the_padded_token_budget():
    lengths = [3, 50, 7, 8, 40, 9, 200]
    groups = micro_batches(range(7), lengths, max_tokens=64)
    assert sorted(i for g in groups for i in g) == list(range(7))
    for g in groups:
        assert len(g) * max(lengths[i] for i in g) <= 64 or len(g) == 1


def test_collate_pads_right_and_never_targets_padding():
    a = Example(np.array([5, 6, 7], np.int32), np.array([IGNORE_INDEX, 6, 7], np.int32))
    b = Example(np.array([8], np.int32), np.array([IGNORE_INDEX], np.int32))
    batch = collate([a, b], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [IGNORE_INDEX] * 3]
    assert batch["input_ids"].dtype == torch.long
