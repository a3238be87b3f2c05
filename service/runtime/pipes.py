"""The request transport: OS pipes between API servers and inference workers.

LitServe carries each request and each answer through its ``multiprocessing.Manager`` broker:
four pickled round trips through a third process per request. Here every (API server, worker)
pair has two one-way pipes, made by the launcher before LitServe forks the API servers and
spawns the workers (both inherit them): jobs one way, answers the other. A pipe has exactly one
writer and one reader, so no lock is shared that a killed process could leave held.

The cost is per batch, not per request: an API server writes everything that accumulated for a
worker during one turn of its event loop as one message; a worker answers each API server once
per forward (:meth:`PipeWorkerChannel.flush`) with every answer for it. Messages are pickled and
read only by our own processes from pipes nobody else can open; nothing a client sends is ever
unpickled (its bytes arrive as already-validated values).

A worker that dies takes its pipes with it: the launcher makes new ones for its replacement
(:meth:`PipeSet.renew`) and hands each API server its ends over a control socket, with a
:class:`WorkerReplaced` notice. The API server side lives in :mod:`service.runtime.routing`.
"""

from __future__ import annotations

import array
import logging
import os
import pickle
import socket
from dataclasses import dataclass
from multiprocessing import Pipe
from multiprocessing.connection import Connection, wait
from typing import Any

from service.core.messages import Answer, Envelope, WorkerReady

logger = logging.getLogger("service.runtime")

CONTROL_MESSAGE_BYTES = 4096  # a notice is a few dozen bytes
NOTICE_TIMEOUT = 5.0  # seconds the launcher waits for an API server to take a notice


@dataclass(frozen=True)
class WorkerPipes:
    """One worker's ends: it reads ``jobs[a]`` (from API server ``a``) and writes ``answers[a]``."""

    jobs: tuple[Connection, ...]
    answers: tuple[Connection, ...]

    def close(self) -> None:
        for conn in (*self.jobs, *self.answers):
            conn.close()


@dataclass(frozen=True)
class ServerPipes:
    """One API server's ends towards one worker."""

    jobs: Connection  # written by the API server
    answers: Connection  # read by the API server

    def close(self) -> None:
        self.jobs.close()
        self.answers.close()


@dataclass(frozen=True)
class WorkerReplaced:
    """A control notice: worker ``index`` of ``model`` died; generation ``generation`` replaces it.
    Its new pipe ends travel with the notice (jobs to write, answers to read)."""

    model: str
    index: int
    generation: int


class WorkerPipesTable:
    """A model's current worker pipes by index; pickled (into each spawned worker) with the open
    ones only, since a replaced worker's old ends are closed."""

    def __init__(self, pipes: dict[int, WorkerPipes]) -> None:
        self._pipes = pipes

    def __getitem__(self, index: int) -> WorkerPipes:
        return self._pipes[index]

    def __setitem__(self, index: int, pipes: WorkerPipes) -> None:
        self._pipes[index] = pipes

    def __len__(self) -> int:
        return len(self._pipes)

    def __iter__(self) -> Any:
        return iter(self._pipes[index] for index in sorted(self._pipes))

    def others(self, index: int) -> list[WorkerPipes]:
        return [pipes for i, pipes in self._pipes.items() if i != index]

    def __reduce__(self) -> tuple[Any, ...]:
        current = {
            index: pipes for index, pipes in self._pipes.items() if not any(c.closed for c in pipes.jobs)
        }
        return (WorkerPipesTable, (current,))


def _pair(api_servers: int) -> tuple[WorkerPipes, list[ServerPipes]]:
    job_ends, answer_ends, server_ends = [], [], []
    for _ in range(api_servers):
        job_read, job_write = Pipe(duplex=False)
        answer_read, answer_write = Pipe(duplex=False)
        job_ends.append(job_read)
        answer_ends.append(answer_write)
        server_ends.append(ServerPipes(job_write, answer_read))
    return WorkerPipes(tuple(job_ends), tuple(answer_ends)), server_ends


