"""The real server: `python -m service serve` on a loopback port, a real HTTP client."""

from __future__ import annotations

import math
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import torch

from tests.support import ServerProcess

SENTENCES = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
REFERENCE = [[1.0, 0.6660, 0.1046], [0.6660, 1.0, 0.1411], [0.1046, 0.1411, 1.0]]


def embed(server: ServerProcess, texts: list[str]) -> list[list[float]]:
    response = server.post("/v1/models/minilm/predict", {"inputs": texts})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "minilm" and body["version"] == "1.0.0"
    outputs: list[list[float]] = body["outputs"]
    return outputs


def test_hello_is_a_384_float_unit_vector(server: ServerProcess) -> None:
    [vector] = embed(server, ["hello"])
    assert len(vector) == 384
    assert math.isclose(math.sqrt(sum(v * v for v in vector)), 1.0, abs_tol=1e-5)


def test_reference_similarity_matrix_over_http(server: ServerProcess) -> None:
    embeddings = torch.tensor(embed(server, SENTENCES))
    similarity = (embeddings @ embeddings.T).tolist()
    for row, expected in zip(similarity, REFERENCE, strict=True):
        assert [round(value, 4) for value in row] == expected


def test_concurrent_requests_are_batched_and_answered_in_order(server: ServerProcess) -> None:
    texts = [
        f"sentence number {i} about {'cats' if i % 2 else 'the stock market and its many moods'}"
        for i in range(48)
    ]
    alone = {text: embed(server, [text])[0] for text in texts[:6]}
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda text: embed(server, [text, "fixed companion"]), texts))
    for text, outputs in zip(texts, results, strict=True):
        assert len(outputs) == 2
        if text in alone:
            assert max(abs(a - b) for a, b in zip(outputs[0], alone[text], strict=True)) <= 1e-5
    companions = torch.tensor([outputs[1] for outputs in results])
    assert (companions - companions[0]).abs().max().item() <= 1e-5
    # batching happened: fewer forwards than requests
    metrics = server.client.get("/metrics").text
    batches = _sample(metrics, 'inference_batch_size_count{model="minilm"}')
    inputs = _sample(metrics, 'inference_batch_size_sum{model="minilm"}')
    assert inputs / batches > 1.5


def test_mixed_lengths_sent_concurrently_equal_one_at_a_time_runs(server: ServerProcess) -> None:
    # what a retrieval pipeline sends: mostly short queries, some ~256-token document chunks
    short = [f"query {i} about {'cats' if i % 2 else 'the price of tea'}" for i in range(27)]
    long = [" ".join(f"paragraph{i} word{j}" for j in range(120)) for i in range(5)]
    texts = short[:9] + long[:2] + short[9:18] + long[2:] + short[18:]
    alone = {text: embed(server, [text])[0] for text in texts}
    with ThreadPoolExecutor(max_workers=len(texts)) as pool:
        singles = list(pool.map(lambda text: embed(server, [text]), texts))
        pairs = list(pool.map(lambda i: embed(server, [texts[i], texts[-1 - i]]), range(len(texts))))
    for i, text in enumerate(texts):
        for got, want in (
            (singles[i][0], alone[text]),
            (pairs[i][0], alone[text]),
            (pairs[i][1], alone[texts[-1 - i]]),
        ):
            assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 1e-5


def test_a_request_larger_than_the_batch_keeps_its_order(server: ServerProcess) -> None:
    vectors = [[float(i)] + [0.0] * 15 for i in range(200)]  # reference max_batch_size is 64
    response = server.post("/v1/models/reference/predict", {"inputs": vectors})
    assert response.status_code == 200
    outputs = response.json()["outputs"]
    assert len(outputs) == 200
    single = server.post("/v1/models/reference/predict", {"inputs": [vectors[137]]}).json()["outputs"][0]
    assert max(abs(a - b) for a, b in zip(outputs[137], single, strict=True)) <= 1e-6


