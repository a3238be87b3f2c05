"""Running a forward so that one bad input fails alone (torch-free)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from service.core.rejection import InputRejected


@dataclass
class Isolated:
    """A forward's results: per input its output, or the exception it failed with alone."""

    results: list[Any]
    retries: int  # forwards run after the first (on fewer inputs) to isolate failures

    @property
    def failed(self) -> int:
        return sum(isinstance(result, BaseException) for result in self.results)


def run_isolated(run: Callable[[list[Any]], Sequence[Any]], inputs: Sequence[Any]) -> Isolated:
    """``run(inputs)``; if it raises, run again without the input an :class:`InputRejected`
    names, or in halves, until every input has an output or fails on its own. The exception of
    an input that fails alone takes its place in the results."""
    inputs = list(inputs)
    try:
        return Isolated(list(run(inputs)), 0)
    except Exception as exc:
        if len(inputs) == 1:
            return Isolated([exc], 0)
        index = exc.index if isinstance(exc, InputRejected) else None
        if index is not None and 0 <= index < len(inputs):
            rest = run_isolated(run, inputs[:index] + inputs[index + 1 :])
            rest.results.insert(index, exc)
            return Isolated(rest.results, rest.retries + 1)
        middle = len(inputs) // 2
        first, second = run_isolated(run, inputs[:middle]), run_isolated(run, inputs[middle:])
        return Isolated(first.results + second.results, first.retries + second.retries + 2)
