"""The one module that touches LitServe's internals (0.2.19): everything else goes through here.

LitServe gives us its process model (the Manager broker, spawned inference workers, forked
uvicorn API servers) and its response routing; this module wraps what we use of it:

- :func:`create_server` builds the ``LitServer`` with our defaults and without its own routes;
- :class:`LitServeRuntime` is the launcher's handle (worker states, relaunching a worker,
  answering for a dead one, stopping) and owns the API servers' :class:`LitServeChannel`;
- :class:`LitServeChannel` / :class:`LitServeMailbox` implement the API-server side of
  :mod:`service.core.messages` on LitServe's request queues and per-process response buffer;
- :class:`WorkerLoop` / :class:`WorkerChannel` are the worker side: a LitServe loop whose
  ``serve`` method gets typed :class:`Envelope` jobs and sends typed answers.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import uuid
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import litserve as ls
from litserve import LitAPI, LitServer
from litserve.loops.base import _SENTINEL_VALUE, LitLoop
from litserve.utils import LitAPIStatus, LoopResponseType, ResponseBufferItem

from service.core.messages import (
    Answer,
    Envelope,
    Failure,
    FileDone,
    FileProgress,
    Job,
    Mailbox,
    PredictResult,
)

__all__ = [
    "LitAPI",
    "LitServeChannel",
    "LitServeMailbox",
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
_ANSWERS = (PredictResult, Failure, FileProgress, FileDone)
WORKER_FAILED = "the inference worker failed while handling this request; retry"


def internal_path(model: str) -> str:
    """The LitServe api_path of a model: names its request queue; never exposed over HTTP."""
    return f"/internal/{model}"


def worker_key(model: str, index: int) -> str:
    """How LitServe names a worker in its setup-status table."""
    return f"{model}_{index}"


def create_server(
    apis: Sequence[Any], *, accelerator: str, workers_per_device: dict[str, int], fast_queue: bool
) -> LitServer:
    """A LitServer for these LitAPIs with LitServe's routes, deadline and worker monitor off."""
    server = ls.LitServer(
        list(apis),
        accelerator=accelerator,
        workers_per_device=workers_per_device,
        timeout=False,  # our deadline covers queue and compute; LitServe's covers only the queue
        fast_queue=fast_queue,
        restart_workers=False,
    )
    # LitServe's monitor races our shutdown and, on a dead worker, stops the server from a
    # thread while run() still waits; service.runtime.supervisor replaces it.
    server._monitor_workers = False
    internal = {api.api_path for api in apis}
    server.app.router.routes = [
        route
        for route in server.app.router.routes
        if getattr(route, "path", None) not in _LITSERVE_ROUTES | internal
    ]
    return server


class LitServeMailbox:
    """One request's answers, from this API server's LitServe response buffer."""

    def __init__(self, uid: str, buffer: dict[str, Any]) -> None:
        self._uid = uid
        self._buffer = buffer
        self._item = ResponseBufferItem(event=asyncio.Event(), response_queue=deque())
        buffer[uid] = self._item

    @property
    def uid(self) -> str:
        return self._uid

    async def receive(self) -> Answer:
        item = self._item
        while not item.response_queue:
            item.event.clear()
            if item.response_queue:
                break
            await item.event.wait()
        data, status = item.response_queue.popleft()
        if isinstance(data, _ANSWERS):
            return data
        # not one of ours: LitServe's own error path (a worker that failed outside our loop)
        logger.warning("unexpected answer for %s (status %s): %.200r", self._uid, status, data)
        return Failure(503, WORKER_FAILED)

    def close(self) -> None:
        self._buffer.pop(self._uid, None)


class LitServeChannel:
    """Jobs onto a model's LitServe request queue; answers through LitServe's response buffer."""

    def __init__(self, server: LitServer) -> None:
        self._server = server
        # LitServe's request queue is a Manager proxy: put() is a blocking round trip to another
        # process. One thread does the puts, in order, so the event loop never stalls on it.
        # (Its thread starts at the first put, in the forked API server.)
        self._put_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="enqueue")

    def open(self) -> LitServeMailbox:
        return LitServeMailbox(uuid.uuid4().hex, self._server.response_buffer)

    async def put(self, model: str, mailbox: Mailbox, job: Job) -> None:
        queue = self._server._get_request_queue(internal_path(model))
        envelope = Envelope(self._server.app.response_queue_id, mailbox.uid, job)
        await asyncio.get_running_loop().run_in_executor(self._put_thread, queue.put, envelope)


class LitServeRuntime:
    """The launcher's (and the API servers') handle on a LitServer."""

    def __init__(self, server: LitServer) -> None:
        self.server = server
        self.channel = LitServeChannel(server)

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

    def send_answer(self, reply_to: int, uid: str, answer: Answer, worker: int = 0) -> None:
        """Answer a request as its worker would have (for requests a dead worker was computing)."""
        message = (uid, (answer, LitAPIStatus.OK, LoopResponseType.STREAMING, worker))
        self.server._transport.send(message, consumer_id=reply_to)

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
    """LitServe asked the worker to stop (its sentinel arrived on the request queue)."""


class WorkerChannel:
    """The worker's side: typed jobs from the model's request queue, typed answers back."""

    def __init__(self, loop: LitLoop, request_queue: Any, transport: Any) -> None:
        self._loop = loop
        self._queue = request_queue
        self._transport = transport

    def get(self, timeout: float) -> Envelope | None:
        """The next job, waiting up to ``timeout`` seconds (0: only one already queued); None if
        none came. Raises :class:`StopWorker` when the server stops."""
        try:
            item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get(block=False)
        except queue.Empty:
            return None
        if item is None or item == _SENTINEL_VALUE:
            raise StopWorker
        envelope: Envelope = item
        return envelope

    def receive(self, timeout: float) -> list[Envelope]:
        """Every job already waiting, after waiting up to ``timeout`` seconds for the first (0:
        no wait); empty if none came. Raises :class:`StopWorker` when the server stops."""
        first = self.get(timeout)
        if first is None:
            return []
        envelopes = [first]
        while (envelope := self.get(0)) is not None:
            envelopes.append(envelope)
        return envelopes

    def send(self, reply_to: int, uid: str, answer: Answer) -> None:
        """Queue an answer; it is delivered at the next :meth:`flush` at the latest."""
        self._loop.put_response(
            self._transport, reply_to, uid, answer, LitAPIStatus.OK, LoopResponseType.STREAMING
        )

    def flush(self) -> None:
        """Deliver every answer sent so far (the loop calls it after each forward)."""


class WorkerLoop(LitLoop):  # type: ignore[misc]
    """A LitServe loop that hands :meth:`serve` a typed :class:`WorkerChannel` (LitServe calls it
    in the worker process once the LitAPI's ``setup`` is done)."""

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
        try:
            self.serve(lit_api, worker_id, WorkerChannel(self, request_queue, transport))
        except StopWorker:
            logger.debug("worker %s: stop requested", worker_id)

    def serve(self, lit_api: Any, worker_id: int, channel: WorkerChannel) -> None:
        raise NotImplementedError
