"""The bundled text classifier: labelled scores equal ``transformers``' text-classification
pipeline in-process on the same folder (same labels, same order, scores within 1e-4), alone and
under 32 concurrent clients; ``top_k`` and ``raw_scores``; v2 logits; OpenAI refuses it; a copy of
the folder made elsewhere serves with ``--model NAME=PATH``."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import tritonclient.http as triton

from service.core.repository import ModelRepository
from tests.support import ServerProcess

TEXTS = ["I loved every minute of it.", "Terrible service, never again.", "It was fine.", "word " * 400]
PREDICT = "/v1/models/classifier/predict"


def folder() -> Path:
    return ModelRepository().get("classifier").verified_weights()


@pytest.fixture(scope="module")
def expected() -> list[list[dict[str, Any]]]:
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(folder()), top_k=None, device="cpu")
    return [list(result) for result in classify(TEXTS, truncation=True)]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess(serve=["classifier"]) as process:
        yield process


def assert_same(answer: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert [item["label"] for item in answer] == [item["label"] for item in want]
    assert max(abs(a["score"] - w["score"]) for a, w in zip(answer, want, strict=True)) <= 1e-4


def test_labelled_scores_equal_the_transformers_pipeline(server: ServerProcess, expected: Any) -> None:
    response = server.post(PREDICT, {"inputs": TEXTS})
    assert response.status_code == 200, response.text
    for answer, want in zip(response.json()["outputs"], expected, strict=True):
        assert_same(answer, want)

    def one(index: int) -> list[dict[str, Any]]:
        reply = server.post(PREDICT, {"inputs": [TEXTS[index % len(TEXTS)]]})
        assert reply.status_code == 200, reply.text
        outputs: list[list[dict[str, Any]]] = reply.json()["outputs"]
        return outputs[0]

    with ThreadPoolExecutor(max_workers=32) as pool:
        for index, answer in enumerate(pool.map(one, range(64))):
            assert_same(answer, expected[index % len(TEXTS)])


def test_top_k_and_raw_scores(server: ServerProcess, expected: Any) -> None:
    top = server.post(PREDICT, {"inputs": TEXTS[:2], "parameters": {"top_k": 1}}).json()["outputs"]
    assert [answer[0]["label"] for answer in top] == [want[0]["label"] for want in expected[:2]]
    assert all(len(answer) == 1 for answer in top)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder()), local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(str(folder()), local_files_only=True).eval()
    with torch.no_grad():
        logits = model(**tokenizer(TEXTS[:1], return_tensors="pt")).logits[0].tolist()
    raw = server.post(PREDICT, {"inputs": TEXTS[:1], "parameters": {"raw_scores": True}}).json()["outputs"][0]
    by_label = {item["label"]: item["score"] for item in raw}
    labels = model.config.id2label
    assert max(abs(by_label[labels[i]] - value) for i, value in enumerate(logits)) <= 1e-4
    v2 = server.post(
        "/v2/models/classifier/infer",
        {"inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES", "data": TEXTS[:1]}]},
    ).json()
    assert v2["outputs"][0]["name"] == "LOGITS" and v2["outputs"][0]["shape"] == [1, 3]
    assert max(abs(a - b) for a, b in zip(v2["outputs"][0]["data"], logits, strict=True)) <= 1e-4


@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient_classification_extension(server: ServerProcess, expected: Any, binary: bool) -> None:
    """``class_count=K`` on LOGITS answers each input's K largest logits as "value:index:label"
    strings, best first: the labels in the pipeline's order, the values its logits."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder()), local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(str(folder()), local_files_only=True).eval()
    with torch.no_grad():
        logits = model(**tokenizer(TEXTS[:3], return_tensors="pt", padding=True)).logits.tolist()
    with triton.InferenceServerClient(server.url.removeprefix("http://")) as client:
        assert "classification" in client.get_server_metadata()["extensions"]
        text = triton.InferInput("TEXT", [3], "BYTES")
        text.set_data_from_numpy(np.array(TEXTS[:3], dtype=object), binary_data=binary)
        wanted = triton.InferRequestedOutput("LOGITS", binary_data=binary, class_count=2)
        result = client.infer("classifier", [text], outputs=[wanted])
    classes = result.as_numpy("LOGITS")
    assert classes is not None and classes.shape == (3, 2)
    for row, want, row_logits in zip(classes.tolist(), expected[:3], logits, strict=True):
        parts = [(e.decode() if isinstance(e, bytes) else e).split(":") for e in row]
        assert [label for _, _, label in parts] == [item["label"] for item in want[:2]]
        for value, index, _ in parts:
            assert abs(float(value) - row_logits[int(index)]) <= 1e-4


@pytest.mark.parametrize(
    "parameters", [{"top_k": 0}, {"top_k": 4}, {"top_k": "2"}, {"raw_scores": "yes"}, {"other": 1}]
)
def test_bad_parameters_are_a_422(server: ServerProcess, parameters: dict[str, Any]) -> None:
    response = server.post(PREDICT, {"inputs": ["x"], "parameters": parameters})
    assert response.status_code == 422, response.text
    assert "parameters" in response.json()["error"]


def test_a_classifier_is_not_an_embedding_model(server: ServerProcess) -> None:
    response = server.post("/v1/embeddings", {"model": "classifier", "input": "x"})
    assert response.status_code == 400
    assert "classification model, not an embedding model" in response.json()["error"]["message"]


def test_a_classifier_folder_made_elsewhere_serves_with_one_command(tmp_path: Path, expected: Any) -> None:
    mine = tmp_path / "sentiment"
    shutil.copytree(folder(), mine)
    with ServerProcess(args=["--model", f"sentiment={mine}"]) as server:
        detail = server.client.get("/v1/models/sentiment").json()
        assert detail["task"] == "text-classification"
        answer = server.post("/v1/models/sentiment/predict", {"inputs": TEXTS[:1]}).json()["outputs"][0]
        assert_same(answer, expected[0])
