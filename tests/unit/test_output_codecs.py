"""service.codecs.outputs: what each output kind answers on the native route."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from service.codecs.outputs import sigmoid, softmax
from service.core.repository import OutputSpec

pytestmark = pytest.mark.unit

LABELS = ("negative", "neutral", "positive")


def test_floats_pass_through_and_take_no_parameters() -> None:
    for kind in ("embedding", "relevance"):
        spec = OutputSpec(kind=kind, size=2)
        assert spec.codec.native(spec, [[0.5, 1.0]], None) == [[0.5, 1.0]]
        assert spec.codec.parameters_type(spec) is None
    assert (
        OutputSpec(size=2).codec.openai_embeddings
        and not OutputSpec(kind="relevance", size=1).codec.openai_embeddings
    )


def test_classification_is_labelled_sorted_and_cut_to_top_k() -> None:
    spec = OutputSpec(kind="classification", size=3, labels=LABELS)
    logits = [1.0, 3.0, 2.0]
    options = spec.codec.parameters_type(spec)
    [answer] = spec.codec.native(spec, [logits], None)
    assert [item["label"] for item in answer] == ["neutral", "positive", "negative"]
    assert math.isclose(sum(item["score"] for item in answer), 1.0)
    [top] = spec.codec.native(spec, [logits], options(top_k=1))
    assert top == [{"label": "neutral", "score": softmax(logits)[1]}]
    [raw] = spec.codec.native(spec, [logits], options(raw_scores=True))
    assert {item["label"]: item["score"] for item in raw} == dict(zip(LABELS, logits, strict=True))
    with pytest.raises(ValidationError):
        options(top_k=4)
    multi = OutputSpec(kind="classification", size=3, labels=LABELS, activation="sigmoid")
    [answer] = multi.codec.native(multi, [logits], None)
    assert [item["score"] for item in answer] == sorted(sigmoid(logits), reverse=True)


def test_softmax_and_sigmoid_are_stable_at_extremes() -> None:
    assert softmax([1000.0, 0.0]) == [1.0, 0.0]
    assert sigmoid([-1000.0, 1000.0]) == [0.0, 1.0]


def test_a_classification_output_needs_its_labels() -> None:
    with pytest.raises(ValidationError, match="needs 'labels'"):
        OutputSpec(kind="classification", size=3)
    with pytest.raises(ValidationError, match="needs 'labels'"):
        OutputSpec(kind="classification", size=2, labels=LABELS)
