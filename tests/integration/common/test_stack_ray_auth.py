"""The local stack starts on a machine where `ray.init()` once left ~/.ray/auth_token: Ray
would otherwise turn token authentication on, and the stack's own dashboard would refuse the
launcher and control."""

import json
import urllib.request

import pytest

from services.cli.stack import LocalStack, StackConfig

pytestmark = pytest.mark.integration


def test_stack_starts_beside_a_leftover_ray_token(tmp_path, base_model_spec):
    home = tmp_path / "user"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("f" * 64)
    stack = LocalStack(StackConfig(home=tmp_path / "stack", base_model=base_model_spec.name,
                                   extra_env={"HOME": str(home)}, start_timeout_s=120))
    stack.start(inference=False)
    try:
        url = stack.ray_dashboard_url + "/api/authentication_mode"
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert json.load(resp)["authentication_mode"] == "disabled"
        with urllib.request.urlopen(stack.ray_dashboard_url + "/api/jobs/", timeout=10) as resp:
            assert resp.status == 200
    finally:
        stack.stop()
