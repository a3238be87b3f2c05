"""Shared fixtures. Tests are marked by folder: unit/, integration/, e2e/.

prometheus_client reads PROMETHEUS_MULTIPROC_DIR when first imported, so it is set here,
before any test module imports the service.
"""

from __future__ import annotations

import os
import tempfile

if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    import atexit
    import shutil

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="inference-test-metrics-")
    atexit.register(shutil.rmtree, os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ServerProcess

ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).relative_to(ROOT / "tests").parts
        if parts and parts[0] in ("unit", "integration", "e2e"):
            item.add_marker(getattr(pytest.mark, parts[0]))


@pytest.fixture(scope="session")
def server() -> Iterator[ServerProcess]:
    """A real `python -m service serve` on a free loopback port, serving minilm and reference."""
    with ServerProcess(serve=["minilm", "reference"]) as process:
        yield process


API_KEY = "protocol-test-key"


@pytest.fixture(scope="session")
def keyed_server() -> Iterator[ServerProcess]:
    """A real server with an API key configured (``API_KEY``), serving the small reference model."""
    with ServerProcess(serve=["reference"], env={"SERVICE_API_KEYS": f'["{API_KEY}"]'}) as process:
        yield process
