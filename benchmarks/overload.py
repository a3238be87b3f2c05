"""Overload benchmark: open-loop load at a multiple of the sustainable rate ("Reliability" issue).

    python -m benchmarks.overload [--duration 60] [--model minilm] [--out benchmarks/results]

1. Starts ``python -m service serve`` (real configuration, one model) on a free loopback port.
2. Measures the sustainable rate: ``benchmarks.loadgen`` closed-loop at concurrency
   ``max_batch_size`` × ``workers`` (a full forward for every worker) for ~15 s; every answer
   must be a 200.
3. Drives an OPEN-loop load at ``--factor`` (4) × that rate for ``--duration`` seconds: Poisson
   arrivals on a fixed, seeded schedule, sent whether or not earlier requests were answered
   (raw HTTP/1.1 on asyncio, a pool of keep-alive connections that grows as needed), each with
   ``X-Request-Timeout`` (5 s) and a client timeout a little above it. The generator runs as its
   own process (``--generator-config``) while this process samples the RSS and open file
   descriptors of every server process.
4. Writes ``overload.json`` and ``overload.md`` under ``--out`` and prints the tables.

Targets: every request answered (no connection errors, no hangs, only 200/503/504); the 200s
within the deadline; accepted throughput ≥ 90% of the sustainable rate; RSS bounded.
The open-loop generator here is also used by ``benchmarks.soak``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import psutil

from benchmarks.inputs import OUTPUT_DIM, model_inputs
from benchmarks.loadgen import BadResponse, check, percentile, read_response
from benchmarks.processes import python_module, role, service_command, tree
from tests.support import ROOT, ServerUnderTest

DEFAULT_OUT = ROOT / "benchmarks" / "results"
MIB = 1024 * 1024
IDLE_REUSE_S = 3.0  # reuse a keep-alive connection only if idle for less (uvicorn's keep-alive: 5 s)
NOISE_NOTE = (
    "Measured on a shared 2-core machine where other jobs (tests, other benchmarks) run at the "
    "same time, and the load generator shares those cores with the server: absolute numbers move "
    "by tens of percent between runs. The machine's load average is recorded above."
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the open-loop generator (runs in its own process) ------------------------------------------


def build_open_requests(host: str, port: int, path: str, model: str, deadline: float) -> list[bytes]:
    """One complete HTTP/1.1 request per benchmark input, with the deadline header."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: benchmarks-openloop\r\n"
        f"X-Request-Timeout: {deadline:g}\r\nContent-Type: application/json\r\n"
    )
    requests = []
    for item in model_inputs(model):
        body = orjson.dumps({"inputs": [item]})
        requests.append((head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
    return requests


def arrival_schedule(rate: float, duration: float, poisson: bool, seed: int) -> list[float]:
    """Send times in seconds from the start: Poisson (exponential gaps) or fixed interval."""
    rng = random.Random(seed)
    times: list[float] = []
    now = 0.0
    while True:
        now += rng.expovariate(rate) if poisson else 1.0 / rate
        if now >= duration:
            return times
        times.append(now)


class OpenLoop:
    """Sends requests at scheduled times regardless of answers; records one sample per request.

    A sample is ``[scheduled_s, lag_ms, latency_ms, outcome, connect_ms]``: ``scheduled_s`` from the start,
    ``lag_ms`` how late it was sent (client-side), ``latency_ms`` from sending to the end of the
    answer, ``outcome`` the HTTP status (an int) or a string: ``"hang"`` (no answer within the
    client timeout), ``"conn:<Error>"`` (connect/reset), ``"bad:<why>"`` (malformed answer or a
    200 with a wrong body); ``connect_ms`` the time to open a new connection (0: one was reused).
    The client timeout covers connecting, sending and reading.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        url = urlsplit(config["url"])
        if url.hostname != "127.0.0.1":
            raise ValueError(f"the generator only sends to 127.0.0.1, not {url.hostname}")
        self.host, self.port = url.hostname, url.port or 80
        self.requests = build_open_requests(
            self.host, self.port, url.path, config["model"], config["deadline_s"]
        )
        self.dim = OUTPUT_DIM[config["model"]]
        self.schedule = arrival_schedule(
            config["rate"], config["duration_s"], config.get("poisson", True), config.get("seed", 0)
        )
        self.client_timeout = float(config["client_timeout_s"])
        self.max_connections = int(config.get("max_connections", 4000))
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self.open_connections = 0
        self.peak_connections = 0
        self.peak_in_flight = 0
        self.in_flight = 0
        self.slots = asyncio.Semaphore(self.max_connections)
        self.samples: list[list[Any]] = []
        self.error_samples: list[str] = []

    def reusable(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """The most recently used idle connection, skipping any the server may have closed:
        uvicorn closes keep-alive connections idle for 5 s, and a request written just as it
        does would fail with no byte read (a client-side race, not a server error)."""
        while self.idle:
            reader, writer, since = self.idle.pop()
            if time.monotonic() - since < IDLE_REUSE_S and not reader.at_eof():
                return reader, writer
            self.open_connections -= 1
            writer.close()
        return None

    async def exchange(self, index: int, timing: list[float]) -> Any:
        """Send one request and read its answer; ``timing[0]`` gets the connect time (0: reused)."""
        writer: asyncio.StreamWriter | None = None
        try:
            reused = self.reusable()
            if reused is not None:
                reader, writer = reused
            else:
                began = time.perf_counter()
                reader, writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
                timing[0] = (time.perf_counter() - began) * 1000.0
                self.open_connections += 1
                self.peak_connections = max(self.peak_connections, self.open_connections)
            writer.write(self.requests[index % len(self.requests)])
            status, body, keep_alive = await read_response(reader)
            outcome: Any = status
            if status == 200:
                problem = check(status, body, self.dim)
                if problem is not None:
                    outcome = f"bad:{problem[:80]}"
            if keep_alive and not isinstance(outcome, str):
                self.idle.append((reader, writer, time.monotonic()))
                writer = None
            return outcome
        finally:
            if writer is not None:
                self.open_connections -= 1
                writer.close()

    async def one(self, index: int, scheduled: float, origin: float) -> None:
        async with self.slots:  # only waits when max_connections are busy (shows up as lag)
            sent = time.perf_counter()
            lag_ms = (sent - origin - scheduled) * 1000.0
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            timing = [0.0]
            outcome: Any
            try:
                outcome = await asyncio.wait_for(self.exchange(index, timing), self.client_timeout)
            except TimeoutError:
                outcome = "hang"
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                outcome = f"conn:{type(exc).__name__}"
                if len(self.error_samples) < 10:
                    self.error_samples.append(f"{type(exc).__name__}: {exc}"[:200])
            except (BadResponse, ValueError, IndexError) as exc:
                outcome = f"bad:{type(exc).__name__}"
                if len(self.error_samples) < 10:
                    self.error_samples.append(f"bad response: {exc}"[:200])
            finally:
                self.in_flight -= 1
            latency_ms = (time.perf_counter() - sent) * 1000.0
            self.samples.append(
                [round(scheduled, 4), round(lag_ms, 3), round(latency_ms, 3), outcome, round(timing[0], 3)]
            )

    async def main(self) -> dict[str, Any]:
        usage_start = resource.getrusage(resource.RUSAGE_SELF)
        tasks: set[asyncio.Task[None]] = set()
        origin = time.perf_counter()
        for index, scheduled in enumerate(self.schedule):
            delay = origin + scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(self.one(index, scheduled, origin))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        sending_s = time.perf_counter() - origin
        # every request has its own client timeout; this bound is only a safety net
        if tasks:
            _, pending = await asyncio.wait(set(tasks), timeout=self.client_timeout + 10.0)
            for task in pending:
                task.cancel()
            unfinished = len(pending)
        else:
            unfinished = 0
        for _, writer, _ in self.idle:
            writer.close()
        usage_end = resource.getrusage(resource.RUSAGE_SELF)
        cpu = usage_end.ru_utime - usage_start.ru_utime + usage_end.ru_stime - usage_start.ru_stime
        elapsed = time.perf_counter() - origin
        return {
            "scheduled": len(self.schedule),
            "sending_s": sending_s,
            "elapsed_s": elapsed,
            "unfinished": unfinished,
            "peak_connections": self.peak_connections,
            "peak_in_flight": self.peak_in_flight,
            "generator_cpu_percent": 100.0 * cpu / elapsed,
            "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
            "error_samples": self.error_samples,
            "samples": self.samples,
        }


def generator_main(config_path: Path, result_path: Path) -> int:
    with open(config_path, encoding="utf-8") as handle:
        config = json.load(handle)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    loop = OpenLoop(config)
    try:
        import uvloop

        result = uvloop.run(loop.main())
    except ImportError:
        result = asyncio.run(loop.main())
    with open(result_path, "wb") as handle:
        handle.write(orjson.dumps(result))
    return 0


def run_open_loop(config: dict[str, Any], on_wait: Any = None) -> dict[str, Any]:
    """Run the generator in its own process; ``on_wait`` is called about every second meanwhile."""
    with tempfile.TemporaryDirectory(prefix="openloop-") as folder:
        config_path, result_path = Path(folder) / "config.json", Path(folder) / "result.json"
        config_path.write_text(json.dumps(config), encoding="utf-8")
        command = python_module(
            "benchmarks.overload", f"--generator-config={config_path}", f"--generator-result={result_path}"
        )
        process = subprocess.Popen(command, cwd=ROOT)
        limit = time.monotonic() + config["duration_s"] + config["client_timeout_s"] + 60.0
        try:
            while process.poll() is None:
                if time.monotonic() > limit:
                    raise TimeoutError("the open-loop generator did not finish in time")
                if on_wait is not None:
                    on_wait()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=1.0)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        if process.returncode != 0:
            raise RuntimeError(f"the open-loop generator exited with {process.returncode}")
        result: dict[str, Any] = orjson.loads(result_path.read_bytes())
        return result


# -- server, sustainable rate, sampling ------------------------------------------------------


def start_service(model: str) -> ServerUnderTest:
    command, env = service_command(model)
    return ServerUnderTest(command, "/health/ready", env=env)


def model_info(url: str, model: str) -> dict[str, Any]:
    with httpx.Client(base_url=url, timeout=10.0) as client:
        response = client.get(f"/v1/models/{model}")
        response.raise_for_status()
        info: dict[str, Any] = response.json()
        return info


def sustainable_rate(url: str, model: str, concurrency: int, duration: float) -> dict[str, Any]:
    """Closed-loop ``benchmarks.loadgen`` at ``concurrency``: accepted requests/s, all 200s."""
    command = python_module(
        "benchmarks.loadgen",
        f"--url={url}/v1/models/{model}/predict",
        f"--model={model}",
        f"--concurrency={concurrency}",
        f"--duration={duration}",
        "--warmup=2",
        "--timeout=30",
    )
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=duration + 120)
    if done.returncode != 0:
        raise RuntimeError(f"loadgen exited with {done.returncode}: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["command"] = shlex.join(command)
    return result


SCRAPED = (
    "inference_requests_total",
    "inference_rejected_requests_total",
    "inference_batch_size_sum",
    "inference_batch_size_count",
    "inference_compute_duration_seconds_sum",
    "inference_queue_duration_seconds_sum",
    "inference_queue_duration_seconds_count",
)


def scrape_metrics(url: str) -> dict[str, float]:
    """The service's own counters (``/metrics``) that explain an overload run; {} if unavailable."""
    try:
        with httpx.Client(base_url=url, timeout=15.0) as client:
            text = client.get("/metrics").text
    except httpx.HTTPError:
        return {}
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(SCRAPED):
            continue
        name, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            found[name] = float(value)
    return found


def metrics_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in sorted(after.items()) if v - before.get(k, 0.0)}


def tcp_connections(process: psutil.Process) -> int:
    """Open TCP sockets of a process (client connections of an API server, mostly)."""
    try:
        return len(process.net_connections(kind="tcp"))
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return -1


def cpu_seconds(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
        return round(times.user + times.system, 3)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return float("nan")


def open_fds(process: psutil.Process) -> int:
    try:
        return int(process.num_fds())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return -1


def cpu_percent(points: list[tuple[float, int, int, int, float]]) -> float:
    """Mean CPU use between the first and last sample, in % of one core."""
    elapsed = points[-1][0] - points[0][0]
    return 100.0 * (points[-1][4] - points[0][4]) / elapsed if elapsed > 0 else float("nan")


class ProcessSampler:
    """Samples RSS and open file descriptors of every process under ``pid`` from a thread.

    ``series`` holds ``{"t": seconds since start, "procs": {pid: [rss_bytes, fds]}}`` entries;
    ``roles`` names each pid (main, api server, manager, inference worker, resource tracker).
    """

    def __init__(self, pid: int, port: int, interval: float) -> None:
        self.pid, self.port, self.interval = pid, port, interval
        self.series: list[dict[str, Any]] = []
        self.roles: dict[int, str] = {}
        self.origin = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="process-sampler", daemon=True)

    def __enter__(self) -> ProcessSampler:
        self.origin = time.monotonic()
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
        self.relabel()

    def relabel(self) -> None:
        """``role`` calls every process holding the listening socket an API server; LitServe's
        manager (forked after the socket was bound) holds it too but never has a client connection."""
        tcp_max = {pid: max(p[3] for p in points) for pid, points in self.per_process().items()}
        servers = [pid for pid, name in self.roles.items() if name == "api server"]
        if any(tcp_max.get(pid, 0) > 1 for pid in servers):
            for pid in servers:
                if tcp_max.get(pid, 0) <= 1:
                    self.roles[pid] = "manager"

    def sample(self) -> None:
        procs: dict[int, list[Any]] = {}
        for process in tree(self.pid):
            try:
                rss = process.memory_info().rss
            except psutil.NoSuchProcess:
                continue
            if process.pid not in self.roles:
                self.roles[process.pid] = role(process, self.pid, self.port)
            procs[process.pid] = [rss, open_fds(process), tcp_connections(process), cpu_seconds(process)]
        self.series.append({"t": round(time.monotonic() - self.origin, 2), "procs": procs})

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def label(self, pid: int) -> str:
        return f"{self.roles.get(pid, '?')} ({pid})"

    def per_process(self) -> dict[int, list[tuple[float, int, int, int, float]]]:
        """pid → [(t, rss, fds, tcp connections, cpu seconds), ...]"""
        found: dict[int, list[tuple[float, int, int, int, float]]] = {}
        for entry in self.series:
            for pid, (rss, fds, tcp, cpu) in entry["procs"].items():
                found.setdefault(pid, []).append((entry["t"], rss, fds, tcp, cpu))
        return found

    def rss_summary(self) -> list[dict[str, Any]]:
        rows = []
        for pid, points in sorted(self.per_process().items()):
            rss = [p[1] for p in points]
            fds = [p[2] for p in points]
            rows.append(
                {
                    "pid": pid,
                    "role": self.roles.get(pid, "?"),
                    "rss_start_mib": rss[0] / MIB,
                    "rss_max_mib": max(rss) / MIB,
                    "rss_end_mib": rss[-1] / MIB,
                    "fds_start": fds[0],
                    "fds_max": max(fds),
                    "fds_end": fds[-1],
                    "cpu_percent": cpu_percent(points),
                    "samples": len(points),
                }
            )
        return rows


# -- summaries ----------------------------------------------------------------------------------


def outcome_key(outcome: Any) -> str:
    if isinstance(outcome, int):
        return str(outcome) if outcome in (200, 503, 504) else "other"
    if outcome == "hang":
        return "hang"
    if outcome.startswith("conn:"):
        return "connection error"
    return "other"


def latency_stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "count": len(ordered),
        "p50_ms": percentile(ordered, 0.50),
        "p95_ms": percentile(ordered, 0.95),
        "p99_ms": percentile(ordered, 0.99),
        "max_ms": ordered[-1] if ordered else float("nan"),
    }


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.1f}" if abs(value) < 1e5 else f"{value:.3g}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**MISSED**"


