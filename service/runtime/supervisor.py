"""Supervising the inference workers: replacing dead ones, and leaving no process behind."""

from __future__ import annotations

import contextlib
import logging
import threading
from multiprocessing.connection import wait
from typing import Any

from service import metrics
from service.api.state import ServiceState
from service.runtime.litserve import LitServeRuntime, worker_key

logger = logging.getLogger("service.supervisor")


class WorkerMonitor:
    """Replaces LitServe's worker monitor. A worker that dies is seen the moment its process
    ends (its sentinel), and replaced without restarting the server: new pipes first, so that
    every API server sends what the dead worker held to another worker at once
    (:mod:`service.runtime.routing`), then a new process; readiness shows the gap;
    ``inference_worker_restarts_total`` counts it. A worker that keeps failing at start-up stops
    the server with a non-zero status and the cause, instead of looping, if the server never served;
    after it has, only that model goes out of service (503 naming the cause), the others go on.

    A worker that is alive but stuck (stopped, or in an endless forward) is not replaced: its
    process is not dead, and a long forward looks the same. Its requests are answered 504 at
    their deadline, and the API servers route new ones around it (it has the most outstanding).

    ``serving`` is set here once every worker reported ready (the drain reads it)."""

    MAX_START_FAILURES = 3

    def __init__(
        self, runtime: LitServeRuntime, state: ServiceState, serving: threading.Event, interval: float = 1.0
    ) -> None:
        self.runtime = runtime
        self.state = state
        self.serving = serving
        self.interval = interval
        self.failure: str | None = None
        self._idle = threading.Event()  # never set: a sleep until the next check
        self.start_failures: dict[tuple[str, int], int] = {}
        self.given_up: set[tuple[str, int]] = set()  # worker slots no longer replaced
        # (lit_api, model, worker index) per process slot
        self.slots: list[tuple[Any, str, int]] = [
            (api, api.config.model, index) for api, index in runtime.worker_slots()
        ]

    def start(self) -> None:
        threading.Thread(target=self._run, name="worker-monitor", daemon=True).start()

    def _run(self) -> None:
        try:
            while not self.state.shutting_down.value:
                # wakes the moment a worker process ends, else every interval (readiness, start-up)
                sentinels = [p.sentinel for p in self.runtime.worker_processes() if p.exitcode is None]
                if sentinels:
                    wait(sentinels, self.interval)
                else:
                    self._idle.wait(self.interval)
                self._check()
        except Exception:  # the monitor must never die silently
            logger.exception("worker monitor failed")

    def _check(self) -> None:
        workers = self.runtime.worker_processes()
        if not self.runtime.started() or len(workers) != len(self.slots) or self.state.shutting_down.value:
            return
        # only the exit codes while all is well (cheap); the Manager is asked when something changed
        if self.serving.is_set() and all(p.exitcode is None for p in workers) and not self.start_failures:
            return
        status = self.runtime.worker_states()
        if not self.serving.is_set() and all(self.state.readiness().values()):
            self.serving.set()
        for slot, process in enumerate(workers):
            api, model, index = self.slots[slot]
            key = worker_key(model, index)
            if (model, index) in self.given_up:
                continue
            if status.get(key) == "ready":
                self.start_failures.pop((model, index), None)
            if process.exitcode is None and status.get(key) != "error":
                continue
            if process.exitcode is None:
                process.join(timeout=5)
            # before anything else: the API servers re-send what it held as soon as they know
            self.runtime.renew_pipes(model, index)
            started = status.get(key) == "ready"
            cause = f"exit status {process.exitcode}" if started else "failed to start (see its error above)"
            logger.error("model %s worker %d (pid %s) died: %s", model, index, process.pid, cause)
            if process.pid is not None:
                metrics.mark_process_dead(process.pid)
            if not started:
                failures = self.start_failures.get((model, index), 0) + 1
                self.start_failures[(model, index)] = failures
                if failures >= self.MAX_START_FAILURES and self.serving.is_set():
                    # it had served: a deployment that worked; the other models go on
                    self.given_up.add((model, index))
                    self.state.routes[model].failed.value = 1
                    logger.error(
                        "model %s worker %d failed to start %d times in a row; the model is out of "
                        "service (503), the other models are still served",
                        model,
                        index,
                        failures,
                    )
                    continue
                if failures >= self.MAX_START_FAILURES:
                    self.failure = (
                        f"model {model} worker {index} failed to start {failures} times in a row; giving up"
                    )
                    logger.error("%s", self.failure)
                    self.state.shutting_down.value = 1
                    self.runtime.stop()
                    return
            metrics.WORKER_RESTARTS.labels(model).inc()
            replacement = self.runtime.relaunch_worker(slot, api, index)
            logger.info("model %s worker %d replaced (pid %s)", model, index, replacement.pid)


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
