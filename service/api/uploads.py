"""Request bodies, read in bounded chunks in the API server: whole bodies (JSON, v2 tensors,
OpenAI requests; gzip/deflate decompressed within the same limit), and file uploads spooled to disk.

LitServe would hold a whole upload in memory and pickle it to a worker; here the body goes
straight from the socket into a spool file (``with open(..., "wb")``), raw or as the single
part of ``multipart/form-data``, and the size limit answers 413 as soon as it is crossed.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from service.api.errors import ApiError
from service.files.readers import EXTENSIONS, FORMATS, Format

CONTENT_TYPES: dict[str, Format] = {
    "application/x-ndjson": "jsonl",
    "application/jsonl": "jsonl",
    "application/json-lines": "jsonl",
    "text/csv": "csv",
    "text/plain": "txt",
    "application/x-tar": "tar",
    "application/gzip": "tar",
    "application/x-gtar": "tar",
    "application/zip": "zip",
    "application/x-zip-compressed": "zip",
}
JSON_TYPES = ("application/json",)
# Content-Encoding -> zlib wbits: gzip's header, and HTTP's "deflate", which is the zlib format (RFC 9110)
CONTENT_ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


async def body_chunks(request: Request, idle_timeout: float) -> AsyncIterator[bytes]:
    """The request body, chunk by chunk. A client that goes away mid-body is a 499, not a 500;
    one that stops sending for ``idle_timeout`` seconds gets a 408 (no slowloris holds a slot)."""
    stream = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), idle_timeout)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise ApiError(408, f"no part of the request body arrived for {idle_timeout:g} s") from None
        except ClientDisconnect:
            raise ApiError(499, "client closed the request before sending the whole body") from None
        yield chunk


async def read_body(request: Request, limit: int, idle_timeout: float) -> bytes:
    """The whole body, any content type: 413 past ``limit`` bytes (before decompression, and
    after it for a ``Content-Encoding`` of ``gzip`` or ``deflate``), 415 for another encoding."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    body = bytearray()
    async for chunk in body_chunks(request, idle_timeout):
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"request body exceeds the limit of {limit} bytes")
    return decode_content(bytes(body), request.headers.get("content-encoding"), limit)


def decode_content(body: bytes, encoding: str | None, limit: int) -> bytes:
    """``body`` decompressed as its ``Content-Encoding`` says, never past ``limit`` bytes (a
    compressed bomb is a 413 after ``limit`` bytes of output, not an exhausted memory)."""
    codings = [part.strip().lower() for part in (encoding or "").split(",") if part.strip()]
    codings = [coding for coding in codings if coding != "identity"]
    if not codings:
        return body
    if len(codings) > 1 or codings[0] not in CONTENT_ENCODINGS:
        raise ApiError(
            415, f"content encoding {(encoding or '')[:40]!r} is not supported; send gzip, deflate or none"
        )
    coding = codings[0]
    decompressor = zlib.decompressobj(CONTENT_ENCODINGS[coding])
    try:
        decoded = decompressor.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ApiError(400, f"the {coding} body cannot be decompressed: {exc}") from None
    if len(decoded) > limit or decompressor.unconsumed_tail:
        raise ApiError(413, f"the decompressed request body exceeds the limit of {limit} bytes")
    if not decompressor.eof:
        raise ApiError(400, f"the {coding} body is truncated")
    if decompressor.unused_data:
        raise ApiError(400, f"the {coding} body has data after its end")
    return decoded