def summarise_overload(
    generated: dict[str, Any], sustainable: dict[str, Any], config: dict[str, Any], settle_s: float
) -> dict[str, Any]:
    samples = generated["samples"]
    counts = Counter(outcome_key(s[3]) for s in samples)
    for key in ("200", "503", "504", "other", "connection error", "hang"):
        counts.setdefault(key, 0)
    ok = [s for s in samples if s[3] == 200]
    duration = config["duration_s"]
    # accepted throughput: 200s whose request was sent after the queue had time to fill
    settled = [s for s in ok if s[0] >= settle_s]
    accepted_rps = len(settled) / (duration - settle_s)
    rate = sustainable["throughput_rps"]
    by_status: dict[str, dict[str, float]] = {}
    for key in ("200", "503", "504"):
        by_status[key] = latency_stats([s[2] for s in samples if outcome_key(s[3]) == key])
    lag = latency_stats([s[1] for s in samples])
    return {
        "counts": dict(counts),
        "other_outcomes": dict(Counter(str(s[3]) for s in samples if outcome_key(s[3]) == "other")),
        "sent": len(samples),
        "scheduled": generated["scheduled"],
        "offered_rps": len(samples) / duration,
        "latency_by_status": by_status,
        "latency_200_from_schedule": latency_stats([s[1] + s[2] for s in ok]),
        "send_lag": lag,
        "accepted_rps": accepted_rps,
        "accepted_rps_all": len(ok) / duration,
        "accepted_vs_sustainable": accepted_rps / rate if rate else float("nan"),
        "settle_s": settle_s,
        "timeline": timeline(samples, duration, 5.0),
    }


