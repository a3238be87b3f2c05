"""The huggingface runtime's backends on this machine, in one run (a quiet machine, nothing else
running):

    python -m benchmarks.backends [--model minilm] [--duration 6] [--out benchmarks/results]

1. ``python -m service tune MODEL`` into a fresh cache folder: every backend's gate figures, the
   timings and the decision ``backend: auto`` serves.
2. Each backend in-process (``benchmarks.inprocess limit --backend``, a fresh process each, every
   core): one short input (ms per forward), batches of 32 short inputs, mixed lengths in
   length-bucketed batches of 32 (inputs/s); and short inputs in the service's worker layout (two
   1-thread processes side by side, batches of 16).
3. The service with ``backend: auto`` and with ``backend: torch`` (today's): short inputs at 32
   connections, one client, mixed lengths at 32 connections.
4. minilm only: Infinity 0.0.78 with ``--engine optimum`` (its ONNX Runtime engine, the same
   model files with their ONNX graph, its own venv: ``benchmarks/infinity.py``), the same three loads
   on its OpenAI route. ``--no-infinity`` skips it.

Targets (against the fastest *gated* in-process path, measured in this run): short at 32
connections ≥ 0.80 of its inputs/s and ≥ 2× the torch service; mixed ≥ 0.80 of its bucketed rate;
one client's p50 ≤ its batch-1 forward + 1.5 ms; short at 32 connections ≥ 1.5× Infinity's. Writes ``backends_<model>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from service.worker.backends import BACKENDS
from tests.support import ServerUnderTest

INFINITY = "Infinity 0.0.78 --engine optimum"


def run_json(command: list[str]) -> dict[str, Any]:
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=1200)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def inprocess(model: str, backend: str, cache: Path, duration: float) -> dict[str, float]:
    base = [sys.executable, "-m", "benchmarks.inprocess", "limit", "--model", model, "--backend", backend]
    base += ["--cache-dir", str(cache), "--duration", str(duration)]

    def point(extra: list[str], field: str = "throughput_rps") -> float:
        reps = run_json(base + extra)["points"][0]["reps"][0]
        return float(reps["latency_ms"]["p50"] if field == "p50" else reps[field])

    return {
        "batch1_ms": point(["--batches", "1"], "p50"),
        "short32": point(["--batches", "32"]),
        "mixed32": point(["--batches", "32", "--workload", "mixed", "--bucketed"]),
        "layout16": point(["--batches", "16", "--threads", "1", "--processes", "2"]),
    }


def loads(url: str, model: str, duration: float, api: str = "predict") -> dict[str, float]:
    """Short inputs at 32 connections, one client, mixed lengths at 32 connections."""

    def load(concurrency: int, workload: str) -> dict[str, Any]:
        command = [sys.executable, "-m", "benchmarks.loadgen", "--url", url, "--model", model, "--api", api]
        command += ["--concurrency", str(concurrency), "--duration", str(duration), "--warmup", "2"]
        return run_json([*command, "--workload", workload])

    short, one, mixed = load(32, "short"), load(1, "short"), load(32, "mixed")
    return {
        "short_c32": float(short["throughput_rps"]),
        "c1_p50_ms": float(one["latency_ms"]["p50"]),
        "mixed_c32": float(mixed["throughput_rps"]),
        "errors": float(short["errors"] + one["errors"] + mixed["errors"]),
    }


def infinity_optimum(duration: float) -> dict[str, float]:
    from benchmarks import infinity

    infinity.ensure_venv(engine="optimum")
    command = infinity.command("{port}", "optimum")
    with ServerUnderTest(command, "/health", env=infinity.environment(), ready_timeout=300) as server:
        return loads(f"{server.url}/embeddings", "minilm", duration, api="openai")


def served(model: str, backend: str, cache: Path, duration: float) -> dict[str, float]:
    env = {
        "SERVICE_SERVE": json.dumps([model]),
        "SERVICE_CACHE_DIR": str(cache),
        f"SERVICE_MODELS__{model.upper()}__BACKEND": backend,
    }
    command = [sys.executable, "-m", "service", "serve"]
    with ServerUnderTest(command, "/health/ready", env=env) as server:
        return loads(f"{server.url}/v1/models/{model}/predict", model, duration)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.backends", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per measurement")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--no-infinity", action="store_true", help="skip Infinity (and its install)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="backends-cache-") as folder:
        cache = Path(folder)
        subprocess.run(
            [sys.executable, "-m", "service", "tune", args.model],
            check=True,
            env={**__import__("os").environ, "SERVICE_CACHE_DIR": str(cache)},
            timeout=1200,
        )
        decision_file = next((cache / "decisions").glob(f"{args.model}-*.json"))
        decision = json.loads(decision_file.read_text())
        paths = {backend: inprocess(args.model, backend, cache, args.duration / 2) for backend in BACKENDS}
        services = {
            f"backend: {backend}": served(args.model, backend, cache, args.duration)
            for backend in ("auto", "torch")
        }
    if args.model == "minilm" and not args.no_infinity:
        services[INFINITY] = infinity_optimum(args.duration)
    gated = [backend for backend in BACKENDS if decision["backends"][backend]["passed"]]
    best_short = max(max(paths[b]["short32"], paths[b]["layout16"]) for b in gated)
    best_mixed = max(paths[b]["mixed32"] for b in gated)
    best_one = min(paths[b]["batch1_ms"] for b in gated)
    auto, torch_service = services["backend: auto"], services["backend: torch"]
    targets = [
        ("short c=32 ÷ fastest gated in-process short path ≥ 0.80", auto["short_c32"] / best_short, 0.80),
        ("short c=32 ÷ the torch service (today's) ≥ 2", auto["short_c32"] / torch_service["short_c32"], 2.0),
        ("mixed c=32 ÷ fastest gated length-bucketed path ≥ 0.80", auto["mixed_c32"] / best_mixed, 0.80),
        ("one client p50 − fastest gated batch-1 forward ≤ 1.5 ms", auto["c1_p50_ms"] - best_one, -1.5),
    ]
    if INFINITY in services:
        ratio = auto["short_c32"] / services[INFINITY]["short_c32"]
        targets.append((f"short c=32 ÷ {INFINITY} ≥ 1.5", ratio, 1.5))
    result = {
        "model": args.model,
        "decision": decision,
        "inprocess": paths,
        "served": services,
        "targets": targets,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"backends_{args.model}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Backends of {args.model} on this machine (python -m benchmarks.backends --model {args.model})",
        "",
        f"Machine: {decision['machine']['cpu']}, {decision['machine']['cores']} cores; "
        f"decision: lone {decision['choice']['lone']}, batch {decision['choice']['batch']}.",
        "",
        "| backend | gate | batch 1 ms | 32 short, inputs/s | 2 × 1 thread, batches of 16 | 32 mixed, bucketed |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for backend in BACKENDS:
        record, path = decision["backends"][backend], paths[backend]
        figures = ", ".join(f"{key} {value:.5g}" for key, value in record["figures"].items()) or "reference"
        verdict = figures if record["passed"] else f"**refused**: {record['refused']}"
        lines.append(
            f"| {backend} | {verdict} | {path['batch1_ms']:.2f} | {path['short32']:.0f} "
            f"| {path['layout16']:.0f} | {path['mixed32']:.0f} |"
        )
    lines += [
        "",
        "| served | short c=32 inputs/s | one client p50 ms | mixed c=32 inputs/s | errors |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, row in services.items():
        lines.append(
            f"| {name} | {row['short_c32']:.0f} | {row['c1_p50_ms']:.2f} | {row['mixed_c32']:.0f} "
            f"| {row['errors']:.0f} |"
        )
    lines += ["", "| target | measured | verdict |", "| --- | --- | --- |"]
    for name, value, goal in targets:
        met = value <= -goal if goal < 0 else value >= goal
        lines.append(f"| {name} | {value:.2f} | {'met' if met else '**not met**'} |")
    (args.out / f"backends_{args.model}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
