"""Hugging Face folders made outside the repository, served with ``python -m service serve
--model NAME=PATH`` and no other step; outputs equal the stock libraries in-process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from service.core.repository import ModelRepository, sha256_folder
from tests.support import ROOT, ServerProcess, free_port

TEXTS = ["The weather is lovely today.", "short", "word " * 300, "Ünïcödé 🙂"]


def minilm_folder() -> Path:
    return ModelRepository().get("minilm").verified_weights()


@pytest.fixture(scope="module")
def sentence_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sentence-transformers folder of one's own: a copy of the installed minilm files."""
    folder = tmp_path_factory.mktemp("folders") / "my-embedder"
    shutil.copytree(minilm_folder(), folder)
    return folder


@pytest.fixture(scope="module")
def bare_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bare encoder saved by transformers (no sentence-transformers files)."""
    from transformers import AutoModel, AutoTokenizer

    folder = tmp_path_factory.mktemp("folders") / "bare-encoder"
    AutoModel.from_pretrained(str(minilm_folder()), local_files_only=True).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(minilm_folder()), local_files_only=True).save_pretrained(folder)
    return folder


def predict(server: ServerProcess, model: str, texts: list[str]) -> torch.Tensor:
    response = server.post(f"/v1/models/{model}/predict", {"inputs": texts})
    assert response.status_code == 200, response.text
    return torch.tensor(response.json()["outputs"])


def test_a_sentence_transformers_folder_serves_with_one_command(sentence_folder: Path) -> None:
    from sentence_transformers import SentenceTransformer

    expected = torch.tensor(
        SentenceTransformer(str(sentence_folder), device="cpu", local_files_only=True).encode(TEXTS)
    )
    with ServerProcess(args=["--model", f"mine={sentence_folder}"]) as server:
        assert [m["id"] for m in server.client.get("/v1/models").json()["data"]] == ["mine"]
        served = predict(server, "mine", TEXTS)
        assert (served - expected).abs().max().item() <= 1e-4
        # the same on the other protocols
        v2 = server.post(
            "/v2/models/mine/infer",
            {"inputs": [{"name": "INPUT", "shape": [1], "datatype": "BYTES", "data": [TEXTS[0]]}]},
        )
        assert v2.status_code == 200
        assert (torch.tensor(v2.json()["outputs"][0]["data"]) - expected[0]).abs().max().item() <= 1e-4
        openai = server.post(
            "/v1/embeddings", {"model": "mine", "input": TEXTS[0], "encoding_format": "float"}
        )
        assert (torch.tensor(openai.json()["data"][0]["embedding"]) - expected[0]).abs().max().item() <= 1e-4
        # the folder's manifest digest is logged, ready to pin
        assert f"--sha256 mine={sha256_folder(sentence_folder)}" in server.output()


def test_a_bare_encoder_folder_is_mean_pooled_like_transformers(bare_folder: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(bare_folder), local_files_only=True)
    model = AutoModel.from_pretrained(str(bare_folder), local_files_only=True).eval()
    with torch.no_grad():
        batch = tokenizer(TEXTS, padding=True, truncation=True, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        expected = (hidden * mask).sum(1) / mask.sum(1)
    pinned = sha256_folder(bare_folder)
    with ServerProcess(args=["--model", f"bare={bare_folder}", "--sha256", f"bare={pinned}"]) as server:
        assert (predict(server, "bare", TEXTS) - expected).abs().max().item() <= 1e-4


def serve_and_fail(*args: str) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "service", "serve", "--port", str(free_port()), *args],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_folders_that_cannot_be_served_are_refused_before_start(
    tmp_path: Path, sentence_folder: Path
) -> None:
    remote = tmp_path / "remote-code"
    shutil.copytree(sentence_folder, remote)
    config = json.loads((remote / "config.json").read_text())
    (remote / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "modeling.MyModel"}}))
    refused = serve_and_fail("--model", f"remote={remote}")
    assert refused.returncode == 2 and "needs trust_remote_code" in refused.stderr
    wrong = serve_and_fail("--model", f"mine={sentence_folder}", "--sha256", f"mine={'0' * 64}")
    assert wrong.returncode == 2 and "checksum mismatch" in wrong.stderr
    assert sha256_folder(sentence_folder) in wrong.stderr
    missing = serve_and_fail("--model", f"gone={tmp_path / 'nothing'}")
    assert missing.returncode == 2 and "not a Hugging Face model folder" in missing.stderr
    bad_flag = serve_and_fail("--model", "no-path")
    assert bad_flag.returncode == 2 and "--model takes NAME=PATH" in bad_flag.stderr


def test_with_a_config_the_folder_is_served_alongside_its_models(sentence_folder: Path) -> None:
    config = ROOT / "config" / "default.yaml"
    with ServerProcess(args=["--model", f"mine={sentence_folder}"], config=config) as server:
        served = {m["id"] for m in server.client.get("/v1/models").json()["data"]}
        assert served == {"minilm", "mine"}
        assert torch.allclose(predict(server, "mine", ["a"]), predict(server, "minilm", ["a"]), atol=1e-6)
