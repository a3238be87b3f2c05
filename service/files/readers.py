"""Readers: the one module that opens input files (JSON Lines, CSV, plain text).

A file is read in bounded chunks and handed out as batches of :class:`Record`, in file
order. One bad line becomes an error record and the file goes on; a file that is not the
declared format at all raises :class:`FormatError` before any record is handed out.
Memory stays bounded by ``chunk_size + max_line_bytes`` whatever the size of the file or
of its longest line.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal, get_args

import orjson

from service.files.archives import (
    ARCHIVE_FORMATS,
    DEFAULT_MAX_MEMBER_BYTES,
    ArchiveBatches,
    archive_problem,
    file_problem,
)

Format = Literal["jsonl", "csv", "txt", "tar", "zip", "folder"]
FORMATS: tuple[Format, ...] = get_args(Format)
# a file's format from its name's extension (the command line; an upload's part)
EXTENSIONS: dict[str, Format] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".txt": "txt",
    ".tar": "tar",
    ".tgz": "tar",
    ".zip": "zip",
}
Validator = Callable[[Any], str | None]
# where a record's input is: alternatives, tried in order; each names one key (the value itself)
# or several (the value is the list of theirs, e.g. ("query", "document") for a pair)
InputKeys = tuple[tuple[str, ...], ...]
InputKey = str | InputKeys

DEFAULT_MAX_LINE_BYTES = 1 << 20
DEFAULT_INPUT_KEY = "input"
DEFAULT_CHUNK_SIZE = 1 << 16
_BOM = b"\xef\xbb\xbf"
_MIN_CHUNK = 16


class FormatError(Exception):
    """The file is not the declared format at all (binary, not UTF-8, not JSON, no such column)."""


@dataclass(frozen=True, slots=True)
class Record:
    """One non-blank line: a value to predict on, or the reason it cannot be used.

    Exactly one of ``value`` and ``error`` is set (``value`` may itself be a falsy JSON value
    such as ``""``); ``id`` is kept on error records whenever it could be read.
    """

    line: int  # 1-based physical line number in the file (a CSV header is a line too)
    id: str | int | None  # the record's id column / key, if the file has one
    value: Any | None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class _Layout:
    """What the head of a file says about the rest of it."""

    header_line: int = 0  # CSV: the line number of the header row (0: no header, or not CSV)
    columns: int = 0  # CSV: fields per row
    input_index: tuple[int, ...] = ()  # CSV: the input column (or the columns of its parts)
    id_index: int | None = None  # CSV: the id column, if any


def check_format(
    path: str | os.PathLike[str],
    fmt: Format,
    *,
    input_key: InputKey = "input",
    id_key: str = "id",
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> None:
    """Raise :class:`FormatError` if the file at ``path`` is plainly not ``fmt``.

    Reads only the head of the file (its first chunk, or up to the end of its first
    non-blank line, at most about ``max_line_bytes + chunk_size`` bytes). An empty or
    all-blank file passes. Passing does not promise every line is valid: bad lines later
    in the file become error records.
    """
    _check_arguments(fmt, 1, max_line_bytes, chunk_size)
    if fmt == "folder":
        if not Path(path).is_dir():
            raise FormatError(f"{path} is not a folder")
        return
    with open(path, "rb") as handle:
        if fmt in ARCHIVE_FORMATS:
            problem = file_problem(handle, fmt)
            if problem is not None:
                raise FormatError(problem)
            return
        head, at_eof = _read_head(handle, chunk_size, max_line_bytes)
    _inspect_head(head, fmt, at_eof=at_eof, input_key=input_key, id_key=id_key, max_line_bytes=max_line_bytes)


def check_head(
    head: bytes,
    fmt: Format,
    *,
    at_eof: bool = False,
    input_key: InputKey = "input",
    id_key: str = "id",
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> None:
    """Like :func:`check_format`, for the first bytes of a file already in memory (e.g. an upload).

    ``at_eof`` says that ``head`` is the whole file, so its last line is complete even
    without a line ending. Only complete lines are judged: a prefix that ends inside the
    first line passes unless that partial line is already longer than ``max_line_bytes``
    (a CSV header must fit) or the prefix holds NUL bytes.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if fmt in ARCHIVE_FORMATS:
        problem = archive_problem(head, fmt) if len(head) >= 512 or at_eof else None
        if problem is not None:
            raise FormatError(problem)
        return
    _inspect_head(head, fmt, at_eof=at_eof, input_key=input_key, id_key=id_key, max_line_bytes=max_line_bytes)


