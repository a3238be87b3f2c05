"""The metrics contract, checked on a real server: 2 API servers and 2 inference workers, so every
number below is merged by prometheus_client's multiprocess mode from several processes' files."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import subprocess
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from service import metrics as service_metrics
from tests.support import ServerProcess

MODEL = "reference"
PREDICT = "/v1/models/{name}/predict"
FILE = "/v1/models/{name}/predict-file"
V2_INFER = "/v2/models/{name}/infer"
V2_VERSIONED_INFER = "/v2/models/{name}/versions/{version}/infer"
EMBEDDINGS = "/v1/embeddings"
RERANK = {"/v1/rerank", "/v2/rerank"}
ENDPOINTS = {PREDICT, FILE, V2_INFER, V2_VERSIONED_INFER, EMBEDDINGS, *RERANK}
# the status codes and rejection reasons the service declares (each pre-initialised at 0)
CODES = set(service_metrics.CODES)
REASONS = set(service_metrics.REJECT_REASONS)

# family name (as the text parser reports it: counters without _total) -> type
CONTRACT = {
    "inference_requests": "counter",
    "inference_request_duration_seconds": "histogram",
    "inference_queue_duration_seconds": "histogram",
    "inference_compute_duration_seconds": "histogram",
    "inference_batch_size": "histogram",
    "inference_batch_padded_tokens": "histogram",
    "inference_in_flight_requests": "gauge",
    "inference_worker_resident_memory_bytes": "gauge",
    "inference_worker_peak_resident_memory_bytes": "gauge",
    "inference_model_load_duration_seconds": "gauge",
    "inference_model_info": "gauge",
    "inference_model_backend_info": "gauge",
    "inference_model_ready": "gauge",
    "inference_rejected_requests": "counter",
    "inference_worker_restarts": "counter",
    "inference_requests_resent": "counter",
    "inference_forward_retries": "counter",
    "inference_file_records": "counter",
    "inference_file_bytes": "counter",
}
CUDA_ONLY = (
    "inference_torch_cuda_memory_allocated_bytes",
    "inference_torch_cuda_memory_reserved_bytes",
    "inference_torch_cuda_memory_max_allocated_bytes",
)
# every value each label may take on this server: bounded, known in advance
ALLOWED_LABELS = {
    "model": {MODEL, "unknown"},
    "endpoint": ENDPOINTS,
    "code": CODES,
    "reason": REASONS,
    "worker": {"0", "1"},
    "outcome": {"ok", "error"},
    "version": {"1.0.0"},
    "device": {"cpu"},
    "grad_mode": {"no_grad"},
    "shape": {"lone", "batch"},
    "backend": {"torch"},  # a model.py model runs on torch
}

WORKERS = ("0", "1")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def started() -> Iterator[tuple[ServerProcess, str]]:
    env = {"SERVICE_NUM_API_SERVERS": "2", "SERVICE_MODELS__REFERENCE__WORKERS": "2"}
    with ServerProcess(serve=[MODEL], env=env) as process:
        # the scrape before any request: what a fresh deployment exports
        yield process, scrape(process)


@pytest.fixture
def server(started: tuple[ServerProcess, str]) -> ServerProcess:
    return started[0]


@pytest.fixture
def first_scrape(started: tuple[ServerProcess, str]) -> str:
    return started[1]


def scrape(server: ServerProcess) -> str:
    response = server.client.get("/metrics")
    assert response.status_code == 200, response.text
    return response.text


def samples(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(parsed: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in parsed, f"no sample {name}{labels} in the scrape"
    return parsed[key]


def vector(index: int) -> list[float]:
    return [float((index * 7 + j) % 13) / 13 for j in range(16)]


def post_fresh(port: int, path: str, body: object) -> int:
    """One POST on a new TCP connection (so that the kernel spreads requests over API servers)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", path, json.dumps(body), {"content-type": "application/json"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def send(server: ServerProcess, requests: int, threads: int = 8) -> int:
    """``requests`` predictions of 1..5 inputs each, all answered 200; returns the number of inputs."""
    sizes = [index % 5 + 1 for index in range(requests)]

    def one(index: int) -> int:
        body = {"inputs": [vector(index + k) for k in range(sizes[index])]}
        return post_fresh(server.port, f"/v1/models/{MODEL}/predict", body)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        statuses = list(pool.map(one, range(requests)))
    assert statuses == [200] * requests, {code: statuses.count(code) for code in set(statuses)}
    return sum(sizes)


