"""The Open Inference Protocol (v2, REST), as Triton, KServe and MLServer speak it.

``GET /v2``, ``GET /v2/health/live|ready``, ``GET /v2/models/{name}[/versions/{version}]``,
``…/ready`` and ``POST …/infer``, with the binary tensor extension both ways. Bodies are parsed
and answered by the pure codec in :mod:`service.api.v2_tensors`; requests go through the same
dispatch core, deadlines, API keys and metrics as the native route. Decisions:

- No content-type check on ``/infer``: ``tritonclient`` sends none. ``Content-Encoding: gzip``
  or ``deflate`` is decompressed within ``max_body_bytes`` (``service.api.uploads.read_body``).
- The served version of a model is its ``model.yaml`` ``version``; any other is a 404.
- ``/v2``, ``/v2/health/live`` and ``/v2/health/ready`` are open, like ``/health/*``; the model
  routes need an API key when keys are configured, like ``/v1/models/...``.
- Every error, not-ready answers included, is ``{"error": "..."}`` (what ``tritonclient`` parses).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from pydantic import BaseModel
from starlette.responses import Response

import service
from service import metrics
from service.api.auth import require_api_key
from service.api.dispatch import deadline_for
from service.api.errors import ApiError, error_responses, json_response
from service.api.state import ModelRoute, ServiceState, service_state
from service.api.uploads import read_body
from service.api.v2_tensors import (
    HEADER_LENGTH,
    TensorError,
    encode_infer_response,
    input_names,
    model_metadata,
    output_names,
    parse_infer_request,
    server_metadata,
)
from service.core.repository import ModelSpec

SERVER_NAME = "inference-service"
DATATYPES = (
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BF16", "BYTES",
)  # fmt: skip


async def server_info() -> Response:
    """``GET /v2``: the server's name, version and protocol extensions."""
    return json_response(server_metadata(SERVER_NAME, service.__version__))


async def server_live() -> Response:
    """200 while the server runs."""
    return json_response({"live": True})


async def server_ready(request: Request) -> Response:
    """200 when every model is loaded and warmed in all its workers; 503 before, and while stopping."""
    reason = service_state(request).unready_reason()
    if reason is not None:
        return json_response({"error": reason}, 503)
    return json_response({"ready": True})


def served(request: Request, name: str, version: str | None) -> tuple[ServiceState, ModelRoute]:
    """The route of model ``name`` (at ``version`` when given), after the API key check; 401 or 404."""
    require_api_key(request, name)
    state = service_state(request)
    route = state.route(name)
    if version is not None and version != route.spec.version:
        raise ApiError(404, f"model {name!r} has no version {version[:40]!r} (served: {route.spec.version})")
    return state, route


async def model_info(request: Request, name: str) -> Response:
    _, route = served(request, name, None)
    return json_response(model_metadata(route.spec))


async def model_version_info(request: Request, name: str, version: str) -> Response:
    _, route = served(request, name, version)
    return json_response(model_metadata(route.spec))


async def model_ready(request: Request, name: str) -> Response:
    return _model_ready(request, name, None)


async def model_version_ready(request: Request, name: str, version: str) -> Response:
    return _model_ready(request, name, version)


def _model_ready(request: Request, name: str, version: str | None) -> Response:
    state, route = served(request, name, version)
    if state.shutting_down.value or state.unready.value:
        return json_response({"error": "server is shutting down"}, 503)
    if route.out_of_service:
        return json_response({"error": state.failures()[route.name]}, 503)
    if not state.readiness().get(route.name, False):
        return json_response({"error": f"model {name!r} is not ready yet"}, 503)
    return json_response({"name": name, "ready": True})


async def infer(request: Request, name: str) -> Response:
    return await _infer(request, name, None, metrics.V2_INFER_ENDPOINT)


async def infer_version(request: Request, name: str, version: str) -> Response:
    return await _infer(request, name, version, metrics.V2_VERSIONED_INFER_ENDPOINT)


async def _infer(request: Request, name: str, version: str | None, endpoint: str) -> Response:
    """Parse JSON or binary tensors, run the model, answer its output tensor (binary when asked)."""
    state = service_state(request)
    started, arrived = time.perf_counter(), time.monotonic()
    code = 500
    try:
        _, route = served(request, name, version)
        state.dispatcher.precheck(route)
        settings = state.settings
        deadline = deadline_for(request.headers, settings, arrived)
        body = await read_body(request, settings.max_body_bytes, settings.body_timeout)
        try:
            parsed = parse_infer_request(route.spec, body, request.headers.get(HEADER_LENGTH))
        except TensorError as exc:
            raise ApiError(exc.status, exc.message) from None
        result = await state.dispatcher.predict(route, request, parsed.inputs, deadline)
        try:
            content, headers = encode_infer_response(route.spec, parsed, result.outputs)
        except TensorError as exc:
            raise ApiError(exc.status, exc.message) from None
        code = 200
        media_type = headers.pop("Content-Type")
        return Response(content, media_type=media_type, headers=headers)
    except ApiError as exc:
        code = exc.status
        return exc.response()
    finally:
        state.observe(name, endpoint, started, code)


# --- OpenAPI: the documents and bodies above, so that the schema (and schemathesis) is precise ---


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class LiveResponse(BaseModel):
    live: bool


