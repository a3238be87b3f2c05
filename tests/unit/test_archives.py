"""Archives and folders as records, on real files: every member in order under its name, read one
at a time within its limit; unsafe names, links, oversize members and zip bombs are error records
and the rest go on; a file that is not the archive it claims is a FormatError before any record."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from service.files.readers import FormatError, Record, check_format, check_head, open_records

pytestmark = pytest.mark.unit


def records(path: Path, fmt: str, limit: int = 1000, skip: int = 0) -> list[Record]:
    with open_records(
        path,
        fmt,
        batch_size=2,
        max_member_bytes=limit,
        skip_lines=skip,
        validate=None,  # type: ignore[arg-type]
    ) as batches:
        found = [record for batch in batches for record in batch]
    assert batches.closed
    return found


def add(
    archive: tarfile.TarFile, name: str, data: bytes, kind: bytes = tarfile.REGTYPE, link: str = ""
) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
    archive.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_a_tar_gives_every_file_in_order_and_refuses_what_is_unsafe(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "images.tar"
    with tarfile.open(path, mode) as archive:
        add(archive, "a/one.png", b"first")
        add(archive, "a", b"", tarfile.DIRTYPE)
        add(archive, "../escape.png", b"evil")
        add(archive, "/etc/passwd", b"evil")
        add(archive, "link.png", b"", tarfile.SYMTYPE, "a/one.png")
        add(archive, "big.png", b"x" * 2000)
        add(archive, "two.png", b"second")
    found = records(path, "tar")
    assert [record.id for record in found] == [
        "a/one.png", "../escape.png", "/etc/passwd", "link.png", "big.png", "two.png"
    ]  # fmt: skip
    assert [record.line for record in found] == [1, 2, 3, 4, 5, 6]
    assert found[0].value == b"first" and found[5].value == b"second"
    assert "climbs out" in str(found[1].error) and "absolute" in str(found[2].error)
    assert "link" in str(found[3].error) and "more than the 1000" in str(found[4].error)
    assert [record.id for record in records(path, "tar", skip=4)] == ["big.png", "two.png"]


def test_a_zip_bomb_costs_one_member_limit(tmp_path: Path) -> None:
    path = tmp_path / "images.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("ok.png", b"fine")
        archive.writestr("bomb.bin", b"\0" * 50_000_000)  # 50 MB of zeros in ~50 KB
        archive.writestr("../up.png", b"evil")
        archive.writestr("dir/", b"")
        link = zipfile.ZipInfo("link.png")
        link.external_attr = 0o120777 << 16
        archive.writestr(link, b"ok.png")
    assert os.path.getsize(path) < 200_000
    found = records(path, "zip", limit=1 << 20)
    assert [record.id for record in found] == ["ok.png", "bomb.bin", "../up.png", "link.png"]
    assert found[0].value == b"fine"
    assert "50000000 bytes, more than" in str(found[1].error)
    assert "climbs out" in str(found[2].error) and "is a link" in str(found[3].error)


def test_a_zip_whose_header_lies_about_a_size_is_cut_at_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "liar.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("a.png", b"y" * 5000)
    raw = bytearray(path.read_bytes())
    # the central directory's uncompressed size (offset 24 of its entry) says 10 bytes
    central = raw.rindex(b"PK\x01\x02")
    raw[central + 24 : central + 28] = (10).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    (found,) = records(path, "zip", limit=1000)
    assert found.value is None and found.error is not None


def test_a_folder_gives_its_files_sorted_and_refuses_links(tmp_path: Path) -> None:
    root = tmp_path / "pictures"
    (root / "b").mkdir(parents=True)
    (root / "b" / "two.png").write_bytes(b"2")
    (root / "one.png").write_bytes(b"1")
    (root / "alias.png").symlink_to(root / "one.png")
    found = records(root, "folder")
    assert [record.id for record in found] == ["alias.png", "b/two.png", "one.png"]
    assert "link" in str(found[0].error) and found[1].value == b"2" and found[2].value == b"1"


def test_a_file_that_is_not_the_archive_it_claims_is_refused_first(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello\n" * 200)
    for fmt in ("tar", "zip"):
        with pytest.raises(FormatError, match=f"not a {fmt} archive"):
            check_format(text, fmt)  # type: ignore[arg-type]
        with pytest.raises(FormatError, match=f"not a {fmt} archive"):
            records(text, fmt)
        with pytest.raises(FormatError):
            check_head(text.read_bytes(), fmt, at_eof=True)  # type: ignore[arg-type]
    with pytest.raises(FormatError, match="not a folder"):
        check_format(text, "folder")


def test_a_zip_without_its_central_directory_is_refused_before_any_record(tmp_path: Path) -> None:
    whole = tmp_path / "whole.zip"
    with zipfile.ZipFile(whole, "w") as archive:
        archive.writestr("a.png", b"x" * 100)
    cut = tmp_path / "cut.zip"
    cut.write_bytes(whole.read_bytes()[:60])  # the first member's header and some data: no directory
    with pytest.raises(FormatError, match="no central directory"):
        check_format(cut, "zip")
