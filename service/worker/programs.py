"""Models of named tensors in the worker: ``.onnx`` and ``.pt2`` programs (no Python of the
user's own), and the check of a ``model.py`` that answers tensors.

One input is a dict of name → numpy array (its row, service.codecs.tensors). A program's
forward stacks the rows of a batch whose free dimensions agree into one call per shape (rows of
different lengths cannot share a tensor without padding, which only the model could define), and
hands each input back its own rows of every output, in the declared datatype.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, TypeVar

import ml_dtypes
import numpy as np
import torch

from service.codecs.tensors import TensorSpec
from service.core.programs import load_exported
from service.core.rejection import InputRejected
from service.core.repository import Model, ModelSpec

T = TypeVar("T")
Arrays = dict[str, np.ndarray[Any, Any]]
Group = tuple[list[int], Arrays]


def to_torch(array: np.ndarray[Any, Any]) -> torch.Tensor:
    """A numpy array as a tensor sharing its memory (bfloat16 through its 16-bit pattern)."""
    if array.dtype == np.dtype(ml_dtypes.bfloat16):
        return torch.from_numpy(np.ascontiguousarray(array).view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(array))


def to_numpy(value: Any) -> np.ndarray[Any, Any]:
    """A model's output (a tensor, an array, a number, nested lists) as a numpy array on the CPU."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
        if tensor.dtype == torch.bfloat16:
            return tensor.contiguous().view(torch.uint16).numpy().view(ml_dtypes.bfloat16)
        return tensor.numpy()
    return np.asarray(value)


def checked(spec: TensorSpec, value: Any, rows: int | None, model: str) -> np.ndarray[Any, Any]:
    """``value`` as ``spec``'s array: its datatype exactly, its declared dimensions (after the
    batch of ``rows`` when given). RuntimeError naming the model and the tensor otherwise."""
    array = to_numpy(value)
    if array.dtype != spec.dtype:
        raise RuntimeError(
            f"model {model}: output {spec.name!r} is {array.dtype}, but is declared {spec.datatype}"
        )
    expected = ((rows,) if rows is not None else ()) + spec.row
    if len(array.shape) != len(expected) or any(
        want not in (-1, got) for want, got in zip(expected, array.shape, strict=True)
    ):
        raise RuntimeError(
            f"model {model}: output {spec.name!r} has shape {list(array.shape)}; expected {list(expected)}"
        )
    return array


def in_input_order(groups: Iterable[tuple[list[int], Sequence[T]]]) -> list[T]:
    """The outputs of a forward run as one call per group of inputs (their ``indices``, one output
    each), back in the inputs' order."""
    placed: dict[int, T] = {}
    for indices, outputs in groups:
        placed.update(zip(indices, outputs, strict=True))
    return [placed[index] for index in range(len(placed))]


def caused_by_values(exc: Exception) -> bool:
    """Whether a program's failure on inputs that fit its signature is their values' doing: ONNX
    Runtime's INVALID_ARGUMENT, torch's index, value and runtime errors; not memory running out
    nor ONNX Runtime's own failures (FAIL, RUNTIME_EXCEPTION, ...)."""
    if isinstance(exc, MemoryError | torch.OutOfMemoryError):
        return False
    if type(exc).__module__.startswith("onnxruntime"):
        return type(exc).__name__ == "InvalidArgument"
    return isinstance(exc, IndexError | ValueError | RuntimeError)


