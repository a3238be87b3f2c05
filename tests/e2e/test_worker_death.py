"""A worker that dies loses no request: kill -9 under load, on every protocol and mid-file; a
stopped worker costs only its own requests; a killed run's folders go at the next start.

Every wait is on a condition (readiness, a counter, a request's state), never a sleep.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
import pytest

from service.core.repository import DEFAULT_REPOSITORY
from tests.support import ServerProcess, scratch_folders, wait_until

KILLS = 20
VECTOR = {"inputs": [[0.25] * 16]}
PREDICT = "/v1/models/reference/predict"


def slow_reference(tmp_path: Path, delay: float, workers: int) -> dict[str, str]:
    """The environment of a server whose reference model takes ``delay`` s per forward, so that
    its workers always hold requests under load."""
    root = tmp_path / "repo"
    shutil.copytree(
        DEFAULT_REPOSITORY / "reference", root / "reference", ignore=shutil.ignore_patterns("__pycache__")
    )
    declaration = root / "reference" / "model.yaml"
    declaration.write_text(declaration.read_text() + f"options:\n  delay_seconds: {delay}\n")
    return {
        "SERVICE_REPOSITORY": str(root),
        "SERVICE_MODELS__REFERENCE__WORKERS": str(workers),
        "SERVICE_MODELS__REFERENCE__MAX_BATCH_SIZE": "4",
    }


def assert_all_gone(server: ServerProcess) -> None:
    """The server exited by itself (not killed at the end of the test) and, within a few seconds
    (a process's own exit takes a moment on a loaded machine), left no process of its group."""
    assert server.process is not None and server.process.returncode == 0, server.final_output[-2000:]
    wait_until(lambda: server.group_alive() == [], "every process of the server to be gone", 10)


def worker_processes(server: ServerProcess) -> list[psutil.Process]:
    """The inference workers (spawned children of the launcher, not its resource tracker)."""
    workers = []
    for child in psutil.Process(server.pid).children(recursive=True):
        with_args = " ".join(child.cmdline())
        if "spawn_main" in with_args and "resource_tracker" not in with_args:
            workers.append(child)
    return workers


def api_server(server: ServerProcess) -> psutil.Process:
    """The API server: the launcher's child listening on the port."""
    for child in psutil.Process(server.pid).children():
        if any(
            c.laddr.port == server.port for c in child.net_connections(kind="tcp") if c.status == "LISTEN"
        ):
            return child
    raise AssertionError("no API server listens on the port")


def ready(server: ServerProcess) -> bool:
    return server.client.get("/health/ready").status_code == 200


@dataclass
class Outcome:
    started: float
    ended: float
    status: int
    retry_after: str | None
    body: Any


@dataclass
class Load:
    """Clients that each send one request after another until stopped."""

    send: Callable[[httpx.Client], httpx.Response]
    outcomes: list[Outcome] = field(default_factory=list)
    in_progress: dict[int, float] = field(default_factory=dict)  # client -> when its request started
    stop: threading.Event = field(default_factory=threading.Event)

    def client(self, number: int, url: str) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            while not self.stop.is_set():
                started = self.in_progress[number] = time.monotonic()
                response = self.send(http)
                del self.in_progress[number]
                self.outcomes.append(
                    Outcome(
                        started,
                        time.monotonic(),
                        response.status_code,
                        response.headers.get("retry-after"),
                        response.json(),
                    )
                )

    def stuck_for(self, seconds: float) -> bool:
        """Whether some request has been waiting for at least ``seconds``."""
        now = time.monotonic()
        return any(now - started >= seconds for started in list(self.in_progress.values()))


@contextmanager
def load(
    server: ServerProcess, clients: int, send: Callable[[httpx.Client], httpx.Response]
) -> Iterator[Load]:
    running = Load(send)
    threads = [threading.Thread(target=running.client, args=(n, server.url)) for n in range(clients)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(running.outcomes) >= 2 * clients, "the clients' first answers", 60)
        assert {o.status for o in running.outcomes} == {200}, running.outcomes[0].body
        yield running
    finally:
        running.stop.set()
        for thread in threads:
            thread.join(timeout=90)


def predict_reference(http: httpx.Client) -> httpx.Response:
    return http.post(PREDICT, json=VECTOR)


def overlap(outcome: Outcome, windows: list[tuple[float, float]]) -> float:
    """Seconds of ``outcome``'s request that fall inside the ``windows``."""
    return sum(max(0.0, min(outcome.ended, end) - max(outcome.started, start)) for start, end in windows)


def kill_and_wait_for_replacement(server: ServerProcess, victim: psutil.Process, restarts: int) -> float:
    """kill -9 ``victim``; returns when; waits until the replacement is serving."""
    killed = time.monotonic()
    victim.kill()
    sample = 'inference_worker_restarts_total{model="reference"}'
    wait_until(lambda: server.metric(sample) >= restarts, "the monitor to replace the worker", 30)
    wait_until(lambda: ready(server), "the replacement to be ready", 30)
    return killed


def test_killed_worker_of_two_loses_nothing(tmp_path: Path) -> None:
    with ServerProcess(serve=["reference"], env=slow_reference(tmp_path, 0.1, workers=2)) as server:
        launcher, uvicorn = psutil.Process(server.pid), api_server(server)
        fds_before = (launcher.num_fds(), uvicorn.num_fds())
        frozen: list[tuple[float, float]] = []  # (stopped, killed): time the test itself froze a worker
        with load(server, 6, predict_reference) as running:
            for kill in range(1, KILLS + 1):
                resent = server.metric('inference_requests_resent_total{model="reference"}')
                workers = worker_processes(server)
                assert len(workers) == 2
                victim = min(workers, key=lambda p: p.create_time())  # serving since the last kill
                stopped = None
                if kill % 2 == 0:
                    # every other kill is certain to find requests in the worker: stop it first, and
                    # kill it once a request has waited longer than the live worker ever makes one wait
                    stopped = time.monotonic()
                    victim.suspend()
                    wait_until(lambda: running.stuck_for(0.6), "a request held by the stopped worker")
                killed = kill_and_wait_for_replacement(server, victim, kill)
                if stopped is not None:
                    frozen.append((stopped, killed))
                if kill % 2 == 0:  # what it held went to the other worker
                    assert server.metric('inference_requests_resent_total{model="reference"}') > resent
        outcomes = running.outcomes
        assert len(outcomes) > 100
        assert {o.status for o in outcomes} == {200}, [o.body for o in outcomes if o.status != 200][:5]
        # how long each request took, less the time the test kept its worker stopped before the kill
        slowest = max(o.ended - o.started - overlap(o, frozen) for o in outcomes)
        assert slowest < 2.0, f"a request took {slowest:.2f} s"
        assert all(len(o.body["outputs"]) == 1 and len(o.body["outputs"][0]) == 4 for o in outcomes)
        # old pipes are closed, not kept: the launcher and the API server hold as many as before
        assert launcher.num_fds() <= fds_before[0] + 2 and uvicorn.num_fds() <= fds_before[1] + 2
        assert scratch_folders(server.pid, f"spool-{server.port}")
        assert [p for p in server.spool_dir.iterdir() if p.name != ".owner"] == []
    assert_all_gone(server)


def test_killed_only_worker_answers_what_it_held_503_at_once(tmp_path: Path) -> None:
    with ServerProcess(serve=["reference"], env=slow_reference(tmp_path, 0.2, workers=1)) as server:
        kills: list[float] = []
        with load(server, 4, predict_reference) as running:
            for kill in range(1, KILLS + 1):
                (worker,) = worker_processes(server)
                wait_until(lambda: running.stuck_for(0.05), "a request the worker holds")
                kills.append(kill_and_wait_for_replacement(server, worker, kill))
                answered = len(running.outcomes)
                wait_until(lambda n=answered: len(running.outcomes) > n + 4, "the replacement to serve")
        outcomes = running.outcomes
        assert {o.status for o in outcomes} == {200, 503}
        refused = [o for o in outcomes if o.status == 503]
        for outcome in refused:
            killed = max(k for k in kills if k <= outcome.ended)
            assert outcome.ended - killed < 2.0, "a 503 came late"
            assert outcome.retry_after == "1" and "died" in outcome.body["error"]
        # every kill found requests in the worker, and each of them was answered at once
        assert len(refused) >= KILLS
        for killed in kills:
            held = [o for o in outcomes if o.started < killed < o.ended and o.status == 503]
            assert held, "no request was refused for this kill"
        assert server.metric('inference_requests_resent_total{model="reference"}') == 0
    assert_all_gone(server)


def v2_infer(http: httpx.Client) -> httpx.Response:
    body = {"inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES", "data": ["a sentence to embed"]}]}
    return http.post("/v2/models/minilm/infer", json=body)