def timeline(samples: list[list[Any]], duration: float, window: float) -> list[dict[str, Any]]:
    """Per ``window`` seconds of schedule: counts by outcome and 200 latency percentiles."""
    rows = []
    start = 0.0
    while start < duration - 1e-9:
        end = start + window
        inside = [s for s in samples if start <= s[0] < end]
        ok = sorted(s[2] for s in inside if s[3] == 200)
        counts = Counter(outcome_key(s[3]) for s in inside)
        rows.append(
            {
                "t0": start,
                "t1": min(end, duration),
                "sent": len(inside),
                "ok": counts.get("200", 0),
                "errors": len(inside) - counts.get("200", 0),
                "counts": dict(counts),
                "p50_ms": percentile(ok, 0.50),
                "p95_ms": percentile(ok, 0.95),
                "p99_ms": percentile(ok, 0.99),
                "max_ms": ok[-1] if ok else float("nan"),
            }
        )
        start = end
    return rows


def overload_markdown(result: dict[str, Any]) -> str:
    s = result["summary"]
    cfg = result["config"]
    sus = result["sustainable"]
    counts = s["counts"]
    lines = [
        f"# Overload: {cfg['model']} at {cfg['factor']:g}× the sustainable rate",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Machine: {result['machine']['cpus']} CPUs, load average before the run "
        f"{result['machine']['load_average']}, {result['machine']['time']}.",
        f"Server: `python -m service serve`, model {cfg['model']}: max_batch_size "
        f"{cfg['model_info'].get('max_batch_size')}, workers {cfg['model_info'].get('workers')}, "
        f"max_queue_size {cfg['model_info'].get('max_queue_size')}.",
        "",
        f"> {NOISE_NOTE}",
        "",
        "## Sustainable rate (closed loop)",
        "",
        md_table(
            ["concurrency", "seconds", "req/s", "p50 ms", "p99 ms", "errors"],
            [
                [
                    sus["concurrency"],
                    sus["duration_s"],
                    sus["throughput_rps"],
                    sus["latency_ms"]["p50"],
                    sus["latency_ms"]["p99"],
                    sus["errors"],
                ]
            ],
        ),
        "",
        f"## Open loop: {s['offered_rps']:.1f} req/s offered ({'Poisson' if cfg['poisson'] else 'fixed-interval'} "
        f"arrivals) for {cfg['duration_s']:g} s, X-Request-Timeout {cfg['deadline_s']:g} s, "
        f"client timeout {cfg['client_timeout_s']:g} s",
        "",
        md_table(
            ["sent", "200", "503", "504", "other", "connection errors", "hangs"],
            [
                [
                    s["sent"],
                    counts["200"],
                    counts["503"],
                    counts["504"],
                    counts["other"],
                    counts["connection error"],
                    counts["hang"],
                ]
            ],
        ),
        "",
        "Latency by status (ms, from sending the request to the end of its answer):",
        "",
        md_table(
            ["status", "count", "p50", "p95", "p99", "max"],
            [
                [k, v["count"], v["p50_ms"], v["p95_ms"], v["p99_ms"], v["max_ms"]]
                for k, v in s["latency_by_status"].items()
            ],
        ),
        "",
        f"Client send lag (scheduled → sent): p50 {s['send_lag']['p50_ms']:.1f} ms, "
        f"p99 {s['send_lag']['p99_ms']:.1f} ms, max {s['send_lag']['max_ms']:.1f} ms; "
        f"generator CPU {result['generator']['generator_cpu_percent']:.0f}% of a core, "
        f"peak connections {result['generator']['peak_connections']}.",
        "",
        f"Accepted throughput (200s sent after the first {s['settle_s']:g} s): "
        f"{s['accepted_rps']:.1f} req/s = {100 * s['accepted_vs_sustainable']:.0f}% of the sustainable "
        f"{sus['throughput_rps']:.1f} req/s (over the whole run: {s['accepted_rps_all']:.1f} req/s).",
        "",
        "## What the server counted during the open loop (`/metrics` deltas)",
        "",
        md_table(["metric", "delta"], [[k, v] for k, v in result["server_metrics_delta"].items()]),
        "",
        wasted_line(result),
        "",
        "## Server processes: RSS (MiB), open file descriptors, CPU during the open loop",
        "",
        md_table(
            [
                "process",
                "RSS start",
                "RSS max",
                "RSS end",
                "fds start",
                "fds max",
                "fds end",
                "CPU % of a core",
            ],
            [
                [
                    f"{r['role']} ({r['pid']})",
                    r["rss_start_mib"],
                    r["rss_max_mib"],
                    r["rss_end_mib"],
                    r["fds_start"],
                    r["fds_max"],
                    r["fds_end"],
                    r["cpu_percent"],
                ]
                for r in result["processes"]
            ],
        ),
        "",
        "## Per 5 s window",
        "",
        md_table(
            ["t (s)", "sent", "200", "503", "504", "other", "p50 ms", "p99 ms", "max ms"],
            [
                [
                    f"{w['t0']:.0f}–{w['t1']:.0f}",
                    w["sent"],
                    w["counts"].get("200", 0),
                    w["counts"].get("503", 0),
                    w["counts"].get("504", 0),
                    w["sent"] - sum(w["counts"].get(k, 0) for k in ("200", "503", "504")),
                    w["p50_ms"],
                    w["p99_ms"],
                    w["max_ms"],
                ]
                for w in s["timeline"]
            ],
        ),
        "",
        "## Targets",
        "",
        md_table(
            ["target", "measured", "verdict"],
            [[t["target"], t["measured"], verdict(t["met"])] for t in result["targets"]],
        ),
        "",
    ]
    return "\n".join(lines)


