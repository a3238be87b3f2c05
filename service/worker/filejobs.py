"""The worker side of ``POST /v1/models/{name}/predict-file``.

The API server has spooled the upload to disk. The worker reads it back through the readers
(``with open``, bounded chunks), runs each batch through the InferenceSession, and appends
NDJSON results to an output spool file; it reports only how many bytes are ready, so results
never pile up in memory or in LitServe's queues, whatever the file size or the client's speed.
The input spool file doubles as a cancellation flag: the API server removes it when the client
goes away, and the worker stops at its next batch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from litserve.utils import LitAPIStatus

from service import metrics
from service.filejob import input_validator, render_batch
from service.readers import FormatError, open_records

if TYPE_CHECKING:
    from service.worker import BatchingLoop

logger = logging.getLogger("service.filestream")


def stream_file(loop: BatchingLoop, payload: dict[str, Any]) -> Iterator[tuple[dict[str, Any], str]]:
    """Yield (message, status): progress ``{"ready": n}``, then a final summary, or an error."""
    api = loop.api
    assert api.spec is not None
    model = api.config.model
    source, target = payload["input"], payload["output"]
    records = errors = 0
    done = 0
    try:
        with (
            open_records(
                source,
                payload["format"],
                batch_size=api.config.max_batch_size,
                input_key=payload["input_key"],
                id_key=payload["id_key"],
                max_line_bytes=api.config.max_line_bytes,
                validate=input_validator(api.spec.inputs),
                json_values=api.spec.inputs.kind == "vector" and payload["format"] != "jsonl",
            ) as batches,
            open(target, "ab") as out,
        ):
            for batch in batches:
                if not os.path.exists(source):
                    logger.info(
                        "model %s: client went away; stopping the file after %d records", model, records
                    )
                    return
                rendered, failed = render_batch(loop.session, batch)
                loop.compute_seconds.observe(loop.session.last_duration)
                loop.batch_size.observe(len(batch) - failed)
                out.write(rendered)
                out.flush()
                records += len(batch)
                errors += failed
                metrics.FILE_RECORDS.labels(model, "ok").inc(len(batch) - failed)
                metrics.FILE_RECORDS.labels(model, "error").inc(failed)
                metrics.FILE_BYTES.labels(model).inc(batches.bytes_read - done)
                done = batches.bytes_read
                yield {"ready": out.tell()}, LitAPIStatus.OK
            ready = out.tell()
        yield {"ready": ready, "records": records, "errors": errors}, LitAPIStatus.FINISH_STREAMING
    except FormatError as exc:
        yield {"status": 400, "error": str(exc)}, LitAPIStatus.ERROR
    except Exception as exc:
        logger.exception("model %s: file failed after %d records", model, records)
        yield (
            {"status": 500, "error": f"model error after {records} records: {type(exc).__name__}"},
            LitAPIStatus.ERROR,
        )
