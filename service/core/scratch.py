"""Folders a run owns in the temporary directory: removed when the run ends, however it ends.

A run's folder (``inference-<kind>-<pid>-<random>``) holds a lock for as long as the run, or a
process it forked, is alive (``flock`` on ``.owner``, released by the kernel when the last of
them exits, even on SIGKILL). On a clean exit, SIGTERM or SIGINT the ``with`` block removes the
folder; a run that was killed leaves it behind with its lock free, and the next run removes it
when it starts. Standard library only: ``__main__`` uses it before anything imports
prometheus_client.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger("service.scratch")

PREFIX = "inference-"
OWNER_FILE = ".owner"


def scratch_root() -> Path:
    return Path(tempfile.gettempdir())


@contextlib.contextmanager
def owned_folder(kind: str, root: Path | None = None) -> Iterator[Path]:
    """A new folder ``inference-<kind>-<pid>-…`` under ``root`` (the temporary directory), locked
    for this run and removed with everything in it when the block ends. Folders left by runs
    that no longer exist are removed first."""
    root = root or scratch_root()
    remove_abandoned(root)
    # made under a name no other run looks at, locked, then given its name: never seen unlocked
    hidden = Path(tempfile.mkdtemp(prefix=f".{PREFIX}{kind}-", dir=root))
    fd = os.open(hidden / OWNER_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    folder = hidden
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        folder = root / f"{PREFIX}{kind}-{os.getpid()}-{hidden.name.rsplit('-', 1)[-1]}"
        hidden.rename(folder)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        os.close(fd)


def remove_abandoned(root: Path | None = None) -> list[Path]:
    """Remove our folders whose run is gone (their lock is free); returns them."""
    removed = []
    root = root or scratch_root()
    for folder in root.glob(f"{PREFIX}*"):
        owner = folder / OWNER_FILE
        try:
            fd = os.open(owner, os.O_RDWR)
        except OSError:  # not a folder of ours, or not ours to touch
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a live run holds it
            os.close(fd)
            continue
        try:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        finally:
            os.close(fd)
    if removed:
        logger.warning("removed %d folders left by runs that were killed: %s", len(removed), removed)
    return removed
