"""The deployment files (Prometheus, alerts, Grafana, Dockerfile, docker-compose, haproxy) checked by
the real tools.

promtool, docker-compose and haproxy come from ``scripts/install-tools.sh``; a missing tool fails the test
(with that hint) instead of skipping it, so CI cannot go green without having checked anything.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "config" / "prometheus"
GRAFANA_DIR = REPO / "config" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "inference.json"
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
MAKEFILE = REPO / "Makefile"
HAPROXY = REPO / "config" / "haproxy" / "haproxy.cfg"

# The metrics contract of service/metrics.py, as the names appear in a scrape.
_COUNTERS = (
    "requests",
    "rejected_requests",
    "worker_restarts",
    "requests_resent",
    "forward_retries",
    "file_records",
    "file_bytes",
)
_HISTOGRAMS = (
    "request_duration_seconds",
    "queue_duration_seconds",
    "compute_duration_seconds",
    "batch_size",
    "batch_padded_tokens",
)
_GAUGES = (
    "in_flight_requests",
    "worker_resident_memory_bytes",
    "worker_peak_resident_memory_bytes",
    "torch_cuda_memory_allocated_bytes",
    "torch_cuda_memory_reserved_bytes",
    "torch_cuda_memory_max_allocated_bytes",
    "model_load_duration_seconds",
    "model_info",
    "model_backend_info",
    "model_ready",
)
EXPOSED_METRICS = frozenset(
    [f"inference_{name}_total" for name in _COUNTERS]
    + [f"inference_{name}_{suffix}" for name in _HISTOGRAMS for suffix in ("bucket", "sum", "count")]
    + [f"inference_{name}" for name in _GAUGES]
)
# ... and as they are documented (a histogram by its own name).
CONTRACT_METRICS = frozenset(
    [f"inference_{name}_total" for name in _COUNTERS]
    + [f"inference_{name}" for name in _HISTOGRAMS + _GAUGES]
)
METRIC_NAME = re.compile(r"\binference_\w+")

ALERTS = (
    "InferenceTargetDown",
    "InferenceHigh5xxRatio",
    "InferenceHighP99Latency",
    "InferenceQueueDominatesCompute",
    "InferenceWorkerMemoryLeak",
    "InferenceModelNotReady",
)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run scripts/install-tools.sh (as root) first", pytrace=False)
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        args, cwd=REPO, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False
    )
    assert result.returncode == 0, (
        f"{shlex.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    )
    return result


def _load_yaml(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _unknown_metrics(text: str) -> set[str]:
    return set(METRIC_NAME.findall(text)) - EXPOSED_METRICS


# --- the real tools -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("promtool", "check", "config", "config/prometheus/prometheus.yml"),
        ("promtool", "check", "rules", "config/prometheus/alerts.yml"),
        ("promtool", "test", "rules", "config/prometheus/alerts_test.yml"),
        ("docker-compose", "-f", "docker-compose.yml", "config", "-q"),
        ("haproxy", "-c", "-f", "config/haproxy/haproxy.cfg"),
    ],
    ids=["check-config", "check-rules", "test-rules", "compose-config", "haproxy-check"],
)
def test_tool_accepts_file(args: tuple[str, ...]) -> None:
    _run(_tool(args[0]), *args[1:])


def test_install_tools_script_is_valid_bash() -> None:
    _run("bash", "-n", "scripts/install-tools.sh")


# --- Prometheus -----------------------------------------------------------------------------


def test_prometheus_scrapes_the_service_and_loads_the_alerts() -> None:
    config = _load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "inference"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    # each replica of the compose service `api` is its own target, found by Docker's DNS
    assert "static_configs" not in job
    assert job["dns_sd_configs"] == [{"names": ["api"], "type": "A", "port": 8000, "refresh_interval": "5s"}]


def _alert_rules() -> list[dict[str, Any]]:
    groups = _load_yaml(PROMETHEUS_DIR / "alerts.yml")["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_every_alert_is_defined_with_severity_and_annotations() -> None:
    rules = _alert_rules()
    assert sorted(rule["alert"] for rule in rules) == sorted(ALERTS)
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


def test_alerts_use_only_contract_metrics() -> None:
    text = (PROMETHEUS_DIR / "alerts.yml").read_text(encoding="utf-8")
    assert METRIC_NAME.search(text)
    assert not _unknown_metrics(text)


def _alert_cases() -> Iterator[tuple[str, bool]]:
    """(alert name, fires?) for every alert_rule_test case in alerts_test.yml."""
    for test in _load_yaml(PROMETHEUS_DIR / "alerts_test.yml")["tests"]:
        for case in test.get("alert_rule_test", []):
            yield case["alertname"], bool(case.get("exp_alerts"))


@pytest.mark.parametrize("alert", ALERTS)
def test_every_alert_has_a_firing_and_a_silent_case(alert: str) -> None:
    cases = set(_alert_cases())
    assert (alert, True) in cases, f"alerts_test.yml has no case where {alert} fires"
    assert (alert, False) in cases, f"alerts_test.yml has no case where {alert} stays silent"


def test_p99_bound_is_one_recording_rule() -> None:
    groups = _load_yaml(PROMETHEUS_DIR / "alerts.yml")["groups"]
    bounds = [
        rule
        for group in groups
        for rule in group["rules"]
        if rule.get("record") == "inference:latency_p99_bound_seconds"
    ]
    assert len(bounds) == 1
    assert re.fullmatch(r"vector\([0-9.]+\)", bounds[0]["expr"].strip())
    (p99,) = [rule for rule in _alert_rules() if rule["alert"] == "InferenceHighP99Latency"]
    assert "inference:latency_p99_bound_seconds" in p99["expr"]


# --- Grafana --------------------------------------------------------------------------------


def _dashboard() -> dict[str, Any]:
    with open(DASHBOARD, encoding="utf-8") as handle:
        dashboard: dict[str, Any] = json.load(handle)
    return dashboard


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # panels inside collapsed rows


def _dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    queries = [
        target["expr"]
        for panel in _panels(dashboard)
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        queries.append(query["query"] if isinstance(query, dict) else str(query or ""))
    queries += [item["expr"] for item in dashboard.get("annotations", {}).get("list", []) if "expr" in item]
    return queries


def test_dashboard_identity_and_datasource() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "inference-service"
    assert dashboard["title"] == "Inference service"
    for panel in _panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "prometheus", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", {"uid": "prometheus"})["uid"] == "prometheus", panel["title"]


def test_dashboard_queries_use_only_contract_metrics() -> None:
    queries = _dashboard_queries(_dashboard())
    used = {name for query in queries for name in METRIC_NAME.findall(query)}
    assert not used - EXPOSED_METRICS, f"unknown metrics: {sorted(used - EXPOSED_METRICS)}"
    required = {
        "inference_requests_total",
        "inference_request_duration_seconds_bucket",
        "inference_queue_duration_seconds_bucket",
        "inference_compute_duration_seconds_bucket",
        "inference_batch_size_bucket",
        "inference_in_flight_requests",
        "inference_worker_resident_memory_bytes",
        "inference_worker_peak_resident_memory_bytes",
        "inference_model_load_duration_seconds",
        "inference_rejected_requests_total",
        "inference_worker_restarts_total",
        "inference_requests_resent_total",
    }
    assert not required - used, f"no panel shows {sorted(required - used)}"


def _grafana_to_promql(query: str) -> str:
    # Grafana's template variables and label_values() are not PromQL; make them parseable.
    query = re.sub(r"\$__(rate_)?interval|\$__range", "1m", query)
    query = re.sub(r"\$\{?\w+\}?", ".*", query)
    label_values = re.fullmatch(r"label_values\((.+),\s*\w+\)", query.strip())
    return label_values.group(1) if label_values else query


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    promtool = _tool("promtool")
    queries = [_grafana_to_promql(query) for query in _dashboard_queries(_dashboard())]
    # promtool parses each expression of a rule file: check them as recording rules.
    rules = {
        "groups": [
            {"name": "dashboard", "rules": [{"record": f"q{i}", "expr": q} for i, q in enumerate(queries)]}
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    _run(promtool, "check", "rules", str(path))


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards() -> None:
    datasources = _load_yaml(GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    (prometheus,) = [source for source in datasources if source["uid"] == "prometheus"]
    assert prometheus["type"] == "prometheus"
    assert prometheus["url"] == "http://prometheus:9090"
    providers = _load_yaml(GRAFANA_DIR / "provisioning" / "dashboards" / "dashboards.yml")["providers"]
    assert [provider["options"]["path"] for provider in providers] == ["/var/lib/grafana/dashboards"]


# --- docker-compose -------------------------------------------------------------------------


def test_compose_binds_every_host_port_to_loopback() -> None:
    services = _load_yaml(COMPOSE)["services"]
    assert {"api", "lb", "prometheus", "grafana"} <= set(services)
    published = []
    for name, service in services.items():
        assert service.get("network_mode") != "host", name
        for port in service.get("ports", []):
            if isinstance(port, dict):
                host_ip = port.get("host_ip")
                published.append(str(port.get("published")))
            else:
                parts = str(port).split(":")
                assert len(parts) == 3, f"{name}: {port!r} does not name a host address"
                host_ip = parts[0]
                published.append(parts[1])
            assert host_ip == "127.0.0.1", f"{name}: port {port!r} is not bound to 127.0.0.1"
    assert sorted(published) == ["3000", "8000", "8404", "9090"]
    assert "ports" not in services["api"], "replicas are reached through the load balancer"


def _haproxy_backend() -> dict[str, list[str]]:
    """haproxy.cfg's sections: "backend api" -> its directive lines."""
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for raw in HAPROXY.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line:
            continue
        if not line[0].isspace():
            current = sections.setdefault(line.strip(), [])
        else:
            current.append(line.strip())
    return sections


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s)?", value)
    assert match, value
    return float(match.group(1)) / (1000 if match.group(2) == "ms" else 1)


