"""Builds the LitServer from settings and runs it with the operational behaviour LitServe lacks:
validated start-up before the port is bound, SIGTERM/SIGINT drain, and no process left behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from service import metrics
from service.api.app import register
from service.api.native import request_model_for
from service.api.state import ModelRoute, ServiceState
from service.core.repository import PROGRAM_RUNTIMES, ModelEntry, ModelRepository
from service.core.scratch import owned_folder
from service.core.spool import clean_spool_dir, default_spool_dir
from service.runtime.litserve import LitServer, LitServeRuntime, create_server, internal_path
from service.runtime.supervisor import WorkerMonitor, reap_children
from service.settings import ModelOverrides, Settings, cores
from service.worker.api import ModelAPI, WorkerConfig

logger = logging.getLogger("service.launcher")


def preflight(settings: Settings) -> ModelRepository:
    """Everything that can be checked before a worker starts: declarations and weight checksums.

    Raises ModelError with one line that names the model and the cause.
    """
    repository = ModelRepository(settings.repository)
    for name, folder in settings.folders.items():
        pinned = settings.folder_sha256.get(name)
        entry = repository.add_folder(name, folder, settings.folder_tasks.get(name), pinned)
        if pinned is None:
            logger.info(
                "model %s: serving %s (%s); its sha256 (of the file, or of a folder's manifest) %s: "
                "pin it with --sha256 %s=%s",
                name,
                entry.folder,
                entry.spec.task,
                entry.spec.weights.sha256,
                name,
                entry.spec.weights.sha256,
            )
    # a folder whose digest was just computed need not be hashed again (its workers verify it)
    hashed = {name for name in settings.folders if name not in settings.folder_sha256}
    for name in settings.serve:
        entry = repository.get(name)  # a program's checksum is checked here, as its tensors are read
        if name not in hashed and entry.spec.runtime not in PROGRAM_RUNTIMES:
            entry.verified_weights()
    return repository


def torch_threads(settings: Settings, total_workers: int) -> int:
    """Threads per worker while its model's other workers compute: the cores shared between all
    workers, so workers × threads fits the machine (alone, a worker takes more: :func:`threads_alone`).
    The API servers get no core of their own: since answers travel per batch they need little CPU,
    and the forward uses the cores they leave idle (``make bench-threads`` on 2 cores, short /
    mixed-length req/s at 32 connections: one worker with cores − API servers threads 288 / 91,
    with all cores 461 / 159, two workers sharing them 496 / 165; OpenMP passive waiting and one
    inter-op thread were no better)."""
    return settings.torch_threads or max(1, cores(settings) // max(1, total_workers))


def threads_alone(settings: Settings, total_workers: int, model_workers: int, threads: int) -> int:
    """Threads per worker while no other worker of its model computes (service.worker.threads):
    the cores its model's idle workers would use. Equal to ``threads`` (never change) when
    ``torch_threads`` is set explicitly or the model has one worker."""
    if settings.torch_threads or model_workers < 2:
        return threads
    return max(threads, cores(settings) // max(1, total_workers - model_workers + 1))


def threads_under_load(settings: Settings, total_workers: int, threads: int) -> int:
    """Threads per worker while its backlog shows overload (service.worker.threads): the cores
    left after the API servers, who then need one to refuse the excess. 0 (never change) when
    ``torch_threads`` is set explicitly or there is no core to leave."""
    if settings.torch_threads:
        return 0
    spare = max(1, (cores(settings) - settings.num_api_servers) // max(1, total_workers))
    return spare if spare < threads else 0


def build_server(settings: Settings, repository: ModelRepository) -> tuple[LitServer, ServiceState]:
    """The LitServer for the served models (workers not started yet) and the API servers' state,
    every route registered on its app."""
    runtime, state = build_runtime(settings, repository)
    return runtime.server, state


def build_runtime(settings: Settings, repository: ModelRepository) -> tuple[LitServeRuntime, ServiceState]:
    """:func:`build_server`, with the runtime handle the launcher drives it through."""
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
        tokens = overrides.max_batch_tokens or spec.max_batch_tokens
        timeout = spec.batch_timeout if overrides.batch_timeout is None else overrides.batch_timeout
        config = WorkerConfig(
            model=name,
            repository=Path(settings.repository),
            entry=with_backend(repository.get(name), overrides.backend),
            cache_dir=Path(settings.cache_dir),
            grad_mode=settings.grad_mode,
            torch_threads=threads,
            torch_interop_threads=settings.torch_interop_threads,
            torch_threads_under_load=threads_under_load(settings, total_workers, threads),
            torch_threads_alone=threads_alone(settings, total_workers, count, threads),
            compute_times=mp.RawArray("d", count) if count > 1 else None,
            max_batch_size=batch,
            batch_timeout=timeout,
            max_batch_tokens=tokens,
            max_line_bytes=settings.max_line_bytes,
            metrics=settings.metrics,
            spool_dir=spool_dir,
            log_level=settings.log_level,
        )
        apis.append(ModelAPI(config))
        workers[internal_path(name)] = count
        routes[name] = ModelRoute(
            spec=spec,
            request_model=request_model_for(spec),
            workers=count,
            max_queue_size=overrides.max_queue_size or spec.max_queue_size,
            max_batch_size=batch,
            max_batch_tokens=tokens,
            inflight=mp.Value("i", 0),
            device=settings.accelerator,
            failed=mp.Value("b", 0),
        )

    server = create_server(apis, accelerator=settings.accelerator, workers_per_device=workers)
    runtime = LitServeRuntime(server, settings.num_api_servers)
    state = ServiceState(settings, routes, runtime, runtime.channel)
    register(server.app, state)
    return runtime, state


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

    def __init__(self, runtime: LitServeRuntime, state: ServiceState) -> None:
        self.runtime = runtime
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
        serving = self.serving.is_set() or (self.runtime.started() and all(self.state.readiness().values()))
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
        self.runtime.stop()


def serve(settings: Settings) -> int:
    """Run the server until SIGTERM/SIGINT; returns the process exit status."""
    with contextlib.ExitStack() as scratch:
        if settings.spool_dir is None:  # our own folder, removed however the run ends
            folder = scratch.enter_context(owned_folder(f"spool-{settings.port}"))
            settings = settings.model_copy(update={"spool_dir": folder})
        return _serve(settings)


def _serve(settings: Settings) -> int:
    repository = preflight(settings)
    wipe_metrics_dir()
    if not settings.metrics:
        metrics.disable()
    metrics.initialise_api_labels(settings.serve)
    metrics.initialise_launcher_labels(settings.serve)
    runtime, state = build_runtime(settings, repository)
    leftovers = clean_spool_dir(state.spool_dir)
    if leftovers:
        logger.warning("removed %d spool files left by an earlier run from %s", leftovers, state.spool_dir)
    drain = Drain(runtime, state)
    drain.install()
    monitor = WorkerMonitor(runtime, state, drain.serving)
    monitor.start()
    try:
        runtime.run(
            host=settings.host,
            port=settings.port,
            num_api_servers=settings.num_api_servers,
            log_level=settings.log_level,
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
        runtime.close()
    return 1 if monitor.failure else 0


def with_backend(entry: ModelEntry, backend: str | None) -> ModelEntry:
    """``entry`` with its declared backend replaced by the operator's override (None: as declared)."""
    if backend is None:
        return entry
    return dataclasses.replace(entry, spec=entry.spec.model_copy(update={"backend": backend}))