class RecordBatches:
    """The batches of one open file; made by :func:`open_records`, iterable once.

    ``bytes_read`` is the number of bytes of the file consumed through the last line of the
    last batch handed out (for progress); ``total_bytes`` is the file's size when opened.
    """

    def __init__(
        self,
        handle: BinaryIO,
        fmt: Format,
        *,
        batch_size: int,
        input_key: InputKey,
        id_key: str,
        max_line_bytes: int,
        chunk_size: int,
        skip_lines: int,
        validate: Validator | None,
        json_values: bool,
    ) -> None:
        self._handle = handle
        self.fmt: Format = fmt
        self.batch_size = batch_size
        self.input_keys = key_alternatives(input_key)
        self.id_key = id_key
        self.max_line_bytes = max_line_bytes
        self.chunk_size = chunk_size
        self.skip_lines = skip_lines
        self._validate = validate
        self._json_values = json_values
        self.total_bytes = os.fstat(handle.fileno()).st_size
        self.bytes_read = 0
        self._started = False
        # read the head now, so that FormatError comes before any record does
        self._head, at_eof = _read_head(handle, chunk_size, max_line_bytes)
        self._layout = _inspect_head(
            self._head, fmt, at_eof=at_eof, input_key=input_key, id_key=id_key, max_line_bytes=max_line_bytes
        )

    @property
    def closed(self) -> bool:
        """Whether the underlying file has been closed (it is, once the ``with`` block exits)."""
        return self._handle.closed

    def __iter__(self) -> Iterator[list[Record]]:
        if self._started:
            raise RuntimeError("a RecordBatches can be iterated only once")
        self._started = True
        return self._batches()

    def _batches(self) -> Iterator[list[Record]]:
        batch: list[Record] = []
        end = 0
        for line, raw, end in _physical_lines(self._handle, self._head, self.chunk_size, self.max_line_bytes):
            if line <= self.skip_lines or line <= self._layout.header_line:
                continue
            if raw is None:
                record = Record(line, None, None, f"line {line} is longer than {self.max_line_bytes} bytes")
            else:
                record = self._record(line, raw)
            batch.append(record)
            if len(batch) >= self.batch_size:
                self.bytes_read = end
                yield batch
                batch = []
        self.bytes_read = end
        if batch:
            yield batch

    def _record(self, line: int, raw: bytes) -> Record:
        if self.fmt == "jsonl":
            record = self._jsonl_record(line, raw)
        elif self.fmt == "csv":
            record = self._csv_record(line, raw)
        else:
            record = self._txt_record(line, raw)
        if record.error is None and self._validate is not None:
            problem = self._validate(record.value)
            if problem is not None:
                return Record(line, record.id, None, f"line {line}: {problem}")
        return record

    def _jsonl_record(self, line: int, raw: bytes) -> Record:
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return Record(line, None, None, _json_problem(line, raw, exc))
        if not isinstance(obj, dict):
            return Record(line, None, None, f"line {line} is a JSON {_json_type(obj)}, not an object")
        ident = obj.get(self.id_key)
        if ident is not None and (isinstance(ident, bool) or not isinstance(ident, str | int)):
            return Record(
                line, None, None, f"line {line}: {self.id_key[:64]!r} must be a string or an integer"
            )
        for keys in self.input_keys:
            values = [obj.get(key) for key in keys]
            if all(value is not None for value in values):
                return Record(line, ident, values[0] if len(keys) == 1 else values)
        return Record(line, ident, None, f"line {line} has no {describe_keys(self.input_keys)} value")

    def _csv_record(self, line: int, raw: bytes) -> Record:
        layout = self._layout
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return Record(line, None, None, f"line {line} is not valid UTF-8")
        try:
            # one physical line is one row: a quoted field may not span lines (strict flags it)
            fields = next(csv.reader((text,), strict=True))
        except csv.Error as exc:
            return Record(line, None, None, f"line {line} is not a valid CSV row ({exc})")
        if len(fields) != layout.columns:
            return Record(
                line, None, None, f"line {line} has {len(fields)} fields, the header has {layout.columns}"
            )
        ident = None
        if layout.id_index is not None:
            ident = fields[layout.id_index] or None  # an empty id cell means no id
        if len(layout.input_index) > 1:  # one column per part: plain strings
            return Record(line, ident, [fields[index] for index in layout.input_index])
        value = fields[layout.input_index[0]]
        if self._json_values:
            return self._parse_json_value(line, ident, value.encode("utf-8"))
        return Record(line, ident, value)

    def _txt_record(self, line: int, raw: bytes) -> Record:
        if self._json_values:
            return self._parse_json_value(line, None, raw)
        if b"\x00" in raw:
            return Record(line, None, None, f"line {line} contains a NUL byte")
        try:
            return Record(line, None, raw.decode("utf-8"))
        except UnicodeDecodeError:
            return Record(line, None, None, f"line {line} is not valid UTF-8")

    @staticmethod
    def _parse_json_value(line: int, ident: str | int | None, raw: bytes) -> Record:
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return Record(line, ident, None, _json_problem(line, raw, exc))
        if value is None:
            return Record(line, ident, None, f"line {line}: the input is null")
        return Record(line, ident, value)