def test_compose_runs_replicas_behind_haproxy_that_drops_a_stopping_replica_in_time() -> None:
    services = _load_yaml(COMPOSE)["services"]
    api, lb = services["api"], services["lb"]
    assert api["deploy"]["replicas"] == 2
    assert re.fullmatch(r"haproxy:[\d.]+", lb["image"]), "the official haproxy image, pinned"
    assert "./config/haproxy:/usr/local/etc/haproxy:ro" in lb["volumes"]
    sections = _haproxy_backend()
    backend = sections["backend api"]
    assert "option httpchk GET /health/ready" in backend
    assert "http-check expect status 200" in backend
    # no L7 retries: only connections that failed (the request never left) are retried
    defaults = sections["defaults"]
    assert "retry-on conn-failure" in defaults
    assert not any(line.startswith("option http-buffer-request") for line in defaults + backend)
    (template,) = [line for line in backend if line.startswith("server-template ")]
    assert template.split()[3] == "api:8000" and "resolvers docker" in template
    (server_defaults,) = [line.split() for line in backend if line.startswith("default-server ")]
    options = {word: server_defaults[i + 1] for i, word in enumerate(server_defaults[:-1])}
    detection = _seconds(options["inter"]) * int(options["fall"])
    delay = float(api["environment"]["SERVICE_SHUTDOWN_DELAY"])
    assert delay >= 2 * detection, (
        f"shutdown_delay {delay} s must outlast haproxy's detection ({detection} s) with margin"
    )
    # shutdown_delay + shutdown_grace (config/default.yaml) + 10 s to stop the processes
    grace = _load_yaml(REPO / "config" / "default.yaml")["shutdown_grace"]
    assert _seconds(api["stop_grace_period"]) >= delay + grace + 10


