"""The servers the benchmark compares with the service, each a script run as its own process."""

from __future__ import annotations

import argparse


def parse_args() -> argparse.Namespace:
    """The command line every contender takes: which model, which port, how many torch threads."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op threads; 0 (default): torch's own, one per core",
    )
    return parser.parse_args()
