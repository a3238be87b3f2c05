"""The request inputs every contender receives: deterministic, so runs are comparable."""

from __future__ import annotations

import random
from typing import Any

_TEXT = (
    "the quick brown fox jumps over a lazy dog while market prices rise and fall "
    "under grey autumn skies people walk slowly home after long days at work "
    "music plays softly in small cafes where friends share stories about travel "
    "science books weather football gardens cities rivers mountains coffee trains"
)
WORDS = tuple(_TEXT.split(" "))

# what each model answers per input: a 384-float embedding, a 4-float regression
OUTPUT_DIM = {"minilm": 384, "reference": 4}
VECTOR_DIM = 16  # floats per reference-model input


def sentences(count: int = 256, words: int = 10, seed: int = 0) -> list[str]:
    """``count`` short sentences of ``words`` words each."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "." for _ in range(count)]


def vectors(count: int = 256, seed: int = 0) -> list[list[float]]:
    """``count`` vectors of :data:`VECTOR_DIM` floats in [-1, 1]."""
    rng = random.Random(seed)
    return [[round(rng.uniform(-1.0, 1.0), 4) for _ in range(VECTOR_DIM)] for _ in range(count)]


def model_inputs(model: str, count: int = 256) -> list[Any]:
    """One input per element, of the kind ``model`` takes."""
    if model == "minilm":
        return list(sentences(count))
    if model == "reference":
        return list(vectors(count))
    raise ValueError(f"no benchmark inputs for model {model!r}")
