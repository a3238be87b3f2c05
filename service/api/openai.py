"""OpenAI-compatible embeddings: ``POST /v1/embeddings``.

The body is parsed and the answer built by the pure codec in :mod:`service.api.openai_schema`
(its docstring lists the decisions: token ids refused, ``dimensions``, ``encoding_format``);
the request goes through the same dispatch core, deadlines, API keys and metrics as the native
route. Every error, the dispatcher's included, is answered in OpenAI's shape
``{"error": {"message", "type", "param", "code"}}`` with its status and headers (``Retry-After``
on a 503), so the SDKs raise the right exception class and retry what is worth retrying.
Any content type is accepted (``curl -d`` sends a form type); ``Content-Encoding: gzip`` or
``deflate`` is decompressed within ``max_body_bytes``.

``GET /v1/models`` and ``GET /v1/models/{name}`` are shared with the native protocol and live in
:mod:`service.api.native`; they carry OpenAI's fields too.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI, Request
from pydantic import BaseModel
from starlette.responses import Response

from service import metrics
from service.api.auth import require_api_key
from service.api.dispatch import deadline_for
from service.api.errors import ApiError, json_response
from service.api.openai_schema import (
    ENCODING_FORMATS,
    EmbeddingsError,
    encode_embeddings_response,
    error_body,
    parse_embeddings_body,
)
from service.api.state import ServiceState, service_state
from service.api.uploads import read_body
from service.core.repository import ModelSpec

# OpenAI's ``code`` for the errors the SDKs and tools look at
ERROR_CODES = {401: "invalid_api_key", 404: "model_not_found"}


def openai_error(exc: ApiError) -> Response:
    """An :class:`ApiError` from auth, uploads or the dispatch core, in OpenAI's shape."""
    body = error_body(exc.status, exc.message, code=ERROR_CODES.get(exc.status))
    return json_response(body, exc.status, exc.headers)


async def embeddings(request: Request) -> Response:
    """Embed a string or a list of strings with a served text model."""
    state = service_state(request)
    started, arrived = time.perf_counter(), time.monotonic()
    code = 500
    named: list[str] = []  # the model the body names, once the codec has looked it up (for metrics)

    def lookup(name: str) -> ModelSpec | None:
        named.append(name)
        route = state.routes.get(name)
        return route.spec if route is not None else None

    try:
        require_api_key(request)
        settings = state.settings
        deadline = deadline_for(request.headers, settings, arrived)
        body = await read_body(request, settings.max_body_bytes, settings.body_timeout)
        parsed = parse_embeddings_body(body, lookup)
        route = state.route(parsed.model)
        result = await state.dispatcher.predict(route, request, parsed.inputs, deadline)
        content = encode_embeddings_response(parsed, result.outputs, result.tokens)
        code = 200
        return Response(content, media_type="application/json")
    except EmbeddingsError as exc:
        code = exc.status
        return json_response(exc.body(), exc.status)
    except ApiError as exc:
        code = exc.status
        return openai_error(exc)
    finally:
        state.observe(named[0] if named else "", metrics.EMBEDDINGS_ENDPOINT, started, code)


# --- OpenAPI: the request body and answers, from the served text models --------------------------


class Embedding(BaseModel):
    object: str
    index: int
    embedding: list[float] | str  # floats, or base64 of little-endian float32


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: str
    data: list[Embedding]
    model: str
    usage: Usage


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorResponse(BaseModel):
    """The body of every error answer on ``/v1/embeddings``."""

    error: OpenAIErrorDetail


def request_schema(state: ServiceState) -> dict[str, Any]:
    """The ``/v1/embeddings`` body for the served text models (their names, limits and sizes)."""
    texts = [
        route.spec
        for route in state.routes.values()
        if route.spec.inputs.codec.openai_input and route.spec.outputs.codec.openai_embeddings
    ]
    longest = max((spec.inputs.max_length or 0 for spec in texts), default=0)
    most = max((spec.inputs.max_items for spec in texts), default=1)
    sizes = sorted(
        {size for spec in texts for size in (*spec.outputs.dimensions, spec.outputs.size) if size is not None}
    )
    text: dict[str, Any] = {"type": "string", **({"maxLength": longest} if longest else {})}
    return {
        "title": "EmbeddingsRequest",
        "type": "object",
        "required": ["model", "input"],
        "properties": {
            "model": {"type": "string", "enum": [spec.name for spec in texts]}
            if texts
            else {"type": "string"},
            "input": {
                "anyOf": [text, {"type": "array", "items": text, "minItems": 1, "maxItems": most}],
                "description": "a string or a list of strings (token-id lists are refused)",
            },
            "encoding_format": {
                "anyOf": [{"type": "string", "enum": list(ENCODING_FORMATS)}, {"type": "null"}]
            },
            "dimensions": {
                "anyOf": [
                    {"type": "integer", **({"enum": sizes} if sizes else {"minimum": 1})},
                    {"type": "null"},
                ]
            },
            "user": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        },
    }


def register(app: FastAPI, state: ServiceState) -> None:
    app.add_api_route(
        "/v1/embeddings",
        embeddings,
        methods=["POST"],
        tags=["openai"],
        summary="OpenAI-compatible embeddings",
        response_model=EmbeddingsResponse,
        responses={
            code: {"model": OpenAIErrorResponse, "description": "OpenAI's error shape"}
            for code in (400, 401, 404, 408, 413, 415, 422, 503, 504)
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": request_schema(state)}},
            }
        },
    )
