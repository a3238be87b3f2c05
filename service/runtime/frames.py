"""Pickled messages on a pipe, read and written without ever blocking (the API servers' side).

The framing is ``multiprocessing.connection``'s (a 4-byte big-endian length, or -1 and an
8-byte length for huge messages), so a worker keeps using plain ``Connection.send``/``recv``
on its ends. An API server cannot: a worker killed in the middle of a write leaves half a
message in the pipe, and ``Connection.recv`` would wait forever for the rest; a stopped worker
stops reading, and a blocking write would stall every other worker's traffic behind it. Here a
partial message just stays in a buffer until the pipe is dropped, and unwritten bytes wait for
the pipe to drain.
"""

from __future__ import annotations

import os
import pickle
import struct
from typing import Any

_SIZE = struct.Struct("!i")
_HUGE = struct.Struct("!Q")
_HUGE_MARK = -1
READ_CHUNK = 1 << 20


def encode(message: Any) -> bytes:
    """One framed message, as ``Connection.send`` writes it."""
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    if len(payload) > 0x7FFFFFFF:
        return _SIZE.pack(_HUGE_MARK) + _HUGE.pack(len(payload)) + payload
    return _SIZE.pack(len(payload)) + payload


class FrameReader:
    """The complete messages that arrived on a non-blocking file descriptor."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self._buffer = bytearray()
        self.eof = False

    def read(self) -> list[Any]:
        """Every complete message readable now (possibly none); a partial one stays buffered.
        Sets :attr:`eof` when every writer has closed the pipe."""
        while True:
            try:
                chunk = os.read(self.fd, READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                break
            if not chunk:
                self.eof = True
                break
            self._buffer += chunk
            if len(chunk) < READ_CHUNK:
                break
        return self._messages()

    def _messages(self) -> list[Any]:
        messages = []
        buffer, start = self._buffer, 0
        while len(buffer) - start >= _SIZE.size:
            (size,) = _SIZE.unpack_from(buffer, start)
            header = _SIZE.size
            if size == _HUGE_MARK:
                if len(buffer) - start < header + _HUGE.size:
                    break
                (size,) = _HUGE.unpack_from(buffer, start + header)
                header += _HUGE.size
            end = start + header + size
            if end > len(buffer):
                break
            messages.append(pickle.loads(buffer[start + header : end]))
            start = end
        if start:
            del buffer[:start]
        return messages


class FrameWriter:
    """Messages written to a non-blocking file descriptor; what the pipe cannot take yet waits."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self._pending = bytearray()

    @property
    def pending(self) -> int:
        """Bytes not written yet."""
        return len(self._pending)

    def write(self, message: Any) -> bool:
        """Queue ``message`` and write as much as the pipe takes; True when nothing is left."""
        self._pending += encode(message)
        return self.flush()

    def flush(self) -> bool:
        """Write what is pending; True when nothing is left."""
        while self._pending:
            try:
                written = os.write(self.fd, self._pending)
            except (BlockingIOError, InterruptedError):
                return False
            del self._pending[:written]
        return True
