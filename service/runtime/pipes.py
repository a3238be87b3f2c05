"""The request transport: OS pipes between API servers and inference workers.

LitServe carries each request and each answer through its ``multiprocessing.Manager`` broker:
four pickled round trips through a third process per request. Here every (API server, worker)
pair has two one-way pipes, made by the launcher before LitServe forks the API servers and
spawns the workers (both inherit them): jobs one way, answers the other. A pipe has exactly one
writer and one reader, so no lock is shared that a killed process could leave held, and a
worker's pipes outlive it: jobs it had not read go to its replacement.

The cost is per batch, not per request. An API server's sender thread writes everything that
accumulated for a worker while it was writing as one message; a worker answers each API server
once per forward (:meth:`PipeWorkerChannel.flush`) with every answer for it. Messages are
pickled by ``Connection.send`` and read only by our own processes from pipes nobody else can
open; nothing a client sends is ever unpickled (its bytes arrive as already-validated values).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections import deque
from dataclasses import dataclass
from multiprocessing import Pipe
from multiprocessing.connection import Connection, wait
from typing import Any

from service.core.ids import new_id
from service.core.messages import Answer, Envelope, Job, Mailbox

logger = logging.getLogger("service.runtime")


@dataclass(frozen=True)
class WorkerPipes:
    """One worker's ends: it reads ``jobs[a]`` (from API server ``a``) and writes ``answers[a]``."""

    jobs: tuple[Connection, ...]
    answers: tuple[Connection, ...]


@dataclass(frozen=True)
class ServerPipes:
    """One API server's ends towards one worker."""

    jobs: Connection  # written by the API server
    answers: Connection  # read by the API server


class PipeSet:
    """Every pipe of the service, made once in the launcher (so every process inherits them)."""

    def __init__(self, workers: dict[str, int], api_servers: int) -> None:
        self.api_servers = api_servers
        self.workers: dict[str, tuple[WorkerPipes, ...]] = {}
        # api server -> model -> one ServerPipes per worker index
        self.servers: list[dict[str, tuple[ServerPipes, ...]]] = [{} for _ in range(api_servers)]
        for model, count in workers.items():
            per_worker: list[WorkerPipes] = []
            per_server: list[list[ServerPipes]] = [[] for _ in range(api_servers)]
            for _ in range(count):
                job_ends, answer_ends = [], []
                for server in range(api_servers):
                    job_read, job_write = Pipe(duplex=False)
                    answer_read, answer_write = Pipe(duplex=False)
                    job_ends.append(job_read)
                    answer_ends.append(answer_write)
                    per_server[server].append(ServerPipes(job_write, answer_read))
                per_worker.append(WorkerPipes(tuple(job_ends), tuple(answer_ends)))
            self.workers[model] = tuple(per_worker)
            for server in range(api_servers):
                self.servers[server][model] = tuple(per_server[server])

    def answer(self, model: str, worker: int, reply_to: int, uid: str, answer: Answer) -> None:
        """Answer as ``worker`` would have (the launcher, for requests a dead worker held)."""
        self.workers[model][worker].answers[reply_to].send([(uid, answer)])


class PipeWorkerChannel:
    """A worker's side: every job waiting from any API server; answers sent in bulk at flush."""

    def __init__(self, pipes: WorkerPipes) -> None:
        self._jobs = list(pipes.jobs)
        self._answers = pipes.answers
        self._outbox: dict[int, list[tuple[str, Answer]]] = {}

    def receive(self, timeout: float) -> list[Envelope]:
        """Every job already waiting, after waiting up to ``timeout`` seconds for the first (0:
        no wait); empty if none came."""
        envelopes: list[Envelope] = []
        for conn in _ready(self._jobs, max(0.0, timeout)):
            while conn.poll():
                batch: list[Envelope] = conn.recv()
                envelopes.extend(batch)
        return envelopes

    def send(self, reply_to: int, uid: str, answer: Answer) -> None:
        """Queue an answer; :meth:`flush` delivers it."""
        self._outbox.setdefault(reply_to, []).append((uid, answer))

    def flush(self) -> None:
        """Deliver every queued answer: one message per API server."""
        outbox, self._outbox = self._outbox, {}
        for reply_to, answers in outbox.items():
            self._answers[reply_to].send(answers)


