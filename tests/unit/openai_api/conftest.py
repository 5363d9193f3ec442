"""The real app reached in-process, by the official `openai` SDK and by a plain HTTP client,
both over an ASGI transport (no network), with fakes behind it (openai_fakes.py)."""

from __future__ import annotations

import pytest
from openai_fakes import BASE, Door, FakeControl, FakeCore

from services.common.metrics import new_registry
from services.openai_api.app import build_app
from services.openai_api.context import ApiContext


@pytest.fixture
def door():
    core, control = FakeCore(), FakeControl()
    context = ApiContext(control, {BASE: 0.001}, core)
    registry = new_registry()
    sampled: list = []

    async def before_scrape():
        sampled.append(True)
    app = build_app(context, registry, before_scrape)
    return Door(core, control, context, registry, app, sampled)
