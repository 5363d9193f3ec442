"""Unit tests run without Ray, vLLM or the network: refuse to start Ray here."""

import pytest


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch):
    try:
        import ray
    except ImportError:
        return

    def refuse(*args, **kwargs):
        raise RuntimeError("unit tests must not start Ray; use a fake behind the Protocol")

    monkeypatch.setattr(ray, "init", refuse)
