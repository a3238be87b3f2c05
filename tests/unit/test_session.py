"""InferenceSession invariants: no autograd inside, grad mode restored, exceptions unchanged."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pytest
import torch

from service.worker.session import InferenceSession


class Linear:
    """A Model whose parameters require grad, as a freshly trained module would."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.module = torch.nn.Linear(4, 2)
        assert all(p.requires_grad for p in self.module.parameters())
        self.seen: list[torch.Tensor] = []

    def preprocess(self, inputs: Sequence[Any]) -> torch.Tensor:
        return torch.tensor(inputs, dtype=torch.float32, requires_grad=True)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        out = self.module(batch) * 2
        self.seen.extend([batch, out])
        return out

    def postprocess(self, output: torch.Tensor) -> list[Any]:
        self.seen.append(output)
        return list(output)


class Boom(Exception):
    pass


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_tensors_made_inside_carry_no_graph(mode: str) -> None:
    model = Linear()
    session = InferenceSession(model, mode)  # type: ignore[arg-type]
    outputs = session.run([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 1.0]])
    assert len(outputs) == 2
    produced = model.seen[1:]  # the forward's output and what postprocess saw
    assert produced
    for tensor in [*produced, *outputs]:
        assert tensor.requires_grad is False
        assert tensor.grad_fn is None
    if mode == "inference_mode":
        assert all(t.is_inference() for t in produced)


@pytest.mark.parametrize("before", [True, False])
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_grad_mode_restored_after_exception_and_exception_unchanged(before: bool, mode: str) -> None:
    session = InferenceSession(Linear(), mode)  # type: ignore[arg-type]
    error = Boom("the forward failed")
    torch.set_grad_enabled(before)
    try:
        with pytest.raises(Boom) as caught, session:
            assert torch.is_grad_enabled() is False
            raise error
        assert caught.value is error
        assert torch.is_grad_enabled() is before
    finally:
        torch.set_grad_enabled(True)


def test_reusable_thousands_of_times_and_nesting_is_harmless() -> None:
    model = Linear()
    session = InferenceSession(model)
    for _ in range(2000):
        with session:
            with session:
                assert not torch.is_grad_enabled()
            assert not torch.is_grad_enabled()
        assert torch.is_grad_enabled()
    assert session.batches == 2000  # timed once per outermost entry
    assert session.last_duration >= 0


def test_grad_mode_is_per_thread() -> None:
    session = InferenceSession(Linear())
    seen: dict[str, bool] = {}
    inside = threading.Event()
    release = threading.Event()

    def worker() -> None:
        with session:
            inside.set()
            release.wait(5)

    thread = threading.Thread(target=worker)
    thread.start()
    inside.wait(5)
    seen["main"] = torch.is_grad_enabled()
    release.set()
    thread.join()
    assert seen["main"] is True


def test_on_batch_reports_duration_and_size() -> None:
    calls: list[tuple[float, int]] = []
    session = InferenceSession(Linear(), on_batch=lambda seconds, size: calls.append((seconds, size)))
    session.run([[1.0, 1.0, 1.0, 1.0]] * 3)
    assert len(calls) == 1 and calls[0][1] == 3 and calls[0][0] > 0


def test_rejects_unknown_grad_mode() -> None:
    with pytest.raises(ValueError, match="grad_mode"):
        InferenceSession(Linear(), "enable_grad")  # type: ignore[arg-type]


def test_output_count_mismatch_is_an_error() -> None:
    model = Linear()
    model.postprocess = lambda output: [1]  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="1 outputs for 2 inputs"):
        InferenceSession(model).run([[0.0] * 4, [1.0] * 4])
    assert torch.is_grad_enabled()
