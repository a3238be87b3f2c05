"""The dispatch core without a server: an in-memory channel stands in for LitServe's queues,
and the tests play the worker's part by answering (or not) each job they see."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from service.api.dispatch import Deadline, Dispatcher, request_deadline
from service.api.errors import ApiError
from service.core.messages import (
    Answer,
    Failure,
    FileDone,
    FileJob,
    FileProgress,
    Job,
    PredictJob,
    PredictResult,
)

T = TypeVar("T")
MODEL = "dispatch-test"
LONG = 60.0  # a deadline no test reaches


class MemoryMailbox:
    def __init__(self, uid: str, channel: MemoryChannel) -> None:
        self._uid = uid
        self._channel = channel
        self._answers: asyncio.Queue[Answer] = asyncio.Queue()
        self.closed = False
        self.abandoned = False

    @property
    def uid(self) -> str:
        return self._uid

    async def receive(self) -> Answer:
        return await self._answers.get()

    def close(self) -> None:
        self.closed = True
        self._channel.open_mailboxes.pop(self._uid, None)

    def abandon(self) -> None:
        self.abandoned = True

    def deliver(self, answer: Answer) -> None:
        self._answers.put_nowait(answer)


@dataclass
class MemoryChannel:
    """The RequestChannel interface over plain Python objects."""

    jobs: list[tuple[str, MemoryMailbox, Job]] = field(default_factory=list)
    open_mailboxes: dict[str, MemoryMailbox] = field(default_factory=dict)
    fail_put: bool = False
    _count: int = 0

    def open(self) -> MemoryMailbox:
        self._count += 1
        mailbox = MemoryMailbox(f"uid{self._count}", self)
        self.open_mailboxes[mailbox.uid] = mailbox
        return mailbox

    async def put(self, model: str, mailbox: Any, job: Job) -> None:
        if self.fail_put:
            raise ConnectionError("queue is gone")
        self.jobs.append((model, mailbox, job))

    def ready_workers(self) -> dict[str, int]:
        return {MODEL: 1}


@dataclass
class Model:
    name: str = MODEL
    max_queue_size: int = 2
    inflight: Any = field(default_factory=lambda: mp.Value("i", 0))
    out_of_service: bool = False


class Client:
    """A request whose client can hang up."""

    def __init__(self) -> None:
        self.gone = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}


def run(test: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(asyncio.wait_for(test(), timeout=LONG))


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.005)


def make(tmp_path: Path, linger: float = LONG) -> tuple[Dispatcher, MemoryChannel, Any]:
    channel = MemoryChannel()
    flag = mp.Value("b", 0)
    return Dispatcher(channel, flag, tmp_path, linger=linger), channel, flag


def start(
    dispatcher: Dispatcher,
    model: Model,
    inputs: list[Any],
    seconds: float = LONG,
    client: Client | None = None,
) -> asyncio.Task[PredictResult]:
    deadline = Deadline(time.monotonic(), seconds)
    return asyncio.ensure_future(dispatcher.predict(model, client or Client(), inputs, deadline))


async def error_of(awaitable: Awaitable[Any]) -> ApiError:
    with pytest.raises(ApiError) as info:
        await awaitable
    return info.value


def test_answers_arrive_in_order_and_the_slot_is_released(tmp_path: Path) -> None:
    async def scenario() -> None:
        dispatcher, channel, _ = make(tmp_path)
        model = Model()
        task = start(dispatcher, model, [1, 2])
        await until(lambda: len(channel.jobs) == 1)
        name, mailbox, job = channel.jobs[0]
        assert name == MODEL and isinstance(job, PredictJob) and job.inputs == [1, 2]
        assert job.deadline > job.arrived
        assert model.inflight.value == 1
        mailbox.deliver(PredictResult(["a", "b"]))
        result = await task
        assert result.outputs == ["a", "b"] and result.tokens == 0
        assert model.inflight.value == 0 and not channel.open_mailboxes

    run(scenario)


def test_admission_is_bounded_by_the_queue_size(tmp_path: Path) -> None:
    async def scenario() -> None:
        dispatcher, channel, _ = make(tmp_path)
        model = Model(max_queue_size=2)
        first, second = start(dispatcher, model, [1]), start(dispatcher, model, [2])
        await until(lambda: len(channel.jobs) == 2)
        with pytest.raises(ApiError) as precheck:
            dispatcher.precheck(model)
        third = await error_of(dispatcher.predict(model, Client(), [3], Deadline(time.monotonic(), LONG)))
        for error in (precheck.value, third):
            assert error.status == 503 and error.headers == {"Retry-After": "1"}
            assert "2 requests queued" in error.message
        assert len(channel.jobs) == 2 and model.inflight.value == 2
        for _, mailbox, _ in channel.jobs:
            mailbox.deliver(PredictResult([0]))
        await asyncio.gather(first, second)
        assert model.inflight.value == 0
        dispatcher.precheck(model)  # room again

    run(scenario)


def test_shutting_down_refuses_before_anything_is_queued(tmp_path: Path) -> None:
    async def scenario() -> None:
        dispatcher, channel, flag = make(tmp_path)
        model = Model()
        flag.value = 1
        with pytest.raises(ApiError) as precheck:
            dispatcher.precheck(model)
        error = await error_of(dispatcher.predict(model, Client(), [1], Deadline(time.monotonic(), LONG)))
        for refused in (precheck.value, error):
            assert refused.status == 503 and "shutting down" in refused.message
            assert refused.headers == {"Retry-After": "1"}
        assert not channel.jobs and model.inflight.value == 0

    run(scenario)


def test_deadline_is_a_504_and_the_slot_stays_taken_until_the_answer(tmp_path: Path) -> None:
    async def scenario() -> None:
        dispatcher, channel, _ = make(tmp_path)
        model = Model(max_queue_size=1)
        error = await error_of(start(dispatcher, model, [1], seconds=0.05))
        assert error.status == 504 and "0.05 s" in error.message
        # the job may still sit in the worker's queue: the slot is still counted
        assert model.inflight.value == 1
        with pytest.raises(ApiError):
            dispatcher.precheck(model)
        _, mailbox, _ = channel.jobs[0]
        assert not mailbox.closed
        mailbox.deliver(Failure(504, "deadline expired while queued"))
        await until(lambda: model.inflight.value == 0)
        assert mailbox.closed

    run(scenario)


def test_a_504_whose_answer_never_comes_is_released_after_the_linger(tmp_path: Path) -> None:
    async def scenario() -> None:
        dispatcher, channel, _ = make(tmp_path, linger=0.05)
        model = Model()
        error = await error_of(start(dispatcher, model, [1], seconds=0.01))
        assert error.status == 504
        await until(lambda: model.inflight.value == 0)
        assert not channel.open_mailboxes

    run(scenario)


@pytest.mark.parametrize(
    ("failure", "status"),
    [
        (Failure(500, "model error: RuntimeError"), 500),
        (Failure(503, "the inference worker died"), 503),
        (Failure(503, "no live worker", retry_after=True), 503),
        (Failure(499, "client closed the request"), 499),
        (FileProgress(10), 503),  # not an answer to a predict job
    ],
)
def test_a_worker_failure_becomes_its_status(tmp_path: Path, failure: Answer, status: int) -> None:
    async def scenario() -> None:
        dispatcher, channel, _ = make(tmp_path)
        model = Model()
        task = start(dispatcher, model, [1])
        await until(lambda: len(channel.jobs) == 1)
        channel.jobs[0][1].deliver(failure)
        error = await error_of(task)
        assert error.status == status
        if isinstance(failure, Failure):
            assert error.message == failure.message
            assert error.headers == ({"Retry-After": "1"} if failure.retry_after else {})
        assert model.inflight.value == 0 and not channel.open_mailboxes

    run(scenario)


def test_a_client_that_goes_away_leaves_a_cancel_marker_until_the_worker_drops_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        dispatcher, channel, _ = make(tmp_path)
        model = Model()
        client = Client()
        task = start(dispatcher, model, [1], client=client)
        await until(lambda: len(channel.jobs) == 1)
        _, mailbox, _ = channel.jobs[0]
        client.gone.set()
        marker = tmp_path / f"{mailbox.uid}.cancel"
        await until(marker.exists)
        assert model.inflight.value == 1  # the job still holds its queue slot
        assert mailbox.abandoned  # should its worker die, it is not sent again
        mailbox.deliver(Failure(499, "client closed the request"))
        error = await error_of(task)
        assert error.status == 499
        assert not marker.exists() and model.inflight.value == 0 and mailbox.closed

    run(scenario)


def test_a_failed_enqueue_releases_the_slot(tmp_path: Path) -> None:
    async def scenario() -> None:
        dispatcher, channel, _ = make(tmp_path)
        channel.fail_put = True
        model = Model()
        with pytest.raises(ConnectionError):
            await start(dispatcher, model, [1])
        assert model.inflight.value == 0 and not channel.open_mailboxes

    run(scenario)


def test_a_cancelled_request_releases_the_slot(tmp_path: Path) -> None:
    async def scenario() -> None:
        dispatcher, channel, _ = make(tmp_path)
        model = Model()
        task = start(dispatcher, model, [1])
        await until(lambda: len(channel.jobs) == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert model.inflight.value == 0 and not channel.open_mailboxes

    run(scenario)


def file_job() -> FileJob:
    return FileJob("in", "out", "jsonl", "input", "id", 0.0)


def test_file_answers_stream_until_done_and_close_releases(tmp_path: Path) -> None:
    async def scenario() -> None:
        dispatcher, channel, _ = make(tmp_path)
        model = Model()
        submitted = asyncio.ensure_future(dispatcher.submit_file(model, file_job()))
        await until(lambda: len(channel.jobs) == 1)
        _, mailbox, job = channel.jobs[0]
        assert job == file_job()
        for answer in (FileProgress(10), FileProgress(25), FileDone(25, 3, 1), FileProgress(99)):
            mailbox.deliver(answer)
        answers = await submitted
        seen = [answer async for answer in answers]
        assert seen == [FileProgress(10), FileProgress(25), FileDone(25, 3, 1)]
        assert model.inflight.value == 1
        answers.close()
        answers.close()  # idempotent
        assert model.inflight.value == 0 and mailbox.closed

    run(scenario)


def test_a_file_refused_by_the_worker_is_an_error_and_released(tmp_path: Path) -> None:
    async def scenario() -> None:
        dispatcher, channel, _ = make(tmp_path)
        model = Model()
        submitted = asyncio.ensure_future(dispatcher.submit_file(model, file_job()))
        await until(lambda: len(channel.jobs) == 1)
        channel.jobs[0][1].deliver(Failure(400, "line 1: not JSON"))
        error = await error_of(submitted)
        assert (error.status, error.message) == (400, "line 1: not JSON")
        assert model.inflight.value == 0 and not channel.open_mailboxes

    run(scenario)


@pytest.mark.parametrize(
    ("header", "seconds", "status"),
    [
        (None, 30.0, None),
        ("5", 5.0, None),
        ("500", 120.0, None),
        ("x", 0, 400),
        ("-1", 0, 400),
        ("nan", 0, 400),
    ],
)
def test_request_deadline(header: str | None, seconds: float, status: int | None) -> None:
    headers = {} if header is None else {"x-request-timeout": header}
    if status is None:
        deadline = request_deadline(headers, 100.0, 30.0, 120.0)
        assert deadline.seconds == seconds and deadline.at == 100.0 + seconds
    else:
        with pytest.raises(ApiError) as info:
            request_deadline(headers, 100.0, 30.0, 120.0)
        assert info.value.status == status
