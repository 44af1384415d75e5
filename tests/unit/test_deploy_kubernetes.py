"""deploy/kubernetes: schema-valid manifests that run the pipeline the code describes.

No cluster runs here, so the manifests are checked offline: every Kubernetes object against
the OpenAPI schemas kubernetes-validate ships (strict: an unknown field fails), for the oldest
and the newest Kubernetes it knows; KEDA's ScaledObject and TriggerAuthentication against the
pydantic models cloudcoil generates from KEDA's CRDs, strictly, and re-serialised to the same
document, so a field the models do not know (and would drop) fails too. Rendering is what
``kubectl apply -k`` does with kustomization.yaml: its resources, its namespace.

Then the cross-checks with the code: one Deployment per stage, a ScaledObject per data stage on
the consumer group and topic the stage really reads (``input_group``, the topic catalog), no
more pods than partitions, settings tidegate accepts, and every Secret key that is referenced
exists in the example Secret.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.keda.v1alpha1 import ScaledObject, TriggerAuthentication
from pydantic import ValidationError

from tidegate.runtime.app import input_group
from tidegate.settings import Settings
from tidegate.topics import DATA_STAGES, STAGE_ORDER, STAGES

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
KEDA_MODELS: dict[str, Any] = {"ScaledObject": ScaledObject,
                               "TriggerAuthentication": TriggerAuthentication}
# the Kafka scaler's trigger metadata, as KEDA documents it
KAFKA_TRIGGER_KEYS = frozenset({
    "bootstrapServers", "consumerGroup", "topic", "lagThreshold", "activationLagThreshold",
    "offsetResetPolicy", "allowIdleConsumers", "scaleToZeroOnInvalidOffset",
    "excludePersistentLag", "limitToPartitionsWithLag", "version", "partitionLimitation",
    "sasl", "tls", "unsafeSsl"})
KAFKA_AUTH_PARAMETERS = frozenset({"sasl", "username", "password", "tls", "ca", "cert", "key",
                                   "keyPassword"})


def rendered() -> list[dict[str, Any]]:
    """The objects ``kubectl apply -k`` applies: the kustomization's resources, its namespace."""
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    objects = []
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((KUBE / name).read_text()):
            if doc["kind"] != "Namespace":
                doc["metadata"]["namespace"] = kustomization["namespace"]
            objects.append(doc)
    return objects


def secret() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((KUBE / "secret.example.yaml").read_text())
    return doc


def of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in rendered() if doc["kind"] == kind}


def config() -> dict[str, str]:
    data: dict[str, str] = of_kind("ConfigMap")["tidegate-config"]["data"]
    return data


def configured(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a pod gets: the ConfigMap, and a valid control key in place of the Secret's."""
    known = {f"TIDEGATE_{name.upper()}" for name in Settings.model_fields}
    for name, value in config().items():
        assert name in known or name.startswith(("KAFKA_BOOTSTRAP_SERVERS",
                                                  "KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_",
                                                  "KAFKA_SSL_")), f"{name} is no setting"
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TIDEGATE_CONTROL_KEY", "k1:" + "x" * 32)
    return Settings()


def walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every mapping inside ``node``, depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def test_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    listed = set(yaml.safe_load((KUBE / "kustomization.yaml").read_text())["resources"])
    files = {path.name for path in KUBE.glob("*.yaml")}
    assert listed == files - {"kustomization.yaml", "secret.example.yaml"}


@pytest.mark.parametrize("version", ["1.29", kubernetes_validate.latest_version()])
def test_kubernetes_objects_validate_strictly_against_the_openapi_schemas(version: str) -> None:
    objects = [doc for doc in [*rendered(), secret()] if doc["kind"] not in KEDA_MODELS]
    assert {doc["kind"] for doc in objects} >= {"Deployment", "Service", "ConfigMap", "Job",
                                                "PersistentVolumeClaim", "Secret"}
    for doc in objects:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} on Kubernetes {version}: "
                        f"{exc.message} at {'.'.join(map(str, exc.path))}", pytrace=False)


def test_keda_objects_validate_against_kedas_crd_models() -> None:
    objects = [doc for doc in rendered() if doc["kind"] in KEDA_MODELS]
    assert {doc["kind"] for doc in objects} == set(KEDA_MODELS)
    for doc in objects:
        assert doc["apiVersion"] == "keda.sh/v1alpha1"
        model = KEDA_MODELS[doc["kind"]].model_validate(doc, strict=True)
        again = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
        assert again == doc, f"{doc['kind']}/{doc['metadata']['name']}: a field KEDA lacks"


def test_the_keda_models_refuse_what_keda_refuses() -> None:
    """The check above can fail: a wrong type and a missing trigger list are refused."""
    doc = of_kind("ScaledObject")["tidegate-feature"]
    with pytest.raises(ValidationError):
        ScaledObject.model_validate({**doc, "spec": {**doc["spec"], "maxReplicaCount": "6"}},
                                    strict=True)
    spec = {key: value for key, value in doc["spec"].items() if key != "triggers"}
    with pytest.raises(ValidationError):
        ScaledObject.model_validate({**doc, "spec": spec}, strict=True)


