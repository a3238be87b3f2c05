"""Programs and ``model.py`` models of named tensors, in-process: a ``.onnx`` and a ``.pt2`` loaded
from a repository folder run rows of different lengths as one call per shape, equal to running
the files directly; the program is a context manager that releases its session; a ``model.py``
answer that differs from its declaration is the model's error, named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.core.repository import ModelEntry, ModelRepository, ModelSpec
from service.worker.programs import CheckedTensors
from service.worker.session import InferenceSession
from tests.programs import make_onnx, make_pt2, run_onnx, run_pt2

pytestmark = pytest.mark.integration


def repository_with(tmp_path: Path, name: str, runtime: str, make: Any, suffix: str) -> ModelEntry:
    folder = tmp_path / name
    folder.mkdir()
    digest = make(folder / f"pooler{suffix}")
    (folder / "model.yaml").write_text(
        f"name: {name}\nversion: '1'\ntask: tensors\nruntime: {runtime}\n"
        f"weights: {{path: pooler{suffix}, sha256: '{digest}'}}\ninputs: {{max_items: 8}}\n"
    )
    return ModelRepository(tmp_path).get(name)


@pytest.mark.parametrize(
    ("runtime", "make", "suffix", "direct"),
    [("onnx", make_onnx, ".onnx", run_onnx), ("torch-export", make_pt2, ".pt2", run_pt2)],
)
def test_a_program_runs_rows_of_different_lengths_as_it_runs_directly(
    tmp_path: Path, runtime: str, make: Any, suffix: str, direct: Any
) -> None:
    entry = repository_with(tmp_path, "pooler", runtime, make, suffix)
    assert entry.spec.inputs.max_items == 8  # the declaration's limits, the program's tensors
    assert [t.name for t in entry.spec.outputs.tensors] == ["pooled", "count"]
    rng = np.random.default_rng(0)
    rows = [
        {"tokens": rng.integers(0, 100, length), "weights": rng.random(4, dtype=np.float32)}
        for length in (3, 5, 3, 1, 5)
    ]
    with entry.load("cpu") as model:
        outputs = InferenceSession(model).run(rows)
        for row, got in zip(rows, outputs, strict=True):
            want = direct(entry.folder / f"pooler{suffix}", row["tokens"][None], row["weights"][None])
            np.testing.assert_allclose(got["pooled"], want["pooled"][0], rtol=0, atol=1e-6)
            assert got["count"] == want["count"][0] and got["count"].dtype == np.int64
    with pytest.raises(RuntimeError, match="closed"):
        model.forward(model.preprocess(rows))


class WrongAnswers:
    """A model.py model whose answers break its declaration in the ways a test names."""

    module = None

    def __init__(self, answer: dict[str, Any]) -> None:
        self.answer = answer

    def preprocess(self, inputs: Any) -> Any:
        return inputs

    def forward(self, batch: Any) -> Any:
        return batch

    def postprocess(self, output: Any) -> list[Any]:
        return [self.answer for _ in output]


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        (
            {"scores": np.zeros(3, np.float64), "label": np.int64(1)},
            "'scores' is float64, but is declared FP32",
        ),
        (
            {"scores": np.zeros(4, np.float32), "label": np.int64(1)},
            r"'scores' has shape \[4\]; expected \[3\]",
        ),
        ({"scores": np.zeros(3, np.float32)}, "lacks tensor 'label'"),
    ],
)
def test_a_model_py_answer_that_breaks_its_declaration_is_named(answer: dict[str, Any], match: str) -> None:
    spec: ModelSpec = ModelRepository().get("scorer").spec
    model = CheckedTensors(spec, WrongAnswers(answer))
    with pytest.raises(RuntimeError, match=f"model scorer: .*{match}"):
        InferenceSession(model).run([{"features": np.zeros(8, np.float32), "mask": np.ones(8, bool)}])