@contextmanager
def open_records(
    path: str | os.PathLike[str],
    fmt: Format,
    *,
    batch_size: int,
    input_key: InputKey = "input",
    id_key: str = "id",
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    skip_lines: int = 0,
    validate: Validator | None = None,
    json_values: bool = False,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
) -> Iterator[RecordBatches | ArchiveBatches]:
    """Open ``path`` and yield its records as batches of at most ``batch_size``, in file order.

    - ``jsonl``: one JSON object per line; the input under ``input_key``, an optional id
      (string or integer) under ``id_key``.
    - ``csv``: a header row, then one row per line; the input and optional id columns are
      chosen by name (``input_key``, ``id_key``); values are strings.

    ``input_key`` is a key, or alternatives (:data:`InputKeys`) tried in order: the first whose
    keys a record (jsonl) or the header (csv) has all of; several keys make the value the list
    of their values (a pair from ``query`` and ``document`` columns).
    - ``txt``: one input per line (the whole line, without its line ending); no id.

    UTF-8 with or without a BOM, LF or CRLF. Blank lines are not records but still count in
    line numbers. A line longer than ``max_line_bytes``, bad JSON, a missing key, invalid
    UTF-8 or a wrong CSV field count becomes an error record and reading goes on; so does a
    value that ``validate`` rejects (it returns an error string, or None for a good value).
    ``json_values`` parses each csv/txt input as JSON (e.g. ``[0.1, 0.2]`` for vector models).
    Records on lines ``<= skip_lines`` are skipped (resume).

    - ``tar``, ``zip``, ``folder``: one record per member file, its bytes (at most
      ``max_member_bytes``) under its name (:mod:`service.files.archives`).

    Raises :class:`FormatError` on entry, before any record, if the file is plainly not
    ``fmt`` (see :func:`check_format`). The file is closed when the ``with`` block exits,
    however it exits.
    """
    _check_arguments(fmt, batch_size, max_line_bytes, chunk_size)
    if fmt == "folder":
        yield ArchiveBatches(
            Path(path), fmt, None, batch_size=batch_size, skip_lines=skip_lines, validate=validate,
            max_member_bytes=max_member_bytes,
        )  # fmt: skip
        return
    with open(path, "rb") as handle:
        if fmt in ARCHIVE_FORMATS:
            yield ArchiveBatches(
                Path(path), fmt, handle, batch_size=batch_size, skip_lines=skip_lines, validate=validate,
                max_member_bytes=max_member_bytes,
            )  # fmt: skip
            return
        yield RecordBatches(
            handle,
            fmt,
            batch_size=batch_size,
            input_key=input_key,
            id_key=id_key,
            max_line_bytes=max_line_bytes,
            chunk_size=chunk_size,
            skip_lines=skip_lines,
            validate=validate,
            json_values=json_values,
        )