class PipeSet:
    """Every pipe of the service, made in the launcher (so every process inherits them), and one
    control socket per API server on which the launcher announces replaced workers."""

    def __init__(self, workers: dict[str, int], api_servers: int) -> None:
        self.api_servers = api_servers
        self.owner = os.getpid()  # the launcher
        self.workers: dict[str, WorkerPipesTable] = {}
        # api server -> model -> ServerPipes per worker index, as each API server inherits them
        self.servers: list[dict[str, list[ServerPipes]]] = [{} for _ in range(api_servers)]
        self.generations: dict[tuple[str, int], int] = {}
        for model, count in workers.items():
            table: dict[int, WorkerPipes] = {}
            for server in range(api_servers):
                self.servers[server][model] = []
            for index in range(count):
                table[index], server_ends = _pair(api_servers)
                for server, ends in enumerate(server_ends):
                    self.servers[server][model].append(ends)
                self.generations[(model, index)] = 0
            self.workers[model] = WorkerPipesTable(table)
        # (launcher end, API server end); SOCK_SEQPACKET keeps each notice one message
        self.control = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(api_servers)]

    def __enter__(self) -> PipeSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close this process's ends of every pipe and control socket."""
        for table in self.workers.values():
            for pipes in table:
                pipes.close()
        for per_model in self.servers:
            for ends in per_model.values():
                for server_ends in ends:
                    server_ends.close()
        for launcher_end, server_end in self.control:
            launcher_end.close()
            server_end.close()

    def renew(self, model: str, index: int) -> int:
        """New pipes for worker ``index`` of ``model`` (its process died): the old ones may hold
        half a message. Each API server gets its new ends with a :class:`WorkerReplaced` notice;
        the replacement worker gets its ends when it is spawned. Returns the new generation."""
        generation = self.generations[(model, index)] + 1
        self.generations[(model, index)] = generation
        old = self.workers[model][index]
        pipes, server_ends = _pair(self.api_servers)
        self.workers[model][index] = pipes
        old.close()
        notice = pickle.dumps(WorkerReplaced(model, index, generation))
        for server, ends in enumerate(server_ends):
            previous = self.servers[server][model][index]
            self.servers[server][model][index] = ends
            previous.close()
            launcher_end = self.control[server][0]
            fds = array.array("i", [ends.jobs.fileno(), ends.answers.fileno()])
            try:
                launcher_end.settimeout(NOTICE_TIMEOUT)
                launcher_end.sendmsg([notice], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
            except OSError:
                logger.exception(
                    "could not tell API server %d that %s worker %d was replaced", server, model, index
                )
            # the API server holds its own copies now (the notice carries them)
            ends.close()
        return generation


def receive_notice(control: socket.socket) -> tuple[WorkerReplaced, ServerPipes] | None:
    """One :class:`WorkerReplaced` notice and its pipe ends, or None when none is waiting."""
    try:
        data, ancillary, _, _ = control.recvmsg(
            CONTROL_MESSAGE_BYTES, socket.CMSG_SPACE(2 * array.array("i").itemsize), socket.MSG_DONTWAIT
        )
    except (BlockingIOError, InterruptedError):
        return None
    fds = array.array("i")
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    if not data or len(fds) != 2:
        for fd in fds:
            os.close(fd)
        return None
    notice = pickle.loads(data)
    assert isinstance(notice, WorkerReplaced)
    jobs = Connection(fds[0], readable=False, writable=True)
    answers = Connection(fds[1], readable=True, writable=False)
    return notice, ServerPipes(jobs, answers)


class PipeWorkerChannel:
    """A worker's side: every job waiting from any API server; answers sent in bulk at flush."""

    def __init__(self, pipes: WorkerPipes) -> None:
        self._jobs = list(pipes.jobs)
        self._answers = pipes.answers
        self._outbox: dict[int, list[tuple[str, Answer]]] = {}

    def announce(self) -> None:
        """Tell every API server that this worker is ready for jobs (:class:`WorkerReady`)."""
        for conn in self._answers:
            conn.send(WorkerReady(os.getpid()))

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


def _ready(connections: list[Connection], timeout: float | None) -> list[Connection]:
    """The connections with something to read, after waiting up to ``timeout`` (None: forever)."""
    return [conn for conn in wait(connections, timeout) if isinstance(conn, Connection)]
