"""service.runtime.routing: an API server owns what it sent, and sends it again when a worker dies.

The worker ends are driven by hand in this process; ``PipeSet.renew`` is what the launcher
does the moment a worker process ends.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from service.core.messages import Failure, FileJob, PredictJob, PredictResult
from service.runtime.frames import encode
from service.runtime.pipes import PipeSet, PipeWorkerChannel
from service.runtime.routing import FILE_LOST, PipeMailbox, PipeRequestChannel

pytestmark = pytest.mark.unit


def job(*inputs: Any, deadline: float = 1e12) -> PredictJob:
    return PredictJob(list(inputs), arrived=0.0, deadline=deadline)


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    await asyncio.sleep(0)  # what was queued in this turn of the loop is written first
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 30))


def answers_now(mailbox: PipeMailbox) -> list[Any]:
    """The answers delivered so far, without waiting."""
    return list(mailbox._answers)


def test_a_dead_workers_requests_are_sent_to_the_live_one_and_answered_once(
    make_pipes: Callable[..., PipeSet],
) -> None:
    pipes = make_pipes({"m": 2}, api_servers=1)
    first, second = (PipeWorkerChannel(p) for p in pipes.workers["m"])
    first.announce()
    second.announce()

    async def scenario() -> None:
        channel = PipeRequestChannel(pipes, lambda: 0)
        boxes = [channel.open() for _ in range(4)]
        for index, box in enumerate(boxes):
            await channel.put("m", box, job(index))
        await until(lambda: channel.ready_workers() == {"m": 2})
        held = first.receive(5.0)
        assert len(held) == 2  # two each, by fewest outstanding
        # the first worker finished one request, was writing the other's answer, and died
        first.send(0, held[0].uid, PredictResult(["before it died"]))
        first.flush()
        half = encode([(held[1].uid, PredictResult(["never complete"]))])
        os.write(pipes.workers["m"][0].answers[0].fileno(), half[: len(half) // 2])
        pipes.renew("m", 0)
        by_uid = {box.uid: box for box in boxes}
        await until(lambda: answers_now(by_uid[held[0].uid]) == [PredictResult(["before it died"])])
        # the other one is the live worker's now, with its original job
        resent: list[Any] = []
        await until(lambda: bool(resent.extend(second.receive(0)) or len(resent) == 3))
        assert held[1].uid in {e.uid for e in resent}
        assert {e.uid: e.job for e in resent}[held[1].uid] == held[1].job
        for envelope in resent:
            second.send(0, envelope.uid, PredictResult([envelope.job.inputs[0] * 10]))
        second.flush()
        for box in boxes:
            await until(lambda box=box: bool(answers_now(box)))
        answers = [await box.receive() for box in boxes]
        assert sum(a == PredictResult(["before it died"]) for a in answers) == 1
        assert PredictResult(["never complete"]) not in answers
        assert all(not answers_now(box) for box in boxes)  # each answered exactly once
        # the replacement gets jobs only once it says it is ready
        assert channel.ready_workers() == {"m": 1}
        extra = channel.open()
        await channel.put("m", extra, job(7))
        assert extra.link is not None and extra.link.index == 1
        replacement = PipeWorkerChannel(pipes.workers["m"][0])
        replacement.announce()
        await until(lambda: channel.ready_workers() == {"m": 2})
        later = channel.open()
        await channel.put("m", later, job(8))
        assert later.link is not None and later.link.index == 0 and later.link.generation == 1

    run(scenario)


def test_with_no_live_worker_left_every_request_is_answered_at_once(
    make_pipes: Callable[..., PipeSet],
) -> None:
    pipes = make_pipes({"m": 1}, api_servers=1)
    worker = PipeWorkerChannel(pipes.workers["m"][0])
    worker.announce()

    async def scenario() -> None:
        channel = PipeRequestChannel(pipes, lambda: 0)
        waiting, gone, late, upload = (channel.open() for _ in range(4))
        await channel.put("m", waiting, job(1))
        await channel.put("m", gone, job(2))
        await channel.put("m", late, job(3, deadline=time.monotonic() - 1))
        await channel.put("m", upload, FileJob("in", "out", "jsonl", "input", "id", 0.0))
        gone.abandon()
        await until(lambda: channel.ready_workers() == {"m": 1})
        pipes.renew("m", 0)
        for box in (waiting, gone, late, upload):
            await until(lambda box=box: bool(answers_now(box)))
        retry = await waiting.receive()
        assert isinstance(retry, Failure) and retry.status == 503 and retry.retry_after
        assert "replacement is starting" in retry.message
        assert await gone.receive() == Failure(499, "client closed the request")
        answer = await late.receive()
        assert isinstance(answer, Failure) and answer.status == 504
        assert await upload.receive() == Failure(503, FILE_LOST)

    run(scenario)


def test_a_worker_that_stops_reading_does_not_hold_up_the_others(make_pipes: Callable[..., PipeSet]) -> None:
    pipes = make_pipes({"m": 2}, api_servers=1)
    stopped, live = (PipeWorkerChannel(p) for p in pipes.workers["m"])
    stopped.announce()
    live.announce()

    async def scenario() -> None:
        channel = PipeRequestChannel(pipes, lambda: 0)
        await until(lambda: channel.ready_workers() == {"m": 2})
        big, small = channel.open(), channel.open()
        await channel.put("m", big, job("x" * (4 << 20)))  # far more than a pipe holds
        await asyncio.sleep(0)
        assert big.link is not None and big.link.writer.pending > 0  # waits for the pipe to drain
        await channel.put("m", small, job("y"))
        assert small.link is not None and small.link is not big.link
        received: list[Any] = []
        await until(lambda: bool(received.extend(live.receive(0)) or received))
        assert [e.uid for e in received] == [small.uid]
        # and the big one arrives whole once its worker reads again
        taken: list[Any] = []

        async def read_stopped() -> None:
            taken.extend(await asyncio.to_thread(stopped.receive, 5.0))

        await asyncio.gather(read_stopped(), until(lambda: bool(taken)))
        assert taken[0].uid == big.uid and taken[0].job.inputs == ["x" * (4 << 20)]

    run(scenario)
