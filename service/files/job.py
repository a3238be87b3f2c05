"""The predict-file job: stream an input file through a model into an NDJSON result file.

Behind ``python -m service predict-file`` (``service.cli`` parses its arguments). The records go
through the same length-aware planner as the server's file jobs (:func:`service.worker.batcher.run_source`
over a :class:`service.files.results.RecordSource`), so the outputs match the endpoint's. Results
are written in input order, error records in their place, to ``.<name>.partial`` beside the
output; only a finished job is fsynced and renamed to the final name, so a crash or a model
error never leaves a truncated file there. ``--resume`` continues an interrupted job from its
partial file. :func:`format_record` is the NDJSON line shared with the HTTP endpoint.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO, TextIO

import orjson

from service.core.repository import (
    DEFAULT_REPOSITORY,
    GradMode,
    InputSpec,
    ModelError,
    ModelRepository,
    ModelSpec,
)
from service.files.archives import ARCHIVE_FORMATS, DEFAULT_MAX_MEMBER_BYTES
from service.files.readers import (
    DEFAULT_INPUT_KEY,
    DEFAULT_MAX_LINE_BYTES,
    EXTENSIONS,
    FORMATS,
    Format,
    FormatError,
    InputKeys,
    Validator,
    check_format,
    open_records,
)
from service.files.results import RecordSource, format_record
from service.worker.batcher import Limits, cost_function, run_source

if TYPE_CHECKING:  # torch loads only when a job runs, not when the CLI parser is built
    from service.worker.session import InferenceSession

__all__ = [
    "JobResult",
    "check_archive_kind",
    "format_record",
    "input_keys",
    "input_validator",
    "member_limit",
    "partial_path",
    "reads_json_values",
    "run_command",
    "run_predict_file",
]

DEFAULT_PROGRESS_INTERVAL = 5.0  # seconds between plain progress lines when stderr is not a TTY
_SCAN_CHUNK = 1 << 16


@dataclass(frozen=True)
class JobResult:
    """What one run of the job did (a resumed run counts only the records it added)."""

    records: int  # records written by this run, error records included
    errors: int  # of which error records
    bytes: int  # input bytes consumed by this run (a resumed run also re-reads the skipped part)
    output: Path  # the final result file
    resumed_after: int = 0  # the last input line already in the partial file (0: fresh start)


def partial_path(output_path: Path) -> Path:
    """Where a job writes before its output is complete: ``.<name>.partial`` beside it."""
    return output_path.with_name("." + output_path.name + ".partial")


def input_validator(inputs: InputSpec) -> Validator:
    """A check for one input value against a model's declaration: an error string, or None."""
    return inputs.codec.record_check(inputs)


def input_keys(inputs: InputSpec, given: str | None) -> InputKeys:
    """Where a file's records hold the input: ``given`` (one key or column, or one per part of
    the kind, comma-separated: ``q,d`` for a pair), else ``input``, or for a kind with parts
    (a pair) ``input`` or else its parts' names (``query`` and ``document``). ValueError when
    ``given`` names neither one key nor one per part."""
    parts = inputs.codec.parts
    if given is None:
        return ((DEFAULT_INPUT_KEY,), parts) if parts else ((DEFAULT_INPUT_KEY,),)
    keys = tuple(key.strip() for key in given.split(","))
    if any(not key for key in keys) or len(keys) not in {1, len(parts) or 1}:
        wanted = f"one key, or {len(parts)} comma-separated ({', '.join(parts)})" if parts else "one key"
        raise ValueError(f"the input key {given[:100]!r} must name {wanted}")
    return (keys,)


def member_limit(inputs: InputSpec) -> int:
    """The most bytes one archive member may have (an image model's ``max_bytes``)."""
    from service.codecs.image import limits

    return limits(inputs)[0] if inputs.kind == "image" else DEFAULT_MAX_MEMBER_BYTES


def check_archive_kind(inputs: InputSpec, fmt: str) -> None:
    """Archives and folders hold files: only a model of ``image`` inputs reads them; a model of
    named ``tensors`` reads no file (FormatError)."""
    if inputs.kind == "tensors":
        raise FormatError(
            "a model of named tensors reads no files: send its inputs to /v1/models/{name}/predict "
            "or the v2 infer route"
        )
    if fmt in ARCHIVE_FORMATS and inputs.kind != "image":
        raise FormatError(
            f"a {fmt} holds files, one input each: for image models; this model takes {inputs.kind}"
        )


def reads_json_values(inputs: InputSpec, fmt: str) -> bool:
    """Whether csv cells and txt lines hold the model's inputs as JSON (a vector), not raw text."""
    return inputs.codec.json_in_text_files and fmt != "jsonl"


