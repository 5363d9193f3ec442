"""One real local stack (Ray head, control, inference on vLLM) for the whole e2e session."""

import pytest

from services.cli.client import FinetuneClient
from services.cli.stack import LocalStack, StackConfig


@pytest.fixture(scope="session")
def stack(tmp_path_factory, base_model_spec):
    home = tmp_path_factory.mktemp("finetune-home")
    with LocalStack(StackConfig(home=home, base_model=base_model_spec.name)) as s:
        yield s


@pytest.fixture(scope="session")
def client(stack):
    with FinetuneClient(stack.control_address, stack.inference_address, stack.admin_key()) as c:
        yield c
