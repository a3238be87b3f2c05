"""The worker side of ``POST /v1/models/{name}/predict-file``.

The API server has spooled the upload to disk. The worker reads it back through the readers
(``with open``, bounded chunks), runs each batch through the InferenceSession, and appends
NDJSON results to an output spool file; it reports only how many bytes are ready, so results
never pile up in memory or in the queues, whatever the file size or the client's speed.
The input spool file doubles as a cancellation flag: the API server removes it when the client
goes away, and the worker stops at its next batch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from service import metrics
from service.core.messages import Answer, Failure, FileDone, FileJob, FileProgress
from service.core.repository import ModelSpec
from service.files.job import input_validator, render_batch
from service.files.readers import FormatError, open_records

if TYPE_CHECKING:
    from service.worker.session import InferenceSession

logger = logging.getLogger("service.worker.filejobs")


class FileStreamer:
    """Runs file jobs for one model in one worker."""

    def __init__(
        self, session: InferenceSession, spec: ModelSpec, batch_size: int, max_line_bytes: int
    ) -> None:
        self.session = session
        self.spec = spec
        self.batch_size = batch_size
        self.max_line_bytes = max_line_bytes
        self.validate = input_validator(spec.inputs)

    def stream(self, job: FileJob, compute_seconds: Any, batch_sizes: Any) -> Iterator[Answer]:
        """Yield a :class:`FileProgress` per batch, then :class:`FileDone`, or a :class:`Failure`.
        ``compute_seconds`` and ``batch_sizes`` are the worker's histograms (``observe``)."""
        model = self.spec.name
        records = errors = 0
        done = 0
        try:
            with (
                open_records(
                    job.source,
                    job.format,
                    batch_size=self.batch_size,
                    input_key=job.input_key,
                    id_key=job.id_key,
                    max_line_bytes=self.max_line_bytes,
                    validate=self.validate,
                    json_values=self.spec.inputs.kind == "vector" and job.format != "jsonl",
                ) as batches,
                open(job.target, "ab") as out,
            ):
                for batch in batches:
                    if not os.path.exists(job.source):
                        logger.info(
                            "model %s: client went away; stopping the file after %d records", model, records
                        )
                        return
                    rendered, failed = render_batch(self.session, batch)
                    compute_seconds.observe(self.session.last_duration)
                    batch_sizes.observe(len(batch) - failed)
                    out.write(rendered)
                    out.flush()
                    records += len(batch)
                    errors += failed
                    metrics.FILE_RECORDS.labels(model, "ok").inc(len(batch) - failed)
                    metrics.FILE_RECORDS.labels(model, "error").inc(failed)
                    metrics.FILE_BYTES.labels(model).inc(batches.bytes_read - done)
                    done = batches.bytes_read
                    yield FileProgress(out.tell())
                ready = out.tell()
            yield FileDone(ready, records, errors)
        except FormatError as exc:
            yield Failure(400, str(exc))
        except Exception as exc:
            logger.exception("model %s: file failed after %d records", model, records)
            yield Failure(500, f"model error after {records} records: {type(exc).__name__}")
