"""service.readers on real files: formats, line numbers, bad lines, bounded memory, closed files."""

from __future__ import annotations

import csv
import io
import os
import tracemalloc
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.files.readers import FormatError, Record, check_format, check_head, open_records


def read_all(path: Path, fmt: Any, **options: Any) -> list[Record]:
    options.setdefault("batch_size", 4)
    with open_records(path, fmt, **options) as batches:
        return [record for batch in batches for record in batch]


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# --- formats --------------------------------------------------------------------------------


def test_jsonl_values_ids_and_line_numbers(tmp_path: Path) -> None:
    path = write(
        tmp_path, "in.jsonl", b'{"id": 7, "input": "a"}\n{"input": [1, 2]}\n{"id": "x", "input": "c"}\n'
    )
    assert read_all(path, "jsonl") == [
        Record(1, 7, "a"),
        Record(2, None, [1, 2]),
        Record(3, "x", "c"),
    ]


def test_jsonl_custom_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "in.jsonl", b'{"key": 1, "text": "hello", "input": "ignored"}\n')
    assert read_all(path, "jsonl", input_key="text", id_key="key") == [Record(1, 1, "hello")]


PAIR_KEYS = (("input",), ("query", "document"))


def test_jsonl_pairs_from_an_input_or_their_parts_keys(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "in.jsonl",
        b'{"input": ["q", "d"]}\n{"query": "q2", "document": "d2", "input": null}\n'
        b'{"query": "q3"}\n{"q": "a", "d": "b"}\n',
    )
    assert read_all(path, "jsonl", input_key=PAIR_KEYS) == [
        Record(1, None, ["q", "d"]),
        Record(2, None, ["q2", "d2"]),
        Record(3, None, None, "line 3 has no 'input' (nor 'query' and 'document') value"),
        Record(4, None, None, "line 4 has no 'input' (nor 'query' and 'document') value"),
    ]
    assert read_all(path, "jsonl", input_key=(("q", "d"),))[3] == Record(4, None, ["a", "b"])


def test_csv_pairs_from_part_columns_are_plain_strings(tmp_path: Path) -> None:
    path = write(tmp_path, "in.csv", b'id,query,document\n1,q,"d, with a comma"\n2,"[1]",x\n')
    assert read_all(path, "csv", input_key=PAIR_KEYS, json_values=True) == [
        Record(2, "1", ["q", "d, with a comma"]),
        Record(3, "2", ["[1]", "x"]),  # a part column is text, never JSON
    ]
    both = write(tmp_path, "both.csv", b'input,query,document\n"[""a"", ""b""]",q,d\n')
    assert read_all(both, "csv", input_key=PAIR_KEYS, json_values=True) == [Record(2, None, ["a", "b"])]
    with pytest.raises(FormatError, match="no column 'input' \\(nor 'query' and 'document'\\)"):
        check_format(write(tmp_path, "half.csv", b"query,doc\nq,d\n"), "csv", input_key=PAIR_KEYS)


def test_csv_columns_by_name_with_quoting(tmp_path: Path) -> None:
    path = write(tmp_path, "in.csv", b'other,input,id\nx,hello,1\ny,"a, quoted ""cell""",2\nz,no id,\n')
    assert read_all(path, "csv") == [
        Record(2, "1", "hello"),
        Record(3, "2", 'a, quoted "cell"'),
        Record(4, None, "no id"),
    ]


def test_csv_custom_columns_and_no_id_column(tmp_path: Path) -> None:
    path = write(tmp_path, "in.csv", b"text\nfirst\nsecond\n")
    assert read_all(path, "csv", input_key="text") == [Record(2, None, "first"), Record(3, None, "second")]


def test_txt_one_input_per_line(tmp_path: Path) -> None:
    path = write(tmp_path, "in.txt", "one\n  two with spaces \nthré\n".encode())
    assert read_all(path, "txt") == [
        Record(1, None, "one"),
        Record(2, None, "  two with spaces "),
        Record(3, None, "thré"),
    ]


def test_txt_json_values_for_vector_models(tmp_path: Path) -> None:
    path = write(tmp_path, "in.txt", b"[1.5, 2]\nnot json\n")
    records = read_all(path, "txt", json_values=True)
    assert records[0] == Record(1, None, [1.5, 2])
    assert records[1].line == 2 and records[1].error is not None and "not valid JSON" in records[1].error


