"""Result lines: the NDJSON record format, and a file's records as a source for the batcher.

:func:`format_record` is the line the CLI and the HTTP endpoint both write. :class:`RecordSource`
hands the valid records of an open file to the batcher (:class:`service.worker.batcher.InputSource`'s
``take``/``emit``) and writes one line per record, in file order: an error record's line is
written as soon as every record before it has its line, so invalid records never wait for the
model and never reach it. Memory stays bounded: the batcher limits the inputs taken ahead of
their outputs, and at most ``max_held_errors`` error records wait behind them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any, BinaryIO

import orjson

from service.core.rejection import InputRejected
from service.files.archives import ArchiveBatches
from service.files.readers import Record, RecordBatches

# error records held behind outputs not yet computed; past it take() pauses until they are written
MAX_HELD_ERRORS = 4096


def format_record(
    line: int, id: str | int | None, output: Any | None = None, error: str | None = None
) -> bytes:
    """One NDJSON result line, newline included.

    ``{"line": n, "id": ..., "output": [...]}`` or ``{"line": n, "id": ..., "error": "..."}``;
    ``"id"`` is left out when None, ``"output"`` when there is an error.
    """
    result: dict[str, Any] = {"line": line}
    if id is not None:
        result["id"] = id
    if error is not None:
        result["error"] = error
    else:
        result["output"] = output
    return orjson.dumps(result, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY)


class RecordSource:
    """The records of ``batches`` as model inputs; their result lines appended to ``out``.

    It owns neither the file nor ``out`` (their ``with`` blocks do). ``records`` and ``errors``
    count the lines written; ``bytes_read`` is how far the input has been read.
    """

    def __init__(
        self, batches: RecordBatches | ArchiveBatches, out: BinaryIO, max_held_errors: int = MAX_HELD_ERRORS
    ) -> None:
        self._batches = batches
        self._records: Iterator[Record] = (record for batch in batches for record in batch)
        self._out = out
        self._max_held_errors = max_held_errors
        # records taken whose lines are not written yet, in file order: always a valid record
        # (waiting for its output) first, then valid and error records behind it
        self._held: deque[Record] = deque()
        self._held_errors = 0
        self.records = 0
        self.errors = 0
        self.ended = False

    @property
    def bytes_read(self) -> int:
        return self._batches.bytes_read

    @property
    def errors_held(self) -> int:
        """Error records read whose lines wait for an earlier record's output."""
        return self._held_errors

    def take(self, limit: int) -> list[Any]:
        """The values of up to ``limit`` next valid records (error lines written or held on the
        way); ``[]`` at the end, or while ``max_held_errors`` error records wait for outputs."""
        values: list[Any] = []
        while len(values) < limit and not self.ended:
            if self._held_errors >= self._max_held_errors:
                break
            record = next(self._records, None)
            if record is None:
                self.ended = True
            elif record.error is None:
                self._held.append(record)
                values.append(record.value)
            elif self._held:
                self._held.append(record)
                self._held_errors += 1
            else:  # nothing before it is waiting: its line goes out now
                self._out.write(format_record(record.line, record.id, error=record.error))
                self.records += 1
                self.errors += 1
        return values

    def emit(self, outputs: list[Any]) -> None:
        """Write the lines of the next valid records (``outputs`` in the order ``take`` gave
        their values), and of the error records that waited behind them."""
        lines = []
        for output in outputs:
            record = self._held.popleft()
            if isinstance(output, BaseException):  # the model failed on this record alone
                lines.append(format_record(record.line, record.id, error=describe_failure(output)))
                self.errors += 1
            else:
                lines.append(format_record(record.line, record.id, output=output))
            while self._held and self._held[0].error is not None:
                error = self._held.popleft()
                lines.append(format_record(error.line, error.id, error=error.error))
                self._held_errors -= 1
                self.errors += 1
        self.records += len(lines)
        self._out.write(b"".join(lines))


def describe_failure(error: BaseException) -> str:
    """A record's error line for a model failure: the model's own words when it rejected the
    input, else only the exception's type (its message may hold internals)."""
    if isinstance(error, InputRejected):
        return f"the model rejected this input: {error.message}"
    return f"model error: {type(error).__name__}"
