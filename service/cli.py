"""Command line: ``python -m service serve | models | tune | predict-file``. Argument parsing only:
each command calls the library function that does the work."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from service.core.repository import GRAD_MODES, ModelError, ModelRepository
from service.files.job import DEFAULT_PROGRESS_INTERVAL, run_command
from service.files.readers import DEFAULT_MAX_LINE_BYTES, FORMATS
from service.settings import ConfigError, configure_logging, load_settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m service", description="PyTorch inference service on LitServe"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the configured models over HTTP")
    serve.add_argument(
        "--config", type=Path, default=None, help="YAML settings (default: config/default.yaml)"
    )
    serve.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8000)")
    serve.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="serve a Hugging Face folder as model NAME (repeatable); with --config, alongside the "
        "config's models, else instead of them",
    )
    serve.add_argument(
        "--task",
        action="append",
        default=[],
        metavar="NAME=TASK",
        help="the task of --model NAME (default: inferred)",
    )
    serve.add_argument(
        "--sha256",
        action="append",
        default=[],
        metavar="NAME=HEX",
        help="the pinned sha256 of --model NAME's manifest (default: computed and logged at start)",
    )

    models = commands.add_parser("models", help="list the models in the repository")
    models.add_argument("--config", type=Path, default=None)

    tune = commands.add_parser(
        "tune",
        help="gate and time a huggingface model's backends on this machine; store the decision",
        description="Compare each backend with torch fp32 on the calibration set (the accuracy "
        "gate), time those that pass on this machine, and store which serves lone inputs and "
        "batches (backend: auto uses it while this machine and its libraries stay the same).",
    )
    tune.add_argument("model", metavar="MODEL", help="a huggingface-runtime model in the repository")
    tune.add_argument("--config", type=Path, default=None)
    tune.add_argument(
        "--backends",
        default=None,
        help="comma-separated backends to try (default: torch,torch-bf16,onnx,onnx-int8)",
    )

    add_predict_file_parser(commands)
    return parser


def add_predict_file_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``predict-file`` subcommand; its ``handler`` default is :func:`predict_file_command`."""
    parser = subparsers.add_parser(
        "predict-file",
        help="run a model over a jsonl/csv/txt file, in process, writing NDJSON results",
        description="Run MODEL over every record of INPUT and write one NDJSON result line per record.",
    )
    parser.add_argument("model", metavar="MODEL", help="a model name in the repository")
    parser.add_argument(
        "input", metavar="INPUT", type=Path, help="the input file (.jsonl, .ndjson, .csv, .txt)"
    )
    parser.add_argument(
        "-o", "--output", type=Path, default=None, help="result file (default: INPUT_STEM.predictions.jsonl)"
    )
    parser.add_argument(
        "--format", choices=FORMATS, default=None, help="input format (default: from extension)"
    )
    parser.add_argument(
        "--batch-size", type=_positive_int, default=None, help="inputs per forward (default: the model's)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue an interrupted run from its partial file"
    )
    parser.add_argument(
        "--input-key",
        default=None,
        help="jsonl key / csv column of the input, or one per part, comma-separated (a pair model: "
        "QUERY,DOCUMENT); default: input, and for a pair model else query,document",
    )
    parser.add_argument("--id-key", default="id", help="jsonl key / csv column of the id (default: id)")
    parser.add_argument("--repository", type=Path, default=None, help="model repository folder")
    parser.add_argument("--grad-mode", choices=GRAD_MODES, default="no_grad", help="autograd off mode")
    parser.add_argument(
        "--max-line-bytes",
        type=_positive_int,
        default=DEFAULT_MAX_LINE_BYTES,
        help="longer lines become error records (default: 1 MiB)",
    )
    parser.add_argument(
        "--progress-interval",
        type=float,
        default=DEFAULT_PROGRESS_INTERVAL,
        help="seconds between progress lines when stderr is not a terminal",
    )
    parser.set_defaults(handler=predict_file_command)


def predict_file_command(args: argparse.Namespace) -> int:
    """Run :func:`service.files.job.run_command` with parsed ``predict-file`` arguments."""
    return run_command(
        args.model,
        args.input,
        output=args.output,
        fmt=args.format,
        batch_size=args.batch_size,
        resume=args.resume,
        input_key=args.input_key,
        id_key=args.id_key,
        repository=args.repository,
        grad_mode=args.grad_mode,
        max_line_bytes=args.max_line_bytes,
        progress_interval=args.progress_interval,
    )


