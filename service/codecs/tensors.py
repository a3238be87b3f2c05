"""The ``tensors`` kind: a model of several named tensors in and out (torch-free).

A model declares each tensor (:class:`TensorSpec`): a name, a datatype among :data:`DATATYPES`
and a shape, batch first (``-1``), every other dimension fixed or ``-1`` (free: each input says).
One input of such a model is a ``dict`` of name → numpy array (the tensor's row: its shape
without the batch dimension), in exactly the declared datatype; so is one output. The
datatype is never converted silently: an ``INT64`` input sent as ``FP32`` is a 400, a JSON
``1.5`` where an integer belongs a 422, a number outside the datatype's range a 422.

- Native route: ``{"inputs": [{"input_ids": [[...]], "mask": [...]}, ...]}``, each input an
  object with every declared tensor by name, its value a number/boolean or nested lists (its
  row); answered ``{"outputs": [{"logits": [...], "label": 3}, ...]}``.
- Open Inference Protocol: one tensor per declared name, shape ``[N, ...]``, JSON ``data`` or
  binary data, in the declared datatype; every declared output is answered (or the ones asked for).

``BF16`` arrays are ``ml_dtypes.bfloat16`` (numpy has no bfloat16 of its own).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal

import ml_dtypes
import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, model_validator

from service.codecs.base import CodecError, RecordCheck, TensorData

if TYPE_CHECKING:
    from service.core.repository import InputSpec, OutputSpec

Datatype = Literal["FP32", "FP16", "BF16", "FP64", "INT64", "INT32", "INT16", "INT8", "UINT8", "BOOL"]
# each datatype's numpy dtype (little-endian: the binary tensor extension's byte order)
DATATYPES: dict[str, np.dtype[Any]] = {
    "FP32": np.dtype("<f4"),
    "FP16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "FP64": np.dtype("<f8"),
    "INT64": np.dtype("<i8"),
    "INT32": np.dtype("<i4"),
    "INT16": np.dtype("<i2"),
    "INT8": np.dtype("i1"),
    "UINT8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_FLOATS = ("FP32", "FP16", "BF16", "FP64")
# the largest finite value of each float datatype (larger JSON numbers are refused, not made inf)
_FLOAT_MAX = {
    "FP32": float(np.finfo(np.float32).max),
    "FP16": float(np.finfo(np.float16).max),
    "BF16": float(ml_dtypes.finfo(ml_dtypes.bfloat16).max),  # type: ignore[no-untyped-call]
    "FP64": float(np.finfo(np.float64).max),
}
# as ONNX exporters name tensors too (input:0, onnx::Gemm_0, 0), up to 128 characters
_TENSOR_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.:/\-]{0,127}$"
MAX_DIMENSIONS = 8
DEFAULT_MAX_ELEMENTS = 1 << 20  # per tensor per input, when free dimensions leave it open


class TensorSpec(BaseModel):
    """One named tensor: ``datatype`` and ``shape``, batch first (``-1``), ``-1`` for a free dimension."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_TENSOR_NAME)
    datatype: Datatype
    shape: tuple[int, ...] = Field(min_length=1, max_length=MAX_DIMENSIONS)

    @model_validator(mode="after")
    def _check(self) -> TensorSpec:
        if self.shape[0] != -1:
            raise ValueError(
                f"tensor {self.name!r}: its first dimension is the batch, -1 (got {self.shape[0]})"
            )
        if any(d == 0 or d < -1 for d in self.shape[1:]):
            raise ValueError(f"tensor {self.name!r}: dimensions are positive, or -1 when free")
        return self

    @property
    def row(self) -> tuple[int, ...]:
        """The shape of one input's tensor (without the batch dimension); -1 free."""
        return self.shape[1:]

    @property
    def dtype(self) -> np.dtype[Any]:
        return DATATYPES[self.datatype]

    def describe(self) -> str:
        """``FP32 [-1, 8]``, as errors and docs name it."""
        return f"{self.datatype} [{', '.join(str(d) for d in self.shape)}]"


def check_tensor_specs(tensors: Sequence[TensorSpec], where: str) -> None:
    """Refuse tensor declarations that repeat a name (ValueError naming ``where``); none declared
    is checked by the model (a program's are read from it)."""
    names = [tensor.name for tensor in tensors]
    if len(set(names)) != len(names):
        raise ValueError(f"{where} tensors repeat a name: {names}")


def row_limit(spec: TensorSpec, max_elements: int) -> int:
    """The most elements one input's tensor may have: its fixed size, else ``max_elements``."""
    if all(d > 0 for d in spec.row):
        return math.prod(spec.row)
    return max_elements