class ReadyResponse(BaseModel):
    ready: bool


class ModelReadyResponse(BaseModel):
    name: str
    ready: bool


class OutputTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    # floats; "value:index:label" strings with the classification extension; absent when the
    # tensor follows the header as binary data
    data: list[float] | list[str] | None = None
    parameters: dict[str, Any] | None = None  # {"binary_data_size": n} for a binary tensor


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None  # the request's id, echoed when it sent one
    outputs: list[OutputTensor]


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


_OBJECT = {"type": "object"}


def infer_request_schema(spec: ModelSpec) -> dict[str, Any]:
    """The ``/infer`` JSON body for one model: its input tensor's name, the datatypes it takes and
    the rank of its shape (the element count must match the shape: that JSON Schema cannot say)."""
    codec = spec.inputs.codec
    tensors = spec.inputs.tensors
    datatypes: list[str]
    if tensors:  # a tensors model: each of its named tensors, in its own datatype
        ranks = [len(tensor.shape) for tensor in tensors]
        rank, most = min(ranks), max(ranks)
        datatypes = sorted({tensor.datatype for tensor in tensors})
    else:
        rank = most = len(codec.v2_metadata(spec.inputs)["shape"])
        most = max(most, 2)
        datatypes = list(codec.v2_datatypes())
    dimension = {"type": "integer", "minimum": 0}
    tensor = {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string", "enum": input_names(spec)},
            "datatype": {"type": "string", "enum": datatypes},
            "shape": {
                "type": "array",
                "items": dimension,
                "minItems": rank,
                "maxItems": most,
            },
            "data": {"type": "array", "description": "flat or nested, row-major; UTF-8 strings for BYTES"},
            "parameters": _nullable(_OBJECT),
        },
    }
    output = {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "enum": output_names(spec)},
            "parameters": _nullable(_OBJECT),
        },
    }
    return {
        "title": f"{spec.name}InferRequest",
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": _nullable({"type": "string"}),
            "parameters": _nullable(_OBJECT),
            "inputs": {"type": "array", "minItems": 1, "maxItems": len(input_names(spec)), "items": tensor},
            "outputs": _nullable({"type": "array", "maxItems": len(output_names(spec)), "items": output}),
        },
    }


def _infer_openapi(spec: ModelSpec) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": infer_request_schema(spec)},
                "application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"},
                    "description": f"the JSON header, then binary tensors; {HEADER_LENGTH} gives its length",
                },
            },
        }
    }


_BINARY_200: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The output tensor: JSON, or the JSON header followed by binary data",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


def register(app: FastAPI, routes: Mapping[str, ModelRoute]) -> None:
    add = app.add_api_route
    add("/v2", server_info, methods=["GET"], tags=["v2"], response_model=ServerMetadata)
    add("/v2/health/live", server_live, methods=["GET"], tags=["v2"], response_model=LiveResponse)
    add(
        "/v2/health/ready",
        server_ready,
        methods=["GET"],
        tags=["v2"],
        response_model=ReadyResponse,
        responses=error_responses(503),
    )
    for prefix, suffix in (("/v2/models/{name}", ""), ("/v2/models/{name}/versions/{version}", "_version")):
        versioned = bool(suffix)
        add(
            prefix,
            model_version_info if versioned else model_info,
            methods=["GET"],
            tags=["v2"],
            response_model=ModelMetadata,
            responses=error_responses(401, 404),
        )
        add(
            f"{prefix}/ready",
            model_version_ready if versioned else model_ready,
            methods=["GET"],
            tags=["v2"],
            response_model=ModelReadyResponse,
            responses=error_responses(401, 404, 503),
        )
    # one infer route per served model, so that the document has its precise request schema; the
    # templates with {name} catch models that are not served (404) and label the metrics
    for name, route in routes.items():
        handlers: list[tuple[str, Callable[..., Awaitable[Response]]]] = [
            (f"/v2/models/{name}/infer", _infer_for(name)),
            (f"/v2/models/{name}/versions/{{version}}/infer", _infer_version_for(name)),
        ]
        for path, handler in handlers:
            add(
                path,
                handler,
                methods=["POST"],
                tags=["v2"],
                response_model=InferResponse,
                responses={**_BINARY_200, **error_responses(400, 401, 404, 408, 413, 415, 503, 504)},
                openapi_extra=_infer_openapi(route.spec),
                summary=f"Run {name} on v2 tensors (JSON or binary)",
            )
    add("/v2/models/{name}/infer", infer, methods=["POST"], include_in_schema=False)
    add(
        "/v2/models/{name}/versions/{version}/infer", infer_version, methods=["POST"], include_in_schema=False
    )


def _infer_for(name: str) -> Callable[[Request], Awaitable[Response]]:
    """``infer`` on one model's own route (its path has no ``{name}`` parameter)."""

    async def endpoint(request: Request) -> Response:
        return await infer(request, name)

    endpoint.__name__ = f"infer_{name}"
    return endpoint


def _infer_version_for(name: str) -> Callable[[Request, str], Awaitable[Response]]:
    async def endpoint(request: Request, version: str) -> Response:
        return await infer_version(request, name, version)

    endpoint.__name__ = f"infer_{name}_version"
    return endpoint
