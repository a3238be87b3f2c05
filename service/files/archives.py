"""Archives and folders of files as records (an image model's ``predict-file``): ``tar`` (plain or
compressed: gzip, bz2, xz), ``zip``, and for the command line a ``folder``.

One member is one record, in archive order (a folder: sorted paths): ``line`` is its number
(1-based, files only), ``id`` its name. Members are read one at a time through the archive's own
stream (``with open`` on the file; ``tarfile``/``zipfile`` readers on it), each at most
``max_member_bytes`` — never the whole archive, never a member past its limit: a member that
declares more is refused from its header, one that decompresses to more is cut at the limit and
refused (a zip bomb costs ``max_member_bytes`` of memory, once). Nothing is extracted to disk, so
no name can escape anything; still, a member whose name is absolute or climbs out (``../``), a
link, a device or an encrypted member is an error record, and the rest go on. Directories are
not records.
"""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

ARCHIVE_FORMATS = ("tar", "zip", "folder")
DEFAULT_MAX_MEMBER_BYTES = 6 << 20
_GZIP, _BZIP2, _XZ = b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00"


def archive_problem(head: bytes, fmt: str) -> str | None:
    """Why the first bytes of a file are not a ``fmt`` archive (None: they may be)."""
    if fmt == "zip":
        if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
            return None
        return "the file is not a zip archive (no PK signature)"
    if fmt == "tar":
        if (
            head[257:262] == b"ustar"
            or head.startswith((_GZIP, _BZIP2, _XZ))
            or (len(head) >= 512 and not head.strip(b"\0"))
        ):
            return None
        return "the file is not a tar archive (no ustar header, not gzip, bz2 or xz)"
    return None


def file_problem(handle: BinaryIO, fmt: str) -> str | None:
    """Why an open file is not a ``fmt`` archive (None: it is, as far as its head and, for a zip,
    its central directory say); the file is left at its start."""
    head = handle.read(512)
    handle.seek(0)
    problem = archive_problem(head, fmt)
    if problem is None and fmt == "zip" and not zipfile.is_zipfile(handle):
        problem = "the file is not a zip archive (no central directory)"
    handle.seek(0)
    return problem


