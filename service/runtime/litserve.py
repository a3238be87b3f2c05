"""The one module that touches LitServe's internals (0.2.19): everything else goes through here.

LitServe gives us its process model (spawned inference workers, forked uvicorn API servers,
worker setup status kept by its Manager); requests and answers travel on our own pipes
(:mod:`service.runtime.pipes`), not through its Manager queues. This module wraps what we use:

- :func:`create_server` builds the ``LitServer`` with our defaults and without its own routes;
- :class:`LitServeRuntime` is the launcher's handle (worker states, relaunching a worker with
  new pipes, stopping) and owns the pipes and the API servers' request channel;
- :class:`WorkerLoop` is the worker side: a LitServe loop whose ``serve`` method gets a
  :class:`WorkerChannel` over its pipes (typed :class:`Envelope` jobs in, typed answers out).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, Literal

import litserve as ls
import litserve.server
from litserve import LitAPI, LitServer
from litserve.loops.base import LitLoop

from service.runtime.pipes import PipeSet, PipeWorkerChannel
from service.runtime.routing import PipeRequestChannel

WorkerChannel = PipeWorkerChannel  # what a worker loop's serve() is handed

__all__ = [
    "LitAPI",
    "LitServeRuntime",
    "LitServer",
    "StopWorker",
    "WorkerChannel",
    "WorkerLoop",
    "create_server",
    "internal_path",
    "worker_key",
]

logger = logging.getLogger("service.runtime")

WorkerState = Literal["starting", "ready", "error", "finished"]  # LitServe's WorkerSetupStatus values

# LitServe's own routes that we replace (health, info and its default index)
_LITSERVE_ROUTES = {"/", "/health", "/info"}


def internal_path(model: str) -> str:
    """The LitServe api_path of a model: names its request queue; never exposed over HTTP."""
    return f"/internal/{model}"


def worker_key(model: str, index: int) -> str:
    """How LitServe names a worker in its setup-status table."""
    return f"{model}_{index}"


async def _no_answer_task(*_: Any) -> None:
    """Stands in for LitServe's answer task in each API server: answers arrive on our pipes, and
    its task would only poll an idle Manager queue once a second."""
    await asyncio.Event().wait()


def create_server(apis: Sequence[Any], *, accelerator: str, workers_per_device: dict[str, int]) -> LitServer:
    """A LitServer for these LitAPIs with LitServe's routes, deadline and worker monitor off."""
    server = ls.LitServer(
        list(apis),
        accelerator=accelerator,
        workers_per_device=workers_per_device,
        timeout=False,  # our deadline covers queue and compute; LitServe's covers only the queue
        restart_workers=False,
    )
    # LitServe's monitor races our shutdown and, on a dead worker, stops the server from a
    # thread while run() still waits; service.runtime.supervisor replaces it.
    server._monitor_workers = False
    litserve.server.response_queue_to_buffer = _no_answer_task
    internal = {api.api_path for api in apis}
    server.app.router.routes = [
        route
        for route in server.app.router.routes
        if getattr(route, "path", None) not in _LITSERVE_ROUTES | internal
    ]
    return server


class LitServeRuntime:
    """The launcher's (and the API servers') handle on a LitServer."""

    def __init__(self, server: LitServer, api_servers: int) -> None:
        self.server = server
        models = {api.api_path.rsplit("/", 1)[-1]: api for api in server.litapi_connector}
        workers = {
            model: len(server._inference_workers_config_for_api(api.api_path))
            for model, api in models.items()
        }
        self.pipes = PipeSet(workers, api_servers)
        for model, api in models.items():
            # pickled with the LitAPI into each spawned worker: the pipe ends travel with it
            api.loop.worker_pipes = self.pipes.workers[model]
        # each forked API server reads its own index (LitServe sets it on the app before forking it)
        self.channel = PipeRequestChannel(self.pipes, lambda: server.app.response_queue_id)

    @property
    def app(self) -> Any:
        return self.server.app

    def worker_states(self) -> dict[str, WorkerState]:
        """A snapshot of every worker's state, keyed by :func:`worker_key` (one Manager round trip)."""
        status = getattr(self.server, "workers_setup_status", None)
        return dict(status.items()) if status else {}

    def started(self) -> bool:
        """Whether run() has launched the workers (the Manager and the shutdown event exist)."""
        return self.server._shutdown_event is not None and bool(self.server.__dict__.get("inference_workers"))

    def stop(self) -> None:
        """Make run() stop every process and return."""
        event = self.server._shutdown_event
        if event is not None:
            event.set()

    def worker_processes(self) -> list[Any]:
        """The inference worker processes, in slot order (empty before run() launched them)."""
        workers: list[Any] = self.server.__dict__.get("inference_workers") or []
        return workers

    def worker_slots(self) -> list[tuple[Any, int]]:
        """(LitAPI, worker index) for every process slot, in the order of :meth:`worker_processes`."""
        slots = []
        for api in self.server.litapi_connector:
            for index in range(len(self.server._inference_workers_config_for_api(api.api_path))):
                slots.append((api, index))
        return slots

    def relaunch_worker(self, slot: int, api: Any, index: int) -> Any:
        """Start a new process for a dead worker's slot; returns it."""
        process = self.server.launch_single_inference_worker(api, index)
        self.worker_processes()[slot] = process
        return process

    def renew_pipes(self, model: str, index: int) -> None:
        """New pipes for a dead worker's replacement; the API servers get theirs at once and
        send again what the dead worker held (:mod:`service.runtime.routing`)."""
        self.pipes.renew(model, index)

    def close(self) -> None:
        """Close the launcher's ends of every pipe (after every process stopped)."""
        self.pipes.close()

    def run(self, *, host: str, port: int, num_api_servers: int, log_level: str, access_log: bool) -> None:
        self.server.run(
            host=host,
            port=port,
            num_api_servers=num_api_servers,
            log_level=log_level,
            generate_client_file=False,
            api_server_worker_type="process",
            access_log=access_log,
        )


class StopWorker(Exception):
    """A worker loop raises it to end the worker process cleanly."""


class WorkerLoop(LitLoop):  # type: ignore[misc]
    """A LitServe loop that hands :meth:`serve` a typed :class:`WorkerChannel` (LitServe calls it
    in the worker process once the LitAPI's ``setup`` is done)."""

    worker_pipes: Any = None  # the model's WorkerPipesTable, set by LitServeRuntime

    def __call__(
        self,
        lit_api: Any,
        device: str,
        worker_id: int,
        request_queue: Any,
        transport: Any,
        workers_setup_status: Any,
        callback_runner: Any,
    ) -> None:
        for others in self.worker_pipes.others(worker_id):  # inherited with the LitAPI; not ours
            others.close()
        channel = PipeWorkerChannel(self.worker_pipes[worker_id])
        channel.announce()
        try:
            self.serve(lit_api, worker_id, channel)
        except StopWorker:
            logger.debug("worker %s: stop requested", worker_id)

    def serve(self, lit_api: Any, worker_id: int, channel: WorkerChannel) -> None:
        raise NotImplementedError
