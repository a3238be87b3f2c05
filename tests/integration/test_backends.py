"""Backends of the huggingface runtime on the real minilm folder: ONNX exports made once and
reused, the accuracy gate against torch fp32 (int8 refused under the default gate, served when a
model loosens it), the tuning decision chosen by measurement, stored with the machine, and not
reused on another machine."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from service.core.repository import GateSpec, ModelError, ModelRepository, sha256_file
from service.worker import huggingface
from service.worker.backends import BACKENDS, make_backend
from service.worker.tuning import decision_path, stored_decision, tune
from tests.unit.test_minilm import SENTENCES

ENTRY = ModelRepository().get("minilm")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("backends")


@pytest.fixture(scope="module")
def decision(cache: Path) -> Iterator[dict[str, object]]:
    before = torch.get_num_threads()
    yield tune(ENTRY, cache, repeats=3)
    torch.set_num_threads(before)


def embed(model: object, texts: list[str]) -> np.ndarray:
    with torch.inference_mode():
        return np.array(model.postprocess(model.forward(model.preprocess(texts))))  # type: ignore[attr-defined]


def test_tuning_gates_every_backend_and_chooses_among_those_that_pass(decision: dict, cache: Path) -> None:
    backends = decision["backends"]
    assert tuple(backends) == BACKENDS
    int8 = backends["onnx-int8"]
    assert not int8["passed"] and int8["refused"]  # int8 moves embeddings too far for the default gate
    assert "neighbour overlap" in int8["refused"] or "min cosine" in int8["refused"]
    assert backends["onnx"]["passed"] and backends["onnx"]["figures"]["min_cosine"] >= 0.9999
    for shape in ("lone", "batch"):
        chosen = decision["choice"][shape]
        assert backends[chosen]["passed"]
        fastest = min(
            (b for b in backends if backends[b]["passed"]), key=lambda b: backends[b]["seconds"][shape]
        )
        assert chosen == fastest
    assert stored_decision(decision_path(cache, "minilm", ENTRY.spec.weights.sha256)) == decision
    exports = sorted(path.name for path in (cache / "exports").iterdir() for path in path.iterdir())
    assert "onnx.onnx" in exports and "onnx.json" in exports


def test_auto_serves_the_decision_within_the_gate(decision: dict, cache: Path) -> None:
    reference = huggingface.load(ENTRY.spec, ENTRY.verified_weights(), "cpu", cache, backend="torch")
    served = huggingface.load(ENTRY.spec, ENTRY.verified_weights(), "cpu", cache)
    assert served.backends == decision["choice"]
    for texts in (SENTENCES[:1], SENTENCES):  # a lone input and a batch: each shape's backend
        want, got = embed(reference, texts), embed(served, texts)
        cosines = (want * got).sum(axis=1) / np.linalg.norm(want, axis=1) / np.linalg.norm(got, axis=1)
        assert cosines.min() >= 0.9999


def test_a_backend_that_fails_the_gate_is_refused_with_its_figure(decision: dict, cache: Path) -> None:
    spec = ENTRY.spec.model_copy(update={"backend": "onnx-int8"})
    with pytest.raises(ModelError, match="backend onnx-int8 fails the accuracy gate: .* < 0.99"):
        huggingface.load(spec, ENTRY.verified_weights(), "cpu", cache)
    loosened = spec.model_copy(update={"gate": GateSpec(min_cosine=0.9, min_neighbour_overlap=0.3)})
    model = huggingface.load(loosened, ENTRY.verified_weights(), "cpu", cache)  # gated now, at load
    assert model.backends == {"lone": "onnx-int8", "batch": "onnx-int8"}


def test_a_decision_made_on_another_machine_is_not_reused(decision: dict, cache: Path) -> None:
    path = decision_path(cache, "minilm", ENTRY.spec.weights.sha256)
    original = path.read_text()
    try:
        for key, value in (
            ("cpu", "Another CPU"),
            ("cores", 64),
            ("onnxruntime", "0.0.1"),
            ("backends", "torch,onnx"),  # made before a backend was added or redefined
        ):
            moved = json.loads(original)
            moved["machine"][key] = value
            path.write_text(json.dumps(moved))
            assert stored_decision(path) is None
            model = huggingface.load(ENTRY.spec, ENTRY.verified_weights(), "cpu", cache)
            assert model.backends == {"lone": "torch", "batch": "torch"}
    finally:
        path.write_text(original)


def test_a_tampered_export_is_made_again(decision: dict, cache: Path) -> None:
    graph = next((cache / "exports").iterdir()) / "onnx.onnx"
    with open(graph, "r+b") as handle:
        handle.seek(-16, 2)
        handle.write(b"\0" * 16)
    spec = ENTRY.spec.model_copy(update={"backend": "onnx"})
    model = huggingface.load(spec, ENTRY.verified_weights(), "cpu", cache)
    assert model.backends["batch"] == "onnx"
    record = json.loads(graph.with_suffix(".json").read_text())
    assert sha256_file(graph) == record["sha256"]


def test_bf16_serves_a_bf16_copy_and_leaves_the_reference_in_fp32() -> None:
    model = huggingface.load(ENTRY.spec, ENTRY.verified_weights(), "cpu", backend="torch")
    network = make_backend("torch-bf16", model.module, model.example_features(), None, (1,))
    dtypes = {parameter.dtype for parameter in network.module.parameters()}  # type: ignore[attr-defined]
    assert dtypes == {torch.bfloat16}
    assert {parameter.dtype for parameter in model.module.parameters()} == {torch.float32}
    with torch.inference_mode():
        output = network(model.example_features())
    assert output.dtype == torch.float32
