"""Two real replicas behind a real haproxy (config/haproxy/haproxy.cfg with the test's ports), under
constant load: a rolling restart loses no request with every haproxy retry turned off (the drain
alone must do it), and a replica killed with SIGKILL costs only the requests it was computing before
haproxy routes around it (with the committed config, which retries only connections that failed).

haproxy comes from Debian (scripts/install-tools.sh). Every wait is on a condition: haproxy's own
view of its servers (its CSV stats page), a process exit, a number of answered requests.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support import ROOT, ServerProcess, free_port, stop_process, wait_until

HAPROXY_CONFIG = ROOT / "config" / "haproxy" / "haproxy.cfg"
VECTOR = {"inputs": [[0.25] * 16]}
CLIENTS = 4
# haproxy marks a replica DOWN after `fall` 2 failed checks `inter` 1 s apart (2 s), each check
# answering within `timeout check` 3 s even on a loaded machine: at worst about 2 x (1 + 3) = 8 s.
# The replica must keep serving longer than that after SIGTERM, or haproxy would send it requests
# it refuses: 15 s leaves room on a loaded 2-core machine.
SHUTDOWN_DELAY = 15
SHUTDOWN_GRACE = 10
SERVERS = ("api1", "api2")


def haproxy_config(lb_port: int, stats_port: int, ports: list[int], retries: bool = True) -> str:
    """config/haproxy/haproxy.cfg with loopback binds and these two servers instead of DNS discovery;
    without ``retries``, haproxy never retries or redispatches a request, not even a failed connection."""
    text = HAPROXY_CONFIG.read_text(encoding="utf-8")
    servers = "".join(
        f"    server {name} 127.0.0.1:{port}\n" for name, port in zip(SERVERS, ports, strict=True)
    )
    edits = [
        (r"^    bind :8000\n", f"    bind 127.0.0.1:{lb_port}\n"),
        (r"^    bind :8404\n", f"    bind 127.0.0.1:{stats_port}\n"),
        (r"^    server-template .*\n", servers),
        (r"^resolvers docker\n(?:    .*\n)+", ""),
    ]
    if not retries:
        edits += [
            (r"^    retries \d+\n", "    retries 0\n"),
            (r"^    retry-on conn-failure\n", ""),
            (r"^    option redispatch 1\n", ""),
        ]
    for pattern, replacement in edits:
        text, count = re.subn(pattern, lambda _, r=replacement: r, text, flags=re.MULTILINE)
        assert count == 1, f"{HAPROXY_CONFIG} no longer has one line matching {pattern!r}"
    return text


@dataclass
class Balancer:
    url: str
    stats_url: str
    process: subprocess.Popen[bytes]

    def states(self) -> dict[str, str]:
        """haproxy's status of each replica: UP, DOWN, "UP 1/2" (going down), "DOWN 1/2" (coming up)."""
        response = httpx.get(self.stats_url, timeout=5)
        rows = csv.DictReader(io.StringIO(response.text.lstrip("# ")))
        return {
            row["svname"]: row["status"]
            for row in rows
            if row["pxname"] == "api" and row["svname"] in SERVERS
        }

    def wait_for(self, server: str, status: str, timeout: float) -> None:
        wait_until(lambda: self.states().get(server) == status, f"haproxy to see {server} {status}", timeout)


