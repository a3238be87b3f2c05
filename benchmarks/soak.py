"""Soak benchmark: steady open-loop load at 70% of the sustainable rate ("Reliability" issue).

    python -m benchmarks.soak [--minutes 10] [--model minilm] [--out benchmarks/results] [--rate R]

1. Starts ``python -m service serve`` (real configuration, one model) on a free loopback port.
2. Measures the sustainable rate briefly (closed loop at concurrency ``max_batch_size``, as
   ``benchmarks.overload`` does) unless ``--rate`` gives it.
3. Sends ``--fraction`` (0.7) × that rate, Poisson arrivals, open loop, for ``--minutes``,
   while sampling every ``--interval`` (5) seconds the RSS, open file descriptors and TCP
   sockets of every server process.
4. Reports errors (any non-200; target 0), RSS growth per process (mean of the first minute
   vs mean of the last minute; target < 5%), open file descriptors (target unchanged; TCP
   sockets of client connections are counted apart, they follow the load), and latency
   p50/p95/p99 per time window. Writes ``soak.json``, ``soak.md`` and ``soak.png`` under ``--out``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.inputs import OUTPUT_DIM
from benchmarks.overload import (
    DEFAULT_OUT,
    MIB,
    NOISE_NOTE,
    ProcessSampler,
    cpu_percent,
    latency_stats,
    log,
    machine,
    md_table,
    measure_sustainable,
    metrics_delta,
    model_info,
    outcome_key,
    run_open_loop,
    scrape_metrics,
    start_service,
    timeline,
    verdict,
    write_results,
)

RSS_GROWTH_TARGET = 0.05


def edge_window(total_s: float) -> float:
    """Seconds averaged at each end for growth: one minute, or a third of a shorter run."""
    return min(60.0, total_s / 3.0)


def process_report(sampler: ProcessSampler, total_s: float) -> list[dict[str, Any]]:
    """Per process: RSS first-minute mean vs last-minute mean, and file descriptors."""
    edge = edge_window(total_s)
    rows = []
    for pid, points in sorted(sampler.per_process().items()):
        first = [p for p in points if p[0] <= edge]
        last = [p for p in points if p[0] >= total_s - edge]
        if not first or not last:
            continue
        rss_first = statistics.fmean(p[1] for p in first)
        rss_last = statistics.fmean(p[1] for p in last)
        # descriptors that are not TCP sockets: files, pipes, queues, eventfds... (what could leak)
        other_first = [p[2] - max(p[3], 0) for p in first]
        other_last = [p[2] - max(p[3], 0) for p in last]
        rows.append(
            {
                "pid": pid,
                "role": sampler.roles.get(pid, "?"),
                "rss_start_mib": points[0][1] / MIB,
                "rss_first_mean_mib": rss_first / MIB,
                "rss_last_mean_mib": rss_last / MIB,
                "rss_max_mib": max(p[1] for p in points) / MIB,
                "rss_end_mib": points[-1][1] / MIB,
                "rss_growth": (rss_last - rss_first) / rss_first if rss_first else float("nan"),
                "fds_start": points[0][2],
                "fds_max": max(p[2] for p in points),
                "fds_end": points[-1][2],
                "tcp_max": max(p[3] for p in points),
                "non_socket_fds_first": statistics.median(other_first),
                "non_socket_fds_last": statistics.median(other_last),
                "non_socket_fds_max": max(p[2] - max(p[3], 0) for p in points),
                "cpu_percent": cpu_percent(points),
                "samples": len(points),
            }
        )
    return rows


def soak_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    s = result["summary"]
    errors = s["sent"] - s["counts"]["200"]
    targets = [
        {
            "target": "0 errors (every request a 200)",
            "measured": f"{errors} of {s['sent']} ({', '.join(f'{k}: {v}' for k, v in s['counts'].items() if k != '200' and v) or 'none'})",
            "met": errors == 0 and result["generator"]["unfinished"] == 0,
        }
    ]
    for row in result["processes"]:
        name = f"{row['role']} ({row['pid']})"
        targets.append(
            {
                "target": f"RSS growth < 5%: {name}",
                "measured": f"{100 * row['rss_growth']:+.2f}% ({row['rss_first_mean_mib']:.1f} → {row['rss_last_mean_mib']:.1f} MiB)",
                "met": row["rss_growth"] < RSS_GROWTH_TARGET,
            }
        )
    for row in result["processes"]:
        name = f"{row['role']} ({row['pid']})"
        targets.append(
            {
                "target": f"open fds unchanged: {name}",
                "measured": f"non-socket fds {row['non_socket_fds_first']:g} → {row['non_socket_fds_last']:g}; "
                f"all fds {row['fds_start']} → {row['fds_end']} (max {row['fds_max']})",
                "met": row["non_socket_fds_last"] <= row["non_socket_fds_first"],
            }
        )
    return targets


def soak_markdown(result: dict[str, Any]) -> str:
    s, cfg, sus = result["summary"], result["config"], result["sustainable"]
    edge = edge_window(cfg["duration_s"])
    overall = s["latency_200"]
    given = sus.get("given", False)
    lines = [
        f"# Soak: {cfg['model']} at {100 * cfg['fraction']:.0f}% of the sustainable rate for "
        f"{cfg['duration_s'] / 60:g} min",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Machine: {result['machine']['cpus']} CPUs, load average before the run "
        f"{result['machine']['load_average']}, after {result['load_average_after']}; {result['machine']['time']}.",
        f"Server: `python -m service serve`, model {cfg['model']}: max_batch_size "
        f"{cfg['model_info'].get('max_batch_size')}, workers {cfg['model_info'].get('workers')}, "
        f"max_queue_size {cfg['model_info'].get('max_queue_size')}.",
        "",
        f"> {NOISE_NOTE}",
        "",
        "## Load",
        "",
        (
            f"Sustainable rate given on the command line: {sus['throughput_rps']:.1f} req/s."
            if given
            else f"Sustainable rate (closed loop, concurrency {sus['concurrency']}, {sus['duration_s']:g} s): "
            f"{sus['throughput_rps']:.1f} req/s, p50 {sus['latency_ms']['p50']:.0f} ms, errors {sus['errors']}."
        ),
        f"Soak: {cfg['rate']:.1f} req/s target, {s['offered_rps']:.1f} req/s sent (Poisson, open loop), "
        f"X-Request-Timeout {cfg['deadline_s']:g} s, client timeout {cfg['client_timeout_s']:g} s; "
        f"RSS/fds sampled every {cfg['interval_s']:g} s.",
        "",
        md_table(
            ["sent", "200", "errors", "p50 ms", "p95 ms", "p99 ms", "max ms"],
            [
                [
                    s["sent"],
                    s["counts"]["200"],
                    s["sent"] - s["counts"]["200"],
                    overall["p50_ms"],
                    overall["p95_ms"],
                    overall["p99_ms"],
                    overall["max_ms"],
                ]
            ],
        ),
        "",
        f"## Server processes (growth: mean of the first {edge:g} s vs mean of the last {edge:g} s)",
        "",
        md_table(
            [
                "process",
                "RSS first (MiB)",
                "RSS last (MiB)",
                "growth",
                "RSS max",
                "fds start → end (max)",
                "non-socket fds first → last",
                "TCP max",
                "CPU %",
            ],
            [
                [
                    f"{r['role']} ({r['pid']})",
                    r["rss_first_mean_mib"],
                    r["rss_last_mean_mib"],
                    f"{100 * r['rss_growth']:+.2f}%",
                    r["rss_max_mib"],
                    f"{r['fds_start']} → {r['fds_end']} ({r['fds_max']})",
                    f"{r['non_socket_fds_first']:g} → {r['non_socket_fds_last']:g}",
                    r["tcp_max"],
                    r["cpu_percent"],
                ]
                for r in result["processes"]
            ],
        ),
        "",
        f"## Latency of the 200s per {s['table_window_s']:g} s window (by send time)",
        "",
        md_table(
            ["t (s)", "sent", "200", "errors", "p50 ms", "p95 ms", "p99 ms", "max ms"],
            [
                [
                    f"{w['t0']:.0f}–{w['t1']:.0f}",
                    w["sent"],
                    w["ok"],
                    w["errors"],
                    w["p50_ms"],
                    w["p95_ms"],
                    w["p99_ms"],
                    w["max_ms"],
                ]
                for w in s["table_windows"]
            ],
        ),
        "",
        "![latency and memory over time](soak.png)",
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


def plot(result: dict[str, Any], sampler: ProcessSampler, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    windows = result["summary"]["windows"]
    fig, (lat_ax, rss_ax, fd_ax) = plt.subplots(
        3, 1, figsize=(11, 10), sharex=True, gridspec_kw={"height_ratios": [3, 3, 2]}
    )
    minutes = [(w["t0"] + w["t1"]) / 120.0 for w in windows]
    for key, label, style in (("p50_ms", "p50", "-"), ("p95_ms", "p95", "--"), ("p99_ms", "p99", ":")):
        lat_ax.plot(minutes, [w[key] for w in windows], style, linewidth=1.8, label=label)
    top = max((w["p99_ms"] for w in windows if w["p99_ms"] == w["p99_ms"]), default=1.0)
    errors = [(m, w["errors"]) for m, w in zip(minutes, windows, strict=True) if w["errors"]]
    if errors:
        lat_ax.scatter(
            [m for m, _ in errors],
            [1.15 * top] * len(errors),
            marker="x",
            color="red",
            label="window with non-200s",
        )
    lat_ax.set_ylabel("latency of 200s (ms)")
    lat_ax.set_ylim(0, 1.25 * top)
    lat_ax.grid(alpha=0.3)
    rate_ax = lat_ax.twinx()
    width = windows[0]["t1"] - windows[0]["t0"] if windows else 1.0
    rate_ax.plot(minutes, [w["ok"] / width for w in windows], color="grey", alpha=0.5, linewidth=1)
    rate_ax.set_ylabel("200s per second (grey)", color="grey")
    rate_ax.set_ylim(bottom=0)
    lat_ax.legend(loc="lower left", ncol=4, fontsize=9, framealpha=0.9)
    cfg = result["config"]
    lat_ax.set_title(
        f"Soak: {cfg['model']}, {result['summary']['offered_rps']:.1f} req/s "
        f"({100 * cfg['fraction']:.0f}% of sustainable), per {cfg['window_s']:g} s window"
    )
    per = sampler.per_process()
    for pid, points in sorted(per.items(), key=lambda item: -item[1][0][1]):
        label = sampler.label(pid)
        t = [p[0] / 60.0 for p in points]
        rss_ax.plot(t, [p[1] / MIB for p in points], linewidth=1.8, label=label)
        fd_ax.plot(t, [p[2] for p in points], linewidth=1.5, label=label)
    rss_ax.set_ylabel("RSS (MiB)")
    rss_ax.set_ylim(bottom=0)
    rss_ax.grid(alpha=0.3)
    rss_ax.legend(loc="center right", fontsize=8, ncol=2, framealpha=0.9)
    fd_ax.set_ylabel("open file descriptors")
    fd_ax.set_ylim(bottom=0)
    fd_ax.set_xlabel("minutes since the soak started")
    fd_ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--model", default="minilm", choices=sorted(OUTPUT_DIM))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--rate", type=float, default=None, help="sustainable req/s (skip measuring it)")
    parser.add_argument("--fraction", type=float, default=0.7, help="soak rate ÷ sustainable rate")
    parser.add_argument("--sustain-seconds", type=float, default=15.0)
    parser.add_argument("--deadline", type=float, default=30.0, help="X-Request-Timeout, seconds")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between process samples")
    parser.add_argument("--seed", type=int, default=1)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "-m", "benchmarks.soak", *(sys.argv[1:] if argv is None else argv)])
    print(f"command: {command}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    before = machine()
    duration = 60.0 * args.minutes
    server = start_service(args.model)
    with server:
        log(f"service ready on {server.url} in {server.startup_s:.1f} s (pid {server.pid})")
        info = model_info(server.url, args.model)
        sustainable = measure_sustainable(server, args, info)
        rate = args.fraction * sustainable["throughput_rps"]
        config = {
            "url": f"{server.url}/v1/models/{args.model}/predict",
            "model": args.model,
            "rate": rate,
            "fraction": args.fraction,
            "duration_s": duration,
            "deadline_s": args.deadline,
            "client_timeout_s": args.deadline + 2.0,
            "poisson": True,
            "seed": args.seed,
            "interval_s": args.interval,
            "window_s": 5.0,
            "max_connections": 4000,
        }
        log(f"soak: {rate:.1f} req/s for {args.minutes:g} min")
        scraped_before = scrape_metrics(server.url)
        with ProcessSampler(server.pid, server.port, interval=args.interval) as sampler:
            last_report = [time.monotonic()]

            def progress() -> None:
                if time.monotonic() - last_report[0] < 30.0 or not sampler.series:
                    return
                last_report[0] = time.monotonic()
                entry = sampler.series[-1]
                rss = ", ".join(
                    f"{sampler.roles.get(pid, '?')} {values[0] / MIB:.0f} MiB/{values[1]} fds"
                    for pid, values in sorted(entry["procs"].items())
                )
                log(f"t={entry['t']:.0f} s: {rss}")

            generated = run_open_loop(config, on_wait=progress)
        server_metrics = metrics_delta(scraped_before, scrape_metrics(server.url))
    samples = generated.pop("samples")
    counts: dict[str, int] = {k: 0 for k in ("200", "503", "504", "other", "connection error", "hang")}
    for sample in samples:
        counts[outcome_key(sample[3])] += 1
    table_window = 30.0 if duration >= 120 else 10.0
    summary = {
        "sent": len(samples),
        "offered_rps": len(samples) / duration,
        "counts": counts,
        "other_outcomes": sorted({str(x[3]) for x in samples if x[3] != 200}),
        "latency_200": latency_stats([x[2] for x in samples if x[3] == 200]),
        "send_lag": latency_stats([x[1] for x in samples]),
        "windows": timeline(samples, duration, config["window_s"]),
        "table_window_s": table_window,
        "table_windows": timeline(samples, duration, table_window),
    }
    result: dict[str, Any] = {
        "command": command,
        "machine": before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "config": {**config, "model_info": info},
        "startup_s": server.startup_s,
        "sustainable": sustainable,
        "generator": generated,
        "summary": summary,
        "server_metrics_delta": server_metrics,
        "processes": process_report(sampler, duration),
        "process_series": [
            {
                "t": e["t"],
                "procs": {
                    sampler.label(pid): {
                        "rss_mib": round(v[0] / MIB, 2),
                        "fds": v[1],
                        "tcp": v[2],
                        "cpu_s": v[3],
                    }
                    for pid, v in e["procs"].items()
                },
            }
            for e in sampler.series
        ],
        "samples_columns": ["scheduled_s", "lag_ms", "latency_ms", "outcome", "connect_ms"],
        "samples": samples,
    }
    result["targets"] = soak_targets(result)
    markdown = soak_markdown(result)
    write_results(args.out, "soak", result, markdown)
    plot(result, sampler, args.out / "soak.png")
    print(markdown, flush=True)
    log(f"wrote {args.out / 'soak.json'}, {args.out / 'soak.md'} and {args.out / 'soak.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
