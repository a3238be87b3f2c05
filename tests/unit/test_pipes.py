"""service.runtime.pipes: jobs and answers between real processes, batched per message."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
from collections.abc import Callable
from typing import Any

import pytest

from service.core.messages import Envelope, PredictJob, PredictResult
from service.runtime.pipes import PipeSet, PipeWorkerChannel, WorkerPipes
from service.runtime.routing import PipeRequestChannel

pytestmark = pytest.mark.unit


def echo_worker(pipes: WorkerPipes, total: int) -> None:
    """A worker that answers ``total`` jobs with their inputs doubled, one flush per receive."""
    channel = PipeWorkerChannel(pipes)
    channel.announce()
    answered = 0
    while answered < total:
        envelopes = channel.receive(5.0)
        answered += len(envelopes)
        for envelope in envelopes:
            assert isinstance(envelope.job, PredictJob)
            channel.send(envelope.reply_to, envelope.uid, PredictResult([2 * x for x in envelope.job.inputs]))
        channel.flush()


def job(*inputs: Any) -> PredictJob:
    return PredictJob(list(inputs), arrived=0.0, deadline=1e12)


def test_pipe_set_has_one_pair_of_pipes_per_api_server_and_worker(make_pipes: Callable[..., PipeSet]) -> None:
    pipes = make_pipes({"a": 2, "b": 1}, api_servers=3)
    assert [len(w.jobs) for w in pipes.workers["a"]] == [3, 3]
    assert len(pipes.workers["b"]) == 1
    assert [len(server["a"]) for server in pipes.servers] == [2, 2, 2]
    # API server 1's job pipe to worker a/0 is read by that worker's end number 1
    pipes.servers[1]["a"][0].jobs.send([Envelope(1, "u", job(1))])
    channel = PipeWorkerChannel(pipes.workers["a"][0])
    assert channel.receive(1.0) == [Envelope(1, "u", job(1))]


def test_worker_takes_everything_waiting_in_one_receive_and_answers_once_per_server(
    make_pipes: Callable[..., PipeSet],
) -> None:
    pipes = make_pipes({"m": 1}, api_servers=2)
    for server in (0, 1):
        pipes.servers[server]["m"][0].jobs.send([Envelope(server, f"{server}-{i}", job(i)) for i in range(3)])
    worker = PipeWorkerChannel(pipes.workers["m"][0])
    envelopes = worker.receive(1.0)
    assert sorted(e.uid for e in envelopes) == ["0-0", "0-1", "0-2", "1-0", "1-1", "1-2"]
    assert worker.receive(0) == []
    for envelope in envelopes:
        worker.send(envelope.reply_to, envelope.uid, PredictResult([envelope.uid]))
    answers = pipes.servers[0]["m"][0].answers
    assert not answers.poll()  # nothing is delivered before flush
    worker.flush()
    for server in (0, 1):
        conn = pipes.servers[server]["m"][0].answers
        message = conn.recv()
        assert [uid for uid, _ in message] == [f"{server}-{i}" for i in range(3)]
        assert not conn.poll()  # one message per API server


def test_requests_round_trip_through_a_spawned_worker(make_pipes: Callable[..., PipeSet]) -> None:
    pipes = make_pipes({"m": 1}, api_servers=1)
    process = mp.get_context("spawn").Process(target=echo_worker, args=(pipes.workers["m"][0], 21))
    process.start()
    try:

        async def scenario() -> list[Any]:
            channel = PipeRequestChannel(pipes, lambda: 0)
            boxes = [channel.open() for _ in range(20)]
            for index, box in enumerate(boxes):
                await channel.put("m", box, job(index))
            answers = [await asyncio.wait_for(box.receive(), 60) for box in boxes]
            for box in boxes:
                box.close()
            # and one more after those are answered
            box = channel.open()
            await channel.put("m", box, job(100))
            answers.append(await asyncio.wait_for(box.receive(), 60))
            box.close()
            return answers

        answers = asyncio.run(scenario())
        assert answers[:20] == [PredictResult([2 * i]) for i in range(20)]
        assert answers[20] == PredictResult([200])
    finally:
        process.join(timeout=30)
        if process.is_alive():
            process.kill()
    assert process.exitcode == 0


def test_jobs_go_to_the_worker_with_the_fewest_outstanding(make_pipes: Callable[..., PipeSet]) -> None:
    pipes = make_pipes({"m": 2}, api_servers=1)

    async def scenario() -> None:
        channel = PipeRequestChannel(pipes, lambda: 0)
        first, second, third = channel.open(), channel.open(), channel.open()
        await channel.put("m", first, job(1))
        await channel.put("m", second, job(2))
        assert first.link is not None and second.link is not None
        assert {first.link.index, second.link.index} == {0, 1}
        assert first.link is not second.link
        link = first.link
        first.close()  # its worker now has nothing outstanding: it gets the next job
        await channel.put("m", third, job(3))
        assert third.link is link
        await asyncio.sleep(0)  # the jobs are written at the end of this turn of the loop

    asyncio.run(scenario())
    received = [PipeWorkerChannel(w).receive(5.0) for w in pipes.workers["m"]]
    assert sorted(len(r) for r in received) == [1, 2]