def unsafe_name(name: str) -> str | None:
    """Why a member's name is refused (absolute, or climbing out of the archive)."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return f"member {name[:200]!r} has an absolute name"
    if ".." in path.parts:
        return f"member {name[:200]!r} climbs out of the archive ('..')"
    return None


class ArchiveBatches:
    """The records of one archive or folder, as batches (:class:`service.files.readers.RecordBatches`'
    interface: iterable once, ``bytes_read``, ``total_bytes``, ``closed``)."""

    def __init__(
        self,
        path: Path,
        fmt: str,
        handle: BinaryIO | None,
        *,
        batch_size: int,
        skip_lines: int,
        validate: Any,
        max_member_bytes: int,
    ) -> None:
        self.path = path
        self.fmt = fmt
        self._handle = handle
        self.batch_size = batch_size
        self.skip_lines = skip_lines
        self._validate = validate
        self.max_member_bytes = max_member_bytes
        self.total_bytes = (handle is not None and os.fstat(handle.fileno()).st_size) or 0
        self.bytes_read = 0
        self._started = False
        self._closed = False
        if handle is not None:  # a file that is not the archive it claims fails now, before any record
            from service.files.readers import FormatError

            problem = file_problem(handle, fmt)
            if problem is not None:
                raise FormatError(problem)

    @property
    def closed(self) -> bool:
        return self._closed or (self._handle is not None and self._handle.closed)

    def __iter__(self) -> Iterator[list[Any]]:
        if self._started:
            raise RuntimeError("an ArchiveBatches can be iterated only once")
        self._started = True
        return self._batches()

    def _batches(self) -> Iterator[list[Any]]:
        from service.files.readers import Record

        batch: list[Record] = []
        number = 0
        for name, data, problem, position in self._members():
            number += 1
            if number <= self.skip_lines:
                continue
            if problem is None and self._validate is not None:
                problem = self._validate(data)
            record = (
                Record(number, name, None, f"{name[:200]}: {problem}")
                if problem
                else Record(number, name, data)
            )
            batch.append(record)
            if len(batch) >= self.batch_size:
                self.bytes_read = position
                yield batch
                batch = []
        self.bytes_read = self.total_bytes
        self._closed = True
        if batch:
            yield batch

    def _members(self) -> Iterator[tuple[str, bytes | None, str | None, int]]:
        """(name, bytes, problem, bytes of the archive read so far) of every file member."""
        if self.fmt == "folder":
            yield from self._folder()
        elif self.fmt == "zip":
            yield from self._zip()
        else:
            yield from self._tar()

    def _too_large(self, size: int) -> str:
        return f"{size} bytes, more than the {self.max_member_bytes} a member may have"

    def _member_problem(self, name: str, kind: str | None, size: int) -> str | None:
        """Why an archive member is refused from its header, in this order: its name, its
        ``kind`` when it is not a plain file ("a link", "encrypted", ...), its declared size."""
        if problem := unsafe_name(name):
            return problem
        if kind is not None:
            return f"member {name[:200]!r} is {kind}"
        return self._too_large(size) if size > self.max_member_bytes else None

    def _tar(self) -> Iterator[tuple[str, bytes | None, str | None, int]]:
        assert self._handle is not None
        from service.files.readers import FormatError

        try:
            archive = tarfile.open(fileobj=self._handle, mode="r:*")  # noqa: SIM115 (the with is below)
        except tarfile.TarError as exc:
            raise FormatError(f"the file is not a tar archive: {exc}") from None
        with archive:
            while True:
                try:
                    info = archive.next()
                except tarfile.TarError as exc:  # a damaged archive ends here; what came before is answered
                    yield (
                        "(archive)",
                        None,
                        f"the archive is damaged after this point: {exc}",
                        self.total_bytes,
                    )
                    return
                if info is None:
                    return
                archive.members.clear()  # type: ignore[attr-defined]  # tarfile keeps every header read: not here
                position = self._handle.tell()
                if info.isdir():
                    continue
                kind = None
                if not info.isfile():
                    kind = "a link" if info.issym() or info.islnk() else "not a regular file"
                problem = self._member_problem(info.name, kind, info.size)
                if problem is not None:
                    yield info.name, None, problem, position
                    continue
                reader = archive.extractfile(info)
                assert reader is not None
                with reader:
                    data = reader.read(self.max_member_bytes + 1)
                yield info.name, data, None, position

    def _zip(self) -> Iterator[tuple[str, bytes | None, str | None, int]]:
        assert self._handle is not None
        from service.files.readers import FormatError

        try:
            archive = zipfile.ZipFile(self._handle)
        except (zipfile.BadZipFile, OSError) as exc:
            raise FormatError(f"the file is not a zip archive: {exc}") from None
        with archive:
            for info in archive.infolist():
                if info.is_dir():
                    continue
                position = info.header_offset + info.compress_size
                kind = "a link" if stat.S_ISLNK(info.external_attr >> 16) else None
                if kind is None and info.flag_bits & 0x1:
                    kind = "encrypted"
                problem = self._member_problem(info.filename, kind, info.file_size)
                if problem is not None:
                    yield info.filename, None, problem, position
                    continue
                try:
                    with archive.open(info) as reader:
                        data = reader.read(self.max_member_bytes + 1)
                except (zipfile.BadZipFile, NotImplementedError, OSError, EOFError, RuntimeError) as exc:
                    yield (
                        info.filename,
                        None,
                        f"member {info.filename[:200]!r} cannot be read: {exc}",
                        position,
                    )
                    continue
                if len(data) > self.max_member_bytes:  # its header lied about its size
                    yield info.filename, None, self._too_large(len(data)), position
                    continue
                yield info.filename, data, None, position

    def _folder(self) -> Iterator[tuple[str, bytes | None, str | None, int]]:
        paths = sorted(path for path in self.path.rglob("*") if path.is_symlink() or not path.is_dir())
        self.total_bytes = len(paths)
        for index, path in enumerate(paths, 1):
            name = path.relative_to(self.path).as_posix()
            if path.is_symlink():
                yield name, None, f"{name[:200]!r} is a link", index
                continue
            if not path.is_file():
                yield name, None, f"{name[:200]!r} is not a regular file", index
                continue
            size = path.stat().st_size
            if size > self.max_member_bytes:
                yield name, None, self._too_large(size), index
                continue
            with open(path, "rb") as handle:
                yield name, handle.read(self.max_member_bytes + 1), None, index
