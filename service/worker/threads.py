"""How many torch threads a forward gets, decided before each forward.

- **Alone** (no other worker of the model computed in the last 0.1 s): ``alone`` threads, every core the other
  workers would otherwise use, so one request at a time gets the fastest forward.
- **Side by side** (another worker of the model computes, or did within 0.1 s): ``shared`` threads, the
  machine's cores divided between the workers. Two 1-thread forwards side by side on 2 cores
  did 1.2× the inputs/s of one 2-thread forward (``python -m benchmarks.inprocess limit
  --processes 2``): OpenMP's threads of one forward wait on each other at every operator, and
  the turnaround of one worker's answers overlaps the other's forward.
- **Overloaded** (the worker's backlog exceeds ``high`` waiting inputs, until it is below
  ``low``): ``under_load`` threads. The API servers then refuse the excess (503) as fast as it
  arrives, and that takes CPU. With every core in the forward, OpenMP's threads wait on each
  other whenever one is preempted: measured on 2 cores at 4× the sustainable rate
  (``python -m benchmarks.overload``), one worker with 2 threads accepted 250 req/s, with 1
  thread 294 req/s.

Whether a peer is computing is read from a shared array of one entry per worker
(:class:`ComputeTimes`): each worker writes only its own entry, so no lock is shared that a
killed worker could leave held; its replacement clears the entry it left set.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, MutableSequence
from contextlib import contextmanager

logger = logging.getLogger("service.worker")

# A peer that computed this recently still counts as active (between the forwards of closed-loop
# clients a worker idles for the turnaround of its answers, a few ms at 32 connections).
QUIET_SECONDS = 0.1


class ComputeTimes:
    """When each worker of a model last computed: ``inf`` while it is in a forward, else the
    monotonic time its last forward ended (0: never). A peer counts as active while computing
    or within ``quiet`` seconds of its last forward, so closed-loop clients, who leave a worker
    idle for a moment between forwards, do not flip the thread count forward by forward.

    ``times`` is shared between the workers' processes (``multiprocessing.RawArray("d", n)``,
    made by the launcher; ``time.monotonic`` is the same clock in every process), or any mutable
    sequence of floats in one process."""

    def __init__(self, times: MutableSequence[float], index: int, quiet: float = QUIET_SECONDS) -> None:
        if not 0 <= index < len(times):
            raise ValueError(f"worker index {index} outside 0..{len(times) - 1}")
        self.times = times
        self.index = index
        self.quiet = quiet
        times[index] = 0.0  # a replaced worker may have died mid-forward, its time left at inf

    def peers_active(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return any(now - last < self.quiet for i, last in enumerate(self.times) if i != self.index)

    @contextmanager
    def forward(self) -> Iterator[None]:
        """This worker marked as computing for the duration of the block."""
        self.times[self.index] = math.inf
        try:
            yield
        finally:
            self.times[self.index] = time.monotonic()


class ThreadGovernor:
    """Chooses ``alone``, ``shared`` or ``under_load`` threads for each forward (see the module
    docstring); the backlog switch has hysteresis: over ``high`` waiting inputs on, below ``low``
    off."""

    def __init__(
        self,
        shared: int,
        under_load: int,
        *,
        high: int,
        low: int,
        set_threads: Callable[[int], None],
        alone: int = 0,
        model: str = "",
    ) -> None:
        if not 0 <= low <= high:
            raise ValueError(f"need 0 <= low <= high, got low={low}, high={high}")
        self.shared = shared
        self.alone = max(alone, shared)
        self.under_load = under_load if 0 < under_load < shared else 0
        self.high = high
        self.low = low
        self.current = shared
        self.overloaded = False
        self._set_threads = set_threads
        self._model = model

    @property
    def adaptive(self) -> bool:
        return bool(self.under_load) or self.alone > self.shared

    def update(self, waiting: int, peers_active: bool = False) -> int:
        """The threads for the next forward, given the inputs waiting and whether another worker
        of the model is active; tells torch only when the count changes."""
        if not self.adaptive:
            return self.current
        if self.under_load:
            overloaded = self.overloaded
            if waiting > self.high:
                overloaded = True
            elif waiting < self.low:
                overloaded = False
            if overloaded != self.overloaded:
                self.overloaded = overloaded
                logger.info(
                    "model %s: %d inputs waiting: %s",
                    self._model,
                    waiting,
                    f"{self.under_load} torch threads per forward" if overloaded else "backlog cleared",
                )
        if self.overloaded:
            target = self.under_load
        elif peers_active:
            target = self.shared
        else:
            target = self.alone
        if target != self.current:
            self._set_threads(target)
            self.current = target
        return self.current
