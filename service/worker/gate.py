"""The accuracy gate: a backend serves only if its outputs on a calibration set stay close to
``torch`` fp32's (torch-free figures over numpy arrays; the worker computes the outputs).

- embeddings: the smallest cosine between a text's two embeddings, and the mean overlap of each
  text's 10 nearest neighbours within the set (what retrieval sees);
- classification: whether every input keeps its top label, and the largest score difference;
- rerank: whether every query keeps its documents' order, and the largest score difference.

The built-in calibration set is deterministic and varied: 240 texts of 2 to ~300 words (most
short, some paragraphs) drawn from a fixed vocabulary, and for rerank 24 queries of 10 documents.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from service.core.repository import GateSpec

NEIGHBOURS = 10
_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "with",
    "as",
    "by",
    "at",
    "from",
    "it",
    "his",
    "an",
    "were",
    "are",
    "which",
    "this",
    "be",
    "or",
    "has",
    "had",
    "not",
    "but",
    "first",
    "one",
    "their",
    "its",
    "new",
    "after",
    "who",
    "they",
    "have",
    "her",
    "she",
    "two",
    "been",
    "other",
    "when",
    "there",
    "all",
    "during",
    "into",
    "school",
    "time",
    "may",
    "years",
    "more",
    "most",
    "only",
    "over",
    "city",
    "some",
    "world",
    "would",
    "where",
    "later",
    "up",
    "such",
    "used",
    "many",
    "can",
    "state",
    "about",
    "national",
    "out",
    "known",
    "university",
    "united",
    "then",
    "made",
    "team",
    "while",
    "system",
    "people",
    "river",
    "water",
    "music",
    "film",
    "market",
    "price",
    "energy",
    "health",
    "court",
    "police",
    "game",
    "season",
    "power",
    "church",
    "village",
    "house",
    "children",
    "language",
    "history",
    "company",
    "weather",
    "morning",
    "night",
    "summer",
    "winter",
    "garden",
    "kitchen",
    "station",
    "airport",
    "engine",
    "doctor",
    "patient",
    "student",
    "teacher",
    "museum",
    "library",
    "mountain",
    "island",
    "forest",
    "ocean",
    "coffee",
    "bread",
    "cheese",
    "apple",
    "orange",
    "banana",
    "capital",
    "country",
    "paris",
    "france",
    "berlin",
    "germany",
    "london",
    "england",
    "travel",
    "ticket",
    "train",
    "flight",
    "hotel",
    "room",
    "price",
    "cheap",
    "quick",
    "slow",
    "happy",
    "sad",
    "angry",
    "love",
    "hate",
    "great",
    "terrible",
    "fine",
    "good",
    "bad",
    "best",
    "worst",
    "never",
    "always",
    "sometimes",
]


def calibration_texts(count: int = 240, seed: int = 20261207) -> list[str]:
    """``count`` texts: 60% of 2-12 words, 30% of 15-60, 10% of 150-300; sentences with capitals
    and punctuation, some numbers."""
    rng = random.Random(seed)
    texts = []
    for index in range(count):
        band = index % 10
        low, high = (2, 12) if band < 6 else (15, 60) if band < 9 else (150, 300)
        words = [rng.choice(_WORDS) for _ in range(rng.randint(low, high))]
        if rng.random() < 0.2:
            words.insert(rng.randrange(len(words) + 1), str(rng.randint(1, 2030)))
        sentences, start = [], 0
        while start < len(words):
            end = min(len(words), start + rng.randint(6, 18))
            sentence = " ".join(words[start:end])
            sentences.append(sentence[0].upper() + sentence[1:] + rng.choice(".!?."))
            start = end
        texts.append(" ".join(sentences))
    return texts


def calibration_groups(queries: int = 24, documents: int = 10) -> list[tuple[str, list[str]]]:
    """Rerank: ``queries`` short queries, each with ``documents`` texts of the set."""
    texts = calibration_texts(queries * (documents + 1))
    groups = []
    for index in range(queries):
        block = texts[index * (documents + 1) : (index + 1) * (documents + 1)]
        query = min(block, key=len)
        groups.append((query, [text for text in block if text is not query][:documents]))
    return groups


def embedding_figures(reference: np.ndarray[Any, Any], candidate: np.ndarray[Any, Any]) -> dict[str, float]:
    ref = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    got = candidate / np.linalg.norm(candidate, axis=1, keepdims=True)
    cosines = (ref * got).sum(axis=1)

    def neighbours(unit: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        similarity = unit @ unit.T
        np.fill_diagonal(similarity, -np.inf)
        return np.argsort(-similarity, axis=1, kind="stable")[:, :NEIGHBOURS]

    a, b = neighbours(ref), neighbours(got)
    overlap = np.mean([len(set(x) & set(y)) / NEIGHBOURS for x, y in zip(a, b, strict=True)])
    return {"min_cosine": float(cosines.min()), "neighbour_overlap": float(overlap)}


def classification_figures(
    reference: np.ndarray[Any, Any], candidate: np.ndarray[Any, Any]
) -> dict[str, float]:
    same = reference.argmax(axis=1) == candidate.argmax(axis=1)
    return {
        "top_label_agreement": float(same.mean()),
        "max_score_difference": float(np.abs(reference - candidate).max()),
    }


def rerank_figures(
    reference: np.ndarray[Any, Any], candidate: np.ndarray[Any, Any], group_size: int
) -> dict[str, float]:
    ref, got = reference.reshape(-1, group_size), candidate.reshape(-1, group_size)
    same = [
        list(np.argsort(-r, kind="stable")) == list(np.argsort(-g, kind="stable"))
        for r, g in zip(ref, got, strict=True)
    ]
    return {"order_agreement": float(np.mean(same)), "max_score_difference": float(np.abs(ref - got).max())}


def failure(figures: dict[str, float], limits: GateSpec) -> str | None:
    """The first figure that fails ``limits`` (a model's ``gate:``), as one line; None when all pass."""
    checks = (
        ("min_cosine", limits.min_cosine, "min cosine"),
        ("neighbour_overlap", limits.min_neighbour_overlap, f"mean top-{NEIGHBOURS} neighbour overlap"),
        ("top_label_agreement", 1.0, "inputs keeping their top label"),
        ("order_agreement", 1.0, "queries keeping their documents' order"),
    )
    for key, least, label in checks:
        if key in figures and figures[key] < least:
            return f"{label} {figures[key]:.6g} < {least:g}"
    difference = figures.get("max_score_difference")
    if difference is not None and difference > limits.max_score_difference:
        return f"max score difference {difference:.3g} > {limits.max_score_difference:g}"
    return None