def shape_error(spec: TensorSpec, shape: Sequence[int], max_elements: int, batch: bool) -> CodecError | None:
    """Why ``shape`` (with the batch dimension first when ``batch``) is not ``spec``'s (None: it fits)."""
    row = tuple(shape[1:] if batch else shape)
    per_input = f"[{', '.join(str(d) for d in spec.row)}]"
    expected = spec.describe() if batch else f"{spec.describe()}, per input {per_input}"
    if len(row) != len(spec.row) or any(
        want not in (-1, got) for want, got in zip(spec.row, row, strict=True)
    ):
        if len(shape) > MAX_DIMENSIONS or any(d > max_elements for d in shape):
            return CodecError(
                f"tensor {spec.name!r}: shape {list(shape)[:9]} is far past {expected}", too_large=True
            )
        return CodecError(f"tensor {spec.name!r}: shape {list(shape)} does not match {expected}")
    if any(d < 1 for d in row):
        return CodecError(f"tensor {spec.name!r}: shape {list(shape)} has an empty dimension")
    if math.prod(row) > row_limit(spec, max_elements):
        return CodecError(
            f"tensor {spec.name!r}: {math.prod(row)} elements per input; the model takes at most "
            f"{row_limit(spec, max_elements)}",
            too_large=True,
        )
    return None


def _element_error(datatype: str, index: int, value: Any) -> str | None:
    """Why one JSON element does not belong in a ``datatype`` tensor (None: it does)."""
    if datatype == "BOOL":
        return (
            None if isinstance(value, bool) else f"element {index} must be true or false, got {_kind(value)}"
        )
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"element {index} must be a number, got {_kind(value)}"
    if datatype in _FLOATS:
        if not math.isfinite(value):
            return f"element {index} is not a finite number"
        if abs(value) > _FLOAT_MAX[datatype]:
            return f"element {index} ({value!r:.40}) is beyond {datatype}'s range"
        return None
    if not isinstance(value, int):
        return f"element {index} must be an integer, got {value!r:.40}"
    info = np.iinfo(DATATYPES[datatype])
    if not info.min <= value <= info.max:
        return (
            f"element {index} ({value!r:.40}) is outside {datatype}'s range {int(info.min)}..{int(info.max)}"
        )
    return None


def from_elements(spec: TensorSpec, values: Sequence[Any], shape: Sequence[int]) -> np.ndarray[Any, Any]:
    """Flat JSON elements as an array of ``spec``'s datatype and ``shape``; CodecError on any bad one."""
    for index, value in enumerate(values):
        error = _element_error(spec.datatype, index, value)
        if error is not None:
            raise CodecError(f"tensor {spec.name!r} ({spec.datatype}): {error}")
    if spec.datatype == "BF16":
        return bfloat16_nearest(np.array(values, dtype=np.float64)).reshape(shape)
    if spec.datatype in _FLOATS:  # JSON numbers are doubles: rounded to the nearest of the datatype
        return np.array(values, dtype=np.float64).astype(spec.dtype).reshape(shape)
    return np.array(values, dtype=spec.dtype).reshape(shape)


