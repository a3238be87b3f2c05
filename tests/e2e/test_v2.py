"""The Open Inference Protocol (v2) with the real ``tritonclient.http`` against a real server
serving minilm and the reference model: health, metadata, and inference with binary and JSON
tensors, compared with the native route's outputs."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.conftest import API_KEY
from tests.support import ServerProcess

SENTENCES = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium.", ""]
VECTORS = np.random.default_rng(0).normal(size=(5, 16)).astype(np.float32)


@pytest.fixture
def client(server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(f"127.0.0.1:{server.port}", network_timeout=60.0) as client:
        yield client


def native(server: ServerProcess, model: str, inputs: list) -> np.ndarray:
    response = server.post(f"/v1/models/{model}/predict", {"inputs": inputs})
    assert response.status_code == 200, response.text
    return np.array(response.json()["outputs"], dtype=np.float32)


def text_input(texts: list[str], binary: bool, shape: list[int] | None = None) -> triton.InferInput:
    data = np.array([text.encode() for text in texts], dtype=np.object_)
    tensor = triton.InferInput("TEXT", shape or [len(texts)], "BYTES")
    tensor.set_data_from_numpy(data.reshape(shape or [len(texts)]), binary_data=binary)
    return tensor


def vector_input(vectors: np.ndarray, binary: bool, datatype: str = "FP32") -> triton.InferInput:
    tensor = triton.InferInput("INPUT", list(vectors.shape), datatype)
    tensor.set_data_from_numpy(vectors, binary_data=binary)
    return tensor


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_server_and_model_health(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("minilm") and client.is_model_ready("reference")
    assert client.is_model_ready("minilm", model_version="1.0.0")
    assert not client.is_model_ready("nope")
    assert not client.is_model_ready("minilm", model_version="2.0.0")


def test_server_metadata_names_the_binary_extension(client: triton.InferenceServerClient) -> None:
    metadata = client.get_server_metadata()
    assert metadata["name"] == "inference-service" and metadata["version"]
    assert "binary_tensor_data" in metadata["extensions"]


def test_model_metadata_reports_the_declared_tensors(client: triton.InferenceServerClient) -> None:
    assert client.get_model_metadata("minilm") == {
        "name": "minilm",
        "versions": ["1.0.0"],
        "platform": "pytorch",
        "inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "EMBEDDING", "datatype": "FP32", "shape": [-1, 384]}],
    }
    reference = client.get_model_metadata("reference", model_version="1.0.0")
    assert reference["inputs"] == [{"name": "INPUT", "datatype": "FP32", "shape": [-1, 16]}]
    assert reference["outputs"] == [{"name": "OUTPUT", "datatype": "FP32", "shape": [-1, 4]}]
    for name, version in (("nope", ""), ("minilm", "2.0.0")):
        with pytest.raises(InferenceServerException) as error:
            client.get_model_metadata(name, model_version=version)
        assert error.value.status() == "404" and name in error.value.message()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_minilm_outputs_equal_the_native_route(
    server: ServerProcess, client: triton.InferenceServerClient, binary: bool
) -> None:
    result = client.infer(
        "minilm",
        [text_input(SENTENCES, binary)],
        outputs=[triton.InferRequestedOutput("EMBEDDING", binary_data=binary)],
        request_id="v2-request-1",
    )
    embeddings = result.as_numpy("EMBEDDING")
    assert embeddings is not None and embeddings.shape == (4, 384) and embeddings.dtype == np.float32
    assert cosines(embeddings, native(server, "minilm", SENTENCES)).min() >= 0.9999
    response = result.get_response()
    assert response["id"] == "v2-request-1"
    assert response["model_name"] == "minilm" and response["model_version"] == "1.0.0"
    assert ("data" in response["outputs"][0]) is not binary


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_reference_outputs_equal_the_native_route(
    server: ServerProcess, client: triton.InferenceServerClient, binary: bool
) -> None:
    result = client.infer(
        "reference",
        [vector_input(VECTORS, binary)],
        outputs=[triton.InferRequestedOutput("OUTPUT", binary_data=binary)],
    )
    outputs = result.as_numpy("OUTPUT")
    assert outputs is not None and outputs.shape == (5, 4)
    assert np.abs(outputs - native(server, "reference", VECTORS.tolist())).max() <= 1e-5


def test_default_call_text_shape_n_by_1_and_versioned_route(
    server: ServerProcess, client: triton.InferenceServerClient
) -> None:
    expected = native(server, "minilm", SENTENCES[:2])
    # tritonclient's defaults: binary input, no requested outputs (binary_data_output)
    default = client.infer("minilm", [text_input(SENTENCES[:2], True)]).as_numpy("EMBEDDING")
    column = client.infer("minilm", [text_input(SENTENCES[:2], True, shape=[2, 1])]).as_numpy("EMBEDDING")
    versioned = client.infer("minilm", [text_input(SENTENCES[:2], False)], model_version="1.0.0")
    for outputs in (default, column, versioned.as_numpy("EMBEDDING")):
        assert outputs is not None and cosines(outputs, expected).min() >= 0.9999
    with pytest.raises(InferenceServerException) as error:
        client.infer("minilm", [text_input(SENTENCES[:2], True)], model_version="2.0.0")
    assert error.value.status() == "404"


@pytest.mark.parametrize("datatype", ["FP64", "FP16", "INT32", "INT64", "UINT8"])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_numbers_of_another_datatype_are_converted_exactly(
    server: ServerProcess, client: triton.InferenceServerClient, datatype: str, binary: bool
) -> None:
    dtype = {"FP64": np.float64, "FP16": np.float16, "INT32": np.int32, "INT64": np.int64, "UINT8": np.uint8}
    values = (np.arange(32).reshape(2, 16) % 7).astype(dtype[datatype])
    outputs = client.infer("reference", [vector_input(values, binary, datatype)]).as_numpy("OUTPUT")
    assert outputs is not None
    assert np.abs(outputs - native(server, "reference", values.astype(np.float32).tolist())).max() <= 1e-5


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests(
    server: ServerProcess, client: triton.InferenceServerClient, algorithm: str
) -> None:
    result = client.infer("reference", [vector_input(VECTORS, True)], request_compression_algorithm=algorithm)
    outputs = result.as_numpy("OUTPUT")
    assert outputs is not None
    assert np.abs(outputs - native(server, "reference", VECTORS.tolist())).max() <= 1e-5


@pytest.mark.parametrize(
    ("inputs", "status", "fragment"),
    [
        (lambda: [vector_input(VECTORS[:, :8].copy(), True)], "400", "shape"),
        (lambda: [vector_input(VECTORS > 0, False, "BOOL")], "400", "BOOL"),
        (lambda: [text_input(["a"], True)], "400", "INPUT"),
    ],
    ids=["wrong-shape", "bool", "wrong-input-name"],
)
def test_client_mistakes_raise_with_the_status_and_message(
    server: ServerProcess, client: triton.InferenceServerClient, inputs, status: str, fragment: str
) -> None:
    with pytest.raises(InferenceServerException) as error:
        client.infer("reference", inputs())
    assert error.value.status() == status and fragment in error.value.message()
    assert client.is_server_ready()


def test_errors_are_json_with_an_error_key(server: ServerProcess) -> None:
    for response in (
        server.client.post("/v2/models/nope/infer", content=b"{}"),
        server.client.post("/v2/models/reference/infer", content=b"{not json"),
        server.client.post("/v2/models/reference/infer", content=b"{}", headers={"content-encoding": "br"}),
        server.client.post(
            "/v2/models/reference/infer", content=b"{}", headers={"x-request-timeout": "soon"}
        ),
        server.client.get("/v2/models/reference/versions/0.0.1"),
    ):
        assert 400 <= response.status_code < 500, response.text
        assert response.headers["content-type"] == "application/json"
        assert set(response.json()) == {"error"}


def test_api_keys_guard_the_model_routes_not_health(keyed_server: ServerProcess) -> None:
    with triton.InferenceServerClient(f"127.0.0.1:{keyed_server.port}") as client:
        assert client.is_server_live() and client.is_server_ready()
        assert client.get_server_metadata()["name"] == "inference-service"
        with pytest.raises(InferenceServerException) as error:
            client.infer("reference", [vector_input(VECTORS, True)])
        assert error.value.status() == "401"
        with pytest.raises(InferenceServerException) as error:
            client.get_model_metadata("reference")
        assert error.value.status() == "401"
        assert not client.is_model_ready("reference")
        headers = {"Authorization": f"Bearer {API_KEY}"}
        assert client.is_model_ready("reference", headers=headers)
        outputs = client.infer("reference", [vector_input(VECTORS, True)], headers=headers).as_numpy("OUTPUT")
        assert outputs is not None and outputs.shape == (5, 4)
    assert (
        httpx.get(f"{keyed_server.url}/v2/models/reference", headers={"X-API-Key": API_KEY}).status_code
        == 200
    )
