"""Supervising the inference workers: replacing dead ones, and leaving no process behind."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

from service import metrics
from service.api.state import ServiceState
from service.core.messages import Failure
from service.core.spool import batch_ledger_path, read_batch_ledger
from service.runtime.litserve import LitServeRuntime, worker_key

logger = logging.getLogger("service.supervisor")


class WorkerMonitor:
    """Replaces LitServe's worker monitor. A worker that dies is replaced without restarting
    the server; the requests it was computing (its batch ledger) get a 503 at once; readiness
    shows the gap; ``inference_worker_restarts_total`` counts it. A worker that keeps failing
    at start-up stops the server with a non-zero status and the cause, instead of looping.

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
        self.start_failures: dict[tuple[str, int], int] = {}
        # (lit_api, model, worker index) per process slot
        self.slots: list[tuple[Any, str, int]] = [
            (api, api.config.model, index) for api, index in runtime.worker_slots()
        ]

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
            if status.get(key) == "ready":
                self.start_failures.pop((model, index), None)
            if process.exitcode is None and status.get(key) != "error":
                continue
            if process.exitcode is None:
                process.join(timeout=5)
            started = status.get(key) == "ready"
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
                    self.runtime.stop()
                    return
            metrics.WORKER_RESTARTS.labels(model).inc()
            replacement = self.runtime.relaunch_worker(slot, api, index)
            logger.info("model %s worker %d replaced (pid %s)", model, index, replacement.pid)

    def _fail_in_flight(self, model: str, index: int) -> None:
        ledger = batch_ledger_path(self.state.spool_dir, model, index)
        failure = Failure(503, f"the inference worker for {model!r} died while computing this request; retry")
        for reply_to, uid in read_batch_ledger(ledger):
            self.runtime.send_answer(model, index, reply_to, uid, failure)
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
