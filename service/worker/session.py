"""InferenceSession: the one place in the service that changes torch's grad mode.

A session owns one loaded model in one inference worker. ``with session:`` disables autograd
(``no_grad`` or ``inference_mode``), times the block, and restores the caller's grad mode on
exit even when the block raises. It is reusable (entered once per batch, for the life of the
worker) and re-entrant (a nested ``with`` is harmless and timed once, by the outermost entry).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any

import torch

from service.core.repository import GRAD_MODES, GradMode, Model

__all__ = ["GRAD_MODES", "GradMode", "InferenceSession"]


class InferenceSession:
    """Runs a model's batches with autograd off and reports each batch's compute time."""

    def __init__(
        self,
        model: Model,
        grad_mode: GradMode = "no_grad",
        on_batch: Callable[[float, int], None] | None = None,
    ) -> None:
        if grad_mode not in GRAD_MODES:
            raise ValueError(f"grad_mode must be one of {GRAD_MODES}, got {grad_mode!r}")
        self.model = model
        self.grad_mode: GradMode = grad_mode
        self._on_batch = on_batch
        # grad mode is per thread, so nesting is tracked per thread too
        self._local = threading.local()
        self.batches = 0
        self.last_duration = 0.0

    def _guard(self) -> AbstractContextManager[Any]:
        if self.grad_mode == "inference_mode":
            return torch.inference_mode()
        return torch.no_grad()

    def __enter__(self) -> InferenceSession:
        stack: list[tuple[AbstractContextManager[Any], float]] = getattr(self._local, "stack", [])
        self._local.stack = stack
        guard = self._guard()
        guard.__enter__()
        stack.append((guard, time.perf_counter()))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        guard, started = self._local.stack.pop()
        # the guard restores the grad mode that was in force at its __enter__
        guard.__exit__(exc_type, exc, tb)
        if not self._local.stack:
            self.last_duration = time.perf_counter() - started
            self.batches += 1
        # returning None lets any exception propagate unchanged

    def run(self, inputs: Sequence[Any]) -> list[Any]:
        """preprocess → forward → postprocess for one batch, inside the session."""
        with self:
            outputs = self.model.postprocess(self.model.forward(self.model.preprocess(inputs)))
        if self._on_batch is not None:
            self._on_batch(self.last_duration, len(inputs))
        if len(outputs) != len(inputs):
            raise RuntimeError(f"model returned {len(outputs)} outputs for {len(inputs)} inputs")
        return outputs
