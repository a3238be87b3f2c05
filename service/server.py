"""Builds the LitServer from settings and runs it with the operational behaviour LitServe lacks:
validated start-up before the port is bound, SIGTERM/SIGINT drain, and no process left behind.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import litserve as ls
from litserve.utils import LitAPIStatus, LoopResponseType, WorkerSetupStatus

from service import metrics
from service.repository import ModelRepository
from service.routes import ModelRoute, ServiceState, register_routes, request_model_for
from service.settings import ModelOverrides, Settings, cpu_count
from service.uploads import clean_spool_dir, default_spool_dir
from service.worker import ModelAPI, WorkerConfig, batch_ledger_path, internal_path, read_batch_ledger

logger = logging.getLogger("service.server")

# LitServe's own routes that we replace (health, info, its default index and the internal queue paths)
_LITSERVE_ROUTES = {"/", "/health", "/info"}


def preflight(settings: Settings) -> ModelRepository:
    """Everything that can be checked before a worker starts: declarations and weight checksums.

    Raises ModelError with one line that names the model and the cause.
    """
    repository = ModelRepository(settings.repository)
    for name in settings.serve:
        repository.get(name).verified_weights()
    return repository


def torch_threads(settings: Settings, total_workers: int) -> int:
    """Threads per worker so that workers × threads fits the cores left after the API servers
    (oversubscribed OpenMP threads stall each other: 4.7× slower measured on 2 cores)."""
    spare = cpu_count() - settings.num_api_servers
    return settings.torch_threads or max(1, spare // max(1, total_workers))


def build_server(settings: Settings, repository: ModelRepository) -> tuple[ls.LitServer, ServiceState]:
    plans: list[tuple[str, Any, ModelOverrides]] = []
    for name in settings.serve:
        entry = repository.get(name)
        plans.append((name, entry.spec, settings.models.get(name) or ModelOverrides()))
    total_workers = sum(o.workers or spec.workers for _, spec, o in plans)
    threads = torch_threads(settings, total_workers)

    spool_dir = settings.spool_dir or default_spool_dir(settings.port)
    spool_dir.mkdir(parents=True, exist_ok=True)
    apis: list[ModelAPI] = []
    routes: dict[str, ModelRoute] = {}
    workers: dict[str, int] = {}
    for name, spec, overrides in plans:
        count = overrides.workers or spec.workers
        batch = overrides.max_batch_size or spec.max_batch_size
        timeout = spec.batch_timeout if overrides.batch_timeout is None else overrides.batch_timeout
        config = WorkerConfig(
            model=name,
            repository=Path(settings.repository),
            grad_mode=settings.grad_mode,
            torch_threads=threads,
            max_batch_size=batch,
            batch_timeout=timeout,
            max_line_bytes=settings.max_line_bytes,
            metrics=settings.metrics,
            spool_dir=spool_dir,
        )
        apis.append(ModelAPI(config))
        workers[internal_path(name)] = count
        routes[name] = ModelRoute(
            spec=spec,
            request_model=request_model_for(spec),
            workers=count,
            max_queue_size=overrides.max_queue_size or spec.max_queue_size,
            max_batch_size=batch,
            inflight=mp.Value("i", 0),
            device=settings.accelerator,
        )

    server = ls.LitServer(
        apis,
        accelerator=settings.accelerator,
        workers_per_device=workers,
        timeout=False,  # our deadline covers queue and compute; LitServe's covers only the queue
        fast_queue=settings.fast_queue,
        restart_workers=False,
    )
    # LitServe's monitor races our shutdown and, on a dead worker, stops the server from a
    # thread while run() still waits; WorkerMonitor below replaces it.
    server._monitor_workers = False
    internal = {internal_path(name) for name in settings.serve}
    server.app.router.routes = [
        route
        for route in server.app.router.routes
        if getattr(route, "path", None) not in _LITSERVE_ROUTES | internal
    ]
    state = ServiceState(settings, routes)
    state.server = server
    register_routes(server.app, state)
    return server, state


def wipe_metrics_dir() -> None:
    """Remove the previous run's per-process metric files (stale pids would be summed forever)."""
    folder = Path(metrics.multiprocess_dir())
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink(missing_ok=True)


