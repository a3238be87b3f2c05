"""X-Request-ID on a small FastAPI app with the service's middleware and error handlers."""

from __future__ import annotations

import logging
import re

import pytest
from fastapi import FastAPI
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
