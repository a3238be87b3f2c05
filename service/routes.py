"""The HTTP API, served by LitServe's API-server processes.

Requests are validated here, before they cross into a worker: a client mistake is answered
with a 4xx from the API server and never reaches (or kills) an inference worker. Accepted
requests go onto the model's LitServe request queue; the answer comes back through LitServe's
response routing into this process's response buffer.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import multiprocessing as mp
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any

import orjson
from fastapi import FastAPI, Request
from litserve.utils import LitAPIStatus, ResponseBufferItem, WorkerSetupStatus
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictStr, ValidationError
from starlette.responses import Response, StreamingResponse

from service import metrics
from service.errors import ApiError, describe_validation, install_error_handlers, json_response
from service.readers import FLOAT32_MAX, FormatError, check_format
from service.repository import ModelSpec
from service.settings import Settings
from service.uploads import body_chunks, default_spool_dir, remove_quietly, spool_upload
from service.worker import internal_path

JSON_TYPES = ("application/json",)
TIMEOUT_HEADER = "x-request-timeout"


def request_model_for(spec: ModelSpec) -> type[BaseModel]:
    """The pydantic model of ``{"inputs": [...]}`` for one model's declared input limits."""
    limits = spec.inputs
    item: Any
    if limits.kind == "text":
        item = Annotated[StrictStr, Field(max_length=limits.max_length)]
    else:
        # StrictFloat takes ints too (not bools). Within float32: past it a value becomes inf in the
        # model and the outputs NaN (answered as nulls); the bound also turns an integer too large
        # for a float into a ValidationError instead of an OverflowError.
        number = Annotated[StrictFloat, Field(allow_inf_nan=False, ge=-FLOAT32_MAX, le=FLOAT32_MAX)]
        item = Annotated[list[number], Field(min_length=limits.dim, max_length=limits.dim)]

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", title=f"{spec.name}PredictRequest")
        inputs: Annotated[list[item], Field(min_length=limits.min_items, max_length=limits.max_items)]

    return PredictRequest


class PredictResponse(BaseModel):
    model: str
    version: str
    outputs: list[Any]


