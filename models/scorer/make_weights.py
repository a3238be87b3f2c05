"""Writes weights.safetensors for the scorer (deterministic: seed 0).

    python -m models.scorer.make_weights

Prints the file's sha256, which belongs in model.yaml.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from models.scorer.model import Scorer
from service.core.repository import sha256_file


def main() -> None:
    torch.manual_seed(0)
    module = Scorer()
    target = Path(__file__).with_name("weights.safetensors")
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(target))
    print(f"{target}: sha256 {sha256_file(target)}")


if __name__ == "__main__":
    main()
