"""What deploy/ names, read from its files: Dockerfile instructions, the image entrypoint's
subcommands, the containers of the rendered manifests with their command lines and environment,
and the FINETUNE_* variables each service reads."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[3]
IMAGES = ROOT / "deploy" / "images"
KUBERNETES = ROOT / "deploy" / "kubernetes"
TARGETS = {"base": KUBERNETES / "base", "cpu": KUBERNETES / "overlays" / "cpu",
           "gpu": KUBERNETES / "overlays" / "gpu", "trial": KUBERNETES / "trial"}
DOCKERFILES = {"cpu": IMAGES / "Dockerfile.cpu", "cuda": IMAGES / "Dockerfile.cuda"}
ENTRYPOINT = IMAGES / "entrypoint.sh"
IMAGE_APP_ROOT = "/opt/finetune/app"      # where the Dockerfiles put the repository's tree
FINETUNE_IMAGE = "finetune"               # the image name the manifests use (kustomize images)
SEPARATORS = {";", "&&", "||", "|", "&"}


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str
    stage: int          # index of the FROM it follows


def dockerfile_instructions(path: Path) -> list[Instruction]:
    """Instructions with continuation lines joined and comment lines dropped, as Docker does."""
    out, stage, buffer = [], -1, ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if buffer and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        line, buffer = buffer + line, ""
        keyword, _, value = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(keyword, value.strip(), stage))
    return out


def env_assignments(instruction: Instruction) -> dict[str, str]:
    return dict(token.split("=", 1) for token in shlex.split(instruction.value))


def shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a shell line (split at ; && || | &)."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token in SEPARATORS:
            if current:
                commands.append(current)
            current = []
        else:
            current.append(token)
    if current:
        commands.append(current)
    return commands


def entrypoint_commands() -> dict[str, list[str]]:
    """The entrypoint's subcommands and the command line each execs (without "$@")."""
    commands, name = {}, None
    for line in ENTRYPOINT.read_text().splitlines():
        arm = re.match(r"^\s*([a-z][a-z-]*)\)\s*$", line)
        if arm:
            name = arm.group(1)
            continue
        stripped = line.strip()
        if name and stripped.startswith("exec "):
            argv = [t for t in shlex.split(stripped.removesuffix(";;"))[1:] if t != "$@"]
            commands[name] = argv
            name = None
    return commands


def pod_containers(node) -> Iterator[dict]:
    """Every container (and init container) anywhere in a resource."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from value
            else:
                yield from pod_containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from pod_containers(item)


def is_finetune_image(container: dict) -> bool:
    image = container["image"]
    name = image.rsplit("/", 1)[-1].split(":", 1)[0].split("@", 1)[0]
    return name == FINETUNE_IMAGE


def container_argv(container: dict) -> list[str]:
    """The command line a container of the finetune image runs: its command, or the image's
    entrypoint subcommand named by its first argument."""
    args = list(container.get("args", []))
    if "command" in container:
        return list(container["command"]) + args
    commands = entrypoint_commands()
    if not args or args[0] not in commands:
        raise AssertionError(f"container {container['name']}: first argument {args[:1]} is not "
                             f"one of the entrypoint's subcommands {sorted(commands)}")
    return commands[args[0]] + args[1:]


def program(argv: list[str]) -> tuple[str, list[str]]:
    """(`python -m MODULE` | `python -c` | `ray start` | the executable, its arguments)."""
    if len(argv) >= 3 and Path(argv[0]).name.startswith("python") and argv[1] in ("-m", "-c"):
        if argv[1] == "-m":
            return f"python -m {argv[2]}", argv[3:]
        return "python -c", argv[2:]
    if argv[:2] == ["ray", "start"]:
        return "ray start", argv[2:]
    return argv[0], argv[1:]


def flags(arguments: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in arguments if a.startswith("--")]


def help_command(name: str) -> list[str]:
    if name.startswith("python -m "):
        return [sys.executable, "-m", name.removeprefix("python -m "), "--help"]
    if name == "ray start":
        return [str(Path(sys.executable).with_name("ray")), "start", "--help"]
    raise AssertionError(f"no --help known for {name!r}")


def find_resource(docs: list[dict], kind: str, name: str) -> dict | None:
    for doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    return None


def resource_data(doc: dict) -> dict[str, str]:
    return {**doc.get("data", {}), **doc.get("stringData", {})}


def container_env(container: dict, docs: list[dict]) -> dict[str, str]:
    """The environment a container gets, with ConfigMap and Secret references resolved."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            if key in source:
                ref = find_resource(docs, kind, source[key]["name"])
                assert ref is not None, f"{kind} {source[key]['name']} is not in the manifests"
                env.update(resource_data(ref))
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
            continue
        value_from = item["valueFrom"]
        for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
            if key in value_from:
                ref = find_resource(docs, kind, value_from[key]["name"])
                assert ref is not None, f"{kind} {value_from[key]['name']} is not in the manifests"
                data = resource_data(ref)
                assert value_from[key]["key"] in data, \
                    f"{kind} {value_from[key]['name']} has no key {value_from[key]['key']}"
                env[item["name"]] = data[value_from[key]["key"]]
    return env


# FINETUNE_* names read from the environment: environ.get("X"), env["X"], os.getenv("X").
_ENV_READ = re.compile(
    r"""(?:environ|env)\s*(?:\.get\(\s*|\[\s*)["'](FINETUNE_\w+)["']|getenv\(\s*["'](FINETUNE_\w+)["']""")
SERVICE_PACKAGES = {"control": ("control", "common"), "inference": ("inference", "common"),
                    "router": ("router", "common"), "trainer": ("trainer", "common")}


def service_env_reads(service: str) -> set[str]:
    """The FINETUNE_* variables a service's own modules (and services/common) read."""
    names = set()
    for package in SERVICE_PACKAGES[service]:
        for source in (ROOT / "services" / package).rglob("*.py"):
            for match in _ENV_READ.finditer(source.read_text()):
                names.add(match.group(1) or match.group(2))
    if service == "control":
        from services.control.config import _SETTINGS  # its flag -> variable table
        names |= {env for env, _ in _SETTINGS.values()}
    return names


def service_of(program_name: str) -> str | None:
    return {"python -m services.control": "control", "python -m services.inference": "inference",
            "python -m services.router": "router", "python -m services.trainer.job": "trainer",
            "ray start": "trainer"}.get(program_name)


def check_python_snippet(code: str) -> None:
    """Compiles, and every module and name it imports exists (without running it)."""
    tree = ast.parse(code)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                assert importlib.util.find_spec(alias.name), f"no module {alias.name}"
        elif isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{node.module} has no {alias.name}"
