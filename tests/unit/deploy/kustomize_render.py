"""Renders a kustomization without kustomize (no kustomize or kubectl is installable here).

The subset the manifests in deploy/kubernetes use, with kustomize's semantics: `resources`
(files, or folders holding a kustomization), `patches` given by `path` (strategic-merge patches
that name their target by kind and name), `images` (every `containers`/`initContainers` entry
anywhere, as kustomize's images transformer does) and `namespace`. Anything else is refused, so
a manifest that starts using another feature fails here instead of rendering differently.

Strategic merge as the API server defines it: maps merge; `null` deletes; lists of built-in
kinds with a patch merge key (containers, env, volumes, ...) merge by that key; the other lists
of built-in kinds that these manifests patch are replaced; a custom resource (RayCluster) has no
merge keys, so kustomize replaces its lists whole.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

SUPPORTED_KEYS = {"apiVersion", "kind", "namespace", "resources", "patches", "images"}
BUILT_IN_API_VERSIONS = {"v1", "apps/v1", "batch/v1"}
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
              "volumeMounts": "mountPath", "imagePullSecrets": "name"}
# Lists without a merge key in the Kubernetes API: a patch replaces them.
REPLACED_LISTS = {"args", "command", "envFrom", "tolerations", "accessModes"}
CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding",
                  "PersistentVolume", "StorageClass"}


class RenderError(Exception):
    pass


def load_yaml_documents(path: Path) -> list[dict]:
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def render(folder: Path) -> list[dict]:
    folder = Path(folder)
    kustomization = folder / "kustomization.yaml"
    spec = load_yaml_documents(kustomization)[0]
    unknown = set(spec) - SUPPORTED_KEYS
    if unknown:
        raise RenderError(f"{kustomization}: unsupported fields {sorted(unknown)}")
    resources: list[dict] = []
    for entry in spec.get("resources", []):
        target = (folder / entry).resolve()
        if target.is_dir():
            resources.extend(render(target))
        elif target.is_file():
            resources.extend(load_yaml_documents(target))
        else:
            raise RenderError(f"{kustomization}: resource {entry} does not exist")
    for patch_entry in spec.get("patches", []):
        if set(patch_entry) != {"path"}:
            raise RenderError(f"{kustomization}: only `patches: - path: FILE` is supported")
        for patch in load_yaml_documents(folder / patch_entry["path"]):
            apply_patch(resources, patch, f"{folder / patch_entry['path']}")
    for image in spec.get("images", []):
        for resource in resources:
            _set_images(resource, image)
    if "namespace" in spec:
        for resource in resources:
            if resource["kind"] not in CLUSTER_SCOPED:
                resource.setdefault("metadata", {})["namespace"] = spec["namespace"]
    _check_unique(resources, kustomization)
    return resources


def apply_patch(resources: list[dict], patch: dict, origin: str) -> None:
    targets = [r for r in resources if r["kind"] == patch["kind"]
               and r["metadata"]["name"] == patch["metadata"]["name"]
               and _group(r["apiVersion"]) == _group(patch["apiVersion"])]
    if len(targets) != 1:
        raise RenderError(f"{origin}: patch matches {len(targets)} resources "
                          f"({patch['kind']}/{patch['metadata']['name']})")
    target = targets[0]
    body = {k: v for k, v in patch.items() if k not in ("apiVersion", "kind")}
    body["metadata"] = {k: v for k, v in patch["metadata"].items() if k != "name"}
    strategic_merge(target, body, target["apiVersion"] in BUILT_IN_API_VERSIONS, origin)


def strategic_merge(base: dict, patch: dict, built_in: bool, origin: str, path: str = "") -> None:
    for key, value in patch.items():
        where = f"{path}.{key}"
        if value is None:
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            strategic_merge(base[key], value, built_in, origin, where)
        elif isinstance(value, list) and isinstance(base.get(key), list) and built_in:
            if key in MERGE_KEYS:
                _merge_list(base[key], value, MERGE_KEYS[key], origin, where)
            elif key in REPLACED_LISTS:
                base[key] = copy.deepcopy(value)
            else:
                raise RenderError(f"{origin}: patching list {where}: its strategic-merge "
                                  "semantics are not implemented here")
        else:
            base[key] = copy.deepcopy(value)


def _merge_list(base: list, patch: list, key: str, origin: str, path: str) -> None:
    for item in patch:
        match = [b for b in base if isinstance(b, dict) and b.get(key) == item.get(key)]
        if match:
            strategic_merge(match[0], item, True, origin, f"{path}[{item.get(key)}]")
        else:
            base.append(copy.deepcopy(item))


def _set_images(node, image: dict) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                for container in value:
                    if _image_name(container.get("image", "")) == image["name"]:
                        name = image.get("newName", image["name"])
                        tag = image.get("newTag")
                        container["image"] = f"{name}:{tag}" if tag else name
            _set_images(value, image)
    elif isinstance(node, list):
        for item in node:
            _set_images(item, image)


def _image_name(ref: str) -> str:
    ref = ref.split("@", 1)[0]
    head, _, tail = ref.rpartition(":")
    return head if head and "/" not in tail else ref


def _group(api_version: str) -> str:
    return api_version.split("/")[0] if "/" in api_version else ""


def _check_unique(resources: list[dict], origin: Path) -> None:
    seen = set()
    for r in resources:
        ident = (r["apiVersion"], r["kind"], r["metadata"].get("namespace"), r["metadata"]["name"])
        if ident in seen:
            raise RenderError(f"{origin}: {ident} appears twice")
        seen.add(ident)
