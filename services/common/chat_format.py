"""How prompts become token ids. The trainer and the inference service must agree exactly, so
both call these functions with the base model's own tokenizer and chat template."""

from __future__ import annotations

from typing import Sequence


def prompt_token_ids(tokenizer, prompt: str | None = None,
                     messages: Sequence[dict] | None = None) -> list[int]:
    """Token ids of a user prompt (or a conversation) up to the assistant's turn."""
    if messages is None:
        messages = [{"role": "user", "content": prompt or ""}]
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True,
                                            tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # BatchEncoding in newer versions
            ids = ids["input_ids"]
        return list(ids)
    # A base model without a chat template: plain text turns.
    text = "\n".join(m["content"] for m in messages) + "\n"
    return tokenizer(text, add_special_tokens=True)["input_ids"]


def completion_token_ids(tokenizer, completion: str) -> list[int]:
    """Token ids the model is trained to produce: the completion, then end of turn."""
    ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    if eos is not None:
        ids = ids + [eos]
    return ids
