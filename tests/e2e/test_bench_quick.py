"""The benchmark's smoke run: every contender answers correctly and every number is there.

No timing thresholds: timings belong in the benchmark's own report, not in pass/fail tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.slow


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
