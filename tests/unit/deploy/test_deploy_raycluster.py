"""The RayCluster validates against KubeRay's own CRD schema (vendored from release v1.7.0 in
deploy/kuberay), made strict the way `kubectl apply` (server-side field validation) is: a field
the schema does not declare is an error, not silently pruned."""

from __future__ import annotations

import copy
import gzip
import hashlib
import re

import jsonschema
import pytest
import yaml
from deploy_sources import ROOT, TARGETS, find_resource

KUBERAY = ROOT / "deploy" / "kuberay"


@pytest.fixture(scope="module")
def crd_text() -> bytes:
    return gzip.decompress((KUBERAY / "ray.io_rayclusters.yaml.gz").read_bytes())


@pytest.fixture(scope="module")
def validator(crd_text):
    crd = yaml.safe_load(crd_text)
    assert crd["spec"]["names"]["kind"] == "RayCluster"
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    assert version["served"] and version["storage"]
    schema = _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
    return jsonschema.Draft7Validator(schema)


def test_the_vendored_crd_is_the_named_release(crd_text):
    readme = (KUBERAY / "README.md").read_text()
    recorded = re.search(r"sha256 of the uncompressed file: `([0-9a-f]{64})`", readme).group(1)
    assert hashlib.sha256(crd_text).hexdigest() == recorded
    assert "release tag `v1.7.0`" in readme
    assert "Apache License" in (KUBERAY / "LICENSE").read_text()


@pytest.mark.parametrize("target", TARGETS)
def test_the_raycluster_validates_against_kuberays_schema(rendered, validator, target):
    cluster = find_resource(rendered[target], "RayCluster", "finetune-ray")
    errors = sorted(validator.iter_errors(cluster), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_a_misspelled_or_mistyped_field_fails(rendered, validator):
    cluster = copy.deepcopy(find_resource(rendered["gpu"], "RayCluster", "finetune-ray"))
    cluster["spec"]["workerGroupSpecs"][0]["maxReplica"] = 4
    assert not validator.is_valid(cluster)
    cluster = copy.deepcopy(find_resource(rendered["gpu"], "RayCluster", "finetune-ray"))
    cluster["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "4"
    assert not validator.is_valid(cluster)
    cluster = copy.deepcopy(find_resource(rendered["gpu"], "RayCluster", "finetune-ray"))
    cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 1
    assert not validator.is_valid(cluster)


def test_ray_version_is_the_images_ray(rendered):
    pins = (ROOT / "deploy" / "images" / "constraints-cpu.txt").read_text()
    pinned = re.search(r"^ray==(\S+)$", pins, re.M).group(1)
    for target in TARGETS:
        cluster = find_resource(rendered[target], "RayCluster", "finetune-ray")
        assert cluster["spec"]["rayVersion"] == pinned


def _strict(schema):
    """additionalProperties: false wherever an object schema lists its properties and does not
    keep unknown fields (x-kubernetes-preserve-unknown-fields)."""
    if isinstance(schema, dict):
        for value in schema.values():
            _strict(value)
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        for item in schema:
            _strict(item)
    return schema
