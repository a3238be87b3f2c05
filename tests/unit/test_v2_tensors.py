"""The Open Inference Protocol (v2) codec, proven against the real ``tritonclient.http`` without a server:
its request-building code makes the bodies we parse, its ``InferResult`` reads the bodies we encode."""

from __future__ import annotations

import json
import struct
from typing import Any

import ml_dtypes
import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.http._utils import _get_inference_request

from service.api.v2_tensors import (
    FLOAT32_MAX,
    HEADER_LENGTH,
    InferRequest,
    TensorError,
    encode_infer_response,
    model_metadata,
    parse_infer_request,
    server_metadata,
)
from service.core.repository import ModelRepository, ModelSpec, OutputSpec

SPECS = {name: ModelRepository().get(name).spec for name in ("minilm", "reference")}
TEXT, VECTOR = SPECS["minilm"], SPECS["reference"]
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def triton_body(
    inputs: list[triton.InferInput],
    outputs: list[triton.InferRequestedOutput] | None = None,
    request_id: str = "",
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, str | None]:
    """The body and Inference-Header-Content-Length exactly as ``InferenceServerClient.infer`` sends them."""
    body, json_size = _get_inference_request(
        inputs=inputs,
        request_id=request_id,
        outputs=outputs,
        sequence_id=0,
        sequence_start=False,
        sequence_end=False,
        priority=0,
        timeout=None,
        custom_parameters=parameters,
    )
    return body, None if json_size is None else str(json_size)


def tensor(name: str, array: np.ndarray[Any, Any], datatype: str, binary: bool) -> triton.InferInput:
    infer_input = triton.InferInput(name, list(array.shape), datatype)
    infer_input.set_data_from_numpy(array, binary_data=binary)
    return infer_input


def decode(body: bytes, headers: dict[str, str]) -> triton.InferResult:
    length = headers.get(HEADER_LENGTH)
    return triton.InferResult.from_response_body(body, header_length=None if length is None else int(length))


def raw_request(document: dict[str, Any], binary: bytes = b"") -> tuple[bytes, str | None]:
    header = json.dumps(document).encode()  # not orjson: integers past 64 bits must get through
    return header + binary, str(len(header)) if binary else None


