"""Length-aware micro-batching and fair scheduling for one inference worker.

Pure Python (no torch, no LitServe): the worker loop does the blocking queue reads and the
``session.run``; this module decides which inputs go into each forward and routes every
output back to its owner.

**Costs.** Every input has a cost (tokens after truncation for a text model, 1 for a
fixed-size input), from the model's optional ``costs(inputs)`` (:func:`cost_function`). A
forward's padded cost is its longest cost × its number of inputs; :class:`Limits` caps both
that (``max_batch_tokens``, None = no token budget) and the number of inputs
(``max_batch_size``).

**Planner.** :func:`plan` orders inputs by cost and cuts them greedily into forwards under the
limits; an input whose own cost exceeds the budget runs alone.

**Scheduler.** :class:`Scheduler` holds predict requests (high priority) and file jobs
(:class:`InputSource`, low priority: inputs are taken on demand, a few forwards ahead). Each
:meth:`Scheduler.next_forward` drops cancelled requests and those whose deadline cannot be met
by a typical forward, fills the forward from waiting predicts (the planned group that holds
the oldest waiting input, so long inputs are never starved), then tops it up from running
file jobs, which take turns (round-robin); a file alone gets full forwards. A request's inputs
may be split across forwards; its ``on_done(outputs, costs)`` gets them in its own order. A
source's ``emit`` gets its outputs in the order ``take`` gave its inputs.

How the worker loop drives it (one thread; ``receive(t)`` returns every job waiting on the
worker's pipes after waiting up to ``t`` seconds for the first; see service.worker.loop)::

    scheduler = Scheduler(Limits(max_batch_size, max_batch_tokens), cost=cost_function(model),
                          batch_timeout=batch_timeout)
    while True:
        add(receive(IDLE_POLL if scheduler.idle else 0))  # block only when nothing is left to do
        closes = monotonic() + scheduler.gather_timeout()  # 0 for a lone client or a running file
        while scheduler.gather_timeout() and (jobs := receive(closes - monotonic())):
            add(jobs)                                     # add_predict(...) or add_file(source)
        forward = scheduler.next_forward(cancelled=cancel_markers.current())
        if forward is None:
            continue
        try:
            outputs = session.run(forward.inputs)
        except Exception as exc:
            scheduler.fail(forward, exc)                  # only the owners in this forward get exc
        else:
            scheduler.complete(forward, outputs)
        flush()                                           # one answer message per API server

``add_predict(uid, inputs, deadline=job.deadline, on_done=send 200, on_error=send
status_of(exc))`` where :class:`Dropped` carries the status (504 deadline, 499 cancelled) and
any other exception is a model error (500). A file job becomes a source: an object with
``uid``, ``take(limit)`` (the next valid inputs read from the spooled file; ``[]`` at its end, or
while it cannot read on until the outputs it gave are emitted; it keeps its invalid records and
writes their error lines in place when outputs arrive),
``emit(outputs)`` (write the NDJSON lines, report ``{"ready": bytes}``), ``finish()`` (the final
summary) and ``fail(exc)`` (an error message; :class:`Cancelled` when the client went away).
The CLI runs a source through the same planner with :func:`run_source`.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

logger = logging.getLogger("service.worker.batcher")

CostFunction = Callable[[Sequence[Any]], list[int]]
# forwards' worth of inputs the planner looks at: enough to group by length, bounded work per forward
LOOKAHEAD = 4
# a minilm forward's fixed cost in padded tokens: one short sentence ~10 ms, 32 of them ~35 ms
FORWARD_COST = 256


def unit_costs(inputs: Sequence[Any]) -> list[int]:
    """Cost 1 per input: what a model without ``costs()`` gets."""
    return [1] * len(inputs)


def cost_function(model: object) -> CostFunction:
    """The model's ``costs(inputs)`` if it has one, else :func:`unit_costs`."""
    costs = getattr(model, "costs", None)
    return costs if callable(costs) else unit_costs