def openai_embeddings(http: httpx.Client) -> httpx.Response:
    return http.post("/v1/embeddings", json={"model": "minilm", "input": ["a sentence to embed"]})


@pytest.mark.parametrize("send", [v2_infer, openai_embeddings], ids=["v2", "openai"])
def test_killed_worker_loses_nothing_on_every_protocol(
    send: Callable[[httpx.Client], httpx.Response],
) -> None:
    with ServerProcess(serve=["minilm"]) as server:
        with load(server, 6, send) as running:
            # a stopped worker keeps the requests it was sent: kill it once it certainly holds some
            victim = worker_processes(server)[0]
            victim.suspend()
            wait_until(lambda: running.stuck_for(0.5), "a request held by the stopped worker")
            killed = time.monotonic()
            victim.kill()
            sample = 'inference_worker_restarts_total{model="minilm"}'
            wait_until(lambda: server.metric(sample) >= 1, "the monitor to replace the worker", 30)
            wait_until(lambda: ready(server), "the replacement to be ready", 60)
        outcomes = running.outcomes
        assert {o.status for o in outcomes} == {200}, [o.body for o in outcomes if o.status != 200][:5]
        held = [o for o in outcomes if o.started < killed - 0.5 and o.ended > killed]
        assert held and all(o.ended - killed < 2.0 for o in held)
        assert all(o.ended - o.started < 2.0 for o in outcomes if o.started >= killed)
        assert server.metric('inference_requests_resent_total{model="minilm"}') >= 1


