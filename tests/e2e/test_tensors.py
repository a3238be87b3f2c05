"""Models of several named tensors on a real server: the bundled ``scorer`` (a ``model.py`` of
FP32 + BOOL in, FP32 + INT64 out), and programs of a user's own with no Python written — a
``.onnx`` file and a ``.pt2`` saved by ``torch.export`` (INT64 tokens of free length + FP32 in,
FP32 + INT64 out) — answering through ``tritonclient.http`` (binary and JSON) and the native
route exactly what they answer run in-process; hostile tensors are a clear 4xx within a second,
and the server keeps serving with flat memory; a ``.pt2`` whose checksum does not match its
pin, or that has none, is refused at start-up."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton

from service.core.repository import ModelRepository
from service.worker.session import InferenceSession
from tests.programs import make_onnx, make_pt2, run_onnx, run_pt2
from tests.support import ServerProcess, wait_until

SCORER = "/v1/models/scorer/predict"
SCORER_V2 = "/v2/models/scorer/infer"


def scorer_rows(count: int, seed: int = 0) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((count, 8)).astype(np.float32), rng.random((count, 8)) > 0.3


def in_process(features: np.ndarray[Any, Any], mask: np.ndarray[Any, Any]) -> list[dict[str, Any]]:
    """The scorer's model.py run in-process, through the same session a worker uses."""
    model = ModelRepository().get("scorer").load("cpu")
    rows = [{"features": f, "mask": m} for f, m in zip(features, mask, strict=True)]
    return InferenceSession(model).run(rows)


@pytest.fixture(scope="module")
def scorer() -> Iterator[ServerProcess]:
    with ServerProcess(serve=["scorer"]) as process:
        yield process


def test_the_scorer_answers_its_model_py_on_the_native_route(scorer: ServerProcess) -> None:
    features, mask = scorer_rows(5)
    want = in_process(features, mask)
    inputs = [{"features": f.tolist(), "mask": m.tolist()} for f, m in zip(features, mask, strict=True)]
    reply = scorer.post(SCORER, {"inputs": inputs})
    assert reply.status_code == 200, reply.text
    outputs = reply.json()["outputs"]
    assert [sorted(row) for row in outputs] == [["label", "scores"]] * 5
    for got, expected in zip(outputs, want, strict=True):
        np.testing.assert_allclose(got["scores"], expected["scores"], rtol=1e-6, atol=1e-6)
        assert got["label"] == int(expected["label"]) and isinstance(got["label"], int)


