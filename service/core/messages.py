"""The messages between API servers and inference workers, defined once.

An API server sends one job per request (:class:`PredictJob` or :class:`FileJob`) in an
:class:`Envelope` that says where to answer; the worker answers with :data:`Answer` messages:
one :class:`PredictResult` or :class:`Failure` for a predict job; for a file job a
:class:`FileProgress` per batch, then :class:`FileDone` (or a :class:`Failure`).

The channels they travel on are narrow interfaces (:class:`RequestChannel` and
:class:`Mailbox` on the API-server side) so that the transport under them can change without
touching a protocol or the dispatch core; ``service.runtime.routing`` implements them on
the pipes to the workers. Everything here is picklable and torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

FileFormat = Literal["jsonl", "csv", "txt", "tar", "zip"]  # a folder is for the command line only


@dataclass(frozen=True)
class PredictJob:
    """Run the model on ``inputs`` (already validated) and answer with their outputs, in order."""

    inputs: list[Any]
    arrived: float  # time.monotonic() when the request reached the API server
    deadline: float  # time.monotonic() past which the answer is useless (the client got a 504)


@dataclass(frozen=True)
class FileJob:
    """Run the model over a spooled input file, appending NDJSON results to ``target``."""

    source: str  # the spooled upload; its removal tells the worker the client went away
    target: str  # the output spool file the API server streams as it grows
    format: FileFormat
    input_key: str | None  # as the client gave it (None: the model's default keys)
    id_key: str
    arrived: float


Job = PredictJob | FileJob


@dataclass(frozen=True)
class Envelope:
    """A job on a model's request queue, with where its answers go."""

    reply_to: int  # the API server's response queue id
    uid: str  # the request's id within that API server
    job: Job


@dataclass(frozen=True)
class PredictResult:
    """The answer to a :class:`PredictJob`: one output per input, in input order."""

    outputs: list[Any]
    tokens: int = 0  # input tokens the model counted (0 when it does not count them)


@dataclass(frozen=True)
class Failure:
    """The request failed; ``status`` is the HTTP status the client gets."""

    status: int
    message: str
    retry_after: bool = False  # the client may retry at once (answered with ``Retry-After``)


@dataclass(frozen=True)
class FileProgress:
    """The first ``ready`` bytes of the output spool file are complete NDJSON lines."""

    ready: int


@dataclass(frozen=True)
class FileDone:
    """The file is finished: ``ready`` bytes in all, ``records`` lines of which ``errors`` are errors."""

    ready: int
    records: int
    errors: int


Answer = PredictResult | Failure | FileProgress | FileDone


@dataclass(frozen=True)
class WorkerReady:
    """A worker's first message to each API server: it has loaded its model and reads its jobs."""

    pid: int


class Mailbox(Protocol):
    """Where the answers to one request arrive, in order, in the API server that sent it."""

    @property
    def uid(self) -> str: ...

    async def receive(self) -> Answer:
        """The next answer; waits until one arrives."""
        ...

    def close(self) -> None:
        """Stop receiving: later answers for this uid are dropped. Idempotent."""
        ...

    def abandon(self) -> None:
        """The client went away: should its worker die, the request is not sent again."""
        ...


class RequestChannel(Protocol):
    """How an API server hands jobs to a model's workers."""

    def open(self) -> Mailbox:
        """A new mailbox with a fresh uid, ready before any job is sent, so no answer is missed."""
        ...

    async def put(self, model: str, mailbox: Mailbox, job: Job) -> None:
        """Queue ``job`` for ``model``'s workers; its answers go to ``mailbox``."""
        ...

    def ready_workers(self) -> dict[str, int]:
        """Per model, how many of its workers this API server can send jobs to now."""
        ...