@pytest.mark.parametrize(
    ("fmt", "body"),
    [
        ("jsonl", b'{"input": "a"}\n\n{"input": "b"}\n'),
        ("csv", b"input\na\n\nb\n"),
        ("txt", b"a\n\nb\n"),
    ],
)
def test_bom_crlf_and_blank_lines(tmp_path: Path, fmt: str, body: bytes) -> None:
    crlf = body.replace(b"\n", b"\r\n")
    path = write(tmp_path, f"in.{fmt}", b"\xef\xbb\xbf" + crlf + b"   \r\n\t\r\n")
    offset = 1 if fmt == "csv" else 0
    assert [(r.line, r.value, r.error) for r in read_all(path, fmt)] == [
        (1 + offset, "a", None),
        (3 + offset, "b", None),
    ]


def test_last_line_without_newline(tmp_path: Path) -> None:
    path = write(tmp_path, "in.txt", b"a\r\nb")
    assert [(r.line, r.value) for r in read_all(path, "txt")] == [(1, "a"), (2, "b")]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "txt"])
@pytest.mark.parametrize("body", [b"", b"\n\n  \r\n"])
def test_empty_or_blank_file_has_no_records(tmp_path: Path, fmt: str, body: bytes) -> None:
    path = write(tmp_path, f"in.{fmt}", body)
    check_format(path, fmt)  # type: ignore[arg-type]
    assert read_all(path, fmt) == []


def test_csv_header_only_has_no_records(tmp_path: Path) -> None:
    assert read_all(write(tmp_path, "in.csv", b"id,input\n"), "csv") == []


# --- bad lines become error records, the file goes on ----------------------------------------


def test_jsonl_bad_records_mixed_with_good(tmp_path: Path) -> None:
    lines = [
        b'{"id": 1, "input": "good"}',
        b"{not json",
        b"[1, 2]",
        b'{"id": 3}',
        b'{"id": 4, "input": null}',
        b'{"id": 5.5, "input": "bad id"}',
        b'{"id": 6, "input": "\xff\xfe"}',
        b'{"id": 7, "input": "good again"}',
    ]
    records = read_all(write(tmp_path, "in.jsonl", b"\n".join(lines)), "jsonl")
    assert [r.line for r in records] == list(range(1, 9))
    assert [r.value for r in records if r.error is None] == ["good", "good again"]
    errors = {r.line: r.error for r in records if r.error is not None}
    assert errors[2] is not None and errors[2].startswith("line 2 is not valid JSON")
    assert errors[3] == "line 3 is a JSON array, not an object"
    assert errors[4] == "line 4 has no 'input' value"
    assert errors[5] == "line 5 has no 'input' value"
    assert errors[6] == "line 6: 'id' must be a string or an integer"
    assert errors[7] == "line 7 is not valid UTF-8"
    # the id is kept on an error record when it could be read
    assert records[3].id == 3 and records[3].value is None


def test_csv_bad_rows_mixed_with_good(tmp_path: Path) -> None:
    body = b'id,input\n1,good\n2,too,many\n3,"unterminated\n4,\xff\n5,fine\n'
    records = read_all(write(tmp_path, "in.csv", body), "csv")
    assert [(r.line, r.value) for r in records if r.error is None] == [(2, "good"), (6, "fine")]
    errors = {r.line: r.error for r in records if r.error is not None}
    assert errors[3] == "line 3 has 3 fields, the header has 2"
    assert errors[4] is not None and errors[4].startswith("line 4 is not a valid CSV row")
    assert errors[5] == "line 5 is not valid UTF-8"


def test_txt_invalid_utf8_line_is_an_error_record(tmp_path: Path) -> None:
    records = read_all(write(tmp_path, "in.txt", b"ok\nbad \xc3\x28\nok too\n"), "txt")
    assert [(r.line, r.value, r.error) for r in records] == [
        (1, "ok", None),
        (2, None, "line 2 is not valid UTF-8"),
        (3, "ok too", None),
    ]


def test_validate_turns_values_into_error_records(tmp_path: Path) -> None:
    path = write(
        tmp_path, "in.jsonl", b'{"id": "a", "input": "short"}\n{"id": "b", "input": "far too long"}\n'
    )

    def at_most_5(value: Any) -> str | None:
        return None if len(value) <= 5 else f"{len(value)} characters, at most 5"

    assert read_all(path, "jsonl", validate=at_most_5) == [
        Record(1, "a", "short"),
        Record(2, "b", None, "line 2: 12 characters, at most 5"),
    ]