def run_predict_file(
    session: InferenceSession,
    spec: ModelSpec,
    input_path: Path,
    output_path: Path,
    fmt: Format,
    batch_size: int,
    *,
    resume: bool = False,
    progress: bool = True,
    progress_interval: float = DEFAULT_PROGRESS_INTERVAL,
    input_key: InputKeys = ((DEFAULT_INPUT_KEY,),),
    id_key: str = "id",
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> JobResult:
    """Predict on every record of ``input_path`` and write one NDJSON line per record.

    Valid records go through ``session.run`` in forwards of at most ``batch_size`` inputs (and
    the model's ``max_batch_tokens``), grouped by length; invalid ones become error lines in
    their place. The output appears under ``output_path`` only when the whole
    file is done (fsync, then an atomic rename of the partial file). With ``resume``, an
    existing partial file is cut back to its last complete line and the job goes on after the
    input line recorded there; without it, a partial file is started afresh. Raises
    :class:`FormatError` before writing anything if the input is not ``fmt``; an exception
    from the model stops the job and leaves the partial file for ``resume``.
    """
    input_path, output_path = Path(input_path), Path(output_path)
    partial = partial_path(output_path)
    validate = input_validator(spec.inputs)
    # csv cells and txt lines are strings: vector models read them as JSON arrays
    json_values = reads_json_values(spec.inputs, fmt)
    # cutting a partial back to its last whole line loses nothing, so it may precede the format check
    skip = _recover_partial(partial) if resume and partial.exists() else 0
    with open_records(
        input_path,
        fmt,
        batch_size=batch_size,
        input_key=input_key,
        id_key=id_key,
        max_line_bytes=max_line_bytes,
        skip_lines=skip,
        validate=validate,
        json_values=json_values,
        max_member_bytes=member_limit(spec.inputs),
    ) as batches:
        # FormatError has been raised by now, so a bad input never overwrites a partial file
        with (
            open(partial, "ab" if skip else "wb") as out,
            _Progress(batches.total_bytes, enabled=progress, interval=progress_interval) as meter,
        ):
            source = _MeteredSource(RecordSource(batches, out), meter)
            run_source(
                source,
                session.run,
                Limits(batch_size, spec.max_batch_tokens),
                cost=cost_function(session.model),
            )
            out.flush()
            os.fsync(out.fileno())
        records, errors, consumed = source.records.records, source.records.errors, batches.bytes_read
    os.replace(partial, output_path)
    _fsync_folder(output_path.parent)
    return JobResult(records, errors, consumed, output_path, skip)


class _MeteredSource:
    """A :class:`RecordSource` for :func:`run_source` that moves the progress meter as lines are written."""

    uid = "predict-file"

    def __init__(self, records: RecordSource, meter: _Progress) -> None:
        self.records = records
        self.meter = meter

    def take(self, limit: int) -> list[Any]:
        return self.records.take(limit)

    def emit(self, outputs: list[Any]) -> None:
        self.records.emit(outputs)
        self.meter.update(self.records.bytes_read, self.records.records)

    def finish(self) -> None:
        self.meter.update(self.records.bytes_read, self.records.records)

    def fail(self, error: BaseException) -> None:
        pass  # run_source raises it; the partial file keeps what was written


def _recover_partial(partial: Path) -> int:
    """Cut ``partial`` back to its last complete, parseable line; return that line's input line.

    A crash can leave half a line at the end (or, with a lost page, garbage): such lines are
    dropped from the end until a whole result line is found. Returns 0 if none is.
    """
    with open(partial, "r+b") as handle:
        end = handle.seek(0, os.SEEK_END)
        done = 0
        while end > 0:
            newline = _rfind_newline(handle, end)
            if newline < 0:
                end = 0
                break
            start = _rfind_newline(handle, newline) + 1
            handle.seek(start)
            done = _result_line_number(handle.read(newline - start))
            if done > 0:
                end = newline + 1
                break
            end = start  # not a result line: drop it too
        handle.truncate(end)
        handle.flush()
        os.fsync(handle.fileno())
    return done


def _rfind_newline(handle: BinaryIO, before: int) -> int:
    """The offset of the last ``\\n`` in ``[0, before)``, or -1; read backwards in chunks."""
    position = before
    while position > 0:
        start = max(0, position - _SCAN_CHUNK)
        handle.seek(start)
        found = handle.read(position - start).rfind(b"\n")
        if found >= 0:
            return start + found
        position = start
    return -1


def _result_line_number(raw: bytes) -> int:
    try:
        result = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return 0
    if not isinstance(result, dict) or not ("output" in result or "error" in result):
        return 0
    line = result.get("line")
    return line if isinstance(line, int) and not isinstance(line, bool) and line > 0 else 0


def _fsync_folder(folder: Path) -> None:
    # the rename itself is durable only once the folder's entry is on disk
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on folders; the rename has still happened
    finally:
        os.close(fd)


class _Progress:
    """A tqdm bar in bytes on a TTY; otherwise a plain line to stderr every ``interval`` seconds."""

    def __init__(self, total: int, *, enabled: bool, interval: float, stream: TextIO | None = None) -> None:
        self.total = total
        self.enabled = enabled
        self.interval = interval
        self.stream = stream if stream is not None else sys.stderr
        self.started = time.monotonic()
        self.last_print = self.started
        self.done = 0
        self.records = 0
        self._bar: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled and self.stream.isatty():
            from tqdm import tqdm  # only a terminal needs it

            self._bar = tqdm(
                total=self.total, unit="B", unit_scale=True, desc="predict-file", file=self.stream, leave=True
            )
        return self

    def update(self, done: int, records: int) -> None:
        previous, self.done, self.records = self.done, done, records
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(done - previous)
            self._bar.set_postfix_str(f"{records:,} records, {self._rate():,.0f} rec/s", refresh=False)
            return
        now = time.monotonic()
        if now - self.last_print >= self.interval:
            self.last_print = now
            print(self.line(), file=self.stream, flush=True)

    def line(self) -> str:
        """``predict-file: 12.3 MB / 1.0 GB (1.2%), 4,512 records, 183 rec/s, ETA 1:23:45``."""
        elapsed = max(time.monotonic() - self.started, 1e-9)
        percent = 100.0 * self.done / self.total if self.total else 100.0
        speed = self.done / elapsed
        eta = _clock((self.total - self.done) / speed) if speed > 0 else "?"
        return (
            f"predict-file: {_size(self.done)} / {_size(self.total)} ({percent:.1f}%), "
            f"{self.records:,} records, {self._rate():,.0f} rec/s, ETA {eta}"
        )

    def _rate(self) -> float:
        return self.records / max(time.monotonic() - self.started, 1e-9)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and exc is None:
            print(self.line(), file=self.stream, flush=True)


def _size(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def _clock(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def run_command(
    model: str,
    input_path: Path,
    *,
    output: Path | None = None,
    fmt: Format | None = None,
    batch_size: int | None = None,
    resume: bool = False,
    input_key: str | None = None,
    id_key: str = "id",
    repository: Path | None = None,
    grad_mode: GradMode = "no_grad",
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    progress_interval: float = DEFAULT_PROGRESS_INTERVAL,
) -> int:
    """Run ``python -m service predict-file`` and print a one-line summary.

    Returns 0 when done; 2 for bad arguments, an unknown model or an input that is not its
    format; 1 if the model cannot load or fails mid-file, 130 on Ctrl-C (a failed run keeps
    its partial file for ``--resume``). Every problem is one line on stderr.
    """

    def fail(message: str, code: int = 2) -> int:
        print(f"predict-file: {message}", file=sys.stderr)
        return code

    fmt = fmt or ("folder" if input_path.is_dir() else EXTENSIONS.get(input_path.suffix.lower()))
    if fmt is None:
        return fail(
            f"cannot tell the format of {input_path} from its extension; pass --format {'|'.join(FORMATS)}"
        )
    if fmt == "folder" and not input_path.is_dir():
        return fail(f"{input_path} is not a folder")
    if fmt != "folder" and not input_path.is_file():
        return fail(f"{input_path} is not a file")
    output_path: Path = output or input_path.with_name(input_path.stem + ".predictions.jsonl")
    if output_path.resolve() == input_path.resolve():
        return fail("the output would overwrite the input; pass another -o")
    try:
        entry = ModelRepository(repository or DEFAULT_REPOSITORY).get(model)
        keys = input_keys(entry.spec.inputs, input_key)
        check_archive_kind(entry.spec.inputs, fmt)
        # a bad file is reported before the (possibly slow) model load
        check_format(input_path, fmt, input_key=keys, id_key=id_key, max_line_bytes=max_line_bytes)
    except (ModelError, FormatError, OSError, ValueError) as exc:
        return fail(str(exc))
    try:
        from service.worker.session import InferenceSession

        session = InferenceSession(entry.load("cpu"), grad_mode)
    except ModelError as exc:
        return fail(str(exc))
    except Exception as exc:  # a broken model.py: say so in one line rather than a traceback
        return fail(f"cannot load model {model!r}: {type(exc).__name__}: {exc}", 1)
    size = batch_size or entry.spec.max_batch_size
    started = time.monotonic()
    try:
        result = run_predict_file(
            session,
            entry.spec,
            input_path,
            output_path,
            fmt,
            size,
            resume=resume,
            progress=True,
            progress_interval=progress_interval,
            input_key=keys,
            id_key=id_key,
            max_line_bytes=max_line_bytes,
        )
    except FormatError as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return fail(
            f"interrupted; results so far are in {partial_path(output_path)}, rerun with --resume", 130
        )
    except Exception as exc:
        partial = partial_path(output_path)
        return fail(
            f"stopped: {type(exc).__name__}: {exc}; results so far are in {partial}, rerun with --resume", 1
        )
    elapsed = time.monotonic() - started
    resumed = f", resumed after line {result.resumed_after}" if result.resumed_after else ""
    print(
        f"predict-file: {result.records:,} records ({result.errors:,} errors){resumed} "
        f"-> {result.output} in {elapsed:.1f} s ({result.records / max(elapsed, 1e-9):,.0f} rec/s)"
    )
    return 0
