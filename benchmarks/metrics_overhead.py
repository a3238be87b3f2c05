"""What the metrics cost: throughput of the reference model with metrics on and off.

    .venv/bin/python benchmarks/metrics_overhead.py [--pairs 3] [--duration 15] [--concurrency 8]

Each run starts a fresh server (``SERVICE_METRICS=true|false``; false turns every metric into a
no-op) and loads it with ``wrk`` (``apt-get install wrk``): ``--concurrency`` keep-alive connections
posting one 16-float input each, a short warm-up, then ``--duration`` seconds measured. Runs
alternate on/off in ABBA order so that drift on a shared machine falls on both sides; the result is
the ratio of the median throughputs. Writes ``benchmarks/results/metrics_overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # also runnable as a script, not only with -m

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from tests.support import ServerProcess  # noqa: E402

MODEL = "reference"
RESULT = ROOT / "benchmarks" / "results" / "metrics_overhead.json"

LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"inputs": [[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6]]}'

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\nRESULT {"requests": %d, "duration_us": %d, "non_2xx": %d, "socket_errors": %d, '
    .. '"p50_ms": %.3f, "p99_ms": %.3f}\\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


def wrk(url: str, script: Path, concurrency: int, seconds: float) -> dict[str, Any]:
    command = [
        "wrk",
        "--threads",
        str(min(2, concurrency)),
        "--connections",
        str(concurrency),
        "--duration",
        f"{seconds:g}s",
        "--timeout",
        "10s",
        "--script",
        str(script),
        url,
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    line = next(line for line in output.splitlines() if line.startswith("RESULT "))
    result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def counted_requests(server: ServerProcess) -> float:
    """inference_requests_total{code="200"} of the model: 0 when metrics are off."""
    text = server.client.get("/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "inference_requests_total"
        and sample.labels.get("model") == MODEL
        and sample.labels.get("code") == "200"
    )


def one_run(metrics: bool, args: argparse.Namespace, script: Path) -> dict[str, Any]:
    env = {"SERVICE_METRICS": "true" if metrics else "false", "SERVICE_LOG_LEVEL": "warning"}
    with ServerProcess(serve=[MODEL], env=env) as server:
        url = f"{server.url}/v1/models/{MODEL}/predict"
        warm = wrk(url, script, args.concurrency, args.warmup)
        result = wrk(url, script, args.concurrency, args.duration)
        result["metrics"] = metrics
        result["counted_by_metrics"] = counted_requests(server)
        result["sent"] = warm["requests"] + result["requests"]
    if result["non_2xx"] or result["socket_errors"]:
        raise SystemExit(f"errors during the run: {result}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=3, help="on/off pairs (default 3)")
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each run")
    parser.add_argument("--concurrency", type=int, default=8, help="keep-alive connections")
    parser.add_argument("--output", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")

    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="metrics-overhead-") as folder:
        script = Path(folder) / "post.lua"
        script.write_text(LUA, encoding="utf-8")
        for pair in range(args.pairs):
            order = (True, False) if pair % 2 == 0 else (False, True)  # ABBA: drift hits both sides
            for metrics in order:
                result = one_run(metrics, args, script)
                runs.append(result)
                state = "on " if metrics else "off"
                print(
                    f"pair {pair + 1} metrics {state}: {result['rps']:8.1f} req/s  "
                    f"p50 {result['p50_ms']:.2f} ms  p99 {result['p99_ms']:.2f} ms  "
                    f"(counted by metrics: {result['counted_by_metrics']:.0f}, wrk completed {result['sent']})",
                    flush=True,
                )

    on = [run["rps"] for run in runs if run["metrics"]]
    off = [run["rps"] for run in runs if not run["metrics"]]
    ratio = statistics.median(on) / statistics.median(off)
    pairs = [
        a["rps"] / b["rps"] if a["metrics"] else b["rps"] / a["rps"]
        for a, b in zip(runs[::2], runs[1::2], strict=True)
    ]
    summary = {
        "benchmark": "metrics_overhead",
        "model": MODEL,
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "load_generator": "wrk, keep-alive, one 16-float input per request",
        "machine": {"cpus": len(os.sched_getaffinity(0)), "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "median_rps_metrics_on": round(statistics.median(on), 1),
        "median_rps_metrics_off": round(statistics.median(off), 1),
        "ratio_on_to_off": round(ratio, 4),
        "cost_percent": round((1 - ratio) * 100, 2),
        "pair_ratios": [round(value, 4) for value in pairs],
        "runs": runs,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(
        f"median req/s: metrics on {summary['median_rps_metrics_on']}, off {summary['median_rps_metrics_off']}; "
        f"on/off = {ratio:.4f} (cost {summary['cost_percent']}%); pair ratios {summary['pair_ratios']}"
    )
    print(f"wrote {args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
