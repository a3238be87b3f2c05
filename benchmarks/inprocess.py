"""Measurements without HTTP, each in a fresh process so its memory is its own; one JSON
result on stdout.

    python -m benchmarks.inprocess limit --model minilm --batches 1,8,32 --duration 3
    python -m benchmarks.inprocess limit --model minilm --workload mixed --batches 32 --bucketed
    python -m benchmarks.inprocess limit --model minilm --batches 16 --threads 1 --processes 2
    python -m benchmarks.inprocess bare-memory --model minilm
    python -m benchmarks.inprocess grad --model minilm --mode no_grad --batch 8

``--threads 0`` (the default) leaves torch's own thread count (one per core): the limit is
the whole machine's. ``limit``: the model's forward through the repository and an
``InferenceSession``, as the service's worker runs it, batch after batch of consecutive
inputs in arrival order (the ceiling any server can reach). With ``--bucketed``, each batch
is first sorted by token count and cut into forwards under a padded-token budget
(``--max-batch-tokens``: rows × longest row), outputs put back in arrival order: padding
a sentence to a paragraph's length is what this avoids. Tokenising to count is timed too.
With ``--processes N``, N such processes run side by side (each with ``--threads``; they start
timing together, after every one has loaded the model) and their inputs/s are summed: the
machine's limit for a layout of N workers (latencies are the first process's).
``bare-memory``: the RSS of a process that holds the model after one forward (the yardstick
for a worker's memory). ``grad``: one grad mode at one batch size: latency and the growth of
the RSS high-water mark (``ru_maxrss``) over the forwards.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from benchmarks.inputs import WORKLOADS, model_inputs
from benchmarks.loadgen import percentile

MiB = 1024 * 1024


def max_rss() -> int:
    """This process's RSS high-water mark in bytes (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss() -> int:
    import psutil

    rss: int = psutil.Process().memory_info().rss
    return rss


DEFAULT_MAX_BATCH_TOKENS = 2048  # used when model.yaml declares no max_batch_tokens


def load(model: str, threads: int) -> Any:
    import torch

    from service.core.repository import ModelRepository

    if threads:
        torch.set_num_threads(threads)
    return ModelRepository().get(model)


def with_backend(entry: Any, backend: str, cache_dir: str | None) -> Any:
    """``entry``'s model on ``backend`` for every forward shape, gate or not (the benchmark shows
    every backend; the gate's verdicts come from ``python -m service tune``)."""
    if backend == "torch":
        return entry.load("cpu")
    from service.worker import huggingface
    from service.worker.backends import ExportCache, make_backend
    from service.worker.tuning import thread_counts

    assert cache_dir, "--cache-dir: where the exports are (python -m service tune makes them)"
    model = huggingface.load(entry.spec, entry.verified_weights(), "cpu", backend="torch")
    cache = ExportCache(Path(cache_dir) / "exports", entry.spec.name, entry.spec.weights.sha256)
    model.use(make_backend(backend, model.module, model.example_features(), cache, thread_counts(entry.spec)))
    return model


def token_counts(model: Any, inputs: list[Any]) -> list[int]:
    """Tokens per input as the model counts them (its ``costs``: special tokens, truncation; a
    text, or a query-document pair)."""
    counts: list[int] = model.costs(inputs)
    return counts


def bucket(costs: list[int], budget: int, cap: int) -> list[list[int]]:
    """Indices of one gathered batch grouped into forwards by the service's own planner
    (:func:`service.worker.batcher.plan`): sorted by cost, cut where the padded cost (rows × the
    longest row's cost) would exceed ``budget``, the size ``cap``, or where a newcomer would pad
    its group by more than a forward costs; a single input over the budget is a group alone."""
    from service.worker.batcher import Limits, plan

    return plan(costs, Limits(cap, budget))


class Bucketed:
    """Runs one gathered batch as several length-sorted forwards; outputs in arrival order."""

    def __init__(self, session: Any, budget: int, cap: int) -> None:
        self.session = session
        self.budget = budget
        self.cap = cap
        self.forwards = 0

    def run(self, batch: list[Any]) -> list[Any]:
        groups = bucket(token_counts(self.session.model, batch), self.budget, self.cap)
        outputs: list[Any] = [None] * len(batch)
        for group in groups:
            for index, output in zip(group, self.session.run([batch[i] for i in group]), strict=True):
                outputs[index] = output
        self.forwards += len(groups)
        return outputs


def batches_of(inputs: list[Any], size: int) -> list[list[Any]]:
    """Distinct batches of ``size`` consecutive inputs, wrapping around."""
    count = len(inputs)
    return [[inputs[(start + k) % count] for k in range(size)] for start in range(0, count, size)]


