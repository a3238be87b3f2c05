"""``POST /v1/models/{name}/predict-file``: a file in, NDJSON results streamed out.

The upload is spooled to disk and checked, then handed to a worker as a file job; the worker
appends results to an output spool file and reports how many bytes are ready; this module
streams those bytes as they come. Whatever happens (success, bad input, worker error, a client
that goes away mid-stream), the spool files are removed and the slot released.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI, Request
from starlette.responses import Response, StreamingResponse

from service import metrics
from service.api.auth import require_api_key
from service.api.dispatch import FileAnswers
from service.api.errors import ApiError, error_responses
from service.api.state import service_state
from service.api.uploads import spool_upload
from service.core.messages import Failure, FileDone, FileJob, FileProgress
from service.core.spool import remove_quietly
from service.files.job import check_archive_kind, input_keys
from service.files.readers import FormatError, check_format

FILE_CHUNK = 64 * 1024
MAX_KEY_LENGTH = 256  # a key is echoed in per-record errors: keep it short


async def predict_file(request: Request, name: str) -> Response:
    """Spool, check and submit the file; stream the worker's NDJSON results as they grow."""
    state = service_state(request)
    settings = state.settings
    started, arrived = time.perf_counter(), time.monotonic()
    token = uuid.uuid4().hex
    source, target = state.spool_dir / f"{token}.in", state.spool_dir / f"{token}.out"
    cleanups: list[Callable[[], None]] = [lambda: remove_quietly(source, target)]

    def cleanup(code: int) -> None:
        for step in reversed(cleanups):
            step()
        state.observe(name, metrics.FILE_ENDPOINT, started, code)

    try:
        require_api_key(request, name)
        route = state.route(name)
        params = request.query_params
        fmt = await spool_upload(
            request, source, settings.max_file_bytes, params.get("format"), settings.body_timeout
        )
        csv = fmt == "csv"
        input_key = params.get("input_column" if csv else "input_key")
        id_key = params.get("id_column" if csv else "id_key", "id")
        for label, key in (("input", input_key or "input"), ("id", id_key)):
            if not 0 < len(key) <= MAX_KEY_LENGTH:
                raise ApiError(
                    400, f"the {label} key or column name must have 1 to {MAX_KEY_LENGTH} characters"
                )
        if fmt == "folder":
            raise ApiError(400, "format folder is for the command line; upload a tar or zip archive")
        try:
            keys = input_keys(route.spec.inputs, input_key)
            check_archive_kind(route.spec.inputs, fmt)
        except FormatError as exc:
            raise ApiError(415, str(exc)) from None
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        try:
            await asyncio.to_thread(
                check_format,
                source,
                fmt,
                input_key=keys,
                id_key=id_key,
                max_line_bytes=settings.max_line_bytes,
            )
        except FormatError as exc:
            raise ApiError(400, f"not a valid {fmt} file: {exc}") from None
        job = FileJob(str(source), str(target), fmt, input_key, id_key, arrived)
        answers = await state.dispatcher.submit_file(route, job)
        cleanups.append(answers.close)
    except ApiError as exc:
        cleanup(exc.status)
        return exc.response()
    except BaseException:
        cleanup(500)
        raise
    return OwnedStreamingResponse(
        follow_results(answers, target), on_close=lambda: cleanup(200), media_type="application/x-ndjson"
    )


async def follow_results(answers: FileAnswers, target: Path) -> AsyncIterator[bytes]:
    """Stream the worker's output spool file as it grows: the worker says how many bytes are
    ready; we send them in bounded chunks. A failure mid-file ends the stream with an error line."""
    sent = 0
    with open(target, "rb") as handle:
        async for answer in answers:
            if isinstance(answer, Failure):
                yield orjson.dumps({"error": f"stopped: {answer.message}"}) + b"\n"
                return
            if not isinstance(answer, FileProgress | FileDone):
                yield orjson.dumps({"error": "stopped: worker failed"}) + b"\n"
                return
            while sent < answer.ready:
                chunk = handle.read(min(FILE_CHUNK, answer.ready - sent))
                if not chunk:
                    break
                sent += len(chunk)
                yield chunk


class OwnedStreamingResponse(StreamingResponse):
    """A streaming response that releases what it owns when it ends, however it ends
    (finished, failed, or the client went away before or during the body)."""

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


def register(app: FastAPI) -> None:
    app.add_api_route(
        "/v1/models/{name}/predict-file",
        predict_file,
        methods=["POST"],
        response_class=Response,
        responses={
            200: {
                "description": "NDJSON results, one line per record",
                "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
            },
            **error_responses(400, 401, 404, 408, 413, 415, 422, 503),
        },
        tags=["predict"],
        summary="Stream a JSONL, CSV or text file through a model; NDJSON results, one line per record",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/x-ndjson": {"schema": {"type": "string", "format": "binary"}},
                    "text/csv": {"schema": {"type": "string", "format": "binary"}},
                    "text/plain": {"schema": {"type": "string", "format": "binary"}},
                },
            }
        },
    )
    # curl -T FILE uploads with PUT: the same route (undocumented: one method in the schema)
    app.add_api_route(
        "/v1/models/{name}/predict-file", predict_file, methods=["PUT"], include_in_schema=False
    )
