"""The ``text_pair`` kind: a query and a document, ``[query, document]``, each a non-empty string
of at most ``max_length`` characters (what a cross-encoder reranker scores)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field, StrictStr

from service.codecs.base import CodecError, RecordCheck, TensorData, shape_mismatch, type_name, utf8_elements

if TYPE_CHECKING:
    from service.core.repository import InputSpec

HALVES = ("query", "document")


class TextPairCodec:
    kind = "text_pair"
    noun = "query-document pairs"
    json_in_text_files = True  # a csv cell or txt line holds the pair as a JSON array
    openai_input = False
    parts: tuple[str, ...] = HALVES

    def check_spec(self, spec: InputSpec) -> None:
        return None

    def example(self, spec: InputSpec) -> Any:
        return [
            "What is the weather like?"[: spec.max_length],
            "It is sunny and warm today."[: spec.max_length],
        ]

    def fits(self, spec: InputSpec, value: Any) -> bool:
        return self.record_check(spec)(value) is None

    def item_type(self, spec: InputSpec) -> Any:
        return Annotated[list[self._half(spec)], Field(min_length=2, max_length=2)]  # type: ignore[misc]

    def _half(self, spec: InputSpec) -> Any:
        return Annotated[StrictStr, Field(min_length=1, max_length=spec.max_length)]

    def grouped_fields(self, spec: InputSpec) -> dict[str, Any]:
        """One query against many documents: ``{"query": ..., "documents": [...]}``."""
        half = self._half(spec)
        many = Annotated[list[half], Field(min_length=spec.min_items, max_length=spec.max_items)]  # type: ignore[valid-type]
        return {"query": half, "documents": many}

    def ungroup(self, grouped: dict[str, Any]) -> list[Any]:
        return [[grouped["query"], document] for document in grouped["documents"]]

    def record_check(self, spec: InputSpec) -> RecordCheck:
        max_length = spec.max_length

        def check_pair(value: Any) -> str | None:
            if not isinstance(value, list) or len(value) != 2:
                return f"the input must be a [query, document] pair of strings, got {type_name(value)}"
            for half, text in zip(HALVES, value, strict=True):
                if not isinstance(text, str):
                    return f"the {half} must be a string, got {type_name(text)}"
                if not text:
                    return f"the {half} is empty"
                if len(text) > max_length:
                    return f"the {half} has {len(text)} characters; the model accepts at most {max_length}"
            return None

        return check_pair

    def v2_metadata(self, spec: InputSpec) -> dict[str, Any]:
        return {"datatype": "BYTES", "shape": [-1, 2]}

    def v2_datatypes(self) -> tuple[str, ...]:
        return ("BYTES",)

    def v2_shape_error(self, spec: InputSpec, shape: list[int]) -> CodecError | None:
        if len(shape) == 2 and shape[1] == 2:
            return None
        return shape_mismatch(shape, "[N, 2] (query, document)", spec.max_items * 2)

    def v2_values(self, spec: InputSpec, name: str, datatype: str, rows: int, data: TensorData) -> list[Any]:
        if datatype != "BYTES":
            raise CodecError(f"input {name!r} must be BYTES (UTF-8 query and document), got {datatype}")
        texts = utf8_elements(data.strings(), spec.max_length)
        for index, text in enumerate(texts):
            if not text:
                raise CodecError(f"BYTES element {index}: the {HALVES[index % 2]} is empty")
        return [[texts[2 * row], texts[2 * row + 1]] for row in range(rows)]


TEXT_PAIR = TextPairCodec()
