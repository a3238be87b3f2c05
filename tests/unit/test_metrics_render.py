"""A scrape that meets a metrics file a process is creating this instant (prometheus_client opens
it empty and sizes it a moment later) reads again instead of answering 500."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from prometheus_client.mmap_dict import MmapedDict

from service import metrics


def test_a_scrape_reads_again_while_a_process_creates_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    created = tmp_path / "counter_4242.db"
    created.touch()  # a file between its creation and its sizing
    waits: list[float] = []

    def writer_finishes(seconds: float) -> None:  # while the scrape waits, the writer sizes the file
        waits.append(seconds)
        MmapedDict(str(created)).close()

    monkeypatch.setattr(metrics.time, "sleep", writer_finishes)
    text = metrics.render(lambda: {"m": True})
    assert waits and b'inference_model_ready{model="m"} 1.0' in text


def test_a_file_that_stays_unreadable_still_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    (tmp_path / "counter_4242.db").touch()
    monkeypatch.setattr(metrics.time, "sleep", lambda seconds: None)
    with pytest.raises(struct.error):
        metrics.render(lambda: {"m": True})
