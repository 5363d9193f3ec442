"""Every command and flag the images and manifests name exists: each is checked against the
entrypoint's own `--help`, and the FINETUNE_* variables a container gets are ones its service
reads. The services' settings are then built from the manifests' flags and environment, so a
value of the wrong type or out of range fails here rather than in a crash-looping pod."""

from __future__ import annotations

import re

import pytest
from deploy_sources import (
    DOCKERFILES,
    TARGETS,
    check_python_snippet,
    container_argv,
    container_env,
    dockerfile_instructions,
    entrypoint_commands,
    flags,
    is_finetune_image,
    pod_containers,
    program,
    service_env_reads,
    service_of,
    shell_commands,
)


def _has_flag(help_text: str, flag: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text) is not None


def _invocations(rendered):
    """(where, program, arguments, container, docs) for every command line named anywhere."""
    for path in DOCKERFILES.values():
        for instruction in dockerfile_instructions(path):
            if instruction.keyword == "RUN":
                for argv in shell_commands(instruction.value):
                    yield f"{path.name}", *program(argv), None, None
    for name, argv in entrypoint_commands().items():
        yield f"entrypoint.sh {name}", *program(argv), None, None
    for target, docs in rendered.items():
        for doc in docs:
            for container in pod_containers(doc):
                where = f"{target}: {doc['kind']}/{doc['metadata']['name']}/{container['name']}"
                if doc["kind"] == "RayCluster":
                    # KubeRay writes the command: `ray start` with rayStartParams as flags.
                    assert "command" not in container and "args" not in container, where
                    continue
                if is_finetune_image(container):
                    yield where, *program(container_argv(container)), container, docs


def _ray_start_params(rendered):
    for target, docs in rendered.items():
        for doc in docs:
            if doc["kind"] == "RayCluster":
                spec = doc["spec"]
                groups = [("head", spec["headGroupSpec"])] + \
                    [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
                for name, group in groups:
                    yield f"{target}: {name}", group.get("rayStartParams", {})


def test_every_named_flag_exists(rendered, help_text):
    checked = set()
    for where, name, arguments, _, _ in _invocations(rendered):
        if name.startswith("python -m services.") or name == "ray start":
            text = help_text(name)
            for flag in flags(arguments):
                assert _has_flag(text, flag), f"{where}: {name} has no {flag}"
            checked.add(name)
        elif name == "python -c":
            check_python_snippet(arguments[0])
            checked.add(name)
    for where, params in _ray_start_params(rendered):
        for key in params:
            assert _has_flag(help_text("ray start"), f"--{key}"), f"{where}: ray start --{key}"
    assert {"python -m services.control", "python -m services.inference",
            "python -m services.router", "ray start", "python -c"} <= checked


def test_a_flag_that_does_not_exist_is_caught(help_text):
    assert _has_flag(help_text("python -m services.inference"), "--max-loras")
    assert not _has_flag(help_text("python -m services.inference"), "--max-lora")
    assert not _has_flag(help_text("ray start"), "--num-gpu")


def test_the_ray_nodes_run_the_trainer_the_image_installs(help_text):
    """Control starts `$FINETUNE_TRAINER_PYTHON -m services.trainer.job --spec URI` on Ray."""
    assert _has_flag(help_text("python -m services.trainer.job"), "--spec")


@pytest.mark.parametrize("target", TARGETS)
def test_containers_get_only_variables_their_service_reads(rendered, target):
    docs = rendered[target]
    for doc in docs:
        for container in pod_containers(doc):
            if doc["kind"] == "RayCluster":
                service = "trainer"   # the trainer inherits the Ray node's environment
            elif is_finetune_image(container):
                service = service_of(program(container_argv(container))[0])
            else:
                continue
            names = {n for n in container_env(container, docs) if n.startswith("FINETUNE_")}
            reads = service_env_reads(service) if service else set()
            assert names <= reads, (f"{target}: {container['name']} ({service}) gets "
                                    f"{sorted(names - reads)}, which it does not read")


@pytest.mark.parametrize("target", TARGETS)
def test_services_accept_the_manifests_settings(rendered, target, tmp_path):
    """Builds each service's config from the container's own flags and environment (paths
    inside the image are only named, not opened, except the catalog: read from the ConfigMap)."""
    from services.control.config import load_config
    from services.inference.config import parse_config
    from services.router.config import parse_config as parse_router_config

    docs = rendered[target]
    catalog_map = next(d for d in docs if d["kind"] == "ConfigMap"
                       and d["metadata"]["name"] == "finetune-base-models")
    catalog = tmp_path / "base_models.toml"
    catalog.write_text(catalog_map["data"]["base_models.toml"])
    seen = set()
    for doc in docs:
        for container in pod_containers(doc):
            if doc["kind"] == "RayCluster" or not is_finetune_image(container):
                continue
            name, arguments = program(container_argv(container))
            env = container_env(container, docs)
            if name == "python -m services.control":
                env["FINETUNE_BASE_MODELS"] = str(catalog)
                env["FINETUNE_HOME"] = str(tmp_path / "home")
                config = load_config(arguments, env)
                assert config.database_url == env["FINETUNE_DATABASE_URL"]
                assert config.artifact_root.startswith("s3://")
                assert config.ray_address.startswith("http://")
                assert config.service_token == env["FINETUNE_SERVICE_TOKEN"]
                assert config.inference_address
                seen.add(name)
            elif name == "python -m services.inference":
                arguments = [f"--catalog={catalog}" if a.startswith("--catalog") else a
                             for a in arguments]
                config = parse_config(arguments, env)
                assert config.listen_address.startswith("0.0.0.0:")
                assert config.service_token == env["FINETUNE_SERVICE_TOKEN"]
                seen.add(name)
            elif name == "python -m services.router":
                arguments = [f"--catalog={catalog}" if a.startswith("--catalog") else a
                             for a in arguments]
                router = parse_router_config(arguments, env)
                assert router.listen_address.startswith("0.0.0.0:")
                # Every engine the catalog has, at the Service of its own Deployment.
                served = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
                assert all(address.split(":")[0] in served
                           for address in router.engines.values()), router.engines
                assert set(router.engines) == set(load_catalog_names(catalog))
                seen.add(name)
    assert seen == {"python -m services.control", "python -m services.inference",
                    "python -m services.router"}


def load_catalog_names(path) -> list[str]:
    from services.common.base_models import load_catalog

    return list(load_catalog(path))
