"""An API server's side of the pipes: it owns every request it sends until it is answered.

Each job goes to the ready worker of its model with the fewest of this server's requests
outstanding (a worker is ready once its :class:`WorkerReady` arrived; while none is, the
starting ones queue the job). Every request stays in its worker's ``outstanding`` table until its
final answer, so that when the launcher reports the worker dead (:class:`WorkerReplaced`, the
moment the process is gone) the API server knows exactly what it had sent there:

- complete answers the worker had already written are read and delivered first;
- a predict still unanswered goes to another ready worker of the model with its original
  deadline (inference is idempotent), or is answered 503 with ``Retry-After`` when there is
  none; one whose client gave up (499) or whose deadline passed (504) is released instead;
- a file job ends with a 503 failure (the stream's last record says the file was not finished);
- the dead worker's pipes are closed, so a late answer from it can never arrive; an answer is
  delivered only from the worker a request is currently assigned to, so nothing is answered twice.

Everything runs on the API server's event loop (non-blocking pipes, :mod:`service.runtime.frames`):
no thread to hand answers over, and neither a half-written message from a killed worker nor a
stopped worker that no longer reads can stall the other workers' traffic.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from service import metrics
from service.core.ids import new_id
from service.core.messages import (
    Answer,
    Envelope,
    Failure,
    FileJob,
    FileProgress,
    Job,
    PredictJob,
    WorkerReady,
)
from service.runtime.frames import FrameReader, FrameWriter
from service.runtime.pipes import PipeSet, ServerPipes, WorkerReplaced, receive_notice

logger = logging.getLogger("service.runtime")

NO_WORKER = "every inference worker of {model!r} has died; a replacement is starting; retry"
FILE_LOST = (
    "the inference worker died while reading this file: the records above are complete, the rest "
    "of the file was not processed (not resumed); send the file again"
)
DEADLINE_PASSED = "no answer within the deadline"


class PipeMailbox:
    """One request's answers in an API server, and what it needs to be sent again."""

    def __init__(self, uid: str, channel: PipeRequestChannel) -> None:
        self._uid = uid
        self._channel = channel
        self._answers: deque[Answer] = deque()
        self._arrived = asyncio.Event()
        self.link: WorkerLink | None = None  # where the job is now
        self.job: Job | None = None
        self.abandoned = False  # the client went away: never sent again
        self.closed = False

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

    def abandon(self) -> None:
        self.abandoned = True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._channel.forget(self)


class WorkerLink:
    """One worker of a model as one API server sees it: its pipe ends and what it was sent."""

    def __init__(self, model: str, index: int, generation: int, ends: ServerPipes) -> None:
        self.model = model
        self.index = index
        self.generation = generation
        self.ends = ends  # owns the two file descriptors
        self.writer = FrameWriter(ends.jobs.fileno())
        self.reader = FrameReader(ends.answers.fileno())
        self.ready = False
        self.outstanding: dict[str, PipeMailbox] = {}  # sent here and not closed
        self.pending: list[Envelope] = []  # queued for the next write

    def close(self) -> None:
        self.ends.close()


def _own_copy(ends: ServerPipes) -> ServerPipes:
    """Ends of the same pipes on new file descriptors, which the link owns and closes."""
    return ServerPipes(
        Connection(os.dup(ends.jobs.fileno()), readable=False),
        Connection(os.dup(ends.answers.fileno()), writable=False),
    )


def _final(answer: Answer) -> bool:
    return not isinstance(answer, FileProgress)