def limit(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from service.worker.api import warmup_input
    from service.worker.session import InferenceSession

    entry = load(args.model, args.threads)
    session = InferenceSession(with_backend(entry, args.backend, args.cache_dir), args.grad_mode)
    session.run([warmup_input(entry.spec)])
    inputs = model_inputs(args.model, workload=args.workload)
    if args.barrier:
        wait_for_siblings(Path(args.barrier), args.siblings)
    budget = (
        args.max_batch_tokens or getattr(entry.spec, "max_batch_tokens", None) or DEFAULT_MAX_BATCH_TOKENS
    )
    # a gathered batch is cut into forwards of at most its own size (the service cuts at its
    # max_batch_size; the limit is the best the machine does with the whole batch)
    bucketed = Bucketed(session, budget, max(args.batches)) if args.bucketed else None
    runner = bucketed or session
    points = []
    for size in args.batches:
        batches = batches_of(inputs, size)
        max_diff = None
        if bucketed is not None:  # same answers as the padded forward, up to float noise
            padded, split = session.run(batches[0]), bucketed.run(batches[0])
            max_diff = float((torch.tensor(padded) - torch.tensor(split)).abs().max())
        for batch in batches[:3]:  # warm the shapes
            runner.run(batch)
        reps = []
        for _ in range(args.reps):
            latencies = []
            forwards_before = bucketed.forwards if bucketed else 0
            started = time.perf_counter()
            turn = 0
            # mixed lengths: whole cycles over the inputs, so the batches have their 10% of paragraphs
            cycle = len(batches) if args.workload == "mixed" else 1
            while (now := time.perf_counter()) - started < args.duration or turn % cycle:
                outputs = runner.run(batches[turn % len(batches)])
                latencies.append((time.perf_counter() - now) * 1000.0)
                assert len(outputs) == size and all(output is not None for output in outputs)
                turn += 1
            elapsed = time.perf_counter() - started
            latencies.sort()
            reps.append(
                {
                    "batch": size,
                    "batches": turn,
                    "forwards": (bucketed.forwards - forwards_before) if bucketed else turn,
                    "requests": turn * size,
                    "throughput_rps": turn * size / elapsed,  # inputs per second
                    "latency_ms": {
                        "p50": percentile(latencies, 0.5),
                        "p95": percentile(latencies, 0.95),
                        "p99": percentile(latencies, 0.99),
                        "mean": statistics.fmean(latencies),
                        "max": latencies[-1],
                    },
                    "errors": 0,
                }
            )
        points.append({"batch": size, "reps": reps, "bucketed_vs_padded_max_abs_diff": max_diff})
    return {
        "model": args.model,
        "workload": args.workload,
        "bucketed": args.bucketed,
        "max_batch_tokens": budget if args.bucketed else None,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "points": points,
        "peak_rss": max_rss(),
    }


def wait_for_siblings(barrier: Path, count: int, timeout: float = 600.0) -> None:
    """Announce this process ready in ``barrier`` and wait until ``count`` processes are."""
    (barrier / str(os.getpid())).touch()
    deadline = time.monotonic() + timeout
    while sum(1 for _ in barrier.iterdir()) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {sum(1 for _ in barrier.iterdir())} of {count} processes got ready")
        time.sleep(0.01)


def side_by_side(args: argparse.Namespace) -> dict[str, Any]:
    """``limit`` in ``args.processes`` processes at once; inputs/s summed rep by rep."""
    with tempfile.TemporaryDirectory(prefix="limit-barrier-") as barrier:
        command = [
            sys.executable,
            "-m",
            "benchmarks.inprocess",
            "limit",
            f"--model={args.model}",
            f"--threads={args.threads}",
            f"--grad-mode={args.grad_mode}",
            f"--batches={','.join(map(str, args.batches))}",
            f"--duration={args.duration}",
            f"--reps={args.reps}",
            f"--workload={args.workload}",
            f"--max-batch-tokens={args.max_batch_tokens}",
            f"--backend={args.backend}",
            *([f"--cache-dir={args.cache_dir}"] if args.cache_dir else []),
            *(["--bucketed"] if args.bucketed else []),
            f"--barrier={barrier}",
            f"--siblings={args.processes}",
        ]
        children = [subprocess.Popen(command, stdout=subprocess.PIPE) for _ in range(args.processes)]
        outputs = [child.communicate(timeout=900)[0] for child in children]
    if any(child.returncode for child in children):
        raise RuntimeError(f"a side-by-side limit process failed: {[c.returncode for c in children]}")
    results = [orjson.loads(output.strip().splitlines()[-1]) for output in outputs]
    first = results[0]
    for index, point in enumerate(first["points"]):
        for rep_index, rep in enumerate(point["reps"]):
            reps = [result["points"][index]["reps"][rep_index] for result in results]
            per_process = [r["throughput_rps"] for r in reps]
            rep["requests"] = sum(r["requests"] for r in reps)
            rep["throughput_rps"] = sum(per_process)
            rep["per_process_rps"] = per_process
    return {
        **first,
        "processes": args.processes,
        "peak_rss": sum(result["peak_rss"] for result in results),
    }


def bare_memory(args: argparse.Namespace) -> dict[str, Any]:
    from service.worker.api import warmup_input
    from service.worker.session import InferenceSession

    entry = load(args.model, args.threads)
    session = InferenceSession(entry.load("cpu"), args.grad_mode)
    loaded = current_rss()
    session.run([warmup_input(entry.spec)])
    after_one = current_rss()
    peak_one = max_rss()
    batch = batches_of(model_inputs(args.model), entry.spec.max_batch_size)[0]
    session.run(batch)
    if entry.spec.inputs.kind == "text":
        # the largest forward the worker can be asked for: max_batch_size of the longest inputs
        # (the mixed workload's paragraphs, truncated at the model's maximum length)
        longest = sorted(model_inputs(args.model, workload="mixed"), key=len)[-1]
        session.run([longest] * entry.spec.max_batch_size)
    return {
        "model": args.model,
        "rss_loaded": loaded,
        "rss_after_one_forward": after_one,
        "peak_rss_after_one_forward": peak_one,
        "max_batch_size": entry.spec.max_batch_size,
        "rss_after_max_batch_forward": current_rss(),
        "peak_rss_after_max_batch_forward": max_rss(),
    }


def grad(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    entry = load(args.model, args.threads)
    model = entry.load("cpu")
    guard = {"grad": torch.enable_grad, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}[
        args.mode
    ]
    batch = batches_of(model_inputs(args.model), args.batch)[0]
    encoded = model.preprocess(batch)  # tokenising is the same in every mode: kept out of the timing
    baseline_peak, baseline_rss = max_rss(), current_rss()
    latencies = []
    requires_grad = None
    started = time.perf_counter()
    while len(latencies) < args.min_iterations or time.perf_counter() - started < args.duration:
        began = time.perf_counter()
        with guard():
            output = model.forward(encoded)
            requires_grad = output.requires_grad
            rows = model.postprocess(output)
        del output
        latencies.append((time.perf_counter() - began) * 1000.0)
        assert len(rows) == args.batch
    first, rest = latencies[0], sorted(latencies[1:])
    return {
        "model": args.model,
        "mode": args.mode,
        "batch": args.batch,
        "iterations": len(latencies),
        "output_requires_grad": requires_grad,
        "first_forward_ms": first,
        "latency_ms": {"p50": percentile(rest, 0.5), "p95": percentile(rest, 0.95)},
        "baseline_peak_rss": baseline_peak,
        "peak_rss": max_rss(),
        "peak_rss_growth": max_rss() - baseline_peak,
        "rss_growth": current_rss() - baseline_rss,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inprocess")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("limit", "bare-memory", "grad"):
        sub = commands.add_parser(name)
        sub.add_argument("--model", required=True)
        sub.add_argument("--threads", type=int, default=0, help="torch threads; 0: torch's default")
        sub.add_argument("--grad-mode", default="no_grad", choices=["no_grad", "inference_mode"])
    sub = commands.choices["limit"]
    sub.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1])
    sub.add_argument(
        "--backend", default="torch", help="huggingface models: torch, torch-bf16, onnx, onnx-int8"
    )
    sub.add_argument("--cache-dir", default=None, help="where the ONNX exports are (--backend onnx*)")
    sub.add_argument("--duration", type=float, default=3.0, help="seconds per repetition")
    sub.add_argument("--reps", type=int, default=1)
    sub.add_argument("--workload", default="short", choices=WORKLOADS)
    sub.add_argument("--bucketed", action="store_true", help="sort each batch by tokens, cut under a budget")
    sub.add_argument("--max-batch-tokens", type=int, default=0, help="0: model.yaml's, else 2048")
    sub.add_argument("--processes", type=int, default=1, help="this many side by side, inputs/s summed")
    sub.add_argument("--barrier", help=argparse.SUPPRESS)  # side_by_side's start line
    sub.add_argument("--siblings", type=int, default=1, help=argparse.SUPPRESS)
    sub = commands.choices["grad"]
    sub.add_argument("--mode", required=True, choices=["grad", "no_grad", "inference_mode"])
    sub.add_argument("--batch", type=int, default=1)
    sub.add_argument("--duration", type=float, default=2.0)
    sub.add_argument("--min-iterations", type=int, default=5)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    command = {"limit": limit, "bare-memory": bare_memory, "grad": grad}[args.command]
    if args.command == "limit" and args.processes > 1:
        command = side_by_side
    with contextlib.redirect_stdout(sys.stderr):  # library chatter must not corrupt the JSON
        result = command(args)
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