class ProgramModel:
    """A program (a callable from whole input tensors to whole output tensors) as a :class:`Model`.
    A context manager: leaving it releases the program (an ONNX Runtime session's memory)."""

    def __init__(self, spec: ModelSpec, run: Callable[[Arrays], Mapping[str, Any]], module: Any) -> None:
        self.spec = spec
        self.run: Callable[[Arrays], Mapping[str, Any]] | None = run
        self.module = module

    def preprocess(self, inputs: Sequence[Arrays]) -> list[Group]:
        names = [tensor.name for tensor in self.spec.inputs.tensors]
        groups: dict[tuple[tuple[int, ...], ...], list[int]] = {}
        for index, row in enumerate(inputs):
            groups.setdefault(tuple(row[name].shape for name in names), []).append(index)
        return [
            (indices, {name: np.stack([inputs[i][name] for i in indices]) for name in names})
            for indices in groups.values()
        ]

    def forward(self, groups: list[Group]) -> list[Group]:
        if self.run is None:
            raise RuntimeError(f"model {self.spec.name}: its program was closed")
        results = []
        for indices, batch in groups:
            try:
                outputs = self.run(batch)
            except Exception as exc:
                if not caused_by_values(exc):
                    raise  # the machine's or the program's own failure: a 500, not the client's
                # the inputs fit the program's signature, so their values broke it (an index out of
                # an embedding's range, ...): a 422 for the input that fails alone, the others answered
                reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
                raise InputRejected(f"the program failed on this input: {reason}") from exc
            arrays = {
                tensor.name: checked(tensor, outputs[tensor.name], len(indices), self.spec.name)
                for tensor in self.spec.outputs.tensors
            }
            results.append((indices, arrays))
        return results

    def postprocess(self, results: list[Group]) -> list[Arrays]:
        return in_input_order(
            (
                indices,
                [
                    {name: array[position] for name, array in arrays.items()}
                    for position in range(len(indices))
                ],
            )
            for indices, arrays in results
        )

    def close(self) -> None:
        self.run = None
        self.module = None

    def __enter__(self) -> ProgramModel:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def onnx_program(spec: ModelSpec, data: bytes, threads: int) -> ProgramModel:
    """An ONNX Runtime session of the (verified) bytes on ``threads`` threads; no custom-op
    library is ever registered."""
    import onnxruntime

    from service.worker.backends import session_options

    session = onnxruntime.InferenceSession(data, session_options(threads), providers=["CPUExecutionProvider"])
    names = [tensor.name for tensor in spec.outputs.tensors]

    def run(batch: Arrays) -> dict[str, Any]:
        return dict(zip(names, session.run(names, batch), strict=True))

    return ProgramModel(spec, run, session)


def exported_program(spec: ModelSpec, data: bytes, device: str) -> ProgramModel:
    """A torch.export program's module, called with the inputs in the exported order."""
    from torch.utils import _pytree

    program = load_exported(data)
    module = program.module().to(device)
    names = [tensor.name for tensor in spec.inputs.tensors]
    outputs = [tensor.name for tensor in spec.outputs.tensors]

    def run(batch: Arrays) -> dict[str, Any]:
        result = module(*[to_torch(batch[name]).to(device) for name in names])
        leaves, _ = _pytree.tree_flatten(result)
        return dict(zip(outputs, leaves, strict=True))

    return ProgramModel(spec, run, module)


def load(spec: ModelSpec, data: bytes, device: str) -> ProgramModel:
    """The program of ``spec`` (``runtime: onnx`` or ``torch-export``) from its verified bytes."""
    if spec.runtime == "onnx":
        return onnx_program(spec, data, torch.get_num_threads())
    return exported_program(spec, data, device)


class CheckedTensors:
    """A ``model.py`` model of ``tensors`` outputs whose every answer is checked against the
    declaration (names, datatypes, shapes): a mismatch is the model's error, named, never a
    malformed answer."""

    def __init__(self, spec: ModelSpec, model: Model) -> None:
        self.spec = spec
        self.model = model
        self.module = model.module

    def __getattr__(self, name: str) -> Any:  # costs, backends, ... of the wrapped model
        return getattr(self.model, name)

    def __enter__(self) -> CheckedTensors:
        if isinstance(self.model, AbstractContextManager):  # a model that owns resources
            self.model.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if isinstance(self.model, AbstractContextManager):
            self.model.__exit__(exc_type, exc, tb)

    def preprocess(self, inputs: Sequence[Any]) -> Any:
        return self.model.preprocess(inputs)

    def forward(self, batch: Any) -> Any:
        return self.model.forward(batch)

    def postprocess(self, output: Any) -> list[Arrays]:
        rows = self.model.postprocess(output)
        checked_rows: list[Arrays] = []
        for row in rows:
            if not isinstance(row, Mapping):
                raise RuntimeError(
                    f"model {self.spec.name}: postprocess must return one dict of tensors per input, "
                    f"got {type(row).__name__}"
                )
            missing = [t.name for t in self.spec.outputs.tensors if t.name not in row]
            if missing:
                raise RuntimeError(f"model {self.spec.name}: its output lacks tensor {missing[0]!r}")
            checked_rows.append(
                {t.name: checked(t, row[t.name], None, self.spec.name) for t in self.spec.outputs.tensors}
            )
        return checked_rows
