"""The ``vector`` kind: ``dim`` finite float32 numbers per input."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field, StrictFloat

from service.codecs.base import FLOAT32_MAX, CodecError, RecordCheck, TensorData, shape_mismatch, type_name

if TYPE_CHECKING:
    from service.core.repository import InputSpec

# numeric v2 datatypes a vector may arrive in (each converts exactly to float32, or is refused)
NUMERIC = ("FP32", "FP16", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")


class VectorCodec:
    kind = "vector"
    noun = "vectors"
    json_in_text_files = True
    parts: tuple[str, ...] = ()
    openai_input = False

    def check_spec(self, spec: InputSpec) -> None:
        if spec.dim is None:
            raise ValueError("a vector input needs 'dim'")

    def example(self, spec: InputSpec) -> Any:
        return [0.0] * (spec.dim or 1)

    def fits(self, spec: InputSpec, value: Any) -> bool:
        return self.record_check(spec)(value) is None

    def item_type(self, spec: InputSpec) -> Any:
        # StrictFloat takes ints too (not bools). Within float32: past it a value becomes inf in the
        # model and the outputs NaN (answered as nulls); the bound also turns an integer too large
        # for a float into a ValidationError instead of an OverflowError.
        number = Annotated[StrictFloat, Field(allow_inf_nan=False, ge=-FLOAT32_MAX, le=FLOAT32_MAX)]
        return Annotated[list[number], Field(min_length=spec.dim, max_length=spec.dim)]

    def grouped_fields(self, spec: InputSpec) -> dict[str, Any]:
        return {}

    def ungroup(self, grouped: dict[str, Any]) -> list[Any]:
        raise NotImplementedError(f"{self.kind} inputs have no grouped form")

    def record_check(self, spec: InputSpec) -> RecordCheck:
        dim = spec.dim

        def check_vector(value: Any) -> str | None:
            if not isinstance(value, list):
                return f"the input must be a list of {dim} numbers, got {type_name(value)}"
            if len(value) != dim:
                return f"the input has {len(value)} numbers; the model expects {dim}"
            for item in value:
                if isinstance(item, bool) or not isinstance(item, int | float) or not math.isfinite(item):
                    return f"the input must hold only finite numbers, got {type_name(item)} {item!r:.40}"
                if abs(item) > FLOAT32_MAX:  # would become inf in the model and come back as null
                    return f"the input must hold numbers within float32 range, got {item!r:.40}"
            return None

        return check_vector

    def v2_metadata(self, spec: InputSpec) -> dict[str, Any]:
        return {"datatype": "FP32", "shape": [-1, spec.dim]}

    def v2_datatypes(self) -> tuple[str, ...]:
        return (*NUMERIC, "BF16")

    def v2_shape_error(self, spec: InputSpec, shape: list[int]) -> CodecError | None:
        dim = spec.dim or 1
        if len(shape) == 2 and shape[1] == dim:
            return None
        return shape_mismatch(shape, f"[N, {spec.dim}]", spec.max_items * dim)

    def v2_values(self, spec: InputSpec, name: str, datatype: str, rows: int, data: TensorData) -> list[Any]:
        if datatype not in self.v2_datatypes():
            raise CodecError(
                f"input {name!r} must be FP32 (or a number type that converts exactly), got {datatype}"
            )
        rows_of_floats: list[Any] = data.numbers().reshape(rows, -1).tolist()
        return rows_of_floats


VECTOR = VectorCodec()