def _check_arguments(fmt: str, batch_size: int, max_line_bytes: int, chunk_size: int) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if max_line_bytes < 1:
        raise ValueError(f"max_line_bytes must be at least 1, got {max_line_bytes}")
    if chunk_size < _MIN_CHUNK:
        raise ValueError(f"chunk_size must be at least {_MIN_CHUNK}, got {chunk_size}")


def _read_head(handle: BinaryIO, chunk_size: int, max_line_bytes: int) -> tuple[bytes, bool]:
    """The first chunk, extended until it holds a complete non-blank line, the end of the file,
    or more than ``max_line_bytes`` (so a header or first record is seen whole when it fits);
    and whether the end of the file was reached."""
    head = bytearray()
    while True:
        chunk = handle.read(chunk_size)
        head += chunk
        # a buffered binary file returns fewer bytes than asked only at its end
        if len(chunk) < chunk_size:
            return bytes(head), True
        if len(head) > max_line_bytes + 2 + len(_BOM):
            return bytes(head), False
        if any(line.strip() for line in head.split(b"\n")[:-1]):
            return bytes(head), False


def _inspect_head(
    head: bytes, fmt: Format, *, at_eof: bool, input_key: InputKey, id_key: str, max_line_bytes: int
) -> _Layout:
    if b"\x00" in head:
        raise FormatError(f"the file contains NUL bytes: it looks binary, not {fmt}")
    if head.startswith(_BOM):
        head = head[len(_BOM) :]
    lines = head.split(b"\n")
    unfinished = b"" if at_eof else lines.pop()  # the last piece, unless it is known to be whole
    complete = [line.removesuffix(b"\r") for line in lines]
    non_blank = [(number, line) for number, line in enumerate(complete, 1) if line.strip()]
    if not non_blank:
        if fmt == "csv" and len(unfinished) > max_line_bytes + 1:
            raise FormatError(
                f"the CSV header (line {len(complete) + 1}) is longer than {max_line_bytes} bytes"
            )
        return _Layout()
    undecodable = sum(1 for _, line in non_blank if not _is_utf8(line))
    first_number, first = non_blank[0]
    if not _is_utf8(first) or undecodable * 2 > len(non_blank):
        raise FormatError(f"the file is not UTF-8 text (line {first_number} cannot be decoded)")
    if len(first) > max_line_bytes:
        if fmt == "csv":
            raise FormatError(f"the CSV header (line {first_number}) is longer than {max_line_bytes} bytes")
        return _Layout()  # an over-long first record is an error record, not a format error
    if fmt == "jsonl":
        try:
            orjson.loads(first)
        except orjson.JSONDecodeError:
            raise FormatError(
                f"line {first_number} is not JSON: a jsonl file has one JSON object per line"
            ) from None
        return _Layout()
    if fmt == "csv":
        return _csv_layout(first_number, first.decode("utf-8"), input_key, id_key)
    return _Layout()