@pytest.mark.parametrize("binary", [True, False])
def test_the_scorer_through_tritonclient(scorer: ServerProcess, binary: bool) -> None:
    features, mask = scorer_rows(7, seed=3)
    want = in_process(features, mask)
    with triton.InferenceServerClient(scorer.url.removeprefix("http://")) as client:
        metadata = client.get_model_metadata("scorer")
        assert metadata["inputs"] == [
            {"name": "features", "datatype": "FP32", "shape": [-1, 8]},
            {"name": "mask", "datatype": "BOOL", "shape": [-1, 8]},
        ]
        assert metadata["outputs"] == [
            {"name": "scores", "datatype": "FP32", "shape": [-1, 3]},
            {"name": "label", "datatype": "INT64", "shape": [-1]},
        ]
        inputs = [triton.InferInput("features", [7, 8], "FP32"), triton.InferInput("mask", [7, 8], "BOOL")]
        inputs[0].set_data_from_numpy(features, binary_data=binary)
        inputs[1].set_data_from_numpy(mask, binary_data=binary)
        outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("scores", "label")]
        result = client.infer("scorer", inputs, outputs=outputs)
        only_label = client.infer(
            "scorer", inputs, outputs=[triton.InferRequestedOutput("label", binary_data=binary)]
        )
    scores, label = result.as_numpy("scores"), result.as_numpy("label")
    assert scores is not None and scores.dtype == np.float32 and scores.shape == (7, 3)
    assert label is not None and label.dtype == np.int64 and label.shape == (7,)
    np.testing.assert_allclose(scores, np.stack([row["scores"] for row in want]), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(label, np.array([row["label"] for row in want]))
    assert only_label.as_numpy("scores") is None
    np.testing.assert_array_equal(only_label.as_numpy("label"), label)


def test_the_scorer_under_32_concurrent_clients(scorer: ServerProcess) -> None:
    features, mask = scorer_rows(64, seed=5)
    want = in_process(features, mask)

    def one(index: int) -> None:
        reply = scorer.post(
            SCORER, {"inputs": [{"features": features[index].tolist(), "mask": mask[index].tolist()}]}
        )
        assert reply.status_code == 200, reply.text
        (got,) = reply.json()["outputs"]
        # batched with other clients' rows: the same float32 arithmetic up to the GEMM's summation order
        np.testing.assert_allclose(got["scores"], want[index]["scores"], rtol=1e-6, atol=1e-6)
        assert got["label"] == int(want[index]["label"])

    with ThreadPoolExecutor(max_workers=32) as pool:
        list(pool.map(one, range(64)))


def v2(*tensors: dict[str, Any]) -> dict[str, Any]:
    return {"json": {"inputs": list(tensors)}}


def features_tensor(
    shape: list[Any] | None = None, datatype: str = "FP32", data: Any = None
) -> dict[str, Any]:
    return {
        "name": "features",
        "datatype": datatype,
        "shape": shape or [1, 8],
        "data": data if data is not None else [0.5] * 8,
    }


def mask_tensor(shape: list[Any] | None = None, data: Any = None) -> dict[str, Any]:
    return {
        "name": "mask",
        "datatype": "BOOL",
        "shape": shape or [1, 8],
        "data": data if data is not None else [True] * 8,
    }


def binary(tensors: list[tuple[dict[str, Any], bytes]]) -> dict[str, Any]:
    """A v2 request with binary tensors: each (header entry with binary_data_size, its bytes)."""
    header = json.dumps({"inputs": [entry for entry, _ in tensors]}).encode()
    return {
        "content": header + b"".join(data for _, data in tensors),
        "headers": {"inference-header-content-length": str(len(header))},
    }


def binary_entry(name: str, datatype: str, shape: list[int], size: int) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": size}}


def scorer_binary(
    features: bytes, mask: bytes, features_size: int = 32, mask_size: int = 8
) -> dict[str, Any]:
    """A v2 request of the scorer's two tensors as binary data, their declared sizes given."""
    return binary(
        [
            (binary_entry("features", "FP32", [1, 8], features_size), features),
            (binary_entry("mask", "BOOL", [1, 8], mask_size), mask),
        ]
    )


GOOD_MASK = mask_tensor()
HOSTILE: dict[str, tuple[str, dict[str, Any], int, str]] = {
    "wrong datatype": (
        SCORER_V2,
        v2(features_tensor(datatype="INT64", data=[0] * 8), GOOD_MASK),
        400,
        "must be FP32",
    ),
    "wrong shape": (SCORER_V2, v2(features_tensor([1, 9], data=[0.5] * 9), GOOD_MASK), 400, "does not match"),
    "negative shape": (SCORER_V2, v2(features_tensor([-1, 8]), GOOD_MASK), 400, "negative"),
    "huge shape": (
        SCORER_V2,
        v2(features_tensor([10**9, 8]), GOOD_MASK),
        413,
        "'features': 1000000000 inputs",
    ),
    "huge row": (SCORER_V2, v2(features_tensor([1, 10**8]), GOOD_MASK), 413, "far past"),
    "too many inputs": (
        SCORER_V2,
        v2(features_tensor([2000, 8], data=[0.5] * 16000), mask_tensor([2000, 8], [True] * 16000)),
        413,
        "at most 1024",
    ),
    "strings for numbers": (SCORER_V2, v2(features_tensor(data=["a"] * 8), GOOD_MASK), 400, "number"),
    "numbers for booleans": (
        SCORER_V2,
        v2(features_tensor(), mask_tensor(data=[1] * 8)),
        400,
        "true or false",
    ),
    "too few values": (
        SCORER_V2,
        v2(features_tensor(data=[0.5] * 7), GOOD_MASK),
        400,
        "'features': 'data' holds 7",
    ),
    "missing tensor": (SCORER_V2, v2(features_tensor()), 400, "'mask' is missing"),
    "unknown tensor": (
        SCORER_V2,
        v2(features_tensor(), GOOD_MASK, {**GOOD_MASK, "name": "extra"}),
        400,
        "unknown input 'extra'",
    ),
    "tensor twice": (SCORER_V2, v2(features_tensor(), GOOD_MASK, GOOD_MASK), 400, "twice"),
    "batches differ": (SCORER_V2, v2(features_tensor([2, 8], data=[0.5] * 16), GOOD_MASK), 400, "differ"),
    "unknown output": (
        SCORER_V2,
        {"json": {"inputs": [features_tensor(), GOOD_MASK], "outputs": [{"name": "x"}]}},
        400,
        "unknown output",
    ),
    "classification of a vector": (
        SCORER_V2,
        {
            "json": {
                "inputs": [features_tensor(), GOOD_MASK],
                "outputs": [{"name": "label", "parameters": {"classification": 2}}],
            }
        },
        400,
        "classification",
    ),
    "binary size mismatch": (SCORER_V2, scorer_binary(b"\0" * 31, b"\1" * 8, 31), 400, "needs 32 bytes"),
    "binary past the body": (
        SCORER_V2,
        scorer_binary(b"\0" * 32, b"\1" * 8, mask_size=80),
        400,
        "size is 80",
    ),
    "binary left over": (SCORER_V2, scorer_binary(b"\0" * 32, b"\1" * 9), 400, "1 bytes follow"),
    "binary booleans past 1": (SCORER_V2, scorer_binary(b"\0" * 32, b"\7" * 8), 400, "0 or 1"),
    "binary NaN": (
        SCORER_V2,
        scorer_binary(np.full(8, np.nan, np.float32).tobytes(), b"\1" * 8),
        400,
        "finite",
    ),
    "native strings for numbers": (
        SCORER,
        {"json": {"inputs": [{"features": ["1"] * 8, "mask": [True] * 8}]}},
        422,
        "inputs.0",
    ),
    "native ragged": (
        SCORER,
        {"json": {"inputs": [{"features": [[1.0], [2.0, 3.0]], "mask": [True] * 8}]}},
        422,
        "ragged",
    ),
    "native wrong length": (
        SCORER,
        {"json": {"inputs": [{"features": [1.0] * 9, "mask": [True] * 8}]}},
        422,
        "features",
    ),
    "native missing tensor": (SCORER, {"json": {"inputs": [{"features": [1.0] * 8}]}}, 422, "mask"),
    "native unknown tensor": (
        SCORER,
        {"json": {"inputs": [{"features": [1.0] * 8, "mask": [True] * 8, "x": 1}]}},
        422,
        "x",
    ),
    "native beyond float32": (
        SCORER,
        {"json": {"inputs": [{"features": [1e39] * 8, "mask": [True] * 8}]}},
        422,
        "range",
    ),
    "native too deep": (
        SCORER,
        {"json": {"inputs": [{"features": [[[[[[[[[[1.0]]]]]]]]]], "mask": [True] * 8}]}},
        422,
        "deeper",
    ),
    "files": (
        "/v1/models/scorer/predict-file",
        {"content": b'{"features": [1]}\n', "headers": {"content-type": "application/x-ndjson"}},
        415,
        "reads no files",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_tensors_are_a_clear_4xx_within_a_second(scorer: ServerProcess, case: str) -> None:
    path, kwargs, status, phrase = HOSTILE[case]
    started = time.monotonic()
    reply = scorer.client.post(path, **kwargs)
    assert time.monotonic() - started < 5.0  # well under a second on a quiet machine; generous for CI
    assert reply.status_code == status, reply.text
    assert phrase in reply.json()["error"], reply.text


def test_hostile_tensors_leave_the_server_serving_with_flat_memory(scorer: ServerProcess) -> None:
    """After one round of every hostile request, ten more rounds replace no process and grow
    none by more than 5% (+8 MB of allocator slack); the next request is answered."""

    def send_all() -> None:
        for path, kwargs, status, _ in HOSTILE.values():
            assert scorer.client.post(path, **kwargs).status_code == status

    send_all()
    before = scorer.rss()
    for _ in range(10):
        send_all()
    after = scorer.rss()
    assert set(after) == set(before)
    for pid, size in before.items():
        assert after[pid] <= size * 1.05 + 8_000_000, (pid, size, after[pid])
    test_the_scorer_answers_its_model_py_on_the_native_route(scorer)


# --- programs of a user's own: .onnx and .pt2, no Python written ---


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    folder = tmp_path_factory.mktemp("programs")
    onnx, pt2 = folder / "pooler.onnx", folder / "pooler.pt2"
    return {"onnx": (onnx, make_onnx(onnx)), "pt2": (pt2, make_pt2(pt2))}


@pytest.fixture(scope="module")
def program_server(programs: dict[str, tuple[Path, str]]) -> Iterator[ServerProcess]:
    (onnx, _), (pt2, digest) = programs["onnx"], programs["pt2"]
    args = [
        "--model",
        f"pooler_onnx={onnx}",
        "--model",
        f"pooler_pt2={pt2}",
        "--sha256",
        f"pooler_pt2={digest}",
    ]
    with ServerProcess(args=args) as process:
        yield process


def pooler_inputs(rows: int, length: int, seed: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 100, (rows, length), dtype=np.int64), rng.random((rows, 4), dtype=np.float32)


def run_in_process(
    kind: str, path: Path, tokens: np.ndarray[Any, Any], weights: np.ndarray[Any, Any]
) -> dict[str, Any]:
    return run_onnx(path, tokens, weights) if kind == "onnx" else run_pt2(path, tokens, weights)


@pytest.mark.parametrize("kind", ["onnx", "pt2"])
@pytest.mark.parametrize("binary_data", [True, False])
def test_a_program_answers_tritonclient_as_it_runs_in_process(
    program_server: ServerProcess, programs: dict[str, tuple[Path, str]], kind: str, binary_data: bool
) -> None:
    path, _ = programs[kind]
    tokens, weights = pooler_inputs(6, 9, seed=2)
    want = run_in_process(kind, path, tokens, weights)
    model = f"pooler_{kind}"
    with triton.InferenceServerClient(program_server.url.removeprefix("http://")) as client:
        metadata = client.get_model_metadata(model)
        assert metadata["inputs"] == [
            {"name": "tokens", "datatype": "INT64", "shape": [-1, -1]},
            {"name": "weights", "datatype": "FP32", "shape": [-1, 4]},
        ]
        assert metadata["outputs"] == [
            {"name": "pooled", "datatype": "FP32", "shape": [-1, 4]},
            {"name": "count", "datatype": "INT64", "shape": [-1]},
        ]
        inputs = [
            triton.InferInput("tokens", list(tokens.shape), "INT64"),
            triton.InferInput("weights", [6, 4], "FP32"),
        ]
        inputs[0].set_data_from_numpy(tokens, binary_data=binary_data)
        inputs[1].set_data_from_numpy(weights, binary_data=binary_data)
        outputs = [triton.InferRequestedOutput(name, binary_data=binary_data) for name in ("pooled", "count")]
        result = client.infer(model, inputs, outputs=outputs)
    pooled, count = result.as_numpy("pooled"), result.as_numpy("count")
    assert pooled is not None and pooled.dtype == np.float32 and count is not None and count.dtype == np.int64
    np.testing.assert_allclose(pooled, want["pooled"], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(count, want["count"])


@pytest.mark.parametrize("kind", ["onnx", "pt2"])
def test_a_program_answers_the_native_route_as_it_runs_in_process(
    program_server: ServerProcess, programs: dict[str, tuple[Path, str]], kind: str
) -> None:
    """Concurrent clients with tokens of different lengths: each length runs as its own call."""
    path, _ = programs[kind]
    cases = [pooler_inputs(2, length, seed=length) for length in (1, 3, 3, 7, 12, 12, 30, 64)]

    def one(case: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]) -> None:
        tokens, weights = case
        body = {
            "inputs": [
                {"tokens": t.tolist(), "weights": w.tolist()} for t, w in zip(tokens, weights, strict=True)
            ]
        }
        reply = program_server.post(f"/v1/models/pooler_{kind}/predict", body)
        assert reply.status_code == 200, reply.text
        want = run_in_process(kind, path, tokens, weights)
        for index, got in enumerate(reply.json()["outputs"]):
            np.testing.assert_allclose(got["pooled"], want["pooled"][index], rtol=0, atol=1e-6)
            assert got["count"] == int(want["count"][index])

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(one, cases * 2))


def test_a_value_the_program_cannot_take_fails_alone(program_server: ServerProcess) -> None:
    """Token 500 is past the embedding's 100 rows: that input is a 422 naming the program's error;
    inputs computed in the same forward are answered."""

    def one(index: int) -> int:
        token = 500 if index % 4 == 0 else 5
        reply = program_server.post(
            "/v1/models/pooler_onnx/predict", {"inputs": [{"tokens": [token, 1], "weights": [1.0] * 4}]}
        )
        if reply.status_code == 422:
            assert "the program failed on this input" in reply.json()["error"]
        return reply.status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        codes = list(pool.map(one, range(16)))
    assert codes == [422 if index % 4 == 0 else 200 for index in range(16)]


def refused_at_start(args: list[str]) -> str:
    """The output of a server that must refuse to start (exit non-zero, never ready)."""
    with ServerProcess(args=args, wait_ready=False) as process:
        assert process.process is not None
        wait_until(
            lambda: process.process is not None and process.process.poll() is not None,
            "the server exits",
            120.0,
        )
        assert process.process.returncode != 0
        return process.output()


def test_a_pt2_with_a_wrong_checksum_or_none_is_refused_at_start(
    programs: dict[str, tuple[Path, str]],
) -> None:
    pt2, digest = programs["pt2"]
    wrong = "0" * 64
    output = refused_at_start(["--model", f"p={pt2}", "--sha256", f"p={wrong}"])
    assert f"checksum mismatch for {pt2}: expected sha256 {wrong}, got {digest}" in output
    output = refused_at_start(["--model", f"p={pt2}"])
    assert "is a torch.export program, which is code: pin its checksum with --sha256 p=HEX" in output
