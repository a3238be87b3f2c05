"""X-Request-ID on a small FastAPI app with the service's middleware and error handlers."""

from __future__ import annotations

import logging
import re

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from starlette.responses import Response, StreamingResponse

from service.api.app import RequestIdMiddleware
from service.api.errors import ApiError, current_request_id, install_error_handlers

GENERATED = re.compile(r"[0-9a-f]{32}")


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(RequestIdMiddleware)

    @app.get("/ok")
    async def ok() -> Response:
        return Response(current_request_id())

    @app.get("/refused")
    async def refused() -> Response:
        raise ApiError(503, "busy", {"Retry-After": "1"})

    @app.get("/broken")
    async def broken() -> Response:
        raise RuntimeError("a bug")

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def body():  # type: ignore[no-untyped-def]
            yield b"a"
            yield b"b"

        return StreamingResponse(body())

    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize("path", ["/ok", "/refused", "/broken", "/stream", "/no/such/route"])
def test_every_response_gets_a_generated_id(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert GENERATED.fullmatch(response.headers["x-request-id"])


def test_two_requests_get_two_ids(client: TestClient) -> None:
    assert client.get("/ok").headers["x-request-id"] != client.get("/ok").headers["x-request-id"]


@pytest.mark.parametrize("sent", ["abc", "trace:1234-5678_9.0", "x" * 128])
def test_a_sane_client_id_is_echoed_and_seen_by_the_handler(client: TestClient, sent: str) -> None:
    response = client.get("/ok", headers={"X-Request-ID": sent})
    assert response.headers["x-request-id"] == sent
    assert response.text == sent
    assert response.headers.get_list("x-request-id") == [sent]


@pytest.mark.parametrize("sent", ["", "x" * 129, "has space", "semi;colon", "<script>", "ünïcode"])
def test_an_unsafe_client_id_is_replaced(client: TestClient, sent: str) -> None:
    response = client.get("/ok", headers={"X-Request-ID": sent.encode("utf-8")})
    assert GENERATED.fullmatch(response.headers["x-request-id"])


def test_an_unexpected_error_is_a_500_whose_log_line_names_the_request(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="service.api"):
        response = client.get("/broken", headers={"X-Request-ID": "req-42"})
    assert response.status_code == 500
    assert response.json() == {"error": "internal server error"}
    assert response.headers["x-request-id"] == "req-42"
    [record] = [r for r in caplog.records if r.name == "service.api"]
    assert "req-42" in record.getMessage() and "/broken" in record.getMessage()


def test_error_headers_are_kept(client: TestClient) -> None:
    response = client.get("/refused", headers={"X-Request-ID": "r1"})
    assert response.status_code == 503 and response.json() == {"error": "busy"}
    assert response.headers["retry-after"] == "1" and response.headers["x-request-id"] == "r1"


@pytest.fixture(scope="module")
def direct_client() -> TestClient:
    """An app whose middleware answers ``POST /fast`` (and ``/fast-refused``) itself."""
    app = FastAPI()
    install_error_handlers(app)
    reached_fastapi: list[str] = []

    async def fast(request: Request) -> Response:
        return Response(f"direct {request.state.request_id} {current_request_id()}")

    async def fast_refused(request: Request) -> Response:
        raise ApiError(503, "busy", {"Retry-After": "1"})

    app.add_middleware(
        RequestIdMiddleware, direct={("POST", "/fast"): fast, ("POST", "/fast-refused"): fast_refused}
    )

    @app.get("/fast")
    async def fast_get() -> Response:
        reached_fastapi.append("GET /fast")
        return Response("through FastAPI")

    app.state.reached_fastapi = reached_fastapi
    return TestClient(app, raise_server_exceptions=False)


def test_a_direct_route_is_answered_by_its_handler_with_the_request_id(direct_client: TestClient) -> None:
    response = direct_client.post("/fast", headers={"X-Request-ID": "abc"})
    assert response.status_code == 200
    assert response.text == "direct abc abc"
    assert response.headers.get_list("x-request-id") == ["abc"]


def test_other_methods_and_paths_still_go_through_fastapi(direct_client: TestClient) -> None:
    assert direct_client.get("/fast").text == "through FastAPI"
    assert direct_client.app.state.reached_fastapi == ["GET /fast"]  # type: ignore[attr-defined]
    assert direct_client.post("/fast/", follow_redirects=False).status_code in (307, 404, 405)  # not exact
    assert direct_client.put("/fast").status_code == 405


def test_an_api_error_from_a_direct_handler_is_answered_as_fastapi_would(direct_client: TestClient) -> None:
    response = direct_client.post("/fast-refused")
    assert response.status_code == 503
    assert response.json() == {"error": "busy"}
    assert response.headers["retry-after"] == "1"
    assert GENERATED.fullmatch(response.headers["x-request-id"])


def test_the_service_answers_its_inference_routes_directly() -> None:
    from types import SimpleNamespace

    from service.api.app import direct_routes
    from service.core.repository import ModelRepository

    repository = ModelRepository()

    class State:
        routes = {
            name: SimpleNamespace(spec=repository.get(name).spec) for name in ("minilm", "image_classifier")
        }

    table = direct_routes(State())  # type: ignore[arg-type]
    assert set(table) == {
        ("POST", "/v1/embeddings"),
        ("POST", "/v1/models/minilm/predict"),
        ("POST", "/v1/models/image_classifier/predict"),
        ("PUT", "/v1/models/image_classifier/predict"),  # curl -T uploads an image with PUT
        ("POST", "/v2/models/minilm/infer"),
        ("POST", "/v2/models/image_classifier/infer"),
    }