def vector_input(data: Any = None, shape: Any = None, datatype: str = "FP32", **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": "INPUT", "shape": shape or [1, 16], "datatype": datatype, **extra}
    if data is not None:
        entry["data"] = data
    return {"inputs": [entry]}


def vector_input_tensor(rows: int) -> triton.InferInput:
    return tensor("INPUT", np.zeros((rows, 16), dtype=np.float32), "FP32", binary=True)


def refuse(spec: ModelSpec, body: bytes, header: str | None, status: int, match: str) -> None:
    with pytest.raises(TensorError, match=match) as caught:
        parse_infer_request(spec, body, header)
    assert caught.value.status == status


# --- requests the real client builds ---------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("shape", [(3,), (3, 1)])
def test_text_inputs_from_tritonclient(binary: bool, shape: tuple[int, ...]) -> None:
    texts = np.array(["héllo wörld", "", "naïve ☃ 🙂"], dtype=object).reshape(shape)
    body, header = triton_body([tensor("TEXT", texts, "BYTES", binary)], request_id="req-7")
    request = parse_infer_request(TEXT, body, header)
    assert request.inputs == ["héllo wörld", "", "naïve ☃ 🙂"]
    assert request.id == "req-7"
    assert request.binary_output("EMBEDDING")  # no outputs named: tritonclient asks for binary


NUMBER_TYPES = [np.float32, np.float64, np.float16, np.int8, np.int16, np.int32, np.int64]
NUMBER_TYPES += [np.uint8, np.uint16, np.uint32, np.uint64]


@pytest.mark.parametrize(
    ("dtype", "binary"),
    [(dtype, binary) for dtype in NUMBER_TYPES for binary in (True, False)]
    + [(ml_dtypes.bfloat16, True)],  # tritonclient sends BF16 only as binary data
)
def test_numbers_of_any_exact_datatype_become_float32(dtype: Any, binary: bool) -> None:
    rng = np.random.default_rng(0)
    source = (rng.standard_normal((5, 16)) * 50).astype(np.float32)
    if np.issubdtype(dtype, np.unsignedinteger):
        source = np.abs(source)
    source = source.astype(dtype)
    datatype = triton.np_to_triton_dtype(source.dtype)
    body, header = triton_body([tensor("INPUT", source, datatype, binary)])
    request = parse_infer_request(VECTOR, body, header)
    assert np.array_equal(np.array(request.inputs, dtype=np.float32), source.astype(np.float32))


def test_integers_past_float32_precision_are_refused() -> None:
    exact = np.array([[2**24, -(2**24), 2**25, 2**40] + [0] * 12], dtype=np.int64)
    body, header = triton_body([tensor("INPUT", exact, "INT64", True)])
    assert parse_infer_request(VECTOR, body, header).inputs[0][:4] == [2**24, -(2**24), 2**25, 2**40]
    inexact = exact.copy()
    inexact[0, 3] = 2**24 + 1
    body, header = triton_body([tensor("INPUT", inexact, "INT64", True)])
    refuse(VECTOR, body, header, 400, r"element 3 \(16777217\) is not exactly a float32")


def test_doubles_are_rounded_within_float32_range_and_refused_past_it() -> None:
    values = np.full((1, 16), 0.1, dtype=np.float64)
    body, header = triton_body([tensor("INPUT", values, "FP64", True)])
    assert parse_infer_request(VECTOR, body, header).inputs[0][0] == float(np.float32(0.1))
    values[0, 5] = 1e39
    for binary in (True, False):
        body, header = triton_body([tensor("INPUT", values, "FP64", binary)])
        refuse(VECTOR, body, header, 400, "element 5 is beyond float32's range")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_non_finite_numbers_are_refused(bad: float, dtype: Any) -> None:
    values = np.zeros((2, 16), dtype=dtype)
    values[1, 2] = bad
    body, header = triton_body([tensor("INPUT", values, triton.np_to_triton_dtype(values.dtype), True)])
    refuse(VECTOR, body, header, 400, "element 18 is not a finite number")


def test_requested_outputs_choose_binary_or_json() -> None:
    values = np.zeros((1, 16), dtype=np.float32)
    inputs = [tensor("INPUT", values, "FP32", True)]
    for binary in (True, False):
        body, header = triton_body(inputs, [triton.InferRequestedOutput("OUTPUT", binary_data=binary)])
        assert parse_infer_request(VECTOR, body, header).binary_output("OUTPUT") is binary
    # an output's own binary_data overrides the request's binary_data_output
    document = vector_input([0.0] * 16)
    document["outputs"] = [{"name": "OUTPUT", "parameters": {"binary_data": False}}]
    document["parameters"] = {"binary_data_output": True}
    assert not parse_infer_request(VECTOR, *raw_request(document)).binary_output("OUTPUT")


def test_unknown_parameters_are_ignored_and_kept() -> None:
    values = np.zeros((1, 16), dtype=np.float32)
    body, header = triton_body([tensor("INPUT", values, "FP32", False)], parameters={"tenant": "a", "n": 3})
    request = parse_infer_request(VECTOR, body, header)
    assert request.parameters["tenant"] == "a" and request.inputs == [[0.0] * 16]


def test_nested_json_data_is_accepted() -> None:
    nested = [[float(i + 16 * row) for i in range(16)] for row in range(2)]
    request = parse_infer_request(VECTOR, *raw_request(vector_input(nested, [2, 16])))
    assert request.inputs == nested
    texts = {"inputs": [{"name": "TEXT", "shape": [2, 1], "datatype": "BYTES", "data": [["a"], ["b"]]}]}
    assert parse_infer_request(TEXT, *raw_request(texts)).inputs == ["a", "b"]


# --- responses the real client reads ---------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("request_id", [None, "abc"])
def test_response_decodes_with_tritonclient(binary: bool, request_id: str | None) -> None:
    outputs = np.random.default_rng(1).standard_normal((3, 384)).astype(np.float32)
    request = InferRequest(id=request_id, inputs=["a", "b", "c"], binary_data_output=binary)
    body, headers = encode_infer_response(TEXT, request, outputs)
    assert (HEADER_LENGTH in headers) is binary
    assert headers["Content-Type"] == ("application/octet-stream" if binary else "application/json")
    result = decode(body, headers)
    assert np.array_equal(result.as_numpy("EMBEDDING"), outputs)  # float32 exactly, both ways
    response = result.get_response()
    assert response["model_name"] == "minilm" and response["model_version"] == TEXT.version
    assert response.get("id") == request_id
    assert response["outputs"][0]["shape"] == [3, 384] and response["outputs"][0]["datatype"] == "FP32"


def test_response_accepts_lists_of_floats() -> None:
    request = InferRequest(id=None, inputs=[[0.0] * 16] * 2)
    body, headers = encode_infer_response(VECTOR, request, [[0.5, -1.0, 2.0, 3.25], [0.0, 0.0, 0.0, 1.0]])
    assert decode(body, headers).as_numpy("OUTPUT").tolist() == [[0.5, -1.0, 2.0, 3.25], [0.0, 0.0, 0.0, 1.0]]


def test_metadata_documents() -> None:
    assert server_metadata("inference-service", "0.1.0") == {
        "name": "inference-service",
        "version": "0.1.0",
        "extensions": ["binary_tensor_data", "classification"],
    }
    text = model_metadata(TEXT)
    assert text["inputs"] == [{"name": "TEXT", "datatype": "BYTES", "shape": [-1]}]
    assert text["outputs"] == [{"name": "EMBEDDING", "datatype": "FP32", "shape": [-1, 384]}]
    assert text["versions"] == [TEXT.version] and text["name"] == "minilm"
    vector = model_metadata(VECTOR)
    assert vector["inputs"] == [{"name": "INPUT", "datatype": "FP32", "shape": [-1, 16]}]
    assert vector["outputs"] == [{"name": "OUTPUT", "datatype": "FP32", "shape": [-1, 4]}]
    undeclared = VECTOR.model_copy(update={"outputs": VECTOR.outputs.model_copy(update={"size": None})})
    assert model_metadata(undeclared)["outputs"][0]["shape"] == [-1, -1]


# --- hostile requests ------------------------------------------------------------------------------


def bytes_tensor(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def text_request(shape: list[int], binary: bytes, size: int | None = None) -> tuple[bytes, str]:
    document = {
        "inputs": [
            {
                "name": "TEXT",
                "shape": shape,
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(binary) if size is None else size},
            }
        ]
    }
    header = orjson.dumps(document)
    return header + binary, str(len(header))


def test_binary_layout_errors() -> None:
    body, header = text_request([1], bytes_tensor([b"hi"]))
    assert parse_infer_request(TEXT, body, header).inputs == ["hi"]
    refuse(TEXT, body, str(len(body) + 1), 400, f"{HEADER_LENGTH} is .* only {len(body)} bytes")
    refuse(TEXT, body, "9" * 5000, 400, "only")
    refuse(TEXT, body, "-3", 400, "non-negative integer")
    refuse(TEXT, body, "12abc", 400, "non-negative integer")
    refuse(TEXT, body, "0", 400, "not valid JSON")
    refuse(TEXT, *text_request([1], bytes_tensor([b"hi"]), size=-1), 400, "non-negative integer")
    refuse(TEXT, *text_request([1], bytes_tensor([b"hi"]), size=10**12), 400, "binary_data_size is")
    refuse(
        TEXT,
        *text_request([1], bytes_tensor([b"hi"]), size=3),
        400,
        "3 bytes follow the inference header that no input",
    )
    refuse(TEXT, *text_request([1], bytes_tensor([b"hi"]) + b"x"), 400, "holds more than the 1")
    refuse(TEXT, *text_request([1], struct.pack("<I", 1000) + b"abc"), 400, "1000 bytes past the end")
    refuse(TEXT, *text_request([1], struct.pack("<I", 2**32 - 1)), 400, "past the end")
    refuse(TEXT, *text_request([2], bytes_tensor([b"hi"]) + b"\x01\x00"), 400, "prefix is cut short")
    refuse(TEXT, *text_request([3], bytes_tensor([b"a", b"b"])), 400, "holds 2 elements but the shape says 3")
    refuse(TEXT, *text_request([1], bytes_tensor([b"\xff\xfe"])), 400, "not valid UTF-8")
    # binary data without the header, and a header with trailing bytes nobody claimed
    document = orjson.dumps(orjson.loads(body[: int(header)]))
    refuse(TEXT, document + bytes_tensor([b"hi"]), None, 400, "not valid JSON")
    refuse(TEXT, document, None, 400, "binary_data_size' but there is no")
    json_only = orjson.dumps({"inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES", "data": ["a"]}]})
    refuse(TEXT, json_only + b"xx", str(len(json_only)), 400, "that no input's binary_data_size accounts for")
    vector = orjson.dumps(vector_input(shape=[1, 16], parameters={"binary_data_size": 63}))
    refuse(VECTOR, vector + b"\0" * 63, str(len(vector)), 400, "needs 64 bytes, got 63")