def test_compose_mounts_the_configs_read_only_and_drains_the_api() -> None:
    services = _load_yaml(COMPOSE)["services"]
    assert services["api"]["stop_grace_period"] == "40s"
    assert "healthcheck" in services["api"]
    assert "./config/prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    assert "./config/grafana/dashboards:/var/lib/grafana/dashboards:ro" in services["grafana"]["volumes"]
    assert "./config/grafana/provisioning:/etc/grafana/provisioning:ro" in services["grafana"]["volumes"]


# --- Dockerfile -----------------------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def _serve_args() -> list[str]:
    assert MAKEFILE.is_file(), "Makefile is missing: its `SERVE_ARGS :=` is the service command to compare"
    text = MAKEFILE.read_text(encoding="utf-8")
    found = re.findall(r"^SERVE_ARGS\s*:=\s*(.*)$", text, flags=re.MULTILINE)
    assert len(found) == 1, "the Makefile must define `SERVE_ARGS :=` exactly once"
    run_recipe = re.search(r"^run:.*\n((?:\t.*\n?)+)", text, flags=re.MULTILINE)
    assert run_recipe, "the Makefile has no `run:` target"
    assert "-m service $(SERVE_ARGS)" in run_recipe.group(1), "`make run` must run `-m service $(SERVE_ARGS)`"
    return shlex.split(found[0])