@contextlib.contextmanager
def balancer(folder: Path, ports: list[int], retries: bool = True) -> Iterator[Balancer]:
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.fail("haproxy is not installed: run scripts/install-tools.sh (as root) first", pytrace=False)
    lb_port, stats_port = free_port(), free_port()
    config = folder / f"haproxy-{lb_port}.cfg"
    config.write_text(haproxy_config(lb_port, stats_port, ports, retries), encoding="utf-8")
    with open(folder / "haproxy.log", "ab") as log:
        process = subprocess.Popen([haproxy, "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
        try:
            lb = Balancer(f"http://127.0.0.1:{lb_port}", f"http://127.0.0.1:{stats_port}/;csv", process)

            def answers() -> bool:
                assert process.poll() is None, (folder / "haproxy.log").read_text(errors="replace")
                with contextlib.suppress(httpx.TransportError):
                    return httpx.get(lb.stats_url, timeout=2).status_code == 200
                return False

            wait_until(answers, "haproxy's stats page", 30)
            yield lb
        finally:
            stop_process(process)


@dataclass(frozen=True)
class Outcome:
    started: float
    ended: float
    status: int | None  # None: no HTTP answer (connection reset, timeout)
    error: str = ""


class Load:
    """CLIENTS threads posting to the load balancer back to back, each outcome recorded."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.outcomes: list[Outcome] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(CLIENTS)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=90)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    response = client.post("/v1/models/reference/predict", json=VECTOR)
                    outcome = Outcome(started, time.monotonic(), response.status_code, response.text[:200])
                except httpx.HTTPError as exc:
                    outcome = Outcome(started, time.monotonic(), None, repr(exc))
                with self.lock:
                    self.outcomes.append(outcome)

    def snapshot(self) -> list[Outcome]:
        with self.lock:
            return list(self.outcomes)

    def wait_for_more(self, count: int, timeout: float = 120) -> None:
        target = len(self.snapshot()) + count
        wait_until(lambda: len(self.snapshot()) >= target, f"{count} more answers", timeout)


def replica(folder: Path, port: int) -> ServerProcess:
    return ServerProcess(
        serve=["reference"],
        env={
            "SERVICE_SHUTDOWN_DELAY": str(SHUTDOWN_DELAY),
            "SERVICE_SHUTDOWN_GRACE": str(SHUTDOWN_GRACE),
            "SERVICE_SPOOL_DIR": str(folder / f"spool-{port}"),
        },
        port=port,
        wait_ready=False,
        ready_timeout=180,
    )


def failed(outcomes: list[Outcome]) -> list[Outcome]:
    return [outcome for outcome in outcomes if outcome.status != 200]


def test_rolling_restart_loses_nothing_and_a_killed_replica_costs_only_its_requests() -> None:
    with contextlib.ExitStack() as owned:
        folder = Path(tempfile.mkdtemp(prefix="inference-e2e-rolling-"))
        owned.callback(shutil.rmtree, folder, ignore_errors=True)
        ports = [free_port(), free_port()]
        replicas = [owned.enter_context(replica(folder, port)) for port in ports]
        for server in replicas:
            server.wait_until_ready()
        # --- rolling restart behind haproxy retrying nothing: one replica at a time, the next only
        # once haproxy sees it back up
        with balancer(folder, ports, retries=False) as strict, Load(strict.url) as rolling:
            for name in SERVERS:
                strict.wait_for(name, "UP", timeout=60)
            rolling.wait_for_more(50)
            for index, name in enumerate(SERVERS):
                old = replicas[index]
                old.signal(signal.SIGTERM)
                # readiness turned 503 at once: haproxy drops it while it still serves
                strict.wait_for(name, "DOWN", timeout=SHUTDOWN_DELAY)
                assert old.process is not None
                assert old.process.wait(timeout=SHUTDOWN_DELAY + SHUTDOWN_GRACE + 60) == 0, old.output()
                old.stop()
                new = owned.enter_context(replica(folder, ports[index]))
                new.wait_until_ready()
                strict.wait_for(name, "UP", timeout=60)
                replicas[index] = new
                rolling.wait_for_more(50)
        rolled = rolling.snapshot()
        assert failed(rolled) == [], (
            f"{len(failed(rolled))} of {len(rolled)} requests failed: {failed(rolled)[:5]}"
        )

        # --- SIGKILL of one replica's whole process group, under load, behind the committed config
        lb = owned.enter_context(balancer(folder, ports))
        for name in SERVERS:
            lb.wait_for(name, "UP", timeout=60)
        load = owned.enter_context(Load(lb.url))
        load.wait_for_more(50)
        before_kill = len(load.snapshot())
        killed = replicas[0]
        os.killpg(killed.pid, signal.SIGKILL)
        # SIGKILL is not instant: until the kernel has torn the processes down, their listening
        # socket still completes connections, which then reset. Those requests reached the replica.
        assert killed.process is not None
        killed.process.wait(timeout=30)
        wait_until(lambda: not killed.group_alive(), "the killed replica's processes to be gone", 30)
        killed_at = time.monotonic()
        lb.wait_for(SERVERS[0], "DOWN", timeout=30)
        load.wait_for_more(100)
        load.stop.set()
        outcomes = load.snapshot()
        assert failed(outcomes[:before_kill]) == [], failed(outcomes[:before_kill])[:5]
        after = outcomes[before_kill:]
        lost = failed(after)
        # only what was in flight on the killed replica: started before it was gone, at most one per client
        log = (folder / "haproxy.log").read_text(errors="replace")[-6000:]
        late = [(round(o.started - killed_at, 3), o.status, o.error[:80]) for o in lost]
        assert all(outcome.started < killed_at for outcome in lost), f"{late}\n{log}"
        assert len(lost) <= CLIENTS, lost
        later = [outcome for outcome in after if outcome.started > killed_at]
        assert len(later) >= 100 and failed(later) == []
        assert lb.states()[SERVERS[1]] == "UP"
