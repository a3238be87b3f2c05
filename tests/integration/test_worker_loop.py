"""The worker loop with the real models and spool files, driven through its channel interface
(``receive``/``send``/``flush``) by an in-memory transport: what answers it gives, in which
order, and how file jobs share the model with predicts."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from service.core.messages import (
    Answer,
    Envelope,
    Failure,
    FileDone,
    FileJob,
    FileProgress,
    PredictJob,
    PredictResult,
)
from service.core.repository import DEFAULT_REPOSITORY
from service.core.spool import cancel_marker
from service.runtime.litserve import StopWorker
from service.worker.api import ModelAPI, WorkerConfig
from service.worker.loop import BatchingLoop

REPLY_TO = 7
MIXED = [
    "Hi.",
    "A longer sentence about the weather, which is lovely today in the hills.",
    " ".join(["paragraph"] * 300),  # truncated at 256 tokens
    "Two words",
    "Medium length text with a handful of words in it.",
    "An entire paragraph " * 40,
]


@dataclass
class MemoryChannel:
    """The worker side of a transport, in memory. ``script(channel)`` is called at every
    ``receive``: it returns the jobs that arrive, or None to stop the worker. Answers count as
    delivered only at ``flush``, as on the real transport."""

    script: Callable[[MemoryChannel], list[Envelope] | None]
    delivered: list[tuple[str, Answer]] = field(default_factory=list)
    pending: list[tuple[str, Answer]] = field(default_factory=list)
    receives: int = 0

    def receive(self, timeout: float) -> list[Envelope]:
        self.receives += 1
        envelopes = self.script(self)
        if envelopes is None:
            raise StopWorker
        return envelopes

    def send(self, reply_to: int, uid: str, answer: Answer) -> None:
        assert reply_to == REPLY_TO
        self.pending.append((uid, answer))

    def flush(self) -> None:
        self.delivered += self.pending
        self.pending.clear()

    def answers(self, uid: str) -> list[Answer]:
        return [answer for owner, answer in self.delivered if owner == uid]


def worker(model: str, spool: Path, **config: Any) -> ModelAPI:
    api = ModelAPI(
        WorkerConfig(
            model=model,
            repository=DEFAULT_REPOSITORY,
            grad_mode="no_grad",
            torch_threads=0,
            max_batch_size=config.pop("max_batch_size", 32),
            batch_timeout=0.0,
            max_batch_tokens=config.pop("max_batch_tokens", 4096),
            spool_dir=spool,
            **config,
        )
    )
    handler = signal.getsignal(signal.SIGINT)
    try:
        api.setup("cpu")
    finally:
        signal.signal(signal.SIGINT, handler)  # the worker ignores Ctrl-C; this test process must not
    return api


@pytest.fixture(scope="module")
def spool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("spool")


@pytest.fixture(scope="module")
def minilm(spool: Path) -> Iterator[ModelAPI]:
    yield worker("minilm", spool)


def predict(uid: str, inputs: list[Any], timeout: float = 60.0) -> Envelope:
    now = time.monotonic()
    return Envelope(REPLY_TO, uid, PredictJob(inputs, now, now + timeout))


def serve(api: ModelAPI, channel: MemoryChannel) -> None:
    with pytest.raises(StopWorker):
        BatchingLoop().serve(api, 0, channel)
    assert channel.pending == []  # everything sent was flushed


def test_tokens_order_and_outputs_equal_one_at_a_time(minilm: ModelAPI, spool: Path) -> None:
    assert minilm.session is not None
    model = minilm.session.model
    # 40 inputs: more than one forward, so the request is still held after the first one
    texts = [MIXED[i % len(MIXED)] + f" {i}" for i in range(40)]

    def script(channel: MemoryChannel) -> list[Envelope] | None:
        if channel.receives == 1:
            return [predict("big", texts), predict("small", MIXED[:2]), predict("empty", [])]
        return None if len(channel.delivered) == 3 else []

    channel = MemoryChannel(script)
    serve(minilm, channel)
    answers = {uid: answer for uid, answer in channel.delivered}
    big, small, empty = answers["big"], answers["small"], answers["empty"]
    assert isinstance(big, PredictResult) and isinstance(small, PredictResult)
    assert big.tokens == sum(model.costs(texts)) and small.tokens == sum(model.costs(MIXED[:2])) > 0
    assert empty == PredictResult([], 0)
    for text, output in zip(texts + MIXED[:2], big.outputs + small.outputs, strict=True):
        alone = minilm.session.run([text])[0]
        assert max(abs(a - b) for a, b in zip(output, alone, strict=True)) <= 1e-5


def test_a_model_without_costs_reports_no_tokens(spool: Path) -> None:
    reference = worker("reference", spool, max_batch_tokens=None)

    def script(channel: MemoryChannel) -> list[Envelope] | None:
        if channel.receives == 1:
            return [predict("v", [[0.5] * 16, [0.25] * 16])]
        return None if channel.delivered else []

    channel = MemoryChannel(script)
    serve(reference, channel)
    [(_, answer)] = channel.delivered
    assert isinstance(answer, PredictResult) and len(answer.outputs) == 2 and answer.tokens == 0


def test_expired_and_cancelled_requests_are_dropped(minilm: ModelAPI, spool: Path) -> None:
    cancel_marker(spool, "gone").touch()
    now = time.monotonic()
    late = Envelope(REPLY_TO, "late", PredictJob(["too late"], now - 1, now - 0.5))

    def script(channel: MemoryChannel) -> list[Envelope] | None:
        if channel.receives == 1:
            return [late, predict("gone", ["bye"]), predict("fine", ["hello"])]
        return None if len(channel.delivered) == 3 else []

    try:
        channel = MemoryChannel(script)
        serve(minilm, channel)
    finally:
        cancel_marker(spool, "gone").unlink()
    answers = dict(channel.delivered)
    assert answers["late"] == Failure(504, "deadline expired while queued")
    assert answers["gone"] == Failure(499, "client closed the request")
    assert isinstance(answers["fine"], PredictResult)


def write_file(spool: Path, name: str, count: int) -> FileJob:
    source = spool / f"{name}.in"
    lines = [orjson.dumps({"id": i, "input": f"record {i} of a file"}) for i in range(count)]
    lines.insert(5, b"{not json")
    source.write_bytes(b"\n".join(lines) + b"\n")
    return FileJob(str(source), str(spool / f"{name}.out"), "jsonl", "input", "id", time.monotonic())


def test_a_predict_during_a_file_is_answered_after_at_most_one_forward(minilm: ModelAPI, spool: Path) -> None:
    file = write_file(spool, "file", 600)
    sent_at: dict[str, int] = {}  # predict uid -> how many file answers had been delivered

    def script(channel: MemoryChannel) -> list[Envelope] | None:
        if channel.receives == 1:
            return [Envelope(REPLY_TO, "file", file)]
        progress = len(channel.answers("file"))
        if any(isinstance(answer, FileDone) for answer in channel.answers("file")):
            return None
        if progress in (1, 5, 9) and f"p{progress}" not in sent_at:
            sent_at[f"p{progress}"] = progress
            return [predict(f"p{progress}", ["a question while the file runs"])]
        return []

    channel = MemoryChannel(script)
    serve(minilm, channel)
    assert set(sent_at) == {"p1", "p5", "p9"}
    for uid, progress in sent_at.items():
        [answer] = channel.answers(uid)
        assert isinstance(answer, PredictResult)
        # answered in the same flush as the file's next progress: it rode the very next forward
        answered = [owner for owner, _ in channel.delivered].index(uid)
        before = sum(1 for owner, _ in channel.delivered[:answered] if owner == "file")
        assert before <= progress + 1
    answers = channel.answers("file")
    assert all(isinstance(answer, FileProgress) for answer in answers[:-1])
    done = answers[-1]
    assert isinstance(done, FileDone) and (done.records, done.errors) == (601, 1)
    rows = [orjson.loads(line) for line in Path(file.target).read_bytes().splitlines()]
    assert done.ready == Path(file.target).stat().st_size
    assert [row["line"] for row in rows] == list(range(1, 602))
    assert "error" in rows[5] and [row["id"] for row in rows if "id" in row] == list(range(600))


def test_two_files_take_turns_and_a_vanished_upload_stops_its_file(minilm: ModelAPI, spool: Path) -> None:
    first, second = write_file(spool, "first", 400), write_file(spool, "second", 400)

    def script(channel: MemoryChannel) -> list[Envelope] | None:
        if channel.receives == 1:
            return [Envelope(REPLY_TO, "first", first), Envelope(REPLY_TO, "second", second)]
        if len(channel.answers("second")) == 3:
            Path(second.source).unlink(missing_ok=True)  # the client went away
        finished = [
            uid
            for uid in ("first", "second")
            if channel.answers(uid) and isinstance(channel.answers(uid)[-1], FileDone | Failure)
        ]
        return None if len(finished) == 2 else []

    channel = MemoryChannel(script)
    serve(minilm, channel)
    owners = [owner for owner, _ in channel.delivered]
    # both files progressed before either finished: they took turns
    assert owners.index("second") < max(i for i, owner in enumerate(owners) if owner == "first")
    assert isinstance(channel.answers("first")[-1], FileDone)
    assert channel.answers("second")[-1] == Failure(499, "client closed the request")
    assert len(Path(second.target).read_bytes().splitlines()) < 401
    assert len(Path(first.target).read_bytes().splitlines()) == 401
