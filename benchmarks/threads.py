"""Which worker layout and threading should the service use? Alternating runs in one sitting.

    python -m benchmarks.threads                      # 3 rounds, every variant, minilm
    python -m benchmarks.threads --rounds 1 --duration 2 --out /tmp/threads   # a smoke run
    python -m benchmarks.threads --variant "interop1:SERVICE_TORCH_INTEROP_THREADS=1"

Each round starts the service once per variant (in a rotated order, so no variant always
runs first or last after a cold start), each time with its default settings plus the
variant's environment variables, and measures, one after the other: one short sentence per
request at 32 connections, mixed lengths at 32 connections, and one client. The table is the
median over rounds (min–max beside it). Variants, on this machine's N cores:

- ``default``: the service as shipped (whatever its default is at the time);
- ``1w-cores``: one minilm worker with N threads and batches of 32 (the default before two
  workers);
- ``1w-cores+passive``: the same with ``OMP_WAIT_POLICY=PASSIVE`` (OpenMP threads sleep
  instead of spinning when out of work, leaving the core to the API server);
- ``1w-cores-api``: one worker with N − API servers threads, batches of 32 (the first default);
- ``1w-cores+interop1``: one worker, N threads and one inter-op thread, when the service has a
  setting for inter-op threads (a ``torch_interop_threads`` field); otherwise skipped;
- ``fixed-share``: the default layout with ``SERVICE_TORCH_THREADS`` = N ÷ workers: no worker
  takes every core while it computes alone.

Writes ``threads.json`` and ``threads.md`` under ``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.processes import service_command
from benchmarks.run import loadgen
from tests.support import ROOT, ServerUnderTest

DEFAULT_OUT = ROOT / "benchmarks" / "results"
MODEL = "minilm"
# (label, workload, concurrency)
LOADS = (("short c=32", "short", 32), ("mixed c=32", "mixed", 32), ("short c=1", "short", 1))


def default_variants() -> dict[str, dict[str, str]]:
    from service.core.repository import ModelRepository
    from service.settings import Settings

    cores = os.cpu_count() or 1
    api_servers = Settings.model_fields["num_api_servers"].default
    one_worker = {"SERVICE_MODELS__MINILM__WORKERS": "1", "SERVICE_MODELS__MINILM__MAX_BATCH_SIZE": "32"}
    workers = ModelRepository().get("minilm").spec.workers
    variants: dict[str, dict[str, str]] = {
        "default": {},
        "1w-cores": {**one_worker},
        "1w-cores+passive": {**one_worker, "OMP_WAIT_POLICY": "PASSIVE"},
        "1w-cores-api": {**one_worker, "SERVICE_TORCH_THREADS": str(max(1, cores - api_servers))},
        "fixed-share": {"SERVICE_TORCH_THREADS": str(max(1, cores // workers))},
    }
    interop = [name for name in Settings.model_fields if "interop" in name]
    if interop:
        variants["1w-cores+interop1"] = {**one_worker, f"SERVICE_{interop[0].upper()}": "1"}
    return variants


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, assignments = text.partition(":")
    env = dict(item.split("=", 1) for item in assignments.split(",") if item)
    return name, env


def one_run(
    env: dict[str, str], duration: float, mixed_duration: float, warmup: float, timeout: float
) -> dict[str, Any]:
    command, service_env = service_command(MODEL)
    results: dict[str, Any] = {}
    with ServerUnderTest(command, "/health/ready", env={**service_env, **env}) as server:
        url = f"{server.url}/v1/models/{MODEL}/predict"
        loadgen(url, MODEL, 8, 1.0, 0.0, timeout=timeout)  # first requests: lazy imports, shapes
        for label, workload, concurrency in LOADS:
            # answers to mixed lengths come in waves of a batch: a longer window, a longer warm-up
            seconds, before = (mixed_duration, 3 * warmup) if workload == "mixed" else (duration, warmup)
            found = loadgen(url, MODEL, concurrency, seconds, before, workload, timeout=timeout)
            results[label] = {
                "throughput_rps": found["throughput_rps"],
                "p50_ms": found["latency_ms"]["p50"],
                "p99_ms": found["latency_ms"]["p99"],
                "errors": found["errors"],
                "timeouts": found["timeouts"],
            }
    return results


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for label, *_ in LOADS:
        rows = [run[label] for run in runs]
        rps = [row["throughput_rps"] for row in rows]
        table[label] = {
            "throughput_rps": statistics.median(rps),
            "throughput_min": min(rps),
            "throughput_max": max(rps),
            "p50_ms": statistics.median(row["p50_ms"] for row in rows),
            "p99_ms": statistics.median(row["p99_ms"] for row in rows),
            "errors": sum(row["errors"] for row in rows),
            "timeouts": sum(row["timeouts"] for row in rows),
        }
    return table


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        "# Worker layout and threading, alternating runs",
        "",
        f"{meta['date']} · {meta['machine']} · {meta['cores']} cores · load average at start "
        f"{', '.join(f'{x:.2f}' for x in meta['load_average'])} · {MODEL}, service defaults plus the "
        f"variant's environment · {meta['rounds']} rounds × {meta['duration']:g} s per load "
        f"({meta['mixed_duration']:g} s for mixed; after {meta['warmup']:g} s of warm-up, 3× for mixed), variants in rotated order; medians over rounds, "
        "min–max in brackets.",
        "",
        "| variant | environment | "
        + " | ".join(f"{label} req/s | {label} p50 ms" for label, *_ in LOADS)
        + " | errors (timeouts) |",
        "|---|---|" + "---:|---:|" * len(LOADS) + "---:|",
    ]
    for name, entry in result["variants"].items():
        table = entry["summary"]
        env = ", ".join(f"`{k}={v}`" for k, v in entry["env"].items()) or "(none)"
        cells = " | ".join(
            f"{table[label]['throughput_rps']:.0f} ({table[label]['throughput_min']:.0f}–"
            f"{table[label]['throughput_max']:.0f}) | {table[label]['p50_ms']:.2f}"
            for label, *_ in LOADS
        )
        errors = sum(table[label]["errors"] for label, *_ in LOADS)
        timeouts = sum(table[label]["timeouts"] for label, *_ in LOADS)
        lines.append(f"| {name} | {env} | {cells} | {errors} ({timeouts}) |")
    if result.get("skipped"):
        lines += ["", f"Skipped: {result['skipped']}"]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.threads", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per load")
    parser.add_argument("--mixed-duration", type=float, default=10.0, help="measured seconds, mixed load")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=10.0, help="client timeout per request")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:K=V[,K=V]",
        help="an extra variant (repeatable)",
    )
    parser.add_argument("--only", help="comma-separated variant names to run (default: all)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    variants = default_variants()
    variants.update(parse_variant(text) for text in args.variant)
    if args.only:
        variants = {name: env for name, env in variants.items() if name in args.only.split(",")}
    names = list(variants)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    started = time.monotonic()
    for round_index in range(args.rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            runs[name].append(
                one_run(variants[name], args.duration, args.mixed_duration, args.warmup, args.timeout)
            )
            row = runs[name][-1]
            print(
                f"round {round_index + 1} {name}: "
                + ", ".join(f"{label} {row[label]['throughput_rps']:.0f} req/s" for label, *_ in LOADS),
                file=sys.stderr,
                flush=True,
            )
    result = {
        "meta": {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": platform.platform(),
            "cores": os.cpu_count(),
            "load_average": os.getloadavg(),
            "rounds": args.rounds,
            "duration": args.duration,
            "mixed_duration": args.mixed_duration,
            "warmup": args.warmup,
            "client_timeout": args.timeout,
            "total_s": time.monotonic() - started,
        },
        "variants": {
            name: {"env": variants[name], "summary": summarise(runs[name]), "runs": runs[name]}
            for name in names
        },
        "skipped": None
        if any("INTEROP" in key for env in variants.values() for key in env)
        else "inter-op threads: the service has no setting for them",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "threads.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (args.out / "threads.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
