"""The inference worker's LitAPI: a thin shell that owns one model's InferenceSession.

LitServe spawns one process per worker and calls ``setup`` there (``LITSERVE_WORKER_ID`` names
the worker); :class:`service.worker.loop.BatchingLoop` then feeds the session batches.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service import metrics
from service.core.rejection import InputRejected
from service.core.repository import GradMode, ModelEntry, ModelError, ModelRepository, ModelSpec
from service.runtime.litserve import LitAPI, internal_path
from service.settings import configure_logging
from service.worker.loop import BatchingLoop
from service.worker.memory import MemoryReporter

if TYPE_CHECKING:  # torch is imported in the worker only: API servers stay small
    from service.worker.session import InferenceSession

logger = logging.getLogger("service.worker")


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker needs, picklable (LitServe spawns workers with a pickled LitAPI)."""

    model: str
    repository: Path
    grad_mode: GradMode
    torch_threads: int
    max_batch_size: int
    batch_timeout: float
    torch_interop_threads: int = 0  # 0: torch's default
    # fewer threads while the backlog shows overload (service.worker.threads); 0: never change
    torch_threads_under_load: int = 0
    # threads while no other worker of the model computes (service.worker.threads); 0: torch_threads
    torch_threads_alone: int = 0
    # when each worker of the model last computed (service.worker.threads.ComputeTimes): a
    # multiprocessing.RawArray("d", workers) made by the launcher, travelling to the spawned
    # workers with this config; None: no peers
    compute_times: Any = None
    max_batch_tokens: int | None = None  # padded-token budget per forward (worker.batcher.Limits)
    max_line_bytes: int = 1 << 20
    metrics: bool = True
    # where cancel markers (client gone) appear
    spool_dir: Path | None = None
    # the model as the launcher found and verified it (None: look it up in ``repository``)
    entry: ModelEntry | None = None
    # backend exports and tuning decisions (service.worker.tuning); None: serve torch
    cache_dir: Path | None = None
    log_level: str = "info"  # the worker is spawned: its logging is configured again in setup


class ModelAPI(LitAPI):  # type: ignore[misc]
    def __init__(self, config: WorkerConfig) -> None:
        super().__init__(
            max_batch_size=config.max_batch_size,
            batch_timeout=config.batch_timeout,
            api_path=internal_path(config.model),
            stream=True,  # responses travel as a sequence of messages (files stream many)
            loop=BatchingLoop(),
        )
        self.config = config
        self.session: InferenceSession | None = None
        self.spec: ModelSpec | None = None
        self.memory: MemoryReporter | None = None

    def setup(self, device: str) -> None:
        import torch

        from service.worker.session import InferenceSession

        # The launcher orchestrates shutdown: a terminal's Ctrl-C must not kill workers mid-batch.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        configure_logging(self.config.log_level)
        _thread_local_progress_lock()
        if not self.config.metrics:
            metrics.disable()
        started = time.perf_counter()
        if self.config.torch_threads:
            torch.set_num_threads(self.config.torch_threads)
        if self.config.torch_interop_threads:  # must come before any inter-op work in this process
            torch.set_num_interop_threads(self.config.torch_interop_threads)
        entry = self.config.entry or ModelRepository(self.config.repository).get(self.config.model)
        self.spec = entry.spec
        model = entry.load(device, cache_dir=self.config.cache_dir)
        self.session = InferenceSession(model, self.config.grad_mode)
        try:
            outputs = self.session.run([warmup_input(entry.spec)])
        except InputRejected as exc:
            raise ModelError(
                f"model {entry.spec.name} rejected its warm-up input ({exc.message}); "
                "declare one it accepts as inputs.example in its model.yaml"
            ) from exc
        check_warmup(entry.spec, outputs)
        worker = os.environ.get("LITSERVE_WORKER_ID", "0")
        metrics.initialise_worker_labels(self.config.model)
        metrics.MODEL_LOAD_DURATION.labels(self.config.model).set(time.perf_counter() - started)
        metrics.MODEL_INFO.labels(
            self.config.model, entry.spec.version, str(device), self.config.grad_mode
        ).set(1)
        for shape, backend in getattr(model, "backends", {"lone": "torch", "batch": "torch"}).items():
            metrics.MODEL_BACKEND.labels(self.config.model, shape, backend).set(1)
        self.memory = MemoryReporter(self.config.model, worker, str(device))
        self.memory.sample()
        self.memory.start()
        logger.info("worker %s: model %s ready on %s", worker, self.config.model, device)

    # LitServe requires these hooks to exist; our loop calls the session directly.
    def decode_request(self, request: Any) -> Any:
        return request

    def predict(self, x: Any) -> Any:
        return x

    def encode_response(self, output: Any) -> Any:
        return output


def warmup_input(spec: ModelSpec) -> Any:
    """The input the model is warmed up with: its declared ``inputs.example``, else its kind's."""
    if spec.inputs.example is not None:
        if spec.inputs.kind == "tensors":  # declared as JSON; the model takes arrays by name
            from service.codecs.tensors import TENSORS

            return TENSORS.convert(spec.inputs, spec.inputs.example)
        return spec.inputs.example
    return spec.inputs.codec.example(spec.inputs)


def check_warmup(spec: ModelSpec, outputs: list[Any]) -> None:
    """The warm-up's output must be what the model declares (``outputs.size`` floats), so that
    a mismatch stops the start-up naming the model instead of failing requests later."""
    size = spec.outputs.size
    if size is None:
        return
    (output,) = outputs
    if not (
        isinstance(output, list | tuple)
        and len(output) == size
        and all(isinstance(x, int | float) and not isinstance(x, bool) for x in output)
    ):
        shape = (
            f"{type(output).__name__} of {len(output)}"
            if isinstance(output, list | tuple)
            else type(output).__name__
        )
        raise ModelError(
            f"model {spec.name}: its warm-up output is a {shape}, but model.yaml declares "
            f"outputs.size {size} (a list of {size} numbers per input)"
        )


def _thread_local_progress_lock() -> None:
    """Progress bars (transformers' "Loading weights") lock with a threading lock here. tqdm's
    default is a multiprocessing lock, a named semaphore that a worker stopped by a signal never
    unlinks: every shutdown would end with resource_tracker's "leaked semaphore" warning."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - not installed: nothing to lock
        return
    tqdm.set_lock(threading.RLock())
