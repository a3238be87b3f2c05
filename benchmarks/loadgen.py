"""A closed-loop HTTP/1.1 load generator, run as its own process; prints one JSON result.

    python -m benchmarks.loadgen --url http://127.0.0.1:8000/v1/models/minilm/predict \
        --model minilm --concurrency 32 --duration 5 --warmup 1

Each of ``--concurrency`` clients owns one keep-alive connection and sends its next request as
soon as the previous answer arrives. HTTP is written and parsed by hand on asyncio streams
(uvloop when installed): several times cheaper per request than an HTTP client library, so
the generator stays far from being the bottleneck (``benchmarks.run`` measures its ceiling
against a trivial server). Every answer is checked: status 200 and, for a model, one output
of the model's width. Only requests that complete inside the measurement window (after the
warm-up) count towards throughput and latency; errors (timeouts among them, also counted
apart) are counted over the whole run.

``--workload`` picks the inputs (``short`` sentences or ``mixed`` lengths, one text per
request); ``--api`` the request and answer shape: ``predict`` (``{"inputs": [x]}`` →
``{"outputs": [y]}``: this service, naive FastAPI, bare LitServe) or ``openai``
(``{"model": m, "input": [x]}`` → ``{"data": [{"embedding": y}]}``: Infinity's ``/embeddings``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import orjson

from benchmarks.inputs import OUTPUT_DIM, WORKLOADS, model_inputs

MAX_ERROR_SAMPLES = 5
APIS = ("predict", "openai")


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Linear interpolation between closest ranks (``fraction`` in 0..1)."""
    if not sorted_values:
        return float("nan")
    position = (len(sorted_values) - 1) * fraction
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def request_body(api: str, model: str, item: Any) -> bytes:
    if api == "openai":
        return orjson.dumps({"model": model, "input": [item]})
    return orjson.dumps({"inputs": [item]})


def build_requests(
    method: str,
    host: str,
    port: int,
    path: str,
    model: str | None,
    workload: str = "short",
    api: str = "predict",
) -> list[bytes]:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: benchmarks-loadgen\r\n"
    if model is None:
        return [(head + "\r\n").encode()]
    requests = []
    for item in model_inputs(model, workload=workload):
        kind = "application/json"
        if isinstance(item, bytes):  # an encoded image: the raw body
            body, kind = item, "image/jpeg"
        else:
            body = request_body(api, model, item)
        requests.append(
            (head + f"Content-Type: {kind}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
        )
    return requests


class BadResponse(Exception):
    pass


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, keep_alive) of one HTTP/1.1 response."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = -1
    chunked = False
    keep_alive = True
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            keep_alive = value.strip().lower() != b"close"
    if chunked:
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers are expected
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        return status, b"".join(parts), keep_alive
    if length < 0:
        raise BadResponse("response without Content-Length or chunked encoding")
    return status, await reader.readexactly(length), keep_alive


