"""The dispatch core every protocol uses to get an answer from a model's workers.

One path for every request: refuse early when it could not be admitted (:meth:`Dispatcher.precheck`,
before the body is read); admit it into the model's bounded queue; send the job; wait for the
answer until the deadline; leave a cancel marker if the client goes away first; after a 504 keep
the slot until the worker drops or answers the request (so the bound keeps bounding the real
queue); release the slot on every path. Failures are :class:`ApiError` (status, message,
headers) for the protocol module to render in its own shape.

It knows the workers only through :class:`service.core.messages.RequestChannel`, so a test can
drive it with an in-memory channel and no server.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from service import metrics
from service.api.errors import ApiError, current_request_id
from service.core.messages import (
    Answer,
    Failure,
    FileDone,
    FileJob,
    Mailbox,
    PredictJob,
    PredictResult,
    RequestChannel,
)
from service.core.spool import cancel_marker, remove_quietly
from service.settings import Settings

logger = logging.getLogger("service.api.dispatch")

TIMEOUT_HEADER = "x-request-timeout"
RETRY_AFTER = {"Retry-After": "1"}
WORKER_FAILED = "the inference worker failed while handling this request; retry"
MODEL_FAILED = (
    "model {model!r} is out of service: its inference worker failed to start 3 times in a row "
    "after the model had served; the other models are still served; see the server log, then restart"
)


class QueuedModel(Protocol):
    """What admission needs to know of a model (``service.api.state.ModelRoute``)."""

    @property
    def name(self) -> str: ...

    max_queue_size: int
    inflight: Any  # multiprocessing.Value("i"): requests admitted and not yet released, all API servers

    @property
    def out_of_service(self) -> bool: ...  # its workers keep failing: refuse with 503


class Flag(Protocol):
    value: int  # multiprocessing.Value("b"): nonzero once the server is shutting down


class Receiver(Protocol):
    """A request with its ASGI receive channel (how a client disconnect is noticed)."""

    @property
    def receive(self) -> Callable[[], Awaitable[MutableMapping[str, Any]]]: ...


@dataclass(frozen=True)
class Deadline:
    """When a request stops being worth answering: ``seconds`` after it ``arrived`` (monotonic)."""

    arrived: float
    seconds: float

    @property
    def at(self) -> float:
        return self.arrived + self.seconds

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())


def deadline_for(headers: Mapping[str, str], settings: Settings, arrived: float) -> Deadline:
    """:func:`request_deadline` under the service's settings: ``request_timeout`` by default,
    ``max_request_timeout`` at most."""
    return request_deadline(headers, arrived, settings.request_timeout, settings.max_request_timeout)


def request_deadline(headers: Mapping[str, str], arrived: float, default: float, maximum: float) -> Deadline:
    """The deadline a request asks for with ``X-Request-Timeout`` (seconds, capped at ``maximum``),
    else ``default``; 400 for a value that is not a positive number."""
    raw = headers.get(TIMEOUT_HEADER)
    if raw is None:
        return Deadline(arrived, default)
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(400, f"{TIMEOUT_HEADER} must be a number of seconds, got {raw[:40]!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ApiError(400, f"{TIMEOUT_HEADER} must be a positive number of seconds")
    return Deadline(arrived, min(value, maximum))


class FileAnswers:
    """The answers to an admitted file job, from its first :class:`FileProgress` to :class:`FileDone`
    or a :class:`Failure`. :meth:`close` releases the slot; call it however the stream ends."""

    def __init__(self, first: Answer, mailbox: Mailbox, release: Any) -> None:
        self.first = first
        self._mailbox = mailbox
        self._release = release
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[Answer]:
        answer = self.first
        while True:
            yield answer
            if isinstance(answer, FileDone | Failure):
                return
            answer = await self._mailbox.receive()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._mailbox.close()
        self._release()


class Dispatcher:
    """Admission, deadlines and answers for every protocol, in one API server process."""

    def __init__(self, channel: RequestChannel, shutting_down: Flag, spool_dir: Path, linger: float) -> None:
        """``linger``: how long, at most, a slot stays taken after a 504 while the worker may
        still hold the request (the longest deadline a client may ask for)."""
        self.channel = channel
        self.shutting_down = shutting_down
        self.spool_dir = spool_dir
        self.linger = linger
        self._background: set[asyncio.Future[None]] = set()

    def precheck(self, model: QueuedModel) -> None:
        """Refuse early, before the body is read and parsed, when the request could not be admitted."""
        self._refuse_when_shutting_down(model)
        self._refuse_when_out_of_service(model)
        if model.inflight.value >= model.max_queue_size:
            self._refuse_queue_full(model)

    def admit(self, model: QueuedModel) -> None:
        """Count the request in; 503 when shutting down, the model is out of service or its queue
        is full."""
        self._refuse_when_shutting_down(model)
        self._refuse_when_out_of_service(model)
        with model.inflight.get_lock():
            full = model.inflight.value >= model.max_queue_size
            if not full:
                model.inflight.value += 1
        if full:
            self._refuse_queue_full(model)
        metrics.IN_FLIGHT.labels(model.name).inc()

    def release(self, model: QueuedModel) -> None:
        metrics.IN_FLIGHT.labels(model.name).dec()
        with model.inflight.get_lock():
            model.inflight.value -= 1

    async def predict(
        self, model: QueuedModel, request: Receiver, inputs: list[Any], deadline: Deadline
    ) -> PredictResult:
        """Admit, send the inputs to the model's workers and wait for their outputs until the
        deadline. A client that goes away leaves a cancel marker so that the worker drops the
        request instead of computing it (499)."""
        self.admit(model)
        mailbox: Mailbox | None = None
        answer: asyncio.Future[Answer] | None = None
        cancel: Path | None = None
        owned = True  # False once a 504 hands the slot to _release_when_answered
        disconnected = asyncio.ensure_future(wait_disconnect(request))
        try:
            mailbox = self.channel.open()
            await self.channel.put(model.name, mailbox, PredictJob(inputs, deadline.arrived, deadline.at))
            answer = asyncio.ensure_future(mailbox.receive())
            done, _ = await asyncio.wait(
                {answer, disconnected}, timeout=deadline.remaining(), return_when="FIRST_COMPLETED"
            )
            if disconnected in done and answer not in done:
                mailbox.abandon()
                cancel = cancel_marker(self.spool_dir, mailbox.uid)
                cancel.touch()
                # keep the admission until the worker drops it (or the deadline): it still holds a queue slot
                await asyncio.wait({answer}, timeout=deadline.remaining())
                raise ApiError(499, "client closed the request")
            if answer not in done:
                metrics.REJECTED.labels(model.name, "deadline").inc()
                owned = False
                background = asyncio.ensure_future(self._release_when_answered(model, mailbox, answer))
                self._background.add(background)
                background.add_done_callback(self._background.discard)
                raise ApiError(504, f"no answer within the deadline of {deadline.seconds:g} s")
            return self._result(model, answer.result())
        finally:
            disconnected.cancel()
            if owned:
                if answer is not None:
                    answer.cancel()
                if mailbox is not None:
                    mailbox.close()
                if cancel is not None:
                    remove_quietly(cancel)
                self.release(model)

    async def submit_file(self, model: QueuedModel, job: FileJob) -> FileAnswers:
        """Admit a file job, send it and wait for its first answer (the file's first batch, or
        why it failed). The returned answers own the slot until their ``close()``."""
        self.admit(model)
        mailbox: Mailbox | None = None
        try:
            mailbox = self.channel.open()
            await self.channel.put(model.name, mailbox, job)
            first = await mailbox.receive()
            if isinstance(first, Failure):
                raise self._error(model, first)
        except BaseException:
            if mailbox is not None:
                mailbox.close()
            self.release(model)
            raise
        return FileAnswers(first, mailbox, lambda: self.release(model))

    async def _release_when_answered(self, model: QueuedModel, mailbox: Mailbox, answer: Any) -> None:
        """After a 504 the request may still sit in the queue: its slot stays taken until the
        worker drops or answers it, so the bound keeps bounding the real queue."""
        try:
            await asyncio.wait({answer}, timeout=self.linger)
        finally:
            answer.cancel()
            mailbox.close()
            self.release(model)

    def _result(self, model: QueuedModel, answer: Answer) -> PredictResult:
        if isinstance(answer, PredictResult):
            return answer
        if isinstance(answer, Failure):
            raise self._error(model, answer)
        logger.error(
            "model %s: request %s got %r instead of outputs", model.name, current_request_id(), answer
        )
        raise ApiError(503, WORKER_FAILED)

    def _error(self, model: QueuedModel, failure: Failure) -> ApiError:
        if failure.status >= 500 and failure.status != 504:  # 504s are load, not faults
            logger.warning(
                "model %s: request %s failed with %d: %s",
                model.name,
                current_request_id(),
                failure.status,
                failure.message,
            )
        return ApiError(failure.status, failure.message, dict(RETRY_AFTER) if failure.retry_after else None)

    def _refuse_when_shutting_down(self, model: QueuedModel) -> None:
        if self.shutting_down.value:
            metrics.REJECTED.labels(model.name, "shutting_down").inc()
            raise ApiError(503, "server is shutting down; retry on another replica", dict(RETRY_AFTER))

    def _refuse_when_out_of_service(self, model: QueuedModel) -> None:
        if model.out_of_service:
            raise ApiError(503, MODEL_FAILED.format(model=model.name))

    def _refuse_queue_full(self, model: QueuedModel) -> None:
        metrics.REJECTED.labels(model.name, "queue_full").inc()
        raise ApiError(
            503,
            f"model {model.name!r} has {model.max_queue_size} requests queued; retry later",
            dict(RETRY_AFTER),
        )


async def wait_disconnect(request: Receiver) -> None:
    """Returns when the client closes the connection (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
