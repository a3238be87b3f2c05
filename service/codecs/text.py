"""The ``text`` kind: one string per input, at most ``max_length`` characters."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field, StrictStr

from service.codecs.base import CodecError, RecordCheck, TensorData, shape_mismatch, type_name, utf8_elements

if TYPE_CHECKING:
    from service.core.repository import InputSpec


class TextCodec:
    kind = "text"
    noun = "text"
    json_in_text_files = False
    parts: tuple[str, ...] = ()
    openai_input = True

    def check_spec(self, spec: InputSpec) -> None:
        return None

    def example(self, spec: InputSpec) -> Any:
        return "A short sentence to warm the model up."[: spec.max_length]

    def fits(self, spec: InputSpec, value: Any) -> bool:
        return isinstance(value, str) and 0 < len(value) <= spec.max_length

    def item_type(self, spec: InputSpec) -> Any:
        return Annotated[StrictStr, Field(max_length=spec.max_length)]

    def grouped_fields(self, spec: InputSpec) -> dict[str, Any]:
        return {}

    def ungroup(self, grouped: dict[str, Any]) -> list[Any]:
        raise NotImplementedError(f"{self.kind} inputs have no grouped form")

    def record_check(self, spec: InputSpec) -> RecordCheck:
        max_length = spec.max_length

        def check_text(value: Any) -> str | None:
            if not isinstance(value, str):
                return f"the input must be a string, got {type_name(value)}"
            if len(value) > max_length:
                return f"the input has {len(value)} characters; the model accepts at most {max_length}"
            return None

        return check_text

    def v2_metadata(self, spec: InputSpec) -> dict[str, Any]:
        return {"datatype": "BYTES", "shape": [-1]}

    def v2_datatypes(self) -> tuple[str, ...]:
        return ("BYTES",)

    def v2_shape_error(self, spec: InputSpec, shape: list[int]) -> CodecError | None:
        if len(shape) == 1 or (len(shape) == 2 and shape[1] == 1):
            return None
        return shape_mismatch(shape, "[N] or [N, 1]", spec.max_items)

    def v2_values(self, spec: InputSpec, name: str, datatype: str, rows: int, data: TensorData) -> list[Any]:
        if datatype != "BYTES":
            raise CodecError(f"input {name!r} must be BYTES (UTF-8 text), got {datatype}")
        texts: list[Any] = utf8_elements(data.strings(), spec.max_length)
        return texts


TEXT = TextCodec()
