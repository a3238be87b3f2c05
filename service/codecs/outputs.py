"""Output kinds, one codec each: what a model's per-input output means and how the native route
answers it (torch-free). The worker returns plain lists of floats for every kind; the codec turns
them into the answer.

- ``embedding``: the floats themselves (OpenAI's ``/v1/embeddings`` serves only this kind).
- ``relevance``: one score per input (a reranker's, ``[score]``), as the floats.
- ``tensors``: several named tensors of any datatype (``service.codecs.tensors``), by name.
- ``classification``: the model's logits over ``labels``; answered as ``[{"label", "score"}]``
  sorted by score, best first, scores by softmax (one label per input) or sigmoid (multi-label),
  cut to ``top_k``; ``raw_scores: true`` answers the logits instead.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from service.codecs.tensors import TENSORS_OUTPUT

if TYPE_CHECKING:
    from service.core.repository import OutputSpec


class OutputCodec(Protocol):
    kind: str
    openai_embeddings: bool  # whether /v1/embeddings serves it

    def parameters_type(self, spec: OutputSpec) -> Any:
        """The pydantic type of the native request's ``parameters`` (None: the kind takes none)."""
        ...

    def native(self, spec: OutputSpec, outputs: list[Any], parameters: Any) -> list[Any]:
        """The native route's ``outputs``."""
        ...


class Floats:
    """``embedding`` and ``relevance``: the outputs as they are."""

    def __init__(self, kind: str, openai_embeddings: bool) -> None:
        self.kind = kind
        self.openai_embeddings = openai_embeddings

    def parameters_type(self, spec: OutputSpec) -> Any:
        return None

    def native(self, spec: OutputSpec, outputs: list[Any], parameters: Any) -> list[Any]:
        return outputs


def softmax(logits: list[float]) -> list[float]:
    top = max(logits)
    exps = [math.exp(x - top) for x in logits]
    total = sum(exps)
    return [e / total for e in exps]


def sigmoid(logits: list[float]) -> list[float]:
    return [1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x)) for x in logits]


class Classification:
    kind = "classification"
    openai_embeddings = False

    def parameters_type(self, spec: OutputSpec) -> Any:
        class ClassificationParameters(BaseModel):
            model_config = ConfigDict(extra="forbid")
            top_k: Annotated[StrictInt, Field(ge=1, le=len(spec.labels))] | None = None
            raw_scores: StrictBool = False

        return ClassificationParameters

    def scores(self, spec: OutputSpec, logits: list[float]) -> list[float]:
        return sigmoid(logits) if spec.activation == "sigmoid" else softmax(logits)

    def native(self, spec: OutputSpec, outputs: list[Any], parameters: Any) -> list[Any]:
        top_k = getattr(parameters, "top_k", None) or len(spec.labels)
        raw = bool(getattr(parameters, "raw_scores", False))
        answers = []
        for logits in outputs:
            scores = list(logits) if raw else self.scores(spec, list(logits))
            ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:top_k]
            answers.append([{"label": spec.labels[i], "score": scores[i]} for i in ranked])
        return answers


OUTPUT_CODECS: dict[str, OutputCodec] = {
    "embedding": Floats("embedding", openai_embeddings=True),
    "relevance": Floats("relevance", openai_embeddings=False),
    "classification": Classification(),
    "tensors": TENSORS_OUTPUT,
}
