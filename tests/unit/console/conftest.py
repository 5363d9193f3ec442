"""The console reached in-process through the whole HTTP app (build_app), with fakes behind it."""

from __future__ import annotations

import pytest
from console_fakes import FakeControl, FakeCore, sign_in
from fastapi.testclient import TestClient

from services.openai_api.app import build_app
from services.openai_api.context import ApiContext


@pytest.fixture
def control():
    return FakeControl()


@pytest.fixture
def core():
    return FakeCore()


@pytest.fixture
def browser(control, core):
    """A client that is not signed in (redirects are not followed: tests look at them)."""
    app = build_app(ApiContext(control, {}, core))
    with TestClient(app, follow_redirects=False) as client:
        yield client


@pytest.fixture
def admin(browser):
    assert sign_in(browser).status_code == 303
    return browser
