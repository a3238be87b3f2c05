"""Rerank served against its in-process limit, in one run (a quiet machine, nothing else running).

    python -m benchmarks.rerank [--duration 15] [--out benchmarks/results]

For the bundled reranker (``models/reranker``), ``short`` pairs (a 6-word query, a 10-word
document) and ``mixed`` ones (the same documents as minilm's mixed workload: 10% ~256-token
paragraphs): the in-process limit on all cores (``benchmarks.inprocess limit``: the model's
forward through an ``InferenceSession``, batches of 16 consecutive pairs; for ``mixed`` each batch
sorted by tokens and cut under ``max_batch_tokens``), then the service (``python -m service
serve``, the model's own model.yaml) under 32 closed-loop connections, one pair per request on
the native route (``benchmarks.loadgen``). The limit is measured before and after the service
and averaged, both as one process with every thread and in the service's worker layout (two
1-thread processes side by side, summed). Targets: short pairs ≥ 0.85 of the in-process
cross-encoder forward (one process, every thread) and, reported beside it, of the faster worker
layout; mixed ≥ 0.75 of the length-bucketed limit (the faster of the two). ``make bench`` runs
it. Writes ``rerank.json`` and ``rerank.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support import ServerUnderTest

MODEL = "reranker"
BATCH = 16


def run_json(command: list[str]) -> dict[str, Any]:
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def limit(workload: str, duration: float, layout: bool = False) -> float:
    """pairs/s on all cores: one process with every thread, or (``layout``) the service's worker
    layout, two 1-thread processes side by side, summed."""
    command = [sys.executable, "-m", "benchmarks.inprocess", "limit", "--model", MODEL]
    command += ["--workload", workload, "--batches", str(BATCH), "--duration", str(duration)]
    if layout:
        command += ["--threads", "1", "--processes", "2"]
    if workload == "mixed":
        command.append("--bucketed")
    point = run_json(command)["points"][0]["reps"][0]
    return float(point["throughput_rps"])


def served(workload: str, duration: float) -> dict[str, Any]:
    command = [sys.executable, "-m", "service", "serve"]
    with ServerUnderTest(command, "/health/ready", env={"SERVICE_SERVE": json.dumps([MODEL])}) as server:
        load = [
            sys.executable,
            "-m",
            "benchmarks.loadgen",
            "--url",
            f"{server.url}/v1/models/{MODEL}/predict",
        ]
        load += ["--model", MODEL, "--concurrency", "32", "--duration", str(duration), "--warmup", "3"]
        load += ["--workload", workload]
        return run_json(load)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rerank", description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per measurement")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    rows = []
    for workload in ("short", "mixed"):
        before = limit(workload, args.duration / 3)
        layout_before = limit(workload, args.duration / 3, layout=True)
        result = served(workload, args.duration)
        after = limit(workload, args.duration / 3)
        layout_after = limit(workload, args.duration / 3, layout=True)
        forward, side_by_side = (before + after) / 2, (layout_before + layout_after) / 2
        baseline = max(forward, side_by_side)  # the faster limit
        rows.append(
            {
                "workload": workload,
                "inprocess_pairs_per_s": [round(before, 1), round(after, 1)],
                "inprocess_layout_pairs_per_s": [round(layout_before, 1), round(layout_after, 1)],
                "served_pairs_per_s": round(result["throughput_rps"], 1),
                "ratio": round(result["throughput_rps"] / baseline, 3),
                "ratio_to_forward": round(result["throughput_rps"] / forward, 3),
                "p50_ms": round(result["latency_ms"]["p50"], 1),
                "p99_ms": round(result["latency_ms"]["p99"], 1),
                "errors": result["errors"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rerank.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [
        "# Rerank served vs in-process (python -m benchmarks.rerank)",
        "",
        "| workload | in-process, 1 process × 2 threads, pairs/s (before, after) | in-process, 2 processes × 1 thread | served at 32 connections, pairs/s | ratio to the faster limit | p50 ms | p99 ms | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        before, after = row["inprocess_pairs_per_s"]
        layout_before, layout_after = row["inprocess_layout_pairs_per_s"]
        lines.append(
            f"| {row['workload']} | {before}, {after} | {layout_before}, {layout_after} "
            f"| {row['served_pairs_per_s']} | {row['ratio']} "
            f"| {row['p50_ms']} | {row['p99_ms']} | {row['errors']} |"
        )
    lines += ["", "| target | measured | verdict |", "| --- | --- | --- |"]
    for name, row, key, goal in (
        (
            "short pairs ÷ in-process forward (1 process, every thread) ≥ 0.85",
            rows[0],
            "ratio_to_forward",
            0.85,
        ),
        ("short pairs ÷ the faster limit (worker layout) ≥ 0.85", rows[0], "ratio", 0.85),
        ("mixed pairs ÷ length-bucketed limit (the faster) ≥ 0.75", rows[1], "ratio", 0.75),
    ):
        lines.append(f"| {name} | {row[key]} | {'met' if row[key] >= goal else '**not met**'} |")
    (args.out / "rerank.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-5:]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
