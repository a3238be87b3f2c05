"""The accuracy gate's figures and verdicts (service.worker.gate), and where backends may be declared."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from service.core.repository import GateSpec, ModelRepository
from service.worker.gate import (
    calibration_groups,
    calibration_texts,
    classification_figures,
    embedding_figures,
    failure,
    rerank_figures,
)


def test_the_calibration_set_is_deterministic_varied_and_large_enough() -> None:
    texts = calibration_texts()
    assert texts == calibration_texts() and len(texts) >= 200 and len(set(texts)) == len(texts)
    words = sorted(len(text.split()) for text in texts)
    assert words[0] <= 4 and words[-1] >= 150 and words[len(words) // 2] <= 15
    groups = calibration_groups()
    assert len(groups) * len(groups[0][1]) >= 200 and all(len(docs) == 10 for _, docs in groups)


def test_embedding_figures() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(50, 16))
    same = embedding_figures(reference, reference * 3.0)  # cosine ignores the norm
    assert same == {"min_cosine": pytest.approx(1.0), "neighbour_overlap": 1.0}
    assert failure(same, GateSpec()) is None
    noisy = embedding_figures(reference, reference + rng.normal(scale=0.3, size=reference.shape))
    assert noisy["min_cosine"] < 0.99 and noisy["neighbour_overlap"] < 0.99
    assert failure(noisy, GateSpec()).startswith("min cosine")  # type: ignore[union-attr]
    loose = GateSpec(min_cosine=0.5, min_neighbour_overlap=0.99)
    assert failure(noisy, loose).startswith("mean top-10 neighbour overlap")  # type: ignore[union-attr]
    assert failure(noisy, GateSpec(min_cosine=0.5, min_neighbour_overlap=0.0)) is None


def test_classification_and_rerank_figures() -> None:
    scores = np.array([[0.7, 0.2, 0.1], [0.1, 0.5, 0.4]])
    assert failure(classification_figures(scores, scores + 1e-4), GateSpec()) is None
    flipped = classification_figures(scores, np.array([[0.7, 0.2, 0.1], [0.1, 0.44, 0.46]]))
    assert flipped["top_label_agreement"] == 0.5
    assert failure(flipped, GateSpec()) == "inputs keeping their top label 0.5 < 1"
    drifted = classification_figures(scores, scores + 0.002)
    assert failure(drifted, GateSpec()) == "max score difference 0.002 > 0.001"
    reference = np.array([0.9, 0.5, 0.1, 0.3, 0.2, 0.8])
    assert rerank_figures(reference, reference, 3) == {"order_agreement": 1.0, "max_score_difference": 0.0}
    swapped = rerank_figures(reference, np.array([0.9, 0.5, 0.1, 0.3, 0.2, 0.1]), 3)
    assert swapped["order_agreement"] == 0.5
    assert failure(swapped, GateSpec()) == "queries keeping their documents' order 0.5 < 1"


def test_only_huggingface_models_choose_a_backend() -> None:
    reference = ModelRepository().get("reference").spec
    with pytest.raises(ValidationError, match="backend onnx is for the huggingface runtime"):
        type(reference).model_validate({**reference.model_dump(), "backend": "onnx"})
    minilm = ModelRepository().get("minilm").spec
    assert minilm.backend == "auto"
    assert type(minilm).model_validate({**minilm.model_dump(), "backend": "onnx-int8"}).backend == "onnx-int8"
    with pytest.raises(ValidationError):
        type(minilm).model_validate({**minilm.model_dump(), "backend": "tensorrt"})
