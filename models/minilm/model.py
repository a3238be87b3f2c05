"""all-MiniLM-L6-v2 as sentence-transformers runs it: BERT encoder, mean pooling over the
attention mask, L2 normalisation, truncation at ``max_seq_length`` from
``sentence_bert_config.json`` (256 tokens, not the tokenizer's 512).

Weights are read from safetensors only, with ``local_files_only=True``: no hub access.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel, AutoTokenizer

from service.core.repository import ModelError, ModelSpec


def mean_pool(token_embeddings: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the token embeddings where the mask is 1 (padding excluded)."""
    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
    summed = (token_embeddings * mask).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1e-9)
    return summed / counts


class MiniLMEmbedder:
    def __init__(self, tokenizer: Any, module: torch.nn.Module, max_seq_length: int, device: str) -> None:
        self.tokenizer = tokenizer
        self.module = module
        self.max_seq_length = max_seq_length
        self.device = device

    def costs(self, inputs: Sequence[str]) -> list[int]:
        """Tokens per input after truncation, [CLS] and [SEP] included: the batcher's cost and
        the usage reported to clients. The fast tokenizer without padding or tensors costs
        0.1-1.3% of the forward it precedes (measured), so preprocess simply tokenizes again."""
        encoded = self.tokenizer(
            list(inputs),
            truncation=True,
            max_length=self.max_seq_length,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        return [len(ids) for ids in encoded["input_ids"]]

    def preprocess(self, inputs: Sequence[str]) -> dict[str, torch.Tensor]:
        encoded = self.tokenizer(
            list(inputs),
            padding=True,
            truncation=True,
            max_length=self.max_seq_length,
            return_tensors="pt",
        )
        return {key: value.to(self.device) for key, value in encoded.items()}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        output = self.module(**batch)
        pooled = mean_pool(output.last_hidden_state, batch["attention_mask"])
        return torch.nn.functional.normalize(pooled, p=2, dim=1)

    def postprocess(self, output: torch.Tensor) -> list[list[float]]:
        rows: list[list[float]] = output.detach().cpu().tolist()
        return rows


def _read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        data: dict[str, Any] = json.load(handle)
    return data


def load(spec: ModelSpec, weights: Path, device: str, **_: Any) -> MiniLMEmbedder:
    sbert = _read_json(weights / "sentence_bert_config.json")
    pooling = _read_json(weights / "1_Pooling" / "config.json")
    if not pooling.get("pooling_mode_mean_tokens"):
        raise ModelError(f"model {spec.name!r}: only mean pooling is implemented, got {pooling}")
    tokenizer = AutoTokenizer.from_pretrained(str(weights), local_files_only=True)
    module = AutoModel.from_pretrained(str(weights), local_files_only=True, use_safetensors=True)
    module.to(device).eval()
    return MiniLMEmbedder(tokenizer, module, int(sbert["max_seq_length"]), device)