def bfloat16_nearest(doubles: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Doubles rounded to the nearest bfloat16 (ties to even). A cast goes through float32 and
    rounds twice: a double just above a bfloat16 halfway point lands on it in float32, then ties
    to even, the wrong way. Such a float32 is moved one step towards the double first."""
    singles = doubles.astype(np.float32)
    tie = (singles.view(np.uint32) & 0xFFFF) == 0x8000
    moved = tie & (singles.astype(np.float64) != doubles)
    if moved.any():
        towards = np.where(doubles[moved] > singles[moved], np.inf, -np.inf).astype(np.float32)
        singles[moved] = np.nextafter(singles[moved], towards)
    return singles.astype(ml_dtypes.bfloat16)


def nested_shape(value: Any, limit: int) -> tuple[list[int], list[Any]]:
    """The shape and row-major elements of a number or of rectangular nested lists; CodecError
    when ragged or past ``limit`` elements (too large)."""
    shape: list[int] = []
    probe = value
    while isinstance(probe, list):
        shape.append(len(probe))
        if not probe or len(shape) > MAX_DIMENSIONS:
            break
        probe = probe[0]
    if len(shape) > MAX_DIMENSIONS:
        raise CodecError(f"nested lists deeper than {MAX_DIMENSIONS} dimensions")
    if math.prod(shape) > limit:
        raise CodecError(f"{math.prod(shape)} elements; at most {limit}", too_large=True)
    flat: list[Any] = []

    def walk(item: Any, depth: int) -> None:
        if depth == len(shape):
            if isinstance(item, list):
                raise CodecError(f"nested lists are ragged: more depth than shape {shape}")
            flat.append(item)
            return
        if not isinstance(item, list) or len(item) != shape[depth]:
            raise CodecError(f"nested lists are ragged: not every level matches shape {shape}")
        for inner in item:
            walk(inner, depth + 1)

    walk(value, 0)
    return shape, flat


def row_from_json(spec: TensorSpec, value: Any, max_elements: int) -> np.ndarray[Any, Any]:
    """One input's tensor from its JSON value (a number/boolean for a row of no dimensions)."""
    if isinstance(value, np.ndarray):  # an example made here: checked as its JSON would be
        value = to_json(value)
    try:
        shape, flat = nested_shape(value, row_limit(spec, max_elements))
    except CodecError as exc:
        raise CodecError(f"tensor {spec.name!r}: {exc.message}", too_large=exc.too_large) from None
    mismatch = shape_error(spec, shape, max_elements, batch=False)
    if mismatch is not None:
        raise mismatch
    return from_elements(spec, flat, shape)


def to_json(array: np.ndarray[Any, Any]) -> Any:
    """An output array as JSON values (BF16 and FP16 widened to floats, exactly)."""
    if array.dtype in (DATATYPES["BF16"], DATATYPES["FP16"]):
        array = array.astype(np.float32)
    return array.tolist()


class TensorsCodec:
    """Several named tensors per input (see the module docstring)."""

    kind = "tensors"
    noun = "tensors"
    json_in_text_files = True
    parts: tuple[str, ...] = ()
    openai_input = False

    def check_spec(self, spec: InputSpec) -> None:
        check_tensor_specs(spec.tensors, "input")

    def example(self, spec: InputSpec) -> Any:
        return {t.name: np.zeros([d if d > 0 else 1 for d in t.row], dtype=t.dtype) for t in spec.tensors}

    def fits(self, spec: InputSpec, value: Any) -> bool:
        try:
            self.convert(spec, value)
        except (CodecError, ValueError):
            return False
        return True

    def convert(self, spec: InputSpec, value: Any) -> dict[str, np.ndarray[Any, Any]]:
        """One JSON input (an object of every declared tensor by name) as arrays."""
        if not isinstance(value, Mapping):
            raise CodecError(f"an input must be an object of tensors {[t.name for t in spec.tensors]}")
        unknown = [str(name)[:64] for name in value if name not in {t.name for t in spec.tensors}]
        if unknown:
            raise CodecError(
                f"unknown tensor {unknown[0]!r}; the model takes {[t.name for t in spec.tensors]}"
            )
        missing = [t.name for t in spec.tensors if t.name not in value]
        if missing:
            raise CodecError(
                f"tensor {missing[0]!r} is missing ({[t.name for t in spec.tensors]} are needed)"
            )
        return {t.name: row_from_json(t, value[t.name], spec.element_limit) for t in spec.tensors}

    def item_type(self, spec: InputSpec) -> Any:
        # a plain object checked by convert(): tensor names need not be Python identifiers
        schema = {
            "type": "object",
            "properties": {
                t.name: {"description": f"{t.describe()}: this input's row (no batch dimension)"}
                for t in spec.tensors
            },
            "required": [t.name for t in spec.tensors],
            "additionalProperties": False,
        }

        def arrays(value: dict[str, Any]) -> dict[str, np.ndarray[Any, Any]]:
            try:
                return self.convert(spec, value)
            except CodecError as exc:
                raise ValueError(exc.message) from None

        return Annotated[dict[str, Any], AfterValidator(arrays), WithJsonSchema(schema)]

    def grouped_fields(self, spec: InputSpec) -> dict[str, Any]:
        return {}

    def ungroup(self, grouped: dict[str, Any]) -> list[Any]:
        raise NotImplementedError(f"{self.kind} inputs have no grouped form")

    def record_check(self, spec: InputSpec) -> RecordCheck:
        def check(value: Any) -> str | None:
            return "tensor models take no files: send their inputs to /predict or the v2 infer route"

        return check

    def v2_metadata(self, spec: InputSpec) -> dict[str, Any]:
        raise NotImplementedError("a tensors model lists each of its tensors")

    def v2_datatypes(self) -> tuple[str, ...]:
        return tuple(DATATYPES)

    def v2_shape_error(self, spec: InputSpec, shape: list[int]) -> CodecError | None:
        raise NotImplementedError("a tensors model checks each of its tensors")

    def v2_values(self, spec: InputSpec, name: str, datatype: str, rows: int, data: TensorData) -> list[Any]:
        raise NotImplementedError("a tensors model reads each of its tensors")


def split_rows(batch: Mapping[str, np.ndarray[Any, Any]], rows: int) -> list[dict[str, np.ndarray[Any, Any]]]:
    """Whole tensors (batch first) as ``rows`` inputs, each a dict of its rows."""
    return [{name: array[index] for name, array in batch.items()} for index in range(rows)]


class TensorsOutput:
    """The ``tensors`` output kind: each output a dict of name → array, answered by name."""

    kind = "tensors"
    openai_embeddings = False

    def parameters_type(self, spec: OutputSpec) -> Any:
        return None

    def native(self, spec: OutputSpec, outputs: list[Any], parameters: Any) -> list[Any]:
        return [{t.name: to_json(np.asarray(row[t.name])) for t in spec.tensors} for row in outputs]


TENSORS = TensorsCodec()
TENSORS_OUTPUT = TensorsOutput()


def _kind(value: Any) -> str:
    return {bool: "a boolean", type(None): "null", dict: "an object", str: "a string", list: "a list"}.get(
        type(value), type(value).__name__
    )
