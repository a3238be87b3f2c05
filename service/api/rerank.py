"""Cohere-compatible rerank: ``POST /v1/rerank`` and ``POST /v2/rerank``.

A query and its documents become one ``[query, document]`` input per document for a served
``rerank`` model; they go through the same dispatch core (admission, deadline, length-aware
batching of the pairs, metrics) as every other request, so a rerank of 100 documents is spread
over forwards like any other traffic. The answer is Cohere's: ``{"id", "results": [{"index",
"relevance_score", "document"?: {"text"}}], "meta"}``, sorted by score, best first, cut to
``top_n``; the ``cohere`` SDK's ``Client.rerank`` (v1) and ``ClientV2.rerank`` (v2) work
unchanged with ``base_url`` pointing here. Scores are the cross-encoder's sigmoid of its logit.

A document longer than the model's window is scored as Cohere scores it: its first
``max_tokens_per_doc`` tokens (default 4096) are split into overlapping chunks that each fit beside
the query, at most ``max_chunks_per_doc`` of them (v1; default: all), and the document scores its
best chunk (``service.worker.huggingface.PairScorer``). Errors are Cohere's shape ``{"message": "..."}``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import FastAPI, Request
from starlette.responses import Response

from service import metrics
from service.api.auth import require_api_key
from service.api.dispatch import deadline_for
from service.api.errors import ApiError, current_request_id, json_response
from service.api.state import ModelRoute, ServiceState, service_state
from service.api.uploads import read_body

RERANK_TASK = "rerank"
CHUNK_LIMITS = ("max_tokens_per_doc", "max_chunks_per_doc")


@dataclass(frozen=True)
class RerankRequest:
    model: str
    query: str
    documents: list[str]
    top_n: int
    return_documents: bool
    max_tokens_per_doc: int | None = None  # None: the model's default (4096)
    max_chunks_per_doc: int | None = None  # None: as many chunks as the tokens make

    def pairs(self) -> list[list[Any]]:
        """One input per document; the limits ride along when given (the reranker reads them)."""
        if self.max_tokens_per_doc is None and self.max_chunks_per_doc is None:
            return [[self.query, document] for document in self.documents]
        limits = [self.max_tokens_per_doc, self.max_chunks_per_doc]
        return [[self.query, document, *limits] for document in self.documents]


def parse_rerank_body(body: bytes, version: int, state: ServiceState) -> tuple[ModelRoute, RerankRequest]:
    """Validate a rerank body (``version`` 1 or 2) against the served rerank models; raises
    :class:`ApiError` naming the field."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise ApiError(400, "the body must be a JSON object")
    route = _model(payload.get("model"), version, state)
    query = payload.get("query")
    if not isinstance(query, str) or not query:
        raise ApiError(400, "'query' must be a non-empty string")
    raw = payload.get("documents")
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "'documents' must be a non-empty list of strings (or of {\"text\": ...} objects)")
    limits = route.spec.inputs
    if len(raw) > limits.max_items:
        raise ApiError(413, f"'documents' has {len(raw)} items; the model takes at most {limits.max_items}")
    check = limits.codec.record_check(limits)
    documents: list[str] = []
    for index, item in enumerate(raw):
        text = item.get("text") if isinstance(item, dict) and version == 1 else item
        if not isinstance(text, str):
            shape = 'strings or {"text": ...} objects' if version == 1 else "strings"
            raise ApiError(400, f"documents[{index}] must be a string ('documents' holds {shape})")
        problem = check([query, text])
        if problem is not None:
            raise ApiError(400, f"documents[{index}]: {problem}")
        documents.append(text)
    top_n = _positive(payload.get("top_n"), "top_n", default=len(documents))
    max_tokens, max_chunks = (_optional_positive(payload.get(key), key) for key in CHUNK_LIMITS)
    return_documents = payload.get("return_documents", False)
    if not isinstance(return_documents, bool):
        raise ApiError(400, "'return_documents' must be true or false")
    request = RerankRequest(
        route.name, query, documents, min(top_n, len(documents)), return_documents, max_tokens, max_chunks
    )
    return route, request