def wasted_line(result: dict[str, Any]) -> str:
    """Inputs the model computed vs 200s the clients got (every request has one input)."""
    model = result["config"]["model"]
    computed = result["server_metrics_delta"].get(f'inference_batch_size_sum{{model="{model}"}}')
    if computed is None:
        return "(no batch-size metric scraped)"
    ok = result["summary"]["counts"]["200"]
    wasted = computed - ok
    share = wasted / computed if computed else float("nan")
    return (
        f"The model computed {computed:.0f} inputs; clients received {ok} answers (200). "
        f"{wasted:.0f} computed inputs ({100 * share:.0f}%) were thrown away: their request had "
        "already been answered 504 by the API server when the forward finished."
    )


def overload_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    s = result["summary"]
    counts = s["counts"]
    lat = s["latency_by_status"]["200"]
    deadline_ms = result["config"]["deadline_s"] * 1000.0
    rss_growth = max(
        (r["rss_max_mib"] / r["rss_start_mib"] for r in result["processes"] if r["rss_start_mib"] > 0),
        default=float("nan"),
    )
    return [
        {
            "target": "only 200/503/504 (no other status)",
            "measured": f"{counts['other']} other",
            "met": counts["other"] == 0,
        },
        {
            "target": "0 connection errors",
            "measured": f"{counts['connection error']}",
            "met": counts["connection error"] == 0,
        },
        {
            "target": "0 hangs (every request answered)",
            "measured": f"{counts['hang']} hangs, {result['generator']['unfinished']} unfinished",
            "met": counts["hang"] == 0 and result["generator"]["unfinished"] == 0,
        },
        {
            "target": "200s within the deadline",
            "measured": f"max {lat['max_ms']:.0f} ms vs {deadline_ms:.0f} ms",
            "met": lat["count"] > 0 and lat["max_ms"] <= deadline_ms,
        },
        {
            "target": "accepted throughput ≥ 90% of sustainable",
            "measured": f"{100 * s['accepted_vs_sustainable']:.0f}%",
            "met": s["accepted_vs_sustainable"] >= 0.9,
        },
        {
            "target": "RSS bounded (max ≤ 1.5× start, every process)",
            "measured": f"worst max/start {rss_growth:.2f}×",
            "met": rss_growth <= 1.5,
        },
    ]


