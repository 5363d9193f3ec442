"""Fixtures of the deploy tests: the rendered kustomize targets and the entrypoints' --help."""

from __future__ import annotations

import functools
import os
import subprocess

import pytest
from deploy_sources import ROOT, TARGETS, help_command
from kustomize_render import render


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict]]:
    return {name: render(folder) for name, folder in TARGETS.items()}


@functools.lru_cache(maxsize=None)
def _help(name: str) -> str:
    env = {**os.environ, "COLUMNS": "200"}
    done = subprocess.run(help_command(name), cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, f"{name} --help failed: {done.stderr[-2000:]}"
    return done.stdout


@pytest.fixture(scope="session")
def help_text():
    return _help
