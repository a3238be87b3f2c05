"""Everything the API servers serve, registered on LitServe's FastAPI app.

One module per protocol registers its routes here: native (``/v1/models/...``), files
(``predict-file``), health and metrics, the Open Inference Protocol (``v2.py``, ``/v2/...``) and
OpenAI's embeddings (``openai.py``, ``/v1/embeddings``).
Every response of every route carries an ``X-Request-ID``: the client's when it sent a sane one,
else a generated one; error log lines name it.

The inference routes (``POST /v1/models/{name}/predict`` and ``/v2/models/{name}/infer`` for
each served model, ``POST /v1/embeddings``) are registered with FastAPI, which documents them in
the OpenAPI schema, but are answered straight from the request-id middleware
(:func:`direct_routes`): their handlers take the bare request and check everything themselves,
so FastAPI's per-route layers (exception and exit-stack middleware, routing, dependency solving)
did nothing for them but cost about a quarter of an API server's CPU per request (py-spy at 32
connections). Any other method or path goes through FastAPI as before.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import Response

from service.api import files, health, native, openai, rerank, v2
from service.api.errors import REQUEST_ID, ApiError, install_error_handlers, json_response
from service.api.state import ServiceState
from service.core.ids import new_id

logger = logging.getLogger("service.api")

REQUEST_ID_HEADER = b"x-request-id"
_SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


def register(app: FastAPI, state: ServiceState) -> None:
    """Put ``state`` on the app and register every route, the error handlers and the middleware."""
    app.state.service = state
    install_error_handlers(app)
    app.add_middleware(RequestIdMiddleware, direct=direct_routes(state))
    native.register(app, state)
    files.register(app)
    health.register(app)
    v2.register(app, state.routes)
    openai.register(app, state)
    rerank.register(app, state)


Handler = Callable[[Request], Awaitable[Response]]


def direct_routes(state: ServiceState) -> dict[tuple[str, str], Handler]:
    """(method, exact path) → handler of the routes the middleware answers itself: the handlers
    FastAPI would call for them, with their path parameters bound."""
    table: dict[tuple[str, str], Handler] = {("POST", "/v1/embeddings"): openai.embeddings}
    for name, route in state.routes.items():
        table["POST", f"/v1/models/{name}/predict"] = partial(native.predict, name=name)
        table["POST", f"/v2/models/{name}/infer"] = partial(v2.infer, name=name)
        if route.spec.inputs.kind == "image":  # curl -T cat.jpg uploads with PUT
            table["PUT", f"/v1/models/{name}/predict"] = partial(native.predict, name=name)
    return table


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's ``X-Request-ID`` if it is 1–128 characters of ``[A-Za-z0-9._:-]``, else a new one."""
    for key, value in headers:
        if key == REQUEST_ID_HEADER:
            if _SANE_REQUEST_ID.fullmatch(value):
                return value.decode("ascii")
            break
    return new_id()


class RequestIdMiddleware:
    """Gives every HTTP request an id (``request.state.request_id``, and the context that log
    lines read), sends it back as ``X-Request-ID``, and answers an unexpected exception with a
    logged 500 that names it. Plain ASGI: streaming bodies pass through untouched. Requests for
    a ``direct`` route go to its handler without FastAPI's routing (see the module docstring)."""

    def __init__(self, app: Any, direct: Mapping[tuple[str, str], Handler] | None = None) -> None:
        self.app = app
        self.direct = dict(direct or {})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope.get("headers") or [])
        scope.setdefault("state", {})["request_id"] = request_id
        header = (REQUEST_ID_HEADER, request_id.encode("ascii"))
        started = False

        async def send_with_id(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [
                    pair for pair in message.get("headers", []) if pair[0].lower() != REQUEST_ID_HEADER
                ]
                message = {**message, "headers": [*headers, header]}
            await send(message)

        token = REQUEST_ID.set(request_id)
        try:
            handler = self.direct.get((scope["method"], scope["path"]))
            if handler is None:
                await self.app(scope, receive, send_with_id)
            else:
                try:
                    response = await handler(Request(scope, receive))
                except ApiError as exc:  # as FastAPI's handler for it would answer
                    response = exc.response()
                await response(scope, receive, send_with_id)
        except Exception:
            logger.exception(
                "unhandled error on %s %s (request %s)", scope.get("method"), scope.get("path"), request_id
            )
            if started:
                raise
            response = json_response({"error": "internal server error"}, 500)
            await response(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)