def test_shape_datatype_name_and_count_errors() -> None:
    good = [0.0] * 16
    refuse(VECTOR, *raw_request(vector_input(good * 2, [1, 16])), 400, "holds more than the 16")
    refuse(VECTOR, *raw_request(vector_input(good, [2, 16])), 400, "holds 16 elements but the shape says 32")
    refuse(VECTOR, *raw_request(vector_input(good, [1, 15])), 400, r"does not match .* \[N, 16\]")
    refuse(VECTOR, *raw_request(vector_input(good, [16])), 400, "does not match")
    refuse(VECTOR, *raw_request(vector_input(good, [1, -16])), 400, "negative dimension")
    refuse(VECTOR, *raw_request(vector_input(good, [1, True])), 400, "list of integers")
    refuse(VECTOR, *raw_request(vector_input(good, [2**62, 2**62])), 413, "far past")
    refuse(VECTOR, *raw_request(vector_input(good, [1] * 64)), 413, "far past")
    refuse(VECTOR, *raw_request(vector_input(good, [2**63 - 1, 16])), 413, "at most 1024")
    refuse(VECTOR, *raw_request(vector_input(good, [10**30, 16])), 413, "past 2\\*\\*63")
    refuse(VECTOR, *raw_request(vector_input(good, [1025, 16])), 413, "1025 inputs .* at most 1024")
    refuse(VECTOR, *raw_request(vector_input([], [0, 16])), 400, "at least 1")
    refuse(VECTOR, *raw_request(vector_input(good, datatype="BOOL")), 400, "must be FP32")
    refuse(VECTOR, *raw_request(vector_input(good, datatype="BYTES")), 400, "must be FP32")
    refuse(VECTOR, *raw_request(vector_input(good, datatype="FP8")), 400, "unknown datatype")
    refuse(VECTOR, *raw_request(vector_input([0.5] + [0] * 15, datatype="INT32")), 400, "must be an integer")
    refuse(VECTOR, *raw_request(vector_input([300] + [0] * 15, datatype="INT8")), 400, "outside INT8's range")
    refuse(VECTOR, *raw_request(vector_input([-1] * 16, datatype="UINT8")), 400, "outside UINT8's range")
    refuse(VECTOR, *raw_request(vector_input(["1"] * 16)), 400, "must be a number, got a string")
    refuse(VECTOR, *raw_request(vector_input([True] * 16)), 400, "must be a number, got a boolean")
    refuse(VECTOR, *raw_request(vector_input([4e38] * 16)), 400, "beyond float32's range")
    refuse(VECTOR, *raw_request(vector_input({"a": 1})), 400, "'data' must be a list")
    refuse(VECTOR, *raw_request(vector_input()), 400, "neither 'data' nor 'binary_data_size'")
    wrong_name = {"inputs": [{**vector_input(good)["inputs"][0], "name": "TEXT"}]}
    refuse(VECTOR, *raw_request(wrong_name), 400, "unknown input 'TEXT'.* takes one input, 'INPUT'")
    two = {"inputs": vector_input(good)["inputs"] * 2}
    refuse(VECTOR, *raw_request(two), 400, "one input tensor .*got 2")
    refuse(VECTOR, *raw_request({"inputs": []}), 400, "'inputs' must be a list")
    refuse(VECTOR, *raw_request({"id": 5, **vector_input(good)}), 400, "'id' must be a string")
    refuse(VECTOR, b"[1, 2]", None, 400, "must be a JSON object")
    refuse(VECTOR, b"", None, 400, "not valid JSON")
    shm = vector_input(good, parameters={"shared_memory_region": "r"})
    refuse(VECTOR, *raw_request(shm), 400, "shared memory is not supported")


