"""The bundled image classifier on this machine, in one run (a quiet machine, nothing else running):

    python -m benchmarks.images [--duration 15] [--archive-mb 1024] [--out benchmarks/results]

1. The in-process limit: the same 32 photo-like 640 x 480 JPEGs (``benchmarks.inputs.images``)
   decoded, preprocessed by the folder's image processor and classified, in batches of the
   model's ``max_batch_size`` (16), in one process with every core — what the service's worker
   does, minus the service. Images/s.
2. The service (``image_classifier``, its model.yaml's layout): the same images as raw
   ``image/jpeg`` bodies from 32 connections (``benchmarks.loadgen``), every answer checked.
   Target: ≥ 0.85 of the limit.
3. A tar of ``--archive-mb`` MB of 1920 x 1080 JPEGs through ``predict-file`` (streamed up from
   disk, NDJSON read as it comes): every line checked, and the RSS of every process of the
   service sampled every 0.1 s (benchmarks.files.RssSampler). Target: no process grows by more than 100 MB.

Writes ``images.json`` and ``images.md``.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.files import RssSampler, predict_file_upload
from benchmarks.inputs import images
from benchmarks.processes import role
from tests.support import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / "work"


def inprocess_limit(duration: float) -> dict[str, float]:
    import torch

    from service.core.repository import ModelRepository
    from service.worker.session import InferenceSession

    entry = ModelRepository().get("image_classifier")
    batch = entry.spec.max_batch_size
    session = InferenceSession(entry.load("cpu"))
    pictures = images(32)
    torch.set_num_threads(psutil.cpu_count() or 1)
    turn, done = 0, 0
    for _ in range(2):  # warm-up
        session.run(pictures[:batch])
    started = time.perf_counter()
    while time.perf_counter() - started < duration:
        chunk = [pictures[(turn + i) % len(pictures)] for i in range(batch)]
        session.run(chunk)
        turn, done = turn + batch, done + batch
    elapsed = time.perf_counter() - started
    return {"images_per_s": done / elapsed, "threads": float(torch.get_num_threads()), "batch": float(batch)}


def served(server: ServerProcess, duration: float) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "benchmarks.loadgen",
        "--url",
        f"{server.url}/v1/models/image_classifier/predict",
    ]
    command += [
        "--model",
        "image_classifier",
        "--concurrency",
        "32",
        "--duration",
        str(duration),
        "--warmup",
        "3",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=600)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def make_archive(path: Path, megabytes: int) -> int:
    """A tar of 1920 x 1080 JPEGs (24 distinct ones, repeated under their own names) of at least
    ``megabytes`` MB; its member count."""
    if path.is_file() and path.stat().st_size >= megabytes * 1_000_000:
        with tarfile.open(path) as archive:
            return sum(1 for _ in archive)
    pictures = images(24, seed=7, size=(1920, 1080))
    path.parent.mkdir(parents=True, exist_ok=True)
    count, written = 0, 0
    with tarfile.open(path, "w") as archive:
        while written < megabytes * 1_000_000:
            data = pictures[count % len(pictures)]
            info = tarfile.TarInfo(f"photos/{count:06d}.jpg")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
            count, written = count + 1, written + len(data) + 1024
    return count


def archive_run(server: ServerProcess, path: Path, members: int) -> dict[str, Any]:
    pids = server.pids()
    roles = {pid: f"{role(psutil.Process(pid), server.pid, server.port)} (pid {pid})" for pid in pids}
    started = time.perf_counter()
    lines, errors = 0, 0
    with (
        RssSampler(pids) as sampler,
        predict_file_upload(server.url, "image_classifier", path, "application/x-tar") as response,
    ):
        response.raise_for_status()
        for line in response.iter_lines():
            if not line:
                continue
            record = json.loads(line)
            lines += 1
            if "output" not in record or len(record["output"]) != 10:
                errors += 1
    elapsed = time.perf_counter() - started
    return {
        "megabytes": path.stat().st_size / 1e6,
        "members": members,
        "lines": lines,
        "errors": errors,
        "seconds": elapsed,
        "images_per_s": lines / elapsed,
        "rss_growth_mb": {roles[pid]: (sampler.peak[pid] - sampler.baseline[pid]) / 1e6 for pid in pids},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.images", description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--archive-mb", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    archive = WORK / f"images-{args.archive_mb}mb.tar"
    members = make_archive(archive, args.archive_mb)
    limits = [inprocess_limit(args.duration / 3) for _ in range(3)]
    limit = statistics.median(run["images_per_s"] for run in limits)
    with ServerProcess(serve=["image_classifier"]) as server:
        load = served(server, args.duration)
        archived = archive_run(server, archive, members)
    ratio = load["throughput_rps"] / limit
    worst = max(archived["rss_growth_mb"].values())
    result = {"limit": limits, "served": load, "archive": archived, "ratio": ratio}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "images.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# The image classifier on this machine (python -m benchmarks.images)",
        "",
        f"{psutil.cpu_count()} cores; 32 photo-like 640 x 480 JPEGs (20-35 KB); image_classifier (ViT-Tiny shapes).",
        "",
        "| path | images/s | notes |",
        "| --- | --- | --- |",
        f"| in-process: decode + preprocess + forward, batches of 16, every core | {limit:.1f} | median of 3 |",
        f"| served: raw image/jpeg bodies, 32 connections | {load['throughput_rps']:.1f} | "
        f"p50 {load['latency_ms']['p50']:.0f} ms, errors {load['errors']} |",
        "",
        f"Archive: {archived['megabytes']:.0f} MB tar of {archived['members']} 1920 x 1080 JPEGs through predict-file: "
        f"{archived['lines']} lines ({archived['errors']} wrong) in {archived['seconds']:.0f} s "
        f"({archived['images_per_s']:.1f} images/s).",
        "",
        "| process | RSS growth during the archive, MB |",
        "| --- | --- |",
        *(f"| {name} | {mb:.1f} |" for name, mb in sorted(archived["rss_growth_mb"].items())),
        "",
        "| target | measured | verdict |",
        "| --- | --- | --- |",
        f"| served ÷ in-process limit ≥ 0.85 | {ratio:.2f} | {'met' if ratio >= 0.85 else '**not met**'} |",
        f"| every process's RSS growth ≤ 100 MB through a {archived['megabytes']:.0f} MB tar | {worst:.1f} MB "
        f"| {'met' if worst <= 100 and archived['errors'] == 0 else '**not met**'} |",
    ]
    (args.out / "images.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
