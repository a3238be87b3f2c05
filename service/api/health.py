"""Health and metrics: ``GET /health/live``, ``GET /health/ready``, ``GET /metrics``."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI, Request
from starlette.responses import Response

from service import metrics
from service.api.auth import require_metrics_key
from service.api.errors import error_responses, json_response
from service.api.state import service_state


async def live() -> Response:
    """200 while the server runs."""
    return json_response({"status": "live"})


async def ready(request: Request) -> Response:
    """200 when every model is loaded and warmed in all its workers, and each of them told this
    API server so; 503 before, during a worker's replacement, and while shutting down. A model
    out of service for good (its workers kept failing after it had served) is listed under
    ``failed`` with why, and the answer is 200 ``degraded`` while every other model is ready."""
    state = service_state(request)
    models = state.readiness()
    # and this API server has heard from each of them, so that it can route to every one
    reachable = state.dispatcher.channel.ready_workers()
    models = {
        name: ready and reachable.get(name, 0) >= state.routes[name].workers for name, ready in models.items()
    }
    if state.shutting_down.value or state.unready.value:
        return json_response({"status": "shutting down", "models": models}, 503)
    failed = state.failures()
    if failed:  # out of service for good: the other models are still served from this replica
        serving = {name: ready for name, ready in models.items() if name not in failed}
        if all(serving.values()):
            return json_response({"status": "degraded", "models": models, "failed": failed})
    if not all(models.values()):
        return json_response({"status": "not ready", "models": models, "failed": failed}, 503)
    return json_response({"status": "ready", "models": models})


async def scrape(request: Request) -> Response:
    """Prometheus text format, from every process's metric files."""
    require_metrics_key(request)
    state = service_state(request)
    body = await asyncio.to_thread(metrics.render, state.readiness)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


def register(app: FastAPI) -> None:
    app.add_api_route("/health/live", live, methods=["GET"], tags=["health"])
    app.add_api_route(
        "/health/ready",
        ready,
        methods=["GET"],
        tags=["health"],
        responses={503: {"description": "A model is not ready yet, or the server is shutting down"}},
    )
    app.add_api_route(
        "/metrics",
        scrape,
        methods=["GET"],
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
