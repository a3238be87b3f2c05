"""Fair scheduling: single predicts while a predict-file runs on the same worker.

    python -m benchmarks.fairness [--records 8000] [--interval 0.25] [--out benchmarks/results]

One minilm server with its default settings. First the file alone (its time is the baseline),
then the same file again while one client sends a single-sentence predict every ``--interval``
seconds for as long as the file runs. Every predict's status and latency are recorded, and the
file's output is checked: one line per record, in order, no error lines.
Targets (issue: fair scheduling): every predict answers 200 within 1 s while the file runs, the
file's output is complete, and the file with predicts takes about as long as the file alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.files import predict_file_upload, write_sentences  # noqa: E402
from service.core.repository import ModelRepository  # noqa: E402
from tests.support import ServerProcess  # noqa: E402

MODEL = "minilm"
TARGET_SECONDS = 1.0


def run_file(url: str, path: Path, records: int) -> dict[str, Any]:
    """Upload ``path``, read every output line, check them; returns seconds and the check."""
    ids: list[int] = []
    errors = 0
    started = time.perf_counter()
    with predict_file_upload(url, MODEL, path) as response:
        status = response.status_code
        for line in response.iter_lines():
            if not line:
                continue
            record = json.loads(line)
            if "output" in record and len(record["output"]) == 384:
                ids.append(record["id"])
            else:
                errors += 1
    seconds = time.perf_counter() - started
    return {
        "status": status,
        "seconds": round(seconds, 2),
        "records_per_s": round(len(ids) / seconds, 1),
        "lines_ok": len(ids),
        "error_lines": errors,
        "complete_and_in_order": status == 200 and errors == 0 and ids == list(range(records)),
    }


def predicts_while(url: str, interval: float, running: threading.Event) -> list[dict[str, Any]]:
    """One client: a single predict every ``interval`` seconds while ``running`` is set."""
    samples = []
    with httpx.Client(base_url=url, timeout=30.0) as client:
        while running.is_set():
            started = time.perf_counter()
            try:
                response = client.post(
                    f"/v1/models/{MODEL}/predict",
                    json={"inputs": [f"is the file hogging the worker {len(samples)}?"]},
                )
                ok = response.status_code == 200 and len(response.json()["outputs"][0]) == 384
                status = response.status_code
            except httpx.HTTPError as exc:
                ok, status = False, type(exc).__name__
            samples.append({"status": status, "ok": ok, "seconds": time.perf_counter() - started})
            time.sleep(max(0.0, interval - (time.perf_counter() - started)))
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fairness", description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=8000)
    parser.add_argument("--interval", type=float, default=0.25, help="seconds between predicts")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="the model's workers (0: its default); 1 shows one worker shared",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    env = {f"SERVICE_MODELS__{MODEL.upper()}__WORKERS": str(args.workers)} if args.workers else {}
    workers = args.workers or ModelRepository().get(MODEL).spec.workers

    with (
        tempfile.TemporaryDirectory(prefix="fairness-") as work,
        ServerProcess(serve=[MODEL], env=env) as server,
    ):
        path = Path(work) / "records.jsonl"
        write_sentences(path, args.records)
        run_file(server.url, path, min(args.records, 256))  # warm-up (a short file)
        alone = run_file(server.url, path, args.records)
        running = threading.Event()
        running.set()
        samples: list[dict[str, Any]] = []
        client = threading.Thread(
            target=lambda: samples.extend(predicts_while(server.url, args.interval, running)), daemon=True
        )
        client.start()
        shared = run_file(server.url, path, args.records)
        running.clear()
        client.join(timeout=60)

    latencies = sorted(s["seconds"] for s in samples)
    worst = latencies[-1] if latencies else float("nan")
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "model": MODEL,
        "workers": workers,
        "records": args.records,
        "interval_s": args.interval,
        "file_alone": alone,
        "file_with_predicts": shared,
        "predicts": {
            "count": len(samples),
            "all_200": all(s["ok"] for s in samples),
            "statuses": sorted({str(s["status"]) for s in samples}),
            "p50_s": round(statistics.median(latencies), 3) if latencies else None,
            "p99_s": round(latencies[int(0.99 * (len(latencies) - 1))], 3) if latencies else None,
            "max_s": round(worst, 3),
        },
        "slowdown_of_the_file": round(shared["seconds"] / alone["seconds"], 3),
        "targets": {
            "every predict 200 within 1 s": bool(samples)
            and all(s["ok"] for s in samples)
            and worst <= TARGET_SECONDS,
            "the file's output complete and in order": shared["complete_and_in_order"]
            and alone["complete_and_in_order"],
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fairness.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "fairness.md").write_text(markdown(result))
    print(markdown(result))
    return 0 if all(result["targets"].values()) else 1


def markdown(r: dict[str, Any]) -> str:
    p, alone, shared = r["predicts"], r["file_alone"], r["file_with_predicts"]
    workers = r.get("workers", 1)
    lines = [
        "# Fair scheduling: predicts during a file job",
        "",
        f"{r['date']} · `python -m benchmarks.fairness --records {r['records']} --interval {r['interval_s']}` · "
        f"{r['model']}, default settings, {workers} worker{'s' if workers != 1 else ''}"
        + (" (the file goes to one, predicts to the least busy)" if workers > 1 else ""),
        "",
        "| run | seconds | records/s | output |",
        "| --- | ---: | ---: | --- |",
        f"| file alone ({r['records']:,} records) | {alone['seconds']} | {alone['records_per_s']} | "
        f"{'complete, in order' if alone['complete_and_in_order'] else 'INCOMPLETE'} |",
        f"| the same file, a predict every {r['interval_s']} s meanwhile | {shared['seconds']} | "
        f"{shared['records_per_s']} | {'complete, in order' if shared['complete_and_in_order'] else 'INCOMPLETE'} |",
        "",
        f"Predicts during the file: {p['count']}, statuses {', '.join(p['statuses']) or '—'}; latency "
        f"p50 {p['p50_s']} s, p99 {p['p99_s']} s, max {p['max_s']} s. The file took "
        f"{r['slowdown_of_the_file']}× its time alone.",
        "",
        "| target | met |",
        "| --- | --- |",
        *(f"| {name} | {'yes' if met else '**no**'} |" for name, met in r["targets"].items()),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
