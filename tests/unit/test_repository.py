"""Model repository: discovery, declarations, checksums, the reference model's determinism."""

from __future__ import annotations

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