def requests_per_pid(metrics_dir: str) -> dict[int, float]:
    """inference_requests_total{code="200", model=reference} as each process's own file holds it."""
    counts: dict[int, float] = {}
    for path in Path(metrics_dir).glob("counter_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        for metric in MultiProcessCollector.merge([str(path)], accumulate=False):
            for sample in metric.samples:
                labels = sample.labels
                if sample.name == "inference_requests_total" and (
                    labels.get("model"),
                    labels.get("code"),
                    labels.get("endpoint"),
                ) == (MODEL, "200", PREDICT):
                    counts[pid] = counts.get(pid, 0.0) + sample.value
    return counts


def test_metrics_answers_200_directly_in_the_text_format(server: ServerProcess) -> None:
    response = server.client.get("/metrics", follow_redirects=False)
    assert response.status_code == 200, response.headers
    content_type = response.headers["content-type"]
    assert content_type.startswith("text/plain"), content_type
    assert "version=0.0.4" in content_type, content_type
    assert "# TYPE inference_requests_total counter" in response.text


def test_every_contract_family_is_exported_before_any_request(first_scrape: str) -> None:
    text = first_scrape
    families = {family.name: family for family in text_string_to_metric_families(text)}
    missing = {name for name in CONTRACT if name not in families}
    assert not missing, f"families missing from a fresh scrape: {sorted(missing)}"
    wrong = {name: families[name].type for name, kind in CONTRACT.items() if families[name].type != kind}
    assert not wrong, f"families with the wrong type: {wrong}"
    unknown = {name for name in families if name not in CONTRACT}
    assert not unknown, f"families outside the contract: {sorted(unknown)}"
    for name in CUDA_ONLY:
        assert name not in text, f"{name} is exported on a CPU-only server"

    parsed = samples(text)
    # counters and histograms start at 0, so that rate() reads 0 instead of nothing
    assert {"200", "404", "422", "500", "503", "504"} <= CODES
    assert set(service_metrics.ENDPOINTS) == ENDPOINTS
    for endpoint in ENDPOINTS:
        for code in CODES:
            for model in (MODEL, "unknown"):
                assert (
                    value(parsed, "inference_requests_total", model=model, endpoint=endpoint, code=code) == 0
                )
        assert value(parsed, "inference_request_duration_seconds_count", model=MODEL, endpoint=endpoint) == 0
    for reason in REASONS:
        assert value(parsed, "inference_rejected_requests_total", model=MODEL, reason=reason) == 0
    assert value(parsed, "inference_worker_restarts_total", model=MODEL) == 0
    assert value(parsed, "inference_requests_resent_total", model=MODEL) == 0
    for histogram in ("inference_queue_duration_seconds", "inference_compute_duration_seconds"):
        assert value(parsed, f"{histogram}_count", model=MODEL) == 0
        assert value(parsed, f"{histogram}_bucket", model=MODEL, le="+Inf") == 0
    assert value(parsed, "inference_batch_size_count", model=MODEL) == 0
    assert value(parsed, "inference_request_duration_seconds_count", model=MODEL, endpoint=PREDICT) == 0
    assert value(parsed, "inference_in_flight_requests", model=MODEL) == 0
    for outcome in ("ok", "error"):
        assert value(parsed, "inference_file_records_total", model=MODEL, outcome=outcome) == 0
    assert value(parsed, "inference_file_bytes_total", model=MODEL) == 0
    # the per-worker and per-model gauges are set by the workers during set-up
    assert value(parsed, "inference_model_ready", model=MODEL) == 1
    assert value(parsed, "inference_model_load_duration_seconds", model=MODEL) > 0
    info = dict(model=MODEL, version="1.0.0", device="cpu", grad_mode="no_grad")
    assert value(parsed, "inference_model_info", **info) == 1
    for shape in ("lone", "batch"):
        assert value(parsed, "inference_model_backend_info", model=MODEL, shape=shape, backend="torch") == 1
    for worker in ("0", "1"):
        assert value(parsed, "inference_worker_resident_memory_bytes", model=MODEL, worker=worker) > 0


def test_counts_are_exact_across_api_servers_and_workers(server: ServerProcess) -> None:
    requests = 300
    before = samples(scrape(server))
    per_pid_before = requests_per_pid(server.metrics_dir)
    inputs = send(server, requests)
    after = samples(scrape(server))

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("inference_requests_total", model=MODEL, endpoint=PREDICT, code="200") == requests
    for code in CODES - {"200"}:
        assert delta("inference_requests_total", model=MODEL, endpoint=PREDICT, code=code) == 0, code
    assert delta("inference_request_duration_seconds_count", model=MODEL, endpoint=PREDICT) == requests
    assert (
        delta("inference_request_duration_seconds_bucket", model=MODEL, endpoint=PREDICT, le="+Inf")
        == requests
    )
    # one queue observation per request, one batch-size observation per forward
    assert delta("inference_queue_duration_seconds_count", model=MODEL) == requests
    assert delta("inference_batch_size_sum", model=MODEL) == inputs
    forwards = delta("inference_batch_size_count", model=MODEL)
    assert 0 < forwards <= requests
    assert delta("inference_compute_duration_seconds_count", model=MODEL) == forwards
    assert value(after, "inference_in_flight_requests", model=MODEL) == 0
    for worker in ("0", "1"):
        assert value(after, "inference_worker_resident_memory_bytes", model=MODEL, worker=worker) > 50e6

    # both API servers took part: each wrote its own file, and the files add up to the scrape
    per_pid = requests_per_pid(server.metrics_dir)
    handled = {pid: count - per_pid_before.get(pid, 0.0) for pid, count in per_pid.items()}
    handled = {pid: count for pid, count in handled.items() if count}
    assert sum(handled.values()) == requests
    assert len(handled) == 2, f"requests per API server pid: {handled}"
    alive = set(server.pids())
    assert set(handled) <= alive, f"{handled} vs server pids {alive}"
    assert server.process is not None and server.process.pid not in handled


def test_v2_and_openai_requests_are_counted_under_their_route_templates(server: ServerProcess) -> None:
    before = samples(scrape(server))
    tensor = {"name": "INPUT", "datatype": "FP32", "shape": [2, 16], "data": [vector(0), vector(1)]}
    assert post_fresh(server.port, f"/v2/models/{MODEL}/infer", {"inputs": [tensor]}) == 200
    assert post_fresh(server.port, f"/v2/models/{MODEL}/versions/1.0.0/infer", {"inputs": [tensor]}) == 200
    assert post_fresh(server.port, f"/v2/models/{MODEL}/infer", {"inputs": []}) == 400
    assert post_fresh(server.port, f"/v2/models/{MODEL}/versions/9/infer", {"inputs": [tensor]}) == 404
    # the reference model takes vectors, not text: a 400 counted under the model the body names
    assert post_fresh(server.port, EMBEDDINGS, {"model": MODEL, "input": "a"}) == 400
    assert post_fresh(server.port, EMBEDDINGS, {"model": f"m{uuid.uuid4().hex}", "input": "a"}) == 404
    after = samples(scrape(server))

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    expected = {
        (MODEL, V2_INFER, "200"): 1,
        (MODEL, V2_INFER, "400"): 1,
        (MODEL, V2_VERSIONED_INFER, "200"): 1,
        (MODEL, V2_VERSIONED_INFER, "404"): 1,
        (MODEL, EMBEDDINGS, "400"): 1,
        ("unknown", EMBEDDINGS, "404"): 1,
    }
    for model in (MODEL, "unknown"):
        for endpoint in (V2_INFER, V2_VERSIONED_INFER, EMBEDDINGS):
            for code in CODES:
                counted = delta("inference_requests_total", model=model, endpoint=endpoint, code=code)
                assert counted == expected.get((model, endpoint, code), 0), (model, endpoint, code)
            durations = delta("inference_request_duration_seconds_count", model=model, endpoint=endpoint)
            codes = sum(n for (m, e, _), n in expected.items() if (m, e) == (model, endpoint))
            assert durations == codes, (model, endpoint)
    # two v2 requests of 2 inputs reached the workers
    assert delta("inference_queue_duration_seconds_count", model=MODEL) == 2
    assert delta("inference_batch_size_sum", model=MODEL) == 4


def test_promtool_accepts_the_scrape(server: ServerProcess, first_scrape: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: run scripts/install-tools.sh (as root) first", pytrace=False)
    send(server, 20)
    for text in (first_scrape, scrape(server)):
        result = subprocess.run(
            [promtool, "check", "metrics"],
            input=text,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), (
            f"promtool check metrics exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )


def memory(server: ServerProcess) -> dict[tuple[str, str], float]:
    """{("rss" | "peak", worker): bytes} from one scrape."""
    parsed = samples(scrape(server))
    names = {
        "rss": "inference_worker_resident_memory_bytes",
        "peak": "inference_worker_peak_resident_memory_bytes",
    }
    return {
        (kind, worker): value(parsed, name, model=MODEL, worker=worker)
        for kind, name in names.items()
        for worker in WORKERS
    }


def send_large(server: ServerProcess) -> None:
    big = {"inputs": [vector(index) for index in range(1024)]}  # 16 forwards of 64 inputs each
    with ThreadPoolExecutor(max_workers=4) as pool:
        path = f"/v1/models/{MODEL}/predict"
        statuses = list(pool.map(lambda _: post_fresh(server.port, path, big), range(8)))
    assert statuses == [200] * 8


def test_memory_gauges_follow_the_workers(server: ServerProcess) -> None:
    seen: dict[tuple[str, str], set[float]] = defaultdict(set)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for key, number in memory(server).items():
            seen[key].add(number)
            assert number > 50e6, f"{key}: {number:.0f} bytes"
        if all(len(seen[("rss", worker)]) > 1 for worker in WORKERS):
            break
        send_large(server)
    unchanged = [worker for worker in WORKERS if len(seen[("rss", worker)]) == 1]
    assert not unchanged, f"RSS gauge of workers {unchanged} never changed under traffic: {dict(seen)}"


def test_peak_memory_is_never_below_current(server: ServerProcess) -> None:
    for _ in range(3):
        send_large(server)
        current = memory(server)
        for worker in WORKERS:
            rss, peak = current[("rss", worker)], current[("peak", worker)]
            assert peak >= rss, f"worker {worker}: peak RSS {peak:.0f} below current RSS {rss:.0f}"


def test_labels_stay_bounded(server: ServerProcess, first_scrape: str) -> None:
    names = [f"m{uuid.uuid4().hex}" for _ in range(5)]
    for name in names:
        assert post_fresh(server.port, f"/v1/models/{name}/predict", {"inputs": [vector(0)]}) == 404
    unknown = {"model": "unknown", "endpoint": PREDICT, "code": "404"}
    before = value(samples(first_scrape), "inference_requests_total", **unknown)
    text = scrape(server)
    parsed = samples(text)
    assert value(parsed, "inference_requests_total", **unknown) - before == len(names)
    for name in names:
        assert name not in text
    pids = {str(pid) for pid in server.pids()}
    seen: dict[str, set[str]] = defaultdict(set)
    for (_, labels), _number in parsed.items():
        for label, label_value in labels:
            seen[label].add(label_value)
    seen.pop("le", None)  # histogram bucket bounds
    assert set(seen) <= set(ALLOWED_LABELS), (
        f"unexpected label names: {sorted(set(seen) - set(ALLOWED_LABELS))}"
    )
    for label, values in seen.items():
        assert values <= ALLOWED_LABELS[label], (
            f"label {label} takes {sorted(values - ALLOWED_LABELS[label])}"
        )
        # a pid that happens to equal an allowed value (pid 408 and status "408") is not a leak
        assert not (values & pids) - ALLOWED_LABELS[label], f"label {label} holds a pid"
    assert not re.search(r'="[^"]*/v1/models/(?!\{name\})', text), "a raw request path became a label value"
