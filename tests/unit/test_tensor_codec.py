"""service.codecs.tensors and the declarations of named tensors: every datatype read exactly
from JSON and binary, nothing converted silently, shapes checked per tensor; the v2 codec of a
model of several inputs and outputs; programs' tensors read from ``.onnx`` and ``.pt2`` files,
a custom-op graph, external weights and a wrong checksum refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import onnx
import orjson
import pytest
from onnx import TensorProto, helper
from pydantic import TypeAdapter, ValidationError

from service.api.v2_tensors import TensorError, encode_infer_response, model_metadata, parse_infer_request
from service.codecs import CodecError
from service.codecs.tensors import DATATYPES, TENSORS, TensorSpec, row_from_json
from service.core.programs import ProgramError, merge_declared, signature, verified_bytes
from service.core.repository import (
    InputSpec,
    ModelError,
    ModelRepository,
    ModelSpec,
    WeightsSpec,
    sha256_file,
)

pytestmark = pytest.mark.unit

SHA = "0" * 64
SPEC = InputSpec(
    kind="tensors",
    max_items=4,
    max_elements=64,
    tensors=(
        TensorSpec(name="ids", datatype="INT64", shape=(-1, -1)),
        TensorSpec(name="mask", datatype="BOOL", shape=(-1, 3)),
    ),
)


def model(**changes: Any) -> ModelSpec:
    fields: dict[str, Any] = {
        "name": "named",
        "version": "1",
        "task": "tensors",
        "weights": WeightsSpec(path="w", sha256=SHA),
        "inputs": SPEC,
        "outputs": {
            "kind": "tensors",
            "tensors": [
                {"name": "logits", "datatype": "FP32", "shape": [-1, 2]},
                {"name": "half", "datatype": "BF16", "shape": [-1]},
            ],
        },
    }
    return ModelSpec.model_validate({**fields, **changes})


@pytest.mark.parametrize("datatype", sorted(DATATYPES))
def test_every_datatype_reads_json_exactly_and_refuses_what_does_not_belong(datatype: str) -> None:
    spec = TensorSpec(name="x", datatype=datatype, shape=(-1, 2))  # type: ignore[arg-type]
    good = [True, False] if datatype == "BOOL" else [1, -1] if datatype.startswith("INT") else [1, 0]
    if datatype.startswith("FP") or datatype == "BF16":
        good = [1.5, -2.25]
    array = row_from_json(spec, good, 64)
    assert array.dtype == spec.dtype and array.tolist() == good
    bad = [1, 0] if datatype == "BOOL" else ["1", 2] if datatype != "UINT8" else [256, 0]
    with pytest.raises(CodecError, match="'x'"):
        row_from_json(spec, bad, 64)
    if datatype.startswith("INT"):
        with pytest.raises(CodecError, match="must be an integer"):
            row_from_json(spec, [1.5, 2], 64)
    if datatype in ("FP16", "BF16", "FP32"):
        with pytest.raises(CodecError, match="beyond"):
            row_from_json(spec, [1e300, 0.0], 64)


def test_shapes_are_checked_per_tensor_with_free_dimensions_bounded() -> None:
    ids, mask = SPEC.tensors
    assert row_from_json(ids, [1, 2, 3, 4, 5], 64).shape == (5,)
    with pytest.raises(CodecError, match="elements; at most 64") as too_many:
        row_from_json(ids, list(range(65)), 64)
    assert too_many.value.too_large
    with pytest.raises(CodecError, match="does not match"):
        row_from_json(mask, [True, False], 64)
    with pytest.raises(CodecError, match="ragged"):
        row_from_json(TensorSpec(name="m", datatype="FP32", shape=(-1, 2, 2)), [[1.0, 2.0], [3.0]], 64)
    with pytest.raises(CodecError, match="empty dimension"):
        row_from_json(ids, [], 64)
    with pytest.raises(ValidationError, match="batch"):
        TensorSpec(name="x", datatype="FP32", shape=(3, 2))
    with pytest.raises(ValidationError, match="positive, or -1"):
        TensorSpec(name="x", datatype="FP32", shape=(-1, 0))


def test_the_native_item_type_gives_arrays_by_name() -> None:
    adapter = TypeAdapter(TENSORS.item_type(SPEC))
    value = adapter.validate_python({"ids": [7, 8], "mask": [True, False, True]})
    assert value["ids"].dtype == np.int64 and value["mask"].tolist() == [True, False, True]
    for bad in (
        {"ids": [1]},
        {"ids": [1], "mask": [True] * 3, "other": 1},
        {"ids": [1.5], "mask": [True] * 3},
        [1],
    ):
        with pytest.raises(ValidationError):
            adapter.validate_python(bad)
    assert TENSORS.fits(SPEC, TENSORS.example(SPEC))


def test_declarations_are_refused_unless_complete_and_consistent() -> None:
    with pytest.raises(ValidationError, match="declares each tensor"):
        model(inputs={"kind": "tensors"})
    with pytest.raises(ValidationError, match="repeat a name"):
        InputSpec(kind="tensors", tensors=(SPEC.tensors[0], SPEC.tensors[0]))
    with pytest.raises(
        ValidationError, match="'tensors' and 'max_elements' declare the inputs of kind 'tensors'"
    ):
        InputSpec(kind="vector", dim=2, tensors=SPEC.tensors)
    with pytest.raises(ValidationError, match="takes and gives tensors"):
        model(runtime="onnx", inputs={"kind": "vector", "dim": 2})
    assert model(runtime="onnx").runtime == "onnx"


def v2_body(*tensors: dict[str, Any], outputs: Any = None) -> bytes:
    document: dict[str, Any] = {"inputs": list(tensors)}
    if outputs is not None:
        document["outputs"] = outputs
    return orjson.dumps(document)


def test_v2_reads_several_tensors_json_and_binary_and_answers_each_datatype() -> None:
    spec = model()
    ids = np.array([[1, 2], [3, 4]], dtype=np.int64)
    mask = np.array([[True, False, True], [False, False, True]])
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "mask", "datatype": "BOOL", "shape": [2, 3], "data": mask.tolist()},
                {"name": "ids", "datatype": "INT64", "shape": [2, 2], "parameters": {"binary_data_size": 32}},
            ],
            "outputs": [{"name": "half", "parameters": {"binary_data": True}}, {"name": "logits"}],
        }
    )
    parsed = parse_infer_request(spec, header + ids.tobytes(), str(len(header)))
    assert [row["ids"].tolist() for row in parsed.inputs] == ids.tolist()
    assert [row["mask"].tolist() for row in parsed.inputs] == mask.tolist()
    rows = [
        {"logits": np.array([0.5, -1.0], np.float32), "half": np.array(1.5, ml_dtypes.bfloat16)},
        {"logits": np.array([2.0, 3.0], np.float32), "half": np.array(-2.0, ml_dtypes.bfloat16)},
    ]
    body, headers = encode_infer_response(spec, parsed, rows)
    length = int(headers["Inference-Header-Content-Length"])
    document = orjson.loads(body[:length])
    assert [t["name"] for t in document["outputs"]] == ["half", "logits"]  # the request's order
    half, logits = document["outputs"]
    assert half == {"name": "half", "datatype": "BF16", "shape": [2], "parameters": {"binary_data_size": 4}}
    assert np.frombuffer(body[length:], ml_dtypes.bfloat16).tolist() == [1.5, -2.0]
    assert logits["data"] == [0.5, -1.0, 2.0, 3.0] and logits["datatype"] == "FP32"
    assert [t["name"] for t in model_metadata(spec)["inputs"]] == ["ids", "mask"]


@pytest.mark.parametrize(
    ("tensors", "status", "match"),
    [
        ([{"name": "ids", "datatype": "INT32", "shape": [1, 1], "data": [1]}], 400, "must be INT64"),
        ([{"name": "ids", "datatype": "INT64", "shape": [1, 1], "data": [1]}], 400, "'mask' is missing"),
        ([{"name": "ids", "datatype": "INT64", "shape": [1, 65], "data": [1] * 65}], 413, "at most 64"),
        ([{"name": "ids", "datatype": "INT64", "shape": [5, 1], "data": [1] * 5}], 413, "at most 4"),
        ([{"name": "mask", "datatype": "BOOL", "shape": [1, 2], "data": [True] * 2}], 400, "does not match"),
        ([{"name": "ids", "datatype": "INT64", "shape": [1, 1], "data": [2**63]}], 400, "outside INT64"),
    ],
)
def test_v2_refuses_what_the_declaration_does_not_allow(tensors: list[Any], status: int, match: str) -> None:
    with pytest.raises(TensorError, match=match) as refused:
        parse_infer_request(model(), v2_body(*tensors), None)
    assert refused.value.status == status


def onnx_file(path: Path, domain: str = "", external: bool = False) -> bytes:
    node = helper.make_node("Relu", ["x"], ["y"], domain=domain)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if external:
        proto.graph.initializer.append(
            helper.make_tensor("w", TensorProto.FLOAT, [3], np.ones(3, np.float32).tobytes(), raw=True)
        )
        onnx.save_model(proto, str(path), save_as_external_data=True, size_threshold=0, location="w.bin")
    else:
        onnx.save_model(proto, str(path))
    return path.read_bytes()


def test_onnx_tensors_are_read_from_the_graph_and_custom_ops_and_external_data_are_refused(
    tmp_path: Path,
) -> None:
    data = onnx_file(tmp_path / "plain.onnx")
    inputs, outputs = signature("onnx", data)
    assert inputs == (TensorSpec(name="x", datatype="FP32", shape=(-1, 3)),)
    assert outputs == (TensorSpec(name="y", datatype="FP32", shape=(-1, 3)),)
    with pytest.raises(ProgramError, match="domain 'my.ops': custom-op libraries are not loaded"):
        signature("onnx", onnx_file(tmp_path / "custom.onnx", domain="my.ops"))
    with pytest.raises(ProgramError, match="external data"):
        signature("onnx", onnx_file(tmp_path / "external.onnx", external=True))
    with pytest.raises(ProgramError, match="not an ONNX model"):
        signature("onnx", b"\xff\xfe garbage")


def test_a_declaration_may_narrow_a_program_but_not_contradict_it() -> None:
    found = (TensorSpec(name="x", datatype="FP32", shape=(-1, -1)),)
    narrowed = (TensorSpec(name="x", datatype="FP32", shape=(-1, 3)),)
    assert merge_declared((), found, "input") == found
    assert merge_declared(narrowed, found, "input") == narrowed
    with pytest.raises(ProgramError, match="declared FP16"):
        merge_declared((TensorSpec(name="x", datatype="FP16", shape=(-1, 3)),), found, "input")
    with pytest.raises(ProgramError, match="the program has"):
        merge_declared((TensorSpec(name="z", datatype="FP32", shape=(-1, 3)),), found, "input")
    with pytest.raises(ProgramError, match="declared"):
        merge_declared(found, narrowed, "input")  # free where the program fixes it


def test_a_program_in_a_repository_folder_has_its_tensors_read_and_its_checksum_checked(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "relu"
    folder.mkdir()
    onnx_file(folder / "model.onnx")
    digest = sha256_file(folder / "model.onnx")
    declaration = f"name: relu\nversion: '1'\ntask: tensors\nruntime: onnx\nweights: {{path: model.onnx, sha256: '{digest}'}}\n"
    (folder / "model.yaml").write_text(declaration)
    spec = ModelRepository(tmp_path).get("relu").spec
    assert [t.name for t in spec.inputs.tensors] == ["x"] and spec.outputs.tensors[0].datatype == "FP32"
    (folder / "model.yaml").write_text(declaration.replace(digest, SHA))
    repository = ModelRepository(tmp_path)  # a broken program fails its own use, not the repository's
    assert repository.declared("relu").runtime == "onnx"
    with pytest.raises(ModelError, match="relu.*checksum mismatch"):
        repository.get("relu")
    with pytest.raises(ProgramError, match="missing"):
        verified_bytes(folder / "gone.onnx", SHA)


@pytest.mark.parametrize("datatype", sorted(DATATYPES))
def test_every_datatype_reads_binary_exactly_and_answers_it_back(datatype: str) -> None:
    tensors = [{"name": "x", "datatype": datatype, "shape": [-1, 2]}]
    spec = model(
        inputs={"kind": "tensors", "tensors": tensors}, outputs={"kind": "tensors", "tensors": tensors}
    )
    values = [[True, False], [False, True]] if datatype == "BOOL" else [[1, -2], [3, 4]]
    if datatype == "UINT8":
        values = [[1, 255], [0, 4]]
    sent = np.array(values, dtype=DATATYPES[datatype])
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": datatype,
                    "shape": [2, 2],
                    "parameters": {"binary_data_size": sent.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    parsed = parse_infer_request(spec, header + sent.tobytes(), str(len(header)))
    rows = parsed.inputs
    assert [row["x"].dtype for row in rows] == [sent.dtype] * 2
    np.testing.assert_array_equal(np.stack([row["x"] for row in rows]), sent)
    body, headers = encode_infer_response(spec, parsed, rows)
    length = int(headers["Inference-Header-Content-Length"])
    (tensor,) = orjson.loads(body[:length])["outputs"]
    assert tensor == {
        "name": "x",
        "datatype": datatype,
        "shape": [2, 2],
        "parameters": {"binary_data_size": sent.nbytes},
    }
    assert body[length:] == sent.tobytes()
    if datatype in ("FP32", "FP16", "BF16", "FP64"):
        bad = sent.copy()
        bad[0, 0] = np.inf
        with pytest.raises(TensorError, match="finite"):
            parse_infer_request(spec, header + bad.tobytes(), str(len(header)))


def test_bf16_from_json_rounds_to_nearest_once() -> None:
    spec = TensorSpec(name="h", datatype="BF16", shape=(-1, 3))
    # just above a halfway point: float32 would land on the halfway point, then tie to even (1.0)
    got = row_from_json(spec, [1 + 2**-8 + 2**-30, 1 + 2**-8, -(1 + 2**-8 + 2**-30)], 64)
    assert got.astype(np.float64).tolist() == [1.0078125, 1.0, -1.0078125]


def test_tensor_names_as_exporters_write_them_work_on_every_route() -> None:
    names = ["input:0", "onnx::Gemm_0", "_x", "model_config", "0"]
    spec = InputSpec(
        kind="tensors", tensors=tuple(TensorSpec(name=n, datatype="INT8", shape=(-1,)) for n in names)
    )
    value = TypeAdapter(TENSORS.item_type(spec)).validate_python(dict.fromkeys(names, 1))
    assert sorted(value) == sorted(names) and all(array.tolist() == 1 for array in value.values())


def test_v2_cannot_stack_outputs_of_different_shapes_and_says_so() -> None:
    spec = model(
        outputs={"kind": "tensors", "tensors": [{"name": "o", "datatype": "INT64", "shape": [-1, -1]}]}
    )
    body = v2_body(
        {"name": "ids", "datatype": "INT64", "shape": [2, 1], "data": [1, 2]},
        {"name": "mask", "datatype": "BOOL", "shape": [2, 3], "data": [True] * 6},
    )
    parsed = parse_infer_request(spec, body, None)
    with pytest.raises(TensorError, match="output 'o': .*different shapes") as refused:
        encode_infer_response(spec, parsed, [{"o": np.array([1, 2])}, {"o": np.array([1])}])
    assert refused.value.status == 422


def test_custom_ops_and_external_data_are_found_inside_subgraphs_and_functions(tmp_path: Path) -> None:
    branch = helper.make_graph(
        [helper.make_node("Mystery", ["x"], ["z"], domain="my.ops")],
        "then",
        [],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 3])],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)],
        "g",
        [
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
    )
    nested = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ProgramError, match="domain 'my.ops'"):
        signature("onnx", nested.SerializeToString())
    value = helper.make_tensor("v", TensorProto.FLOAT, [3], np.ones(3, np.float32).tobytes(), raw=True)
    value.data_location = TensorProto.EXTERNAL
    constant = helper.make_graph(
        [helper.make_node("Constant", [], ["y"], value=value)],
        "g",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
    )
    with pytest.raises(ProgramError, match="external data"):
        signature(
            "onnx",
            helper.make_model(constant, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(),
        )
