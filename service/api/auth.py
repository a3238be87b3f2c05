"""API keys: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``, compared in constant time."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from service import metrics
from service.api.errors import ApiError
from service.api.state import service_state


def presented_key(request: Request) -> bytes:
    header = request.headers.get("x-api-key")
    if header is None:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        header = credentials.strip() if scheme.lower() == "bearer" else ""
    return header.encode("utf-8", "replace")


def check_key(request: Request, keys: list[bytes], model_label: str) -> None:
    """Constant-time check against every key (none configured: open); 401 without saying what
    was wrong, counted as an ``unauthorized`` rejection of ``model_label``."""
    if not keys:
        return
    presented = presented_key(request)
    valid = False
    for key in keys:  # no early exit: the time taken does not depend on which key matched
        valid |= hmac.compare_digest(presented, key)
    if not valid:
        metrics.REJECTED.labels(model_label, "unauthorized").inc()
        raise ApiError(401, "missing or invalid API key", {"WWW-Authenticate": "Bearer"})


def require_api_key(request: Request, model: str | None = None) -> None:
    """The prediction and model routes' check (``api_keys``, ``api_keys_file``)."""
    state = service_state(request)
    check_key(request, state.api_keys, state.model_label(model))


def require_metrics_key(request: Request) -> None:
    """``/metrics``' check (``metrics_api_key``)."""
    state = service_state(request)
    check_key(request, state.metrics_keys, state.model_label(None))
