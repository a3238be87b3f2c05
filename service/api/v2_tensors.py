"""The Open Inference Protocol (v2) REST codec: request bodies in, response bodies out. No server.

A request is a JSON object, optionally followed by binary tensor data (Triton's binary tensor
extension): ``Inference-Header-Content-Length`` gives the JSON length, each binary input carries
``binary_data_size``, and the tensors follow the JSON in input order, little-endian, row-major,
``BYTES`` elements as a 4-byte little-endian length then the bytes.

A model of named ``tensors`` (service.codecs.tensors) takes each declared input tensor in exactly
its datatype, batch first (binary inputs follow the JSON in input order), and answers each output
tensor in its own datatype. Every other model takes one input tensor and gives one output tensor,
named in ``model.yaml``:
- a text model takes ``BYTES`` of shape ``[N]`` or ``[N, 1]`` (UTF-8 strings);
- a vector model takes ``FP32`` of shape ``[N, dim]``;
- both answer ``FP32`` of shape ``[N, size]``; with the classification extension (an output's
  ``parameters: {"classification": K}``), ``BYTES`` of shape ``[N, min(K, size)]`` instead, each
  ``"value:index:label"`` (``"value:index"`` when the output has no labels), as Triton answers.

Numbers sent as another datatype than ``FP32`` are converted when no value changes meaning:
``FP16`` and ``BF16`` (exact), ``INT8``/``INT16``/``UINT8``/``UINT16`` (exact), ``INT32``/``INT64``/
``UINT32``/``UINT64`` when every value is exactly a float32 (every integer up to 2**24 in
magnitude is), ``FP64`` when every value is finite and within float32's range, rounded to the
nearest float32 exactly as a JSON number on the native route is. Anything else (``BOOL``, an
integer float32 cannot hold, a double past float32's range) is refused with a 400.

Every malformed or over-limit request raises :class:`TensorError` with the HTTP status to answer:
413 when the request is larger than the model accepts (more than ``max_items`` inputs, a text
longer than ``max_length``, a shape past any limit), 400 for everything else.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from service.codecs import CodecError
from service.codecs.tensors import TensorSpec, from_elements, shape_error, split_rows, to_json
from service.core.repository import InputSpec, ModelSpec

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_EXTENSION = "binary_tensor_data"
CLASSIFICATION_EXTENSION = "classification"
PLATFORM = "pytorch"
PLATFORMS = {"onnx": "onnxruntime_onnx"}  # Triton's name for what runs a model, where not torch

FLOAT32_MAX = float(np.finfo(np.float32).max)
_EXACT_INT_LIMIT = 1 << 24  # every integer of at most this magnitude is exactly a float32
_PREFIX = 4  # bytes of a BYTES element's length prefix

# numeric datatypes we accept for an FP32 input: numpy little-endian dtype, JSON values must be ints
_NUMERIC: dict[str, tuple[str, bool]] = {
    "FP32": ("<f4", False),
    "FP16": ("<f2", False),
    "FP64": ("<f8", False),
    "INT8": ("<i1", True),
    "INT16": ("<i2", True),
    "INT32": ("<i4", True),
    "INT64": ("<i8", True),
    "UINT8": ("<u1", True),
    "UINT16": ("<u2", True),
    "UINT32": ("<u4", True),
    "UINT64": ("<u8", True),
}
_KNOWN = {*_NUMERIC, "BF16", "BOOL", "BYTES"}


class TensorError(Exception):
    """A v2 request that cannot be served: ``status`` (400 or 413) and a message for ``{"error": ...}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class RequestedOutput:
    """One entry of the request's ``outputs``: its name, whether it wants binary data (None: not
    said) and its classification extension count (None: the tensor itself)."""

    name: str
    binary_data: bool | None = None
    classification: int | None = None