# --- over-long lines -------------------------------------------------------------------------


def test_five_megabyte_line_is_one_error_record_in_bounded_memory(tmp_path: Path) -> None:
    huge = b'{"input": "' + b"x" * (5 << 20) + b'"}'
    path = write(tmp_path, "in.jsonl", b'{"input": "before"}\n' + huge + b'\n{"input": "after"}\n')
    tracemalloc.start()
    try:
        records = read_all(path, "jsonl", max_line_bytes=1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [(r.line, r.value, r.error) for r in records] == [
        (1, "before", None),
        (2, None, "line 2 is longer than 1024 bytes"),
        (3, "after", None),
    ]
    # chunks are 64 KiB: the 5 MB line was never held whole
    assert peak < 1 << 20


def test_over_long_last_line_without_newline(tmp_path: Path) -> None:
    path = write(tmp_path, "in.txt", b"ok\n" + b"y" * 5000)
    records = read_all(path, "txt", max_line_bytes=100, chunk_size=64)
    assert [(r.line, r.error) for r in records] == [(1, None), (2, "line 2 is longer than 100 bytes")]


@pytest.mark.parametrize("chunk_size", [16, 17, 31, 64, 4096])
@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
def test_line_length_limit_is_exact_at_any_chunk_size(tmp_path: Path, chunk_size: int, ending: bytes) -> None:
    lines = [b"a" * 40, b"b" * 41, b"c" * 39, b"d" * 100, b"e"]
    path = write(tmp_path, "in.txt", ending.join(lines) + ending)
    records = read_all(path, "txt", max_line_bytes=40, chunk_size=chunk_size)
    assert [(r.line, r.error is None) for r in records] == [
        (1, True),
        (2, False),
        (3, True),
        (4, False),
        (5, True),
    ]
    assert records[0].value == "a" * 40 and records[2].value == "c" * 39


# --- files that are not the declared format ---------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "txt"])
def test_binary_file_is_a_format_error(tmp_path: Path, fmt: str) -> None:
    path = write(tmp_path, f"in.{fmt}", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    with pytest.raises(FormatError, match="NUL bytes"):
        check_format(path, fmt)  # type: ignore[arg-type]
    with pytest.raises(FormatError), open_records(path, fmt, batch_size=1):  # type: ignore[arg-type]
        pytest.fail("no batches may be handed out")


def test_utf16_file_is_a_format_error(tmp_path: Path) -> None:
    path = write(tmp_path, "in.txt", "hello\nworld\n".encode("utf-16"))
    with pytest.raises(FormatError):
        check_format(path, "txt")


def test_latin1_file_is_a_format_error(tmp_path: Path) -> None:
    path = write(tmp_path, "in.txt", "café\nnaïve\nrésumé\n".encode("latin-1"))
    with pytest.raises(FormatError, match="not UTF-8"):
        check_format(path, "txt")


def test_jsonl_whose_first_line_is_not_json_is_a_format_error(tmp_path: Path) -> None:
    path = write(tmp_path, "in.jsonl", b"\nid,input\n1,hello\n")
    with pytest.raises(FormatError, match="line 2 is not JSON"):
        check_format(path, "jsonl")
    with pytest.raises(FormatError), open_records(path, "jsonl", batch_size=1):
        pytest.fail("no batches may be handed out")


def test_csv_without_the_input_column_is_a_format_error(tmp_path: Path) -> None:
    path = write(tmp_path, "in.csv", b"id,text\n1,hello\n")
    with pytest.raises(FormatError, match="no column 'input'"):
        check_format(path, "csv")
    check_format(path, "csv", input_key="text")


def test_check_head_on_bytes_in_memory() -> None:
    check_head(b'{"input": "a"}\n{"inp', "jsonl")
    check_head(b"input\n", "csv")
    with pytest.raises(FormatError):
        check_head(b"id\n", "csv")
    with pytest.raises(FormatError):
        check_head(b"plain text", "jsonl", at_eof=True)
    check_head(b"plain text", "jsonl")  # only a prefix: its first line may not be complete


# --- batches, skipping, progress ---------------------------------------------------------------


def test_batches_are_bounded_and_in_order(tmp_path: Path) -> None:
    path = write(tmp_path, "in.txt", b"".join(b"%d\n" % i for i in range(10)))
    with open_records(path, "txt", batch_size=3) as batches:
        sizes, done = [], []
        for batch in batches:
            sizes.append(len(batch))
            done.append(batches.bytes_read)
        assert batches.total_bytes == path.stat().st_size
    assert sizes == [3, 3, 3, 1]
    assert done == sorted(done) and done[-1] == path.stat().st_size


def test_skip_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "in.csv", b"input\na\nb\n\nc\nd\n")
    assert [r.value for r in read_all(path, "csv", skip_lines=4)] == ["c", "d"]


def test_batches_iterate_once(tmp_path: Path) -> None:
    path = write(tmp_path, "in.txt", b"a\n")
    with open_records(path, "txt", batch_size=1) as batches:
        list(batches)
        with pytest.raises(RuntimeError):
            iter(batches)


def test_bad_arguments_are_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "in.txt", b"a\n")
    with pytest.raises(ValueError), open_records(path, "xml", batch_size=1):  # type: ignore[arg-type]
        pass
    with pytest.raises(ValueError), open_records(path, "txt", batch_size=0):
        pass


