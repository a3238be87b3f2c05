"""OpenAI-compatible embeddings with the real ``openai`` SDK against a real server serving minilm
and the reference model: default settings (base64) and floats equal the native route's outputs,
``models.list()``/``retrieve()``, and errors raise the SDK's own exception classes."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import numpy as np
import openai
import pytest

from tests.conftest import API_KEY
from tests.support import ServerProcess

SENTENCES = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]


@pytest.fixture
def client(server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60) as client:
        yield client


def native(server: ServerProcess, texts: list[str]) -> np.ndarray:
    response = server.post("/v1/models/minilm/predict", {"inputs": texts})
    assert response.status_code == 200, response.text
    return np.array(response.json()["outputs"], dtype=np.float32)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_default_settings_equal_the_native_route(server: ServerProcess, client: openai.OpenAI) -> None:
    # the SDK asks for base64 when the caller does not choose, and decodes little-endian float32
    result = client.embeddings.create(model="minilm", input=SENTENCES)
    assert result.model == "minilm" and result.object == "list"
    assert [item.index for item in result.data] == [0, 1, 2]
    embeddings = np.array([item.embedding for item in result.data], dtype=np.float32)
    assert embeddings.shape == (3, 384)
    assert cosines(embeddings, native(server, SENTENCES)).min() >= 0.9999


def test_float_format_and_a_single_string(server: ServerProcess, client: openai.OpenAI) -> None:
    result = client.embeddings.create(model="minilm", input=SENTENCES[0], encoding_format="float", user="u1")
    (item,) = result.data
    assert len(item.embedding) == 384 and all(isinstance(value, float) for value in item.embedding)
    assert cosines(np.array([item.embedding]), native(server, SENTENCES[:1])).min() >= 0.9999
    full = client.embeddings.create(
        model="minilm", input=SENTENCES[0], dimensions=384, encoding_format="float"
    )
    assert np.abs(np.array(full.data[0].embedding) - np.array(item.embedding)).max() <= 1e-6


def test_base64_is_little_endian_float32(server: ServerProcess) -> None:
    response = server.post(
        "/v1/embeddings", {"model": "minilm", "input": ["hello"], "encoding_format": "base64"}
    )
    assert response.status_code == 200, response.text
    vector = np.frombuffer(base64.b64decode(response.json()["data"][0]["embedding"]), dtype="<f4")
    assert vector.shape == (384,)
    assert cosines(vector[None, :], native(server, ["hello"])).min() >= 0.9999


def test_usage_counts_the_model_tokens(client: openai.OpenAI) -> None:
    # NEEDS the worker to fill PredictResult.tokens with the model's token counts after
    # truncation; until it does, usage reads 0 and this test fails, as it should.
    result = client.embeddings.create(model="minilm", input=["hello world", "x " * 2000])
    assert result.usage.prompt_tokens > 0
    assert result.usage.total_tokens == result.usage.prompt_tokens
    assert result.usage.prompt_tokens <= 2 * 256  # minilm truncates each text to 256 tokens


def test_models_list_and_retrieve(server: ServerProcess, client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [model.id for model in models] == ["minilm", "reference"]
    assert all(model.object == "model" and model.owned_by == "inference-service" for model in models)
    retrieved = client.models.retrieve("minilm")
    assert retrieved.id == "minilm" and retrieved.created > 0
    # the native listing is still there, and both carry our descriptive fields
    listing = server.client.get("/v1/models").json()
    assert [entry["name"] for entry in listing["models"]] == ["minilm", "reference"]
    assert listing["data"][0]["task"] == "feature-extraction" and listing["data"][0]["max_batch_size"] == 16
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"input": []}, "input"),
        ({"input": ["a"] * 257}, "input"),
        ({"input": ["x" * 10_001]}, "input"),
        ({"input": [[1, 2, 3]]}, "input"),
        ({"input": [1, 2, 3]}, "input"),
        ({"input": ["ok", 3]}, "input"),
        ({"input": "a", "dimensions": 100}, "dimensions"),
        ({"input": "a", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "a", "model": "reference"}, "model"),
    ],
    ids=[
        "empty",
        "too-many",
        "too-long",
        "token-lists",
        "token-ids",
        "non-string",
        "dimensions",
        "format",
        "vector-model",
    ],
)
def test_bad_input_raises_bad_request(client: openai.OpenAI, kwargs: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        client.embeddings.create(**{"model": "minilm", **kwargs})
    assert error.value.status_code == 400 and error.value.param == param
    assert error.value.type == "invalid_request_error"


def test_an_unknown_model_raises_not_found(server: ServerProcess, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as error:
        client.embeddings.create(model="nope", input="a")
    assert error.value.code == "model_not_found"
    response = server.post("/v1/embeddings", {"model": "nope", "input": "a"})
    body = response.json()
    assert response.status_code == 404 and set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}


def test_server_errors_come_in_openai_shape(server: ServerProcess) -> None:
    for response in (
        server.client.post("/v1/embeddings", content=b"{not json"),
        server.client.post("/v1/embeddings", content=b" " * (9 * 1024 * 1024)),
        server.client.post("/v1/embeddings", content=b"{}", headers={"x-request-timeout": "soon"}),
        server.client.post("/v1/embeddings", content=b"{}", headers={"content-encoding": "br"}),
    ):
        assert response.status_code in (400, 413, 415), response.text
        error = response.json()["error"]
        assert isinstance(error, dict) and error["message"] and error["type"] == "invalid_request_error"


def test_api_keys_raise_authentication_error(keyed_server: ServerProcess) -> None:
    url = f"{keyed_server.url}/v1"
    with openai.OpenAI(base_url=url, api_key="wrong", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError) as error:
            client.embeddings.create(model="reference", input="a")
        assert error.value.code == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
    with openai.OpenAI(base_url=url, api_key=API_KEY, max_retries=0) as client:
        assert [model.id for model in client.models.list()] == ["reference"]
        with pytest.raises(openai.BadRequestError):  # past the key: reference takes vectors, not text
            client.embeddings.create(model="reference", input="a")