@pytest.mark.parametrize(
    ("kwargs", "status", "fragment"),
    [
        (
            {"content": b'{"inputs": ["a"', "headers": {"content-type": "application/json"}},
            400,
            "malformed JSON",
        ),
        ({"content": b"", "headers": {"content-type": "application/json"}}, 400, "empty"),
        (
            {"content": b'{"inputs": ["a"]}', "headers": {"content-type": "text/plain"}},
            415,
            "application/json",
        ),
        ({"content": b'{"inputs": ["a"]}'}, 415, "content type"),
        ({"json": {"inputs": []}}, 422, "inputs"),
        ({"json": {"inputs": ["x"] * 257}}, 422, "inputs"),
        ({"json": {"inputs": ["x" * 10_001]}}, 422, "inputs.0"),
        ({"json": {"inputs": ["ok", 3]}}, 422, "inputs.1"),
        ({"json": {"texts": ["a"]}}, 422, "inputs"),
        ({"json": {"inputs": ["a"], "extra": 1}}, 422, "extra"),
        ({"json": ["a"]}, 422, ""),
        (
            {"content": b'{"inputs": ["\xff\xfe"]}', "headers": {"content-type": "application/json"}},
            400,
            "JSON",
        ),
        (
            {
                "content": b'{"inputs": ["a"]}' + b" " * (9 * 1024 * 1024),
                "headers": {"content-type": "application/json"},
            },
            413,
            "limit",
        ),
    ],
)
def test_client_mistakes_get_a_clear_4xx(
    server: ServerProcess, kwargs: dict, status: int, fragment: str
) -> None:
    response = server.client.post("/v1/models/minilm/predict", **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert fragment in response.json()["error"]
    assert server.client.get("/health/ready").status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"inputs": [[1.0] * 15]}, 422, "inputs.0"),
        ({"inputs": [["a"] * 16]}, 422, "inputs.0.0"),
        ({"inputs": [[True] * 16]}, 422, "inputs.0.0"),
    ],
)
def test_vector_inputs_are_checked(server: ServerProcess, body: dict, status: int, fragment: str) -> None:
    response = server.post("/v1/models/reference/predict", body)
    assert response.status_code == status
    assert response.json()["error"].startswith(fragment)


