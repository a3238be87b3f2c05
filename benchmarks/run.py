"""Runs every contender in turn on this machine and writes JSON, Markdown and plots.

    python -m benchmarks.run [--quick] [--out benchmarks/results]

Contenders, per model: the in-process limit on all cores (the forward alone), a naive
FastAPI server, bare LitServe, this service with its default configuration, and for minilm
Infinity (its own virtualenv, installed on first use). Workloads: one short input per
request at several concurrencies, and for minilm mixed lengths (one text per request) at 32
connections. Every contender keeps its own default threading (torch: one thread per core).
The load generator runs as a separate process on loopback (``benchmarks.loadgen``). See
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import infinity, report
from benchmarks.processes import (
    TreeSampler,
    idle_cpu_percent,
    python_module,
    service_command,
)
from tests.support import ROOT, ServerUnderTest  # the tests' server harness, shared

# the service right after the limit, and the limit's short points measured again right after the
# service (``limit_again``): the ratios of the two use the mean of the limit's two readings, so a
# machine that drifts over the minutes of a run does not decide a target
CONTENDERS = ("limit", "service", "naive", "bare", "infinity")
LIMIT_BATCH = 32  # the in-process limit gathers at least this many (see Runner.limit)
TEXT_MODELS = ("minilm",)  # the mixed workload and Infinity: text embedding models only
CONTENDER_SCRIPTS = {"naive": "naive_fastapi", "bare": "bare_litserve"}  # benchmarks/contenders/*.py
DEFAULT_OUT = ROOT / "benchmarks" / "results"


@dataclass(frozen=True)
class Plan:
    """How long and how often to measure; ``quick`` is a smoke run of a couple of minutes."""

    models: tuple[str, ...] = ("minilm", "reference")
    concurrencies: tuple[int, ...] = (1, 8, 32, 64)
    reps: int = 3  # loadgen runs per point: medians and spread
    duration: float = 4.0  # measured seconds per run
    warmup: float = 1.0  # seconds of load before each measured window
    idle: float = 10.0  # seconds of no traffic for the idle CPU measurement
    limit_duration: float = 2.0  # seconds per in-process repetition (mixed: whole cycles of its inputs)
    mixed_concurrencies: tuple[int, ...] = (32,)  # mixed-length workload, text models only
    # answers to mixed lengths come in waves of a batch (seconds apart when padded): a longer window
    mixed_duration: float = 10.0
    mixed_warmup: float = 3.0
    client_timeout: float = 10.0  # seconds the load generator waits for one answer (then a timeout error)
    contenders: tuple[str, ...] = CONTENDERS
    grad_model: str = "minilm"
    grad_batches: tuple[int, ...] = (1, 8, 32)
    grad_duration: float = 2.0
    ceiling_concurrencies: tuple[int, ...] = (1, 64)
    ceiling_duration: float = 3.0
    plots: bool = True
    quick: bool = False


QUICK = Plan(
    models=("reference",),
    concurrencies=(1, 8),
    reps=1,
    duration=3.0,
    warmup=0.5,
    idle=2.0,
    limit_duration=1.0,
    grad_model="reference",  # loads in a fraction of a second: the smoke run only exercises the code
    grad_batches=(1,),
    grad_duration=0.5,
    ceiling_concurrencies=(8,),
    ceiling_duration=2.0,
    quick=True,
)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_json(command: list[str], timeout: float) -> dict[str, Any]:
    """Run a benchmark subprocess and parse the JSON it prints on its last stdout line."""
    done = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[2:])} exited with {done.returncode}: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def loadgen_command(
    url: str,
    model: str,
    concurrency: int,
    duration: float,
    warmup: float,
    workload: str = "short",
    api: str = "predict",
    timeout: float = 10.0,
    requests: int = 0,
) -> list[str]:
    """``benchmarks.loadgen``'s command line; ``requests``: a fixed count instead of a duration."""
    return python_module(
        "benchmarks.loadgen",
        f"--url={url}",
        f"--model={model}",
        f"--concurrency={concurrency}",
        f"--duration={duration}",
        f"--warmup={warmup}",
        f"--workload={workload}",
        f"--api={api}",
        f"--timeout={timeout}",
        f"--requests={requests}",
    )


