"""The loop that feeds an inference worker's session batches, replacing LitServe's.

LitServe's batching loop polls its queue every millisecond (a core burnt while idle) and
batches requests rather than inputs. This one blocks while idle, gathers requests until
``max_batch_size`` inputs or ``batch_timeout`` seconds, splits large requests into several
forwards, drops requests whose deadline passed (or whose client went away) before they reach
the model, and records queue, compute, batch-size and memory metrics.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from service import metrics
from service.core.messages import Envelope, Failure, FileJob, PredictJob, PredictResult
from service.core.spool import BatchLedger, CancelMarkers, batch_ledger_path
from service.runtime.litserve import WorkerChannel, WorkerLoop
from service.worker.filejobs import FileStreamer

if TYPE_CHECKING:
    from service.worker.api import ModelAPI

logger = logging.getLogger("service.worker")

# Every wake-up of an idle process costs CPU (a Manager round trip is several ms here), so idle
# loops wake rarely: the queue wakes the worker as soon as a request (or the stop sentinel) arrives.
IDLE_POLL = 5.0  # seconds the idle loop blocks on the queue in one call


@dataclass
class Pending:
    """One predict job taken from the queue: where to answer, and its inputs."""

    reply_to: int
    uid: str
    job: PredictJob
    outputs: list[Any] = field(default_factory=list)


class BatchingLoop(WorkerLoop):
    """Blocks while idle; batches inputs across requests; answers each request once."""

    def serve(self, lit_api: ModelAPI, worker_id: int, channel: WorkerChannel) -> None:
        assert lit_api.session is not None and lit_api.spec is not None and lit_api.memory is not None
        config = lit_api.config
        self.model = config.model
        self.session = lit_api.session
        self.memory = lit_api.memory
        self.channel = channel
        self.queue_seconds = metrics.QUEUE_DURATION.labels(config.model)
        self.compute_seconds = metrics.COMPUTE_DURATION.labels(config.model)
        self.batch_size = metrics.BATCH_SIZE.labels(config.model)
        self.max_batch = config.max_batch_size
        self.batch_timeout = config.batch_timeout
        self.cancels = CancelMarkers(config.spool_dir)
        self.files = FileStreamer(lit_api.session, lit_api.spec, config.max_batch_size, config.max_line_bytes)
        self.concurrent = False
        self.batch_seconds = 0.0
        self.ledger = BatchLedger(
            batch_ledger_path(config.spool_dir, config.model, worker_id) if config.spool_dir else None
        )
        while True:
            self._serve_once()

    def _serve_once(self) -> None:
        first = self.channel.get(IDLE_POLL)
        if first is None:
            return
        envelopes = [first]
        count = _size(first)
        # Wait for company only when traffic is concurrent (the last batch had several requests);
        # a lone client should not pay batch_timeout on every request. What is already queued is
        # always taken.
        wait = self.batch_timeout if self.concurrent else 0.0
        closes = time.monotonic() + wait
        while count < self.max_batch:
            envelope = self.channel.get(closes - time.monotonic())
            if envelope is None:
                break
            envelopes.append(envelope)
            count += _size(envelope)
        self.concurrent = len(envelopes) > 1
        self._run(envelopes)
        self.channel.flush()
        self.memory.sample()

    def _run(self, envelopes: list[Envelope]) -> None:
        started = time.monotonic()
        cancelled = self.cancels.current()
        batch: list[Pending] = []
        for envelope in envelopes:
            job = envelope.job
            self.queue_seconds.observe(max(0.0, started - job.arrived))
            if isinstance(job, FileJob):
                self._run_file(envelope.reply_to, envelope.uid, job)
                continue
            if job.deadline - started <= self.batch_seconds:
                # expired, or would expire before a typical batch finishes: the API server answers
                # 504 at the deadline, so computing it would only delay everyone behind it
                self.channel.send(
                    envelope.reply_to, envelope.uid, Failure(504, "deadline expired while queued")
                )
                continue
            if envelope.uid in cancelled:
                self.channel.send(envelope.reply_to, envelope.uid, Failure(499, "client closed the request"))
                continue
            batch.append(Pending(envelope.reply_to, envelope.uid, job))
        if not batch:
            return
        self.ledger.record([(p.reply_to, p.uid) for p in batch])
        flat = [(p, x) for p in batch for x in p.job.inputs]
        try:
            for start in range(0, len(flat), self.max_batch):
                chunk = flat[start : start + self.max_batch]
                outputs = self.session.run([x for _, x in chunk])
                self.compute_seconds.observe(self.session.last_duration)
                # a moving average of one forward's time, to drop requests that cannot make their deadline
                self.batch_seconds = 0.8 * self.batch_seconds + 0.2 * self.session.last_duration
                self.batch_size.observe(len(chunk))
                for (pending, _), output in zip(chunk, outputs, strict=True):
                    pending.outputs.append(output)
        except Exception as exc:
            logger.exception("model %s: forward failed", self.model)
            failure = Failure(500, f"model error: {type(exc).__name__}")
            for pending in batch:
                self.channel.send(pending.reply_to, pending.uid, failure)
            self.ledger.clear()
            return
        for pending in batch:
            self.channel.send(pending.reply_to, pending.uid, PredictResult(pending.outputs))
        self.ledger.clear()

    def _run_file(self, reply_to: int, uid: str, job: FileJob) -> None:
        self.ledger.record([(reply_to, uid)])
        for answer in self.files.stream(job, self.compute_seconds, self.batch_size):
            self.channel.send(reply_to, uid, answer)
            self.channel.flush()
        self.ledger.clear()


def _size(envelope: Envelope) -> int:
    job = envelope.job
    return len(job.inputs) if isinstance(job, PredictJob) else 0