DRAIN_LINGER = 0.5  # seconds between the last handler finishing and stopping the API servers


class Drain:
    """SIGTERM/SIGINT: readiness turns 503 at once; requests are still served for
    ``shutdown_delay`` seconds (while load balancers drop this replica), then new requests
    turn 503 and in-flight ones finish (up to ``shutdown_grace`` seconds); then LitServe stops
    its processes. A second signal stops at once."""

    def __init__(self, server: ls.LitServer, state: ServiceState) -> None:
        self.server = server
        self.state = state
        self.pid = os.getpid()
        self.started = False
        # set by WorkerMonitor once every worker reported ready; read by the signal handler,
        # which must never touch a Manager proxy (the main thread may be mid-call on it)
        self.serving = threading.Event()

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self.pid:
            return  # a forked helper process (LitServe's manager) inherited this handler
        name = signal.Signals(signum).name
        if self.started:
            logger.warning("%s again: stopping now", name)
            raise KeyboardInterrupt
        self.started = True
        self.state.unready.value = 1
        threading.Thread(target=self._drain, args=(name,), name="drain", daemon=True).start()

    def _drain(self, name: str) -> None:
        # readiness needs a Manager round trip, which this thread may make (the handler may not)
        serving = self.serving.is_set() or (
            self.server._shutdown_event is not None
            and bool(self.server.__dict__.get("inference_workers"))
            and all(self.state.readiness().values())
        )
        if not serving:
            logger.info("%s during start-up: stopping", name)
            self.state.shutting_down.value = 1
            os.kill(self.pid, signal.SIGINT)  # the handler, called again, interrupts the main thread
            return
        delay = self.state.settings.shutdown_delay
        if delay > 0:
            logger.info(
                "%s: not ready; still serving for %.0f s so load balancers drop this replica", name, delay
            )
            time.sleep(delay)  # a second signal interrupts the main thread meanwhile: stops at once
        self.state.shutting_down.value = 1
        logger.info("%s: draining (up to %.0f s), then stopping", name, self.state.settings.shutdown_grace)
        limit = time.monotonic() + self.state.settings.shutdown_grace
        while time.monotonic() < limit and any(r.inflight.value > 0 for r in self.state.routes.values()):
            time.sleep(0.05)
        left = sum(r.inflight.value for r in self.state.routes.values())
        if left:
            logger.warning("grace period over with %d requests still in flight", left)
        else:
            logger.info("drained: no request in flight")
            # the last answers leave the handlers just before their bytes reach the socket
            time.sleep(DRAIN_LINGER)
        event = self.server._shutdown_event
        if event is not None:
            event.set()