def _csv_layout(number: int, header: str, input_key: InputKey, id_key: str) -> _Layout:
    try:
        names = [name.strip() for name in next(csv.reader((header,), strict=True))]
    except csv.Error as exc:
        raise FormatError(f"the CSV header (line {number}) cannot be parsed: {exc}") from None
    alternatives = key_alternatives(input_key)
    keys = next((keys for keys in alternatives if all(key in names for key in keys)), None)
    if keys is None:
        raise FormatError(
            f"the CSV header (line {number}) has no {describe_keys(alternatives, 'column')} "
            f"(columns: {', '.join(names)[:200]})"
        )
    return _Layout(
        header_line=number,
        columns=len(names),
        input_index=tuple(names.index(key) for key in keys),
        id_index=names.index(id_key) if id_key in names else None,
    )


def key_alternatives(input_key: InputKey) -> InputKeys:
    """``input_key`` as alternatives: a plain key is the one alternative of one key."""
    return ((input_key,),) if isinstance(input_key, str) else input_key


def describe_keys(alternatives: InputKeys, noun: str = "") -> str:
    """How an error names where the input was looked for: ``'input'`` or ``'input' (nor 'query'
    and 'document')``, each name cut to 64 characters."""

    def one(keys: tuple[str, ...]) -> str:
        return " and ".join(repr(key[:64]) for key in keys)

    named = f"{noun} {one(alternatives[0])}" if noun else one(alternatives[0])
    if len(alternatives) > 1:
        named += " (nor " + ", nor ".join(one(keys) for keys in alternatives[1:]) + ")"
    return named


def _physical_lines(
    handle: BinaryIO, head: bytes, chunk_size: int, max_line_bytes: int
) -> Iterator[tuple[int, bytes | None, int]]:
    """Yield ``(line number, content or None if over-long, end offset)`` for each non-blank line.

    Content excludes the line ending (LF or CRLF) and a leading BOM. An over-long line is
    counted and dropped chunk by chunk, never held whole.
    """
    number = 0
    offset = 0  # bytes of the file through the end of the last complete line
    parts: list[bytes] = []  # the pieces of the line being assembled across chunks
    pending = 0  # its length so far (also counted while an over-long line is dropped)
    overlong = False
    # a CRLF line of exactly max_line_bytes has one more byte before its LF
    limit = max_line_bytes + 1
    if head.startswith(_BOM):
        head = head[len(_BOM) :]
        offset = len(_BOM)

    def chunks() -> Iterator[bytes]:
        if head:
            yield head
        while chunk := handle.read(chunk_size):
            yield chunk

    for chunk in chunks():
        pieces = chunk.split(b"\n")
        tail = pieces.pop()
        for index, piece in enumerate(pieces):
            number += 1
            offset += len(piece) + 1
            if index == 0 and (parts or overlong):
                too_long = overlong or pending + len(piece) > limit
                line = b"" if too_long else b"".join(parts) + piece
                offset += pending
                parts.clear()
                pending = 0
                overlong = False
            else:
                too_long = len(piece) > limit
                line = piece
            if too_long:
                yield number, None, offset
                continue
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > max_line_bytes:
                yield number, None, offset
            elif line and not line.isspace():
                yield number, line, offset
        if tail:
            pending += len(tail)
            if not overlong:
                if pending > limit:
                    overlong = True
                    parts.clear()
                else:
                    parts.append(tail)
    if parts or overlong:
        # the last line has no line ending
        number += 1
        offset += pending
        line = b"".join(parts).removesuffix(b"\r")
        if overlong or len(line) > max_line_bytes:
            yield number, None, offset
        elif line and not line.isspace():
            yield number, line, offset


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _json_problem(line: int, raw: bytes, exc: orjson.JSONDecodeError) -> str:
    if not _is_utf8(raw):
        return f"line {line} is not valid UTF-8"
    return f"line {line} is not valid JSON ({exc.msg} at column {exc.colno})"


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "null"


__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_MAX_LINE_BYTES",
    "FORMATS",
    "Format",
    "FormatError",
    "Record",
    "RecordBatches",
    "Validator",
    "check_format",
    "check_head",
    "open_records",
]