class PipeRequestChannel:
    """An API server's side (:class:`service.core.messages.RequestChannel`).

    Made in the launcher; it starts in each API server at the first request (the event loop
    exists only after the fork)."""

    def __init__(self, pipes: PipeSet, server_index: Callable[[], int]) -> None:
        self._pipes = pipes
        self._server_index = server_index  # this API server's index, read after the fork
        self._pid = -1
        self._index = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._links: dict[str, list[WorkerLink | None]] = {}
        self._to_write: set[WorkerLink] = set()
        self._write_scheduled = False

    # --- start-up in the API server process -------------------------------------------------

    def _start(self) -> None:
        self._pid = os.getpid()
        self._loop = asyncio.get_running_loop()
        self._index = int(self._server_index())
        self._to_write, self._write_scheduled = set(), False
        mine = self._pipes.servers[self._index]
        self._links = {}
        for model, ends in mine.items():
            self._links[model] = []
            for index, pipes in enumerate(ends):
                if pipes.jobs.closed:  # replaced before this server was forked: a notice brings it
                    self._links[model].append(None)
                    continue
                generation = self._pipes.generations.get((model, index), 0)
                self._attach(WorkerLink(model, index, generation, _own_copy(pipes)))
        if self._pid != self._pipes.owner:
            self._close_inherited_ends()
        self._control = self._pipes.control[self._index][1]
        self._control.setblocking(False)
        self._on_control()
        self._loop.add_reader(self._control.fileno(), self._on_control)
        # the workers that are ready already said so: read it now, before the first job is routed
        for links in self._links.values():
            for link in links:
                if link is not None:
                    self._on_answers(link)

    def _close_inherited_ends(self) -> None:
        """This forked API server inherited every end of every pipe; it keeps its own copies of
        its own ends (the links) and its control socket, and closes the rest."""
        for server, (launcher_end, server_end) in enumerate(self._pipes.control):
            launcher_end.close()
            if server != self._index:
                server_end.close()
        for table in self._pipes.workers.values():
            for worker in table:
                worker.close()
        for per_model in self._pipes.servers:
            for ends in per_model.values():
                for pipes in ends:
                    pipes.close()

    def _attach(self, link: WorkerLink) -> None:
        assert self._loop is not None
        links = self._links[link.model]
        while len(links) <= link.index:
            links.append(None)
        links[link.index] = link
        self._loop.add_reader(link.reader.fd, self._on_answers, link)

    # --- RequestChannel ---------------------------------------------------------------------

    def open(self) -> PipeMailbox:
        if self._pid != os.getpid():
            self._start()
        return PipeMailbox(new_id(), self)

    async def put(self, model: str, mailbox: Any, job: Job) -> None:
        assert isinstance(mailbox, PipeMailbox)
        mailbox.job = job
        link = self._choose(model, exclude=None, ready_only=False)
        if link is None:
            mailbox.deliver(Failure(503, NO_WORKER.format(model=model), retry_after=True))
            return
        self._send(link, mailbox)

    def ready_workers(self) -> dict[str, int]:
        """Per model, how many workers said they are ready to this API server (so it can route
        to them)."""
        if self._pid != os.getpid():
            self._start()
        return {
            model: sum(1 for link in links if link is not None and link.ready)
            for model, links in self._links.items()
        }

    def forget(self, mailbox: PipeMailbox) -> None:
        if mailbox.link is not None:
            mailbox.link.outstanding.pop(mailbox.uid, None)

    # --- routing ----------------------------------------------------------------------------

    def _choose(self, model: str, exclude: WorkerLink | None, ready_only: bool) -> WorkerLink | None:
        """The worker with the fewest outstanding requests among the ready ones (else, unless
        ``ready_only``, among the starting ones)."""
        links = [link for link in self._links.get(model, ()) if link is not None and link is not exclude]
        ready = [link for link in links if link.ready]
        candidates = ready or ([] if ready_only else links)
        if not candidates:
            return None
        return min(candidates, key=lambda link: len(link.outstanding))

    def _send(self, link: WorkerLink, mailbox: PipeMailbox) -> None:
        assert mailbox.job is not None and self._loop is not None
        mailbox.link = link
        link.outstanding[mailbox.uid] = mailbox
        link.pending.append(Envelope(self._index, mailbox.uid, mailbox.job))
        self._to_write.add(link)
        if not self._write_scheduled:
            self._write_scheduled = True
            self._loop.call_soon(self._write)

    def _write(self) -> None:
        """One message per worker with every job queued for it during this turn of the loop."""
        self._write_scheduled = False
        links, self._to_write = self._to_write, set()
        for link in links:
            if link.pending:
                envelopes, link.pending = link.pending, []
                self._write_link(link, envelopes)

    def _write_link(self, link: WorkerLink, envelopes: list[Envelope] | None) -> None:
        assert self._loop is not None
        try:
            done = link.writer.write(envelopes) if envelopes is not None else link.writer.flush()
        except OSError:  # the worker's read end is gone: its WorkerReplaced notice is on its way
            logger.warning("model %s worker %d: its job pipe is closed", link.model, link.index)
            return
        if done:
            self._loop.remove_writer(link.writer.fd)
        else:  # the worker is not reading (busy, or stopped): the rest goes when it does
            self._loop.add_writer(link.writer.fd, self._write_link, link, None)

    # --- answers and notices ----------------------------------------------------------------

    def _on_answers(self, link: WorkerLink) -> None:
        try:
            messages = link.reader.read()
        except Exception:  # a message we cannot read: the worker is broken, its notice will come
            logger.exception("model %s worker %d: unreadable answer", link.model, link.index)
            messages = []
        for message in messages:
            if isinstance(message, WorkerReady):
                link.ready = True
                continue
            for uid, answer in message:
                mailbox = link.outstanding.get(uid)
                if mailbox is None:  # answered already (a 504) and forgotten
                    continue
                if _final(answer):
                    mailbox.link = None
                    del link.outstanding[uid]
                mailbox.deliver(answer)
        if link.reader.eof and self._loop is not None:
            self._loop.remove_reader(link.reader.fd)

    def _on_control(self) -> None:
        while (received := receive_notice(self._control)) is not None:
            notice, ends = received
            self._replace(notice, ends)

    def _replace(self, notice: WorkerReplaced, ends: ServerPipes) -> None:
        assert self._loop is not None
        links = self._links.get(notice.model)
        if links is None or notice.index >= len(links):
            ends.close()
            return
        old = links[notice.index]
        new = WorkerLink(notice.model, notice.index, notice.generation, ends)
        orphans: list[PipeMailbox] = []
        if old is not None:
            self._on_answers(old)  # what it finished before dying is a real answer
            self._loop.remove_reader(old.reader.fd)
            self._loop.remove_writer(old.writer.fd)
            self._to_write.discard(old)
            old.close()
            orphans = list(old.outstanding.values())
        self._attach(new)
        if orphans:
            logger.warning(
                "model %s worker %d died with %d requests of this API server outstanding",
                notice.model,
                notice.index,
                len(orphans),
            )
        now = time.monotonic()
        for mailbox in orphans:
            mailbox.link = None
            self._orphaned(notice.model, mailbox, new, now)

    def _orphaned(self, model: str, mailbox: PipeMailbox, starting: WorkerLink, now: float) -> None:
        """A request whose worker died: send it again, or answer it now."""
        job = mailbox.job
        if mailbox.closed:
            return
        if isinstance(job, FileJob):
            mailbox.deliver(Failure(503, FILE_LOST))
            return
        if mailbox.abandoned:
            mailbox.deliver(Failure(499, "client closed the request"))
            return
        if not isinstance(job, PredictJob) or job.deadline <= now:
            mailbox.deliver(Failure(504, DEADLINE_PASSED))
            return
        target = self._choose(model, exclude=starting, ready_only=True)
        if target is None:
            mailbox.deliver(Failure(503, NO_WORKER.format(model=model), retry_after=True))
            return
        metrics.RESENT.labels(model).inc()
        self._send(target, mailbox)
