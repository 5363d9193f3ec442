"""One real local stack (Ray head, control, inference on vLLM) per e2e module, stopped after it
so that its engine and Ray do not hold memory and CPU through the rest of the test session."""

import pytest

from services.cli.client import FinetuneClient
from services.cli.stack import LocalStack, StackConfig


@pytest.fixture(scope="module")
def stack(tmp_path_factory, base_model_spec):
    home = tmp_path_factory.mktemp("finetune-home")
    with LocalStack(StackConfig(home=home, base_model=base_model_spec.name)) as s:
        yield s


@pytest.fixture(scope="module")
def client(stack):
    with FinetuneClient(stack.control_address, stack.inference_address, stack.admin_key()) as c:
        yield c
