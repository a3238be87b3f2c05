"""What the API servers share, read by every handler from ``request.app.state``.

The state is created in the launcher before LitServe forks the API servers, so each of them
inherits it; the cross-process parts (the shutting-down flag and each model's in-flight count)
are ``multiprocessing.Value``s.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel
from starlette.requests import Request

from service import metrics
from service.api.dispatch import MODEL_FAILED, Dispatcher
from service.api.errors import ApiError
from service.core.repository import ModelSpec
from service.core.spool import default_spool_dir
from service.runtime.litserve import worker_key
from service.settings import Settings

if TYPE_CHECKING:
    from service.core.messages import RequestChannel


@dataclass
class ModelRoute:
    """One served model as the API servers see it."""

    spec: ModelSpec
    request_model: type[BaseModel]  # the native route's {"inputs": [...]} schema for this model
    workers: int
    max_queue_size: int
    max_batch_size: int
    max_batch_tokens: int | None  # padded tokens per forward (None: only max_batch_size caps it)
    inflight: Any  # multiprocessing.Value("i") shared by every API server process
    device: str
    # multiprocessing.Value("b"): set by the launcher when the model's workers keep failing after it
    # had served; its requests are then refused (503) while the other models are still served
    failed: Any = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def out_of_service(self) -> bool:
        return bool(self.failed is not None and self.failed.value)


class WorkerStates(Protocol):
    """Where readiness comes from (``service.runtime.litserve.LitServeRuntime``)."""

    def worker_states(self) -> Mapping[str, str]: ...


class ServiceState:
    """What the API servers share: settings, the served models, the dispatcher, readiness."""

    def __init__(
        self,
        settings: Settings,
        routes: dict[str, ModelRoute],
        workers: WorkerStates,
        channel: RequestChannel,
    ) -> None:
        self.settings = settings
        self.routes = routes
        # when the server started (Unix seconds): what OpenAI's model listing calls ``created``
        self.started_at = int(time.time())
        self.workers = workers
        self.shutting_down = mp.Value("b", 0)  # new requests are refused (503)
        # readiness answers 503 while requests are still served (SIGTERM's shutdown_delay)
        self.unready = mp.Value("b", 0)
        self.spool_dir: Path = settings.spool_dir or default_spool_dir(settings.port)
        self.api_keys = [key.encode() for key in settings.all_api_keys()]
        self.metrics_keys = (
            [settings.metrics_api_key.get_secret_value().encode()] if settings.metrics_api_key else []
        )
        self.dispatcher = Dispatcher(
            channel, self.shutting_down, self.spool_dir, linger=settings.max_request_timeout
        )

    def route(self, name: str) -> ModelRoute:
        """The served model called ``name``; 404 otherwise."""
        route = self.routes.get(name)
        if route is None:
            known = ", ".join(self.routes)
            raise ApiError(404, f"model {name[:100]!r} is not served here (served: {known})")
        return route

    def model_label(self, name: str | None) -> str:
        """``name`` as a metric label: a served model, or ``unknown`` (labels stay bounded)."""
        return name if name is not None and name in self.routes else metrics.UNKNOWN_MODEL

    def readiness(self) -> dict[str, bool]:
        """Per model: whether every one of its workers has loaded and warmed it."""
        snapshot = self.workers.worker_states()
        return {
            name: all(snapshot.get(worker_key(name, index)) == "ready" for index in range(route.workers))
            for name, route in self.routes.items()
        }

    def failures(self) -> dict[str, str]:
        """The models out of service, with why."""
        return {
            name: MODEL_FAILED.format(model=name)
            for name, route in self.routes.items()
            if route.out_of_service
        }

    def unready_reason(self) -> str | None:
        """Why the server is not ready (shutting down, or models still loading); None when it is."""
        if self.shutting_down.value or self.unready.value:
            return "server is shutting down"
        waiting = [
            name
            for name, ready in self.readiness().items()
            if not ready and not self.routes[name].out_of_service  # out of service: /health/ready says so
        ]
        if waiting:
            return f"models not ready yet: {', '.join(waiting)}"
        return None

    def observe(self, model: str, endpoint: str, started: float, code: int) -> None:
        """Count one answered request of a model route (``endpoint`` is the route template)."""
        label = self.model_label(model)
        metrics.REQUESTS.labels(label, endpoint, str(code)).inc()
        metrics.REQUEST_DURATION.labels(label, endpoint).observe(time.perf_counter() - started)


def service_state(request: Request) -> ServiceState:
    """The shared state of the app serving ``request``."""
    state: ServiceState = request.app.state.service
    return state
