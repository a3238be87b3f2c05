"""The benchmark's smoke run: every contender answers correctly and every number is there;
and the benchmark's own tools: the mixed-length workload, the length bucketing of the
in-process limit, the answer check per API.

No timing thresholds: timings belong in the benchmark's own report, not in pass/fail tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.inprocess import bucket
from benchmarks.inputs import PARAGRAPH_WORDS, SENTENCE_WORDS, mixed_texts, model_inputs
from benchmarks.loadgen import check
from tests.support import ROOT


def test_mixed_workload_is_seeded_with_one_paragraph_in_ten() -> None:
    texts = mixed_texts(320, seed=3)
    assert texts == mixed_texts(320, seed=3)
    assert texts != mixed_texts(320, seed=4)
    words = [len(text.split()) for text in texts]
    paragraphs = [w for w in words if w > SENTENCE_WORDS[1]]
    assert len(paragraphs) == 32
    assert all(PARAGRAPH_WORDS[0] <= w <= PARAGRAPH_WORDS[1] for w in paragraphs)
    assert all(SENTENCE_WORDS[0] <= w <= SENTENCE_WORDS[1] for w in words if w <= SENTENCE_WORDS[1])
    assert model_inputs("minilm", workload="mixed") == mixed_texts(320)
    with pytest.raises(ValueError, match="text"):
        model_inputs("reference", workload="mixed")


def test_bucketing_sorts_by_cost_and_keeps_each_forward_under_the_budget() -> None:
    costs = [20, 250, 15, 18, 240, 22, 12]
    groups = bucket(costs, budget=512, cap=4)
    assert sorted(i for group in groups for i in group) == list(range(len(costs)))
    for group in groups:
        padded = len(group) * max(costs[i] for i in group)
        assert padded <= 512 or len(group) == 1
        assert len(group) <= 4
    # ascending cost, cut when the cap or the budget (rows × longest) would be exceeded
    assert [[costs[i] for i in group] for group in groups] == [[12, 15, 18, 20], [22, 240], [250]]
    assert bucket([600], budget=512, cap=32) == [[0]]  # one input over the budget runs alone


def test_answer_check_knows_each_api_shape() -> None:
    embedding = [0.5] * 384
    assert check(200, json.dumps({"outputs": [embedding]}).encode(), 384) is None
    openai = {"object": "list", "data": [{"object": "embedding", "embedding": embedding, "index": 0}]}
    assert check(200, json.dumps(openai).encode(), 384, "openai") is None
    assert check(200, json.dumps({"outputs": [embedding]}).encode(), 384, "openai") is not None
    two = {"data": [{"embedding": embedding}, {"embedding": embedding}]}
    assert "one embedding" in (check(200, json.dumps(two).encode(), 384, "openai") or "")
    assert "384 floats" in (check(200, json.dumps({"outputs": [[0.5] * 3]}).encode(), 384) or "")
    assert (check(503, b"busy", 384) or "").startswith("status 503")


@pytest.mark.slow
def test_quick_benchmark_produces_complete_results(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert (tmp_path / "results.md").is_file()
    results = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))

    assert results["loadgen_ceiling"][0]["throughput_rps"] > 0
    assert results["loadgen_ceiling"][0]["errors"] == 0
    contenders = results["models"]["reference"]["contenders"]
    assert set(contenders) == {"limit", "naive", "bare", "service"}
    for name, contender in contenders.items():
        assert not contender.get("failed"), f"{name}: {contender.get('failed')}"
        assert contender["points"], name
        for point in contender["points"]:
            assert point["errors"] == 0, (name, point)
            assert point["throughput_rps"] > 0, (name, point)
            assert 0 < point["p50_ms"] <= point["p95_ms"] <= point["p99_ms"], (name, point)
        assert all(process["peak_rss"] > 0 for process in contender["processes"]), name
        if name != "limit":
            assert contender["idle_cpu_percent"] >= 0, name
            assert contender["warmup_errors"] == 0, name
    service_roles = {process["role"] for process in contenders["service"]["processes"]}
    assert "inference worker" in service_roles
    assert results["models"]["reference"]["bare_memory"]["rss_after_one_forward"] > 0
    assert results["grad_study"] and all(row["latency_ms"]["p50"] > 0 for row in results["grad_study"])
    assert {row["mode"]: row["output_requires_grad"] for row in results["grad_study"]} == {
        "grad": True,
        "no_grad": False,
        "inference_mode": False,
    }
    assert any(t["target"].startswith("idle CPU") and t["met"] is not None for t in results["targets"])
