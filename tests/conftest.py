"""Fixtures shared by every test layer."""

from __future__ import annotations

import socket

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def base_model_spec():
    """The default base model, provisioned once into the shared model cache (not in unit tests)."""
    from services.common.base_models import DEFAULT_BASE_MODEL, ensure_model, load_catalog

    spec = load_catalog()[DEFAULT_BASE_MODEL]
    ensure_model(spec)
    return spec
