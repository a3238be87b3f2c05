"""The ``image`` kind: one encoded image per input (JPEG, PNG, WebP, GIF, BMP).

Where each step runs, and why: the API server checks what is cheap and bounds the rest — the
bytes (base64 or a ``data:`` URL in JSON; a raw ``image/*`` body), at most ``max_bytes`` of them,
and the header (format, width × height at most ``max_pixels``, at least one pixel), read by
Pillow without decoding a pixel — so a decompression bomb (a 50,000 × 50,000 PNG of a few KB) is
a 413 before anything allocates its pixels. The worker decodes (first frame of an animation, EXIF
orientation applied, any mode to RGB) inside the model's forward, where a decoding error is that
input's 422 alone (:class:`service.core.rejection.InputRejected`) and the decoding's CPU is the
worker's, counted with the forward and bounded by the batcher, not the event loop's.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import warnings
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, Field, StrictStr

from service.codecs.base import CodecError, RecordCheck, TensorData, shape_mismatch, type_name

if TYPE_CHECKING:
    from service.core.repository import InputSpec

FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_BYTES = 6 << 20  # within the 8 MiB body limit once base64-encoded in JSON
# a 1 × 1 white PNG: what a model is warmed up with
_WARMUP_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4//8/AAX+Av4N70a4AAAAAElFTkSuQmCC"


def image_bytes(value: str | bytes, max_bytes: int) -> bytes:
    """The encoded image a request carries: bytes as they are; text as base64 or a ``data:`` URL."""
    if isinstance(value, bytes):
        data = value
    else:
        text = value
        if text.startswith("data:"):
            header, _, text = text.partition(",")
            if not header.endswith(";base64"):
                raise CodecError("a data URL image must be base64 (data:image/png;base64,...)")
        if len(text) > (max_bytes + 2) // 3 * 4 + 4:
            raise CodecError(f"the image is larger than the model's {max_bytes} bytes", too_large=True)
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise CodecError("an image must be base64 (or a data: URL) of its file's bytes") from None
    if len(data) > max_bytes:
        raise CodecError(
            f"the image has {len(data)} bytes; the model accepts at most {max_bytes}", too_large=True
        )
    if not data:
        raise CodecError("the image is empty")
    return data


def probe(data: bytes, max_pixels: int) -> tuple[str, int, int]:
    """(format, width, height) from the header alone; CodecError if it is not an image of an
    accepted format, has no pixels, or more than ``max_pixels`` (too large: 413)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's own bomb warning: the limit below is ours
            with Image.open(io.BytesIO(data), formats=FORMATS) as image:
                kind, (width, height) = str(image.format), image.size
    except Image.DecompressionBombError as exc:  # past twice Pillow's own limit: refused by it
        raise CodecError(
            f"the image has more pixels than the model accepts ({max_pixels}): {exc}", too_large=True
        ) from None
    except UnidentifiedImageError:
        raise CodecError(
            f"the input is not an image in a format the model reads ({', '.join(FORMATS)})"
        ) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise CodecError(f"the image's header cannot be read: {exc}") from None
    if width < 1 or height < 1:
        raise CodecError(f"the image has no pixels ({width} x {height})")
    if width * height > max_pixels:
        raise CodecError(
            f"the image has {width} x {height} = {width * height} pixels; the model accepts at most {max_pixels}",
            too_large=True,
        )
    return kind, width, height


def limits(spec: InputSpec) -> tuple[int, int]:
    """(max_bytes, max_pixels) of one image of this input."""
    return spec.max_bytes or DEFAULT_MAX_BYTES, spec.max_pixels or DEFAULT_MAX_PIXELS


_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"RIFF")


def checked(value: str | bytes, spec: InputSpec) -> bytes:
    """The encoded image of one input, its size and header checked (what the API server does).
    Bytes are the file's, unless they are base64 text (a v2 JSON tensor's BYTES element)."""
    if isinstance(value, bytes) and not value.startswith(_MAGIC):
        with contextlib.suppress(binascii.Error, ValueError):
            text = value.strip().decode("ascii")
            if text.startswith("data:") or base64.b64decode(text[:64], validate=True).startswith(_MAGIC):
                value = text
    max_bytes, max_pixels = limits(spec)
    data = image_bytes(value, max_bytes)
    probe(data, max_pixels)
    return data


