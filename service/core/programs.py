"""Programs of the user's own, served with no Python: a ``.onnx`` file (``runtime: onnx``) or a
program saved by ``torch.export.save`` (``runtime: torch-export``, a ``.pt2``).

Both are read from bytes whose sha256 was checked first (:func:`verified_bytes`), so the file
cannot change between the check and the load. Their tensors (names, datatypes, shapes) are read
from the program; a ``model.yaml`` may declare them too, and then they must agree.

- ONNX: parsed as protobuf (no code runs); a graph that needs operators outside ONNX's own
  domains and ONNX Runtime's ``com.microsoft`` (a custom-op library) is refused, and so are weights
  kept in external files (the checksum covers the one file). ``BF16`` tensors are refused: ONNX
  Runtime's Python API takes no bfloat16 arrays.
- torch.export: a ``.pt2`` is code (its constants are unpickled when loaded), so it is loaded
  only when its sha256 is pinned in the operator's configuration (``model.yaml``'s
  ``weights.sha256``, or ``--sha256 NAME=HEX``), never from anything a request names. Inputs are
  the exported ``forward``'s arguments by name; outputs are the keys of the dict it returns
  (``output_0``, ``output_1``… for a tuple; ``output`` for one tensor). The batch dimension must
  have been exported dynamic (``torch.export.Dim``).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from service.codecs.tensors import TensorSpec

RUNTIMES = {".onnx": "onnx", ".pt2": "torch-export"}
# ONNX operator domains ONNX Runtime implements itself; anything else needs a custom-op library
ONNX_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "ai.onnx.preview.training"}
# ONNX TensorProto element types → our datatypes
_ONNX_TYPES = {
    1: "FP32",
    2: "UINT8",
    3: "INT8",
    5: "INT16",
    6: "INT32",
    7: "INT64",
    9: "BOOL",
    10: "FP16",
    11: "FP64",
}
_TORCH_TYPES = {
    "float32": "FP32",
    "float16": "FP16",
    "bfloat16": "BF16",
    "float64": "FP64",
    "int64": "INT64",
    "int32": "INT32",
    "int16": "INT16",
    "int8": "INT8",
    "uint8": "UINT8",
    "bool": "BOOL",
}


class ProgramError(ValueError):
    """A program that cannot be served; the message says why (the caller names the model)."""


def verified_bytes(path: Path, sha256: str) -> bytes:
    """The file's bytes, once their sha256 matched ``sha256`` (ProgramError otherwise)."""
    if not path.is_file():
        raise ProgramError(f"program file {path} is missing")
    with open(path, "rb") as handle:
        data = handle.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise ProgramError(
            f"checksum mismatch for {path}: expected sha256 {sha256}, got {digest}; refusing to load"
        )
    return data


def signature(runtime: str, data: bytes) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The input and output tensors of a program's (verified) bytes."""
    if runtime == "onnx":
        return onnx_signature(onnx_graph(data))
    return export_signature(load_exported(data))


def onnx_graph(data: bytes) -> Any:
    """The ONNX model in ``data``, refused when it needs custom operators or external files."""
    import onnx

    try:
        model = onnx.ModelProto.FromString(data)  # external data files are never read
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ProgramError(f"not an ONNX model ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not model.graph.node and not model.graph.output:
        raise ProgramError("not an ONNX model (no graph)")
    domains = {opset.domain for opset in model.opset_import}
    external = False
    for node_domain, tensor in _everything(model):
        if node_domain is not None:
            domains.add(node_domain)
        elif tensor.data_location == onnx.TensorProto.EXTERNAL:
            external = True
    custom = sorted(domains - ONNX_DOMAINS)
    if custom:
        raise ProgramError(
            f"its graph uses operators of domain {custom[0]!r}: custom-op libraries are not loaded"
        )
    if external:
        raise ProgramError("its weights are in external data files; save the model as one file")
    return model


def _everything(model: Any) -> Iterator[tuple[str | None, Any]]:
    """Every node's domain (with None for the tensor) and every tensor (with None for the
    domain) of an ONNX model: its graph, its functions, and the subgraphs and tensors inside
    their nodes' attributes (an If's branches, a Constant's value)."""
    # (initializers, nodes) of each graph or function still to walk
    pending: list[tuple[list[Any], list[Any]]] = [(list(model.graph.initializer), list(model.graph.node))]
    for function in model.functions:
        yield function.domain, None
        pending.append(([], list(function.node)))
    while pending:
        initializers, nodes = pending.pop()
        for tensor in initializers:
            yield None, tensor
        for node in nodes:
            yield node.domain, None
            for attribute in node.attribute:
                graphs = ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs)
                pending.extend((list(graph.initializer), list(graph.node)) for graph in graphs)
                for tensor in ([attribute.t] if attribute.HasField("t") else []) + list(attribute.tensors):
                    yield None, tensor


def onnx_signature(model: Any) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    initializers = {initializer.name for initializer in model.graph.initializer}
    inputs = tuple(_onnx_tensor(value) for value in model.graph.input if value.name not in initializers)
    outputs = tuple(_onnx_tensor(value) for value in model.graph.output)
    return inputs, outputs


