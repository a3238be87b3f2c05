"""Images as they arrive without JSON, on an image model's native predict route: a raw ``image/*``
body (``curl -T cat.jpg`` / ``--data-binary @cat.jpg -H 'content-type: image/jpeg'``) is one
input; a ``multipart/form-data`` body's file parts are the inputs, in order. Both are read whole
within ``max_body_bytes`` (the JSON bodies' limit) before anything else. ``parameters`` come
from the query string (``?top_k=3``). Each image is checked as a JSON one is
(:func:`service.codecs.image.checked`): bytes, format and pixels from the header, before a worker
sees it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from pydantic import ValidationError
from starlette.formparsers import MultiPartParser
from starlette.requests import Request

from service.api.errors import ApiError, describe_validation
from service.api.uploads import read_body
from service.codecs import CodecError
from service.codecs.image import checked, limits
from service.core.repository import ModelSpec
from service.settings import Settings


def takes_upload(spec: ModelSpec, content_type: str) -> bool:
    """Whether this request carries its images without JSON."""
    return spec.inputs.kind == "image" and (
        content_type.startswith("image/") or content_type == "multipart/form-data"
    )


def _checked(spec: ModelSpec, data: bytes, where: str) -> bytes:
    try:
        return checked(data, spec.inputs)
    except CodecError as exc:
        raise ApiError(413 if exc.too_large else 422, f"{where}: {exc.message}") from None


async def uploaded_images(
    request: Request, spec: ModelSpec, settings: Settings, content_type: str
) -> list[bytes]:
    """The encoded images of a raw or multipart body (413 past the body limit or the model's
    ``max_items``; 400 for a multipart body without files)."""
    if content_type.startswith("image/"):
        body = await read_body(request, settings.max_body_bytes, settings.body_timeout)
        if not body:
            raise ApiError(400, "the request body is empty; send the image's bytes")
        return [_checked(spec, body, "the body")]
    # the whole body first, within the body limit (413 as soon as it is crossed, chunked or not),
    # then its parts: nothing unbounded is spooled
    body = await read_body(request, settings.max_body_bytes, settings.body_timeout)

    async def replay() -> AsyncGenerator[bytes, None]:
        yield body

    limit, largest = spec.inputs.max_items, limits(spec.inputs)[0]
    images: list[bytes] = []
    try:
        parser = MultiPartParser(
            request.headers, replay(), max_files=limit, max_fields=limit, max_part_size=largest
        )
        form = await parser.parse()
        try:
            for field, value in form.multi_items():
                if isinstance(value, str):
                    continue
                data = await value.read(largest + 1)
                images.append(_checked(spec, data, f"file part {field!r} ({value.filename or 'no name'})"))
        finally:
            await form.close()  # its spooled parts
    except ApiError:
        raise
    except Exception as exc:  # python-multipart / starlette: malformed, too many parts
        text = str(getattr(exc, "detail", exc))
        status = 413 if "maximum number" in text.lower() or "too many" in text.lower() else 400
        raise ApiError(status, f"the multipart body cannot be read: {text[:200]}") from None
    if not images:
        raise ApiError(400, "the multipart body has no file part; send each image as a file")
    if len(images) < spec.inputs.min_items:
        raise ApiError(422, f"the model takes at least {spec.inputs.min_items} images, got {len(images)}")
    return images


def query_parameters(request: Request, spec: ModelSpec) -> Any:
    """The output kind's ``parameters`` from the query string (None: none given)."""
    options: Any = spec.outputs.codec.parameters_type(spec.outputs)
    given = dict(request.query_params)
    if not given:
        return None
    if options is None:
        raise ApiError(422, f"this model takes no parameters, got {sorted(given)}")
    try:
        return options.model_validate_strings(given)
    except ValidationError as exc:
        raise ApiError(422, describe_validation(exc)) from None
