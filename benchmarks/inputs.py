"""The request inputs every contender receives: deterministic, so runs are comparable.

Workloads:
- ``short``: one short sentence per request (10 words; a 16-float vector for ``reference``; for
  ``reranker`` a 6-word query and a 10-word document).
- ``mixed``: what a retrieval pipeline sends when it embeds queries and document chunks:
  90% sentences of 8–20 words, 10% paragraphs of 180–230 words (about 256 tokens for
  minilm, its truncation length), shuffled with a fixed seed (``reranker``: as documents, each
  with a 6-word query). Text models only.
"""

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
# classifiers: labelled scores
OUTPUT_DIM = {"minilm": 384, "reference": 4, "reranker": 1, "classifier": 3, "image_classifier": 10}
VECTOR_DIM = 16  # floats per reference-model input
WORKLOADS = ("short", "mixed")

SENTENCE_WORDS = (8, 20)  # mixed workload: words per sentence, inclusive
PARAGRAPH_WORDS = (180, 230)  # mixed workload: words per paragraph, inclusive
PARAGRAPH_SHARE = 0.1


def _sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def sentences(count: int = 256, words: int = 10, seed: int = 0) -> list[str]:
    """``count`` short sentences of ``words`` words each."""
    rng = random.Random(seed)
    return [_sentence(rng, words) for _ in range(count)]


def paragraph(rng: random.Random, words: int) -> str:
    """A paragraph of exactly ``words`` words, made of sentences of 8–20 words."""
    parts = []
    left = words
    while left > 0:
        size = min(left, rng.randint(*SENTENCE_WORDS))
        parts.append(_sentence(rng, size))
        left -= size
    return " ".join(parts)


def mixed_texts(count: int = 320, seed: int = 0) -> list[str]:
    """``count`` texts, exactly ``PARAGRAPH_SHARE`` of them paragraphs (rounded), the rest
    sentences, at seeded random positions: the same list for the same arguments."""
    rng = random.Random(seed)
    long = set(rng.sample(range(count), round(count * PARAGRAPH_SHARE)))
    return [
        paragraph(rng, rng.randint(*PARAGRAPH_WORDS))
        if index in long
        else _sentence(rng, rng.randint(*SENTENCE_WORDS))
        for index in range(count)
    ]


def vectors(count: int = 256, seed: int = 0) -> list[list[float]]:
    """``count`` vectors of :data:`VECTOR_DIM` floats in [-1, 1]."""
    rng = random.Random(seed)
    return [[round(rng.uniform(-1.0, 1.0), 4) for _ in range(VECTOR_DIM)] for _ in range(count)]


def images(count: int = 32, seed: int = 0, size: tuple[int, int] = (640, 480)) -> list[bytes]:
    """``count`` photo-like JPEGs (quality 85): smooth gradients, a few shapes, mild noise; 20-35 KB
    each at 640 x 480, as a photo scaled for the web."""
    import io

    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    width, height = size
    made = []
    for _ in range(count):
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        base = [
            rng.uniform(0, 255) + rng.uniform(-0.2, 0.2) * xs + rng.uniform(-0.2, 0.2) * ys for _ in range(3)
        ]
        pixels = np.stack(base, axis=-1) + rng.normal(0, 6, (height, width, 3))
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x, y = int(rng.uniform(0, width)), int(rng.uniform(0, height))
            r = int(rng.uniform(10, height / 3))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
        out = io.BytesIO()
        image.save(out, "JPEG", quality=85)
        made.append(out.getvalue())
    return made


def model_inputs(model: str, count: int | None = None, workload: str = "short") -> list[Any]:
    """One input per element, of the kind ``model`` takes, for ``workload``: 256 by default,
    320 for ``mixed`` (10 batches of 32, exactly 32 paragraphs among them)."""
    if workload not in WORKLOADS:
        raise ValueError(f"unknown workload {workload!r}: one of {WORKLOADS}")
    if model in ("minilm", "classifier"):  # texts
        return mixed_texts(count or 320) if workload == "mixed" else sentences(count or 256)
    if model == "reranker":  # [query, document]: short queries against the workload's texts as documents
        documents = mixed_texts(count or 320) if workload == "mixed" else sentences(count or 256, seed=1)
        queries = sentences(len(documents), words=6, seed=2)
        return [[query, document] for query, document in zip(queries, documents, strict=True)]
    if model == "image_classifier":  # encoded images, sent as raw image/jpeg bodies
        return list(images(count or 32))
    if model == "reference":
        if workload == "mixed":
            raise ValueError("the mixed workload is text: minilm only")
        return vectors(count or 256)
    raise ValueError(f"no benchmark inputs for model {model!r}")