# --- the file is closed however the block exits --------------------------------------------------


def test_file_closed_after_normal_end_exception_early_break_and_format_error(tmp_path: Path) -> None:
    path = write(tmp_path, "in.txt", b"".join(b"line %d\n" % i for i in range(100)))
    binary = write(tmp_path, "bin.txt", b"\x00\x01\x02")
    before = open_fds()

    with open_records(path, "txt", batch_size=7) as batches:
        assert open_fds() == before + 1
        assert not batches.closed
        list(batches)
    assert batches.closed and open_fds() == before

    with pytest.raises(KeyError), open_records(path, "txt", batch_size=7) as batches:
        for _ in batches:
            raise KeyError("boom")
    assert batches.closed and open_fds() == before

    with open_records(path, "txt", batch_size=7) as batches:
        for _ in batches:
            break
    assert batches.closed and open_fds() == before

    with pytest.raises(FormatError), open_records(binary, "txt", batch_size=7):
        pass
    assert open_fds() == before

    check_format(path, "txt")
    assert open_fds() == before


# --- property: what is written is what is read ---------------------------------------------------

# no NUL (a binary file), no line breaks (one record per line), no lone surrogates (not UTF-8)
texts = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00\n\r"), max_size=30)


def _is_blank(text: str) -> bool:
    return not text.encode().strip()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    values=st.lists(texts, max_size=25),
    blanks=st.lists(st.booleans(), min_size=25, max_size=25),
    fmt=st.sampled_from(["jsonl", "csv", "txt"]),
    crlf=st.booleans(),
    bom=st.booleans(),
    chunk_size=st.sampled_from([16, 23, 64, 1 << 16]),
    batch_size=st.integers(1, 7),
)
def test_round_trip(
    tmp_path: Path,
    values: list[str],
    blanks: list[bool],
    fmt: str,
    crlf: bool,
    bom: bool,
    chunk_size: int,
    batch_size: int,
) -> None:
    if fmt == "txt":
        # a txt line that is blank is no record, and a leading U+FEFF would read as a BOM
        values = [v for v in values if not _is_blank(v) and not v.startswith("\ufeff")]
    lines: list[str] = []
    expected: list[tuple[int, str | int | None, str]] = []
    if fmt == "csv":
        lines.append("id,input")
    for index, value in enumerate(values):
        if blanks[index]:
            lines.append("")
        if fmt == "jsonl":
            lines.append(orjson.dumps({"id": index, "input": value}).decode())
        elif fmt == "csv":
            cell = io.StringIO()
            csv.writer(cell, lineterminator="").writerow([index, value])
            lines.append(cell.getvalue())
        else:
            lines.append(value)
        expected.append(
            (len(lines), None if fmt == "txt" else (str(index) if fmt == "csv" else index), value)
        )
    ending = "\r\n" if crlf else "\n"
    data = (ending.join(lines) + ending).encode() if lines else b""
    path = tmp_path / f"prop.{fmt}"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)

    with open_records(path, fmt, batch_size=batch_size, chunk_size=chunk_size) as batches:  # type: ignore[arg-type]
        got = []
        for batch in batches:
            assert 1 <= len(batch) <= batch_size
            got.extend(batch)
        assert batches.bytes_read == path.stat().st_size or not got
    assert [(r.line, r.id, r.value) for r in got] == expected
    assert all(r.error is None for r in got)
