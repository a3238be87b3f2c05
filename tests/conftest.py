"""Shared fixtures. Tests are marked by folder: unit/, integration/, e2e/.

prometheus_client reads PROMETHEUS_MULTIPROC_DIR when first imported, so it is set here,
before any test module imports the service.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ServerProcess, left_behind  # imports no part of the service (nor prometheus_client)

_OWN_METRICS_DIR = None
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _OWN_METRICS_DIR = tempfile.mkdtemp(prefix="inference-test-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _OWN_METRICS_DIR
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# backend decisions and exports: the run's own folder, so that a decision made on this machine
# outside the tests (python -m service tune) never changes what the tests' servers run
_OWN_CACHE_DIR = tempfile.mkdtemp(prefix="inference-test-cache-")
os.environ["SERVICE_CACHE_DIR"] = _OWN_CACHE_DIR

ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).relative_to(ROOT / "tests").parts
        if parts and parts[0] in ("unit", "integration", "e2e"):
            item.add_marker(getattr(pytest.mark, parts[0]))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if its servers left anything in the temp directory."""
    if _OWN_METRICS_DIR is not None:
        shutil.rmtree(_OWN_METRICS_DIR, ignore_errors=True)
    shutil.rmtree(_OWN_CACHE_DIR, ignore_errors=True)
    left = left_behind()
    if left and exitstatus == 0:
        print(f"\nthe test run left these in {tempfile.gettempdir()}: {left}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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