@dataclass(frozen=True)
class Limits:
    """What one forward may hold."""

    max_batch_size: int  # inputs per forward
    max_batch_tokens: int | None = None  # padded cost per forward (longest × count); None: no budget
    # what one more forward is worth in padded cost: a newcomer that would add more padding than
    # this to its group starts a new forward (a paragraph does not join a tail of short sentences)
    forward_cost: int = FORWARD_COST

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or (self.max_batch_tokens is not None and self.max_batch_tokens < 1):
            raise ValueError(f"limits must be positive: {self}")

    def fits(self, count: int, longest: int) -> bool:
        """Whether ``count`` inputs whose longest cost is ``longest`` fit in one forward."""
        if count > self.max_batch_size:
            return False
        return self.max_batch_tokens is None or count * longest <= self.max_batch_tokens


def padded_cost(costs: Sequence[int]) -> int:
    """What a forward of inputs with these costs computes: longest × count."""
    return max(costs) * len(costs) if costs else 0


def plan(costs: Sequence[int], limits: Limits) -> list[list[int]]:
    """Indices into ``costs`` grouped into forwards: ordered by cost (ties keep their order) and
    cut greedily where the forward would exceed ``limits`` or a newcomer would pad the group by
    more than ``limits.forward_cost``; an input over the budget runs alone."""
    groups: list[list[int]] = []
    group: list[int] = []
    for index in sorted(range(len(costs)), key=costs.__getitem__):
        # ascending order: the newcomer is the group's longest, and pads the others up to it
        cost = costs[index]
        if group and (
            not limits.fits(len(group) + 1, cost)
            or len(group) * (cost - costs[group[-1]]) > limits.forward_cost
        ):
            groups.append(group)
            group = []
        group.append(index)
    if group:
        groups.append(group)
    return groups


class Dropped(Exception):
    """The scheduler gave up on a request or file before computing it; ``status`` is its HTTP answer."""

    status = 500


class DeadlineExpired(Dropped):
    status = 504

    def __init__(self) -> None:
        super().__init__("deadline expired while queued")


class Cancelled(Dropped):
    status = 499

    def __init__(self) -> None:
        super().__init__("client closed the request")


class InputSource(Protocol):
    """A low-priority producer of inputs (a file job), read on demand."""

    uid: str

    def take(self, limit: int) -> Sequence[Any]:
        """Up to ``limit`` next inputs. ``[]`` while inputs it gave are still waiting for their
        outputs means "not now" (e.g. it holds too many records it may only write after them):
        it is asked again once some are emitted. ``[]`` with every output emitted means its end."""
        ...

    def emit(self, outputs: list[Any]) -> None:
        """Outputs of the next inputs, in the order ``take`` gave them."""
        ...

    def finish(self) -> None:
        """Every input was taken and every output emitted."""
        ...

    def fail(self, error: BaseException) -> None:
        """The source stops: a forward holding its inputs raised, ``take`` or ``emit`` raised,
        or it was cancelled (:class:`Cancelled`). Called at most once, never after ``finish``."""
        ...


@dataclass(eq=False)
class _Slot:
    owner: _Request | _File
    position: int  # index in the request, or the order the source gave it
    value: Any
    cost: int
    seq: int  # arrival order across all owners: the oldest is served first


@dataclass(eq=False)
class _Request:
    uid: str
    deadline: float
    costs: list[int]
    on_done: Callable[[list[Any], list[int]], None]
    on_error: Callable[[BaseException], None]
    outputs: list[Any]
    remaining: int
    slots: list[_Slot] = field(default_factory=list)
    closed: bool = False


@dataclass(eq=False)
class _File:
    source: InputSource
    backlog: dict[int, _Slot] = field(default_factory=dict)  # taken, not handed out, by seq
    taken: int = 0
    emitted: int = 0
    finished: dict[int, Any] = field(default_factory=dict)  # position -> output, not emitted yet
    exhausted: bool = False
    paused: bool = False  # take() gave nothing while outputs were outstanding: ask after the next emit
    closed: bool = False

    @property
    def uid(self) -> str:
        return self.source.uid


