"""Reader throughput and memory on a large generated JSONL file.

    .venv/bin/python benchmarks/readers_throughput.py [--size-mb 200] [--text-chars 200] [--batch-size 256]

Writes the file under /tmp (removed afterwards unless --keep), reads it with
``service.files.readers.open_records`` and prints MB/s, records/s and the growth of peak RSS
(``ru_maxrss``) and current RSS (psutil) over the read. The generator writes in bounded
blocks, so the baseline is not inflated by it.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import orjson
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.files.readers import open_records

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "wizards",
    "quietly",
    "judge",
    "boxing",
]


def generate(path: Path, size: int, text_chars: int) -> int:
    """Write JSONL records of about ``text_chars`` characters until ``size`` bytes; return the count."""
    count = 0
    written = 0
    block: list[bytes] = []
    with open(path, "wb") as handle:
        while written < size:
            words = [WORDS[(count + k) % len(WORDS)] for k in range(text_chars // 5)]
            line = orjson.dumps({"id": count, "input": " ".join(words)[:text_chars]}) + b"\n"
            block.append(line)
            written += len(line)
            count += 1
            if len(block) >= 4096:
                handle.write(b"".join(block))
                block.clear()
        handle.write(b"".join(block))
    return count


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--text-chars", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--chunk-size", type=int, default=1 << 16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the generated file")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="readers-bench-", dir="/tmp"))
    path = folder / "input.jsonl"
    started = time.perf_counter()
    count = generate(path, args.size_mb * 1_000_000, args.text_chars)
    size = path.stat().st_size
    took = time.perf_counter() - started
    print(f"generated {size / 1e6:.1f} MB, {count:,} records in {took:.1f} s: {path}")

    process = psutil.Process()
    try:
        for run in range(1, args.repeat + 1):
            rss_before = process.memory_info().rss / 2**20
            peak_before = peak_rss_mb()
            records = errors = 0
            max_rss = rss_before
            started = time.perf_counter()
            options = {"batch_size": args.batch_size, "chunk_size": args.chunk_size}
            with open_records(path, "jsonl", **options) as batches:
                for index, batch in enumerate(batches):
                    records += len(batch)
                    errors += sum(1 for record in batch if record.error is not None)
                    if index % 256 == 0:
                        max_rss = max(max_rss, process.memory_info().rss / 2**20)
            elapsed = time.perf_counter() - started
            assert records == count and errors == 0, (records, count, errors)
            print(
                f"run {run}: {size / 1e6 / elapsed:7.1f} MB/s, {records / elapsed:,.0f} records/s, "
                f"{elapsed:.2f} s; RSS {rss_before:.1f} MB before, max sampled {max_rss:.1f} MB "
                f"(+{max_rss - rss_before:.1f}); "
                f"peak RSS growth (ru_maxrss) +{peak_rss_mb() - peak_before:.1f} MB"
            )
    finally:
        if not args.keep:
            os.unlink(path)
            os.rmdir(folder)


if __name__ == "__main__":
    main()
