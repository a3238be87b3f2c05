"""Model repository: discovery, declarations, checksums, the reference model's determinism."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from service.core.repository import DEFAULT_REPOSITORY, ModelError, ModelRepository, sha256_file
from service.worker.session import InferenceSession


def copy_reference(tmp_path: Path, name: str = "reference") -> Path:
    root = tmp_path / "models"
    root.mkdir(exist_ok=True)
    target = root / name
    shutil.copytree(DEFAULT_REPOSITORY / "reference", target, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_discovers_the_shipped_models() -> None:
    repository = ModelRepository()
    assert {"minilm", "reference"} <= set(repository.names())
    spec = repository.get("minilm").spec
    assert spec.inputs.kind == "text" and spec.inputs.max_items == 256 and spec.inputs.max_length == 10_000


def test_shipped_models_declare_their_outputs_and_tensor_names(tmp_path: Path) -> None:
    repository = ModelRepository()
    minilm, reference = repository.get("minilm"), repository.get("reference")
    assert (minilm.spec.tensors.input, minilm.spec.tensors.output) == ("TEXT", "EMBEDDING")
    assert (reference.spec.tensors.input, reference.spec.tensors.output) == ("INPUT", "OUTPUT")
    assert minilm.spec.outputs.dimensions == reference.spec.outputs.dimensions == ()
    # the declared sizes are what the models give
    config = json.loads((minilm.weights_location() / "config.json").read_text())
    assert minilm.spec.outputs.size == config["hidden_size"] == 384
    outputs = InferenceSession(reference.load("cpu")).run([[0.0] * 16])
    assert reference.spec.outputs.size == len(outputs[0]) == 4
    # a declaration without outputs or tensors gets the defaults
    root = copy_reference(tmp_path)
    declaration = root / "reference" / "model.yaml"
    text = declaration.read_text()
    start, end = text.index("outputs:"), text.index("max_batch_size:")
    declaration.write_text(text[:start] + text[end:])
    spec = ModelRepository(root).get("reference").spec
    assert spec.outputs.size is None and (spec.tensors.input, spec.tensors.output) == ("INPUT", "OUTPUT")


def test_unknown_model_names_what_exists() -> None:
    with pytest.raises(ModelError, match="unknown model 'nope'.*minilm"):
        ModelRepository().get("nope")


def test_checksum_mismatch_refuses_to_load(tmp_path: Path) -> None:
    root = copy_reference(tmp_path)
    weights = root / "reference" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    entry = ModelRepository(root).get("reference")
    with pytest.raises(ModelError, match="checksum mismatch.*refusing to load"):
        entry.load("cpu")


def test_missing_weights_is_a_clear_error(tmp_path: Path) -> None:
    root = copy_reference(tmp_path)
    (root / "reference" / "weights.safetensors").unlink()
    with pytest.raises(ModelError, match="weights file .* is missing"):
        ModelRepository(root).get("reference").load("cpu")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda text: text.replace("max_batch_size: 64", "max_batch_size: 0"), "max_batch_size"),
        (lambda text: text + "\nsurprise: 1\n", "surprise"),
        (lambda text: text.replace("name: reference", "name: other"), "must equal its folder name"),
        (
            lambda text: text.replace("path: weights.safetensors", "path: ../../etc/passwd"),
            "inside their folder",
        ),
        (lambda text: "{not: [yaml", "invalid declaration"),
        (lambda text: text.replace("size: 4", "size: 0"), "outputs.size"),
        (lambda text: text.replace("size: 4", "size: 4\n  dimensions: [2, 4]"), "between 1 and size - 1"),
        (lambda text: text.replace("size: 4", "size: 4\n  dimensions: [2, 2]"), "must not repeat"),
        (lambda text: text.replace("size: 4", "dimensions: [2]"), "'dimensions' needs 'size'"),
        (lambda text: text.replace("output: OUTPUT", "output: INPUT"), "different names"),
        (lambda text: text.replace("input: INPUT", "input: 'a b'"), "tensors.input"),
    ],
)
def test_bad_declarations_are_rejected(tmp_path: Path, edit: object, message: str) -> None:
    root = copy_reference(tmp_path)
    declaration = root / "reference" / "model.yaml"
    declaration.write_text(edit(declaration.read_text()))  # type: ignore[operator]
    with pytest.raises(ModelError, match=message):
        ModelRepository(root)


def test_adding_a_model_is_adding_a_folder(tmp_path: Path) -> None:
    root = copy_reference(tmp_path)
    assert ModelRepository(root).names() == ["reference"]


def test_reference_weights_are_reproducible(tmp_path: Path) -> None:
    """make_weights.py (seed 0) writes exactly the committed file."""
    import subprocess
    import sys

    folder = DEFAULT_REPOSITORY / "reference"
    before = sha256_file(folder / "weights.safetensors")
    backup = tmp_path / "weights.bak"
    shutil.copy(folder / "weights.safetensors", backup)
    try:
        subprocess.run(
            [sys.executable, "-m", "models.reference.make_weights"], check=True, capture_output=True
        )
        assert sha256_file(folder / "weights.safetensors") == before
    finally:
        shutil.copy(backup, folder / "weights.safetensors")


def test_reference_model_is_deterministic_and_batch_independent() -> None:
    model = ModelRepository().get("reference").load("cpu")
    session = InferenceSession(model)
    torch.manual_seed(1)
    inputs = torch.randn(10, 16).tolist()
    together = session.run(inputs)
    alone = [session.run([x])[0] for x in inputs]
    assert torch.allclose(torch.tensor(together), torch.tensor(alone), atol=1e-6)
    assert session.run(inputs) == together
