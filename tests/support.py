"""Test support: server processes on a loopback port, owned by context managers.

``ServerUnderTest`` runs any server command (the benchmarks use it for their contenders);
``ServerProcess`` is ``python -m service serve`` with the helpers the tests need.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import psutil

from service.core.scratch import remove_abandoned

ROOT = Path(__file__).resolve().parent.parent
# every server this test process started, and its output file: what a run must not leave behind
STARTED: list[tuple[int, str]] = []


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def scratch_folders(pid: int, kind: str = "*") -> list[Path]:
    """The temporary folders of the service run with launcher ``pid`` (service.core.scratch)."""
    root = Path(tempfile.gettempdir())
    if kind == "*":
        return sorted(path for path in root.glob("inference-*") if f"-{pid}-" in path.name)
    return sorted(root.glob(f"inference-{kind}-{pid}-*"))


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.02)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


class ServerUnderTest:
    """A server command in its own session on a free loopback port; ``with`` stops it and every child.

    ``{port}`` in the command is replaced by the port (a free one unless given); ``ready_path`` is polled until it answers
    200 (unless ``wait_ready`` is false); ``stop_signal`` asks it to stop (LitServe itself stops
    cleanly on SIGINT only), and the whole process group is killed afterwards.
    """

    def __init__(
        self,
        command: list[str],
        ready_path: str,
        env: dict[str, str] | None = None,
        stop_signal: int = signal.SIGINT,
        ready_timeout: float = 180.0,
        wait_ready: bool = True,
        port: int | None = None,
        own_metrics_dir: bool = True,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [arg.replace("{port}", str(self.port)) for arg in command]
        self.ready_path = ready_path
        self.stop_signal = stop_signal
        self.ready_timeout = ready_timeout
        self.wait_ready = wait_ready
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "SERVICE_PORT": str(self.port), **(env or {})}
        # a metrics folder of the test's own, removed at stop (ServerProcess lets the service own one)
        self._own_metrics_dir: str | None = None
        if own_metrics_dir:
            self._own_metrics_dir = tempfile.mkdtemp(prefix="inference-test-metrics-")
            self.env["PROMETHEUS_MULTIPROC_DIR"] = self._own_metrics_dir
        else:
            self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.log: Any = None  # the server's output file, from __enter__ until stop
        self.process: subprocess.Popen[bytes] | None = None
        self.final_output = ""  # the log, read once the server stopped
        self.startup_s = float("nan")

    def __enter__(self) -> ServerUnderTest:
        self.log = tempfile.NamedTemporaryFile(prefix="inference-server-", suffix=".log", delete=False)
        started = time.monotonic()
        self.process = subprocess.Popen(
            self.command,
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        STARTED.append((self.process.pid, self.log.name))
        try:
            if self.wait_ready:
                self.wait_until_ready()
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - started
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def wait_until_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.ready_timeout
        with httpx.Client(base_url=self.url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"{self.command} exited with {self.process.returncode}:\n{self.output()}"
                    )
                with contextlib.suppress(httpx.TransportError):
                    if client.get(self.ready_path).status_code == 200:
                        return
                time.sleep(0.2)
        raise TimeoutError(f"{self.command} not ready after {self.ready_timeout} s:\n{self.output()}")

    def output(self) -> str:
        if self.log is None:
            return ""
        with open(self.log.name, encoding="utf-8", errors="replace") as handle:
            return handle.read()[-8000:]

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def pids(self) -> list[int]:
        """The launcher and every process under it."""
        try:
            root = psutil.Process(self.pid)
            return [root.pid, *(child.pid for child in root.children(recursive=True))]
        except psutil.NoSuchProcess:
            return []

    def group_alive(self) -> list[int]:
        """Processes still alive in the server's session (its process group)."""
        alive = []
        for proc in psutil.process_iter(["pid"]):
            try:
                if os.getpgid(proc.pid) == self.pid and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc.pid)
            except (ProcessLookupError, psutil.NoSuchProcess):
                continue
        return alive

    def rss(self) -> dict[int, int]:
        """Resident memory in bytes of the server and every process under it, by pid."""
        import psutil

        assert self.process is not None
        root = psutil.Process(self.process.pid)
        return {process.pid: process.memory_info().rss for process in [root, *root.children(recursive=True)]}

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.log is not None:
            self.log.close()
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(self.stop_signal)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(timeout=5)
        if self.log is not None and os.path.exists(self.log.name):  # stop may be called again
            self.final_output = self.output()
            os.unlink(self.log.name)
        if self.process.returncode == -signal.SIGKILL:  # killed: its folders are ours to remove
            deadline = time.monotonic() + 10
            while self.group_alive() and time.monotonic() < deadline:  # their locks go with the last
                time.sleep(0.05)
            remove_abandoned()
        if self._own_metrics_dir is not None:
            shutil.rmtree(self._own_metrics_dir, ignore_errors=True)
        return self.process.returncode

    @property
    def metrics_dir(self) -> str:
        """The server's Prometheus multiprocess folder."""
        if self._own_metrics_dir is not None:
            return self._own_metrics_dir
        return str(self.scratch("metrics"))

    def scratch(self, kind: str) -> Path:
        """The server's own folder ``inference-<kind>-<launcher pid>-…`` in the temp directory."""
        found = scratch_folders(self.pid, kind)
        assert len(found) == 1, f"expected one {kind} folder of pid {self.pid}, found {found}"
        return found[0]