class PipeMailbox:
    """One request's answers in an API server."""

    def __init__(self, uid: str, channel: PipeRequestChannel) -> None:
        self._uid = uid
        self._channel = channel
        self._answers: deque[Answer] = deque()
        self._arrived = asyncio.Event()
        self.worker: tuple[str, int] | None = None  # (model, worker index) once sent

    @property
    def uid(self) -> str:
        return self._uid

    def deliver(self, answer: Answer) -> None:
        self._answers.append(answer)
        self._arrived.set()

    async def receive(self) -> Answer:
        while not self._answers:
            self._arrived.clear()
            await self._arrived.wait()
        return self._answers.popleft()

    def close(self) -> None:
        self._channel.forget(self)


class PipeRequestChannel:
    """An API server's side (:class:`service.core.messages.RequestChannel`).

    Made in the launcher; its threads start in each API server at the first request (threads do
    not survive the fork). A job goes to the worker of its model with the fewest of this
    server's requests outstanding."""

    def __init__(self, pipes: PipeSet, server_index: Any) -> None:
        self._pipes = pipes
        self._server_index = server_index  # () -> this API server's index, read after the fork
        self._pid = -1
        self._mailboxes: dict[str, PipeMailbox] = {}
        self._outstanding: dict[str, list[int]] = {}
        self._outgoing: dict[tuple[str, int], list[Envelope]] = {}
        self._wake = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ends: dict[str, tuple[ServerPipes, ...]] = {}
        self._index = 0

    def _start(self) -> None:
        self._pid = os.getpid()
        self._loop = asyncio.get_running_loop()
        self._index = int(self._server_index())
        self._ends = self._pipes.servers[self._index]
        self._outstanding = {model: [0] * len(ends) for model, ends in self._ends.items()}
        for target, name in ((self._send_loop, "pipe-send"), (self._receive_loop, "pipe-receive")):
            threading.Thread(target=target, name=name, daemon=True).start()

    def open(self) -> PipeMailbox:
        if self._pid != os.getpid():
            self._start()
        mailbox = PipeMailbox(new_id(), self)
        self._mailboxes[mailbox.uid] = mailbox
        return mailbox

    async def put(self, model: str, mailbox: Mailbox, job: Job) -> None:
        counts = self._outstanding[model]
        worker = min(range(len(counts)), key=counts.__getitem__)
        counts[worker] += 1
        assert isinstance(mailbox, PipeMailbox)
        mailbox.worker = (model, worker)
        with self._wake:
            self._outgoing.setdefault((model, worker), []).append(Envelope(self._index, mailbox.uid, job))
            self._wake.notify()

    def forget(self, mailbox: PipeMailbox) -> None:
        if self._mailboxes.pop(mailbox.uid, None) is not None and mailbox.worker is not None:
            model, worker = mailbox.worker
            self._outstanding[model][worker] -= 1

    def _deliver(self, answers: list[tuple[str, Answer]]) -> None:
        for uid, answer in answers:
            mailbox = self._mailboxes.get(uid)
            if mailbox is not None:  # else: the request was answered already (504) and forgotten
                mailbox.deliver(answer)

    def _send_loop(self) -> None:
        while True:
            with self._wake:
                while not self._outgoing:
                    self._wake.wait()
                outgoing, self._outgoing = self._outgoing, {}
            for (model, worker), envelopes in outgoing.items():
                try:
                    self._ends[model][worker].jobs.send(envelopes)
                except (OSError, ValueError):  # only if the launcher is gone: the server is stopping
                    logger.exception("could not send %d jobs to %s worker %d", len(envelopes), model, worker)

    def _receive_loop(self) -> None:
        assert self._loop is not None
        readers = [ends.answers for per_model in self._ends.values() for ends in per_model]
        while readers:
            for conn in _ready(readers, None):
                try:
                    answers: list[tuple[str, Answer]] = conn.recv()
                except (EOFError, OSError):
                    readers.remove(conn)
                    continue
                self._loop.call_soon_threadsafe(self._deliver, answers)


def _ready(connections: list[Connection], timeout: float | None) -> list[Connection]:
    """The connections with something to read, after waiting up to ``timeout`` (None: forever)."""
    return [conn for conn in wait(connections, timeout) if isinstance(conn, Connection)]