def test_one_deployment_per_stage_runs_that_stage() -> None:
    deployments = of_kind("Deployment")
    assert set(deployments) == {f"tidegate-{stage}" for stage in STAGE_ORDER}
    for stage in STAGE_ORDER:
        spec = deployments[f"tidegate-{stage}"]["spec"]
        [container] = spec["template"]["spec"]["containers"]
        assert container["command"] == ["tidegate", "stage", "run", stage]
        assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"][
            "labels"].items()
        env = {item["name"]: item for item in container["env"]}
        assert env["KAFKA_SASL_USERNAME"]["valueFrom"]["secretKeyRef"]["key"] == \
            f"{stage}-username"
        assert "TIDEGATE_CONTROL_KEY" in env
    job = of_kind("Job")["tidegate-init"]["spec"]["template"]["spec"]
    assert job["containers"][0]["command"] == ["tidegate", "init"]


def test_monitoring_is_one_pod_with_probes_behind_the_status_service() -> None:
    monitoring = of_kind("Deployment")["tidegate-monitoring"]["spec"]
    assert (monitoring["replicas"], monitoring["strategy"]["type"]) == (1, "Recreate")
    [container] = monitoring["template"]["spec"]["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    [port] = container["ports"]
    assert env["TIDEGATE_STATUS_HOST"] == "0.0.0.0"
    assert int(env["TIDEGATE_STATUS_PORT"]) == port["containerPort"]
    pages = set(re.findall(r'@app\.page\("([^"]+)"\)', (ROOT / "agents" / "monitoring.py")
                           .read_text()))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == port["name"]
        assert container[probe]["httpGet"]["path"] in pages  # a page monitoring serves
    service = of_kind("Service")["tidegate-status"]["spec"]
    assert service["selector"].items() <= monitoring["template"]["metadata"]["labels"].items()
    assert service["ports"][0]["targetPort"] == port["name"]


def test_each_data_stage_scales_on_the_lag_of_the_group_and_topic_it_reads(
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings = configured(monkeypatch)
    scaled = of_kind("ScaledObject")
    assert set(scaled) == {f"tidegate-{stage}" for stage in DATA_STAGES}  # monitoring: one pod
    auth = of_kind("TriggerAuthentication")
    for stage in DATA_STAGES:
        spec = scaled[f"tidegate-{stage}"]["spec"]
        assert spec["scaleTargetRef"]["name"] == f"tidegate-{stage}"
        assert "replicas" not in of_kind("Deployment")[f"tidegate-{stage}"]["spec"]
        source = STAGES[stage].source
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= source.partitions
        [trigger] = spec["triggers"]
        meta = trigger["metadata"]
        assert trigger["type"] == "kafka" and set(meta) <= KAFKA_TRIGGER_KEYS
        assert meta["consumerGroup"] == input_group(stage, settings)
        assert meta["topic"] == source.name(settings.topic_prefix)
        assert meta["bootstrapServers"] == config()["KAFKA_BOOTSTRAP_SERVERS"]
        assert int(meta["lagThreshold"]) > 0
        assert trigger["authenticationRef"]["name"] in auth
    for doc in auth.values():
        assert {ref["parameter"] for ref in doc["spec"]["secretTargetRef"]} <= \
            KAFKA_AUTH_PARAMETERS


def test_the_config_map_is_settings_tidegate_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = configured(monkeypatch)
    assert settings.security["security.protocol"] == "SASL_SSL"
    assert not settings.exactly_once  # a Deployment's pods have no stable worker number


def test_the_example_control_key_is_refused_so_nobody_runs_a_published_key(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDEGATE_CONTROL_KEY", secret()["stringData"]["control-key"])
    with pytest.raises(ValidationError):
        Settings()


def test_every_secret_key_config_map_and_claim_referenced_exists() -> None:
    keys = set(secret()["stringData"])
    objects = rendered()
    claims, maps = of_kind("PersistentVolumeClaim"), of_kind("ConfigMap")
    for node in walk(objects):
        if "secretKeyRef" in node:
            assert node["secretKeyRef"]["key"] in keys, node
        if "secretName" in node:
            assert {item["key"] for item in node["items"]} <= keys
        if "parameter" in node:  # a TriggerAuthentication's secretTargetRef
            assert node["name"] == secret()["metadata"]["name"] and node["key"] in keys
        if "claimName" in node:
            assert node["claimName"] in claims
        if "configMapRef" in node:
            assert node["configMapRef"]["name"] in maps
    ca = PurePosixPath(config()["KAFKA_SSL_CA_LOCATION"])
    for doc in [*of_kind("Deployment").values(), *of_kind("Job").values()]:
        pod = doc["spec"]["template"]["spec"]
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        mounts = pod["containers"][0]["volumeMounts"]
        [mount] = [m for m in mounts if m["mountPath"] == str(ca.parent)]
        assert volumes[mount["name"]]["secret"]["items"] == [{"key": "ca.pem", "path": ca.name}]
