"""Errors as the HTTP API shows them, and the request id that log lines name.

:class:`ApiError` is raised wherever a request cannot be served (the dispatch core, uploads,
auth); each protocol module catches it and renders it in its own shape. The native routes (and
every route without a shape of its own) answer JSON ``{"error": "..."}`` with the right status.
"""

from __future__ import annotations

from contextvars import ContextVar
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

# the X-Request-ID of the request this task is handling (set by service.api.app's middleware)
REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="-")


def current_request_id() -> str:
    """The id of the request being handled, for log lines ("-" outside a request)."""
    return REQUEST_ID.get()


class ApiError(Exception):
    """A request that cannot be served: an HTTP status, a message, and headers to send."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}

    def response(self) -> Response:
        """The native shape: ``{"error": message}``."""
        return json_response({"error": self.message}, self.status, self.headers)


class ErrorResponse(BaseModel):
    """The body of every native error answer."""

    error: str


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` declaring these error statuses with the ``{"error": ...}`` body."""
    return {code: {"model": ErrorResponse, "description": HTTPStatus(code).phrase} for code in codes}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def describe_validation(exc: ValidationError | RequestValidationError, prefix: str = "") -> str:
    """One line naming the first offending field (never echoing the input itself)."""
    errors = exc.errors()
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body",)]
    where = ".".join([prefix, *loc] if prefix else loc) or "body"
    more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid value')}{more}"


def install_error_handlers(app: FastAPI) -> None:
    """Framework errors (unknown path, wrong method, FastAPI validation) in the native shape.
    Unexpected exceptions are answered by the request-id middleware in ``service.api.app``."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            message = f"no such route: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return json_response({"error": message}, exc.status_code, dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        return json_response({"error": describe_validation(exc)}, 422)
