"""A real Prometheus scrapes a real server with the repository's prometheus.yml and alerts.yml;
every query of the Grafana dashboard and every alert rule runs against the scraped data."""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
import yaml

from tests.support import ROOT, ServerProcess, free_port, stop_process

PROMETHEUS_DIR = ROOT / "config" / "prometheus"
DASHBOARD = ROOT / "config" / "grafana" / "dashboards" / "inference.json"
MODEL = "reference"
DEADLINE = 45.0  # seconds for Prometheus to have scraped enough to answer a query


@dataclass
class Stack:
    server: ServerProcess
    prometheus: httpx.Client

    def query(self, expr: str) -> dict[str, Any]:
        response = self.prometheus.get("/api/v1/query", params={"query": expr})
        body: dict[str, Any] = response.json()
        assert response.status_code == 200 and body["status"] == "success", f"{expr}\n{response.text}"
        return body

    def series(self, expr: str) -> list[dict[str, Any]]:
        data = self.query(expr)["data"]
        assert data["resultType"] == "vector", expr
        result: list[dict[str, Any]] = data["result"]
        return result

    def poll(self, expr: str, accept: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
        """The query's result once ``accept`` holds (Prometheus needs a few scrapes for rates)."""
        deadline = time.monotonic() + DEADLINE
        while True:
            result = self.series(expr)
            if accept(result) or time.monotonic() > deadline:
                return result
            time.sleep(0.5)


def _prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        pytest.fail(
            "prometheus is not installed: run scripts/install-tools.sh (as root) first", pytrace=False
        )
    return path


def _write_config(folder: Path, target: str) -> Path:
    """prometheus.yml with the replicas' DNS discovery replaced by the one target (and 1 s intervals),
    next to a copy of the rules."""
    with open(PROMETHEUS_DIR / "prometheus.yml", encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "inference"]
    assert job.pop("dns_sd_configs"), "the inference job discovers the compose replicas by DNS"
    job["static_configs"] = [{"targets": [target]}]
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    for rule_file in config["rule_files"]:
        shutil.copy(PROMETHEUS_DIR / rule_file, folder / rule_file)
    return path


def _traffic(server: ServerProcess, stop: threading.Event) -> None:
    """A steady trickle of requests of 1..4 inputs, so that every rate and quantile has data."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        index = 0
        while not stop.wait(0.01):
            size = index % 4 + 1
            body = {"inputs": [[float((index + k + j) % 7) for j in range(16)] for k in range(size)]}
            try:
                client.post(f"/v1/models/{MODEL}/predict", json=body)
            except httpx.TransportError:
                if stop.is_set():
                    return
                raise
            index += 1


def _start_prometheus(binary: str, config: Path, port: int, log: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={config.parent / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        cwd=config.parent,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    binary = _prometheus_binary()
    with contextlib.ExitStack() as owned:  # unwinds in reverse: traffic, service, Prometheus, files
        folder = Path(tempfile.mkdtemp(prefix="inference-e2e-prometheus-"))
        owned.callback(shutil.rmtree, folder, ignore_errors=True)
        server = ServerProcess(serve=[MODEL])
        config = _write_config(folder, f"127.0.0.1:{server.port}")
        log = owned.enter_context(open(folder / "prometheus.log", "wb"))
        port = free_port()
        prometheus = _start_prometheus(binary, config, port, log)  # starts while the model loads
        owned.callback(stop_process, prometheus)
        client = owned.enter_context(httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10))
        owned.enter_context(server)
        deadline = time.monotonic() + 30
        while True:
            assert prometheus.poll() is None, (folder / "prometheus.log").read_text(errors="replace")
            with contextlib.suppress(httpx.TransportError):
                if client.get("/-/ready").status_code == 200:
                    break
            assert time.monotonic() < deadline, "Prometheus not ready after 30 s"
            time.sleep(0.2)
        stop = threading.Event()
        traffic = threading.Thread(target=_traffic, args=(server, stop), daemon=True)
        traffic.start()
        owned.callback(traffic.join, 10)
        owned.callback(stop.set)
        yield Stack(server, client)


def _dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expr) for every target of every panel, rows included."""
    with open(DASHBOARD, encoding="utf-8") as handle:
        dashboard = json.load(handle)
    queries = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            queries += [
                (inner["title"], target["expr"]) for target in inner.get("targets", []) if "expr" in target
            ]
    return queries


def _to_promql(expr: str, model: str, instance: str = ".*") -> str:
    expr = re.sub(r"\$__(rate_)?interval|\$__range", "1m", expr)
    expr = re.sub(r"\$\{?instance\}?", instance, expr)
    return re.sub(r"\$\{?model\}?", model, expr)


def _alert_rules() -> list[dict[str, Any]]:
    with open(PROMETHEUS_DIR / "alerts.yml", encoding="utf-8") as handle:
        groups = yaml.safe_load(handle)["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _finite(result: list[dict[str, Any]]) -> bool:
    """The served model's series are numbers; other series (model="unknown": no traffic) may be NaN."""
    served = [item for item in result if item["metric"].get("model", MODEL) == MODEL]
    return bool(served) and all(math.isfinite(float(item["value"][1])) for item in served)


def test_prometheus_scrapes_the_service(stack: Stack) -> None:
    # a scrape sent while the service was still starting may have failed: wait for a good one
    result = stack.poll('up{job="inference"}', lambda r: [item["value"][1] for item in r] == ["1"])
    targets = stack.prometheus.get("/api/v1/targets").json()["data"]["activeTargets"]
    health = [(t["labels"]["job"], t["health"], t["lastError"]) for t in targets]
    assert [item["value"][1] for item in result] == ["1"], f"{result}; targets: {health}"
    assert health == [("inference", "up", "")]


def test_grafana_model_variable_lists_the_served_model(stack: Stack) -> None:
    # what Grafana runs for label_values(inference_model_ready, model)
    stack.poll("inference_model_ready", bool)
    response = stack.prometheus.get("/api/v1/label/model/values", params={"match[]": "inference_model_ready"})
    assert response.json()["data"] == [MODEL]


def test_grafana_replica_variable_lists_each_scraped_replica(stack: Stack) -> None:
    # what Grafana runs for label_values(up{job="inference"}, instance)
    stack.poll('up{job="inference"}', bool)
    response = stack.prometheus.get(
        "/api/v1/label/instance/values", params={"match[]": 'up{job="inference"}'}
    )
    assert response.json()["data"] == [f"127.0.0.1:{stack.server.port}"]


QUERIES = _dashboard_queries()


@pytest.mark.parametrize("one", [False, True], ids=["all", "one"])
@pytest.mark.parametrize(("title", "expr"), QUERIES, ids=[f"{t}:{i}" for i, (t, _) in enumerate(QUERIES)])
def test_every_dashboard_query_returns_data(stack: Stack, title: str, expr: str, one: bool) -> None:
    # all models of all replicas, or one model of one replica (the dashboard's two variables)
    model, instance = (MODEL, f"127.0.0.1:{stack.server.port}") if one else (".*", ".*")
    promql = _to_promql(expr, model, instance)
    assert "$" not in promql, f"unsubstituted Grafana variable in {promql}"
    if "cuda" in promql:
        # CPU-only server: the CUDA gauges do not exist, and the panel stays empty
        assert stack.series(promql) == [], promql
        return
    # latency quantiles and rates must be numbers, not NaN: traffic flows during the test
    accept = _finite if "histogram_quantile" in promql or "rate(" in promql else bool
    result = stack.poll(promql, accept)
    assert accept(result), f"panel {title!r}: {promql} returned {result}"
    for item in result:
        assert item["metric"].get("model", MODEL) in {MODEL, "unknown"}, item


def test_requests_by_protocol_shows_each_protocol(stack: Stack) -> None:
    (expr,) = [expr for title, expr in QUERIES if title == "Requests by protocol"]
    result = stack.poll(_to_promql(expr, ".*"), lambda r: len(r) == 4)
    # every endpoint label starts at 0, so each protocol has a series before its first request
    assert {item["metric"].get("protocol") for item in result} == {"native", "v2", "openai", "cohere"}


RULES = _alert_rules()
# with a healthy server under light traffic these alerts must stay silent
SILENT = {
    "InferenceTargetDown",
    "InferenceModelNotReady",
    "InferenceHigh5xxRatio",
    "InferenceHighP99Latency",
    "InferenceWorkerMemoryLeak",  # needs an hour of history: parses and evaluates only
}


@pytest.mark.parametrize("rule", RULES, ids=[rule.get("alert") or rule["record"] for rule in RULES])
def test_every_rule_expression_evaluates(stack: Stack, rule: dict[str, Any]) -> None:
    name = rule.get("alert") or rule["record"]
    if name in SILENT:
        # evaluated once the data the expression reads exists, so that "empty" means "silent"
        stack.poll("rate(inference_requests_total[1m]) > 0", bool)
        assert stack.series(rule["expr"]) == [], f"{name} fires on a healthy server"
    elif name == "InferenceQueueDominatesCompute":
        stack.query(rule["expr"])  # parses and evaluates; whether it holds depends on the machine
    else:
        assert stack.poll(rule["expr"], bool), f"{name}: {rule['expr']} returned nothing"


def test_prometheus_loaded_and_evaluated_every_rule(stack: Stack) -> None:
    expected = {rule.get("alert") or rule["record"] for rule in RULES}

    def evaluated() -> dict[str, dict[str, Any]]:
        groups = stack.prometheus.get("/api/v1/rules").json()["data"]["groups"]
        return {
            rule["name"]: rule
            for group in groups
            for rule in group["rules"]
            if not rule["lastEvaluation"].startswith("0001-")
        }

    deadline = time.monotonic() + DEADLINE
    while set(rules := evaluated()) != expected and time.monotonic() < deadline:
        time.sleep(0.5)
    assert set(rules) == expected
    unhealthy = {name: rule.get("lastError") for name, rule in rules.items() if rule["health"] != "ok"}
    assert not unhealthy, unhealthy
    bound = stack.series("inference:latency_p99_bound_seconds")
    assert [item["value"][1] for item in bound] == ["2"]