def test_killed_worker_ends_a_file_stream_with_an_error_record(tmp_path: Path) -> None:
    lines = b"".join(
        orjson.dumps({"id": i, "input": f"sentence number {i} of a long file"}) + b"\n" for i in range(20000)
    )
    env = {"SERVICE_MODELS__MINILM__WORKERS": "1", "SERVICE_MAX_FILE_BYTES": str(8 << 20)}
    with ServerProcess(serve=["minilm"], env=env) as server:
        url = "/v1/models/minilm/predict-file"
        headers = {"content-type": "application/x-ndjson"}
        with server.client.stream("POST", url, content=lines, headers=headers) as response:
            assert response.status_code == 200
            records = response.iter_lines()
            first = orjson.loads(next(records))
            assert first["id"] == 0 and "output" in first
            killed = time.monotonic()
            worker_processes(server)[0].kill()
            rest = [orjson.loads(line) for line in records if line]
            closed = time.monotonic()
        assert closed - killed < 2.0
        assert "error" in rest[-1] and "died" in rest[-1]["error"] and "not resumed" in rest[-1]["error"]
        assert len(rest) < 20000 and all("output" in r for r in rest[:-1])
        wait_until(lambda: ready(server), "the replacement to be ready", 60)
        assert server.post("/v1/models/minilm/predict", {"inputs": ["still serving"]}).status_code == 200


def test_stopped_worker_costs_only_its_own_requests(tmp_path: Path) -> None:
    with ServerProcess(serve=["reference"], env=slow_reference(tmp_path, 0.02, workers=2)) as server:

        def short_deadline(http: httpx.Client) -> httpx.Response:
            return http.post(PREDICT, json=VECTOR, headers={"X-Request-Timeout": "1"})

        with load(server, 6, short_deadline) as running:
            victim = worker_processes(server)[0]
            victim.suspend()
            stopped = time.monotonic()
            timed_out = lambda: [o for o in running.outcomes if o.status == 504]  # noqa: E731
            wait_until(lambda: len(timed_out()) >= 1, "the stopped worker's requests to time out")
            answered = len(running.outcomes)
            # the other worker keeps serving, and the server stays ready throughout
            wait_until(lambda: len(running.outcomes) > answered + 50, "the live worker's answers")
            assert ready(server)
            victim.resume()
            wait_until(lambda: not running.stuck_for(0.5), "no request waiting on the stopped worker")
        outcomes = running.outcomes
        assert {o.status for o in outcomes} <= {200, 504}
        for outcome in timed_out():
            assert outcome.started >= stopped - 0.5 and outcome.ended - outcome.started < 2.0
            assert "deadline" in outcome.body["error"]
        assert server.metric('inference_worker_restarts_total{model="reference"}') == 0


def test_a_killed_runs_folders_are_removed_at_the_next_start() -> None:
    crashed = ServerProcess(serve=["reference"]).__enter__()
    try:
        left = scratch_folders(crashed.pid)
        assert {p.name.split("-")[1] for p in left} == {"metrics", "spool"}
        os.killpg(crashed.pid, signal.SIGKILL)  # no clean-up can run
        assert crashed.process is not None
        crashed.process.wait(timeout=10)
        wait_until(lambda: crashed.group_alive() == [], "every process of the killed run to be gone")
        assert all(path.exists() for path in left)
        with ServerProcess(serve=["reference"]) as server:
            assert not any(path.exists() for path in left)
            assert server.post(PREDICT, VECTOR).status_code == 200
    finally:
        crashed.stop()
