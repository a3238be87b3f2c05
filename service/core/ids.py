"""Unique ids without a system call per id: a random 64-bit prefix per process, then a counter.

``uuid.uuid4()`` reads 16 bytes from the kernel for every id; an API server makes two per
request (the request id and the answer mailbox), and on this machine those reads were 8% of an
API server's CPU under load (py-spy, ``python -m benchmarks.cpu_per_request --profile``). The
ids here have the same shape (32 lowercase hex characters), are unique across the processes of
one service (a forked child draws its own prefix) and, with a 64-bit random prefix, across
replicas and restarts for any practical purpose. They are not secrets: never use one as a token.
"""

from __future__ import annotations

import itertools
import os
import secrets


class _Ids:
    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._count = itertools.count()

    def next(self) -> str:
        return f"{self._prefix}{next(self._count) & 0xFFFFFFFFFFFFFFFF:016x}"


_IDS = _Ids()


def new_id() -> str:
    """A new id: 32 lowercase hex characters, unique within this service."""
    return _IDS.next()
