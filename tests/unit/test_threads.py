"""service.worker.threads: fewer torch threads while the backlog shows overload, all of them otherwise."""

from __future__ import annotations

import pytest

from service.worker.threads import ThreadGovernor

pytestmark = pytest.mark.unit


def governor(full: int = 2, under_load: int = 1) -> tuple[ThreadGovernor, list[int]]:
    calls: list[int] = []
    return ThreadGovernor(full, under_load, high=128, low=32, set_threads=calls.append), calls


def test_switches_down_above_high_and_back_below_low_only() -> None:
    threads, calls = governor()
    assert [threads.update(waiting) for waiting in (0, 64, 128, 129, 200, 64, 32, 31, 100)] == [
        2, 2, 2, 1, 1, 1, 1, 2, 2,
    ]  # fmt: skip
    assert calls == [1, 2]  # torch is told only when the count changes


def test_never_changes_when_not_adaptive() -> None:
    for full, under_load in ((2, 0), (1, 1), (2, 2)):
        threads, calls = governor(full, under_load)
        assert not threads.adaptive
        assert [threads.update(waiting) for waiting in (0, 500, 0)] == [full] * 3
        assert calls == []


def test_rejects_thresholds_in_the_wrong_order() -> None:
    with pytest.raises(ValueError, match="low"):
        ThreadGovernor(2, 1, high=10, low=20, set_threads=lambda _: None)