def check(status: int, body: bytes, dim: int | None, api: str = "predict") -> str | None:
    """None when the answer is right, else what is wrong with it."""
    if status != 200:
        return f"status {status}: {body[:200]!r}"
    if dim is None:
        return None
    try:
        answer = orjson.loads(body)
        if api == "openai":
            data = answer["data"]
            if not (isinstance(data, list) and len(data) == 1):
                return f"expected one embedding, got {str(data)[:200]}"
            outputs = [data[0]["embedding"]]
        else:
            outputs = answer["outputs"]
    except (orjson.JSONDecodeError, KeyError, TypeError, IndexError) as exc:
        return f"unexpected body ({type(exc).__name__}): {body[:200]!r}"
    if not (isinstance(outputs, list) and len(outputs) == 1 and isinstance(outputs[0], list)):
        return f"expected one output, got {str(outputs)[:200]}"
    first = outputs[0][0] if outputs[0] else None
    labelled = isinstance(first, dict) and isinstance(first.get("score"), float)  # a classification
    if len(outputs[0]) != dim or not (isinstance(first, float) or labelled):
        return f"expected {dim} floats (or labelled scores), got {len(outputs[0])} values"
    return None


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        url = urlsplit(args.url)
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or 80
        self.model = None if args.model == "none" else args.model
        self.dim = OUTPUT_DIM[self.model] if self.model else None
        self.api = args.api
        self.workload = args.workload
        self.requests = build_requests(
            args.method, self.host, self.port, url.path or "/", self.model, args.workload, args.api
        )
        self.concurrency = args.concurrency
        self.warmup = args.warmup
        self.duration = args.duration
        self.timeout = args.timeout
        self.samples: list[tuple[float, float]] = []  # (start, end) of each correct answer
        self.errors = 0
        self.timeouts = 0
        self.error_samples: list[str] = []
        self.stop = False
        self.limit = args.requests  # 0: run for the duration; else send exactly this many, then stop
        self.issued = 0

    def error(self, message: str) -> None:
        self.errors += 1
        if len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append(message)

    async def client(self, index: int) -> None:
        requests = self.requests
        count = len(requests)
        turn = index * 7  # clients start at different inputs
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        while not self.stop:
            if self.limit:
                if self.issued >= self.limit:
                    break
                self.issued += 1
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(self.host, self.port)
                assert reader is not None
                started = time.perf_counter()
                writer.write(requests[turn % count])
                status, body, keep_alive = await asyncio.wait_for(read_response(reader), self.timeout)
                ended = time.perf_counter()
                turn += 1
                problem = check(status, body, self.dim, self.api)
                if problem is None:
                    self.samples.append((started, ended))
                else:
                    self.error(problem)
                if not keep_alive:
                    writer.close()
                    writer = None
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as exc:
                if isinstance(exc, TimeoutError):
                    self.timeouts += 1
                self.error(f"{type(exc).__name__}: {exc}"[:200])
                if writer is not None:
                    writer.close()
                writer = None
                await asyncio.sleep(0.05)
            except (BadResponse, ValueError, IndexError) as exc:
                self.error(f"bad response: {exc}"[:200])
                if writer is not None:
                    writer.close()
                writer = None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def main(self) -> dict[str, Any]:
        if self.limit:
            return await self.count_run()
        clients = [asyncio.create_task(self.client(i)) for i in range(self.concurrency)]
        origin = time.perf_counter()
        opens, closes = origin + self.warmup, origin + self.warmup + self.duration
        await asyncio.sleep(self.warmup)
        usage_start = resource.getrusage(resource.RUSAGE_SELF)
        await asyncio.sleep(max(0.0, closes - time.perf_counter()))
        usage_end = resource.getrusage(resource.RUSAGE_SELF)
        self.stop = True
        _, pending = await asyncio.wait(clients, timeout=self.timeout)
        for task in pending:
            task.cancel()
        window = [(s, e) for s, e in self.samples if opens <= e <= closes]
        return self.summary(window, self.duration, usage_start, usage_end)

    async def count_run(self) -> dict[str, Any]:
        """``--requests N``: exactly N requests (no warm-up), all of them measured."""
        usage_start = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        await asyncio.gather(*(self.client(i) for i in range(self.concurrency)))
        elapsed = time.perf_counter() - started
        usage_end = resource.getrusage(resource.RUSAGE_SELF)
        self.duration, self.warmup = elapsed, 0.0
        return {**self.summary(self.samples, elapsed, usage_start, usage_end), "requests_sent": self.issued}

    def summary(
        self,
        window: list[tuple[float, float]],
        seconds: float,
        usage_start: resource.struct_rusage,
        usage_end: resource.struct_rusage,
    ) -> dict[str, Any]:
        latencies = sorted((e - s) * 1000.0 for s, e in window)
        cpu = (
            usage_end.ru_utime - usage_start.ru_utime + usage_end.ru_stime - usage_start.ru_stime
        ) / seconds
        return {
            "concurrency": self.concurrency,
            "workload": self.workload,
            "api": self.api,
            "timeout_s": self.timeout,
            "duration_s": self.duration,
            "warmup_s": self.warmup,
            "requests": len(window),
            "requests_total": len(self.samples),
            "errors": self.errors,
            "timeouts": self.timeouts,
            "error_samples": self.error_samples,
            "throughput_rps": len(window) / seconds,
            "latency_ms": {
                "p50": percentile(latencies, 0.50),
                "p95": percentile(latencies, 0.95),
                "p99": percentile(latencies, 0.99),
                "mean": sum(latencies) / len(latencies) if latencies else float("nan"),
                "max": latencies[-1] if latencies else float("nan"),
            },
            "loadgen_cpu_percent": 100.0 * cpu,
            "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
        }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadgen", description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--method", default="POST")
    parser.add_argument(
        "--model", default="none", choices=["none", *OUTPUT_DIM], help="inputs to send; none: no body"
    )
    parser.add_argument("--workload", default="short", choices=WORKLOADS, help="which inputs (see inputs.py)")
    parser.add_argument("--api", default="predict", choices=APIS, help="request body and answer shape")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before measuring")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument(
        "--requests", type=int, default=0, help="send exactly this many requests, all measured (no duration)"
    )
    parser.add_argument("--no-uvloop", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.model == "none" and args.method == "POST":
        args.method = "GET"
    run = Run(args)
    if not args.no_uvloop:
        try:
            import uvloop
        except ImportError:
            uvloop = None
        if uvloop is not None:
            result = uvloop.run(run.main())
            sys.stdout.write(orjson.dumps(result).decode() + "\n")
            return 0
    result = asyncio.run(run.main())
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
