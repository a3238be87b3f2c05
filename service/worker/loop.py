"""The loop that feeds an inference worker's session forwards, replacing LitServe's.

LitServe's batching loop polls its queue every millisecond (a core burnt while idle) and
batches requests rather than inputs. This one blocks while it has nothing to compute, and
otherwise drives a :class:`service.worker.batcher.Scheduler`: predict requests are cut into
length-aware forwards (under ``max_batch_size`` and ``max_batch_tokens``), file jobs are
low-priority sources that top those forwards up and take turns, so a predict sent during a
file waits about one forward. Requests whose deadline cannot be met, or whose client went away,
are dropped before they reach the model. If the worker dies, the API servers send again what
they had sent it (:mod:`service.runtime.routing`): nothing here needs to be recorded for that.

It talks to the API servers only through :class:`WorkerChannel`'s ``receive``, ``send`` and
``flush``: answers are buffered and delivered at each flush (after each forward, or before it
when answers were given without one).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from typing import TYPE_CHECKING, Any

from service import metrics
from service.core.messages import Answer, Envelope, Failure, FileJob, PredictJob, PredictResult
from service.core.rejection import InputRejected
from service.core.spool import CancelMarkers
from service.runtime.litserve import WorkerChannel, WorkerLoop
from service.worker.batcher import CostFunction, Dropped, Limits, Scheduler, cost_function, unit_costs
from service.worker.filejobs import FileJobSource, FormatError
from service.worker.isolation import run_isolated
from service.worker.threads import ComputeTimes, ThreadGovernor

if TYPE_CHECKING:
    from service.worker.api import ModelAPI

logger = logging.getLogger("service.worker")

# Every wake-up of an idle process costs CPU, so an idle loop wakes rarely: the queue wakes the
# worker as soon as a request (or the stop sentinel) arrives.
IDLE_POLL = 5.0  # seconds the idle loop blocks on the queue in one call


class BatchingLoop(WorkerLoop):
    """Blocks while idle; schedules predicts and file jobs into forwards; answers each once."""

    def serve(self, lit_api: ModelAPI, worker_id: int, channel: WorkerChannel) -> None:
        assert lit_api.session is not None and lit_api.spec is not None and lit_api.memory is not None
        config = lit_api.config
        self.model = config.model
        self.spec = lit_api.spec
        self.session = lit_api.session
        self.memory = lit_api.memory
        self.channel = channel
        self.max_line_bytes = config.max_line_bytes
        self.queue_seconds = metrics.QUEUE_DURATION.labels(config.model)
        self.compute_seconds = metrics.COMPUTE_DURATION.labels(config.model)
        self.batch_size = metrics.BATCH_SIZE.labels(config.model)
        self.batch_tokens = metrics.BATCH_PADDED_TOKENS.labels(config.model)
        self.forward_retries = metrics.FORWARD_RETRIES.labels(config.model)
        self.cancels = CancelMarkers(config.spool_dir)
        cost = cost_function(self.session.model)
        self.counts_tokens = cost is not unit_costs  # a model with costs() reports them as tokens
        self.limits = Limits(config.max_batch_size, config.max_batch_tokens)
        self.scheduler = Scheduler(
            self.limits, cost=_logged(cost, self.model), batch_timeout=config.batch_timeout
        )
        self.arrived: dict[str, float] = {}  # uid -> arrival, until its first forward starts
        self.files: dict[str, FileJobSource] = {}
        self.unflushed = False
        self.threads = ThreadGovernor(
            _torch_threads(),
            config.torch_threads_under_load,
            high=4 * config.max_batch_size,
            low=config.max_batch_size,
            set_threads=_set_torch_threads,
            alone=config.torch_threads_alone,
            model=config.model,
        )
        times = config.compute_times
        self.computing = ComputeTimes(times, worker_id) if times is not None else ComputeTimes([0.0], 0)
        model = self.session.model
        # a model that owns resources (a program's ONNX Runtime session) is held for the loop's life
        with model if isinstance(model, AbstractContextManager) else nullcontext():
            try:
                while True:
                    self._serve_once()
            finally:
                for source in list(self.files.values()):
                    source.close()

    def _serve_once(self) -> None:
        scheduler = self.scheduler
        # block only when there is nothing to compute; otherwise take what is already waiting
        self._add(self.channel.receive(IDLE_POLL if scheduler.idle else 0.0))
        # wait for company only while traffic is concurrent and no file would fill the forward
        if wait := scheduler.gather_timeout():
            closes = time.monotonic() + wait
            while scheduler.gather_timeout() and (left := closes - time.monotonic()) > 0:
                envelopes = self.channel.receive(left)
                if not envelopes:
                    break
                self._add(envelopes)
        forward = scheduler.next_forward(self.cancels.current())
        self._flush()  # answers given without a forward (dropped requests, a finished file)
        if forward is None:
            return
        started = time.monotonic()
        for uid in forward.uids:
            arrived = self.arrived.pop(uid, None)
            if arrived is not None:  # the first forward of this request or file
                self.queue_seconds.observe(max(0.0, started - arrived))
        # all cores when alone, a share while a peer computes, fewer while overloaded
        self.threads.update(scheduler.waiting_inputs(), self.computing.peers_active())
        clock = time.perf_counter()
        with self.computing.forward():
            # a bad input fails alone: its batch-mates are run again without it
            isolated = run_isolated(self.session.run, forward.inputs)
        if isolated.retries:
            self.forward_retries.inc(isolated.retries)
            self._log_failures(forward, isolated.results)
            self.compute_seconds.observe(time.perf_counter() - clock)
        else:
            self.compute_seconds.observe(self.session.last_duration)
        self.batch_size.observe(len(forward))
        self.batch_tokens.observe(forward.padded_cost)
        scheduler.complete(forward, isolated.results)
        self._flush()
        self.memory.sample()

    def _log_failures(self, forward: Any, results: list[Any]) -> None:
        failures = [r for r in results if isinstance(r, BaseException)]
        rejected = sum(isinstance(r, InputRejected) for r in failures)
        logger.warning(
            "model %s: %d of %d inputs of a forward failed alone (%d rejected by the model)",
            self.model,
            len(failures),
            len(forward),
            rejected,
        )
        for error in failures:
            if not isinstance(error, InputRejected):
                logger.error("model %s: an input failed", self.model, exc_info=error)
                break  # one traceback is enough

    # --- adding work ----------------------------------------------------------------------

    def _add(self, envelopes: list[Envelope]) -> None:
        for envelope in envelopes:
            job = envelope.job
            if isinstance(job, FileJob):
                self._add_file(envelope.reply_to, envelope.uid, job)
            else:
                self._add_predict(envelope.reply_to, envelope.uid, job)

    def _add_predict(self, reply_to: int, uid: str, job: PredictJob) -> None:
        self.arrived[uid] = job.arrived
        self.scheduler.add_predict(
            uid,
            job.inputs,
            deadline=job.deadline,
            on_done=partial(self._predicted, reply_to, uid),
            on_error=partial(self._failed, reply_to, uid),
        )

    def _add_file(self, reply_to: int, uid: str, job: FileJob) -> None:
        try:
            source = FileJobSource(
                uid,
                job,
                self.spec,
                chunk_records=self.limits.max_batch_size,
                max_line_bytes=self.max_line_bytes,
                answer=partial(self._send, reply_to, uid),
                on_close=self._file_closed,
            )
        except FormatError as exc:
            self._send(reply_to, uid, Failure(400, str(exc)))
            return
        except FileNotFoundError:
            logger.info("model %s: client went away before its file started", self.model)
            self._send(reply_to, uid, Failure(499, "client closed the request"))
            return
        except Exception as exc:
            logger.exception("model %s: cannot open a file job", self.model)
            self._send(reply_to, uid, Failure(500, f"cannot read the file: {type(exc).__name__}"))
            return
        self.arrived[uid] = job.arrived
        self.files[uid] = source
        self.scheduler.add_file(source)

    # --- answers --------------------------------------------------------------------------

    def _predicted(self, reply_to: int, uid: str, outputs: list[Any], costs: list[int]) -> None:
        self._forget(uid)
        tokens = sum(costs) if self.counts_tokens else 0
        self._send(reply_to, uid, PredictResult(outputs, tokens))

    def _failed(self, reply_to: int, uid: str, error: BaseException) -> None:
        self._forget(uid)
        if isinstance(error, Dropped):
            self._send(reply_to, uid, Failure(error.status, str(error)))
        elif isinstance(error, InputRejected):
            self._send(reply_to, uid, Failure(422, f"the model rejected an input: {error.message}"))
        else:
            self._send(reply_to, uid, Failure(500, f"model error: {type(error).__name__}"))

    def _file_closed(self, source: FileJobSource) -> None:
        self.files.pop(source.uid, None)
        self._forget(source.uid)

    def _forget(self, uid: str) -> None:
        self.arrived.pop(uid, None)

    def _send(self, reply_to: int, uid: str, answer: Answer) -> None:
        self.channel.send(reply_to, uid, answer)
        self.unflushed = True

    def _flush(self) -> None:
        if self.unflushed:
            self.unflushed = False
            self.channel.flush()


def _logged(cost: CostFunction, model: str) -> CostFunction:
    """``cost``, logging why it failed (the scheduler answers that request 500 and goes on)."""

    def costs(inputs: Sequence[Any]) -> list[int]:
        try:
            return cost(inputs)
        except Exception:
            logger.exception("model %s: costs() failed", model)
            raise

    return costs


def _torch_threads() -> int:
    import torch  # already loaded in the worker by its model

    return int(torch.get_num_threads())


def _set_torch_threads(count: int) -> None:
    import torch

    torch.set_num_threads(count)
