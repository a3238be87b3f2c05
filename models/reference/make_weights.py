"""Writes weights.safetensors for the reference model (deterministic: seed 0).

    python -m models.reference.make_weights

Prints the file's sha256, which belongs in model.yaml.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from models.reference.model import MLP, MLPConfig
from service.core.repository import sha256_file


def main() -> None:
    torch.manual_seed(0)
    module = MLP(MLPConfig())
    target = Path(__file__).with_name("weights.safetensors")
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(target))
    print(f"{target}: sha256 {sha256_file(target)}")


if __name__ == "__main__":
    main()
