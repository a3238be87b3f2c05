"""The spool folder: what the processes of one server share on disk.

Uploads are spooled there (``<token>.in``) and results streamed back from it (``<token>.out``);
an API server whose client went away leaves a cancel marker (``<uid>.cancel``) that workers see
before computing.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

SPOOL_SUFFIXES = (".in", ".out", ".cancel")
CANCEL_SUFFIX = ".cancel"


def default_spool_dir(port: int) -> Path:
    return Path(tempfile.gettempdir()) / f"inference-spool-{port}"


def clean_spool_dir(folder: Path) -> int:
    """Create the folder; remove spool files a crashed run left behind. Returns how many."""
    folder.mkdir(parents=True, exist_ok=True)
    removed = 0
    for leftover in [*folder.iterdir(), *folder.glob("workers/*")]:
        if leftover.suffix in SPOOL_SUFFIXES and leftover.is_file():
            leftover.unlink(missing_ok=True)
            removed += 1
    return removed


def remove_quietly(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def cancel_marker(folder: Path, uid: str) -> Path:
    """The file whose existence tells workers that request ``uid``'s client went away."""
    return folder / f"{uid}{CANCEL_SUFFIX}"


class CancelMarkers:
    """The uids whose clients went away: ``<uid>.cancel`` files in the spool folder. The folder
    is listed only when its mtime changes, so the common case costs one stat per batch."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self._mtime = -1
        self._uids: frozenset[str] = frozenset()

    def current(self) -> frozenset[str]:
        if self.folder is None:
            return self._uids
        try:
            mtime = os.stat(self.folder).st_mtime_ns
        except FileNotFoundError:
            return self._uids
        if mtime != self._mtime:
            self._mtime = mtime
            self._uids = frozenset(
                name[: -len(CANCEL_SUFFIX)]
                for name in os.listdir(self.folder)
                if name.endswith(CANCEL_SUFFIX)
            )
        return self._uids
