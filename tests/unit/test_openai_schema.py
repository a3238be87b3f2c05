"""The OpenAI-compatible embeddings codec, proven against the real ``openai`` SDK without a server: the
client's own request and response code runs over an in-memory transport that calls the codec."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx2
import numpy as np
import openai
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.api.openai_schema import (
    EmbeddingsError,
    EmbeddingsRequest,
    encode_embeddings_response,
    error_body,
    error_type,
    model_entry,
    model_list,
    parse_embeddings_body,
    parse_embeddings_request,
    shape_embeddings,
)
from service.core.repository import ModelRepository, ModelSpec

SPECS = {name: ModelRepository().get(name).spec for name in ("minilm", "reference")}
MINILM = SPECS["minilm"]
# a model declared as cut-able to 128 or 64 floats, to exercise `dimensions`
MATRYOSHKA = MINILM.model_copy(
    update={"name": "matryoshka", "outputs": MINILM.outputs.model_copy(update={"dimensions": (128, 64)})}
)
SERVED = {**SPECS, "matryoshka": MATRYOSHKA}
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def lookup(name: str) -> ModelSpec | None:
    return SERVED.get(name)


def fake_vectors(texts: list[str], size: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    """Deterministic unit vectors standing in for the model's outputs."""
    rng = np.random.default_rng(len(texts))
    vectors = rng.standard_normal((len(texts), size)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def respond(request: httpx2.Request) -> httpx2.Response:
    """What a handler does with the codec (dispatch replaced by fake vectors; token count = characters)."""
    if request.url.path.endswith("/models"):
        entries = [
            model_entry(spec.name, 1_700_000_000, {"version": spec.version}) for spec in SPECS.values()
        ]
        return httpx2.Response(200, json=model_list(entries))
    try:
        parsed = parse_embeddings_body(request.content, lookup)
    except EmbeddingsError as exc:
        headers = {"Retry-After": "1"} if exc.status in (429, 503) else {}
        return httpx2.Response(exc.status, json=exc.body(), headers=headers)
    size = SERVED[parsed.model].outputs.size or 1
    vectors = fake_vectors(parsed.inputs, size)
    tokens = sum(len(text) for text in parsed.inputs)
    body = encode_embeddings_response(parsed, vectors, tokens)
    return httpx2.Response(200, content=body, headers={"content-type": "application/json"})


@pytest.fixture
def client() -> Iterator[openai.OpenAI]:
    with httpx2.Client(transport=httpx2.MockTransport(respond)) as http:
        yield openai.OpenAI(api_key="k", base_url="http://codec.test/v1", http_client=http, max_retries=0)


def test_sdk_default_settings_decode_base64(client: openai.OpenAI) -> None:
    texts = ["hello", "wörld"]
    result = client.embeddings.create(model="minilm", input=texts)  # the SDK asks for base64
    expected = fake_vectors(texts, 384)
    assert [item.index for item in result.data] == [0, 1]
    assert np.array_equal(np.array([item.embedding for item in result.data], dtype=np.float32), expected)
    assert result.model == "minilm" and result.object == "list"
    assert result.usage.prompt_tokens == result.usage.total_tokens == 10


def test_sdk_float_format(client: openai.OpenAI) -> None:
    result = client.embeddings.create(model="minilm", input="one text", encoding_format="float")
    assert len(result.data) == 1 and len(result.data[0].embedding) == 384
    # float32 values survive JSON exactly
    assert np.array_equal(np.array(result.data[0].embedding, dtype=np.float32), fake_vectors(["x"], 384)[0])


def test_sdk_explicit_base64_is_little_endian_float32(client: openai.OpenAI) -> None:
    result = client.embeddings.create(model="minilm", input=["a"], encoding_format="base64")
    raw = base64.b64decode(result.data[0].embedding)  # type: ignore[arg-type]
    assert np.array_equal(np.frombuffer(raw, dtype="<f4"), fake_vectors(["a"], 384)[0])


def test_sdk_dimensions(client: openai.OpenAI) -> None:
    full = client.embeddings.create(model="minilm", input=["a"], dimensions=384)
    assert len(full.data[0].embedding) == 384
    cut = client.embeddings.create(model="matryoshka", input=["a"], dimensions=64)
    vector = np.array(cut.data[0].embedding)
    assert vector.shape == (64,) and abs(np.linalg.norm(vector) - 1) < 1e-5
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="minilm", input=["a"], dimensions=128)
    assert caught.value.param == "dimensions" and "supports: 384" in caught.value.message


