"""The server in-process: LitServe spawns real workers, FastAPI's TestClient drives the app."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from litserve.utils import wrap_litserve_start

from service.core.repository import ModelRepository
from service.runtime.launcher import build_server
from service.settings import load_settings


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = load_settings(serve=["reference"], spool_dir=tmp_path_factory.mktemp("spool"))
    server, _state = build_server(settings, ModelRepository(settings.repository))
    with wrap_litserve_start(server) as started, TestClient(started.app) as test_client:
        deadline = time.monotonic() + 60
        while test_client.get("/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "workers never became ready"
            time.sleep(0.1)
        yield test_client


def test_predict_round_trip(client: TestClient) -> None:
    response = client.post("/v1/models/reference/predict", json={"inputs": [[0.5] * 16, [0.0] * 16]})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "reference" and len(body["outputs"]) == 2 and len(body["outputs"][0]) == 4


def test_validation_happens_before_the_queue(client: TestClient) -> None:
    response = client.post("/v1/models/reference/predict", json={"inputs": [[0.5] * 3]})
    assert response.status_code == 422
    assert response.json()["error"].startswith("inputs.0")


def test_openapi_documents_each_model_route(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    operation = schema["paths"]["/v1/models/reference/predict"]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["inputs"]["maxItems"] == 1024
    assert "/internal/reference" not in schema["paths"]


def test_deadline_header(client: TestClient) -> None:
    bad = client.post(
        "/v1/models/reference/predict", json={"inputs": [[0.0] * 16]}, headers={"x-request-timeout": "x"}
    )
    assert bad.status_code == 400
    ok = client.post(
        "/v1/models/reference/predict", json={"inputs": [[0.0] * 16]}, headers={"x-request-timeout": "5"}
    )
    assert ok.status_code == 200
