"""The service's own metrics under a varying load, as a picture: ``docs/metrics-under-load.png``.

    .venv/bin/python benchmarks/metrics_plot.py [--seconds 60] [--output docs/metrics-under-load.png]

Starts the reference model with 2 inference workers, drives it through load phases (closed-loop
clients on keep-alive connections; the number of clients and inputs per request change every
phase), scrapes ``/metrics`` every second and plots what a dashboard would show, computed the way
PromQL would from consecutive scrapes: request rate, p50/p95/p99 request latency
(``histogram_quantile`` over bucket increases), queue vs compute p95, mean batch size,
in-flight requests and each worker's RSS.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import math
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # also runnable as a script, not only with -m

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from tests.support import ServerProcess  # noqa: E402

MODEL = "reference"
OUTPUT = ROOT / "docs" / "metrics-under-load.png"
WORKERS = ("0", "1")
REQUESTS = "inference_requests_total"
OK = {"model": MODEL, "code": "200"}


@dataclass(frozen=True)
class Phase:
    share: float  # fraction of the total duration
    clients: int  # concurrent closed-loop clients
    inputs: int  # inputs per request


PHASES = (
    Phase(0.12, 1, 1),
    Phase(0.16, 4, 1),
    Phase(0.16, 16, 2),
    Phase(0.14, 4, 64),
    Phase(0.16, 32, 1),
    Phase(0.12, 2, 8),
    Phase(0.14, 0, 0),  # idle: rates fall to 0, RSS stays
)

Labels = frozenset[tuple[str, str]]


class Load:
    """Closed-loop clients; phase changes take effect on each client's next request."""

    def __init__(self, port: int, clients: int) -> None:
        self.port = port
        self.phase = Phase(0, 0, 0)
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def _client(self, index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        bodies: dict[int, bytes] = {}
        try:
            while not self.stop.is_set():
                phase = self.phase
                if index >= phase.clients:
                    connection.close()  # uvicorn drops keep-alive connections idle for 5 s
                    time.sleep(0.05)
                    continue
                body = bodies.get(phase.inputs)
                if body is None:
                    inputs = [[float((k + j) % 11) / 11 for j in range(16)] for k in range(phase.inputs)]
                    body = bodies[phase.inputs] = json.dumps({"inputs": inputs}).encode()
                try:
                    connection.request(
                        "POST", f"/v1/models/{MODEL}/predict", body, {"content-type": "application/json"}
                    )
                    response = connection.getresponse()
                    response.read()
                    if response.status != 200:
                        self.errors.append(f"HTTP {response.status}")
                except (OSError, http.client.HTTPException) as exc:
                    self.errors.append(repr(exc))
                    connection.close()
                    connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        finally:
            connection.close()


def parse(text: str) -> dict[tuple[str, Labels], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: dict[tuple[str, Labels], float], name: str, **match: str) -> float:
    wanted = set(match.items())
    return sum(value for (sample, labels), value in samples.items() if sample == name and wanted <= labels)


def buckets(samples: dict[tuple[str, Labels], float], name: str) -> dict[float, float]:
    """Cumulative bucket counts of the model's histogram ``name``, summed over other labels, by ``le``."""
    result: dict[float, float] = {}
    for (sample, labels), value in samples.items():
        mapping = dict(labels)
        if sample == f"{name}_bucket" and mapping.get("model") == MODEL:
            bound = float(mapping["le"])
            result[bound] = result.get(bound, 0.0) + value
    return result


def quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float:
    """PromQL's histogram_quantile over the bucket increases between two scrapes."""
    bounds = sorted(after)
    increase = [after[b] - before.get(b, 0.0) for b in bounds]
    count = increase[-1] if increase else 0.0
    if count <= 0:
        return math.nan
    rank = q * count
    lower, below = 0.0, 0.0
    for bound, cumulative in zip(bounds, increase, strict=True):
        if cumulative >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / max(cumulative - below, 1e-12)
        lower, below = bound, cumulative
    return lower


def scrape_loop(server: ServerProcess, load: Load, seconds: float) -> list[tuple[float, int, str]]:
    """(time, clients, scrape text) every second while the phases run."""
    scrapes: list[tuple[float, int, str]] = []
    started = time.monotonic()
    ends = []
    elapsed = 0.0
    for phase in PHASES:
        elapsed += phase.share * seconds
        ends.append(elapsed)
    tick = started
    while True:
        now = time.monotonic() - started
        if now > seconds:
            break
        index = next((i for i, end in enumerate(ends) if now < end), len(PHASES) - 1)
        load.phase = PHASES[index]
        scrapes.append((now, load.phase.clients, server.client.get("/metrics").text))
        tick += 1.0
        time.sleep(max(0.0, tick - time.monotonic()))
    load.phase = Phase(0, 0, 0)
    return scrapes


def series(scrapes: list[tuple[float, int, str]]) -> dict[str, list[float]]:
    """What the dashboard panels show, from each pair of consecutive scrapes."""
    parsed = [(t, clients, parse(text)) for t, clients, text in scrapes]
    out: dict[str, list[float]] = defaultdict(list)
    for (t0, _, before), (t1, clients, after) in itertools.pairwise(parsed):
        dt = t1 - t0
        answered = total(after, REQUESTS, **OK) - total(before, REQUESTS, **OK)
        everything = total(after, REQUESTS, model=MODEL) - total(before, REQUESTS, model=MODEL)
        out["t"].append(t1)
        out["clients"].append(clients)
        out["rate"].append(answered / dt)
        out["errors"].append((everything - answered) / dt)
        request = "inference_request_duration_seconds"
        for q, key in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
            out[key].append(1000 * quantile(q, buckets(before, request), buckets(after, request)))
        for name, key in (("queue", "queue_p95"), ("compute", "compute_p95")):
            metric = f"inference_{name}_duration_seconds"
            out[key].append(1000 * quantile(0.95, buckets(before, metric), buckets(after, metric)))
        forwards = total(after, "inference_batch_size_count") - total(before, "inference_batch_size_count")
        inputs = total(after, "inference_batch_size_sum") - total(before, "inference_batch_size_sum")
        out["batch_mean"].append(inputs / forwards if forwards else math.nan)
        out["in_flight"].append(total(after, "inference_in_flight_requests", model=MODEL))
        for worker in WORKERS:
            for prefix, name in (("rss", "resident"), ("peak", "peak_resident")):
                gauge = f"inference_worker_{name}_memory_bytes"
                out[f"{prefix}{worker}"].append(total(after, gauge, model=MODEL, worker=worker) / 2**20)
    return out


def plot(data: dict[str, list[float]], output: Path, title: str) -> None:
    t = data["t"]
    figure, axes = plt.subplots(3, 2, figsize=(12, 10), sharex=True, dpi=80)
    figure.suptitle(title, fontsize=13)

    def shade(axis: plt.Axes) -> None:
        # load phases in the background: darker = more clients
        most = max(data["clients"]) or 1
        for left, right, clients in zip(t, t[1:], data["clients"][1:], strict=False):
            if clients:
                axis.axvspan(left, right, color="tab:gray", alpha=0.05 + 0.2 * clients / most, lw=0)

    axis = axes[0][0]
    shade(axis)
    axis.plot(t, data["rate"], color="tab:blue", label="200 answers")
    axis.plot(t, data["errors"], color="tab:red", label="other codes")
    axis.set_title("Request rate (req/s)")
    twin = axis.twinx()
    twin.step(t, data["clients"], where="pre", color="black", lw=1, ls=":", label="clients")
    twin.set_ylabel("clients")
    lines = axis.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    axis.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left", fontsize=8)

    axis = axes[0][1]
    shade(axis)
    for key, color in (("p50", "tab:green"), ("p95", "tab:orange"), ("p99", "tab:red")):
        axis.plot(t, data[key], color=color, label=key)
    axis.set_title("Request latency (ms)")
    axis.set_yscale("log")
    axis.legend(loc="upper left", fontsize=8)

    axis = axes[1][0]
    shade(axis)
    axis.plot(t, data["queue_p95"], color="tab:purple", label="queue p95")
    axis.plot(t, data["compute_p95"], color="tab:brown", label="compute p95 (one forward)")
    axis.set_title("Queue vs compute p95 (ms)")
    axis.set_yscale("log")
    axis.legend(loc="upper left", fontsize=8)

    axis = axes[1][1]
    shade(axis)
    axis.plot(t, data["batch_mean"], color="tab:cyan", marker=".", ms=3)
    axis.set_title("Mean batch size (inputs per forward; max 64)")
    axis.set_ylim(bottom=0)

    axis = axes[2][0]
    shade(axis)
    axis.step(t, data["in_flight"], where="pre", color="tab:olive")
    axis.set_title("In-flight requests (sampled at each scrape)")
    axis.set_ylim(bottom=0)
    axis.set_xlabel("seconds")

    axis = axes[2][1]
    shade(axis)
    for worker, color in zip(WORKERS, ("tab:blue", "tab:orange"), strict=True):
        axis.plot(t, data[f"rss{worker}"], color=color, label=f"worker {worker} RSS")
        axis.plot(t, data[f"peak{worker}"], color=color, ls="--", lw=1, label=f"worker {worker} peak")
    axis.set_title("Worker resident memory (MiB)")
    axis.legend(loc="lower right", fontsize=8)
    axis.set_xlabel("seconds")

    for row in axes:
        for axis in row:
            axis.grid(True, alpha=0.3)
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    env = {"SERVICE_MODELS__REFERENCE__WORKERS": "2", "SERVICE_LOG_LEVEL": "warning"}
    with ServerProcess(serve=[MODEL], env=env) as server:
        with Load(server.port, max(phase.clients for phase in PHASES)) as load:
            scrapes = scrape_loop(server, load, args.seconds)
        errors = load.errors
    data = series(scrapes)
    phases = ", ".join(f"{p.clients}×{p.inputs}" if p.clients else "idle" for p in PHASES)
    plot(data, args.output, f"Reference model, 2 workers: load phases (clients × inputs/request): {phases}")
    size = args.output.stat().st_size
    print(
        f"wrote {args.output} ({size / 1024:.0f} KB); {len(scrapes)} scrapes, {len(errors)} failed requests"
    )
    for error in sorted(set(errors)):
        print(f"  {errors.count(error)} × {error}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