def write_results(out: Path, name: str, result: dict[str, Any], markdown: str) -> None:
    """``NAME.json`` (the summary) and ``NAME.md``; the per-request samples, tens of thousands of
    rows, go to ``NAME.samples.json`` beside them (not committed: see .gitignore)."""
    summary = {k: v for k, v in result.items() if k not in ("samples", "samples_columns")}
    raw = {"columns": result["samples_columns"], "samples": result["samples"]}
    (out / f"{name}.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    (out / f"{name}.samples.json").write_bytes(orjson.dumps(raw))
    (out / f"{name}.md").write_text(markdown, encoding="utf-8")


def print_tables(markdown: str) -> None:
    print(markdown, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.overload", description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of open-loop load")
    parser.add_argument("--model", default="minilm", choices=sorted(OUTPUT_DIM))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--factor", type=float, default=4.0, help="offered load ÷ sustainable rate")
    parser.add_argument("--rate", type=float, default=None, help="sustainable req/s (skip measuring it)")
    parser.add_argument("--sustain-seconds", type=float, default=15.0)
    parser.add_argument("--deadline", type=float, default=5.0, help="X-Request-Timeout, seconds")
    parser.add_argument("--fixed-interval", action="store_true", help="fixed-interval instead of Poisson")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--generator-config", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--generator-result", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def measure_sustainable(
    server: ServerUnderTest, args: argparse.Namespace, info: dict[str, Any]
) -> dict[str, Any]:
    concurrency = int(info.get("max_batch_size") or 32) * int(info.get("workers") or 1)
    if args.rate is not None:
        return {
            "concurrency": None,
            "duration_s": 0,
            "throughput_rps": args.rate,
            "latency_ms": {"p50": float("nan"), "p99": float("nan")},
            "errors": 0,
            "given": True,
        }
    log(f"measuring the sustainable rate: closed loop, concurrency {concurrency}, {args.sustain_seconds:g} s")
    sustainable = sustainable_rate(server.url, args.model, concurrency, args.sustain_seconds)
    log(
        f"sustainable: {sustainable['throughput_rps']:.1f} req/s, p50 {sustainable['latency_ms']['p50']:.0f} ms, "
        f"errors {sustainable['errors']}"
    )
    if sustainable["errors"]:
        log(f"WARNING: the closed-loop run had errors: {sustainable['error_samples']}")
    return sustainable


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.generator_config is not None:
        return generator_main(args.generator_config, args.generator_result)
    command = shlex.join(["python", "-m", "benchmarks.overload", *(sys.argv[1:] if argv is None else argv)])
    print(f"command: {command}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    before = machine()
    server = start_service(args.model)
    with server:
        log(f"service ready on {server.url} in {server.startup_s:.1f} s (pid {server.pid})")
        info = model_info(server.url, args.model)
        sustainable = measure_sustainable(server, args, info)
        rate = args.factor * sustainable["throughput_rps"]
        config = {
            "url": f"{server.url}/v1/models/{args.model}/predict",
            "model": args.model,
            "rate": rate,
            "duration_s": args.duration,
            "deadline_s": args.deadline,
            "client_timeout_s": args.deadline + 1.5,
            "poisson": not args.fixed_interval,
            "seed": args.seed,
            "factor": args.factor,
            "max_connections": 4000,
        }
        log(f"open loop: {rate:.1f} req/s for {args.duration:g} s (deadline {args.deadline:g} s)")
        scraped_before = scrape_metrics(server.url)
        with ProcessSampler(server.pid, server.port, interval=1.0) as sampler:
            generated = run_open_loop(config)
            time.sleep(2.0)  # let the server settle; the last sample shows memory after the load
        server_metrics = metrics_delta(scraped_before, scrape_metrics(server.url))
        alive = server.process is not None and server.process.poll() is None
    summary = summarise_overload(generated, sustainable, config, settle_s=min(5.0, args.duration / 4))
    samples = generated.pop("samples")
    result: dict[str, Any] = {
        "command": command,
        "machine": before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "config": {**config, "model_info": info},
        "server_alive_at_end": alive,
        "startup_s": server.startup_s,
        "sustainable": sustainable,
        "generator": generated,
        "summary": summary,
        "server_metrics_delta": server_metrics,
        "processes": sampler.rss_summary(),
        "rss_series": [
            {"t": e["t"], "rss_mib": {sampler.label(p): round(v[0] / MIB, 1) for p, v in e["procs"].items()}}
            for e in sampler.series
        ],
        "samples_columns": ["scheduled_s", "lag_ms", "latency_ms", "outcome", "connect_ms"],
        "samples": samples,
    }
    result["targets"] = overload_targets(result)
    markdown = overload_markdown(result)
    write_results(args.out, "overload", result, markdown)
    print_tables(markdown)
    log(f"wrote {args.out / 'overload.json'} and {args.out / 'overload.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