def _model(name: Any, version: int, state: ServiceState) -> ModelRoute:
    rerankers = [route for route in state.routes.values() if route.spec.task == RERANK_TASK]
    if name is None and version == 1 and len(rerankers) == 1:
        return rerankers[0]  # v1 makes 'model' optional: the one reranker served
    if not isinstance(name, str) or not name:
        served = ", ".join(route.name for route in rerankers) or "none"
        raise ApiError(400, f"'model' is required: a served rerank model (served: {served})")
    route = state.route(name)
    if route.spec.task != RERANK_TASK:
        raise ApiError(400, f"model {name!r} is a {route.spec.task} model, not a reranker")
    return route


def _optional_positive(value: Any, field: str) -> int | None:
    return None if value is None else _positive(value, field, 1)


def _positive(value: Any, field: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ApiError(400, f"'{field}' must be a positive integer")
    return value


def encode_rerank_response(request: RerankRequest, scores: list[float], version: int, tokens: int) -> bytes:
    ranked = sorted(range(len(scores)), key=lambda index: (-scores[index], index))[: request.top_n]
    results = []
    for index in ranked:
        result: dict[str, Any] = {"index": index, "relevance_score": scores[index]}
        if request.return_documents:
            result["document"] = {"text": request.documents[index]}
        results.append(result)
    meta = {
        "api_version": {"version": str(version)},
        "billed_units": {"search_units": 1},
        "tokens": {"input_tokens": tokens},
    }
    return orjson.dumps({"id": current_request_id(), "results": results, "meta": meta})


async def rerank(request: Request, version: int, endpoint: str) -> Response:
    state = service_state(request)
    started, arrived = time.perf_counter(), time.monotonic()
    code, model = 500, ""
    try:
        require_api_key(request)
        settings = state.settings
        deadline = deadline_for(request.headers, settings, arrived)
        body = await read_body(request, settings.max_body_bytes, settings.body_timeout)
        route, parsed = parse_rerank_body(body, version, state)
        model = route.name
        result = await state.dispatcher.predict(route, request, parsed.pairs(), deadline)
        scores = [float(output[0]) for output in result.outputs]
        code = 200
        return Response(
            encode_rerank_response(parsed, scores, version, result.tokens), media_type="application/json"
        )
    except ApiError as exc:
        code = exc.status
        return json_response({"message": exc.message}, exc.status, exc.headers)
    finally:
        state.observe(model, endpoint, started, code)


async def rerank_v1(request: Request) -> Response:
    """Cohere v1 rerank."""
    return await rerank(request, 1, metrics.RERANK_V1_ENDPOINT)


async def rerank_v2(request: Request) -> Response:
    """Cohere v2 rerank."""
    return await rerank(request, 2, metrics.RERANK_V2_ENDPOINT)


def request_schema(state: ServiceState, version: int) -> dict[str, Any]:
    """The body the parser accepts, exactly: what the OpenAPI document says (and schemathesis checks)."""
    rerankers = [route.spec for route in state.routes.values() if route.spec.task == RERANK_TASK]
    longest = min((spec.inputs.max_length for spec in rerankers), default=1)
    most = min((spec.inputs.max_items for spec in rerankers), default=1)
    text = {"type": "string", "minLength": 1, "maxLength": longest}
    document: dict[str, Any] = text
    if version == 1:
        document = {"anyOf": [text, {"type": "object", "required": ["text"], "properties": {"text": text}}]}
    positive = {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}]}
    names = [spec.name for spec in rerankers]
    model: dict[str, Any] = {"type": "string", "enum": names} if names else {"type": "string"}
    required = ["query", "documents"] if version == 1 and len(names) == 1 else ["model", "query", "documents"]
    return {
        "type": "object",
        "required": required,
        "properties": {
            "model": model,
            "query": text,
            "documents": {"type": "array", "minItems": 1, "maxItems": most, "items": document},
            "top_n": positive,
            "return_documents": {"type": "boolean"},
            "max_tokens_per_doc": positive,
            "max_chunks_per_doc": positive,
        },
    }


def register(app: FastAPI, state: ServiceState) -> None:
    for version, path, handler in (
        (1, metrics.RERANK_V1_ENDPOINT, rerank_v1),
        (2, metrics.RERANK_V2_ENDPOINT, rerank_v2),
    ):
        app.add_api_route(
            path,
            handler,
            methods=["POST"],
            tags=["rerank"],
            summary="Rerank documents for a query (Cohere-compatible)",
            responses={
                200: {"description": "results sorted by relevance_score, best first"},
                **{status: {"description": '{"message": ...}'} for status in (400, 401, 404, 413, 503, 504)},
            },
            openapi_extra={
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": request_schema(state, version)}},
                }
            },
        )