def test_sdk_errors_have_the_right_classes(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.embeddings.create(model="nope", input="a")
    assert missing.value.code == "model_not_found" and missing.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as tokens:
        client.embeddings.create(model="minilm", input=[[1, 2, 3]])
    assert tokens.value.param == "input" and tokens.value.code == "token_ids_not_supported"
    assert "check_embedding_ctx_length=False" in tokens.value.message
    with pytest.raises(openai.BadRequestError, match="takes vectors, not text"):
        client.embeddings.create(model="reference", input="a")


def test_sdk_lists_models(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [model.id for model in models] == ["minilm", "reference"]
    first = next(iter(models))
    assert (
        first.object == "model" and first.owned_by == "inference-service" and first.created == 1_700_000_000
    )
    assert first.model_dump()["version"] == MINILM.version  # our own fields come through


# --- parsing ---------------------------------------------------------------------------------------


def parse(payload: Any) -> EmbeddingsRequest:
    return parse_embeddings_request(payload, lookup)


def refuse(payload: Any, status: int, match: str, param: str | None = "input") -> None:
    with pytest.raises(EmbeddingsError, match=match) as caught:
        parse(payload)
    assert caught.value.status == status and caught.value.param == param


def test_accepted_forms() -> None:
    assert parse({"model": "minilm", "input": "a"}) == EmbeddingsRequest("minilm", ["a"])
    request = parse(
        {
            "model": "minilm",
            "input": ["a", ""],
            "encoding_format": "base64",
            "user": "u-1",
            "future": {"x": 1},
        }
    )
    assert request == EmbeddingsRequest("minilm", ["a", ""], "base64", None)
    assert (
        parse({"model": "minilm", "input": "a", "encoding_format": None, "dimensions": None}).dimensions
        is None
    )
    assert parse({"model": "minilm", "input": "a", "dimensions": 384}).dimensions is None
    assert parse({"model": "matryoshka", "input": "a", "dimensions": 128}).dimensions == 128
    assert len(parse({"model": "minilm", "input": ["x" * 10_000] * 256}).inputs) == 256


def test_refused_forms() -> None:
    refuse([], 400, "must be a JSON object", None)
    refuse({"input": "a"}, 400, "'model' is required", "model")
    refuse({"model": 3, "input": "a"}, 400, "'model' is required", "model")
    refuse({"model": "gpt", "input": "a"}, 404, "does not exist", "model")
    refuse({"model": "reference", "input": "a"}, 400, "takes vectors", "model")
    refuse({"model": "minilm"}, 400, "'input' is required")
    refuse({"model": "minilm", "input": []}, 400, "must not be an empty list")
    refuse({"model": "minilm", "input": ["a"] * 257}, 400, "257 items; the model takes at most 256")
    refuse({"model": "minilm", "input": ["a", 3]}, 400, r"input\[1\]: the input must be a string, got int")
    refuse({"model": "minilm", "input": ["a", None]}, 400, "got null")
    refuse({"model": "minilm", "input": {"a": 1}}, 400, "a string or a list of strings")
    refuse({"model": "minilm", "input": 7}, 400, "a string or a list of strings")
    refuse({"model": "minilm", "input": [1, 2]}, 400, "token ids")
    refuse({"model": "minilm", "input": [[1], [2]]}, 400, "token ids")
    refuse(
        {"model": "minilm", "input": "x" * 10_001}, 400, "10001 characters; the model accepts at most 10000"
    )
    refuse(
        {"model": "minilm", "input": "a", "encoding_format": "int8"},
        400,
        "'float' or 'base64'",
        "encoding_format",
    )
    for bad in (0, -1, 1.5, True, "128"):
        refuse({"model": "minilm", "input": "a", "dimensions": bad}, 400, "positive integer", "dimensions")
    refuse({"model": "matryoshka", "input": "a", "dimensions": 100}, 400, "64, 128, 384", "dimensions")
    refuse({"model": "minilm", "input": "a", "user": 5}, 400, "'user' must be a string", "user")
    with pytest.raises(EmbeddingsError, match="not valid JSON") as caught:
        parse_embeddings_body(b"{nope", lookup)
    assert caught.value.status == 400


def test_error_bodies_have_openai_shape() -> None:
    assert error_body(429, "slow down", code="rate_limit_exceeded") == {
        "error": {
            "message": "slow down",
            "type": "rate_limit_error",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    assert EmbeddingsError(400, "bad", "input").body()["error"]["type"] == "invalid_request_error"
    assert {status: error_type(status) for status in (401, 404, 413, 422, 503, 504, 500)} == {
        401: "authentication_error",
        404: "invalid_request_error",
        413: "invalid_request_error",
        422: "invalid_request_error",
        503: "server_error",
        504: "timeout_error",
        500: "server_error",
    }


def test_response_shape_and_float_precision() -> None:
    vectors = np.array([[0.1, -2.5, 1e-8], [3.0, 0.0, -0.0]], dtype=np.float32)
    body = orjson.loads(encode_embeddings_response(EmbeddingsRequest("m", ["a", "b"]), vectors, 7))
    assert body["object"] == "list" and body["model"] == "m"
    assert body["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    assert [item["object"] for item in body["data"]] == ["embedding", "embedding"]
    assert np.array_equal(np.array([item["embedding"] for item in body["data"]], dtype=np.float32), vectors)
    # JSON parsers that do not know float32 (json, JavaScript) read the same numbers
    assert json.loads(encode_embeddings_response(EmbeddingsRequest("m", ["a", "b"]), vectors, 7)) == body


def test_shape_embeddings_cuts_and_renormalises() -> None:
    vectors = np.array([[3.0, 4.0, 12.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    assert np.array_equal(shape_embeddings(vectors, None), vectors)
    cut = shape_embeddings(vectors, 2)
    assert np.allclose(cut, [[0.6, 0.8], [0.0, 0.0]])  # a zero prefix stays zero, never NaN


# --- properties ------------------------------------------------------------------------------------


@SETTINGS
@given(
    texts=st.lists(st.text(max_size=30), min_size=1, max_size=10),
    encoding=st.sampled_from(["float", "base64"]),
)
def test_random_requests_round_trip(texts: list[str], encoding: str) -> None:
    request = parse({"model": "minilm", "input": texts, "encoding_format": encoding})
    assert request.inputs == texts
    vectors = fake_vectors(texts, 384)
    data = orjson.loads(encode_embeddings_response(request, vectors, 0))["data"]
    decoded: list[Any] = [
        np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
        if encoding == "base64"
        else item["embedding"]
        for item in data
    ]
    assert np.array_equal(np.array(decoded, dtype=np.float32), vectors)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8)),
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=25,
)
near_valid = st.fixed_dictionaries(
    {},
    optional={
        "model": st.one_of(st.sampled_from(list(SERVED)), json_values),
        "input": json_values,
        "encoding_format": st.one_of(st.sampled_from(["float", "base64"]), json_values),
        "dimensions": st.one_of(st.sampled_from([64, 128, 384]), json_values),
        "user": json_values,
    },
)


@SETTINGS
@given(payload=st.one_of(near_valid, json_values), raw=st.binary(max_size=80))
def test_garbage_raises_only_embeddings_errors(payload: Any, raw: bytes) -> None:
    for body in (json.dumps(payload).encode(), raw):
        try:
            request = parse_embeddings_body(body, lookup)
        except EmbeddingsError as exc:
            assert exc.status in (400, 404) and exc.body()["error"]["message"]
        else:
            assert request.inputs and all(isinstance(text, str) for text in request.inputs)