def test_dockerfile_cmd_is_the_make_run_command() -> None:
    (cmd,) = [arguments for keyword, arguments in _dockerfile_instructions() if keyword == "CMD"]
    expected = ["python", "-m", "service", *_serve_args(), "--host", "0.0.0.0", "--port", "8000"]
    assert json.loads(cmd) == expected


def test_dockerfile_installs_only_with_install_script() -> None:
    instructions = _dockerfile_instructions()
    runs = [arguments for keyword, arguments in instructions if keyword == "RUN"]
    assert any("scripts/install.sh /opt/venv" in run for run in runs)
    for run in runs:
        assert not re.search(r"\b(pip3?|uv|poetry|pipenv|conda)\b.*\binstall\b", run), run
    # layer caching: nothing but the dependency files is copied before the first install
    first_install = next(i for i, (k, a) in enumerate(instructions) if k == "RUN" and "install.sh" in a)
    copied = [a for k, a in instructions[:first_install] if k in ("COPY", "ADD")]
    sources = {word for arguments in copied for word in arguments.split()[:-1]}
    assert sources == {"pyproject.toml", "constraints.txt", "scripts/install.sh"}


def test_dockerfile_runtime_settings() -> None:
    instructions = _dockerfile_instructions()
    by_keyword: dict[str, list[str]] = {}
    for keyword, arguments in instructions:
        by_keyword.setdefault(keyword, []).append(arguments)
    assert by_keyword["FROM"] == ["python:3.11-slim"]
    assert by_keyword["USER"][-1] not in ("root", "0")
    assert by_keyword["EXPOSE"] == ["8000"]
    assert by_keyword["STOPSIGNAL"] == ["SIGTERM"]
    environment = " ".join(by_keyword["ENV"])
    assert "PROMETHEUS_MULTIPROC_DIR=/tmp/inference-metrics" in environment
    assert "PATH=/opt/venv/bin:" in environment
    (healthcheck,) = by_keyword["HEALTHCHECK"]
    assert "http://127.0.0.1:8000/health/ready" in healthcheck
    assert "curl" not in healthcheck


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = (REPO / ".dockerignore").read_text(encoding="utf-8").split()
    for entry in (".venv/", ".git/", "benchmarks/results/", "**/__pycache__/"):
        assert entry in ignored


# --- the operator's guide -------------------------------------------------------------------


def test_observability_guide_covers_every_metric_and_alert() -> None:
    guide = (REPO / "README.md").read_text(encoding="utf-8")
    # torch.inference_mode, a grad mode the README also documents, is not a metric
    mentioned = set(METRIC_NAME.findall(guide)) - {"inference_mode"}
    assert not CONTRACT_METRICS - mentioned, (
        f"README.md does not describe {sorted(CONTRACT_METRICS - mentioned)}"
    )
    # ... or the custom metric that the Kubernetes HPA reads, which prometheus-adapter derives from them
    adapter = _load_yaml(REPO / "deploy" / "kubernetes" / "base" / "prometheus-adapter.yaml")
    derived = {rule["name"]["as"] for rule in yaml.safe_load(adapter["data"]["config.yaml"])["rules"]}
    unknown = mentioned - CONTRACT_METRICS - EXPOSED_METRICS - derived
    assert not unknown, f"README.md names metrics that do not exist: {sorted(unknown)}"
    for alert in ALERTS:
        assert alert in guide
    assert "inference:latency_p99_bound_seconds" in guide
