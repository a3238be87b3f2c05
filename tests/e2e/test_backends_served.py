"""A server serving what ``python -m service tune`` decided on this machine: the decision's backends
run in the workers (``inference_model_backend_info``), answers stay within the gate of torch fp32,
``python -m service models`` shows the decision, and a server started with the torch backend
forced ignores it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.support import ServerProcess

SENTENCES = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]


def embeddings(server: ServerProcess, texts: list[str]) -> np.ndarray:
    response = server.post("/v1/models/minilm/predict", {"inputs": texts})
    assert response.status_code == 200, response.text
    return np.array(response.json()["outputs"])


def backend_samples(server: ServerProcess) -> set[tuple[str, str]]:
    """(shape, backend) of every ``inference_model_backend_info`` sample of minilm at 1."""
    found = set()
    for line in server.client.get("/metrics").text.splitlines():
        if (
            line.startswith("inference_model_backend_info{")
            and 'model="minilm"' in line
            and line.endswith(" 1.0")
        ):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            found.add((labels["shape"], labels["backend"]))
    return found


def test_a_tuned_model_serves_its_decision_within_the_gate(tmp_path: Path) -> None:
    env = {**os.environ, "SERVICE_CACHE_DIR": str(tmp_path)}
    tuned = subprocess.run(
        [sys.executable, "-m", "service", "tune", "minilm", "--backends", "torch,onnx"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert tuned.returncode == 0, tuned.stderr[-2000:]
    assert "minilm: onnx: passes the gate" in tuned.stdout
    lone, batch = re.findall(r"serves (\S+) for lone inputs, (\S+) for batches", tuned.stdout)[0]
    listed = subprocess.run(
        [sys.executable, "-m", "service", "models"], env=env, capture_output=True, text=True, timeout=120
    )
    assert "auto: lone " in listed.stdout, listed.stdout
    with ServerProcess(serve=["minilm"], env={"SERVICE_CACHE_DIR": str(tmp_path)}) as tuned_server:
        served = [embeddings(tuned_server, SENTENCES[:1]), embeddings(tuned_server, SENTENCES)]
        info = backend_samples(tuned_server)
    assert {("lone", lone), ("batch", batch)} <= info, info
    # the workers log (they are spawned: their logging is configured again) what serves, and why
    log = tuned_server.final_output
    assert f"model minilm: serves {lone} for lone inputs, {batch} for batches (tuned here" in log, log[-3000:]
    assert "model minilm ready on cpu" in log, log[-3000:]
    forced = {"SERVICE_CACHE_DIR": str(tmp_path), "SERVICE_MODELS__MINILM__BACKEND": "torch"}
    with ServerProcess(serve=["minilm"], env=forced) as torch_server:
        reference = [embeddings(torch_server, SENTENCES[:1]), embeddings(torch_server, SENTENCES)]
        assert backend_samples(torch_server) == {("lone", "torch"), ("batch", "torch")}
    for want, got in zip(reference, served, strict=True):
        cosines = (want * got).sum(axis=1) / np.linalg.norm(want, axis=1) / np.linalg.norm(got, axis=1)
        assert cosines.min() >= 0.9999