class ServerProcess(ServerUnderTest):
    """``python -m service serve`` serving ``serve`` (the config's models if None); stopped with SIGTERM."""

    def __init__(
        self,
        serve: list[str] | None = None,
        env: dict[str, str] | None = None,
        config: Path | None = None,
        ready_timeout: float = 120.0,
        wait_ready: bool = True,
        port: int | None = None,
        args: list[str] | None = None,
    ) -> None:
        command = [sys.executable, "-m", "service", "serve", *(args or [])]
        if config is not None:
            command += ["--config", str(config)]
        super().__init__(
            command,
            "/health/ready",
            env={**({"SERVICE_SERVE": json.dumps(serve)} if serve else {}), **(env or {})},
            stop_signal=signal.SIGTERM,
            ready_timeout=ready_timeout,
            wait_ready=wait_ready,
            port=port,
            own_metrics_dir=False,
        )
        self.client = httpx.Client(base_url=self.url, timeout=60.0)

    def __enter__(self) -> ServerProcess:
        super().__enter__()
        return self

    def stop(self, timeout: float = 15.0) -> int | None:
        self.client.close()
        code = super().stop(timeout)
        if self.process is not None and self.process.returncode not in (None, -signal.SIGKILL):
            # however it stopped (SIGTERM, SIGINT, an error), the service left nothing behind
            left = scratch_folders(self.process.pid)
            assert not left, f"the server left {left} in the temp directory"
            assert "leaked semaphore" not in self.final_output, self.final_output[-2000:]
        return code

    @property
    def spool_dir(self) -> Path:
        """Where the server spools uploads: SERVICE_SPOOL_DIR, else its own temporary folder."""
        configured = self.env.get("SERVICE_SPOOL_DIR")
        return Path(configured) if configured else self.scratch(f"spool-{self.port}")

    def post(self, path: str, body: Any, **kwargs: Any) -> httpx.Response:
        return self.client.post(path, json=body, **kwargs)

    def metric(self, sample: str) -> float:
        """The value of one sample of a scrape (``name{labels}`` as exposed)."""
        for line in self.client.get("/metrics").text.splitlines():
            if line.startswith(sample + " "):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{sample} not scraped")


def left_behind() -> list[str]:
    """What the servers of this test process left in the temp directory: their own folders
    (``inference-<kind>-<pid>-…``) and output files."""
    left = [str(path) for pid, _ in STARTED for path in scratch_folders(pid)]
    return left + [log for _, log in STARTED if os.path.exists(log)]