def _onnx_tensor(value: Any) -> TensorSpec:
    if not value.type.HasField("tensor_type"):
        raise ProgramError(f"tensor {value.name!r} is not a tensor (sequences and maps are not served)")
    kind = value.type.tensor_type
    datatype = _ONNX_TYPES.get(kind.elem_type)
    if datatype is None:
        raise ProgramError(
            f"tensor {value.name!r} has ONNX element type {kind.elem_type}, which is not served"
        )
    if not kind.HasField("shape"):
        raise ProgramError(f"tensor {value.name!r} has no declared shape (rank unknown)")
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in kind.shape.dim]
    return _tensor(value.name, datatype, dims)


def _tensor(name: str, datatype: str, dims: list[int]) -> TensorSpec:
    if not dims or dims[0] != -1:
        raise ProgramError(
            f"tensor {name!r} of shape {dims} has no dynamic batch dimension first; export it with one"
        )
    try:
        return TensorSpec.model_validate({"name": name, "datatype": datatype, "shape": dims})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        raise ProgramError(f"tensor {name[:128]!r}: {where}: {first['msg']}") from None


def load_exported(data: bytes) -> Any:
    """A torch.export program from verified bytes (an AOTInductor package is refused)."""
    import torch

    try:
        return torch.export.load(io.BytesIO(data))
    except Exception as exc:
        raise ProgramError(
            f"not a program saved by torch.export.save ({type(exc).__name__}: {str(exc)[:200]})"
        ) from None


def export_output_names(program: Any) -> list[str]:
    """Names of a torch.export program's outputs: a returned dict's keys, else ``output_<i>``
    (``output`` for a lone tensor)."""
    spec = program.call_spec.out_spec
    leaves = spec.num_leaves
    if (
        spec.type is dict
        and all(isinstance(key, str) for key in spec.context)
        and len(spec.context) == leaves
    ):
        return [str(key) for key in spec.context]
    if spec.num_children == 0:
        return ["output"]
    return [f"output_{index}" for index in range(leaves)]


def export_signature(program: Any) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    from torch.export.graph_signature import InputKind, OutputKind

    nodes = {node.name: node for node in program.graph.nodes}
    inputs = []
    for spec in program.graph_signature.input_specs:
        if spec.kind == InputKind.USER_INPUT:
            inputs.append(_export_tensor(spec.arg.name, nodes[spec.arg.name]))
    output_node = next(node for node in program.graph.nodes if node.op == "output")
    returned = output_node.args[0]
    user = [
        returned[index]
        for index, spec in enumerate(program.graph_signature.output_specs)
        if spec.kind == OutputKind.USER_OUTPUT
    ]
    names = export_output_names(program)
    if len(names) != len(user):
        raise ProgramError(
            f"its outputs ({len(user)} tensors) are not a tensor, a tuple or a dict of tensors"
        )
    outputs = [_export_tensor(name, node) for name, node in zip(names, user, strict=True)]
    return tuple(inputs), tuple(outputs)


def _export_tensor(name: str, node: Any) -> TensorSpec:
    value = getattr(node, "meta", {}).get("val")
    dtype = getattr(value, "dtype", None)
    if value is None or dtype is None:
        raise ProgramError(f"{name!r} is not a tensor (only tensors go in and out)")
    datatype = _TORCH_TYPES.get(str(dtype).removeprefix("torch."))
    if datatype is None:
        raise ProgramError(f"tensor {name!r} is {dtype}, which is not served")
    dims = [d if isinstance(d, int) else -1 for d in value.shape]
    return _tensor(name, datatype, dims)


def merge_declared(
    declared: tuple[TensorSpec, ...], found: tuple[TensorSpec, ...], where: str
) -> tuple[TensorSpec, ...]:
    """The program's tensors, or the declared ones when they agree with it: the same names,
    datatypes and ranks, a declared dimension fixed only where the program leaves it free."""
    if not declared:
        return found
    by_name = {tensor.name: tensor for tensor in found}
    if {t.name for t in declared} != set(by_name):
        raise ProgramError(
            f"model.yaml declares {where} tensors {sorted(t.name for t in declared)}; the program has "
            f"{sorted(by_name)}"
        )
    for tensor in declared:
        actual = by_name[tensor.name]
        if tensor.datatype != actual.datatype:
            raise ProgramError(
                f"{where} tensor {tensor.name!r} is declared {tensor.datatype}; the program's is {actual.datatype}"
            )
        if len(tensor.shape) != len(actual.shape) or any(
            have not in (-1, want) for want, have in zip(tensor.shape, actual.shape, strict=True)
        ):
            raise ProgramError(
                f"{where} tensor {tensor.name!r} is declared {list(tensor.shape)}; the program's is "
                f"{list(actual.shape)}"
            )
    order = {t.name: i for i, t in enumerate(found)}
    return tuple(sorted(declared, key=lambda t: order[t.name]))