def test_nan_is_rejected(server: ServerProcess) -> None:
    body = b'{"inputs": [[NaN, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]]}'
    response = server.client.post(
        "/v1/models/reference/predict", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400


def test_unknown_model_path_and_method(server: ServerProcess) -> None:
    response = server.post("/v1/models/nope/predict", {"inputs": ["a"]})
    assert response.status_code == 404 and "nope" in response.json()["error"]
    assert server.client.get("/v1/models/nope").status_code == 404
    assert server.client.get("/no/such/path").status_code == 404
    response = server.client.get("/v1/models/minilm/predict")
    assert response.status_code == 405 and "GET" in response.json()["error"]


def test_model_listing_and_details(server: ServerProcess) -> None:
    listed = server.client.get("/v1/models").json()["models"]
    assert {m["name"] for m in listed} == {"minilm", "reference"}
    detail = server.client.get("/v1/models/minilm").json()
    assert detail["task"] == "feature-extraction"
    assert detail["inputs"] == {"kind": "text", "min_items": 1, "max_items": 256, "max_length": 10000}
    assert (
        detail["grad_mode"] == "no_grad"
        and detail["device"] == "cpu"
        and detail["max_batch_size"] == 16
        and detail["workers"] == 2
    )
    assert detail["max_batch_tokens"] == 4096
    assert server.client.get("/v1/models/reference").json()["max_batch_tokens"] is None


def test_health_and_metrics_routes(server: ServerProcess) -> None:
    assert server.client.get("/health/live").json() == {"status": "live"}
    ready = server.client.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["models"] == {"minilm": True, "reference": True}
    scraped = server.client.get("/metrics", follow_redirects=False)
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain")
    assert 'inference_model_ready{model="minilm"} 1.0' in scraped.text


def test_litserve_defaults_are_overridden(server: ServerProcess) -> None:
    from tests.support import ROOT

    assert not (ROOT / "client.py").exists()  # generate_client_file=False
    assert server.client.get("/info").status_code == 404  # LitServe's info route is not exposed
    assert server.client.get("/health").status_code == 404


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in scrape")


def test_ready_goes_503_to_200_and_sigterm_leaves_nothing_behind() -> None:
    # LitServe opens the port once the first worker is ready; the slower minilm is still loading then
    with ServerProcess(serve=["reference", "minilm"], wait_ready=False) as process:
        codes: list[int] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                code = process.client.get("/health/ready", timeout=2).status_code
            except httpx.TransportError:
                time.sleep(0.05)
                continue
            codes.append(code)
            if code == 200:
                break
            time.sleep(0.02)
        assert codes and codes[-1] == 200
        assert 503 in codes, f"never saw 503 before ready: {codes[:5]}"
        assert process.client.get("/health/live").status_code == 200
        pids = process.pids()
        assert len(pids) >= 3  # launcher, LitServe broker, worker, API server
        process.signal(signal.SIGTERM)
        started = time.monotonic()
        assert process.process is not None
        status = process.process.wait(timeout=10)
        while process.group_alive() and time.monotonic() - started < 10:
            time.sleep(0.1)
        elapsed = time.monotonic() - started
        assert process.group_alive() == [], f"left behind: {process.group_alive()}"
        assert elapsed < 10
        assert status == 0, process.output()


REQUEST_ID_CALLS = [
    ("POST", "/v1/models/reference/predict", {"json": {"inputs": [[0.0] * 16]}}, 200),
    ("POST", "/v1/models/reference/predict", {"json": {"inputs": [[0.0] * 3]}}, 422),
    ("POST", "/v1/models/nope/predict", {"json": {"inputs": [[0.0] * 16]}}, 404),
    (
        "POST",
        "/v1/models/reference/predict-file",
        {"content": b"[0]\n", "headers": {"content-type": "text/plain"}},
        200,
    ),
    ("GET", "/v1/models", {}, 200),
    ("GET", "/v1/models/minilm", {}, 200),
    ("GET", "/health/live", {}, 200),
    ("GET", "/health/ready", {}, 200),
    ("GET", "/metrics", {}, 200),
    ("GET", "/openapi.json", {}, 200),
    ("GET", "/no/such/route", {}, 404),
    ("GET", "/v2", {}, 200),
    ("GET", "/v2/health/live", {}, 200),
    ("GET", "/v2/health/ready", {}, 200),
    ("GET", "/v2/models/reference", {}, 200),
    ("GET", "/v2/models/reference/versions/1.0.0/ready", {}, 200),
    ("GET", "/v2/models/reference/versions/9/ready", {}, 404),
    (
        "POST",
        "/v2/models/reference/infer",
        {"json": {"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 16], "data": [0.0] * 16}]}},
        200,
    ),
    ("POST", "/v2/models/reference/versions/1.0.0/infer", {"content": b"{}"}, 400),
    ("POST", "/v1/embeddings", {"json": {"model": "minilm", "input": "hello"}}, 200),
    ("POST", "/v1/embeddings", {"json": {"model": "nope", "input": "hello"}}, 404),
    ("DELETE", "/v1/models/reference/predict", {}, 405),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "status"), REQUEST_ID_CALLS)
def test_every_response_carries_a_request_id(
    server: ServerProcess, method: str, path: str, kwargs: dict[str, Any], status: int
) -> None:
    kwargs = dict(kwargs)
    extra = kwargs.pop("headers", {})
    generated = server.client.request(method, path, headers=extra, **kwargs)
    assert generated.status_code == status, generated.text
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["x-request-id"])
    echoed = server.client.request(
        method, path, headers={**extra, "X-Request-ID": "client-7:a.b_c"}, **kwargs
    )
    assert echoed.status_code == status
    assert echoed.headers.get_list("x-request-id") == ["client-7:a.b_c"]
    replaced = server.client.request(
        method, path, headers={**extra, "X-Request-ID": "no spaces/slashes"}, **kwargs
    )
    assert re.fullmatch(r"[0-9a-f]{32}", replaced.headers["x-request-id"])
