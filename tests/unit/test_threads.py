"""service.worker.threads: all cores alone, a share beside a computing peer, fewer when overloaded."""

from __future__ import annotations

import math
import multiprocessing as mp

import pytest

from service.worker.threads import ComputeTimes, ThreadGovernor

pytestmark = pytest.mark.unit


def governor(shared: int = 2, under_load: int = 1, alone: int = 0) -> tuple[ThreadGovernor, list[int]]:
    calls: list[int] = []
    return ThreadGovernor(shared, under_load, high=128, low=32, set_threads=calls.append, alone=alone), calls


def test_switches_down_above_high_and_back_below_low_only() -> None:
    threads, calls = governor()
    assert [threads.update(waiting) for waiting in (0, 64, 128, 129, 200, 64, 32, 31, 100)] == [
        2, 2, 2, 1, 1, 1, 1, 2, 2,
    ]  # fmt: skip
    assert calls == [1, 2]  # torch is told only when the count changes


def test_never_changes_when_not_adaptive() -> None:
    for shared, under_load in ((2, 0), (1, 1), (2, 2)):
        threads, calls = governor(shared, under_load)
        assert not threads.adaptive
        assert [
            threads.update(waiting, peers) for waiting, peers in ((0, False), (500, True), (0, False))
        ] == [shared] * 3
        assert calls == []


def test_all_cores_alone_a_share_beside_a_peer() -> None:
    threads, calls = governor(shared=1, under_load=0, alone=2)
    assert threads.adaptive
    assert [threads.update(0, peers) for peers in (False, False, True, True, False)] == [2, 2, 1, 1, 2]
    assert calls == [2, 1, 2]


def test_overload_wins_over_being_alone() -> None:
    threads, _ = governor(shared=2, under_load=1, alone=4)
    assert threads.update(0) == 4
    assert threads.update(0, peers_active=True) == 2
    assert threads.update(200) == 1  # overloaded, alone or not
    assert threads.update(64, peers_active=False) == 1  # hysteresis: still above low
    assert threads.update(0) == 4


def test_rejects_thresholds_in_the_wrong_order() -> None:
    with pytest.raises(ValueError, match="low"):
        ThreadGovernor(2, 1, high=10, low=20, set_threads=lambda _: None)


def test_a_peer_counts_while_computing_and_for_the_quiet_time_after() -> None:
    times = [0.0, 0.0]
    me, peer = ComputeTimes(times, 0, quiet=0.1), ComputeTimes(times, 1, quiet=0.1)
    assert not me.peers_active(now=1000.0)
    with peer.forward():
        assert times[1] == math.inf
        assert me.peers_active(now=1000.0)
        assert not peer.peers_active()  # its own entry is not a peer
    ended = times[1]
    assert 0 < ended < math.inf
    assert me.peers_active(now=ended + 0.05)
    assert not me.peers_active(now=ended + 0.2)


def test_the_entry_is_cleared_when_the_forward_fails() -> None:
    times = [0.0, 0.0]
    entry = ComputeTimes(times, 1)
    with pytest.raises(RuntimeError), entry.forward():
        raise RuntimeError("forward failed")
    assert times[1] != math.inf


def test_a_replacement_worker_clears_the_entry_its_predecessor_left_set() -> None:
    times = mp.RawArray("d", 2)  # what the launcher shares between a model's workers
    times[0] = math.inf  # worker 0 was killed in the middle of a forward
    observer = ComputeTimes(times, 1)
    assert observer.peers_active()
    ComputeTimes(times, 0)  # its replacement starts
    assert not observer.peers_active()


def test_rejects_an_index_outside_the_array() -> None:
    with pytest.raises(ValueError, match="outside"):
        ComputeTimes([0.0, 0.0], 2)


@pytest.mark.parametrize(
    ("cpus", "api_servers", "workers", "expected"),
    [
        # (shared, alone, under load) per worker of a model with `workers` workers, the only model
        (2, 1, 1, (2, 2, 1)),  # one worker: every core, fewer only when overloaded
        (2, 1, 2, (1, 2, 0)),  # the default on 2 cores: one each side by side, both alone
        (4, 1, 2, (2, 4, 1)),
        (16, 2, 2, (8, 16, 7)),
        (3, 1, 4, (1, 3, 0)),  # more workers than cores: never fewer than one thread
    ],
)
def test_thread_counts_follow_the_cores_and_the_workers(
    cpus: int, api_servers: int, workers: int, expected: tuple[int, int, int]
) -> None:
    from service.runtime.launcher import threads_alone, threads_under_load, torch_threads
    from service.settings import Settings

    settings = Settings(cpus=cpus, num_api_servers=api_servers)
    shared = torch_threads(settings, workers)
    assert (
        shared,
        threads_alone(settings, workers, workers, shared),
        threads_under_load(settings, workers, shared),
    ) == expected


def test_explicit_torch_threads_are_never_changed() -> None:
    from service.runtime.launcher import threads_alone, threads_under_load, torch_threads
    from service.settings import Settings

    settings = Settings(cpus=8, torch_threads=3)
    assert torch_threads(settings, 2) == 3
    assert threads_alone(settings, 2, 2, 3) == 3
    assert threads_under_load(settings, 2, 3) == 0
