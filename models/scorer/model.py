"""The scorer: a model of two named tensors in and two out, of different datatypes.

``features`` (FP32 [N, 8]) and ``mask`` (BOOL [N, 8]: which features are present) go in;
``scores`` (FP32 [N, 3]: a linear layer over the present features) and ``label`` (INT64 [N]: the
best score's index) come out. It is the template for a ``model.py`` of named tensors: each input
is a dict of numpy arrays by name (its row), each output a dict of arrays (or tensors) by name,
checked against model.yaml's declaration.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from service.core.repository import ModelSpec

FEATURES = 8
CLASSES = 3


class Scorer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(FEATURES, CLASSES)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        scores: torch.Tensor = self.linear(features * mask.to(features.dtype))
        return {"scores": scores, "label": scores.argmax(dim=-1)}


class ScorerModel:
    def __init__(self, module: Scorer, device: str) -> None:
        self.module = module
        self.device = device

    def preprocess(
        self, inputs: Sequence[dict[str, np.ndarray[Any, Any]]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.from_numpy(np.stack([row["features"] for row in inputs])).to(self.device)
        mask = torch.from_numpy(np.stack([row["mask"] for row in inputs])).to(self.device)
        return features, mask

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.module(*batch)  # type: ignore[no-any-return]

    def postprocess(self, output: dict[str, torch.Tensor]) -> list[dict[str, np.ndarray[Any, Any]]]:
        scores = output["scores"].cpu().numpy()
        label = output["label"].cpu().numpy()
        return [{"scores": scores[i], "label": label[i]} for i in range(len(scores))]


def load(spec: ModelSpec, weights: Path, device: str, **_: Any) -> ScorerModel:
    module = Scorer()
    module.load_state_dict(load_file(str(weights), device="cpu"))
    module.to(device).eval()
    return ScorerModel(module, device)