class WorkerMonitor:
    """Replaces LitServe's worker monitor. A worker that dies is replaced without restarting
    the server; the requests it was computing (its batch ledger) get a 503 at once; readiness
    shows the gap; ``inference_worker_restarts_total`` counts it. A worker that keeps failing
    at start-up stops the server with a non-zero status and the cause, instead of looping."""

    MAX_START_FAILURES = 3

    def __init__(
        self, server: ls.LitServer, state: ServiceState, drain: Drain, interval: float = 1.0
    ) -> None:
        self.server = server
        self.state = state
        self.drain = drain
        self.interval = interval
        self.failure: str | None = None
        self.start_failures: dict[tuple[str, int], int] = {}
        self.slots: list[tuple[Any, str, int]] = []  # (lit_api, model, worker index) per process slot
        for api in server.litapi_connector:
            model = api.config.model
            for index in range(len(server._inference_workers_config_for_api(api.api_path))):
                self.slots.append((api, model, index))

    def start(self) -> None:
        threading.Thread(target=self._run, name="worker-monitor", daemon=True).start()

    def _run(self) -> None:
        try:
            while not self.state.shutting_down.value:
                time.sleep(self.interval)
                self._check()
        except Exception:  # the monitor must never die silently
            logger.exception("worker monitor failed")

    def _check(self) -> None:
        workers = self.server.__dict__.get("inference_workers") or []
        event = self.server._shutdown_event
        if event is None or len(workers) != len(self.slots) or self.state.shutting_down.value:
            return
        # only the exit codes while all is well (cheap); the Manager is asked when something changed
        if (
            self.drain.serving.is_set()
            and all(p.exitcode is None for p in workers)
            and not self.start_failures
        ):
            return
        status = dict(self.server.workers_setup_status.items())
        if not self.drain.serving.is_set() and all(self.state.readiness().values()):
            self.drain.serving.set()
        for slot, process in enumerate(workers):
            api, model, index = self.slots[slot]
            key = f"{model}_{index}"
            if status.get(key) == WorkerSetupStatus.READY:
                self.start_failures.pop((model, index), None)
            if process.exitcode is None and status.get(key) != WorkerSetupStatus.ERROR:
                continue
            if process.exitcode is None:
                process.join(timeout=5)
            started = status.get(key) == WorkerSetupStatus.READY
            cause = f"exit status {process.exitcode}" if started else "failed to start (see its error above)"
            logger.error("model %s worker %d (pid %s) died: %s", model, index, process.pid, cause)
            if process.pid is not None:
                metrics.mark_process_dead(process.pid)
            self._fail_in_flight(model, index)
            if not started:
                failures = self.start_failures.get((model, index), 0) + 1
                self.start_failures[(model, index)] = failures
                if failures >= self.MAX_START_FAILURES:
                    self.failure = (
                        f"model {model} worker {index} failed to start {failures} times in a row; giving up"
                    )
                    logger.error("%s", self.failure)
                    self.state.shutting_down.value = 1
                    event.set()
                    return
            metrics.WORKER_RESTARTS.labels(model).inc()
            workers[slot] = self.server.launch_single_inference_worker(api, index)
            logger.info("model %s worker %d replaced (pid %s)", model, index, workers[slot].pid)

    def _fail_in_flight(self, model: str, index: int) -> None:
        ledger = batch_ledger_path(self.state.spool_dir, model, index)
        error = {
            "status": 503,
            "error": f"the inference worker for {model!r} died while computing this request; retry",
        }
        for queue_id, uid in read_batch_ledger(ledger):
            message = (uid, (error, LitAPIStatus.ERROR, LoopResponseType.STREAMING, index))
            self.server._transport.send(message, consumer_id=queue_id)
        ledger.unlink(missing_ok=True)


def reap_children(timeout: float = 5.0) -> None:
    """Terminate, then kill, whatever child processes are left (LitServe may leave some)."""
    from multiprocessing import resource_tracker

    import psutil

    # the resource tracker ignores SIGTERM by design and exits on its own when we do
    tracker = getattr(resource_tracker._resource_tracker, "_pid", None)
    children = [child for child in psutil.Process().children(recursive=True) if child.pid != tracker]
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=timeout)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(alive, timeout=timeout)


def serve(settings: Settings) -> int:
    """Run the server until SIGTERM/SIGINT; returns the process exit status."""
    repository = preflight(settings)
    wipe_metrics_dir()
    if not settings.metrics:
        metrics.disable()
    metrics.initialise_api_labels(settings.serve)
    metrics.initialise_launcher_labels(settings.serve)
    server, state = build_server(settings, repository)
    leftovers = clean_spool_dir(state.spool_dir)
    if leftovers:
        logger.warning("removed %d spool files left by an earlier run from %s", leftovers, state.spool_dir)
    drain = Drain(server, state)
    drain.install()
    monitor = WorkerMonitor(server, state, drain)
    monitor.start()
    try:
        server.run(
            host=settings.host,
            port=settings.port,
            num_api_servers=settings.num_api_servers,
            log_level=settings.log_level,
            generate_client_file=False,
            api_server_worker_type="process",
            access_log=settings.access_log,
        )
    except KeyboardInterrupt:
        logger.info("stopped")
    except RuntimeError as exc:
        state.shutting_down.value = 1
        logger.error("%s", exc)
        print(
            f"service: error: an inference worker failed to start ({exc}); its error is logged above",
            file=sys.stderr,
        )
        return 1
    finally:
        reap_children()
        if settings.spool_dir is None:  # our own temporary folder: leave nothing in /tmp
            shutil.rmtree(state.spool_dir, ignore_errors=True)
    return 1 if monitor.failure else 0
