"""How many torch threads a forward gets: all the worker's threads while the API servers have
little to do, fewer while the worker's backlog shows overload.

Under overload the API servers refuse the excess (503) as fast as it arrives, and that takes CPU.
With every core in the forward, OpenMP's threads then wait on each other whenever one is
preempted: measured on 2 cores at 4× the sustainable rate (``python -m benchmarks.overload``),
the worker with 2 threads accepted 250 req/s, with 1 thread 294 req/s. A backlog of several full
forwards is the sign: below it (closed-loop clients, up to a couple of forwards waiting) the
forward keeps every thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

logger = logging.getLogger("service.worker")


class ThreadGovernor:
    """Switches between ``full`` and ``under_load`` threads with hysteresis on the backlog:
    ``under_load`` above ``high`` waiting inputs, ``full`` again below ``low``."""

    def __init__(
        self,
        full: int,
        under_load: int,
        *,
        high: int,
        low: int,
        set_threads: Callable[[int], None],
        model: str = "",
    ) -> None:
        if not 0 <= low <= high:
            raise ValueError(f"need 0 <= low <= high, got low={low}, high={high}")
        self.full = full
        self.under_load = under_load
        self.high = high
        self.low = low
        self.current = full
        self._set_threads = set_threads
        self._model = model

    @property
    def adaptive(self) -> bool:
        return 0 < self.under_load < self.full

    def update(self, waiting: int) -> int:
        """The threads for the next forward, given the inputs waiting; switches torch when it changes."""
        if not self.adaptive:
            return self.current
        target = self.current
        if waiting > self.high:
            target = self.under_load
        elif waiting < self.low:
            target = self.full
        if target != self.current:
            self._set_threads(target)
            logger.info(
                "model %s: %d inputs waiting: %d torch threads per forward (was %d)",
                self._model,
                waiting,
                target,
                self.current,
            )
            self.current = target
        return self.current
