"""Every metric the service exports, defined once, here.

The service runs in several processes (API servers, inference workers, the launcher), so
prometheus_client runs in multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` must be set before
this module is first imported (``python -m service`` does it before any other import) and each
scrape builds a fresh registry over the per-process files. Each gauge's multiprocess mode is
chosen for what it measures: per-worker values are ``livemax`` (one live process per worker
index, dead ones dropped by ``mark_process_dead``), in-flight counts are ``livesum``.
Labels are bounded: model names, endpoint templates, status codes, worker indexes.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

# 0.5 ms .. 60 s: resolves a 2 ms reference-model request and a multi-second large batch
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
# padded tokens per forward: one short sentence (~10) .. max_batch_tokens and beyond
TOKEN_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 65536)

PREDICT_ENDPOINT = "/v1/models/{name}/predict"
FILE_ENDPOINT = "/v1/models/{name}/predict-file"
V2_INFER_ENDPOINT = "/v2/models/{name}/infer"
V2_VERSIONED_INFER_ENDPOINT = "/v2/models/{name}/versions/{version}/infer"
EMBEDDINGS_ENDPOINT = "/v1/embeddings"
RERANK_V1_ENDPOINT = "/v1/rerank"
RERANK_V2_ENDPOINT = "/v2/rerank"
# every endpoint label: the route template of each route that runs a model (native, v2, OpenAI, Cohere)
ENDPOINTS = (
    PREDICT_ENDPOINT,
    FILE_ENDPOINT,
    V2_INFER_ENDPOINT,
    V2_VERSIONED_INFER_ENDPOINT,
    EMBEDDINGS_ENDPOINT,
    RERANK_V1_ENDPOINT,
    RERANK_V2_ENDPOINT,
)
UNKNOWN_MODEL = "unknown"  # label for requests naming a model that is not served
# the status codes a model route answers with; pre-initialised so rates start at 0
CODES = ("200", "400", "401", "404", "405", "408", "413", "415", "422", "499", "500", "503", "504")
REJECT_REASONS = ("queue_full", "deadline", "shutting_down", "unauthorized")
FILE_OUTCOMES = ("ok", "error")

REQUESTS = Counter(
    "inference_requests", "HTTP requests that reached a model route, by status code.",
    ["model", "endpoint", "code"],
)  # fmt: skip
REQUEST_DURATION = Histogram(
    "inference_request_duration_seconds", "End-to-end request time measured in the API server.",
    ["model", "endpoint"], buckets=LATENCY_BUCKETS,
)  # fmt: skip
QUEUE_DURATION = Histogram(
    "inference_queue_duration_seconds", "From a request entering the server to its batch starting in a worker.",
    ["model"], buckets=LATENCY_BUCKETS,
)  # fmt: skip
COMPUTE_DURATION = Histogram(
    "inference_compute_duration_seconds", "Time inside the InferenceSession: one batch's forward.",
    ["model"], buckets=LATENCY_BUCKETS,
)  # fmt: skip
BATCH_SIZE = Histogram("inference_batch_size", "Inputs per forward.", ["model"], buckets=BATCH_BUCKETS)
BATCH_PADDED_TOKENS = Histogram(
    "inference_batch_padded_tokens",
    "Padded cost per forward: its longest input's cost (tokens for a text model, else 1) times its inputs.",
    ["model"], buckets=TOKEN_BUCKETS,
)  # fmt: skip
IN_FLIGHT = Gauge(
    "inference_in_flight_requests", "Requests accepted and not yet answered.", ["model"],
    multiprocess_mode="livesum",
)  # fmt: skip
WORKER_RSS = Gauge(
    "inference_worker_resident_memory_bytes", "Resident memory of one inference worker process.",
    ["model", "worker"], multiprocess_mode="livemax",
)  # fmt: skip
WORKER_PEAK_RSS = Gauge(
    "inference_worker_peak_resident_memory_bytes", "High-water mark of one inference worker's resident memory.",
    ["model", "worker"], multiprocess_mode="livemax",
)  # fmt: skip
CUDA_ALLOCATED = Gauge(
    "inference_torch_cuda_memory_allocated_bytes", "torch.cuda.memory_allocated of one worker's device.",
    ["model", "worker", "device"], multiprocess_mode="livemax",
)  # fmt: skip
CUDA_RESERVED = Gauge(
    "inference_torch_cuda_memory_reserved_bytes", "torch.cuda.memory_reserved of one worker's device.",
    ["model", "worker", "device"], multiprocess_mode="livemax",
)  # fmt: skip
CUDA_MAX_ALLOCATED = Gauge(
    "inference_torch_cuda_memory_max_allocated_bytes", "torch.cuda.max_memory_allocated of one worker's device.",
    ["model", "worker", "device"], multiprocess_mode="livemax",
)  # fmt: skip
MODEL_LOAD_DURATION = Gauge(
    "inference_model_load_duration_seconds", "Seconds the slowest live worker took to load and warm the model.",
    ["model"], multiprocess_mode="livemax",
)  # fmt: skip
MODEL_INFO = Gauge(
    "inference_model_info", "Always 1: the model's version, device and grad mode as labels.",
    ["model", "version", "device", "grad_mode"], multiprocess_mode="livemax",
)  # fmt: skip
MODEL_BACKEND = Gauge(
    "inference_model_backend_info",
    "Always 1: what runs the model's network for each forward shape (lone: 1-2 inputs; batch).",
    ["model", "shape", "backend"], multiprocess_mode="livemax",
)  # fmt: skip
REJECTED = Counter(
    "inference_rejected_requests", "Requests refused before reaching a model, by reason.", ["model", "reason"]
)
WORKER_RESTARTS = Counter("inference_worker_restarts", "Inference workers replaced after dying.", ["model"])
FORWARD_RETRIES = Counter(
    "inference_forward_retries",
    "Forwards run again on fewer inputs because an input failed (each bad input fails alone).",
    ["model"],
)
RESENT = Counter(
    "inference_requests_resent",
    "Requests sent again to another worker because the worker computing them died.",
    ["model"],
)
FILE_RECORDS = Counter(
    "inference_file_records", "Records read from uploaded or CLI files, by outcome.", ["model", "outcome"]
)
FILE_BYTES = Counter("inference_file_bytes", "Bytes of input files processed.", ["model"])


def initialise_api_labels(models: Iterable[str]) -> None:
    """Create every label set an API server can emit, so that rates read 0 instead of absent."""
    for model in [*models, UNKNOWN_MODEL]:
        for endpoint in ENDPOINTS:
            REQUEST_DURATION.labels(model, endpoint)
            for code in CODES:
                REQUESTS.labels(model, endpoint, code)
        if model == UNKNOWN_MODEL:
            REJECTED.labels(model, "unauthorized")
            continue
        IN_FLIGHT.labels(model)
        RESENT.labels(model)
        for reason in REJECT_REASONS:
            REJECTED.labels(model, reason)


def initialise_worker_labels(model: str) -> None:
    """Create the label sets a worker emits before its first batch."""
    QUEUE_DURATION.labels(model)
    COMPUTE_DURATION.labels(model)
    BATCH_SIZE.labels(model)
    BATCH_PADDED_TOKENS.labels(model)
    FORWARD_RETRIES.labels(model)
    FILE_BYTES.labels(model)
    for outcome in FILE_OUTCOMES:
        FILE_RECORDS.labels(model, outcome)


def initialise_launcher_labels(models: Iterable[str]) -> None:
    for model in models:
        WORKER_RESTARTS.labels(model)


class _ReadinessCollector(Collector):
    def __init__(self, readiness: Callable[[], dict[str, bool]]) -> None:
        self._readiness = readiness

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "inference_model_ready",
            "1 when every worker of the model has loaded and warmed it.",
            labels=["model"],
        )
        for model, ready in self._readiness().items():
            family.add_metric([model], 1.0 if ready else 0.0)
        yield family


RENDER_ATTEMPTS = 5


def render(readiness: Callable[[], dict[str, bool]]) -> bytes:
    """One scrape: a fresh registry over every process's files, plus current readiness.

    A process writing a metric of a new type creates its file empty and sizes it a moment later
    (prometheus_client's ``MmapedDict``): a scrape in between fails to read the file's header
    (``struct.error``). The file is whole microseconds later, so the scrape reads again."""
    for attempt in range(RENDER_ATTEMPTS):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        registry.register(_ReadinessCollector(readiness))
        try:
            return generate_latest(registry)
        except struct.error:
            if attempt == RENDER_ATTEMPTS - 1:
                raise
            time.sleep(0.002 * (attempt + 1))
    raise AssertionError("unreachable")


def multiprocess_dir() -> str:
    """The metrics folder; raises if multiprocess mode was not set up before import."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")
    if not path:
        raise RuntimeError("PROMETHEUS_MULTIPROC_DIR must be set before the service starts")
    return path


def mark_process_dead(pid: int) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, multiprocess_dir())  # type: ignore[no-untyped-call]


class _Disabled:
    """Stands in for every metric when metrics are switched off (to measure what they cost)."""

    def labels(self, *args: object, **kwargs: object) -> _Disabled:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def dec(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, value: float) -> None:
        pass


_METRIC_NAMES = (
    "REQUESTS", "REQUEST_DURATION", "QUEUE_DURATION", "COMPUTE_DURATION", "BATCH_SIZE", "BATCH_PADDED_TOKENS",
    "IN_FLIGHT",
    "WORKER_RSS", "WORKER_PEAK_RSS", "CUDA_ALLOCATED", "CUDA_RESERVED", "CUDA_MAX_ALLOCATED",
    "MODEL_LOAD_DURATION", "MODEL_INFO", "MODEL_BACKEND", "REJECTED", "WORKER_RESTARTS", "RESENT", "FORWARD_RETRIES", "FILE_RECORDS", "FILE_BYTES",
)  # fmt: skip


def disable() -> None:
    """Turn every metric of this process into a no-op (settings ``metrics: false``)."""
    for name in _METRIC_NAMES:
        globals()[name] = _Disabled()