def test_text_errors() -> None:
    def texts(data: Any, shape: list[int] | None = None, datatype: str = "BYTES") -> tuple[bytes, None]:
        document = {
            "inputs": [{"name": "TEXT", "shape": shape or [len(data)], "datatype": datatype, "data": data}]
        }
        return orjson.dumps(document), None

    refuse(TEXT, *texts(["x" * 10_001]), 413, "10001 characters; the model accepts at most 10000")
    assert parse_infer_request(TEXT, *texts(["x" * 10_000])).inputs == ["x" * 10_000]
    refuse(TEXT, *texts(["a"] * 257), 413, "257 inputs .* at most 256")
    refuse(TEXT, *texts([1, 2]), 400, "element 0 must be a string, got int")
    refuse(TEXT, *texts(["a", None]), 400, "element 1 must be a string, got null")
    refuse(TEXT, *texts(["a"], [1, 2]), 400, r"\[N\] or \[N, 1\]")
    refuse(TEXT, *texts(["a"], datatype="FP32"), 400, "must be BYTES")


def test_output_request_errors() -> None:
    good = vector_input([0.0] * 16)
    cases: list[tuple[Any, str]] = [
        ([{"name": "EMBEDDING"}], "unknown output 'EMBEDDING'"),
        ([{"name": "OUTPUT"}, {"name": "OUTPUT"}], "requested twice"),
        ([{"nom": "OUTPUT"}], "must be an object with a 'name'"),
        ({"name": "OUTPUT"}, "'outputs' must be a list"),
        ([{"name": "OUTPUT", "parameters": {"binary_data": "yes"}}], "true or false"),
        (
            [{"name": "OUTPUT", "parameters": {"classification": 0}}],
            "classification must be a positive integer",
        ),
        (
            [{"name": "OUTPUT", "parameters": {"classification": "3"}}],
            "classification must be a positive integer",
        ),
        (
            [{"name": "OUTPUT", "parameters": {"classification": True}}],
            "classification must be a positive integer",
        ),
        (
            [{"name": "OUTPUT", "parameters": {"shared_memory_region": "r"}}],
            "'shared_memory_region' is not supported",
        ),
    ]
    for outputs, message in cases:
        refuse(VECTOR, *raw_request({**good, "outputs": outputs}), 400, message)
    refuse(VECTOR, *raw_request({**good, "parameters": []}), 400, "'parameters' must be a JSON object")
    bad_flag = {**good, "parameters": {"binary_data_output": 1}}
    refuse(VECTOR, *raw_request(bad_flag), 400, "binary_data_output' must be true or false")