class ErrorResponse(BaseModel):
    """The body of every error answer."""

    error: str


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` declaring these error statuses with the ``{"error": ...}`` body."""
    return {code: {"model": ErrorResponse, "description": HTTPStatus(code).phrase} for code in codes}


@dataclass
class ModelRoute:
    spec: ModelSpec
    request_model: type[BaseModel]
    workers: int
    max_queue_size: int
    max_batch_size: int
    inflight: Any  # multiprocessing.Value shared by every API server process
    device: str


class ServiceState:
    """What the API servers share: created in the launcher before LitServe forks them."""

    def __init__(self, settings: Settings, routes: dict[str, ModelRoute]) -> None:
        self.settings = settings
        self.routes = routes
        self.shutting_down = mp.Value("b", 0)  # new requests are refused (503)
        # readiness answers 503 while requests are still served (SIGTERM's shutdown_delay)
        self.unready = mp.Value("b", 0)
        self.server: Any = None  # the LitServer, set by build_server
        self.spool_dir: Path = settings.spool_dir or default_spool_dir(settings.port)

    def readiness(self) -> dict[str, bool]:
        status = self.server.workers_setup_status if self.server is not None else None
        snapshot: dict[str, str] = dict(status.items()) if status else {}
        ready: dict[str, bool] = {}
        for name, route in self.routes.items():
            states = [snapshot.get(f"{name}_{index}") for index in range(route.workers)]
            ready[name] = all(state == WorkerSetupStatus.READY for state in states)
        return ready

    def deadline_seconds(self, request: Request) -> float:
        raw = request.headers.get(TIMEOUT_HEADER)
        if raw is None:
            return self.settings.request_timeout
        try:
            value = float(raw)
        except ValueError:
            raise ApiError(400, f"{TIMEOUT_HEADER} must be a number of seconds, got {raw[:40]!r}") from None
        if not math.isfinite(value) or value <= 0:
            raise ApiError(400, f"{TIMEOUT_HEADER} must be a positive number of seconds")
        return min(value, self.settings.max_request_timeout)


async def read_json(request: Request, limit: int, idle_timeout: float) -> Any:
    """The body parsed as JSON: 415 for another content type, 413 past ``limit`` bytes, 400 if malformed."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in JSON_TYPES:
        shown = content_type or "none"
        raise ApiError(415, f"content type must be application/json, got {shown}")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    body = bytearray()
    async for chunk in body_chunks(request, idle_timeout):
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"request body exceeds the limit of {limit} bytes")
    if not body:
        raise ApiError(400, 'request body is empty; expected a JSON object like {"inputs": [...]}')
    try:
        return orjson.loads(bytes(body))
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"malformed JSON: {exc}") from None


def register_routes(app: FastAPI, state: ServiceState) -> None:
    install_error_handlers(app)
    settings = state.settings

    def observe(model: str, endpoint: str, started: float, code: int) -> None:
        label = model if model in state.routes else metrics.UNKNOWN_MODEL
        metrics.REQUESTS.labels(label, endpoint, str(code)).inc()
        metrics.REQUEST_DURATION.labels(label, endpoint).observe(time.perf_counter() - started)

    api_keys = [key.encode() for key in settings.all_api_keys()]
    metrics_key = settings.metrics_api_key.get_secret_value().encode() if settings.metrics_api_key else None

    def presented_key(request: Request) -> bytes:
        header = request.headers.get("x-api-key")
        if header is None:
            scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
            header = credentials.strip() if scheme.lower() == "bearer" else ""
        return header.encode("utf-8", "replace")

    def authorize(request: Request, keys: list[bytes], model: str | None) -> None:
        """Constant-time check against every key; 401 without saying what was wrong."""
        if not keys:
            return
        presented = presented_key(request)
        valid = False
        for key in keys:  # no early exit: the time taken does not depend on which key matched
            valid |= hmac.compare_digest(presented, key)
        if not valid:
            label = model if model in state.routes else metrics.UNKNOWN_MODEL
            metrics.REJECTED.labels(label, "unauthorized").inc()
            raise ApiError(401, "missing or invalid API key", {"WWW-Authenticate": "Bearer"})

    def model_route(name: str) -> ModelRoute:
        route = state.routes.get(name)
        if route is None:
            known = ", ".join(state.routes)
            raise ApiError(404, f"model {name[:100]!r} is not served here (served: {known})")
        return route

    def admit(route: ModelRoute) -> None:
        """Count the request in; 503 when shutting down or the model's queue is full."""
        name = route.spec.name
        if state.shutting_down.value:
            metrics.REJECTED.labels(name, "shutting_down").inc()
            raise ApiError(503, "server is shutting down; retry on another replica", {"Retry-After": "1"})
        with route.inflight.get_lock():
            full = route.inflight.value >= route.max_queue_size
            if not full:
                route.inflight.value += 1
        if full:
            metrics.REJECTED.labels(name, "queue_full").inc()
            raise ApiError(
                503,
                f"model {name!r} has {route.max_queue_size} requests queued; retry later",
                {"Retry-After": "1"},
            )
        metrics.IN_FLIGHT.labels(name).inc()

    def release(route: ModelRoute) -> None:
        metrics.IN_FLIGHT.labels(route.spec.name).dec()
        with route.inflight.get_lock():
            route.inflight.value -= 1

    # LitServe's request queue is a Manager proxy: put() is a blocking round trip to another
    # process. One thread does the puts, in order, so the event loop never stalls on it.
    put_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="enqueue")

    async def enqueue(
        route: ModelRoute, request: Request, arrived: float, payload: dict[str, Any]
    ) -> tuple[str, Any]:
        """Put an admitted request on the model's LitServe queue; return its uid and response buffer item."""
        server = state.server
        uid = uuid.uuid4().hex
        item = ResponseBufferItem(event=asyncio.Event(), response_queue=deque())
        server.response_buffer[uid] = item
        queue = server._get_request_queue(internal_path(route.spec.name))
        message = (request.app.response_queue_id, uid, arrived, payload)
        await asyncio.get_running_loop().run_in_executor(put_thread, queue.put, message)
        return uid, item

    def precheck(route: ModelRoute) -> None:
        """Refuse early, before the body is read and parsed, when the request could not be admitted."""
        name = route.spec.name
        if state.shutting_down.value:
            metrics.REJECTED.labels(name, "shutting_down").inc()
            raise ApiError(503, "server is shutting down; retry on another replica", {"Retry-After": "1"})
        if route.inflight.value >= route.max_queue_size:
            metrics.REJECTED.labels(name, "queue_full").inc()
            raise ApiError(
                503,
                f"model {name!r} has {route.max_queue_size} requests queued; retry later",
                {"Retry-After": "1"},
            )

    async def release_when_answered(route: ModelRoute, uid: str, answer: Any) -> None:
        """After a 504 the request may still sit in the queue: its slot stays taken until the
        worker drops or answers it, so the bound keeps bounding the real queue."""
        try:
            await asyncio.wait({answer}, timeout=settings.max_request_timeout)
        finally:
            answer.cancel()
            state.server.response_buffer.pop(uid, None)
            release(route)

    async def next_message(item: Any, timeout: float | None) -> tuple[Any, str]:
        while not item.response_queue:
            item.event.clear()
            if item.response_queue:
                break
            await asyncio.wait_for(item.event.wait(), timeout=timeout)
        data, status = item.response_queue.popleft()
        return data, status

    def raise_for(data: Any) -> None:
        if isinstance(data, dict) and "status" in data:
            raise ApiError(int(data["status"]), str(data["error"]))
        raise ApiError(503, "the inference worker failed while handling this request; retry")

    async def submit(route: ModelRoute, request: Request, payload: dict[str, Any], timeout: float) -> Any:
        """Admit, enqueue and wait for the answer until the deadline. A client that goes away
        leaves a cancel marker so that the worker drops the request instead of computing it."""
        admit(route)
        uid = None
        cancel: Path | None = None
        owned = True  # False once a 504 hands the slot to release_when_answered
        disconnected = asyncio.ensure_future(wait_disconnect(request))
        try:
            uid, item = await enqueue(route, request, payload["arrived"], payload)
            answer = asyncio.ensure_future(next_message(item, None))
            remaining = max(0.0, payload["deadline"] - time.monotonic())
            done, _ = await asyncio.wait(
                {answer, disconnected}, timeout=remaining, return_when="FIRST_COMPLETED"
            )
            if disconnected in done and answer not in done:
                cancel = state.spool_dir / f"{uid}.cancel"
                cancel.touch()
                # keep the admission until the worker drops it (or the deadline): it still holds a queue slot
                await asyncio.wait({answer}, timeout=max(0.0, payload["deadline"] - time.monotonic()))
                answer.cancel()
                raise ApiError(499, "client closed the request")
            if answer not in done:
                metrics.REJECTED.labels(route.spec.name, "deadline").inc()
                owned = False
                background = asyncio.ensure_future(release_when_answered(route, uid, answer))
                pending_releases.add(background)
                background.add_done_callback(pending_releases.discard)
                raise ApiError(504, f"no answer within the deadline of {timeout:g} s")
            data, status = answer.result()
            if status == LitAPIStatus.ERROR:
                raise_for(data)
            return data
        finally:
            disconnected.cancel()
            if owned:
                if uid is not None:
                    state.server.response_buffer.pop(uid, None)
                if cancel is not None:
                    remove_quietly(cancel)
                release(route)

    pending_releases: set[asyncio.Future[None]] = set()

    async def predict(request: Request, name: str) -> Response:
        started, arrived = time.perf_counter(), time.monotonic()
        code = 500
        try:
            authorize(request, api_keys, name)
            route = model_route(name)
            precheck(route)
            timeout = state.deadline_seconds(request)
            data = await read_json(request, settings.max_body_bytes, settings.body_timeout)
            try:
                parsed = route.request_model.model_validate(data)
            except ValidationError as exc:
                raise ApiError(422, describe_validation(exc)) from None
            inputs = parsed.inputs  # type: ignore[attr-defined]
            payload = {"op": "predict", "inputs": inputs, "arrived": arrived, "deadline": arrived + timeout}
            outputs = await submit(route, request, payload, timeout)
            code = 200
            return json_response({"model": name, "version": route.spec.version, "outputs": outputs})
        except ApiError as exc:
            code = exc.status
            return exc.response()
        finally:
            observe(name, metrics.PREDICT_ENDPOINT, started, code)

    for name, route in state.routes.items():
        schema = route.request_model.model_json_schema()
        app.add_api_route(
            f"/v1/models/{name}/predict",
            _bind(predict, name),
            methods=["POST"],
            response_model=PredictResponse,
            responses=error_responses(400, 401, 408, 413, 415, 422, 503, 504),
            summary=f"Run {name} on a list of inputs",
            tags=["predict"],
            openapi_extra={
                "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}
            },
        )

    async def predict_file(request: Request, name: str) -> Response:
        started, arrived = time.perf_counter(), time.monotonic()
        token = uuid.uuid4().hex
        source, target = state.spool_dir / f"{token}.in", state.spool_dir / f"{token}.out"
        cleanups: list[Callable[[], None]] = [lambda: remove_quietly(source, target)]

        def cleanup(code: int) -> None:
            for step in reversed(cleanups):
                step()
            observe(name, metrics.FILE_ENDPOINT, started, code)

        try:
            authorize(request, api_keys, name)
            route = model_route(name)
            params = request.query_params
            fmt = await spool_upload(
                request, source, settings.max_file_bytes, params.get("format"), settings.body_timeout
            )
            csv = fmt == "csv"
            input_key = params.get("input_column" if csv else "input_key", "input")
            id_key = params.get("id_column" if csv else "id_key", "id")
            for label, key in (("input", input_key), ("id", id_key)):
                if not 0 < len(key) <= MAX_KEY_LENGTH:
                    raise ApiError(
                        400, f"the {label} key or column name must have 1 to {MAX_KEY_LENGTH} characters"
                    )
            try:
                await asyncio.to_thread(
                    check_format,
                    source,
                    fmt,
                    input_key=input_key,
                    id_key=id_key,
                    max_line_bytes=settings.max_line_bytes,
                )
            except FormatError as exc:
                raise ApiError(400, f"not a valid {fmt} file: {exc}") from None
            admit(route)
            cleanups.append(lambda: release(route))
            payload = {
                "op": "file", "arrived": arrived, "input": str(source), "output": str(target), "format": fmt,
                "input_key": input_key, "id_key": id_key,
            }  # fmt: skip
            uid, item = await enqueue(route, request, arrived, payload)
            cleanups.append(lambda: state.server.response_buffer.pop(uid, None))
            data, status = await next_message(item, None)
            if status == LitAPIStatus.ERROR:
                raise_for(data)
        except ApiError as exc:
            cleanup(exc.status)
            return exc.response()
        except BaseException:
            cleanup(500)
            raise
        stream = follow_results(item, target, data, status, next_message)
        return OwnedStreamingResponse(
            stream, on_close=lambda: cleanup(200), media_type="application/x-ndjson"
        )

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

    @app.post("/v1/models/{name}/predict", include_in_schema=False)
    async def predict_unknown(request: Request, name: str) -> Response:
        return await predict(request, name)

    @app.get("/v1/models", tags=["models"], responses=error_responses(401))
    async def list_models(request: Request) -> Response:
        authorize(request, api_keys, None)
        return json_response({"models": [describe(route) for route in state.routes.values()]})

    @app.get("/v1/models/{name}", tags=["models"], responses=error_responses(401, 404, 422))
    async def get_model(request: Request, name: str) -> Response:
        authorize(request, api_keys, name)
        return json_response(describe(model_route(name)))

    def describe(route: ModelRoute) -> dict[str, Any]:
        spec = route.spec
        return {
            "name": spec.name,
            "version": spec.version,
            "task": spec.task,
            "description": spec.description,
            "inputs": spec.inputs.model_dump(exclude_none=True),
            "max_batch_size": route.max_batch_size,
            "workers": route.workers,
            "max_queue_size": route.max_queue_size,
            "grad_mode": settings.grad_mode,
            "device": route.device,
        }

    @app.get("/health/live", tags=["health"])
    async def live() -> Response:
        return json_response({"status": "live"})

    @app.get(
        "/health/ready",
        tags=["health"],
        responses={503: {"description": "A model is not ready yet, or the server is shutting down"}},
    )
    async def ready() -> Response:
        models = state.readiness()
        if state.shutting_down.value or state.unready.value:
            return json_response({"status": "shutting down", "models": models}, 503)
        if not all(models.values()):
            return json_response({"status": "not ready", "models": models}, 503)
        return json_response({"status": "ready", "models": models})

    @app.get(
        "/metrics",
        tags=["metrics"],
        response_class=Response,
        responses={
            200: {
                "description": "Prometheus text format",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            **error_responses(401),
        },
    )
    async def scrape(request: Request) -> Response:
        authorize(request, [metrics_key] if metrics_key else [], None)
        body = await asyncio.to_thread(metrics.render, state.readiness)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


FILE_CHUNK = 64 * 1024
MAX_KEY_LENGTH = 256  # a key is echoed in per-record errors: keep it short


async def follow_results(
    item: Any,
    target: Path,
    data: Any,
    status: str,
    next_message: Callable[[Any, float | None], Awaitable[tuple[Any, str]]],
) -> AsyncIterator[bytes]:
    """Stream the worker's output spool file as it grows: the worker says how many bytes are
    ready; we send them in bounded chunks. A failure mid-file ends the stream with an error line."""
    sent = 0
    with open(target, "rb") as handle:
        while True:
            if status == LitAPIStatus.ERROR:
                message = data.get("error", "worker failed") if isinstance(data, dict) else "worker failed"
                yield orjson.dumps({"error": f"stopped: {message}"}) + b"\n"
                return
            ready = int(data["ready"])
            while sent < ready:
                chunk = handle.read(min(FILE_CHUNK, ready - sent))
                if not chunk:
                    break
                sent += len(chunk)
                yield chunk
            if status == LitAPIStatus.FINISH_STREAMING:
                return
            data, status = await next_message(item, None)


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


async def wait_disconnect(request: Request) -> None:
    """Returns when the client closes the connection (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _bind(
    handler: Callable[[Request, str], Awaitable[Response]], name: str
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return await handler(request, name)

    endpoint.__name__ = f"predict_{name}"
    return endpoint