@dataclass(frozen=True, eq=False)
class Forward:
    """One forward's inputs, in the order the model must see them, and whose they are."""

    inputs: list[Any]
    costs: list[int]
    _slots: tuple[_Slot, ...]
    requests: int  # predict requests with inputs here
    files: int  # file jobs with inputs here

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def padded_cost(self) -> int:
        return padded_cost(self.costs)

    @property
    def uids(self) -> list[str]:
        """The requests and files with inputs in this forward (each once)."""
        return list(dict.fromkeys(slot.owner.uid for slot in self._slots))


class Scheduler:
    """Cuts waiting predicts and running file jobs into forwards; see the module docstring."""

    def __init__(
        self,
        limits: Limits,
        *,
        cost: CostFunction = unit_costs,
        batch_timeout: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self.cost = cost
        self.batch_timeout = batch_timeout
        self.clock = clock
        self.window = LOOKAHEAD * limits.max_batch_size
        self.forward_seconds = 0.0  # moving average of one forward, to drop hopeless deadlines
        self._seq = itertools.count()
        self._waiting: dict[int, _Slot] = {}  # predict inputs not handed out yet, by seq (arrival order)
        self._requests: dict[int, _Request] = {}  # open requests by id()
        self._files: list[_File] = []  # open file jobs
        self._lead: _File | None = None  # the file that tops up the next forward first
        self._started: dict[int, float] = {}  # id(forward) -> when it was handed out
        self._concurrent = False

    # --- adding work ----------------------------------------------------------------------

    def add_predict(
        self,
        uid: str,
        inputs: Sequence[Any],
        *,
        on_done: Callable[[list[Any], list[int]], None],
        on_error: Callable[[BaseException], None],
        deadline: float = math.inf,
    ) -> None:
        """Queue a predict request; exactly one of ``on_done(outputs, costs)`` (outputs in input
        order) or ``on_error(exc)`` is called later (or now, if its costs cannot be computed)."""
        try:
            costs = self._costs(inputs)
        except Exception as exc:
            _call(on_error, exc)
            return
        request = _Request(uid, deadline, costs, on_done, on_error, [None] * len(inputs), len(inputs))
        if not inputs:
            _call(on_done, [], [])
            return
        for position, (value, cost) in enumerate(zip(inputs, costs, strict=True)):
            slot = _Slot(request, position, value, cost, next(self._seq))
            request.slots.append(slot)
            self._waiting[slot.seq] = slot
        self._requests[id(request)] = request

    def add_file(self, source: InputSource) -> None:
        """Start taking inputs from ``source`` (lower priority than predicts; files take turns)."""
        self._files.append(_File(source))

    # --- state for the loop ---------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """Nothing to compute: the loop may block on its queue."""
        return not self._waiting and not any(not f.exhausted or f.backlog for f in self._files)

    def waiting_inputs(self) -> int:
        return len(self._waiting)

    def gather_timeout(self) -> float:
        """Seconds the loop should wait for more requests before the next forward: the batch
        timeout only while traffic is concurrent (the last forward served several requests),
        no running file would fill the forward anyway, and the waiting inputs do not already."""
        if not self._concurrent or self._files or len(self._waiting) >= self.limits.max_batch_size:
            return 0.0
        return self.batch_timeout

    def uids(self) -> list[str]:
        """Every open request and file: what a crash of this worker would leave unanswered."""
        return [r.uid for r in self._requests.values()] + [f.uid for f in self._files]

    # --- forwards ---------------------------------------------------------------------------

    def next_forward(self, cancelled: Collection[str] = ()) -> Forward | None:
        """The next forward to run, or None when there is nothing to compute."""
        now = self.clock()
        self._drop(now, cancelled)
        slots: list[_Slot] = []
        if self._waiting:
            window = list(itertools.islice(self._waiting.values(), self.window))  # oldest first
            slots = [window[i] for i in _oldest_group([s.cost for s in window], self.limits)]
            for slot in slots:
                del self._waiting[slot.seq]
        requests = len({id(slot.owner) for slot in slots})
        files = self._top_up(slots)
        if not slots:
            return None
        self._concurrent = requests > 1
        forward = Forward([s.value for s in slots], [s.cost for s in slots], tuple(slots), requests, files)
        self._started[id(forward)] = now
        return forward

    def complete(self, forward: Forward, outputs: Sequence[Any]) -> None:
        """Route a forward's outputs (one per input, in order) to their owners. An output that is
        an exception fails its request; in a file it becomes that record's error line."""
        if len(outputs) != len(forward):
            self.fail(
                forward, RuntimeError(f"model returned {len(outputs)} outputs for {len(forward)} inputs")
            )
            return
        self._timed(forward)
        touched: dict[int, _File] = {}
        for slot, output in zip(forward._slots, outputs, strict=True):
            owner = slot.owner
            if owner.closed:
                continue
            if isinstance(owner, _Request):
                if isinstance(output, BaseException):  # this input failed alone: so does its request
                    self._error_request(owner, output)
                    continue
                owner.outputs[slot.position] = output
                owner.remaining -= 1
                if owner.remaining == 0:
                    self._close_request(owner)
                    _call(owner.on_done, owner.outputs, owner.costs)
            else:
                owner.finished[slot.position] = output
                touched[id(owner)] = owner
        for file in touched.values():
            self._emit(file)

    def fail(self, forward: Forward, error: BaseException) -> None:
        """A forward raised: every request and file with inputs in it gets ``error``; others go on."""
        self._timed(forward)
        for owner in {id(slot.owner): slot.owner for slot in forward._slots}.values():
            if isinstance(owner, _Request):
                self._error_request(owner, error)
            else:
                self._error_file(owner, error)

    # --- internals --------------------------------------------------------------------------

    def _costs(self, inputs: Sequence[Any]) -> list[int]:
        costs = list(self.cost(inputs)) if inputs else []
        if len(costs) != len(inputs):
            raise RuntimeError(f"model gave {len(costs)} costs for {len(inputs)} inputs")
        return [max(1, int(cost)) for cost in costs]

    def _timed(self, forward: Forward) -> None:
        started = self._started.pop(id(forward), None)
        if started is not None:
            self.forward_seconds = 0.8 * self.forward_seconds + 0.2 * (self.clock() - started)

    def _drop(self, now: float, cancelled: Collection[str]) -> None:
        for request in list(self._requests.values()):
            if request.uid in cancelled:
                self._error_request(request, Cancelled())
            elif request.deadline - now <= self.forward_seconds and any(
                slot.seq in self._waiting for slot in request.slots
            ):
                # expired, or would expire before a typical forward finishes: the API server
                # answers 504 at the deadline, so computing it would only delay everyone else
                self._error_request(request, DeadlineExpired())
        if cancelled:
            for file in [f for f in self._files if f.uid in cancelled]:
                self._error_file(file, Cancelled())

    def _top_up(self, slots: list[_Slot]) -> int:
        """Add file inputs to ``slots``, files taking turns; return how many files gave some."""
        lead = self._files.index(self._lead) if self._lead in self._files else 0
        order = self._files[lead:] + self._files[:lead]
        served: list[_File] = []
        for file in order:
            if len(slots) >= self.limits.max_batch_size:
                break
            if not self._refill(file) or not file.backlog:
                continue
            backlog = list(file.backlog.values())  # oldest first
            if slots:
                chosen: list[_Slot] = []
                longest = max(s.cost for s in slots)
                for slot in sorted(backlog, key=lambda s: s.cost):
                    longest = max(longest, slot.cost)
                    if not self.limits.fits(len(slots) + len(chosen) + 1, longest):
                        break  # ascending costs: nothing further fits either
                    chosen.append(slot)
            else:
                chosen = [backlog[i] for i in _oldest_group([s.cost for s in backlog], self.limits)]
            if chosen:
                served.append(file)
                for slot in chosen:
                    del file.backlog[slot.seq]
                slots.extend(chosen)
        if served:
            # the file after the first one served leads next time
            after = order.index(served[0]) + 1
            self._lead = next((f for f in order[after:] + order[:after] if not f.closed), None)
        return len(served)

    def _refill(self, file: _File) -> bool:
        """Take inputs until the file holds a window's worth; False if the file closed."""
        # a window's worth to plan from; outputs held for in-order emission stay bounded too
        wanted = min(self.window - len(file.backlog), LOOKAHEAD * self.window - (file.taken - file.emitted))
        if file.exhausted or file.paused or wanted <= 0:
            return True
        try:
            values = list(file.source.take(wanted))
            costs = self._costs(values)
        except Exception as exc:
            self._error_file(file, exc)
            return False
        if not values and file.taken > file.emitted:
            file.paused = True  # at its end, or waiting for these outputs: _emit asks again
            return True
        if not values:
            file.exhausted = True
            self._emit(file)  # finishes it when nothing is outstanding
            return not file.closed
        for value, cost in zip(values, costs, strict=True):
            slot = _Slot(file, file.taken, value, cost, next(self._seq))
            file.backlog[slot.seq] = slot
            file.taken += 1
        return True

    def _emit(self, file: _File) -> None:
        ready: list[Any] = []
        while file.emitted + len(ready) in file.finished:
            ready.append(file.finished.pop(file.emitted + len(ready)))
        file.emitted += len(ready)
        try:
            if ready:
                file.source.emit(ready)
            if file.exhausted and file.emitted == file.taken:
                self._forget(file)
                file.source.finish()
        except Exception as exc:
            self._error_file(file, exc)
            return
        if ready and file.paused:
            file.paused = False
            if file.emitted == file.taken:
                self._refill(file)  # a source at its end finishes now, with its last outputs

    def _close_request(self, request: _Request) -> None:
        request.closed = True
        self._requests.pop(id(request), None)
        for slot in request.slots:
            self._waiting.pop(slot.seq, None)

    def _error_request(self, request: _Request, error: BaseException) -> None:
        if not request.closed:
            self._close_request(request)
            _call(request.on_error, error)

    def _error_file(self, file: _File, error: BaseException) -> None:
        if file.closed:
            return
        self._forget(file)
        file.backlog.clear()
        file.finished.clear()
        _call(file.source.fail, error)

    def _forget(self, file: _File) -> None:
        file.closed = True
        index = self._files.index(file)
        del self._files[index]
        if self._lead is file:
            self._lead = self._files[index % len(self._files)] if self._files else None


def _oldest_group(costs: Sequence[int], limits: Limits) -> list[int]:
    """The planned forward that holds input 0 (the oldest): short inputs never starve long ones."""
    return next(group for group in plan(costs, limits) if 0 in group)


def _call(callback: Callable[..., None], *args: Any) -> None:
    # one owner's broken callback must not take the others' answers down with it
    try:
        callback(*args)
    except Exception:
        logger.exception("batcher: a completion callback raised")


def run_source(
    source: InputSource,
    run: Callable[[list[Any]], Sequence[Any]],
    limits: Limits,
    *,
    cost: CostFunction = unit_costs,
) -> None:
    """Compute every input of ``source`` in this thread through the same planner as the worker
    (the CLI's file job): ``run`` is ``session.run``. Raises what stopped the source, after
    ``source.fail`` has been told."""
    failures: list[BaseException] = []
    watched = _Watched(source, failures)
    scheduler = Scheduler(limits, cost=cost)
    scheduler.add_file(watched)
    while (forward := scheduler.next_forward()) is not None:
        try:
            outputs = run(forward.inputs)
        except Exception as exc:
            scheduler.fail(forward, exc)
            raise
        scheduler.complete(forward, outputs)
    if failures:
        raise failures[0]


class _Watched:
    """An :class:`InputSource` that also remembers why it failed."""

    def __init__(self, source: InputSource, failures: list[BaseException]) -> None:
        self.source = source
        self.uid = source.uid
        self.failures = failures

    def take(self, limit: int) -> Sequence[Any]:
        return self.source.take(limit)

    def emit(self, outputs: list[Any]) -> None:
        self.source.emit(outputs)

    def finish(self) -> None:
        self.source.finish()

    def fail(self, error: BaseException) -> None:
        self.failures.append(error)
        self.source.fail(error)
