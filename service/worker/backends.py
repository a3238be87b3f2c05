"""How a ``huggingface``-runtime model's network runs: a backend (runs in the inference worker).

- ``torch``: fp32 eager, the reference every other backend is checked against.
- ``torch-bf16``: a copy of the module with its weights cast to bfloat16 once (every operator in
  bf16, fast where the CPU has AVX-512 BF16 or AMX); outputs back in fp32.
- ``torch-bf16-autocast``: the fp32 module under ``torch.autocast`` to bfloat16 (matmuls in bf16,
  the rest in fp32: closer to fp32, but every forward casts the weights again).
- ``onnx``: ONNX Runtime fp32 on the folder exported by ``torch.onnx.export`` and fused by ONNX
  Runtime's transformer optimizer (attention, layer norm, GELU as single kernels).
- ``onnx-int8``: that graph with its weights quantised per channel to int8 (dynamic quantisation).

A backend is called with the tokenizer's features and returns the network's first output (the
last hidden state of an encoder, the logits of a classifier) as an fp32 tensor, so the models of
:mod:`service.worker.huggingface` pool, activate and postprocess the same way whatever runs.

Exports are made once per folder (keyed by its manifest's sha256) and kept in the cache folder,
each with a JSON record of its own sha256 and the library versions that made it; a file whose
digest does not match its record is made again. Nothing is exported on the request path: the
worker makes or verifies them while it loads, before it is ready.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from service.core.repository import sha256_file

logger = logging.getLogger("service.worker")

BACKENDS = ("torch", "torch-bf16", "torch-bf16-autocast", "onnx", "onnx-int8")
REFERENCE = "torch"
FEATURES = ("input_ids", "attention_mask", "token_type_ids")
ONNX_OPSET = 17
Backend = Callable[[dict[str, torch.Tensor]], torch.Tensor]


class TorchBackend:
    name = "torch"

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    def __call__(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        output: torch.Tensor = self.module(**features)[0]
        return output


class TorchBf16Backend(TorchBackend):
    """bf16 weights: on this round's Xeon (AMX) minilm's batches of 16 on one thread ran 20.8 ms
    against 28.5 under autocast and 45.3 in fp32; the copy costs half the fp32 weights' memory."""

    name = "torch-bf16"

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__(copy.deepcopy(module).to(torch.bfloat16))

    def __call__(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        output: torch.Tensor = self.module(**features)[0]
        return output.float()


class TorchAutocastBackend(TorchBackend):
    name = "torch-bf16-autocast"

    def __call__(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output: torch.Tensor = self.module(**features)[0]
        return output.float()


def session_options(threads: int) -> Any:
    """ONNX Runtime's options for a session on ``threads`` threads, sequential, spinning only
    while a run lasts."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    # A pool of several threads (a worker computing alone, on every core) spins between the
    # operators of a run and stops when the run ends: minilm's lone forward on 2 threads took
    # 1.74 ms so against 2.37 ms without spinning, for 7.7 ms of CPU per run against 5.0 (left
    # spinning after runs it burnt 26 ms per run, a core a peer would need). One thread has
    # no pool to wake.
    spin = threads > 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    if spin:
        options.add_session_config_entry("session.force_spinning_stop", "1")
    return options


class OnnxBackend:
    """An ONNX Runtime session per thread count: the worker's thread policy sets torch's count
    before each forward (all cores alone, a share side by side); the matching session runs it."""

    def __init__(self, name: str, path: Path, thread_counts: tuple[int, ...]) -> None:
        self.name = name
        self.path = path
        self.sessions = {count: self._session(count) for count in sorted(set(thread_counts))}
        first = next(iter(self.sessions.values()))
        self.inputs = [item.name for item in first.get_inputs()]
        self.output = first.get_outputs()[0].name

    def _session(self, threads: int) -> Any:
        import onnxruntime

        return onnxruntime.InferenceSession(
            str(self.path), session_options(threads), providers=["CPUExecutionProvider"]
        )

    def __call__(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        threads = torch.get_num_threads()
        session = self.sessions.get(threads)
        if session is None:  # a count the policy did not announce: the nearest below, else the smallest
            below = [count for count in self.sessions if count <= threads]
            session = self.sessions[max(below) if below else min(self.sessions)]
        feeds = {name: features[name].cpu().numpy() for name in self.inputs}
        (output,) = session.run([self.output], feeds)
        return torch.from_numpy(output)


class _FirstOutput(torch.nn.Module):
    """The module with positional features and its first output only: what is exported."""

    def __init__(self, module: torch.nn.Module, names: tuple[str, ...]) -> None:
        super().__init__()
        self.module = module
        self.names = names

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        output: torch.Tensor = self.module(**dict(zip(self.names, features, strict=True)))[0]
        return output


def library_versions() -> dict[str, str]:
    import onnxruntime
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class ExportCache:
    """The exports of one folder: ``<root>/<model>-<folder sha256[:16]>/<backend>.onnx`` and
    ``<backend>.json`` (its sha256, the versions that made it)."""

    def __init__(self, root: Path, model: str, folder_sha256: str) -> None:
        self.folder = root / f"{model}-{folder_sha256[:16]}"

    def verified(self, backend: str) -> Path | None:
        graph, record = self.folder / f"{backend}.onnx", self.folder / f"{backend}.json"
        if not graph.is_file() or not record.is_file():
            return None
        try:
            expected = json.loads(record.read_text("utf-8"))["sha256"]
        except (ValueError, KeyError, OSError):
            return None
        if sha256_file(graph) != expected:
            logger.warning("export %s does not match its record: made again", graph)
            return None
        return graph

    def store(self, backend: str, made: Path) -> Path:
        graph = self.folder / f"{backend}.onnx"
        self.folder.mkdir(parents=True, exist_ok=True)
        os.replace(made, graph)
        record = {"sha256": sha256_file(graph), "versions": library_versions()}
        atomic_write(self.folder / f"{backend}.json", json.dumps(record, indent=2).encode())
        return graph


def export(
    module: torch.nn.Module, features: dict[str, torch.Tensor], cache: ExportCache, backend: str
) -> Path:
    """The verified ONNX graph of ``backend`` (``onnx`` or ``onnx-int8``), made now if the cache
    has none (``features``: a tokenized example batch, to trace with)."""
    found = cache.verified(backend)
    if found is not None:
        return found
    if backend == "onnx-int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        fused = export(module, features, cache, "onnx")
        with tempfile.TemporaryDirectory(dir=cache.folder) as scratch:
            made = Path(scratch) / "int8.onnx"
            # the fused graph's contrib ops defeat shape inference: their outputs are fp32
            from onnx import TensorProto

            # the quantizer logs every tensor at INFO on the root logger
            root = logging.getLogger()
            level = root.level
            root.setLevel(max(level, logging.WARNING))
            try:
                quantize_dynamic(
                    str(fused),
                    str(made),
                    per_channel=True,
                    weight_type=QuantType.QInt8,
                    extra_options={"DefaultTensorType": TensorProto.FLOAT},
                )
            finally:
                root.setLevel(level)
            return cache.store(backend, made)
    names = tuple(name for name in FEATURES if name in features)
    cache.folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache.folder) as scratch:
        raw, fused = Path(scratch) / "raw.onnx", Path(scratch) / "fused.onnx"
        dynamic = {name: {0: "batch", 1: "sequence"} for name in names}
        # the eager attention's graph is the one ONNX Runtime fuses into its Attention kernel
        # (SDPA's exports as separate MatMul/Softmax/IsNaN nodes); the module is restored after
        attention = getattr(module.config, "_attn_implementation", None)
        switch: Any = getattr(module, "set_attn_implementation", None)
        if attention not in (None, "eager") and switch is not None:
            switch("eager")
        try:
            # tracing warns about every data-dependent branch of the module (its shapes are
            # dynamic axes here); the accuracy gate, not the warnings, says whether the graph is right
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    _FirstOutput(module, names),
                    tuple(features[name] for name in names),
                    str(raw),
                    input_names=list(names),
                    output_names=["output"],
                    dynamic_axes={**dynamic, "output": {0: "batch"}},
                    opset_version=ONNX_OPSET,
                    dynamo=False,
                )
        finally:
            if attention not in (None, "eager") and switch is not None:
                switch(attention)
        from onnxruntime.transformers import optimizer

        # the optimizer's fusions by architecture; BERT's cover the encoders the runtime serves
        config = module.config
        kind = str(getattr(config, "model_type", "bert"))
        optimized = optimizer.optimize_model(
            str(raw),
            model_type=kind if kind in optimizer.MODEL_TYPES else "bert",
            num_heads=int(getattr(config, "num_attention_heads", 0)),
            hidden_size=int(getattr(config, "hidden_size", 0)),
        )
        optimized.save_model_to_file(str(fused))
        logger.info(
            "exported %s (%s): %s", cache.folder.name, backend, optimized.get_fused_operator_statistics()
        )
        return cache.store(backend, fused)


def make_backend(
    name: str,
    module: torch.nn.Module,
    example: dict[str, torch.Tensor],
    cache: ExportCache | None,
    thread_counts: tuple[int, ...],
) -> Backend:
    if name == "torch":
        return TorchBackend(module)
    if name == "torch-bf16":
        return TorchBf16Backend(module)
    if name == "torch-bf16-autocast":
        return TorchAutocastBackend(module)
    if name in ("onnx", "onnx-int8"):
        assert cache is not None
        path = export(module, example, cache, name)
        return OnnxBackend(name, path, thread_counts)
    raise ValueError(f"unknown backend {name!r} (one of {', '.join(BACKENDS)})")