def media_type(request: Request) -> str:
    """The request's content type without its parameters, lower case ("" when none)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_json(request: Request, limit: int, idle_timeout: float) -> Any:
    """The body parsed as JSON: 415 for another content type, 413 past ``limit`` bytes, 400 if malformed."""
    content_type = media_type(request)
    if content_type not in JSON_TYPES:
        shown = content_type or "none"
        raise ApiError(415, f"content type must be application/json, got {shown}")
    body = await read_body(request, limit, idle_timeout)
    if not body:
        raise ApiError(400, 'request body is empty; expected a JSON object like {"inputs": [...]}')
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"malformed JSON: {exc}") from None


class _Part:
    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self._field = b""
        self._value = b""


async def spool_upload(
    request: Request, target: Path, limit: int, requested: str | None, idle_timeout: float
) -> Format:
    """Write the body (or its single multipart part) to ``target``; return the file's format.

    The format comes from ``?format=``, else the (part's) content type, else the part's file
    name. Raises ApiError 413 past ``limit`` bytes, 415 for an unknown type, 400 for bad multipart.
    The caller removes ``target`` on any error.
    """
    if requested is not None and requested not in FORMATS:
        raise ApiError(400, f"format must be one of {', '.join(FORMATS)}, got {requested[:40]!r}")
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    kind = content_type.decode("latin-1").lower()
    declared = request.headers.get("content-length")
    if (
        declared is not None
        and declared.isdigit()
        and int(declared) > limit + (64 * 1024 if kind.startswith("multipart/") else 0)
    ):
        raise ApiError(413, f"upload of {declared} bytes exceeds the limit of {limit} bytes")
    if kind == "multipart/form-data":
        return await _spool_multipart(request, target, limit, requested, options, idle_timeout)
    fmt: Any = requested or CONTENT_TYPES.get(kind)
    if fmt is None:
        shown = kind or "none"
        raise ApiError(
            415,
            f"content type {shown} is not a file format; send application/x-ndjson, text/csv, text/plain "
            "or multipart/form-data",
        )
    written = 0
    with open(target, "wb") as out:
        async for chunk in body_chunks(request, idle_timeout):
            written += len(chunk)
            if written > limit:
                raise ApiError(413, f"upload exceeds the limit of {limit} bytes")
            out.write(chunk)
    result: Format = fmt
    return result


async def _spool_multipart(
    request: Request,
    target: Path,
    limit: int,
    requested: str | None,
    options: dict[bytes, bytes],
    idle_timeout: float,
) -> Format:
    boundary = options.get(b"boundary")
    if not boundary:
        raise ApiError(400, "multipart body without a boundary")
    parts: list[_Part] = []
    state = {"written": 0, "ended": 0}

    with open(target, "wb") as out:

        def on_part_begin() -> None:
            parts.append(_Part())
            if len(parts) > 1:
                raise ApiError(400, "multipart upload must have exactly one part (the file)")

        def on_header_field(data: bytes, start: int, end: int) -> None:
            part = parts[-1]
            if part._value:
                part.headers[part._field.decode("latin-1").lower()] = part._value.decode("latin-1")
                part._field, part._value = b"", b""
            part._field += data[start:end]

        def on_header_value(data: bytes, start: int, end: int) -> None:
            parts[-1]._value += data[start:end]

        def on_headers_finished() -> None:
            part = parts[-1]
            if part._field:
                part.headers[part._field.decode("latin-1").lower()] = part._value.decode("latin-1")

        def on_part_data(data: bytes, start: int, end: int) -> None:
            state["written"] += end - start
            if state["written"] > limit:
                raise ApiError(413, f"upload exceeds the limit of {limit} bytes")
            out.write(data[start:end])

        def on_end() -> None:
            state["ended"] = 1

        parser = MultipartParser(
            boundary,
            {
                "on_part_begin": on_part_begin,
                "on_header_field": on_header_field,
                "on_header_value": on_header_value,
                "on_headers_finished": on_headers_finished,
                "on_part_data": on_part_data,
                "on_end": on_end,
            },
        )
        try:
            async for chunk in body_chunks(request, idle_timeout):
                parser.write(chunk)
            parser.finalize()
        except ApiError:
            raise
        except Exception as exc:
            raise ApiError(400, f"malformed multipart body: {exc}") from None
    if not parts:
        raise ApiError(400, "multipart upload has no part; send the file as its single part")
    if not state["ended"]:
        raise ApiError(400, "malformed multipart body: the closing boundary is missing (truncated upload?)")
    headers = parts[0].headers
    part_type, _ = parse_options_header(headers.get("content-type", ""))
    _, disposition = parse_options_header(headers.get("content-disposition", ""))
    filename = disposition.get(b"filename", b"").decode("utf-8", "replace")
    fmt: Any = requested or CONTENT_TYPES.get(part_type.decode("latin-1").lower())
    if fmt is None:
        fmt = EXTENSIONS.get(Path(filename).suffix.lower()) if filename else None
    if fmt is None:
        raise ApiError(
            415,
            "cannot tell the file's format: give ?format=jsonl|csv|txt, a part content type or a file name extension",
        )
    result: Format = fmt
    return result
