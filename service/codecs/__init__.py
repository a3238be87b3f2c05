"""Input kinds, one codec each (``base.InputCodec``); the one place that knows which kinds exist.

Adding a kind is adding a module here with its codec, registering it in ``INPUT_CODECS``, and
its tests: the protocols, the file readers and the worker ask the codec, never the kind's name.
"""

from __future__ import annotations

from service.codecs.base import FLOAT32_MAX, CodecError, InputCodec, RecordCheck, TensorData, type_name
from service.codecs.image import IMAGE
from service.codecs.tensors import TENSORS
from service.codecs.text import TEXT
from service.codecs.text_pair import TEXT_PAIR
from service.codecs.vector import VECTOR

INPUT_CODECS: dict[str, InputCodec] = {
    codec.kind: codec for codec in (TEXT, TEXT_PAIR, VECTOR, IMAGE, TENSORS)
}


def input_codec(kind: str) -> InputCodec:
    """The codec of a declared input kind (declarations are validated against ``INPUT_CODECS``)."""
    return INPUT_CODECS[kind]


__all__ = [
    "FLOAT32_MAX",
    "INPUT_CODECS",
    "CodecError",
    "InputCodec",
    "RecordCheck",
    "TensorData",
    "input_codec",
    "type_name",
]
