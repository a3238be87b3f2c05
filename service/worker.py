"""The inference worker: a thin LitAPI that owns one model's InferenceSession, and the loop
that feeds it batches.

LitServe spawns one process per worker and calls ``setup`` there; our loop then replaces
LitServe's batching loop, which polls its queue every millisecond (a core burnt while idle)
and batches requests rather than inputs. This one blocks while idle, gathers requests until
``max_batch_size`` inputs or ``batch_timeout`` seconds, splits large requests into several
forwards, drops requests whose deadline passed before they reach the model, and records
queue, compute, batch-size and memory metrics.
"""

from __future__ import annotations

import logging
import os
import queue
import resource
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import litserve as ls
from litserve.loops.base import _SENTINEL_VALUE, LitLoop
from litserve.utils import LitAPIStatus, LoopResponseType

from service import metrics
from service.repository import GradMode, ModelRepository, ModelSpec

if TYPE_CHECKING:  # torch is imported in the worker only: API servers stay small
    from service.session import InferenceSession

logger = logging.getLogger("service.worker")

# Every wake-up of an idle process costs CPU (a Manager round trip is several ms here), so idle
# loops wake rarely: the queue wakes the worker as soon as a request (or the stop sentinel) arrives.
MEMORY_INTERVAL = 5.0  # seconds between RSS samples while idle (after every batch otherwise)
IDLE_POLL = 5.0  # seconds the idle loop blocks on the queue in one call


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker needs, picklable (LitServe spawns workers with a pickled LitAPI)."""

    model: str
    repository: Path
    grad_mode: GradMode
    torch_threads: int
    max_batch_size: int
    batch_timeout: float
    max_batch_tokens: int | None = None  # padded-token budget per forward (service.batcher.Limits)
    max_line_bytes: int = 1 << 20
    metrics: bool = True
    # where cancel markers (client gone) appear and this worker records the batch it is computing
    spool_dir: Path | None = None


def internal_path(model: str) -> str:
    """The LitServe api_path of a model: names its request queue; never exposed over HTTP."""
    return f"/internal/{model}"


class ModelAPI(ls.LitAPI):  # type: ignore[misc]
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

    def setup(self, device: str) -> None:
        import torch

        from service.session import InferenceSession

        # The launcher orchestrates shutdown: a terminal's Ctrl-C must not kill workers mid-batch.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if not self.config.metrics:
            metrics.disable()
        started = time.perf_counter()
        if self.config.torch_threads:
            torch.set_num_threads(self.config.torch_threads)
        entry = ModelRepository(self.config.repository).get(self.config.model)
        self.spec = entry.spec
        model = entry.load(device)
        self.session = InferenceSession(model, self.config.grad_mode)
        self.session.run([warmup_input(entry.spec)])
        worker = os.environ.get("LITSERVE_WORKER_ID", "0")
        metrics.initialise_worker_labels(self.config.model)
        metrics.MODEL_LOAD_DURATION.labels(self.config.model).set(time.perf_counter() - started)
        metrics.MODEL_INFO.labels(
            self.config.model, entry.spec.version, str(device), self.config.grad_mode
        ).set(1)
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
    if spec.inputs.kind == "vector":
        return [0.0] * (spec.inputs.dim or 1)
    return "warm-up"


class MemoryReporter:
    """Samples this worker's RSS (and CUDA memory) into gauges: after each batch and every few seconds.

    RSS comes from one pread of /proc/self/statm (cheap enough for every batch); the peak is the
    larger of what we saw and the kernel's high-water mark, so it is never below the current value.
    """

    def __init__(self, model: str, worker: str, device: str) -> None:
        self._rss = metrics.WORKER_RSS.labels(model, worker)
        self._peak = metrics.WORKER_PEAK_RSS.labels(model, worker)
        self._cuda = device.startswith("cuda")
        self._labels = (model, worker, device)
        self._last = 0.0
        self._highest = 0
        self._lock = threading.Lock()
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._statm = os.open("/proc/self/statm", os.O_RDONLY)

    def resident_bytes(self) -> int:
        return int(os.pread(self._statm, 128, 0).split()[1]) * self._page

    def sample(self) -> None:
        with self._lock:
            self._last = time.monotonic()
            rss = self.resident_bytes()
            # ru_maxrss is in KiB on Linux and may lag /proc by a page or two
            kernel_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self._highest = max(self._highest, rss, kernel_peak)
            self._rss.set(rss)
            self._peak.set(self._highest)
            if self._cuda:
                import torch

                index = torch.device(self._labels[2])
                metrics.CUDA_ALLOCATED.labels(*self._labels).set(torch.cuda.memory_allocated(index))
                metrics.CUDA_RESERVED.labels(*self._labels).set(torch.cuda.memory_reserved(index))
                metrics.CUDA_MAX_ALLOCATED.labels(*self._labels).set(torch.cuda.max_memory_allocated(index))

    def start(self) -> None:
        thread = threading.Thread(target=self._run, name="memory-reporter", daemon=True)
        thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(MEMORY_INTERVAL)
            if time.monotonic() - self._last >= MEMORY_INTERVAL / 2:
                self.sample()


@dataclass
class Pending:
    """One request taken from the queue: where to answer, and its inputs."""

    response_queue_id: int
    uid: str
    arrived: float
    deadline: float
    inputs: list[Any]
    outputs: list[Any] = field(default_factory=list)


class StopLoop(Exception):
    pass


class BatchingLoop(LitLoop):  # type: ignore[misc]
    """Blocks while idle; batches inputs across requests; answers each request once."""

    def __call__(
        self,
        lit_api: ModelAPI,
        device: str,
        worker_id: int,
        request_queue: Any,
        transport: Any,
        workers_setup_status: Any,
        callback_runner: Any,
    ) -> None:
        assert lit_api.session is not None and lit_api.spec is not None
        self.api = lit_api
        self.session = lit_api.session
        self.transport = transport
        self.request_queue = request_queue
        model = lit_api.config.model
        self.queue_seconds = metrics.QUEUE_DURATION.labels(model)
        self.compute_seconds = metrics.COMPUTE_DURATION.labels(model)
        self.batch_size = metrics.BATCH_SIZE.labels(model)
        self.max_batch = lit_api.config.max_batch_size
        self.batch_timeout = lit_api.config.batch_timeout
        self.spool_dir = lit_api.config.spool_dir
        self.cancels = CancelMarkers(self.spool_dir)
        self.concurrent = False
        self.batch_seconds = 0.0
        self.ledger = BatchLedger(
            batch_ledger_path(self.spool_dir, model, worker_id) if self.spool_dir else None
        )
        try:
            while True:
                self._serve_once()
        except StopLoop:
            logger.debug("worker %s: stop requested", worker_id)

    def _get(self, timeout: float) -> Any:
        try:
            if timeout > 0:
                item = self.request_queue.get(timeout=timeout)
            else:
                item = self.request_queue.get(block=False)
        except queue.Empty:
            return None
        if item == _SENTINEL_VALUE or item is None:
            raise StopLoop
        return item

    def _serve_once(self) -> None:
        first = self._get(IDLE_POLL)
        if first is None:
            return
        requests = [first]
        count = _size(first)
        # Wait for company only when traffic is concurrent (the last batch had several requests);
        # a lone client should not pay batch_timeout on every request. What is already queued is
        # always taken.
        wait = self.batch_timeout if self.concurrent else 0.0
        closes = time.monotonic() + wait
        while count < self.max_batch:
            item = self._get(closes - time.monotonic())
            if item is None:
                break
            requests.append(item)
            count += _size(item)
        self.concurrent = len(requests) > 1
        self._run(requests)
        self.api.memory.sample()

    def _run(self, items: list[Any]) -> None:
        started = time.monotonic()
        cancelled = self.cancels.current()
        batch: list[Pending] = []
        for response_queue_id, uid, _timestamp, payload in items:
            self.queue_seconds.observe(max(0.0, started - payload["arrived"]))
            if payload.get("op") == "file":
                self._run_file(response_queue_id, uid, payload)
                continue
            arrived, deadline = payload["arrived"], payload["deadline"]
            if deadline - started <= self.batch_seconds:
                # expired, or would expire before a typical batch finishes: the API server answers
                # 504 at the deadline, so computing it would only delay everyone behind it
                self._answer_error(response_queue_id, uid, 504, "deadline expired while queued")
                continue
            if uid in cancelled:
                self._answer_error(response_queue_id, uid, 499, "client closed the request")
                continue
            batch.append(Pending(response_queue_id, uid, arrived, deadline, payload["inputs"]))
        if not batch:
            return
        self.ledger.record([(p.response_queue_id, p.uid) for p in batch])
        flat = [(p, x) for p in batch for x in p.inputs]
        try:
            for start in range(0, len(flat), self.max_batch):
                chunk = flat[start : start + self.max_batch]
                outputs = self.session.run([x for _, x in chunk])
                self.compute_seconds.observe(self.session.last_duration)
                # a moving average of one forward's time, to drop requests that cannot make their deadline
                self.batch_seconds = 0.8 * self.batch_seconds + 0.2 * self.session.last_duration
                self.batch_size.observe(len(chunk))
                for (pending, _), output in zip(chunk, outputs, strict=True):
                    pending.outputs.append(output)
        except Exception as exc:
            logger.exception("model %s: forward failed", self.api.config.model)
            for pending in batch:
                self._answer_error(
                    pending.response_queue_id, pending.uid, 500, f"model error: {type(exc).__name__}"
                )
            self.ledger.clear()
            return
        for pending in batch:
            self._send(pending.response_queue_id, pending.uid, pending.outputs, LitAPIStatus.OK)
        self.ledger.clear()

    def _run_file(self, response_queue_id: int, uid: str, payload: dict[str, Any]) -> None:
        from service.filestream import stream_file

        self.ledger.record([(response_queue_id, uid)])
        for message, status in stream_file(self, payload):
            self._send(response_queue_id, uid, message, status)
        self.ledger.clear()

    def _send(self, response_queue_id: int, uid: str, data: Any, status: str) -> None:
        self.put_response(self.transport, response_queue_id, uid, data, status, LoopResponseType.STREAMING)

    def _answer_error(self, response_queue_id: int, uid: str, code: int, message: str) -> None:
        self._send(response_queue_id, uid, {"status": code, "error": message}, LitAPIStatus.ERROR)


class CancelMarkers:
    """The uids whose clients went away: ``<uid>.cancel`` files in the spool folder. The folder
    is listed only when its mtime changes, so the common case costs one stat per batch."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self._mtime = -1
        self._uids: frozenset[str] = frozenset()

    def current(self) -> frozenset[str]:
        if self.folder is None:
            return self._uids
        try:
            mtime = os.stat(self.folder).st_mtime_ns
        except FileNotFoundError:
            return self._uids
        if mtime != self._mtime:
            self._mtime = mtime
            self._uids = frozenset(
                name[: -len(".cancel")] for name in os.listdir(self.folder) if name.endswith(".cancel")
            )
        return self._uids


def batch_ledger_path(spool_dir: Path, model: str, worker: int) -> Path:
    return spool_dir / "workers" / f"{model}-{worker}.batch"


class BatchLedger:
    """The requests this worker is computing, in a small file the launcher reads if the worker
    dies, so that exactly those requests get a 503 at once instead of hanging (queued ones are
    left for the replacement worker). Two syscalls per batch."""

    def __init__(self, path: Path | None) -> None:
        self._fd = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)

    def record(self, entries: list[tuple[int, str]]) -> None:
        if self._fd is None:
            return
        data = "".join(f"{queue_id} {uid}\n" for queue_id, uid in entries).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def clear(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)


def read_batch_ledger(path: Path) -> list[tuple[int, str]]:
    """The (response queue id, uid) pairs a dead worker was computing."""
    try:
        with open(path, encoding="ascii") as handle:
            text = handle.read(1 << 20)
    except FileNotFoundError:
        return []
    entries = []
    for line in text.splitlines():
        queue_id, _, uid = line.partition(" ")
        if queue_id.isdigit() and uid:
            entries.append((int(queue_id), uid))
    return entries


def _size(item: Any) -> int:
    payload = item[3]
    if payload.get("op") == "file":
        return 0
    return len(payload["inputs"])