@pytest.mark.parametrize("binary", [False, True])
def test_classification_extension_answers_value_index_label_strings(binary: bool) -> None:
    labelled = VECTOR.model_copy(
        update={"outputs": OutputSpec(kind="classification", size=4, labels=("a", "b", "c", "d"))}
    )
    for spec, suffix in ((VECTOR, ["", ""]), (labelled, [":b", ":d"])):
        outputs = [triton.InferRequestedOutput("OUTPUT", binary_data=binary, class_count=2)]
        request = parse_infer_request(spec, *triton_body([vector_input_tensor(2)], outputs))
        assert request.classification("OUTPUT") == 2
        answer = [[0.5, 2.25, -1.0, 2.25], [0.0, 0.0, 0.0, 1.0]]
        result = decode(*encode_infer_response(spec, request, answer))
        assert result.get_output("OUTPUT")["datatype"] == "BYTES"
        got = result.as_numpy("OUTPUT")
        assert got.shape == (2, 2)
        assert strings(got)[0] == [f"2.250000:1{suffix[0]}", f"2.250000:3{suffix[1]}"]
    wide = parse_infer_request(
        VECTOR, *triton_body([vector_input_tensor(1)], [triton.InferRequestedOutput("OUTPUT", class_count=9)])
    )
    result = decode(*encode_infer_response(VECTOR, wide, [[1.0, 4.0, 3.0, 2.0]]))
    assert strings(result.as_numpy("OUTPUT")) == [["4.000000:1", "3.000000:2", "2.000000:3", "1.000000:0"]]


def strings(array: np.ndarray[Any, Any]) -> list[list[str]]:
    """A BYTES output's rows as text (JSON gives str elements, binary data gives bytes)."""
    return [[e.decode() if isinstance(e, bytes) else e for e in row] for row in array.tolist()]


