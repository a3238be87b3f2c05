"""The OpenAI-compatible embeddings codec: ``/v1/embeddings`` bodies in, responses and errors out.

No server here: the handler reads the body, calls :func:`parse_embeddings_request`, dispatches
``request.inputs`` and builds the answer with :func:`encode_embeddings_response`. Decisions:

- ``input``: a string or a list of strings. Token-id lists are refused (400): OpenAI's ids are
  tiktoken ids, meaningless to another model's tokenizer, and a text model's contract is text.
  LangChain's ``OpenAIEmbeddings`` sends token ids unless ``check_embedding_ctx_length=False``;
  the error message says so.
- Limits as OpenAI answers them: no input, more than the model's ``max_items``, an item that is
  not a string, or a text longer than ``max_length`` characters are each a 400 with ``param``
  ``"input"`` (the SDK raises ``BadRequestError`` and does not retry).
- ``encoding_format``: ``"float"`` (the default, as in OpenAI's API) or ``"base64"``: the
  little-endian float32 bytes of each vector, which the SDKs decode with ``frombuffer``.
- ``dimensions``: accepted when it equals the model's output size, or is one of the sizes
  ``model.yaml`` declares under ``outputs.dimensions`` (the vector is then cut to its first
  ``dimensions`` floats and L2-renormalised); refused with a 400 otherwise.
- ``user`` is accepted (a string) and ignored. Unknown fields are ignored, as OpenAI's SDKs
  forward fields they do not know (``extra_body``) and newer SDKs add optional ones.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson

from service.core.repository import ModelSpec

EncodingFormat = Literal["float", "base64"]
ENCODING_FORMATS: tuple[EncodingFormat, ...] = ("float", "base64")
OWNED_BY = "inference-service"

# the ``type`` of an error body, by status, as OpenAI's API names them; the SDK picks its exception
# class from the status alone (400 BadRequestError, 401 AuthenticationError, 404 NotFoundError,
# 422 UnprocessableEntityError, 429 RateLimitError, >= 500 InternalServerError, others APIStatusError)
# and retries 408, 409, 429 and >= 500, honouring Retry-After
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    504: "timeout_error",
}


def error_type(status: int) -> str:
    """The OpenAI error ``type`` for an HTTP status (``server_error`` for 5xx not listed, 503 included)."""
    if status in ERROR_TYPES:
        return ERROR_TYPES[status]
    return "server_error" if status >= 500 else "invalid_request_error"


def error_body(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}`` as OpenAI's SDKs read it."""
    return {"error": {"message": message, "type": error_type(status), "param": param, "code": code}}


class EmbeddingsError(Exception):
    """A ``/v1/embeddings`` request that cannot be served: status, message and OpenAI's ``param``/``code``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.param, self.code)


@dataclass(frozen=True)
class EmbeddingsRequest:
    """A validated ``/v1/embeddings`` request."""

    model: str
    inputs: list[str]
    encoding_format: EncodingFormat = "float"
    dimensions: int | None = None  # None: the model's full output


def parse_embeddings_body(body: bytes, lookup: Callable[[str], ModelSpec | None]) -> EmbeddingsRequest:
    """:func:`parse_embeddings_request` on raw bytes: a body that is not JSON is a 400."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise EmbeddingsError(400, f"the request body is not valid JSON: {exc}") from None
    return parse_embeddings_request(payload, lookup)


def parse_embeddings_request(payload: Any, lookup: Callable[[str], ModelSpec | None]) -> EmbeddingsRequest:
    """Validate a decoded body; ``lookup`` maps a model name to its spec (None: not served, a 404).
    Raises :class:`EmbeddingsError`."""
    if not isinstance(payload, dict):
        raise EmbeddingsError(400, "the request body must be a JSON object")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise EmbeddingsError(400, "'model' is required: the name of a served model", "model")
    spec = lookup(model)
    if spec is None:
        raise EmbeddingsError(404, f"the model {model[:64]!r} does not exist", "model", "model_not_found")
    if not spec.outputs.codec.openai_embeddings:
        raise EmbeddingsError(
            400,
            f"the model {model!r} is a {spec.outputs.kind} model, not an embedding model; use its native or v2 route",
            "model",
        )
    if not spec.inputs.codec.openai_input:
        raise EmbeddingsError(
            400,
            f"the model {model!r} takes {spec.inputs.codec.noun}, not text; use its native or v2 route",
            "model",
        )
    user = payload.get("user")
    if user is not None and not isinstance(user, str):
        raise EmbeddingsError(400, "'user' must be a string", "user")
    return EmbeddingsRequest(
        model=model,
        inputs=_inputs(spec, payload.get("input")),
        encoding_format=_encoding_format(payload.get("encoding_format")),
        dimensions=_dimensions(spec, payload.get("dimensions")),
    )


