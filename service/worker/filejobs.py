"""The worker side of ``POST /v1/models/{name}/predict-file``: a file job as a batcher source.

The API server has spooled the upload to disk. :class:`FileJobSource` reads it back through
the readers (``with open``, bounded chunks) and is a low-priority :class:`InputSource` of the
worker's scheduler: its valid records top up forwards after waiting predicts, taking turns with
other files. Result lines are appended to the output spool file in input order, error records
in place; after each forward that wrote lines the API server is told how many bytes are ready
(:class:`FileProgress`), so results never pile up in memory or in the queues, whatever the file
size or the client's speed; :class:`FileDone` (or a :class:`Failure`) ends the job. The input
spool file doubles as a cancellation flag: the API server removes it when the client goes away,
and the source stops at its next read or write.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from service import metrics
from service.core.messages import Answer, Failure, FileDone, FileJob, FileProgress
from service.core.repository import ModelSpec
from service.files.job import input_keys, input_validator, member_limit, reads_json_values
from service.files.readers import FormatError, open_records
from service.files.results import RecordSource
from service.worker.batcher import Cancelled

logger = logging.getLogger("service.worker.filejobs")


class FileJobSource:
    """One file job, open: an :class:`service.worker.batcher.InputSource` that answers its
    client through ``answer``. It owns the input and output files until it finishes or fails
    (or :meth:`close`); ``on_close`` is called once then.

    Opening raises :class:`FormatError` if the file is not its format, ``OSError`` if it is gone.
    """

    def __init__(
        self,
        uid: str,
        job: FileJob,
        spec: ModelSpec,
        *,
        chunk_records: int,
        max_line_bytes: int,
        answer: Callable[[Answer], None],
        on_close: Callable[[FileJobSource], None],
    ) -> None:
        self.uid = uid
        self.job = job
        self.model = spec.name
        self._answer = answer
        self._on_close = on_close
        with ExitStack() as opening:
            batches = opening.enter_context(
                open_records(
                    job.source,
                    job.format,
                    batch_size=chunk_records,
                    input_key=input_keys(spec.inputs, job.input_key),
                    id_key=job.id_key,
                    max_line_bytes=max_line_bytes,
                    validate=input_validator(spec.inputs),
                    json_values=reads_json_values(spec.inputs, job.format),
                    max_member_bytes=member_limit(spec.inputs),
                )
            )
            self._out = opening.enter_context(open(job.target, "ab"))
            self._files = opening.pop_all()  # opened: they stay open until close()
        self._records = RecordSource(batches, self._out)
        self._counted = (0, 0, 0)  # (lines, error lines, bytes read) already in the metrics
        self._closed = False

    # --- InputSource -------------------------------------------------------------------------

    def take(self, limit: int) -> list[Any]:
        self._check_client()
        return self._records.take(limit)

    def emit(self, outputs: list[Any]) -> None:
        self._check_client()
        self._records.emit(outputs)
        self._report(FileProgress(self._flushed()))

    def finish(self) -> None:
        ready = self._flushed()
        self._report(FileDone(ready, self._records.records, self._records.errors))
        self.close()

    def fail(self, error: BaseException) -> None:
        records = self._records.records
        if isinstance(error, Cancelled):
            logger.info("model %s: client went away; stopping the file after %d records", self.model, records)
            self._report(Failure(499, str(error)))
        else:
            logger.error("model %s: file failed after %d records: %r", self.model, records, error)
            self._report(Failure(500, f"model error after {records} records: {type(error).__name__}"))
        self.close()

    # --- ownership ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the files (idempotent); the worker calls it for every open job when it stops."""
        if self._closed:
            return
        self._closed = True
        try:
            self._files.close()
        finally:
            self._on_close(self)

    def _check_client(self) -> None:
        if not os.path.exists(self.job.source):
            raise Cancelled

    def _flushed(self) -> int:
        self._out.flush()
        return self._out.tell()

    def _report(self, answer: Answer) -> None:
        lines, errors, done = self._records.records, self._records.errors, self._records.bytes_read
        counted_lines, counted_errors, counted_bytes = self._counted
        ok = (lines - errors) - (counted_lines - counted_errors)
        if ok:
            metrics.FILE_RECORDS.labels(self.model, "ok").inc(ok)
        if errors - counted_errors:
            metrics.FILE_RECORDS.labels(self.model, "error").inc(errors - counted_errors)
        if done - counted_bytes:
            metrics.FILE_BYTES.labels(self.model).inc(done - counted_bytes)
        self._counted = (lines, errors, done)
        self._answer(answer)


__all__ = ["FileJobSource", "FormatError"]
