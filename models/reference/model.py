"""The reference model: a two-layer MLP over fixed-length float vectors.

It is the template to copy when adding a model: a ``load()`` that builds the module from
verified safetensors weights and returns an object with preprocess / forward / postprocess.
No I/O beyond reading the weights, no HTTP.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from service.core.repository import ModelSpec


@dataclass(frozen=True)
class MLPConfig:
    in_features: int = 16  # floats per input vector
    hidden: int = 32  # width of the hidden layer
    out_features: int = 4  # floats per output


class MLP(nn.Module):
    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.in_features, config.hidden)
        self.fc2 = nn.Linear(config.hidden, config.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc2(torch.tanh(self.fc1(x)))
        return out


class ReferenceModel:
    def __init__(self, module: MLP, device: str, delay: float = 0.0) -> None:
        self.module = module
        self.device = device
        # simulated compute time per forward (model.yaml options.delay_seconds), for load tests
        self.delay = delay

    def preprocess(self, inputs: Sequence[Sequence[float]]) -> torch.Tensor:
        return torch.tensor(inputs, dtype=torch.float32, device=self.device)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        if self.delay:
            time.sleep(self.delay)
        out: torch.Tensor = self.module(batch)
        return out

    def postprocess(self, output: torch.Tensor) -> list[list[float]]:
        rows: list[list[float]] = output.detach().cpu().tolist()
        return rows


def load(spec: ModelSpec, weights: Path, device: str, **_: Any) -> ReferenceModel:
    config = MLPConfig(in_features=spec.inputs.dim or MLPConfig.in_features)
    module = MLP(config)
    module.load_state_dict(load_file(str(weights), device="cpu"))
    module.to(device).eval()
    return ReferenceModel(module, device, float(spec.options.get("delay_seconds", 0.0)))