def folder_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Settings for ``serve --model NAME=PATH [--task NAME=TASK] [--sha256 NAME=HEX]``."""
    if not args.model:
        if args.task or args.sha256:
            raise ConfigError("--task and --sha256 name a model given with --model NAME=PATH")
        return {}
    folders = {name: Path(path) for name, path in _pairs(args.model, "--model", "NAME=PATH").items()}
    tasks = _pairs(args.task, "--task", "NAME=TASK")
    pins = _pairs(args.sha256, "--sha256", "NAME=HEX")
    unknown = sorted((set(tasks) | set(pins)) - set(folders))
    if unknown:
        raise ConfigError(f"--task/--sha256 name models not given with --model: {', '.join(unknown)}")
    overrides: dict[str, Any] = {"folders": folders, "folder_tasks": tasks, "folder_sha256": pins}
    served = list(folders)
    if args.config is not None:  # alongside the config's models
        served = [*load_settings(args.config).serve, *served]
    overrides["serve"] = list(dict.fromkeys(served))
    return overrides


def _pairs(values: list[str], flag: str, shape: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise ConfigError(f"{flag} takes {shape}, got {value!r}")
        if name in pairs:
            raise ConfigError(f"{flag} names {name!r} twice")
        pairs[name] = rest
    return pairs


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging("info")
    try:
        if args.command == "serve":
            from service.runtime.launcher import serve

            settings = load_settings(args.config, host=args.host, port=args.port, **folder_overrides(args))
            configure_logging(settings.log_level)
            return serve(settings)
        if args.command == "models":
            settings = load_settings(args.config)
            repository = ModelRepository(settings.repository)
            for name in repository.names():
                spec = repository.declared(name)
                served = "served" if name in settings.serve else "-"
                backend = backend_summary(spec, settings.cache_dir)
                print(
                    f"{name:<16} {spec.version:<8} {spec.task:<22} {served:<7} {backend:<34} {spec.description}"
                )
            return 0
        if args.command == "tune":
            return tune_command(args)
        if args.command == "predict-file":
            return predict_file_command(args)
    except (ConfigError, ModelError) as exc:
        print(f"service: error: {exc}", file=sys.stderr)
        return 2
    return 2  # pragma: no cover - argparse rejects unknown commands


def tune_command(args: argparse.Namespace) -> int:
    """``python -m service tune MODEL``: one line per backend, then the decision."""
    from service.worker.backends import BACKENDS
    from service.worker.tuning import tune

    settings = load_settings(args.config)
    entry = ModelRepository(settings.repository).get(args.model)
    if entry.spec.runtime != "huggingface":
        raise ModelError(
            f"model {args.model!r} runs {backend_summary(entry.spec, Path('.'))}: only huggingface models have backends"
        )
    if entry.spec.inputs.kind == "image":
        raise ModelError(f"model {args.model!r} takes images: image models run on torch (nothing to tune)")
    names = tuple(BACKENDS if args.backends is None else (name.strip() for name in args.backends.split(",")))
    unknown = sorted(set(names) - set(BACKENDS))
    if unknown or "torch" not in names:
        raise ConfigError(f"--backends takes torch and any of {', '.join(BACKENDS)}, got {args.backends!r}")
    tune(entry, Path(settings.cache_dir), names, say=print)
    return 0


def backend_summary(spec: Any, cache_dir: Path) -> str:
    """What ``python -m service models`` says of a model's backend: the declared one, and for
    ``auto`` this machine's decision (lone/batch) with the gate's figures of what it chose."""
    if spec.runtime == "onnx":
        return "onnxruntime (.onnx)"
    if spec.runtime == "torch-export":
        return "torch (.pt2)"
    if spec.runtime != "huggingface":
        return "torch (model.py)"
    if spec.inputs.kind == "image":
        return "torch (image models)"
    if spec.backend != "auto":
        return str(spec.backend)
    from service.worker.tuning import decision_path, stored_decision

    decision = stored_decision(decision_path(cache_dir, spec.name, spec.weights.sha256))
    if decision is None:
        return "auto: torch (not tuned here)"
    choice = decision["choice"]
    figures = {
        key: value
        for name in set(choice.values())
        for key, value in decision["backends"][name]["figures"].items()
    }
    shown = " ".join(f"{key}={value:.4g}" for key, value in sorted(figures.items()))
    return f"auto: lone {choice['lone']}, batch {choice['batch']}" + (f" ({shown})" if shown else "")