def loadgen(
    url: str,
    model: str,
    concurrency: int,
    duration: float,
    warmup: float,
    workload: str = "short",
    api: str = "predict",
    timeout: float = 10.0,
) -> dict[str, Any]:
    command = loadgen_command(url, model, concurrency, duration, warmup, workload, api, timeout)
    return run_json(command, timeout=duration + warmup + timeout + 90)


def summarise(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and spread over repetitions of one point."""
    ok = [r for r in reps if "error" not in r and r.get("requests", 0) > 0]
    if not ok:
        reasons = [r.get("error") or "no answer inside the measured window" for r in reps]
        return {
            "errors": sum(r.get("errors", 0) for r in reps) or len(reps),
            "failed": True,
            "reasons": reasons,
        }
    throughput = [r["throughput_rps"] for r in ok]
    p50 = [r["latency_ms"]["p50"] for r in ok]
    return {
        "throughput_rps": statistics.median(throughput),
        "throughput_min": min(throughput),
        "throughput_max": max(throughput),
        "p50_ms": statistics.median(p50),
        "p50_min": min(p50),
        "p50_max": max(p50),
        "p95_ms": statistics.median(r["latency_ms"]["p95"] for r in ok),
        "p99_ms": statistics.median(r["latency_ms"]["p99"] for r in ok),
        "errors": sum(r.get("errors", 0) for r in reps),
        "timeouts": sum(r.get("timeouts", 0) for r in reps),
        "loadgen_cpu_percent": statistics.median(r.get("loadgen_cpu_percent", 0.0) for r in ok),
        "reps": len(ok),
    }


@dataclass
class Bench:
    plan: Plan
    results: dict[str, Any] = field(default_factory=dict)

    # -- the load generator's own ceiling -------------------------------------------------
    def ceiling(self) -> list[dict[str, Any]]:
        rows = []
        command = python_module("benchmarks.contenders.hello", "--port", "{port}")
        with ServerUnderTest(command, "/") as hello:
            for concurrency in self.plan.ceiling_concurrencies:
                result = loadgen(f"{hello.url}/", "none", concurrency, self.plan.ceiling_duration, 0.5)
                rows.append({"target": "hello (asyncio)", "tool": "benchmarks.loadgen", **result})
                log(f"ceiling c={concurrency}: {result['throughput_rps']:.0f} req/s")
            wrk = shutil.which("wrk")
            if wrk is not None:
                rows.append(self._wrk(wrk, hello.url, max(self.plan.ceiling_concurrencies)))
        return rows

    def _wrk(self, wrk: str, url: str, concurrency: int) -> dict[str, Any]:
        seconds = max(1, int(self.plan.ceiling_duration))
        done = subprocess.run(
            [wrk, "-t1", f"-c{concurrency}", f"-d{seconds}s", f"{url}/"], capture_output=True, text=True
        )
        rps = next(
            (float(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("Requests/sec:")),
            float("nan"),
        )
        return {
            "target": "hello (asyncio)",
            "tool": "wrk (reference)",
            "concurrency": concurrency,
            "throughput_rps": rps,
        }

    # -- contenders ------------------------------------------------------------------------
    def inprocess_limit(
        self,
        model: str,
        batches: list[int],
        workload: str = "short",
        bucketed: bool = False,
        processes: int = 1,
        threads: int = 0,
    ) -> dict[str, Any]:
        return run_json(
            python_module(
                "benchmarks.inprocess",
                "limit",
                f"--model={model}",
                f"--batches={','.join(map(str, batches))}",
                f"--duration={self.plan.limit_duration}",
                f"--reps={self.plan.reps}",
                f"--workload={workload}",
                *(["--bucketed"] if bucketed else []),
                f"--processes={processes}",
                f"--threads={threads}",
            ),
            timeout=900,
        )

    def side_by_side_point(
        self, model: str, spec: Any, workload: str = "short", bucketed: bool = False
    ) -> dict[str, Any]:
        """One point of the limit in the service's own layout: as many processes as ``spec``'s
        workers side by side, each with its share of the cores and batches of its max_batch_size
        (``benchmarks.inprocess limit --processes``)."""
        threads = max(1, (os.cpu_count() or 1) // spec.workers)
        found = self.inprocess_limit(
            model, [spec.max_batch_size], workload, bucketed, processes=spec.workers, threads=threads
        )
        runs = found["points"][0]["reps"]
        return {
            "threads": threads,
            "max_batch_tokens": found["max_batch_tokens"],
            "runs": runs,
            **summarise(runs),
        }

    def side_by_side(self, model: str) -> dict[str, Any] | None:
        """The limit in the service's own layout when a model has several workers: the short
        workload, and for text models the mixed one length-bucketed."""
        from service.core.repository import ModelRepository

        spec = ModelRepository().get(model).spec
        if spec.workers < 2:
            return None
        short = self.side_by_side_point(model, spec)
        mixed = self.side_by_side_point(model, spec, "mixed", True) if model in TEXT_MODELS else None
        log(
            f"  {spec.workers} processes x {short['threads']} thread(s) side by side, batch {spec.max_batch_size}: "
            f"{short['throughput_rps']:.0f} inputs/s"
            + (f", mixed length-bucketed {mixed['throughput_rps']:.0f} inputs/s" if mixed else "")
        )
        return {"processes": spec.workers, "batch": spec.max_batch_size, **short, "mixed": mixed}

    def limit_again(self, model: str, max_batch: int) -> dict[str, Any]:
        """The limit's short-workload points, and its short side-by-side point, measured once more
        (see ``CONTENDERS``)."""
        from service.core.repository import ModelRepository

        max_batch = max(max_batch, LIMIT_BATCH)
        result = self.inprocess_limit(model, sorted({min(c, max_batch) for c in self.plan.concurrencies}))
        points = [{"batch": p["batch"], "runs": p["reps"], **summarise(p["reps"])} for p in result["points"]]
        spec = ModelRepository().get(model).spec
        side = self.side_by_side_point(model, spec) if spec.workers > 1 else None
        log(
            "  "
            + ", ".join(f"batch {p['batch']}: {p['throughput_rps']:.0f} inputs/s" for p in points)
            + (f", side by side: {side['throughput_rps']:.0f} inputs/s" if side else "")
        )
        return {"points": points, "side_by_side": side}

    def limit(self, model: str, max_batch: int) -> dict[str, Any]:
        # the limit gathers at least LIMIT_BATCH (the issues' baseline is the batch-32 forward on
        # all cores), even for a model whose workers take fewer inputs per forward
        max_batch = max(max_batch, LIMIT_BATCH)
        batches = sorted({min(c, max_batch) for c in self.plan.concurrencies})
        result = self.inprocess_limit(model, batches)
        by_batch = {point["batch"]: point["reps"] for point in result["points"]}
        points = []
        for concurrency in self.plan.concurrencies:
            batch = min(concurrency, max_batch)
            points.append(
                {
                    "concurrency": concurrency,
                    "batch": batch,
                    "runs": by_batch[batch],
                    **summarise(by_batch[batch]),
                }
            )
        peak = result["peak_rss"]
        mixed = []
        if model in TEXT_MODELS:
            for concurrency in self.plan.mixed_concurrencies:
                batch = min(concurrency, max_batch)
                for bucketed in (False, True):
                    found = self.inprocess_limit(model, [batch], "mixed", bucketed)
                    point = found["points"][0]
                    mixed.append(
                        {
                            "concurrency": concurrency,
                            "batch": batch,
                            "bucketed": bucketed,
                            "max_batch_tokens": found["max_batch_tokens"],
                            "max_abs_diff_vs_padded": point["bucketed_vs_padded_max_abs_diff"],
                            "runs": point["reps"],
                            **summarise(point["reps"]),
                        }
                    )
                    log(
                        f"  mixed batch {batch} {'length-bucketed' if bucketed else 'padded'}: "
                        f"{mixed[-1]['throughput_rps']:.0f} inputs/s"
                    )
                    peak = max(peak, found["peak_rss"])
        return {
            "points": points,
            "mixed_points": mixed,
            "side_by_side": self.side_by_side(model),
            "threads": result["threads"],
            "interop_threads": result["interop_threads"],
            "processes": [
                {
                    "pid": 0,
                    "role": "benchmark process",
                    "peak_rss": peak,
                    "high_water_rss": peak,
                }
            ],
            "idle_cpu_percent": None,
            "startup_s": None,
        }

    def measure(self, url: str, model: str, concurrency: int, workload: str, api: str) -> dict[str, Any]:
        """``plan.reps`` load generator runs at one point: their summary and every run."""
        plan = self.plan
        duration, warmup = (
            (plan.mixed_duration, plan.mixed_warmup) if workload == "mixed" else (plan.duration, plan.warmup)
        )
        runs = []
        for _ in range(plan.reps):
            try:
                runs.append(
                    loadgen(
                        url,
                        model,
                        concurrency,
                        duration,
                        warmup,
                        workload,
                        api,
                        plan.client_timeout,
                    )
                )
            except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
                runs.append({"error": str(exc)[-500:], "errors": 1})
        point = {"concurrency": concurrency, "workload": workload, "runs": runs, **summarise(runs)}
        log(
            f"  {workload} c={concurrency}: {point.get('throughput_rps') or 0:.0f} req/s, "
            f"p50 {point.get('p50_ms') or 0:.2f} ms, errors {point['errors']} (timeouts {point.get('timeouts', 0)})"
        )
        return point

    def server(
        self,
        command: list[str],
        env: dict[str, str],
        ready_path: str,
        path: str,
        model: str,
        api: str = "predict",
    ) -> dict[str, Any]:
        plan = self.plan
        with ServerUnderTest(command, ready_path, env=env) as server:
            url = server.url + path
            with TreeSampler(server.pid, server.port) as sampler:
                # first requests: lazy imports, shapes
                warm = loadgen(url, model, 8, 1.0, 0.0, api=api, timeout=plan.client_timeout)
                idle = idle_cpu_percent(server.pid, plan.idle)
                points = [self.measure(url, model, c, "short", api) for c in plan.concurrencies]
                mixed = []
                if model in TEXT_MODELS:
                    mixed = [self.measure(url, model, c, "mixed", api) for c in plan.mixed_concurrencies]
            extra = {}
            if path.startswith("/v1/"):
                extra["health_live"] = loadgen(server.url + "/health/live", "none", 32, 2.0, 0.5)
            startup = server.startup_s
        return {
            "points": points,
            "mixed_points": mixed,
            "warmup_errors": warm["errors"],
            "processes": sampler.report(),
            "idle_cpu_percent": idle,
            "startup_s": startup,
            **extra,
        }

    def contender(self, name: str, model: str, max_batch: int) -> dict[str, Any]:
        if name == "limit":
            return self.limit(model, max_batch)
        if name in CONTENDER_SCRIPTS:
            module = f"benchmarks.contenders.{CONTENDER_SCRIPTS[name]}"
            command = python_module(module, f"--model={model}", "--port={port}")
            return self.server(command, {}, "/health", "/predict", model)
        if name == "infinity":
            install_s = infinity.ensure_venv()
            if install_s:
                log(f"  installed Infinity's virtualenv in {install_s:.0f} s")
            found = self.server(
                infinity.command("{port}"), infinity.environment(), "/health", "/embeddings", model, "openai"
            )
            return {**found, "install_s": install_s}
        command, env = service_command(model)
        return self.server(command, env, "/health/ready", f"/v1/models/{model}/predict", model)

    def contenders_for(self, model: str) -> list[str]:
        """Infinity serves text embedding models only."""
        return [c for c in self.plan.contenders if c != "infinity" or model in TEXT_MODELS]

    def bare_memory(self, model: str) -> dict[str, Any]:
        return run_json(python_module("benchmarks.inprocess", "bare-memory", f"--model={model}"), 300)

    def grad_study(self) -> list[dict[str, Any]]:
        rows = []
        for batch in self.plan.grad_batches:
            for mode in ("grad", "no_grad", "inference_mode"):
                rows.append(
                    run_json(
                        python_module(
                            "benchmarks.inprocess",
                            "grad",
                            f"--model={self.plan.grad_model}",
                            f"--mode={mode}",
                            f"--batch={batch}",
                            f"--duration={self.plan.grad_duration}",
                        ),
                        300,
                    )
                )
                log(f"grad study batch {batch} {mode}: p50 {rows[-1]['latency_ms']['p50']:.1f} ms")
        return rows

    # -- the whole run ---------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from service.core.repository import ModelRepository

        started = time.monotonic()
        repository = ModelRepository()
        self.results = {"meta": self.meta(), "models": {}}
        log("load generator ceiling")
        self.results["loadgen_ceiling"] = self.ceiling()
        for model in self.plan.models:
            spec = repository.get(model).spec
            entry: dict[str, Any] = {
                "max_batch_size": spec.max_batch_size,
                "batch_timeout": spec.batch_timeout,
                "workers": spec.workers,
                "contenders": {},
            }
            self.results["models"][model] = entry
            for name in self.contenders_for(model):
                log(f"{model}: {name}")
                try:
                    entry["contenders"][name] = self.contender(name, model, spec.max_batch_size)
                except (RuntimeError, TimeoutError, subprocess.TimeoutExpired, OSError) as exc:
                    log(f"{model}: {name} failed: {exc}")
                    entry["contenders"][name] = {"failed": str(exc)[-2000:], "points": []}
                if name == "service" and "limit" in entry["contenders"]:
                    log(f"{model}: limit again, right after the service")
                    entry["limit_again"] = self.limit_again(model, spec.max_batch_size)
            log(f"{model}: bare process memory")
            entry["bare_memory"] = self.bare_memory(model)
        log(f"grad-mode study ({self.plan.grad_model})")
        self.results["grad_study"] = self.grad_study()
        self.results["targets"] = evaluate_targets(self.results)
        self.results["meta"]["total_s"] = time.monotonic() - started
        return self.results

    def meta(self) -> dict[str, Any]:
        import litserve
        import psutil
        import torch

        return {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": platform.platform(),
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
            "load_average": os.getloadavg(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "litserve": litserve.__version__,
            "torch_threads": torch.get_num_threads(),  # torch's default here; every contender keeps it
            "torch_interop_threads": torch.get_num_interop_threads(),
            "plan": asdict(self.plan),
        }


# -- targets -------------------------------------------------------------------------------
def _point(
    results: dict[str, Any],
    model: str,
    contender: str,
    concurrency: int,
    key: str = "points",
    bucketed: bool | None = None,
) -> dict[str, Any] | None:
    """One measured point; ``key="mixed_points"`` for the mixed-length workload, where the
    in-process limit has a padded (``bucketed=False``) and a length-bucketed point."""
    found = results["models"].get(model, {}).get("contenders", {}).get(contender, {})
    for point in found.get(key, []):
        if point["concurrency"] != concurrency or point.get("failed"):
            continue
        if bucketed is None or point.get("bucketed") == bucketed:
            return dict(point)
    return None


def bracketed(first: dict[str, Any], again: dict[str, Any] | None) -> dict[str, Any]:
    """A baseline measured before the service's run and, when ``again`` is given, right after it:
    the mean of the two readings (throughput and p50), with ``how`` saying so."""
    if again is None:
        return {**first, "how": ""}
    return {
        "throughput_rps": (first["throughput_rps"] + again["throughput_rps"]) / 2,
        "p50_ms": (first["p50_ms"] + again["p50_ms"]) / 2,
        "how": (
            f"; mean of {first['throughput_rps']:.0f} before and {again['throughput_rps']:.0f} right after "
            f"the service's run, p50 {first['p50_ms']:.2f} and {again['p50_ms']:.2f} ms"
        ),
    }


def bracketed_limit(results: dict[str, Any], model: str, concurrency: int) -> dict[str, Any] | None:
    """The limit's short point at ``concurrency``, bracketed by its reading in ``limit_again``."""
    first = _point(results, model, "limit", concurrency)
    if first is None:
        return None
    again_points = (results["models"][model].get("limit_again") or {}).get("points") or []
    return bracketed(first, {p["batch"]: p for p in again_points}.get(first["batch"]))


def _workers(results: dict[str, Any], model: str) -> list[dict[str, Any]]:
    service = results["models"][model]["contenders"].get("service", {})
    return [p for p in service.get("processes", []) if p["role"] == "inference worker"]


Measure = Callable[[], tuple[float, float, str]]


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issues' targets, each measured side by side in this run and naming its baseline;
    ``met`` is None when not measured."""
    targets: list[dict[str, Any]] = []
    models = results["models"]
    timeout = results["meta"]["plan"].get("client_timeout", 10.0)

    def add(name: str, measure: Measure | None, lower_is_better: bool = False) -> None:
        try:
            value, threshold, detail = measure() if measure else (float("nan"), float("nan"), "")
        except (TypeError, KeyError, ZeroDivisionError, IndexError, AssertionError):
            value, threshold, detail = float("nan"), float("nan"), "not measured in this run"
        met = None if value != value else value <= threshold if lower_is_better else value >= threshold
        targets.append({"target": name, "value": value, "threshold": threshold, "met": met, "detail": detail})

    def when(model: str, measure: Measure) -> Measure | None:
        return measure if model in models else None

    def short_vs_limit() -> tuple[float, float, str]:
        service = _point(results, "minilm", "service", 32)
        limit = bracketed_limit(results, "minilm", 32)
        assert service and limit
        return (
            service["throughput_rps"] / limit["throughput_rps"],
            0.85,
            f"{service['throughput_rps']:.0f} req/s vs {limit['throughput_rps']:.0f} inputs/s "
            f"(in-process forward at batch 32, all cores{limit['how']})",
        )

    def short_vs_side_by_side() -> tuple[float, float, str]:
        service = _point(results, "minilm", "service", 32)
        side = models["minilm"]["contenders"]["limit"]["side_by_side"]
        assert service and side
        limit = bracketed(side, (models["minilm"].get("limit_again") or {}).get("side_by_side"))
        return (
            service["throughput_rps"] / limit["throughput_rps"],
            0.85,
            f"{service['throughput_rps']:.0f} req/s vs {limit['throughput_rps']:.0f} inputs/s "
            f"(in-process, {side['processes']} processes × {side['threads']} thread side by side, "
            f"batches of {side['batch']}: the service's worker layout{limit['how']})",
        )

    def mixed_vs_bucketed() -> tuple[float, float, str]:
        service = _point(results, "minilm", "service", 32, "mixed_points")
        bucketed = _point(results, "minilm", "limit", 32, "mixed_points", bucketed=True)
        padded = _point(results, "minilm", "limit", 32, "mixed_points", bucketed=False)
        assert service and bucketed
        return (
            service["throughput_rps"] / bucketed["throughput_rps"],
            0.75,
            f"{service['throughput_rps']:.0f} req/s vs {bucketed['throughput_rps']:.0f} inputs/s "
            f"(in-process, batches of 32 length-bucketed under {bucketed.get('max_batch_tokens')} padded "
            f"tokens; padded in arrival order: {padded['throughput_rps'] if padded else float('nan'):.0f})",
        )

    def mixed_vs_side_by_side() -> tuple[float, float, str]:
        service = _point(results, "minilm", "service", 32, "mixed_points")
        side = models["minilm"]["contenders"]["limit"]["side_by_side"]
        mixed = side["mixed"]
        assert service and mixed
        return (
            service["throughput_rps"] / mixed["throughput_rps"],
            0.75,
            f"{service['throughput_rps']:.0f} req/s vs {mixed['throughput_rps']:.0f} inputs/s "
            f"(in-process, {side['processes']} processes × {side['threads']} thread side by side, "
            f"batches of {side['batch']} length-bucketed under {mixed['max_batch_tokens']} tokens)",
        )

    def mixed_vs_infinity() -> tuple[float, float, str]:
        service = _point(results, "minilm", "service", 32, "mixed_points")
        other = _point(results, "minilm", "infinity", 32, "mixed_points")
        assert service and other
        return (
            service["throughput_rps"] / other["throughput_rps"],
            2.5,
            f"{service['throughput_rps']:.0f} vs {other['throughput_rps']:.0f} req/s (Infinity 0.0.78, torch engine)",
        )

    def mixed_errors() -> tuple[float, float, str]:
        service = _point(results, "minilm", "service", 32, "mixed_points")
        assert service
        return (
            float(service["errors"]),
            0.0,
            f"{service['errors']} errors, of which {service.get('timeouts', 0)} timeouts, over every run",
        )

    def c1_latency() -> tuple[float, float, str]:
        service = _point(results, "minilm", "service", 1)
        limit = bracketed_limit(results, "minilm", 1)
        assert service and limit
        return (
            service["p50_ms"] - limit["p50_ms"],
            3.0,
            f"p50 {service['p50_ms']:.2f} ms vs {limit['p50_ms']:.2f} ms "
            f"(in-process single forward of one sentence, all cores{limit['how']})",
        )

    def vs_naive() -> tuple[float, float, str]:
        service = _point(results, "minilm", "service", 32)
        naive = _point(results, "minilm", "naive", 32)
        assert service and naive
        ratio = service["throughput_rps"] / naive["throughput_rps"]
        return ratio, 2.0, f"{service['throughput_rps']:.0f} vs {naive['throughput_rps']:.0f} req/s"

    def latency() -> tuple[float, float, str]:
        service = _point(results, "reference", "service", 1)
        naive = _point(results, "reference", "naive", 1)
        assert service and naive
        ratio = service["p50_ms"] / naive["p50_ms"]
        return ratio, 1.5, f"p50 {service['p50_ms']:.2f} ms vs {naive['p50_ms']:.2f} ms"

    add(
        "minilm short c=32: service req/s ÷ in-process batch-32 forward on all cores ≥ 0.85",
        when("minilm", short_vs_limit),
    )
    add(
        "minilm short c=32: service req/s ÷ the same in-process limit in the service's worker layout ≥ 0.85",
        when("minilm", short_vs_side_by_side),
    )
    add(
        "minilm mixed c=32: service req/s ÷ in-process length-bucketed rate on all cores ≥ 0.75",
        when("minilm", mixed_vs_bucketed),
    )
    add(
        "minilm mixed c=32: service req/s ÷ the same in-process limit in the service's worker layout ≥ 0.75",
        when("minilm", mixed_vs_side_by_side),
    )
    add("minilm mixed c=32: service req/s ÷ Infinity req/s ≥ 2.5", when("minilm", mixed_vs_infinity))
    add(
        f"minilm mixed c=32: service errors and timeouts at a {timeout:g} s client timeout = 0",
        when("minilm", mixed_errors),
        lower_is_better=True,
    )
    add(
        "minilm c=1: service p50 − in-process single forward (all cores) ≤ 3 ms",
        when("minilm", c1_latency),
        lower_is_better=True,
    )
    add("minilm short c=32: service req/s ÷ naive FastAPI req/s ≥ 2", when("minilm", vs_naive))
    add(
        "reference c=1: service p50 ÷ naive FastAPI p50 ≤ 1.5",
        when("reference", latency),
        lower_is_better=True,
    )
    for model, entry in models.items():
        service = entry["contenders"].get("service", {})

        def idle(service: dict[str, Any] = service) -> tuple[float, float, str]:
            return float(service["idle_cpu_percent"]), 2.0, "% of one core, whole process tree, no traffic"

        def memory(model: str = model, entry: dict[str, Any] = entry) -> tuple[float, float, str]:
            workers = _workers(results, model)
            bare = entry["bare_memory"]["peak_rss_after_max_batch_forward"]
            worst = max(w["high_water_rss"] or w["peak_rss"] for w in workers)
            return (
                worst / bare,
                1.2,
                f"worker high-water {worst / 2**20:.0f} MiB vs a bare process holding the model "
                f"{bare / 2**20:.0f} MiB (after its largest forward: max_batch_size of its longest inputs)",
            )

        add(f"idle CPU of the service ({model}) ≤ 2% of one core", idle, lower_is_better=True)
        add(f"per-worker RSS ({model}) ÷ bare process ≤ 1.2", memory, lower_is_better=True)
    return targets


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: reference model only, short runs")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for results (created)")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--models", help="comma-separated subset of the plan's models")
    parser.add_argument(
        "--contenders", help=f"comma-separated subset of {','.join(CONTENDERS)} (default: all)"
    )
    parser.add_argument("--no-infinity", action="store_true", help="skip Infinity (and its install)")
    parser.add_argument("--reps", type=int, help="override the plan's repetitions per point")
    parser.add_argument("--duration", type=float, help="override the plan's measured seconds per run")
    parser.add_argument("--concurrencies", help="override the plan's short-workload concurrencies, e.g. 1,32")
    parser.add_argument("--mixed-duration", type=float, help="override the measured seconds of a mixed run")
    return parser.parse_args(argv)


def plan_from(args: argparse.Namespace) -> Plan:
    plan = QUICK if args.quick else Plan()
    changes: dict[str, Any] = {}
    if args.no_plots:
        changes["plots"] = False
    if args.models:
        changes["models"] = tuple(args.models.split(","))
    contenders = tuple(args.contenders.split(",")) if args.contenders else plan.contenders
    unknown = set(contenders) - set(CONTENDERS)
    if unknown:
        raise SystemExit(f"unknown contenders: {', '.join(sorted(unknown))}")
    if args.no_infinity:
        contenders = tuple(c for c in contenders if c != "infinity")
    changes["contenders"] = contenders
    if args.reps:
        changes["reps"] = args.reps
    if args.duration:
        changes["duration"] = args.duration
        changes["limit_duration"] = min(plan.limit_duration, args.duration)
    if args.mixed_duration:
        changes["mixed_duration"] = args.mixed_duration
        changes["mixed_warmup"] = min(plan.mixed_warmup, args.mixed_duration / 2)
    if args.concurrencies:
        changes["concurrencies"] = tuple(int(c) for c in args.concurrencies.split(","))
    return Plan(**{**asdict(plan), **changes})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    plan = plan_from(args)
    # no thread setting anywhere: every contender runs with its own default (torch: one per core)
    bench = Bench(plan)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop servers on the way out
    results = bench.run()
    args.out.mkdir(parents=True, exist_ok=True)
    written = report.write(results, args.out, plots=plan.plots)
    for target in results["targets"]:
        state = {True: "MET", False: "NOT MET", None: "not measured"}[target["met"]]
        print(f"{state:>12}  {target['target']}: {target['value']:.3g} ({target['detail']})")
    print(f"total {results['meta']['total_s']:.0f} s; wrote {', '.join(str(p) for p in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
