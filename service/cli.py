"""Command line: ``python -m service serve | models | predict-file``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from service.repository import ModelError, ModelRepository
from service.settings import ConfigError, load_settings


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

    models = commands.add_parser("models", help="list the models in the repository")
    models.add_argument("--config", type=Path, default=None)

    try:
        from service.filejob import add_predict_file_parser
    except ImportError:  # pragma: no cover - filejob is part of the package
        pass
    else:
        add_predict_file_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "serve":
            from service.server import serve

            settings = load_settings(args.config, host=args.host, port=args.port)
            logging.getLogger().setLevel(settings.log_level.upper())
            return serve(settings)
        if args.command == "models":
            settings = load_settings(args.config)
            repository = ModelRepository(settings.repository)
            for name in repository.names():
                spec = repository.get(name).spec
                served = "served" if name in settings.serve else "-"
                print(f"{name:<16} {spec.version:<8} {spec.task:<22} {served:<7} {spec.description}")
            return 0
        if args.command == "predict-file":
            from service.filejob import predict_file_command

            return predict_file_command(args)
    except (ConfigError, ModelError) as exc:
        print(f"service: error: {exc}", file=sys.stderr)
        return 2
    return 2  # pragma: no cover - argparse rejects unknown commands
