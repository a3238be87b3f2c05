"""service.worker.isolation: a bad input fails alone; its batch-mates get their outputs."""

from __future__ import annotations

from typing import Any

import pytest

from service.core.rejection import InputRejected
from service.worker.isolation import run_isolated

pytestmark = pytest.mark.unit


class Model:
    """Doubles numbers; refuses negatives (naming their index when ``indexed``), crashes on None."""

    def __init__(self, indexed: bool) -> None:
        self.indexed = indexed
        self.calls: list[list[Any]] = []

    def __call__(self, inputs: list[Any]) -> list[Any]:
        self.calls.append(inputs)
        for index, value in enumerate(inputs):
            if value is None:
                raise TypeError("unsupported operand")
            if value < 0:
                raise InputRejected(f"{value} is negative", index=index if self.indexed else None)
        return [2 * value for value in inputs]


def test_a_forward_that_succeeds_runs_once() -> None:
    model = Model(indexed=True)
    isolated = run_isolated(model, [1, 2, 3])
    assert isolated.results == [2, 4, 6] and isolated.retries == 0 and isolated.failed == 0
    assert model.calls == [[1, 2, 3]]


def test_an_input_the_model_names_is_taken_out_and_the_rest_run_again() -> None:
    model = Model(indexed=True)
    isolated = run_isolated(model, [1, -5, 3, -7, 4])
    assert [r if not isinstance(r, BaseException) else str(r) for r in isolated.results] == [
        2,
        "-5 is negative",
        6,
        "-7 is negative",
        8,
    ]
    assert isolated.retries == 2 and isolated.failed == 2
    assert model.calls == [[1, -5, 3, -7, 4], [1, 3, -7, 4], [1, 3, 4]]


def test_without_an_index_halves_find_the_inputs_that_fail_alone() -> None:
    model = Model(indexed=False)
    inputs = [1, 2, None, 4, 5, 6, -7, 8]
    isolated = run_isolated(model, inputs)
    assert isinstance(isolated.results[2], TypeError)
    assert isinstance(isolated.results[6], InputRejected)
    good = [r for i, r in enumerate(isolated.results) if i not in (2, 6)]
    assert good == [2 * x for i, x in enumerate(inputs) if i not in (2, 6)]  # type: ignore[operator]
    # every good input was computed in exactly one forward that succeeded
    succeeded = [call for call in model.calls if all(x is not None and x >= 0 for x in call)]
    assert sorted(x for call in succeeded for x in call) == [1, 2, 4, 5, 6, 8]
    assert isolated.retries == len(model.calls) - 1 <= 2 * len(inputs)


def test_a_single_input_that_fails_is_its_own_result() -> None:
    isolated = run_isolated(Model(indexed=True), [-1])
    assert isinstance(isolated.results[0], InputRejected) and isolated.retries == 0
