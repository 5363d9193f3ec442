"""One real local stack (Ray head, control, inference with its HTTP server) for the OpenAI door's
module and the official `openai` SDK pointed at it (helpers: openai_stack.py)."""

from __future__ import annotations

import pytest
from openai import OpenAI

from services.cli.client import FinetuneClient
from services.cli.stack import LocalStack, StackConfig


@pytest.fixture(scope="module")
def stack(tmp_path_factory, base_model_spec):
    home = tmp_path_factory.mktemp("openai-home")
    with LocalStack(StackConfig(home=home, base_model=base_model_spec.name)) as s:
        yield s


@pytest.fixture(scope="module")
def admin_key(stack) -> str:
    return stack.admin_key()


@pytest.fixture(scope="module")
def sdk(stack, admin_key):
    with OpenAI(base_url=f"{stack.http_url}/v1", api_key=admin_key, max_retries=0,
                timeout=600) as client:
        yield client


@pytest.fixture(scope="module")
def grpc_client(stack, admin_key):
    with FinetuneClient(stack.control_address, stack.inference_address, admin_key) as client:
        yield client
