"""Model code that meets bad input: a rejected input is that client's 422 while its batch-mates
are answered; a model that checks its input starts with its declared example; a model whose
workers keep failing after it served goes out of service without taking the others down."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import orjson
import psutil

from service.core.repository import DEFAULT_REPOSITORY
from tests.support import ServerProcess, wait_until

PREDICT = "/v1/models/checked/predict"
CHECKS = """

# --- test fixture: a model that checks its inputs ---
from service.core.rejection import InputRejected

_unchecked = ReferenceModel.preprocess


def _checked(self, inputs):
    for index, vector in enumerate(inputs):
        if vector[0] < 0:
            raise InputRejected(f"the first value must not be negative, got {vector[0]:g}", index=index)
        if not any(vector):
            raise InputRejected("an all-zero vector carries nothing")
    return _unchecked(self, inputs)


ReferenceModel.preprocess = _checked
"""
FRAGILE = """

# --- test fixture: a model that cannot load once its marker file exists ---
_load = load


def load(spec, weights, device, **kwargs):
    if Path(spec.options["broken_marker"]).exists():
        raise RuntimeError("the model's files are gone")
    return _load(spec, weights, device, **kwargs)
"""


def copy_reference(root: Path, name: str, code: str, yaml: str) -> None:
    folder = root / name
    shutil.copytree(DEFAULT_REPOSITORY / "reference", folder, ignore=shutil.ignore_patterns("__pycache__"))
    declaration = folder / "model.yaml"
    declaration.write_text(declaration.read_text().replace("name: reference", f"name: {name}") + yaml)
    (folder / "model.py").write_text((folder / "model.py").read_text() + code)


def checked_repository(tmp_path: Path, example: bool = True) -> Path:
    root = tmp_path / "repo"
    # a forward long enough for requests sent meanwhile to wait together for the next one
    copy_reference(root, "checked", CHECKS, "options:\n  delay_seconds: 0.3\n")
    if example:
        declaration = root / "checked" / "model.yaml"
        text = declaration.read_text().replace(
            "  dim: 16\n", "  dim: 16\n  example: [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0.5]\n"
        )
        declaration.write_text(text)
    return root


def vector(first: float) -> list[float]:
    return [first] + [0.5] * 15


def test_a_rejected_input_is_its_clients_422_and_its_batch_mates_are_answered(tmp_path: Path) -> None:
    env = {"SERVICE_REPOSITORY": str(checked_repository(tmp_path))}
    with ServerProcess(serve=["checked"], env=env) as server:
        singles = {i: server.post(PREDICT, {"inputs": [vector(i)]}).json()["outputs"][0] for i in range(1, 6)}
        started = server.metric('inference_queue_duration_seconds_count{model="checked"}')
        with ThreadPoolExecutor(max_workers=7) as pool:
            blocker = pool.submit(server.post, PREDICT, {"inputs": [vector(9)]})
            wait_until(
                lambda: (
                    server.metric('inference_queue_duration_seconds_count{model="checked"}') >= started + 1
                ),
                "the first forward to start",
            )
            bad = pool.submit(server.post, PREDICT, {"inputs": [vector(-2)]})
            good = {i: pool.submit(server.post, PREDICT, {"inputs": [vector(i)]}) for i in range(1, 6)}
            # all six wait behind the first forward, so they share the next one
            wait_until(
                lambda: server.metric('inference_in_flight_requests{model="checked"}') >= 7,
                "six requests queued behind the forward",
            )
            assert blocker.result().status_code == 200
            rejected = bad.result()
            answers = {i: future.result() for i, future in good.items()}
        assert rejected.status_code == 422
        assert rejected.json() == {
            "error": "the model rejected an input: the first value must not be negative, got -2"
        }
        for i, answer in answers.items():
            assert answer.status_code == 200, answer.text
            assert (
                max(abs(a - b) for a, b in zip(answer.json()["outputs"][0], singles[i], strict=True)) <= 1e-6
            )
        assert server.metric('inference_forward_retries_total{model="checked"}') >= 1
        # in a file, the bad record is an error line and the others are answered
        lines = [orjson.dumps({"id": i, "input": vector(v)}) for i, v in enumerate([1, -3, 2])]
        response = server.client.post(
            "/v1/models/checked/predict-file",
            content=b"\n".join(lines) + b"\n",
            headers={"content-type": "application/x-ndjson"},
        )
        records = [orjson.loads(line) for line in response.text.splitlines()]
        assert [("output" in r, r["id"]) for r in records] == [(True, 0), (False, 1), (True, 2)]
        assert "first value must not be negative, got -3" in records[1]["error"]


def test_a_model_that_checks_its_input_needs_its_example_to_start(tmp_path: Path) -> None:
    # without a declared example the warm-up's zeros are rejected: a start-up error naming the model
    env = {"SERVICE_REPOSITORY": str(checked_repository(tmp_path / "a", example=False))}
    server = ServerProcess(serve=["checked"], env=env, wait_ready=False)
    with server:
        assert server.process is not None
        assert server.process.wait(timeout=120) == 1
        output = server.output()
    assert "model checked rejected its warm-up input (an all-zero vector carries nothing)" in output
    assert "inputs.example" in output
    # with it, the model starts and serves
    env = {"SERVICE_REPOSITORY": str(checked_repository(tmp_path / "b"))}
    with ServerProcess(serve=["checked"], env=env) as server:
        assert server.post(PREDICT, {"inputs": [vector(1)]}).status_code == 200


def test_a_model_that_keeps_failing_after_it_served_does_not_stop_the_others(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    marker = tmp_path / "broken"
    copy_reference(root, "fragile", FRAGILE, f"options:\n  broken_marker: {marker}\n")
    shutil.copytree(
        DEFAULT_REPOSITORY / "reference", root / "reference", ignore=shutil.ignore_patterns("__pycache__")
    )
    with ServerProcess(serve=["reference", "fragile"], env={"SERVICE_REPOSITORY": str(root)}) as server:
        body = {"inputs": [vector(1)]}
        assert server.post("/v1/models/fragile/predict", body).status_code == 200
        marker.touch()
        workers = sorted(
            (p for p in psutil.Process(server.pid).children() if "spawn_main" in " ".join(p.cmdline())),
            key=lambda p: p.create_time(),
        )
        assert len(workers) == 2  # started in the order served: reference, then fragile
        workers[1].kill()
        wait_until(
            lambda: server.client.get("/health/ready").json().get("status") == "degraded",
            "the model to be out of service",
            90,
        )
        ready = server.client.get("/health/ready")
        assert ready.status_code == 200 and set(ready.json()["failed"]) == {"fragile"}
        refused = server.post("/v1/models/fragile/predict", body)
        assert refused.status_code == 503 and "out of service" in refused.json()["error"]
        assert httpx.get(f"{server.url}/v2/models/fragile/ready").status_code == 503
        assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
        assert server.post("/v1/models/reference/predict", body).status_code == 200
        assert server.process is not None and server.process.poll() is None
