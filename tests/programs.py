"""Programs of a user's own, made the way a user makes them: a module of two named inputs and
two outputs of different datatypes, saved by ``torch.onnx.export`` and by ``torch.export.save``
(seeded: the same files every run). Tests serve the files and compare with running them
in-process."""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from service.core.repository import sha256_file

VOCABULARY = 100
WIDTH = 4


class Pooler(nn.Module):
    """``tokens`` INT64 [N, L] (L free; 0 is padding) and ``weights`` FP32 [N, 4] in; ``pooled``
    FP32 [N, 4] (the present tokens' embeddings summed, times the weights) and ``count`` INT64
    [N] (how many tokens are present) out."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCABULARY, WIDTH)

    def forward(self, tokens: torch.Tensor, weights: torch.Tensor) -> dict[str, torch.Tensor]:
        present = tokens > 0
        pooled = (self.embed(tokens) * present.unsqueeze(-1).to(torch.float32)).sum(dim=1) * weights
        return {"pooled": pooled, "count": present.sum(dim=1)}


def pooler() -> Pooler:
    torch.manual_seed(0)
    return Pooler().eval()


def example(rows: int = 3, length: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCABULARY, (rows, length), generator=generator)
    return tokens, torch.rand((rows, WIDTH), generator=generator)


def make_onnx(path: Path) -> str:
    """The pooler as a ``.onnx`` file (batch and length dynamic); its sha256."""
    tokens, weights = example()
    torch.onnx.export(
        pooler(),
        (tokens, weights),
        str(path),
        input_names=["tokens", "weights"],
        output_names=["pooled", "count"],
        dynamic_axes={
            "tokens": {0: "batch", 1: "length"},
            "weights": {0: "batch"},
            "pooled": {0: "batch"},
            "count": {0: "batch"},
        },
        opset_version=17,
        dynamo=False,
    )
    return sha256_file(path)


def make_pt2(path: Path) -> str:
    """The pooler exported by ``torch.export`` (batch and length dynamic) and saved; its sha256."""
    batch, length = torch.export.Dim("batch", min=1, max=4096), torch.export.Dim("length", min=1, max=4096)
    program = torch.export.export(
        pooler(), example(), dynamic_shapes={"tokens": {0: batch, 1: length}, "weights": {0: batch}}
    )
    torch.export.save(program, str(path))
    return sha256_file(path)


_LOADING = threading.Lock()  # torch.export.load is not thread-safe: tests call these from threads


@functools.cache
def _onnx_session(path: Path) -> Any:
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@functools.cache
def _exported(path: Path) -> Any:
    return torch.export.load(str(path)).module()


def run_onnx(path: Path, tokens: np.ndarray[Any, Any], weights: np.ndarray[Any, Any]) -> dict[str, Any]:
    """The file run by ONNX Runtime in-process."""
    with _LOADING:
        session = _onnx_session(path)
    pooled, count = session.run(["pooled", "count"], {"tokens": tokens, "weights": weights})
    return {"pooled": pooled, "count": count}


def run_pt2(path: Path, tokens: np.ndarray[Any, Any], weights: np.ndarray[Any, Any]) -> dict[str, Any]:
    """The program loaded by ``torch.export.load`` and run in-process."""
    with _LOADING:
        module = _exported(path)
    with torch.no_grad():
        out = module(torch.from_numpy(tokens), torch.from_numpy(weights))
    return {name: value.numpy() for name, value in out.items()}
