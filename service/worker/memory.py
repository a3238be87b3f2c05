"""The worker's memory gauges: resident memory (and CUDA memory) of this process."""

from __future__ import annotations

import os
import resource
import threading
import time

from service import metrics

MEMORY_INTERVAL = 5.0  # seconds between RSS samples while idle (after every batch otherwise)


class MemoryReporter:
    """Samples this worker's RSS (and CUDA memory) into gauges: after each batch and every few seconds.

    RSS comes from one pread of /proc/self/statm (cheap enough for every batch); the peak is the
    larger of what we saw and the kernel's high-water mark, so it is never below the current value.
    """

    def __init__(self, model: str, worker: str, device: str) -> None:
        self._rss = metrics.WORKER_RSS.labels(model, worker)
        self._peak = metrics.WORKER_PEAK_RSS.labels(model, worker)
        self._cuda = device.startswith("cuda")
        self._labels = (model, worker, device)
        self._last = 0.0
        self._highest = 0
        self._lock = threading.Lock()
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._statm = os.open("/proc/self/statm", os.O_RDONLY)

    def resident_bytes(self) -> int:
        return int(os.pread(self._statm, 128, 0).split()[1]) * self._page

    def sample(self) -> None:
        with self._lock:
            self._last = time.monotonic()
            rss = self.resident_bytes()
            # ru_maxrss is in KiB on Linux and may lag /proc by a page or two
            kernel_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self._highest = max(self._highest, rss, kernel_peak)
            self._rss.set(rss)
            self._peak.set(self._highest)
            if self._cuda:
                import torch

                index = torch.device(self._labels[2])
                metrics.CUDA_ALLOCATED.labels(*self._labels).set(torch.cuda.memory_allocated(index))
                metrics.CUDA_RESERVED.labels(*self._labels).set(torch.cuda.memory_reserved(index))
                metrics.CUDA_MAX_ALLOCATED.labels(*self._labels).set(torch.cuda.max_memory_allocated(index))

    def start(self) -> None:
        thread = threading.Thread(target=self._run, name="memory-reporter", daemon=True)
        thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(MEMORY_INTERVAL)
            if time.monotonic() - self._last >= MEMORY_INTERVAL / 2:
                self.sample()