@dataclass(frozen=True)
class InferRequest:
    """A parsed ``/infer`` request: the model's inputs as a plain list, ready for dispatch."""

    id: str | None
    inputs: list[Any]  # list[str] for a text model, list[list[float]] for a vector model
    outputs: tuple[RequestedOutput, ...] = ()
    binary_data_output: bool = False
    parameters: Mapping[str, Any] = field(default_factory=dict)  # as sent; unknown keys are ignored

    def classification(self, name: str) -> int | None:
        """The ``classification`` count asked for output ``name`` (None: not asked)."""
        for output in self.outputs:
            if output.name == name:
                return output.classification
        return None

    def binary_output(self, name: str) -> bool:
        """Whether output ``name`` goes back as binary data: its own ``binary_data``, else the request's."""
        for output in self.outputs:
            if output.name == name and output.binary_data is not None:
                return output.binary_data
        return self.binary_data_output


def parse_infer_request(spec: ModelSpec, body: bytes, header_length: str | None) -> InferRequest:
    """Parse and validate one ``/infer`` body for ``spec``; ``header_length`` is the raw
    ``Inference-Header-Content-Length`` header (None when absent). Raises :class:`TensorError`."""
    json_end = _json_length(body, header_length)
    try:
        document = orjson.loads(body[:json_end])
    except orjson.JSONDecodeError as exc:
        raise TensorError(400, f"the inference header is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise TensorError(400, "the inference request must be a JSON object")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise TensorError(400, "'id' must be a string")
    parameters = _object(document.get("parameters"), "parameters")
    binary_data_output = _flag(parameters.get("binary_data_output"), "parameters.binary_data_output")
    outputs = _requested_outputs(spec, document.get("outputs"))

    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise TensorError(400, f"'inputs' must be a list holding the input tensors {input_names(spec)}")
    if len(raw_inputs) != 1 and spec.inputs.kind != "tensors":
        raise TensorError(
            400, f"the model takes one input tensor ({spec.tensors.input!r}), got {len(raw_inputs)}"
        )
    binary = body[json_end:]
    if spec.inputs.kind == "tensors":
        values = _named_tensors(spec, raw_inputs, binary, has_header=header_length is not None)
    else:
        values = _input_values(spec, raw_inputs[0], binary, has_header=header_length is not None)
    return InferRequest(
        id=request_id,
        inputs=values,
        outputs=outputs,
        binary_data_output=bool(binary_data_output),
        parameters=parameters,
    )


def _json_length(body: bytes, header_length: str | None) -> int:
    if header_length is None:
        return len(body)
    text = header_length.strip()
    if not text.isdigit() or not text.isascii():
        raise TensorError(400, f"{HEADER_LENGTH} must be a non-negative integer, got {header_length[:40]!r}")
    # more digits than any body can have is past the body too (and never reaches int()'s digit limit)
    length = int(text) if len(text) <= 20 else len(body) + 1
    if length > len(body):
        raise TensorError(
            400, f"{HEADER_LENGTH} is {text[:24]} but the request body has only {len(body)} bytes"
        )
    return length


def _object(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TensorError(400, f"'{where}' must be a JSON object")
    return value


def _flag(value: Any, where: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise TensorError(400, f"'{where}' must be true or false")


def _requested_outputs(spec: ModelSpec, raw: Any) -> tuple[RequestedOutput, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise TensorError(400, "'outputs' must be a list")
    seen: list[RequestedOutput] = []
    for index, entry in enumerate(raw):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise TensorError(400, f"outputs[{index}] must be an object with a 'name'")
        name = entry["name"]
        if name not in output_names(spec):
            raise TensorError(
                400, f"unknown output {name[:64]!r}: model {spec.name!r} has outputs {output_names(spec)}"
            )
        if any(output.name == name for output in seen):
            raise TensorError(400, f"output {name!r} is requested twice")
        parameters = _object(entry.get("parameters"), f"outputs[{index}].parameters")
        if "shared_memory_region" in parameters:
            raise TensorError(400, f"outputs[{index}]: 'shared_memory_region' is not supported")
        binary = _flag(parameters.get("binary_data"), f"outputs[{index}].parameters.binary_data")
        count = parameters.get("classification")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
            raise TensorError(
                400,
                f"outputs[{index}].parameters.classification must be a positive integer, got {count!r:.40}",
            )
        if count is not None and spec.outputs.kind == "tensors":
            tensor = next(t for t in spec.outputs.tensors if t.name == name)
            if len(tensor.shape) != 2 or tensor.datatype == "BOOL":
                raise TensorError(
                    400,
                    f"output {name!r} is {tensor.describe()}: the classification extension needs numbers [N, C]",
                )
        seen.append(RequestedOutput(name, binary, count))
    return tuple(seen)


def _payload(
    tensor: dict[str, Any], name: str, binary: bytes, offset: int, has_header: bool
) -> tuple[Any, bytes, int]:
    """A tensor's JSON ``data`` (None when binary), its binary bytes from ``offset`` on, and the
    offset past them (binary inputs follow the JSON in input order)."""
    parameters = _object(tensor.get("parameters"), f"input {name!r} parameters")
    if "shared_memory_region" in parameters:
        raise TensorError(400, f"input {name!r}: shared memory is not supported; send the data")
    size = parameters.get("binary_data_size")
    if size is None:
        if "data" not in tensor:
            raise TensorError(400, f"input {name!r} has neither 'data' nor 'binary_data_size'")
        return tensor["data"], b"", offset
    if "data" in tensor:
        raise TensorError(400, f"input {name!r} has both 'data' and 'binary_data_size'")
    if not has_header:
        raise TensorError(400, f"input {name!r} has 'binary_data_size' but there is no {HEADER_LENGTH}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise TensorError(400, f"input {name!r}: binary_data_size must be a non-negative integer")
    if size > len(binary) - offset:
        raise TensorError(
            400,
            f"input {name!r}: binary_data_size is {size} but {len(binary) - offset} bytes follow the "
            f"inference header",
        )
    return None, binary[offset : offset + size], offset + size


def _no_more_binary(binary: bytes, offset: int) -> None:
    if offset != len(binary):
        raise TensorError(
            400,
            f"{len(binary) - offset} bytes follow the inference header that no input's binary_data_size accounts for",
        )


def _datatype(tensor: dict[str, Any], name: str) -> str:
    datatype = tensor.get("datatype")
    if not isinstance(datatype, str) or datatype not in _KNOWN:
        raise TensorError(400, f"input {name!r}: unknown datatype {str(datatype)[:16]!r}")
    return datatype


def _input_values(spec: ModelSpec, tensor: Any, binary: bytes, has_header: bool) -> list[Any]:
    declared = spec.tensors.input
    if not isinstance(tensor, dict):
        raise TensorError(400, "inputs[0] must be a JSON object")
    name = tensor.get("name")
    if name != declared:
        shown = repr(name[:64]) if isinstance(name, str) else "no name"
        raise TensorError(400, f"unknown input {shown}: model {spec.name!r} takes one input, {declared!r}")
    datatype = _datatype(tensor, declared)
    count, rows = _check_shape(spec, tensor.get("shape"))
    shape = tuple(tensor["shape"])
    data, payload, offset = _payload(tensor, declared, binary, 0, has_header)
    _no_more_binary(binary, offset)
    elements = _Elements(data, payload, count, datatype, shape)
    try:
        return spec.inputs.codec.v2_values(spec.inputs, declared, datatype, rows, elements)
    except CodecError as exc:
        raise TensorError(413 if exc.too_large else 400, exc.message) from None


def _named_tensors(spec: ModelSpec, raw_inputs: list[Any], binary: bytes, has_header: bool) -> list[Any]:
    """A ``tensors`` model's inputs: one tensor per declared name, each ``[N, ...]`` in its
    declared datatype, as ``N`` inputs of one row per name (service.codecs.tensors)."""
    declared = {tensor.name: tensor for tensor in spec.inputs.tensors}
    names = list(declared)
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    offset = 0
    for index, tensor in enumerate(raw_inputs):
        if not isinstance(tensor, dict):
            raise TensorError(400, f"inputs[{index}] must be a JSON object")
        name = tensor.get("name")
        if not isinstance(name, str) or name not in declared:
            shown = repr(name[:64]) if isinstance(name, str) else "no name"
            raise TensorError(400, f"unknown input {shown}: model {spec.name!r} takes {names}")
        if name in arrays:
            raise TensorError(400, f"input {name!r} is sent twice")
        wanted = declared[name]
        datatype = _datatype(tensor, name)
        if datatype != wanted.datatype:
            raise TensorError(400, f"input {name!r} must be {wanted.datatype}, got {datatype}")
        shape = _tensor_shape(spec, wanted, tensor.get("shape"))
        data, payload, offset = _payload(tensor, name, binary, offset, has_header)
        arrays[name] = _typed_array(wanted, data, payload, shape)
    _no_more_binary(binary, offset)
    missing = [name for name in names if name not in arrays]
    if missing:
        raise TensorError(400, f"input {missing[0]!r} is missing: model {spec.name!r} takes {names}")
    batches = {name: array.shape[0] for name, array in arrays.items()}
    if len(set(batches.values())) != 1:
        raise TensorError(400, f"the inputs' first (batch) dimensions differ: {batches}")
    return split_rows(arrays, next(iter(batches.values())))


def _tensor_shape(spec: ModelSpec, wanted: TensorSpec, shape: Any) -> tuple[int, ...]:
    """A named tensor's shape, checked against its declaration and the model's limits."""

    def mismatch(dims: list[int]) -> CodecError | None:
        if not dims:
            return CodecError(f"input {wanted.name!r}: shape [] has no batch dimension")
        return shape_error(wanted, dims, spec.inputs.element_limit, batch=True)

    return tuple(_checked_shape(spec.inputs, shape, mismatch, f"input {wanted.name!r}: "))


def _typed_array(
    wanted: TensorSpec, data: Any, payload: bytes, shape: tuple[int, ...]
) -> np.ndarray[Any, Any]:
    """A tensor's elements as an array of exactly its declared datatype and ``shape``."""
    count = math.prod(shape)
    if data is None:
        width = wanted.dtype.itemsize
        if len(payload) != count * width:
            raise TensorError(
                400,
                f"input {wanted.name!r}: {wanted.datatype} of shape {list(shape)} needs {count * width} bytes, "
                f"got {len(payload)}",
            )
        array = np.frombuffer(payload, dtype=wanted.dtype).reshape(shape)
        if wanted.datatype == "BOOL" and array.view(np.uint8).max(initial=0) > 1:
            raise TensorError(400, f"input {wanted.name!r}: BOOL bytes must be 0 or 1")
        if (
            wanted.datatype in ("FP32", "FP16", "BF16", "FP64")
            and not np.isfinite(array.astype(np.float64)).all()
        ):
            raise TensorError(400, f"input {wanted.name!r}: elements must be finite numbers")
        return array
    try:
        return from_elements(wanted, _flatten(data, count), shape)
    except CodecError as exc:
        raise TensorError(400, exc.message) from None
    except TensorError as exc:  # the layout of 'data': name the tensor
        raise TensorError(exc.status, f"input {wanted.name!r}: {exc.message}") from None


@dataclass(frozen=True)
class _Elements:
    """One tensor's elements (:class:`service.codecs.TensorData`): JSON ``data``, or ``binary``
    when ``data`` is None; ``count`` of them, of ``datatype``."""

    data: Any
    binary: bytes
    count: int
    datatype: str
    shape: tuple[int, ...]

    def strings(self) -> list[bytes]:
        if self.data is None:
            return _binary_strings(self.binary, self.count)
        return _json_strings(self.data, self.count)

    def numbers(self) -> np.ndarray[Any, np.dtype[np.float32]]:
        if self.datatype not in _NUMERIC and self.datatype != "BF16":
            raise TensorError(400, f"{self.datatype} elements are not numbers")
        if self.data is None:
            return _binary_numbers(self.binary, self.count, self.datatype)
        return _json_numbers(self.data, self.count, self.datatype)


def _check_shape(spec: ModelSpec, shape: Any) -> tuple[int, int]:
    """Validate the shape against the model's declaration; return (element count, item count)."""
    limits = spec.inputs
    dims = _checked_shape(limits, shape, lambda dims: limits.codec.v2_shape_error(limits, dims))
    return math.prod(dims), dims[0]


def _checked_shape(
    limits: InputSpec, shape: Any, mismatch: Callable[[list[int]], CodecError | None], where: str = ""
) -> list[int]:
    """``shape`` as a list of non-negative integers that ``mismatch`` finds no fault with (the
    kind's or the named tensor's check), its first dimension within the model's ``min_items`` ..
    ``max_items``; ``where`` prefixes the messages (a named tensor's ``input 'x': ``)."""
    if isinstance(shape, list) and any(isinstance(d, float) and abs(d) >= 2**63 for d in shape):
        # the JSON parser reads integers past 64 bits as floats: such a shape is past every limit
        raise TensorError(413, f"{where}shape has a dimension past 2**63, far past the model's limits")
    if not isinstance(shape, list) or any(isinstance(d, bool) or not isinstance(d, int) for d in shape):
        raise TensorError(400, f"{where}'shape' must be a list of integers")
    if any(d < 0 for d in shape):
        raise TensorError(400, f"{where}shape {shape[:4]} has a negative dimension")
    problem = mismatch(shape)
    if problem is not None:
        raise TensorError(413 if problem.too_large else 400, problem.message)
    items = shape[0]
    if items > limits.max_items:
        raise TensorError(
            413, f"{where}{items} inputs in one request; the model takes at most {limits.max_items}"
        )
    if items < limits.min_items:
        raise TensorError(
            400, f"{where}{items} inputs in one request; the model needs at least {limits.min_items}"
        )
    return shape


def _binary_strings(data: bytes, count: int) -> list[bytes]:
    view = memoryview(data)
    items: list[bytes] = []
    offset = 0
    while offset < len(view):
        if len(items) == count:
            raise TensorError(400, f"BYTES data holds more than the {count} elements its shape says")
        if offset + _PREFIX > len(view):
            raise TensorError(400, f"BYTES element {len(items)}: its 4-byte length prefix is cut short")
        length = int.from_bytes(view[offset : offset + _PREFIX], "little")
        offset += _PREFIX
        if length > len(view) - offset:
            raise TensorError(
                400, f"BYTES element {len(items)} declares {length} bytes past the end of its data"
            )
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if len(items) != count:
        raise TensorError(400, f"BYTES data holds {len(items)} elements but the shape says {count}")
    return items


def _json_strings(data: Any, count: int) -> list[bytes]:
    items: list[bytes] = []
    for value in _flatten(data, count):
        if not isinstance(value, str):
            raise TensorError(400, f"BYTES element {len(items)} must be a string, got {_kind(value)}")
        items.append(value.encode("utf-8", "surrogatepass"))
    return items


def _binary_numbers(data: bytes, count: int, datatype: str) -> np.ndarray[Any, np.dtype[np.float32]]:
    width = 2 if datatype == "BF16" else np.dtype(_NUMERIC[datatype][0]).itemsize
    if len(data) != count * width:
        raise TensorError(
            400,
            f"{datatype} data of shape with {count} elements needs {count * width} bytes, got {len(data)}",
        )
    if datatype == "BF16":
        # bfloat16 is the upper half of a float32: widening it is exact
        halves = np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16
        return _finite(halves.view(np.float32), datatype)
    return _to_float32(np.frombuffer(data, dtype=_NUMERIC[datatype][0]), datatype)


def _json_numbers(data: Any, count: int, datatype: str) -> np.ndarray[Any, np.dtype[np.float32]]:
    integers = datatype in _NUMERIC and _NUMERIC[datatype][1]
    values = _flatten(data, count)
    for index, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TensorError(400, f"{datatype} element {index} must be a number, got {_kind(value)}")
        if integers and not isinstance(value, int):
            raise TensorError(400, f"{datatype} element {index} must be an integer, got {value!r:.40}")
    if integers:
        info = np.iinfo(np.dtype(_NUMERIC[datatype][0]))
        for index, value in enumerate(values):
            if not info.min <= value <= info.max:
                raise TensorError(400, f"{datatype} element {index} is outside {datatype}'s range")
        return _to_float32(np.array(values, dtype=np.dtype(_NUMERIC[datatype][0])), datatype)
    doubles = np.array(values, dtype=np.float64)
    if datatype in ("FP32", "BF16", "FP16"):
        # JSON numbers are doubles: like the native route, the model gets them rounded to float32
        datatype = "FP64"
    return _to_float32(doubles, datatype)


def _to_float32(values: np.ndarray[Any, Any], datatype: str) -> np.ndarray[Any, np.dtype[np.float32]]:
    if values.dtype.kind in "iu":
        wide = values.astype(np.int64) if values.dtype.kind == "i" else values.astype(np.uint64)
        converted = values.astype(np.float32)
        exact = (wide <= _EXACT_INT_LIMIT) & (wide >= -_EXACT_INT_LIMIT if values.dtype.kind == "i" else True)
        if not exact.all():
            # past 2**24 only some integers are float32s: compare exactly where it matters
            inexact = [
                index for index in np.flatnonzero(~exact) if int(converted[index]) != int(values[index])
            ]
            if inexact:
                first = inexact[0]
                raise TensorError(
                    400,
                    f"{datatype} element {first} ({int(values[first])}) is not exactly a float32; "
                    f"send FP32 or integers of magnitude up to {_EXACT_INT_LIMIT}",
                )
        return converted
    if values.dtype == np.float64:
        finite = np.isfinite(values)
        if not finite.all():
            raise TensorError(
                400, f"{datatype} element {int(np.flatnonzero(~finite)[0])} is not a finite number"
            )
        too_big = np.abs(values) > FLOAT32_MAX
        if too_big.any():
            raise TensorError(
                400, f"{datatype} element {int(np.flatnonzero(too_big)[0])} is beyond float32's range"
            )
        return values.astype(np.float32)
    return _finite(values.astype(np.float32), datatype)


def _finite(values: np.ndarray[Any, Any], datatype: str) -> np.ndarray[Any, np.dtype[np.float32]]:
    finite = np.isfinite(values)
    if not finite.all():
        raise TensorError(400, f"{datatype} element {int(np.flatnonzero(~finite)[0])} is not a finite number")
    return values.astype(np.float32, copy=False)


def _flatten(data: Any, count: int) -> list[Any]:
    """Row-major elements of flat or nested JSON ``data``; stops as soon as there are too many."""
    if not isinstance(data, list):
        raise TensorError(400, "'data' must be a list (flat or nested)")
    flat: list[Any] = []
    stack: list[Any] = [iter(data)]
    while stack:
        value = next(stack[-1], _END)
        if value is _END:
            stack.pop()
        elif isinstance(value, list):
            stack.append(iter(value))
        else:
            if len(flat) == count:
                raise TensorError(400, f"'data' holds more than the {count} elements its shape says")
            flat.append(value)
    if len(flat) != count:
        raise TensorError(400, f"'data' holds {len(flat)} elements but the shape says {count}")
    return flat


_END = object()


def _kind(value: Any) -> str:
    return {bool: "a boolean", type(None): "null", dict: "an object", str: "a string"}.get(
        type(value), type(value).__name__
    )


def input_names(spec: ModelSpec) -> list[str]:
    """The model's input tensors' names, in declaration order."""
    if spec.inputs.kind == "tensors":
        return [tensor.name for tensor in spec.inputs.tensors]
    return [spec.tensors.input]


def output_names(spec: ModelSpec) -> list[str]:
    """The model's output tensors' names, in declaration order."""
    if spec.outputs.kind == "tensors":
        return [tensor.name for tensor in spec.outputs.tensors]
    return [spec.tensors.output]


def _output_arrays(spec: ModelSpec, outputs: Any, rows: int) -> dict[str, tuple[str, np.ndarray[Any, Any]]]:
    """Each output tensor by name: its datatype and its whole array, batch first."""
    if spec.outputs.kind != "tensors":
        array = np.ascontiguousarray(outputs, dtype="<f4")
        if array.ndim != 2:
            array = array.reshape(rows, -1)
        return {spec.tensors.output: ("FP32", array)}
    arrays: dict[str, tuple[str, np.ndarray[Any, Any]]] = {}
    for tensor in spec.outputs.tensors:
        parts = [np.asarray(row[tensor.name]) for row in outputs]
        shapes = sorted({part.shape for part in parts})
        if len(shapes) > 1:
            raise TensorError(
                422,
                f"output {tensor.name!r}: this request's inputs have outputs of different shapes "
                f"({list(shapes[0])}, {list(shapes[1])}), which one v2 tensor cannot hold; send them in "
                "separate requests (the native route answers each input apart)",
            )
        arrays[tensor.name] = (tensor.datatype, np.ascontiguousarray(np.stack(parts), dtype=tensor.dtype))
    return arrays


def encode_infer_response(
    spec: ModelSpec, request: InferRequest, outputs: Any
) -> tuple[bytes, dict[str, str]]:
    """The ``/infer`` answer for ``outputs`` (one row of floats per input; a dict of tensors per
    input for a ``tensors`` model): the body and the headers to send with it (``Content-Type``,
    and ``Inference-Header-Content-Length`` when any output is binary). Every output is answered
    unless the request names some: then those, in its order."""
    arrays = _output_arrays(spec, outputs, len(request.inputs))
    names = [output.name for output in request.outputs] or list(arrays)
    tensors: list[dict[str, Any]] = []
    payloads: list[bytes] = []
    for name in names:
        datatype, array = arrays[name]
        count = request.classification(name)
        tensor: dict[str, Any]
        data: Any
        if count is None:
            tensor = {"name": name, "datatype": datatype, "shape": list(array.shape)}
            payload, data = array.tobytes(), to_json(array.reshape(-1))
        elif array.ndim != 2 or datatype == "BOOL":
            raise TensorError(
                400, f"output {name!r}: the classification extension needs numbers of shape [N, C]"
            )
        else:
            classes = classify(array.astype(np.float64), count, spec.outputs.labels)
            tensor = {
                "name": name,
                "datatype": "BYTES",
                "shape": [array.shape[0], min(count, array.shape[1])],
            }
            payload, data = _bytes_payload(classes), classes
        if request.binary_output(name):
            tensor["parameters"] = {"binary_data_size": len(payload)}
            payloads.append(payload)
        else:
            tensor["data"] = data
        tensors.append(tensor)
    document: dict[str, Any] = {"model_name": spec.name, "model_version": spec.version}
    if request.id is not None:
        document["id"] = request.id
    document["outputs"] = tensors
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not payloads:
        return header, {"Content-Type": "application/json"}
    headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
    return header + b"".join(payloads), headers


def classify(array: np.ndarray[Any, Any], count: int, labels: Sequence[str]) -> list[str]:
    """Triton's classification extension: per row, its ``count`` largest values (all of them when
    the row has fewer), largest first (ties: lower index first), each ``"value:index"`` or
    ``"value:index:label"`` when the output has labels; values as Triton prints them (``%f``)."""
    classes: list[str] = []
    for row in array:
        order = sorted(range(len(row)), key=lambda i: (-float(row[i]), i))[:count]
        for i in order:
            label = f":{labels[i]}" if i < len(labels) else ""
            classes.append(f"{float(row[i]):f}:{i}{label}")
    return classes


def _bytes_payload(elements: Sequence[str]) -> bytes:
    """BYTES elements as binary data: each a 4-byte little-endian length, then its UTF-8 bytes."""
    parts: list[bytes] = []
    for element in elements:
        raw = element.encode("utf-8")
        parts.append(len(raw).to_bytes(_PREFIX, "little"))
        parts.append(raw)
    return b"".join(parts)


def server_metadata(name: str, version: str) -> dict[str, Any]:
    """The ``GET /v2`` document."""
    return {"name": name, "version": version, "extensions": [BINARY_EXTENSION, CLASSIFICATION_EXTENSION]}


def model_metadata(spec: ModelSpec) -> dict[str, Any]:
    """The ``GET /v2/models/{name}`` document; -1 marks a size that varies (or is not declared)."""
    if spec.inputs.kind == "tensors":
        inputs = [_described(tensor) for tensor in spec.inputs.tensors]
    else:
        inputs = [{"name": spec.tensors.input, **spec.inputs.codec.v2_metadata(spec.inputs)}]
    if spec.outputs.kind == "tensors":
        outputs = [_described(tensor) for tensor in spec.outputs.tensors]
    else:
        size = spec.outputs.size if spec.outputs.size is not None else -1
        outputs = [{"name": spec.tensors.output, "datatype": "FP32", "shape": [-1, size]}]
    return {
        "name": spec.name,
        "versions": [spec.version],
        "platform": PLATFORMS.get(spec.runtime, PLATFORM),
        "inputs": inputs,
        "outputs": outputs,
    }


def _described(tensor: TensorSpec) -> dict[str, Any]:
    return {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
