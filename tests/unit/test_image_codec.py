"""The ``image`` codec on real encoded files: what the API server checks from the bytes and the
header alone (size, format, pixels: a decompression bomb is refused without decoding it), and
what the worker decodes (first frame, EXIF orientation, every mode to RGB)."""

from __future__ import annotations

import base64
import io
import time

import numpy as np
import pytest
from PIL import Image

from service.codecs import CodecError
from service.codecs.image import IMAGE, checked, decode, image_bytes, probe
from service.core.repository import InputSpec
from tests.e2e.test_image_classifier import png_chunks

SPEC = InputSpec(kind="image", max_pixels=1_000_000, max_bytes=200_000)


def saved(image: Image.Image, kind: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, kind, **options)
    return out.getvalue()


RED = Image.new("RGB", (40, 20), (255, 0, 0))


def test_base64_data_urls_and_raw_bytes_give_the_same_file() -> None:
    data = saved(RED, "PNG")
    text = base64.b64encode(data).decode()
    assert image_bytes(text, 10_000) == data
    assert image_bytes(f"data:image/png;base64,{text}", 10_000) == data
    assert checked(data, SPEC) == data
    assert checked(text.encode(), SPEC) == data  # a v2 JSON BYTES element: base64 text
    with pytest.raises(CodecError, match="base64"):
        image_bytes("not base64 at all!", 10_000)
    with pytest.raises(CodecError, match="data URL"):
        image_bytes("data:image/png,raw", 10_000)
    with pytest.raises(CodecError) as large:
        image_bytes(base64.b64encode(b"\0" * 300_000).decode(), 200_000)
    assert large.value.too_large


def test_a_decompression_bomb_is_refused_from_its_header() -> None:
    bomb = png_chunks(50_000, 50_000)
    assert len(bomb) < 1_000
    started = time.monotonic()
    with pytest.raises(CodecError, match="2500000000 pixels") as refused:
        probe(bomb, 40_000_000)
    assert refused.value.too_large
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    ("data", "phrase"),
    [
        (b"GIF87a" + b"\0" * 3, "not an image"),
        (b"plain text, not an image", "not an image"),
        (saved(RED, "TIFF"), "not an image"),  # a real format the model does not read
        (png_chunks(0, 5), "not an image"),
        (b"", "empty"),
    ],
)
def test_what_is_not_an_accepted_image_is_named(data: bytes, phrase: str) -> None:
    with pytest.raises(CodecError, match=phrase):
        checked(data, SPEC)
    assert IMAGE.record_check(SPEC)(data) is not None


def test_decoding_applies_exif_orientation_and_takes_the_first_frame() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    rotated = decode(saved(RED, "JPEG", exif=exif), 1_000_000)
    assert rotated.size == (20, 40) and rotated.mode == "RGB"
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((0, 0, 255), (0, 255, 0))]
    animated = saved(frames[0], "GIF", save_all=True, append_images=frames[1:])
    first = decode(animated, 1_000_000)
    assert first.getpixel((0, 0)) == (0, 0, 255)


def test_every_mode_becomes_rgb() -> None:
    deep = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))  # 16-bit greyscale, white
    assert decode(saved(deep, "PNG"), 100).getpixel((0, 0)) == (255, 255, 255)
    cmyk = decode(saved(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "JPEG"), 100)
    assert cmyk.mode == "RGB" and cmyk.getpixel((0, 0))[0] > 200
    clear = decode(saved(Image.new("RGBA", (4, 4), (0, 0, 0, 0)), "PNG"), 100)
    assert clear.getpixel((0, 0)) == (255, 255, 255)  # transparent on white
    palette = decode(saved(RED.convert("P"), "PNG"), 1_000_000)
    assert palette.getpixel((0, 0)) == (255, 0, 0)


def test_a_truncated_file_passes_the_header_and_fails_decoding() -> None:
    data = saved(
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)), "PNG"
    )
    cut = data[: len(data) // 2]
    assert checked(cut, SPEC) == cut
    with pytest.raises(OSError):
        decode(cut, 1_000_000)
