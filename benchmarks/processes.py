"""Server processes under test and what is measured on them from outside: the memory of every
process in a contender's tree, and the CPU the tree uses while idle."""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from typing import Any

import psutil


def tree(pid: int) -> list[psutil.Process]:
    """A process and all its descendants (empty once it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def high_water_rss(process: psutil.Process) -> int:
    """The kernel's RSS high-water mark of a process (VmHWM), in bytes; 0 when unreadable."""
    try:
        with open(f"/proc/{process.pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _manager(process: psutil.Process) -> bool:
    """A multiprocessing Manager's server: it listens on a ``pymp-*/listener-*`` unix socket.
    (It is forked after the HTTP socket is bound, so it holds that socket too.)"""
    return any("listener-" in (c.laddr or "") for c in process.net_connections(kind="unix"))


def role(process: psutil.Process, root: int, port: int) -> str:
    """What a process of a contender's tree is, from its command line and sockets."""
    try:
        cmdline = " ".join(process.cmdline())
        if "resource_tracker" in cmdline:
            return "resource tracker"
        if "spawn_main" in cmdline:
            return "inference worker"
        if process.pid == root:
            return "main"
        if _manager(process):
            return "manager"
        listening = any(
            c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
            for c in process.net_connections(kind="tcp")
        )
        return "api server" if listening else "manager"
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "gone"


class TreeSampler:
    """Samples the RSS of every process under ``pid`` from a thread; keeps each one's peak."""

    def __init__(self, pid: int, port: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.port = port
        self.interval = interval
        self.peaks: dict[int, int] = {}
        self.last: dict[int, int] = {}
        self.roles: dict[int, str] = {}
        self.high_water: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-sampler", daemon=True)

    def __enter__(self) -> TreeSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def sample(self) -> None:
        for process in tree(self.pid):
            try:
                rss = process.memory_info().rss
            except psutil.NoSuchProcess:
                continue
            if process.pid not in self.roles:
                self.roles[process.pid] = role(process, self.pid, self.port)
            self.last[process.pid] = rss
            self.peaks[process.pid] = max(rss, self.peaks.get(process.pid, 0))
            self.high_water[process.pid] = max(high_water_rss(process), self.high_water.get(process.pid, 0))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def report(self) -> list[dict[str, Any]]:
        return [
            {
                "pid": pid,
                "role": self.roles.get(pid, "?"),
                "peak_rss": peak,
                "high_water_rss": self.high_water.get(pid, 0),
                "last_rss": self.last.get(pid, 0),
            }
            for pid, peak in sorted(self.peaks.items())
        ]


def cpu_seconds(pid: int) -> dict[int, float]:
    """user + system CPU seconds of every live process under ``pid``, by pid."""
    found = {}
    for process in tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            cpu = process.cpu_times()
            found[process.pid] = cpu.user + cpu.system
    return found


def idle_cpu_percent(pid: int, seconds: float) -> float:
    """CPU used by the tree under ``pid`` over ``seconds`` of no traffic, in % of one core."""
    before, started = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    after, elapsed = cpu_seconds(pid), time.monotonic() - started
    used = sum(total - before.get(p, 0.0) for p, total in after.items())
    return 100.0 * used / elapsed


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def service_command(model: str) -> tuple[list[str], dict[str, str]]:
    """``python -m service serve`` with its real configuration, serving one model."""
    return python_module("service", "serve"), {"SERVICE_SERVE": json.dumps([model])}
