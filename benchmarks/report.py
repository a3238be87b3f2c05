"""Turns a benchmark run's results into ``results.json``, ``results.md`` and PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

MiB = 2**20
LABELS = {
    "limit": "in-process limit (all cores)",
    "naive": "naive FastAPI",
    "bare": "bare LitServe",
    "service": "this service",
    "infinity": "Infinity 0.0.78",
}


def _clean(value: Any) -> Any:
    """NaN and infinities become null: the JSON stays standard."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _clean(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(item) for item in value]
    return value


def _num(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:,.{digits}f}"


def _total_rss(contender: dict[str, Any]) -> float | None:
    processes = contender.get("processes") or []
    if not processes:
        return None
    return sum(p["peak_rss"] for p in processes) / MiB


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    plan = meta["plan"]
    lines = [
        "# Benchmark results",
        "",
        f"{meta['date']} · {meta['machine']} · {meta['cores']} cores · {meta['memory_gb']} GB · "
        f"Python {meta['python']} · torch {meta['torch']} · LitServe {meta['litserve']} · "
        f"torch threads {meta['torch_threads']} (torch's default, one per core: no contender sets it) · load average at start {', '.join(f'{x:.2f}' for x in meta['load_average'])}",
        "",
        f"Mode: {'quick (smoke run)' if plan['quick'] else 'full'}; {plan['reps']} × {plan['duration']:g} s per point "
        f"(after {plan['warmup']:g} s of warm-up load), idle CPU over {plan['idle']:g} s; total {meta.get('total_s', 0):.0f} s. "
        "Throughput and latency are medians over the repetitions, with the min–max spread of throughput. "
        "The load generator shares the machine's cores with the server under test, and the machine "
        "may be shared with other work: read ratios measured side by side, not absolute numbers.",
        "",
        "## Load generator ceiling",
        "",
        "| target | tool | concurrency | req/s | p50 ms | loadgen CPU % |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in results.get("loadgen_ceiling", []):
        latency = row.get("latency_ms", {})
        lines.append(
            f"| {row['target']} | {row['tool']} | {row['concurrency']} | {_num(row['throughput_rps'], 0)} | "
            f"{_num(latency.get('p50'), 3)} | {_num(row.get('loadgen_cpu_percent'), 0)} |"
        )
    for model, entry in results["models"].items():
        lines += [
            "",
            f"## {model} (this service: {entry.get('workers', 1)} worker{'s' if entry.get('workers', 1) > 1 else ''}, "
            f"max_batch_size {entry['max_batch_size']}, batch_timeout {entry['batch_timeout']:g} s)",
            "",
            "| contender | concurrency | req/s (median) | min–max | p50 ms | p95 ms | p99 ms | errors | peak RSS, all processes (MiB) | idle CPU % of a core |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, contender in entry["contenders"].items():
            label = LABELS.get(name, name)
            if contender.get("failed"):
                lines.append(
                    f"| {label} | – | failed: {contender['failed'].splitlines()[0][:80]} | | | | | | | |"
                )
                continue
            rss = _total_rss(contender)
            for point in contender["points"]:
                concurrency = str(point["concurrency"])
                if name == "limit":
                    concurrency += f" (batch {point['batch']})"
                lines.append(
                    f"| {label} | {concurrency} | {_num(point.get('throughput_rps'), 0)} | "
                    f"{_num(point.get('throughput_min'), 0)}–{_num(point.get('throughput_max'), 0)} | "
                    f"{_num(point.get('p50_ms'), 2)} | {_num(point.get('p95_ms'), 2)} | {_num(point.get('p99_ms'), 2)} | "
                    f"{point.get('errors', '–')} | {_num(rss, 0)} | {_num(contender.get('idle_cpu_percent'), 1)} |"
                )
            side = contender.get("side_by_side") if name == "limit" else None
            if side:
                lines.append(
                    f"| in-process limit, {side['processes']} processes × {side['threads']} thread"
                    f"{'s' if side['threads'] > 1 else ''} side by side (the service's worker layout) | "
                    f"{side['processes'] * side['batch']} (batch {side['batch']} each) | "
                    f"{_num(side.get('throughput_rps'), 0)} | {_num(side.get('throughput_min'), 0)}–"
                    f"{_num(side.get('throughput_max'), 0)} | {_num(side.get('p50_ms'), 2)} | "
                    f"{_num(side.get('p95_ms'), 2)} | {_num(side.get('p99_ms'), 2)} | 0 | – | – |"
                )
        again = entry.get("limit_again")
        if again:
            side = again.get("side_by_side")
            lines += [
                "",
                "The in-process limit measured again right after this service's run (the short-sentence "
                "targets use the mean of the two readings): "
                + ", ".join(
                    f"batch {p['batch']} {_num(p['throughput_rps'], 0)} inputs/s (p50 {_num(p['p50_ms'], 2)} ms)"
                    for p in again["points"]
                )
                + (f"; side by side {_num(side['throughput_rps'], 0)} inputs/s" if side else "")
                + ".",
            ]
        lines += [
            "",
            "Memory per process (RSS peak sampled every 0.1 s during the runs; high-water = the kernel's VmHWM, start-up included):",
            "",
        ]
        lines += ["| contender | process | peak RSS MiB | high-water MiB |", "|---|---|---:|---:|"]
        for name, contender in entry["contenders"].items():
            for process in contender.get("processes", []):
                lines.append(
                    f"| {LABELS.get(name, name)} | {process['role']} | {_num(process['peak_rss'] / MiB, 0)} | "
                    f"{_num(process.get('high_water_rss', 0) / MiB, 0)} |"
                )
        bare = entry.get("bare_memory")
        if bare:
            lines += [
                "",
                f"A bare process holding {model}: RSS {bare['rss_loaded'] / MiB:.0f} MiB loaded, "
                f"{bare['rss_after_one_forward'] / MiB:.0f} MiB after one forward (batch 1), "
                f"high-water {bare['peak_rss_after_max_batch_forward'] / MiB:.0f} MiB after one forward at batch {bare['max_batch_size']}"
                + (" of its longest inputs." if model in ("minilm",) else "."),
            ]
        mixed_rows = [
            (name, point)
            for name, contender in entry["contenders"].items()
            for point in contender.get("mixed_points") or []
        ]
        if mixed_rows:
            lines += [
                "",
                f"### {model}: mixed lengths, one text per request",
                "",
                "90% sentences of 8–20 words, 10% paragraphs of 180–230 words (about 256 tokens), seeded. "
                f"Client timeout {plan.get('client_timeout', 10):g} s; a timeout counts as an error. "
                "The in-process limit runs the same inputs in batches of 32 in arrival order: padded to "
                "the longest, or sorted by token count and cut into forwards under a padded-token budget "
                "(length-bucketed; outputs put back in order).",
                "",
                "| contender | concurrency | req/s (median) | min–max | p50 ms | p95 ms | p99 ms | errors | of which timeouts |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for name, point in mixed_rows:
                label = LABELS.get(name, name)
                if name == "limit":
                    how = (
                        f"length-bucketed ≤ {point.get('max_batch_tokens')} tokens"
                        if point.get("bucketed")
                        else "padded"
                    )
                    label += f", batch {point['batch']} {how}"
                lines.append(
                    f"| {label} | {point['concurrency']} | {_num(point.get('throughput_rps'), 0)} | "
                    f"{_num(point.get('throughput_min'), 0)}–{_num(point.get('throughput_max'), 0)} | "
                    f"{_num(point.get('p50_ms'), 2)} | {_num(point.get('p95_ms'), 2)} | {_num(point.get('p99_ms'), 2)} | "
                    f"{point.get('errors', '–')} | {point.get('timeouts', '–')} |"
                )
                side = (entry["contenders"]["limit"].get("side_by_side") or {}) if name == "limit" else {}
                if side.get("mixed") and point.get("bucketed"):
                    mixed = side["mixed"]
                    lines.append(
                        f"| in-process limit, {side['processes']} processes × {side['threads']} thread"
                        f"{'s' if side['threads'] > 1 else ''} side by side (the service's worker layout), "
                        f"batches of {side['batch']} length-bucketed ≤ {mixed['max_batch_tokens']} tokens | "
                        f"{side['processes'] * side['batch']} | {_num(mixed.get('throughput_rps'), 0)} | "
                        f"{_num(mixed.get('throughput_min'), 0)}–{_num(mixed.get('throughput_max'), 0)} | "
                        f"{_num(mixed.get('p50_ms'), 2)} | {_num(mixed.get('p95_ms'), 2)} | "
                        f"{_num(mixed.get('p99_ms'), 2)} | 0 | 0 |"
                    )
        other = entry["contenders"].get("infinity", {})
        if other.get("install_s"):
            lines += ["", f"Infinity's virtualenv was installed in this run ({other['install_s']:.0f} s)."]
        service = entry["contenders"].get("service", {})
        if "health_live" in service:
            health = service["health_live"]
            lines += [
                "",
                f"This service's `/health/live` (no model, concurrency {health['concurrency']}): "
                f"{health['throughput_rps']:.0f} req/s, p50 {health['latency_ms']['p50']:.2f} ms: its HTTP layer alone.",
            ]
    grad = results.get("grad_study") or []
    if grad:
        lines += [
            "",
            f"## Grad mode ({grad[0]['model']}, in-process, one fresh process per row)",
            "",
            "Forward only (tokenising excluded). Peak RSS growth = rise of the process's RSS high-water mark "
            "(ru_maxrss) over the forwards, from just after loading.",
            "",
            "| batch | mode | p50 ms | p95 ms | first forward ms | peak RSS growth MiB | output requires_grad |",
            "|---:|---|---:|---:|---:|---:|---|",
        ]
        for row in grad:
            lines.append(
                f"| {row['batch']} | {row['mode']} | {_num(row['latency_ms']['p50'], 2)} | {_num(row['latency_ms']['p95'], 2)} | "
                f"{_num(row['first_forward_ms'], 1)} | {_num(row['peak_rss_growth'] / MiB, 1)} | {row['output_requires_grad']} |"
            )
    lines += ["", "## Targets", "", "| target | measured | met | detail |", "|---|---:|---|---|"]
    for target in results.get("targets", []):
        state = {True: "met", False: "**not met**", None: "not measured"}[target["met"]]
        lines.append(f"| {target['target']} | {_num(target['value'], 2)} | {state} | {target['detail']} |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for model, entry in results["models"].items():
        figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
        for name, contender in entry["contenders"].items():
            points = [p for p in contender.get("points", []) if not p.get("failed")]
            if not points:
                continue
            x = [p["concurrency"] for p in points]
            (line,) = left.plot(
                x, [p["throughput_rps"] for p in points], marker="o", label=LABELS.get(name, name)
            )
            left.fill_between(
                x,
                [p["throughput_min"] for p in points],
                [p["throughput_max"] for p in points],
                alpha=0.15,
                color=line.get_color(),
            )
            for key, style in (("p50_ms", "-"), ("p95_ms", "--"), ("p99_ms", ":")):
                right.plot(
                    x, [p[key] for p in points], linestyle=style, marker=".", color=line.get_color(),
                    label=f"{LABELS.get(name, name)} {key[:3]}",
                )  # fmt: skip
        for axis in (left, right):
            axis.set_xscale("log", base=2)
            axis.set_xlabel("concurrent clients")
            axis.grid(alpha=0.3)
        left.set_ylabel("requests (inputs) per second")
        left.set_title(f"{model}: throughput")
        left.legend(fontsize=8)
        right.set_yscale("log")
        right.set_ylabel("latency, ms")
        right.set_title(f"{model}: latency p50 / p95 / p99")
        right.legend(fontsize=6, ncol=2)
        figure.tight_layout()
        path = out / f"{model}_throughput_latency.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)

    figure, axes = plt.subplots(
        1, len(results["models"]), figsize=(6 * len(results["models"]), 4), squeeze=False
    )
    for axis, (model, entry) in zip(axes[0], results["models"].items(), strict=True):
        names = []
        bottoms: list[float] = []
        for name, contender in entry["contenders"].items():
            processes = contender.get("processes") or []
            if not processes:
                continue
            names.append(LABELS.get(name, name))
            bottom = 0.0
            for process in processes:
                height = process["peak_rss"] / MiB
                axis.bar(len(names) - 1, height, bottom=bottom, edgecolor="white")
                if height > 40:
                    axis.text(
                        len(names) - 1,
                        bottom + height / 2,
                        process["role"],
                        ha="center",
                        va="center",
                        fontsize=6,
                    )
                bottom += height
            bottoms.append(bottom)
        bare = entry.get("bare_memory")
        if bare:
            axis.axhline(
                bare["peak_rss_after_max_batch_forward"] / MiB, color="black", linestyle="--", linewidth=1
            )
            axis.text(
                -0.4, bare["peak_rss_after_max_batch_forward"] / MiB, " bare process", fontsize=7, va="bottom"
            )
        axis.set_xticks(range(len(names)), names, fontsize=8)
        axis.set_ylabel("peak RSS per process, MiB (stacked)")
        axis.set_title(f"{model}: memory per process")
    figure.tight_layout()
    path = out / "memory_per_process.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    written.append(path)

    for model, entry in results["models"].items():
        bars = [
            (LABELS.get(name, name).replace(" (all cores)", "")
             + ("" if name != "limit" else "\nbucketed" if point.get("bucketed") else "\npadded"),
             point)
            for name, contender in entry["contenders"].items()
            for point in contender.get("mixed_points") or []
            if not point.get("failed")
        ]  # fmt: skip
        if not bars:
            continue
        figure, axis = plt.subplots(figsize=(1.4 * len(bars) + 2, 4))
        x = range(len(bars))
        axis.bar(x, [p["throughput_rps"] for _, p in bars])
        axis.errorbar(
            x,
            [p["throughput_rps"] for _, p in bars],
            yerr=[
                [p["throughput_rps"] - p["throughput_min"] for _, p in bars],
                [p["throughput_max"] - p["throughput_rps"] for _, p in bars],
            ],
            fmt="none",
            color="black",
            capsize=3,
        )
        axis.set_xticks(list(x), [label for label, _ in bars], fontsize=7)
        axis.set_ylabel("texts per second")
        axis.set_title(f"{model}: mixed lengths, 32 connections (in-process: batches of 32)")
        axis.grid(axis="y", alpha=0.3)
        figure.tight_layout()
        path = out / f"{model}_mixed.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)

    grad = results.get("grad_study") or []
    if grad:
        figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
        batches = sorted({row["batch"] for row in grad})
        modes = ("grad", "no_grad", "inference_mode")
        width = 0.8 / len(modes)
        for index, mode in enumerate(modes):
            rows = {row["batch"]: row for row in grad if row["mode"] == mode}
            x = [b + (index - 1) * width for b in range(len(batches))]
            left.bar(x, [rows[b]["latency_ms"]["p50"] for b in batches], width, label=mode)
            right.bar(x, [rows[b]["peak_rss_growth"] / MiB for b in batches], width, label=mode)
        for axis, title in ((left, "forward p50, ms"), (right, "peak RSS growth, MiB")):
            axis.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
            axis.set_title(f"{grad[0]['model']} grad modes: {title}")
            axis.legend(fontsize=8)
        figure.tight_layout()
        path = out / "grad_modes.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    return written


def write(results: dict[str, Any], out: Path, plots: bool = True) -> list[Path]:
    """Write results.json, results.md and (unless ``plots`` is false) the PNGs; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.json", out / "results.md"]
    paths[0].write_text(json.dumps(_clean(results), indent=1) + "\n", encoding="utf-8")
    paths[1].write_text(markdown(results), encoding="utf-8")
    if plots:
        paths += plot(results, out)
    return paths