# --- properties ------------------------------------------------------------------------------------

finite_float32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@SETTINGS
@given(
    rows=st.lists(st.lists(finite_float32, min_size=16, max_size=16), min_size=1, max_size=8),
    binary_in=st.booleans(),
    binary_out=st.booleans(),
    request_id=st.one_of(st.just(""), st.text(max_size=20)),
)
def test_random_vectors_round_trip(
    rows: list[list[float]], binary_in: bool, binary_out: bool, request_id: str
) -> None:
    array = np.array(rows, dtype=np.float32)
    outputs = [triton.InferRequestedOutput("OUTPUT", binary_data=binary_out)]
    body, header = triton_body([tensor("INPUT", array, "FP32", binary_in)], outputs, request_id)
    request = parse_infer_request(VECTOR, body, header)
    assert np.array_equal(np.array(request.inputs, dtype=np.float32), array)
    assert request.id == (request_id or None)
    answer = array[:, :4] / 2
    result = decode(*encode_infer_response(VECTOR, request, answer))
    assert np.array_equal(result.as_numpy("OUTPUT"), answer)


@SETTINGS
@given(
    texts=st.lists(st.text(max_size=40), min_size=1, max_size=8), binary=st.booleans(), column=st.booleans()
)
def test_random_texts_round_trip(texts: list[str], binary: bool, column: bool) -> None:
    array = np.array([text.encode("utf-8", "surrogatepass") for text in texts], dtype=object)
    if column:
        array = array.reshape(-1, 1)
    try:
        body, header = triton_body([tensor("TEXT", array, "BYTES", binary)])
    except triton.InferenceServerException:
        return  # the client itself refuses what it cannot encode as UTF-8 JSON
    try:
        assert parse_infer_request(TEXT, body, header).inputs == texts
    except TensorError as exc:  # lone surrogates are not UTF-8: refused, never mangled
        assert exc.status == 400 and "UTF-8" in exc.message
        assert any(0xD800 <= ord(c) <= 0xDFFF for text in texts for c in text)


json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**64), max_value=2**64),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=8),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=25,
)
field_names = st.sampled_from(["inputs", "outputs", "parameters", "id", "name", "shape", "datatype", "data"])
near_valid = st.fixed_dictionaries(
    {
        "inputs": st.lists(
            st.dictionaries(
                st.sampled_from(["name", "shape", "datatype", "data", "parameters"]),
                st.one_of(
                    json_values,
                    st.sampled_from(["TEXT", "INPUT", "FP32", "BYTES", "INT64", "FP64"]),
                    st.lists(st.integers(-3, 2**40), max_size=3),
                    st.fixed_dictionaries({"binary_data_size": st.integers(-5, 2**40)}),
                ),
            ),
            max_size=2,
        )
    },
    optional={"outputs": json_values, "parameters": json_values, "id": json_values},
)


@SETTINGS
@given(
    document=st.one_of(near_valid, st.dictionaries(field_names, json_values, max_size=5), json_values),
    tail=st.binary(max_size=64),
    header=st.one_of(st.none(), st.just("json"), st.text(max_size=6), st.integers(-2, 200).map(str)),
    model=st.sampled_from(["minilm", "reference"]),
)
def test_garbage_raises_only_tensor_errors(
    document: Any, tail: bytes, header: str | None, model: str
) -> None:
    head = json.dumps(document).encode()
    body = head + tail
    header_value = str(len(head)) if header == "json" else header
    try:
        request = parse_infer_request(SPECS[model], body, header_value)
    except TensorError as exc:
        assert exc.status in (400, 413) and exc.message
    else:
        assert SPECS[model].inputs.min_items <= len(request.inputs) <= SPECS[model].inputs.max_items


@SETTINGS
@given(body=st.binary(max_size=200), header=st.one_of(st.none(), st.integers(0, 220).map(str)))
def test_random_bytes_raise_only_tensor_errors(body: bytes, header: str | None) -> None:
    for spec in SPECS.values():
        try:
            parse_infer_request(spec, body, header)
        except TensorError as exc:
            assert exc.status in (400, 413)


def test_float32_limit_is_the_largest_float32() -> None:
    assert np.float32(FLOAT32_MAX) == np.finfo(np.float32).max
