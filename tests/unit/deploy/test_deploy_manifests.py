"""The Kubernetes manifests: every rendered target validates offline against the Kubernetes
schemas (kubernetes-validate), its references resolve, and it says what docs/deploy.md says."""

from __future__ import annotations

import copy
import dataclasses

import kubernetes_validate
import pytest
from deploy_sources import (
    IMAGE_APP_ROOT,
    KUBERNETES,
    ROOT,
    TARGETS,
    container_argv,
    find_resource,
    pod_containers,
    resource_data,
)
from kustomize_render import RenderError, load_yaml_documents, render

from services.common.base_models import load_catalog

# The oldest Kubernetes the manifests claim (native gRPC probes are GA since 1.27) and the newest
# schemas kubernetes-validate ships.
K8S_VERSIONS = ("1.29", kubernetes_validate.utils.latest_version())


def _kubernetes_resources(docs):
    return [d for d in docs if d["apiVersion"] != "ray.io/v1"]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_resource_validates_against_the_kubernetes_schemas(rendered, target, version):
    docs = _kubernetes_resources(rendered[target])
    assert docs
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{target}: {doc['kind']}/{doc['metadata']['name']} "
                        f"(k8s {version}): {exc.message} at {list(exc.path)}")


def test_a_misspelled_field_fails_validation(rendered):
    control = copy.deepcopy(find_resource(rendered["cpu"], "Deployment", "finetune-control"))
    control["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"grpc": {"port": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(control, K8S_VERSIONS[-1], strict=True)


def test_every_yaml_file_is_used():
    """Each file is a kustomization, or a resource or patch some kustomization names."""
    named = set()
    for kustomization in KUBERNETES.rglob("kustomization.yaml"):
        spec = load_yaml_documents(kustomization)[0]
        named.add(kustomization)
        for entry in spec.get("resources", []):
            named.add((kustomization.parent / entry).resolve())
        for patch in spec.get("patches", []):
            named.add((kustomization.parent / patch["path"]).resolve())
    files = {p.resolve() for p in KUBERNETES.rglob("*.yaml")}
    assert files - {p.resolve() for p in named} == set()


@pytest.mark.parametrize("target", TARGETS)
def test_references_resolve(rendered, target):
    docs = rendered[target]
    for doc in docs:
        for container in pod_containers(doc):
            for source in container.get("envFrom", []):
                for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    if key in source:
                        assert find_resource(docs, kind, source[key]["name"]), source
            for item in container.get("env", []):
                for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                    ref = item.get("valueFrom", {}).get(key)
                    if ref:
                        found = find_resource(docs, kind, ref["name"])
                        assert found and ref["key"] in resource_data(found), (target, item)
        for volume in _volumes(doc):
            if "configMap" in volume:
                assert find_resource(docs, "ConfigMap", volume["configMap"]["name"]), volume
            if "persistentVolumeClaim" in volume:
                assert find_resource(docs, "PersistentVolumeClaim",
                                     volume["persistentVolumeClaim"]["claimName"]), volume
        for container in pod_containers(doc):
            mounted = {m["name"] for m in container.get("volumeMounts", [])}
            assert mounted <= {v["name"] for v in _volumes(doc)}, (target, container["name"])


@pytest.mark.parametrize("target", TARGETS)
def test_services_select_pods_and_name_their_ports(rendered, target):
    docs = rendered[target]
    templates = [d["spec"]["template"] for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    for service in (d for d in docs if d["kind"] == "Service"):
        selector = service["spec"]["selector"]
        pods = [t for t in templates
                if selector.items() <= t["metadata"].get("labels", {}).items()]
        assert len(pods) == 1, f"{service['metadata']['name']} selects {len(pods)} workloads"
        port_names = {p.get("name") for c in pods[0]["spec"]["containers"]
                      for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, (service["metadata"]["name"], port)


def test_control_runs_alone_and_migrates_at_start(rendered):
    for target in TARGETS:
        control = find_resource(rendered[target], "Deployment", "finetune-control")
        assert control["spec"]["replicas"] == 1
        assert control["spec"]["strategy"]["type"] == "Recreate"
        container = control["spec"]["template"]["spec"]["containers"][0]
        assert container_argv(container)[:3] == ["python", "-m", "services.control"]
        assert {p: container[p]["grpc"]["port"] for p in
                ("startupProbe", "readinessProbe", "livenessProbe")} == \
            dict.fromkeys(("startupProbe", "readinessProbe", "livenessProbe"), 50051)


def _inference_deployments(docs):
    return [d for d in docs if d["kind"] == "Deployment"
            and d["metadata"]["labels"].get("app.kubernetes.io/component") == "inference"]


def _flag(argv, name):
    for i, arg in enumerate(argv):
        if arg == name:
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


@pytest.mark.parametrize("target", TARGETS)
def test_inference_readiness_is_grpc_health_on_its_port(rendered, target):
    deployments = _inference_deployments(rendered[target])
    assert deployments
    for deployment in deployments:
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        port = int(_flag(container_argv(container), "--port"))
        assert container["ports"][0]["containerPort"] == port
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == port


def test_gpus_only_in_the_gpu_overlay(rendered):
    def gpus(docs):
        return [c["name"] for d in docs for c in pod_containers(d)
                if "nvidia.com/gpu" in c.get("resources", {}).get("limits", {})]
    assert sorted(gpus(rendered["gpu"])) == ["inference", "ray-worker"]
    for target in ("base", "cpu", "trial"):
        assert gpus(rendered[target]) == []
    assert all(c["image"].endswith("-cuda") for d in rendered["gpu"] for c in pod_containers(d))
    assert all(c["image"].endswith("-cpu") for d in rendered["cpu"] for c in pod_containers(d))


def test_the_catalog_configmap_matches_the_repository_catalog(rendered, tmp_path):
    """Entries the ConfigMap shares with deploy/base_models.toml say the same; each inference
    Deployment serves a model of the ConfigMap's catalog."""
    configmap = find_resource(rendered["base"], "ConfigMap", "finetune-base-models")
    path = tmp_path / "base_models.toml"
    path.write_text(configmap["data"]["base_models.toml"])
    deployed = load_catalog(path, "/opt/finetune/models")
    repository = load_catalog(ROOT / "deploy" / "base_models.toml", "/opt/finetune/models")
    assert deployed
    for name in deployed.keys() & repository.keys():
        # A chat template is named by its path in the image, where the repository's tree lies.
        template = deployed[name].chat_template
        if template is not None:
            assert str(template).startswith(IMAGE_APP_ROOT + "/")
            template = ROOT / str(template).removeprefix(IMAGE_APP_ROOT + "/")
        assert dataclasses.replace(deployed[name], chat_template=template) == repository[name]
    for target in TARGETS:
        for deployment in _inference_deployments(rendered[target]):
            argv = container_argv(deployment["spec"]["template"]["spec"]["containers"][0])
            model = _flag(argv, "--base-model")
            assert model in deployed
            assert deployment["metadata"]["name"] == f"finetune-inference-{model}"


def test_ray_worker_groups_have_autoscaling_bounds(rendered):
    for target in TARGETS:
        cluster = find_resource(rendered[target], "RayCluster", "finetune-ray")
        assert cluster["spec"]["enableInTreeAutoscaling"] is True
        for group in cluster["spec"]["workerGroupSpecs"]:
            # A job is sized by the resources present when it starts: keep one worker up.
            assert 1 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_the_base_secret_is_a_placeholder_and_the_trial_one_is_consistent(rendered):
    base = resource_data(find_resource(rendered["base"], "Secret", "finetune-secrets"))
    assert all("REPLACE_ME" in v for v in base.values())
    trial = resource_data(find_resource(rendered["trial"], "Secret", "finetune-secrets"))
    assert base.keys() == trial.keys()
    assert not any("REPLACE_ME" in v for v in trial.values())
    credentials = resource_data(find_resource(rendered["trial"], "Secret",
                                              "finetune-trial-credentials"))
    assert trial["FINETUNE_DATABASE_URL"] == (
        f"postgresql+psycopg://{credentials['POSTGRES_USER']}:{credentials['POSTGRES_PASSWORD']}"
        f"@finetune-postgres:5432/{credentials['POSTGRES_DB']}")
    assert (trial["AWS_ACCESS_KEY_ID"], trial["AWS_SECRET_ACCESS_KEY"]) == \
        (credentials["MINIO_ROOT_USER"], credentials["MINIO_ROOT_PASSWORD"])
    store = resource_data(find_resource(rendered["trial"], "ConfigMap", "finetune-object-store"))
    assert store["AWS_ENDPOINT_URL"] == "http://finetune-minio:9000"
    control = resource_data(find_resource(rendered["trial"], "ConfigMap",
                                          "finetune-control-config"))
    bucket = control["FINETUNE_ARTIFACT_ROOT"].removeprefix("s3://").split("/")[0]
    job = find_resource(rendered["trial"], "Job", "finetune-create-bucket")
    assert f'"{bucket}"' in job["spec"]["template"]["spec"]["containers"][0]["command"][-1]


def test_everything_is_namespaced_and_runs_as_non_root(rendered):
    for target in TARGETS:
        for doc in rendered[target]:
            if doc["kind"] != "Namespace":
                assert doc["metadata"]["namespace"] == "finetune", doc["metadata"]["name"]
            for pod in _pod_specs(doc):
                assert pod["securityContext"]["runAsNonRoot"] is True
                for container in pod["containers"]:
                    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_the_renderer_refuses_what_it_does_not_implement(tmp_path):
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [cm.yaml]\nnamePrefix: x-\n")
    (tmp_path / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n")
    with pytest.raises(RenderError, match="namePrefix"):
        render(tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [cm.yaml]\npatches: [{path: p.yaml}]\n")
    (tmp_path / "p.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n")
    with pytest.raises(RenderError, match="matches 0"):
        render(tmp_path)


def test_the_renderer_merges_containers_by_name_and_replaces_args():
    from kustomize_render import apply_patch
    base = [{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
             "spec": {"template": {"spec": {"containers": [
                 {"name": "a", "image": "i", "args": ["x", "y"],
                  "env": [{"name": "K", "value": "1"}]},
                 {"name": "b", "image": "j"}]}}}}]
    apply_patch(base, {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
                       "spec": {"template": {"spec": {"containers": [
                           {"name": "a", "args": ["z"], "env": [{"name": "L", "value": "2"}]}]}}}},
                "test")
    a, b = base[0]["spec"]["template"]["spec"]["containers"]
    assert a == {"name": "a", "image": "i", "args": ["z"],
                 "env": [{"name": "K", "value": "1"}, {"name": "L", "value": "2"}]}
    assert b == {"name": "b", "image": "j"}


def _pod_specs(doc):
    spec = doc.get("spec", {})
    if "template" in spec:
        yield spec["template"]["spec"]
    if doc["kind"] == "RayCluster":
        yield spec["headGroupSpec"]["template"]["spec"]
        for group in spec["workerGroupSpecs"]:
            yield group["template"]["spec"]


def _volumes(doc):
    for pod in _pod_specs(doc):
        yield from pod.get("volumes", [])
    for claim in doc.get("spec", {}).get("volumeClaimTemplates", []):
        yield {"name": claim["metadata"]["name"]}
