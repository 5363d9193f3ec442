from services.common.chat_format import completion_token_ids, prompt_token_ids


class PlainTokenizer:
    """A tokenizer without a chat template: one id per character."""

    chat_template = None
    eos_token_id = 0

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [ord(c) for c in text]}


def test_plain_prompt_and_completion_end_with_eos():
    tok = PlainTokenizer()
    assert prompt_token_ids(tok, prompt="hi") == [ord("h"), ord("i"), ord("\n")]
    assert completion_token_ids(tok, "ok") == [ord("o"), ord("k"), 0]


def test_messages_take_precedence_over_prompt():
    tok = PlainTokenizer()
    ids = prompt_token_ids(tok, prompt="ignored", messages=[{"role": "user", "content": "a"},
                                                            {"role": "assistant", "content": "b"}])
    assert ids == [ord("a"), ord("\n"), ord("b"), ord("\n")]