def _inputs(spec: ModelSpec, raw: Any) -> list[str]:
    limits = spec.inputs
    if raw is None:
        raise EmbeddingsError(400, "'input' is required: a string or a list of strings", "input")
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list):
        raise EmbeddingsError(400, "'input' must be a string or a list of strings", "input")
    if not items:
        raise EmbeddingsError(400, "'input' must not be an empty list", "input")
    if len(items) > limits.max_items:
        raise EmbeddingsError(
            400, f"'input' has {len(items)} items; the model takes at most {limits.max_items}", "input"
        )
    if len(items) < limits.min_items:
        raise EmbeddingsError(
            400, f"'input' has {len(items)} items; the model needs at least {limits.min_items}", "input"
        )
    token_ids = all(isinstance(item, int) and not isinstance(item, bool) for item in items) or any(
        isinstance(item, list) for item in items
    )
    if token_ids:
        raise EmbeddingsError(
            400,
            "'input' holds token ids; send text instead (ids from another tokenizer mean nothing to this "
            "model). LangChain: OpenAIEmbeddings(..., check_embedding_ctx_length=False)",
            "input",
            "token_ids_not_supported",
        )
    check = limits.codec.record_check(limits)  # the same check as every other way in
    for index, item in enumerate(items):
        problem = check(item)
        if problem is not None:
            raise EmbeddingsError(400, f"input[{index}]: {problem}", "input")
    return items


def _encoding_format(raw: Any) -> EncodingFormat:
    if raw is None:
        return "float"
    for known in ENCODING_FORMATS:
        if raw == known:
            return known
    raise EmbeddingsError(400, "'encoding_format' must be 'float' or 'base64'", "encoding_format")


def _dimensions(spec: ModelSpec, raw: Any) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        raise EmbeddingsError(400, "'dimensions' must be a positive integer", "dimensions")
    size = spec.outputs.size
    if raw == size:
        return None
    supported = sorted({*spec.outputs.dimensions, *([size] if size is not None else [])})
    if raw not in spec.outputs.dimensions:
        sizes = ", ".join(map(str, supported)) or "none declared"
        raise EmbeddingsError(
            400, f"the model {spec.name!r} cannot give {raw} dimensions (it supports: {sizes})", "dimensions"
        )
    return raw


def shape_embeddings(vectors: Any, dimensions: int | None) -> np.ndarray[Any, np.dtype[np.float32]]:
    """The vectors as a C-contiguous float32 array, cut to ``dimensions`` floats and L2-renormalised
    when asked (the Matryoshka convention of OpenAI's text-embedding-3 models)."""
    array = np.ascontiguousarray(vectors, dtype=np.float32)
    if dimensions is None or dimensions >= array.shape[1]:
        return array
    cut = array[:, :dimensions].astype(np.float64)
    norms = np.linalg.norm(cut, axis=1, keepdims=True)
    return np.ascontiguousarray(cut / np.where(norms > 0, norms, 1.0), dtype=np.float32)


def encode_embeddings_response(
    request: EmbeddingsRequest, vectors: Sequence[Sequence[float]] | np.ndarray[Any, Any], prompt_tokens: int
) -> bytes:
    """The JSON body: ``{"object": "list", "data": [...], "model", "usage"}``; ``prompt_tokens`` counts
    the tokens the model saw (after truncation)."""
    array = shape_embeddings(vectors, request.dimensions)
    data: list[dict[str, Any]] = []
    for index, row in enumerate(array):
        embedding: Any = (
            base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
            if request.encoding_format == "base64"
            else row
        )
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    body = {
        "object": "list",
        "data": data,
        "model": request.model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def model_entry(name: str, created: int, details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One ``GET /v1/models`` entry: OpenAI's ``id``/``object``/``created``/``owned_by``, then our own
    descriptive fields (the SDK's ``Model`` keeps extra fields)."""
    entry: dict[str, Any] = {"id": name, "object": "model", "created": created, "owned_by": OWNED_BY}
    for key, value in (details or {}).items():
        entry.setdefault(key, value)
    return entry


def model_list(entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The ``GET /v1/models`` document, ``{"object": "list", "data": [...]}``."""
    return {"object": "list", "data": list(entries)}
