"""The evaluation tests' test bed: a fake inference service behind the CompletionClient
Protocol, and control wired to it. (Imported by the evaluation test modules; `fake` and
`control` are fixtures they import, `control` replacing conftest's with one wired to `fake`.)"""

from __future__ import annotations

import pytest
from control_components import control_components
from control_testbed import SERVICE_TOKEN, word_tokenizers

from services.control.core.evaluation_runner import RunnerSettings
from services.control.dispatch.inference import CompletionAnswer

CODES = {"apple": "FRUIT", "tiger": "ANIMAL", "red": "COLOUR", "hammer": "TOOL"}


def labelled_rows(n: int = 4) -> list[dict]:
    words = list(CODES)
    return [{"prompt": f"code of {words[i % 4]}", "label": CODES[words[i % 4]], "n": i}
            for i in range(n)]


class FakeCompletions:
    """Answers by prompt (or by model and prompt); `errors` raise instead; `before` runs first
    (an async hook the tests use to look at the store mid-run, or to cancel)."""

    def __init__(self):
        self.calls = []
        self.answers: dict = {}
        self.errors: dict = {}
        self.before = None

    async def complete(self, call):
        self.calls.append(call)
        if self.before is not None:
            await self.before(call)
        for key in ((call.model, call.prompt), call.prompt, call.model):
            error = self.errors.get(key)
            if error is not None:
                raise error
        text = self.answers.get((call.model, call.prompt), self.answers.get(call.prompt,
                                                                             "no idea"))
        return CompletionAnswer(text, prompt_tokens=5, completion_tokens=2, finish_reason="stop")


def build_control(home, tiny_base, dispatcher, completions, **flags):
    """control_components wired to `completions`, with a runner that never waits (a context
    manager: the store closes at the end of the block)."""
    return control_components(home, tiny_base, service_token=SERVICE_TOKEN,
                              dispatcher=dispatcher, tokenizers=word_tokenizers(),
                              completions=completions,
                              runner_settings=RunnerSettings(flush_interval_s=0.0,
                                                             retry_backoff_s=0.0,
                                                             retry_window_s=0.0),
                              port=50999, max_evaluation_rows=20, max_generation_rows=20,
                              **flags)


@pytest.fixture
def fake():
    return FakeCompletions()


@pytest.fixture
def control(tmp_path, tiny_base, dispatcher, fake):
    with build_control(tmp_path / "home", tiny_base, dispatcher, fake) as components:
        yield components
