"""Fixtures of the unit tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from service.runtime.pipes import PipeSet


@pytest.fixture
def make_pipes() -> Iterator[Callable[..., PipeSet]]:
    """PipeSets that are closed after the test (their control sockets included)."""
    made: list[PipeSet] = []

    def make(workers: dict[str, int], api_servers: int) -> PipeSet:
        made.append(PipeSet(workers, api_servers))
        return made[-1]

    yield make
    for pipes in made:
        pipes.close()