def decode(data: bytes, max_pixels: int) -> Any:
    """The image as RGB pixels (a ``PIL.Image``): the first frame, EXIF orientation applied. A
    16-bit greyscale image is scaled to 8 bits; alpha is composited on white (what a viewer shows)."""
    from PIL import Image, ImageOps

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(io.BytesIO(data), formats=FORMATS) as image:
            width, height = image.size
            if width * height > max_pixels or width < 1 or height < 1:  # checked before; cheap to keep
                raise ValueError(f"the image has {width} x {height} pixels")
            image.seek(0)
            image.load()
            oriented = ImageOps.exif_transpose(image)
            if oriented.mode in ("I;16", "I;16B", "I;16L", "I"):
                oriented = oriented.point(lambda value: value / 256).convert("L")
            if oriented.mode in ("RGBA", "LA", "PA") or (
                oriented.mode == "P" and "transparency" in oriented.info
            ):
                rgba = oriented.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                return Image.alpha_composite(white, rgba).convert("RGB")
            return oriented.convert("RGB")


class ImageCodec:
    kind = "image"
    noun = "image"
    json_in_text_files = False
    parts: tuple[str, ...] = ()
    openai_input = False

    def check_spec(self, spec: InputSpec) -> None:
        return None

    def example(self, spec: InputSpec) -> Any:
        return _WARMUP_PNG

    def fits(self, spec: InputSpec, value: Any) -> bool:
        if not isinstance(value, str | bytes):
            return False
        try:
            checked(value, spec)
        except CodecError:
            return False
        return True

    def item_type(self, spec: InputSpec) -> Any:
        def valid(value: str) -> str:
            try:
                checked(value, spec)
            except CodecError as exc:
                raise ValueError(exc.message) from None
            return value

        longest = (limits(spec)[0] + 2) // 3 * 4 + 64  # base64 of max_bytes, and a data URL's header
        return Annotated[StrictStr, Field(max_length=longest), AfterValidator(valid)]

    def grouped_fields(self, spec: InputSpec) -> dict[str, Any]:
        return {}

    def ungroup(self, grouped: dict[str, Any]) -> list[Any]:
        raise NotImplementedError(f"{self.kind} inputs have no grouped form")

    def record_check(self, spec: InputSpec) -> RecordCheck:
        def check_image(value: Any) -> str | None:
            if not isinstance(value, str | bytes):
                return f"the input must be an image (base64 text), got {type_name(value)}"
            try:
                checked(value, spec)
            except CodecError as exc:
                return exc.message
            return None

        return check_image

    def v2_metadata(self, spec: InputSpec) -> dict[str, Any]:
        return {"datatype": "BYTES", "shape": [-1]}

    def v2_datatypes(self) -> tuple[str, ...]:
        return ("BYTES", "UINT8")

    def v2_shape_error(self, spec: InputSpec, shape: list[int]) -> CodecError | None:
        if len(shape) == 1 or (len(shape) == 2 and shape[1] == 1):
            return None
        if len(shape) == 4 and shape[3] == 3:  # decoded: [N, height, width, RGB]
            max_pixels = limits(spec)[1]
            if shape[1] * shape[2] > max_pixels:
                return CodecError(
                    f"images of {shape[2]} x {shape[1]} pixels; the model accepts at most {max_pixels}",
                    too_large=True,
                )
            if shape[1] < 1 or shape[2] < 1:
                return CodecError(f"images of shape {shape[1:]} have no pixels")
            return None
        return shape_mismatch(
            shape, "[N] (BYTES: encoded images) or [N, height, width, 3] (UINT8: RGB)", spec.max_items
        )

    def v2_values(self, spec: InputSpec, name: str, datatype: str, rows: int, data: TensorData) -> list[Any]:
        decoded = len(data.shape) == 4
        if datatype == "UINT8" and decoded:
            import numpy as np

            pixels = data.numbers().astype(np.uint8).reshape(data.shape)
            return list(pixels)
        if datatype != "BYTES" or decoded:
            raise CodecError(
                f"input {name!r} must be BYTES [N] (encoded images) or UINT8 [N, height, width, 3] "
                f"(RGB pixels), got {datatype} {list(data.shape)}"
            )
        images: list[Any] = []
        for index, item in enumerate(data.strings()):
            try:
                images.append(checked(item, spec))
            except CodecError as exc:
                raise CodecError(f"BYTES element {index}: {exc.message}", too_large=exc.too_large) from None
        return images


IMAGE = ImageCodec()
