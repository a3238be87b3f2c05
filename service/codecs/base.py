"""What every input kind's codec does, defined once (torch-free: the API servers, the worker and
the file readers all use it).

A codec validates a request's value once, in the shape each way in gives it (a JSON item, a
file record, a v2 tensor), and raises :class:`CodecError` naming what is wrong; each protocol
decides the status and the body. It also says what the kind looks like from outside (a pydantic
item type for the native route and OpenAPI, the v2 tensor metadata) and what the worker warms a
model up with.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from service.core.repository import InputSpec

FLOAT32_MAX = 3.4028234663852886e38  # the largest finite float32: larger inputs become inf in a model

# one file record's check: an error string naming what is wrong, or None
RecordCheck = Callable[[Any], "str | None"]


class CodecError(ValueError):
    """A value that does not fit its kind. ``too_large``: it is past a size limit (protocols
    that distinguish it answer 413)."""

    def __init__(self, message: str, *, too_large: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.too_large = too_large


class TensorData(Protocol):
    """An Open Inference Protocol tensor's elements, read on demand (``service.api.v2_tensors``)."""

    @property
    def shape(self) -> tuple[int, ...]:
        """The tensor's shape, as the codec's ``v2_shape_error`` checked it."""
        ...

    def strings(self) -> list[bytes]:
        """Every element as bytes (BYTES tensors)."""
        ...

    def numbers(self) -> Any:
        """Every element as a flat float32 numpy array (numeric tensors, converted exactly)."""
        ...


class InputCodec(Protocol):
    """One input kind."""

    kind: str
    # how error messages name one input of this kind ("text", "vector")
    noun: str
    # csv cells and txt lines of a file hold this kind as JSON (a vector), not as the raw text
    json_in_text_files: bool
    # OpenAI's /v1/embeddings can carry it (its ``input`` is text)
    openai_input: bool
    # the names of its parts when one input is several strings (a pair: query, document): file
    # records may give them as keys or columns of those names, native requests grouped
    parts: tuple[str, ...]

    def check_spec(self, spec: InputSpec) -> None:
        """Refuse a declaration this kind cannot serve (ValueError naming the field)."""
        ...

    def example(self, spec: InputSpec) -> Any:
        """A valid input to warm a model up with when it declares none."""
        ...

    def fits(self, spec: InputSpec, value: Any) -> bool:
        """Whether ``value`` is one valid input (a declared example)."""
        ...

    def item_type(self, spec: InputSpec) -> Any:
        """The pydantic type of one input in a JSON request (native route, OpenAPI)."""
        ...

    def record_check(self, spec: InputSpec) -> RecordCheck:
        """The check of one file record's value."""
        ...

    def grouped_fields(self, spec: InputSpec) -> dict[str, Any]:
        """The fields of the native route's grouped form, pydantic types by name (``{}``: none):
        a pair model also takes ``{"query": ..., "documents": [...]}``."""
        ...

    def ungroup(self, grouped: dict[str, Any]) -> list[Any]:
        """The inputs a grouped request (its ``grouped_fields``' values by name) stands for."""
        ...

    def v2_metadata(self, spec: InputSpec) -> dict[str, Any]:
        """``datatype`` and ``shape`` of the input tensor in v2 model metadata (-1: free)."""
        ...

    def v2_datatypes(self) -> tuple[str, ...]:
        """The datatypes a v2 request may send."""
        ...

    def v2_shape_error(self, spec: InputSpec, shape: list[int]) -> CodecError | None:
        """Why ``shape`` is not this input's (None when it fits)."""
        ...

    def v2_values(self, spec: InputSpec, name: str, datatype: str, rows: int, data: TensorData) -> list[Any]:
        """The ``rows`` inputs a v2 tensor holds."""
        ...


def type_name(value: Any) -> str:
    """How a record error names a value's type."""
    return "null" if value is None else type(value).__name__


def utf8_elements(raw: list[bytes], max_length: int) -> list[str]:
    """A BYTES tensor's elements as text: each valid UTF-8 of at most ``max_length`` characters."""
    texts: list[str] = []
    for index, item in enumerate(raw):
        try:
            text = item.decode("utf-8")
        except UnicodeDecodeError:
            raise CodecError(f"BYTES element {index} is not valid UTF-8 text") from None
        if len(text) > max_length:
            raise CodecError(
                f"BYTES element {index} has {len(text)} characters; the model accepts at most {max_length}",
                too_large=True,
            )
        texts.append(text)
    return texts


def shape_mismatch(shape: list[int], expected: str, largest: int) -> CodecError:
    """Why a v2 ``shape`` is not the model's ``expected`` one: past ``largest`` elements in any
    dimension (or 8 dimensions) it is too large (413), else it does not match (400)."""
    if len(shape) > 8 or any(d > largest for d in shape):
        return CodecError(
            f"shape of {len(shape)} dimensions is far past the model's {expected}", too_large=True
        )
    return CodecError(f"shape {shape} does not match the model's input shape {expected}")
