"""A seeded corpus of hostile inputs over every public RPC of control and inference, against
the real processes on loopback (`python -m services.control`, with a Ray address nothing
answers at, and `python -m services.inference` on the default model).

Each call must end in a documented status with a caller-safe message: never INTERNAL or
UNKNOWN, never past its deadline, never a process gone, never a byte of a file outside the data
folder in an answer, never a file written outside it. Afterwards both services still answer a
known-good request. FINETUNE_HOSTILE_EXAMPLES sets the corpus size (CI runs a slice; `make
reliability` runs 10,000 and writes the counts to docs/reliability.md through
FINETUNE_HOSTILE_REPORT).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from control_processes import ControlProcess, free_port
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hostile_inputs import CANARY_DIR, build, messages, public_rpcs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from inference_processes import kill, spawn_inference
from polling import wait_until

from finetune.control.v1 import (
    access_pb2,
    data_pb2,
    evaluations_pb2,
    generations_pb2,
    jobs_pb2,
    models_pb2,
    sweeps_pb2,
    usage_pb2,
)
from finetune.inference.v1 import inference_pb2
from services.cli.client import FinetuneClient

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("FINETUNE_HOSTILE_EXAMPLES", "300"))
REPORT = os.environ.get("FINETUNE_HOSTILE_REPORT", "")
SERVICE_TOKEN = "hostile-service-token"
SECRET = "canary-7f3a9c-never-in-an-answer"
CONTROL_RPCS = public_rpcs(access_pb2.DESCRIPTOR, data_pb2.DESCRIPTOR, jobs_pb2.DESCRIPTOR,
                           models_pb2.DESCRIPTOR, usage_pb2.DESCRIPTOR,
                           evaluations_pb2.DESCRIPTOR, generations_pb2.DESCRIPTOR,
                           sweeps_pb2.DESCRIPTOR)
INFERENCE_RPCS = public_rpcs(inference_pb2.DESCRIPTOR)
# Documented answers to a bad request; anything else (INTERNAL, UNKNOWN, DATA_LOSS) is a defect.
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
           grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.PERMISSION_DENIED,
           grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.FAILED_PRECONDITION,
           grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.OUT_OF_RANGE,
           grpc.StatusCode.UNIMPLEMENTED}
WATCH_S = 2.0       # Watch* streams run until the object ends: cut them off here
DEADLINE_S = 120.0  # any other call: answered within this, or it hung


@dataclass
class Stack:
    control: ControlProcess
    inference: object
    inference_address: str
    keys: dict[str, str]             # kind of caller -> its key
    canary: Path
    counts: Counter = field(default_factory=Counter)


def _serving(address: str, proc_alive) -> bool:
    assert proc_alive(), f"the process serving {address} exited"
    with grpc.insecure_channel(address) as channel:
        try:
            return health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2).status == \
                health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False


@pytest.fixture(scope="module")
def stack(tmp_path_factory, base_model_spec):
    tmp = tmp_path_factory.mktemp("hostile")
    canary = Path(CANARY_DIR)
    shutil.rmtree(canary, ignore_errors=True)
    canary.mkdir(parents=True)
    (canary / "secret.txt").write_text(SECRET + "\n")
    # Queries are cut off after 5 s (a recursive CTE in the corpus never ends by itself).
    control = ControlProcess(tmp / "control", free_port(), f"http://127.0.0.1:{free_port()}",
                             SERVICE_TOKEN, "--query-timeout-s", "5").start()
    port = free_port()
    inference = spawn_inference(control.address, SERVICE_TOKEN, base_model_spec.name, tmp, port,
                                "inference.log", extra=("--http-port", "-1"))
    address = f"127.0.0.1:{port}"
    try:
        wait_until(lambda: _serving(address, lambda: inference.poll() is None), 400,
                   "inference to be SERVING", every_s=0.5)
        admin = (tmp / "control" / "bootstrap_key").read_text().strip()
        with FinetuneClient(control.address, address, admin) as client:
            client.load_rows("sales.public.tickets", [
                {"prompt": f"ticket {i}", "completion": f"Q-{i}"} for i in range(6)])
            client.create_role("probe_role")
            client.grant_role("finetune_user", to_role="probe_role")
            client.create_user("probe", default_role="probe_role")
            probe = client.create_api_key("probe").key
            client.create_user("nobody")
            nobody = client.create_api_key("nobody").key
        yield Stack(control, inference, address,
                    {"admin": admin, "nobody": nobody, "probe": probe, "forged": "ft_" + "A" * 43,
                     "none": ""}, canary)
    finally:
        kill(inference)
        control.stop()
        shutil.rmtree(canary, ignore_errors=True)


def call(channel: grpc.Channel, rpc, request_values, key: str) -> tuple[grpc.StatusCode, bytes]:
    """Calls `rpc` with a message built from `request_values`; the status and every byte the
    server sent back (answers and error details), for the canary check."""
    request_class = GetMessageClass(rpc.method.input_type)
    response_class = GetMessageClass(rpc.method.output_type)
    metadata = (("authorization", f"Bearer {key}"),) if key else ()
    kwargs = dict(request_serializer=lambda m: m.SerializeToString(),
                  response_deserializer=response_class.FromString)
    watch = rpc.method.name.startswith("Watch")
    timeout = WATCH_S if watch else DEADLINE_S
    received = b""
    try:
        if rpc.client_streaming:   # LoadTable: a header, then rows, in any order given
            stub = channel.stream_unary(rpc.path, **kwargs)
            items = request_values if isinstance(request_values, list) else [request_values]
            answer = stub(iter([build(request_class, v) for v in items]), metadata=metadata,
                          timeout=timeout)
            received = answer.SerializeToString()
        elif rpc.server_streaming:
            stub = channel.unary_stream(rpc.path, **kwargs)
            for answer in stub(build(request_class, request_values), metadata=metadata,
                               timeout=timeout):
                received += answer.SerializeToString()
                if len(received) > 1 << 22:
                    break
        else:
            stub = channel.unary_unary(rpc.path, **kwargs)
            received = stub(build(request_class, request_values), metadata=metadata,
                            timeout=timeout).SerializeToString()
        return grpc.StatusCode.OK, received
    except grpc.RpcError as exc:
        code = exc.code()
        if watch and code is grpc.StatusCode.DEADLINE_EXCEEDED:
            code = grpc.StatusCode.OK   # a stream that was still following its object
        return code, received + (exc.details() or "").encode()


def calls(rpc):
    values = messages(rpc.method.input_type)
    if rpc.client_streaming:
        values = st.lists(values, min_size=1, max_size=3)
    return st.tuples(values, st.sampled_from(["admin"] * 6 + ["probe", "nobody", "forged",
                                                              "none"]))


def _run_corpus(stack: Stack, address: str, rpcs, examples: int, alive) -> None:
    """`examples` inputs shared evenly over `rpcs` (each RPC its own seeded run, so that every
    one is reached however many there are)."""
    channel = grpc.insecure_channel(address, options=[
        ("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)])
    per_rpc = max(3, examples // len(rpcs))

    def corpus(rpc):
        @settings(max_examples=per_rpc, derandomize=True, database=None, deadline=None,
                  suppress_health_check=list(HealthCheck), print_blob=True)
        @given(calls(rpc))
        def one(case):
            values, who = case
            started = time.monotonic()
            code, received = call(channel, rpc, values, stack.keys[who])
            stack.counts[(rpc.path, code.name)] += 1
            elapsed = time.monotonic() - started
            assert alive(), f"{address} died on {rpc.path}"
            # DEADLINE_EXCEEDED is documented for a query the server cut off (its own timer),
            # not for a call that reached the client's deadline: that one hung.
            server_cut = code is grpc.StatusCode.DEADLINE_EXCEEDED and elapsed < DEADLINE_S - 5
            assert code in ALLOWED or server_cut, \
                f"{rpc.path} answered {code.name} after {elapsed:.1f} s to {values!r:.2000}"
            assert SECRET.encode() not in received, f"{rpc.path} leaked the canary file"
        return one

    try:
        for rpc in rpcs:
            corpus(rpc)()
    finally:
        channel.close()


def test_hostile_inputs_over_every_control_rpc(stack):
    try:
        _run_corpus(stack, stack.control.address, CONTROL_RPCS, EXAMPLES,
                    lambda: stack.control.proc.poll() is None)
    finally:
        _cancel_background_work(stack)


def _cancel_background_work(stack) -> None:
    """Generations and evaluations the corpus started run on in control: stop them, so that
    the inference corpus after this one meets an idle engine."""
    with FinetuneClient(stack.control.address, stack.inference_address,
                        stack.keys["admin"]) as client:
        for item, cancel in [*((g, client.cancel_generation) for g in client.list_generations()),
                             *((e, client.cancel_evaluation) for e in client.list_evaluations())]:
            if item.status in (1, 2):   # PENDING, RUNNING in both enums
                with contextlib.suppress(grpc.RpcError):   # it ended meanwhile
                    cancel(item.id)


def test_hostile_inputs_over_every_inference_rpc(stack):
    _run_corpus(stack, stack.inference_address, INFERENCE_RPCS, max(50, EXAMPLES // 5),
                lambda: stack.inference.poll() is None)


# The CLI over the same processes: each command with hostile arguments ends with a message and
# an exit code (0, 1 for the service's refusal, 2 for bad usage), never a traceback.
CLI_COMMANDS = [
    ["preview", "{s}"], ["create", "{s}", "{s}", "{s}"], ["describe", "{s}"], ["cancel", "{s}"],
    ["model", "{s}"], ["artifact", "{s}", "{s}"], ["complete", "{s}", "{s}"], ["tables"],
    ["tables", "{s}"], ["jobs", "estimate", "{s}", "{s}"], ["jobs", "events", "{s}"],
    ["access", "role", "create", "{s}"], ["access", "grant", "{s}", "{s}", "{s}", "--to-role",
                                          "{s}"],
    ["access", "show-grants", "--to-role", "{s}"], ["data", "create-database", "{s}"],
    ["data", "drop-table", "{s}"], ["data", "create-view", "{s}", "{s}"],
    ["evaluate", "{s}", "{s}"], ["evaluations", "list", "--model", "{s}"],
    ["generate", "{s}", "{s}", "--into", "{s}"], ["generations", "show", "{s}"],
    ["usage", "inference", "--model", "{s}"],
]
CLI_EXAMPLES = max(3, EXAMPLES // 50)


def test_hostile_arguments_to_the_cli(stack, tmp_path, monkeypatch):
    from hostile_inputs import strings
    from typer.testing import CliRunner

    from services.cli.main import app

    monkeypatch.chdir(tmp_path)   # anything a command writes lands here
    env = {"FINETUNE_CONTROL": stack.control.address, "FINETUNE_INFERENCE":
           stack.inference_address, "FINETUNE_API_KEY": stack.keys["admin"],
           "FINETUNE_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    runner = CliRunner()
    codes: Counter = Counter()

    def corpus(template):
        holes = sum(part == "{s}" for part in template)

        @settings(max_examples=CLI_EXAMPLES, derandomize=True, database=None, deadline=None,
                  suppress_health_check=list(HealthCheck))
        @given(st.lists(strings().filter(lambda s: "\x00" not in s), min_size=holes,
                        max_size=holes))
        def one(values):
            it = iter(values)
            argv = [next(it) if part == "{s}" else part for part in template]
            result = runner.invoke(app, argv, env=env)
            codes[(template[0], result.exit_code)] += 1
            assert result.exit_code in (0, 1, 2), (argv, result.output[-2000:])
            assert result.exception is None or isinstance(result.exception, SystemExit), \
                (argv, repr(result.exception))
            assert "Traceback" not in result.output, (argv, result.output[-2000:])
            assert SECRET not in result.output, argv
        return one

    for template in CLI_COMMANDS:
        corpus(template)()
    assert sorted(p.name for p in stack.canary.iterdir()) == ["secret.txt"]
    stack.counts.update({(f"cli {c}", f"exit {code}"): n for (c, code), n in codes.items()})


def test_nothing_outside_the_data_folder_was_touched_and_both_still_answer(stack,
                                                                          base_model_spec):
    assert sorted(p.name for p in stack.canary.iterdir()) == ["secret.txt"]
    assert (stack.canary / "secret.txt").read_text() == SECRET + "\n"
    with FinetuneClient(stack.control.address, stack.inference_address,
                        stack.keys["probe"]) as client:
        assert client.whoami().user_name == "probe"
        assert [b.name for b in client.base_models()]
        answer = client.complete(base_model_spec.name, "Say hello.", max_tokens=4)
        assert answer.usage.completion_tokens > 0
    seen = sorted({path for path, _ in stack.counts if path.startswith("/")})
    assert seen == sorted(r.path for r in CONTROL_RPCS + INFERENCE_RPCS), \
        "the corpus reached every RPC"
    if REPORT:
        Path(REPORT).write_text(json.dumps(
            {"examples": EXAMPLES, "counts": [[p, c, n] for (p, c), n in
                                              sorted(stack.counts.items())]}, indent=1))
