"""CPU seconds per request, by process of the service's tree: what the transport costs.

    python -m benchmarks.cpu_per_request                        # minilm and reference, c=1 and c=32
    python -m benchmarks.cpu_per_request --models reference --requests 3000 --profile /tmp/prof
    python -m benchmarks.cpu_per_request --env SERVICE_FAST_QUEUE=true --out /tmp/fast.json

For each model: start ``python -m service serve`` with its default settings serving that model
alone, warm it up, then for each concurrency send exactly ``--requests`` requests (one short
input each, every answer checked) and read the user+system CPU time of every process of the
tree (psutil ``cpu_times``, all its threads; 10 ms ticks, so use enough requests) before
and after. The result is
the CPU each process spent per request, in ms, by role: main (the launcher), manager
(LitServe's multiprocessing Manager, the broker of its queues), api server(s), inference
worker(s), resource tracker. The load generator's own CPU per request is given for scale.

``--profile DIR`` then repeats each load under ``py-spy record --subprocesses`` attached to
the launcher (a separate pass, so the figures above are not skewed by sampling) and writes
one ``<model>-c<N>.<ext>`` per point (speedscope JSON by default: open it at speedscope.app
or in any speedscope viewer; ``--profile-format flamegraph`` for an SVG).

Writes JSON (``--out``, default ``benchmarks/results/cpu_per_request.json``) and a Markdown
table next to it; both carry the date, the machine and the environment variables given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.processes import cpu_seconds, role, service_command, tree
from benchmarks.run import loadgen_command, run_json
from tests.support import ROOT, ServerUnderTest

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "cpu_per_request.json"


def roles(pid: int, port: int) -> dict[int, str]:
    return {process.pid: role(process, pid, port) for process in tree(pid)}


def drive(url: str, model: str, concurrency: int, requests: int, timeout: float = 30.0) -> dict[str, Any]:
    return run_json(
        loadgen_command(url, model, concurrency, 0.0, 0.0, timeout=timeout, requests=requests),
        timeout=600,
    )


def point(server: ServerUnderTest, url: str, model: str, concurrency: int, requests: int) -> dict[str, Any]:
    drive(url, model, concurrency, max(concurrency * 4, 50))  # warm: shapes, connections
    who = roles(server.pid, server.port)
    before, started = cpu_seconds(server.pid), time.monotonic()
    load = drive(url, model, concurrency, requests)
    after, elapsed = cpu_seconds(server.pid), time.monotonic() - started
    done = load["requests"]
    processes = []
    for pid, total in sorted(after.items()):
        used = total - before.get(pid, 0.0)
        processes.append(
            {
                "pid": pid,
                "role": who.get(pid) or role(psutil.Process(pid), server.pid, server.port),
                "cpu_s": used,
                "cpu_ms_per_request": 1000.0 * used / done if done else float("nan"),
                "cores_busy": used / elapsed,
            }
        )
    total = sum(p["cpu_s"] for p in processes)
    return {
        "concurrency": concurrency,
        "requests": done,
        "errors": load["errors"],
        "error_samples": load["error_samples"],
        "elapsed_s": elapsed,
        "throughput_rps": load["throughput_rps"],
        "p50_ms": load["latency_ms"]["p50"],
        "processes": processes,
        "total_cpu_ms_per_request": 1000.0 * total / done if done else float("nan"),
        "loadgen_cpu_ms_per_request": 10.0 * load["loadgen_cpu_percent"] * load["duration_s"] / done
        if done
        else float("nan"),
    }


def profile(
    server: ServerUnderTest, url: str, model: str, concurrency: int, requests: int, path: Path, fmt: str
) -> Path:
    """The same load under py-spy, attached to the launcher and all its subprocesses."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    path.parent.mkdir(parents=True, exist_ok=True)
    command = [spy, "record", "--subprocesses", "--nonblocking", f"--pid={server.pid}", f"--output={path}"]
    command.append(f"--format={fmt}")
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as recorder:
        try:
            time.sleep(1.0)  # py-spy attaches to every process of the tree
            drive(url, model, concurrency, requests)
        finally:
            recorder.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            _, errors = recorder.communicate(timeout=120)
    if not path.is_file():
        raise RuntimeError(f"py-spy wrote no profile: {errors.decode(errors='replace')[-1000:]}")
    return path


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        "# CPU per request, by process",
        "",
        f"{meta['date']} · {meta['machine']} · {meta['cores']} cores · load average at start "
        f"{', '.join(f'{x:.2f}' for x in meta['load_average'])} · service default settings"
        + (f" with {', '.join(f'`{k}={v}`' for k, v in meta['env'].items())}" if meta["env"] else ""),
        "",
        f"{meta['requests']} requests per point, one short input each (every answer checked); CPU = user + "
        "system time of each process over the point (psutil), divided by the requests answered.",
        "",
        "| model | concurrency | req/s | p50 ms | errors | process | CPU ms / request | cores busy |",
        "|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for model, points in result["models"].items():
        for row in points:
            head = (
                f"| {model} | {row['concurrency']} | {row['throughput_rps']:.0f} | "
                f"{row['p50_ms']:.2f} | {row['errors']} |"
            )
            for process in sorted(row["processes"], key=lambda p: -p["cpu_s"]):
                lines.append(
                    f"{head} {process['role']} | {process['cpu_ms_per_request']:.3f} | "
                    f"{process['cores_busy']:.2f} |"
                )
            lines.append(f"{head} **all server processes** | **{row['total_cpu_ms_per_request']:.3f}** | |")
            lines.append(f"{head} (load generator) | {row['loadgen_cpu_ms_per_request']:.3f} | |")
    if result.get("profiles"):
        lines += ["", "Profiles (py-spy, separate pass): " + ", ".join(f"`{p}`" for p in result["profiles"])]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.cpu_per_request", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--models", default="minilm,reference")
    parser.add_argument("--concurrencies", default="1,32")
    parser.add_argument("--requests", type=int, default=1000, help="requests per point")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="for the service")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="also record py-spy profiles here")
    parser.add_argument("--profile-format", default="speedscope", choices=["speedscope", "flamegraph", "raw"])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    extra = dict(item.split("=", 1) for item in args.env)
    concurrencies = [int(c) for c in args.concurrencies.split(",")]
    result: dict[str, Any] = {
        "meta": {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": platform.platform(),
            "cores": os.cpu_count(),
            "load_average": os.getloadavg(),
            "requests": args.requests,
            "env": extra,
        },
        "models": {},
        "profiles": [],
    }
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop the server on the way out
    suffix = {"speedscope": "speedscope.json", "flamegraph": "svg", "raw": "txt"}[args.profile_format]
    for model in args.models.split(","):
        command, env = service_command(model)
        with ServerUnderTest(command, "/health/ready", env={**env, **extra}) as server:
            url = f"{server.url}/v1/models/{model}/predict"
            rows = []
            for concurrency in concurrencies:
                rows.append(point(server, url, model, concurrency, args.requests))
                busiest = ", ".join(
                    f"{p['role']} {p['cpu_ms_per_request']:.2f}"
                    for p in sorted(rows[-1]["processes"], key=lambda p: -p["cpu_s"])
                )
                print(
                    f"{model} c={concurrency}: {rows[-1]['throughput_rps']:.0f} req/s, "
                    f"{rows[-1]['total_cpu_ms_per_request']:.2f} CPU ms/request ({busiest}), "
                    f"errors {rows[-1]['errors']}",
                    file=sys.stderr,
                    flush=True,
                )
            result["models"][model] = rows
            if args.profile:
                for concurrency in concurrencies:
                    path = args.profile / f"{model}-c{concurrency}.{suffix}"
                    count = max(args.requests, 2000)  # py-spy samples 100 times a second
                    profile(server, url, model, concurrency, count, path, args.profile_format)
                    result["profiles"].append(str(path))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    args.out.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
