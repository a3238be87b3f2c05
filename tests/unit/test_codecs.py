"""service.codecs: every input kind's codec, checked through the same questions the protocols ask."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError

from service.codecs import INPUT_CODECS, CodecError, input_codec
from service.core.repository import InputSpec

pytestmark = pytest.mark.unit

SPECS = {
    "text": InputSpec(kind="text", max_length=12, max_items=4),
    "text_pair": InputSpec(kind="text_pair", max_length=12, max_items=4),
    "vector": InputSpec(kind="vector", dim=3, max_items=4),
    "image": InputSpec(kind="image", max_items=4, max_pixels=100, max_bytes=1000),
}
# a 1 x 1 PNG, base64; an 11 x 11 one (121 pixels: past max_pixels)
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4//8/AAX+Av4N70a4AAAAAElFTkSuQmCC"
BIG_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAsAAAALCAIAAAAmzuBxAAAADUlEQVR4nGNgGAX0BwABdgABng9ZqQAAAABJRU5ErkJggg=="
GOOD: dict[str, Any] = {
    "text": "hello",
    "text_pair": ["a query", "a document"],
    "vector": [1, 2.5, -3],
    "image": PNG,
}
BAD: dict[str, list[Any]] = {
    "text": [3, None, "x" * 13, ["a"]],
    "text_pair": [
        "q\td",
        ["q"],
        ["q", "d", "e"],
        ["q", ""],
        ["", "d"],
        ["q", 3],
        ["q", "x" * 13],
        [None, "d"],
    ],
    "vector": ["1,2,3", [1, 2], [1, 2, float("nan")], [1, 2, 1e39], [True, 1, 2]],
    "image": [3, None, "not base64!", "aGVsbG8gd29ybGQ=", "data:text/plain,hello", BIG_PNG, ["a"]],
}


class Elements:
    """A v2 tensor's elements, as service.api.v2_tensors hands them to a codec."""

    def __init__(self, values: list[Any], shape: tuple[int, ...] = ()) -> None:
        self.values = values
        self.shape = shape or (len(values),)

    def strings(self) -> list[bytes]:
        return [v.encode() if isinstance(v, str) else v for v in self.values]

    def numbers(self) -> Any:
        return np.array(self.values, dtype=np.float32)


def test_every_declared_kind_has_a_codec_and_an_unknown_one_is_refused() -> None:
    # named tensors are values of another shape (a dict of arrays): tests/unit/test_tensor_codec.py
    assert set(INPUT_CODECS) == {*SPECS, "tensors"}
    with pytest.raises(
        ValidationError, match="Input should be 'text' or 'text_pair' or 'vector' or 'image' or 'tensors'"
    ):
        InputSpec(kind="pair")


@pytest.mark.parametrize("kind", SPECS)
def test_a_good_value_passes_every_check_and_its_own_example_fits(kind: str) -> None:
    spec, codec = SPECS[kind], input_codec(kind)
    assert codec.record_check(spec)(GOOD[kind]) is None
    assert codec.fits(spec, GOOD[kind]) and codec.fits(spec, codec.example(spec))
    assert TypeAdapter(codec.item_type(spec)).validate_python(GOOD[kind]) == GOOD[kind]


@pytest.mark.parametrize("kind", SPECS)
def test_a_bad_value_is_refused_the_same_way_by_every_check(kind: str) -> None:
    spec, codec = SPECS[kind], input_codec(kind)
    for value in BAD[kind]:
        assert codec.record_check(spec)(value), value
        assert not codec.fits(spec, value)
        with pytest.raises(ValidationError):
            TypeAdapter(codec.item_type(spec)).validate_python(value)


def test_a_declared_example_must_fit_its_kind() -> None:
    assert InputSpec(kind="vector", dim=2, example=[1, 2]).example == [1, 2]
    with pytest.raises(ValidationError, match="'example' must be one valid vector input"):
        InputSpec(kind="vector", dim=2, example=[1, 2, 3])
    with pytest.raises(ValidationError, match="a vector input needs 'dim'"):
        InputSpec(kind="vector")


def test_v2_text_tensors() -> None:
    spec, codec = SPECS["text"], input_codec("text")
    assert codec.v2_metadata(spec) == {"datatype": "BYTES", "shape": [-1]}
    assert codec.v2_shape_error(spec, [2]) is None and codec.v2_shape_error(spec, [2, 1]) is None
    error = codec.v2_shape_error(spec, [2, 3])
    assert error is not None and not error.too_large and "[N] or [N, 1]" in error.message
    assert codec.v2_values(spec, "TEXT", "BYTES", 2, Elements(["a", "bc"])) == ["a", "bc"]
    with pytest.raises(CodecError, match="must be BYTES"):
        codec.v2_values(spec, "TEXT", "FP32", 1, Elements([1.0]))
    with pytest.raises(CodecError, match="at most 12") as too_long:
        codec.v2_values(spec, "TEXT", "BYTES", 1, Elements(["x" * 13]))
    assert too_long.value.too_large
    with pytest.raises(CodecError, match="not valid UTF-8"):
        codec.v2_values(spec, "TEXT", "BYTES", 1, Elements([b"\xff"]))


def test_v2_vector_tensors() -> None:
    spec, codec = SPECS["vector"], input_codec("vector")
    assert codec.v2_metadata(spec) == {"datatype": "FP32", "shape": [-1, 3]}
    assert codec.v2_shape_error(spec, [2, 3]) is None
    assert codec.v2_shape_error(spec, [2, 4]) is not None
    far = codec.v2_shape_error(spec, [1000, 3, 1])
    assert far is not None and far.too_large
    assert codec.v2_values(spec, "X", "FP32", 2, Elements([1, 2, 3, 4, 5, 6])) == [[1, 2, 3], [4, 5, 6]]
    with pytest.raises(CodecError, match="must be FP32"):
        codec.v2_values(spec, "X", "BYTES", 1, Elements(["a"]))


def test_v2_pair_tensors() -> None:
    spec, codec = SPECS["text_pair"], input_codec("text_pair")
    assert codec.v2_metadata(spec) == {"datatype": "BYTES", "shape": [-1, 2]}
    assert codec.v2_shape_error(spec, [3, 2]) is None
    assert codec.v2_shape_error(spec, [3]) is not None and codec.v2_shape_error(spec, [3, 1]) is not None
    pairs = codec.v2_values(spec, "PAIR", "BYTES", 2, Elements(["q1", "d1", "q2", "d2"]))
    assert pairs == [["q1", "d1"], ["q2", "d2"]]
    with pytest.raises(CodecError, match="element 1: the document is empty"):
        codec.v2_values(spec, "PAIR", "BYTES", 1, Elements(["q", ""]))
