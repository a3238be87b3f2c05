"""Overload, deadlines, drain on SIGTERM/SIGINT, start-up failures, API keys (dead workers:
test_worker_death.py)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from service.core.repository import DEFAULT_REPOSITORY
from tests.support import ROOT, ServerProcess, wait_until

VECTOR = {"inputs": [[0.25] * 16]}


def slow_repository(tmp_path: Path, delay: float, extra: str = "") -> Path:
    """A copy of the reference model whose forward takes ``delay`` seconds."""
    root = tmp_path / "repo"
    shutil.copytree(
        DEFAULT_REPOSITORY / "reference", root / "reference", ignore=shutil.ignore_patterns("__pycache__")
    )
    declaration = root / "reference" / "model.yaml"
    text = declaration.read_text().replace("max_queue_size: 512", "max_queue_size: 4")
    declaration.write_text(text + f"options:\n  delay_seconds: {delay}\n{extra}")
    return root


def slow_server(tmp_path: Path, delay: float, **env: str) -> ServerProcess:
    return ServerProcess(
        serve=["reference"],
        env={
            "SERVICE_REPOSITORY": str(slow_repository(tmp_path, delay)),
            "SERVICE_SPOOL_DIR": str(tmp_path / "spool"),
            **env,
        },
    )


def post(url: str, body: object = VECTOR, timeout: float = 30.0, **headers: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/models/reference/predict", json=body, headers=headers, timeout=timeout)


def scrape_value(server: ServerProcess, prefix: str) -> float:
    response = server.client.get("/metrics")
    for line in response.text.splitlines():
        if line.startswith(prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{prefix} not scraped (status {response.status_code}):\n{response.text[:2000]}")


def wait_in_flight(server: ServerProcess, count: int, timeout: float = 10.0) -> None:
    name = 'inference_in_flight_requests{model="reference"}'
    wait_until(lambda: scrape_value(server, name) >= count, f"{count} requests in flight", timeout)


def forwards_started(server: ServerProcess, count: int = 1) -> Callable[[], bool]:
    """Whether the reference worker has started ``count`` forwards (each observes its first
    request's queue wait as it starts): it took those requests off its pipe."""
    name = 'inference_queue_duration_seconds_count{model="reference"}'
    return lambda: scrape_value(server, name) >= count


def wait_in_flight_at_most(server: ServerProcess, count: int, timeout: float = 15.0) -> None:
    name = 'inference_in_flight_requests{model="reference"}'
    wait_until(lambda: scrape_value(server, name) <= count, f"at most {count} requests in flight", timeout)


def wait_rejected(server: ServerProcess, count: int, timeout: float = 10.0) -> None:
    name = 'inference_rejected_requests_total{model="reference",reason="queue_full"}'
    wait_until(lambda: scrape_value(server, name) >= count, f"{count} requests rejected", timeout)


def test_full_queue_answers_503_at_once_with_retry_after(tmp_path: Path) -> None:
    with slow_server(tmp_path, delay=1.0, SERVICE_MODELS__REFERENCE__MAX_BATCH_SIZE="1") as server:
        answered: list[float] = []  # when each of the first 12 requests got its answer

        def timed_post() -> httpx.Response:
            response = post(server.url)
            answered.append(time.monotonic())
            return response

        with ThreadPoolExecutor(max_workers=12) as pool:
            futures = [pool.submit(timed_post) for _ in range(12)]
            wait_in_flight(server, 4)
            wait_rejected(server, 8)  # the other 8 found the queue full
            rejected = post(server.url)
            rejected_at = time.monotonic()
            responses = [f.result() for f in futures]
        # "at once": the 503 came back while the admitted requests were still queued (4 x 1 s),
        # not after them, however slow the machine is
        assert rejected_at < max(answered)
        assert rejected.status_code == 503
        assert rejected.headers["retry-after"] == "1"
        assert "queued" in rejected.json()["error"]
        codes = sorted(r.status_code for r in responses)
        assert codes.count(200) == 4 and set(codes) <= {200, 503}
        assert (
            scrape_value(server, 'inference_rejected_requests_total{model="reference",reason="queue_full"}')
            == 9
        )


def test_deadline_covers_queue_and_compute(tmp_path: Path) -> None:
    with slow_server(tmp_path, delay=2.0) as server:
        started = time.monotonic()
        response = post(server.url, **{"X-Request-Timeout": "0.4"})
        elapsed = time.monotonic() - started
        assert response.status_code == 504 and "deadline" in response.json()["error"]
        assert 0.4 <= elapsed < 1.5  # at the deadline, long before the 2 s forward ends
        # a queued request whose deadline passed is dropped before it reaches the model
        with ThreadPoolExecutor(max_workers=3) as pool:
            first = pool.submit(post, server.url)
            wait_until(forwards_started(server), "the first request to be computed")
            doomed = pool.submit(post, server.url, VECTOR, 30.0, **{"X-Request-Timeout": "0.3"})
            assert doomed.result().status_code == 504
            assert first.result().status_code == 200
        # the doomed request keeps its queue slot until the worker drops it
        wait_in_flight_at_most(server, 0)
        assert post(server.url).status_code == 200
        batches = scrape_value(server, 'inference_batch_size_count{model="reference"}')
        assert batches == 3  # the first 504, the first request and the last one: never the dropped one
        assert (
            scrape_value(server, 'inference_rejected_requests_total{model="reference",reason="deadline"}')
            == 2
        )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_drains_in_flight_requests_then_exits_0(tmp_path: Path, signum: int) -> None:
    server = slow_server(tmp_path, delay=1.0, SERVICE_SHUTDOWN_GRACE="20")
    with server:
        with ThreadPoolExecutor(max_workers=4) as pool:
            in_flight = [pool.submit(post, server.url) for _ in range(3)]
            wait_in_flight(server, 3)
            server.signal(signum)
            wait_until(lambda: server.client.get("/health/ready").status_code == 503, "readiness to turn 503")
            refused = post(server.url)
            assert refused.status_code == 503 and "shutting down" in refused.json()["error"]
            results = [f.result() for f in in_flight]
        assert [r.status_code for r in results] == [200, 200, 200], [r.text for r in results]
        assert server.process is not None
        assert server.process.wait(timeout=15) == 0
        deadline = time.monotonic() + 5
        while server.group_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.group_alive() == []


def test_shutdown_delay_serves_while_not_ready_and_a_second_signal_stops_at_once(tmp_path: Path) -> None:
    # a delay far longer than the test needs: every request below falls inside it
    server = ServerProcess(
        serve=["reference"],
        env={"SERVICE_SHUTDOWN_DELAY": "120", "SERVICE_SPOOL_DIR": str(tmp_path / "spool")},
    )
    with server:
        server.signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while server.client.get("/health/ready").status_code != 503:
            assert time.monotonic() < deadline, "readiness still 200 after SIGTERM"
            time.sleep(0.05)
        assert server.client.get("/health/ready").json()["status"] == "shutting down"
        answers = [post(server.url) for _ in range(5)]
        assert [r.status_code for r in answers] == [200] * 5, [r.text for r in answers]
        assert server.process is not None and server.process.poll() is None
        server.signal(signal.SIGTERM)
        assert server.process.wait(timeout=20) == 0


def test_disconnected_client_is_dropped_before_the_model(tmp_path: Path) -> None:
    with slow_server(tmp_path, delay=0.8, SERVICE_MODELS__REFERENCE__MAX_BATCH_SIZE="1") as server:
        with ThreadPoolExecutor(max_workers=1) as pool:
            busy = pool.submit(post, server.url)
            wait_until(forwards_started(server), "the first request to be computed")
            body = b'{"inputs": [[' + b",".join([b"0.5"] * 16) + b"]]}"
            with socket.create_connection(("127.0.0.1", server.port)) as sock:
                sock.sendall(
                    b"POST /v1/models/reference/predict HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                    b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                )
                wait_in_flight(server, 2)  # admitted before the client goes away
            assert busy.result().status_code == 200
        # the API server answers 499 at the disconnect; the worker then drops the request unseen
        wait_in_flight_at_most(server, 0)
        assert scrape_value(server, 'inference_batch_size_count{model="reference"}') == 1
        assert (
            scrape_value(
                server,
                'inference_requests_total{code="499",endpoint="/v1/models/{name}/predict",model="reference"}',
            )
            == 1
        )
        assert list((tmp_path / "spool").glob("*.cancel")) == []


def failing_repository(tmp_path: Path, delay: float = 0.0) -> Path:
    root = tmp_path / "failrepo"
    shutil.copytree(
        DEFAULT_REPOSITORY / "reference", root / "broken", ignore=shutil.ignore_patterns("__pycache__")
    )
    declaration = root / "broken" / "model.yaml"
    declaration.write_text(declaration.read_text().replace("name: reference", "name: broken"))
    code = root / "broken" / "model.py"
    code.write_text(
        code.read_text()
        + f"\n\ndef load(*args, **kwargs):\n    time.sleep({delay})\n    raise RuntimeError('cannot build the model')\n"
    )
    shutil.copytree(
        DEFAULT_REPOSITORY / "reference", root / "reference", ignore=shutil.ignore_patterns("__pycache__")
    )
    return root


def run_serve(env: dict[str, str], timeout: float = 90) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "service", "serve"],
        cwd=ROOT,
        env={**os.environ, "SERVICE_PORT": str(ServerProcess().port), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_worker_that_keeps_dying_at_start_up_stops_the_server(tmp_path: Path) -> None:
    result = run_serve(
        {"SERVICE_REPOSITORY": str(failing_repository(tmp_path)), "SERVICE_SERVE": '["broken"]'}
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert "cannot build the model" in output
    assert "service: error: an inference worker failed to start" in result.stderr


def test_crash_loop_of_one_model_stops_the_server(tmp_path: Path) -> None:
    # "broken" fails after "reference" is ready, so the server is up and its monitor retries
    result = run_serve(
        {
            "SERVICE_REPOSITORY": str(failing_repository(tmp_path, delay=1.5)),
            "SERVICE_SERVE": '["reference", "broken"]',
        }
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert "model broken worker 0 failed to start 3 times in a row" in output


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("checksum", "checksum mismatch"),
        ("missing", "is missing"),
        ("config", "invalid declaration"),
    ],
)
def test_start_up_failures_exit_non_zero_with_one_line_before_binding(
    tmp_path: Path, edit: str, message: str
) -> None:
    root = slow_repository(tmp_path, 0.0)
    weights = root / "reference" / "weights.safetensors"
    if edit == "checksum":
        weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    elif edit == "missing":
        weights.unlink()
    else:
        (root / "reference" / "model.yaml").write_text("name: reference\nversion: 1\n")
    port = ServerProcess().port
    result = run_serve(
        {"SERVICE_REPOSITORY": str(root), "SERVICE_SERVE": '["reference"]', "SERVICE_PORT": str(port)}
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert "Uvicorn running" not in result.stdout + result.stderr


def test_api_keys(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("# one key per line\nfile-key\n")
    env = {
        "SERVICE_API_KEYS": '["config-key"]',
        "SERVICE_API_KEYS_FILE": str(keys),
        "SERVICE_METRICS_API_KEY": "scrape",
    }
    with ServerProcess(serve=["reference"], env=env) as server:
        missing = post(server.url)
        assert missing.status_code == 401 and missing.json() == {"error": "missing or invalid API key"}
        assert missing.headers["www-authenticate"] == "Bearer"
        assert post(server.url, **{"X-API-Key": "wrong"}).json() == missing.json()
        assert post(server.url, **{"Authorization": "Bearer wrong"}).status_code == 401
        assert post(server.url, **{"X-API-Key": "config-key"}).status_code == 200
        assert post(server.url, **{"Authorization": "Bearer file-key"}).status_code == 200
        assert server.client.get("/v1/models").status_code == 401
        assert server.client.get("/v1/models", headers={"X-API-Key": "file-key"}).status_code == 200
        assert server.client.get("/health/live").status_code == 200
        assert server.client.get("/health/ready").status_code == 200
        assert server.client.get("/metrics").status_code == 401
        scraped = server.client.get("/metrics", headers={"Authorization": "Bearer scrape"})
        assert scraped.status_code == 200
        assert (
            'inference_rejected_requests_total{model="reference",reason="unauthorized"} 3.0' in scraped.text
        )
        assert "config-key" not in server.output() and "file-key" not in server.output()


@pytest.mark.parametrize("path", ["/v1/models/reference/predict", "/v1/models/reference/predict-file"])
def test_a_client_that_stops_sending_its_body_gets_408(path: str) -> None:
    with ServerProcess(serve=["reference"], env={"SERVICE_BODY_TIMEOUT": "1"}) as server:
        content_type = b"application/json" if path.endswith("predict") else b"application/x-ndjson"
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.settimeout(10)
            started = time.monotonic()
            sock.sendall(
                b"POST "
                + path.encode()
                + b" HTTP/1.1\r\nHost: x\r\ncontent-type: "
                + content_type
                + b"\r\ncontent-length: 1000\r\n\r\n"
                + b'{"inputs": '
            )
            answer = sock.recv(4096)
            elapsed = time.monotonic() - started
            while not answer.endswith(b"}"):
                more = sock.recv(4096)
                if not more:
                    break
                answer += more
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"no part of the request body arrived" in answer
        assert 0.9 <= elapsed < 5
        assert post(server.url).status_code == 200
