"""service.files.job (and the predict-file CLI) with the real reference model: results, order, atomic output, resume, progress, CLI."""

from __future__ import annotations

import argparse
import hashlib
import io
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from service.cli import add_predict_file_parser, predict_file_command
from service.core.repository import ModelEntry, ModelRepository
from service.files.job import JobResult, format_record, input_keys, partial_path, run_predict_file
from service.files.readers import FormatError
from service.worker.session import InferenceSession

DIM = 16


@pytest.fixture(scope="module")
def entry() -> ModelEntry:
    return ModelRepository().get("reference")


@pytest.fixture(scope="module")
def session(entry: ModelEntry) -> InferenceSession:
    return InferenceSession(entry.load("cpu"))


class FailingSession(InferenceSession):
    """The real model, made to fail on one batch: what a model error mid-file looks like."""

    def __init__(self, base: InferenceSession, fail_on: int) -> None:
        super().__init__(base.model)
        self.fail_on = fail_on
        self.calls = 0

    def run(self, inputs: Sequence[Any]) -> list[Any]:
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("model failed")
        return super().run(inputs)


def vector(i: int) -> list[float]:
    return [((i * 7 + j) % 13) / 13.0 for j in range(DIM)]


def write_jsonl(path: Path, count: int, bad_every: int = 0) -> Path:
    lines = []
    for i in range(count):
        if bad_every and i % bad_every == 3:
            lines.append(orjson.dumps({"id": i, "input": [1.0, 2.0]}))  # wrong dim
        else:
            lines.append(orjson.dumps({"id": i, "input": vector(i)}))
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def read_results(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


# --- format_record -------------------------------------------------------------------------------


def test_format_record_shapes() -> None:
    assert format_record(3, "a", output=[0.5, 1.0]) == b'{"line":3,"id":"a","output":[0.5,1.0]}\n'
    assert format_record(4, None, error="bad") == b'{"line":4,"error":"bad"}\n'
    assert format_record(5, 9, output=[]) == b'{"line":5,"id":9,"output":[]}\n'


# --- the job -----------------------------------------------------------------------------------


def test_results_in_input_order_with_errors_in_place(
    tmp_path: Path, session: InferenceSession, entry: ModelEntry
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(
        orjson.dumps({"id": "a", "input": vector(0)})
        + b"\n\nnot json at all\n"
        + orjson.dumps({"id": "b", "input": [1, 2, 3]})
        + b"\n"
        + orjson.dumps({"id": "c", "input": vector(2)})
        + b"\n"
        + orjson.dumps({"input": vector(3)})
        + b"\n"
    )
    output = tmp_path / "out.jsonl"
    result = run_predict_file(session, entry.spec, source, output, "jsonl", 2, progress=False)
    assert result == JobResult(records=5, errors=2, bytes=source.stat().st_size, output=output)
    rows = read_results(output)
    # float32 results may differ in the last bits with the batch's composition
    expected = [pytest.approx(row, rel=1e-5) for row in session.run([vector(0), vector(2), vector(3)])]
    assert [row["line"] for row in rows] == [1, 3, 4, 5, 6]
    assert rows[0] == {"line": 1, "id": "a", "output": expected[0]}
    assert "error" in rows[1] and "id" not in rows[1]
    assert rows[2] == {"line": 4, "id": "b", "error": "line 4: the input has 3 numbers; the model expects 16"}
    assert rows[3] == {"line": 5, "id": "c", "output": expected[1]}
    assert rows[4] == {"line": 6, "output": expected[2]}
    assert not partial_path(output).exists()


@pytest.mark.parametrize("fmt", ["csv", "txt"])
def test_vector_inputs_from_csv_and_txt_are_json_arrays(
    tmp_path: Path, session: InferenceSession, entry: ModelEntry, fmt: str
) -> None:
    cells = [orjson.dumps(vector(i)).decode() for i in range(3)] + ['"hello"']
    if fmt == "csv":
        body = "id,input\n" + "".join(
            f'{i},"{cell.replace(chr(34), chr(34) * 2)}"\n' for i, cell in enumerate(cells)
        )
    else:
        body = "".join(cell + "\n" for cell in cells)
    source = tmp_path / f"in.{fmt}"
    source.write_text(body)
    output = tmp_path / "out.jsonl"
    result = run_predict_file(session, entry.spec, source, output, fmt, 8, progress=False)  # type: ignore[arg-type]
    rows = read_results(output)
    assert (result.records, result.errors) == (4, 1)
    expected = session.run([vector(i) for i in range(3)])
    assert [row.get("output") for row in rows[:3]] == [pytest.approx(row, rel=1e-5) for row in expected]
    assert rows[3]["error"].endswith("the input must be a list of 16 numbers, got str")


def test_format_error_writes_nothing(tmp_path: Path, session: InferenceSession, entry: ModelEntry) -> None:
    source = tmp_path / "in.csv"
    source.write_text("id,text\n1,hello\n")
    output = tmp_path / "out.jsonl"
    with pytest.raises(FormatError):
        run_predict_file(session, entry.spec, source, output, "csv", 4, progress=False)
    assert list(tmp_path.iterdir()) == [source]


def test_model_error_leaves_no_final_file_and_keeps_the_partial(
    tmp_path: Path, session: InferenceSession, entry: ModelEntry
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", 50)
    output = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError, match="model failed"):
        run_predict_file(FailingSession(session, 3), entry.spec, source, output, "jsonl", 8, progress=False)
    assert not output.exists()
    rows = read_results(partial_path(output))
    assert [row["line"] for row in rows] == list(range(1, 17))  # two whole batches


def test_resume_after_interruption_matches_an_uninterrupted_run(
    tmp_path: Path, session: InferenceSession, entry: ModelEntry
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", 100, bad_every=10)
    reference = tmp_path / "reference.jsonl"
    run_predict_file(session, entry.spec, source, reference, "jsonl", 8, progress=False)

    output = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError):
        run_predict_file(FailingSession(session, 5), entry.spec, source, output, "jsonl", 8, progress=False)
    partial = partial_path(output)
    # a crash mid-write: half of the next line, no line ending
    half = reference.read_bytes().splitlines(keepends=True)[len(read_results(partial))]
    with open(partial, "ab") as handle:
        handle.write(half[: len(half) // 2])

    result = run_predict_file(session, entry.spec, source, output, "jsonl", 8, resume=True, progress=False)
    assert output.read_bytes() == reference.read_bytes()
    # four forwards of 8 valid records reach line 36 (lines 4, 14, 24 and 34 are error records)
    assert result.resumed_after == 36 and result.records == 100 - 36
    assert not partial.exists()


def test_resume_drops_a_complete_but_corrupt_last_line(
    tmp_path: Path, session: InferenceSession, entry: ModelEntry
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", 20)
    reference = tmp_path / "reference.jsonl"
    run_predict_file(session, entry.spec, source, reference, "jsonl", 8, progress=False)
    output = tmp_path / "out.jsonl"
    kept = b"".join(reference.read_bytes().splitlines(keepends=True)[:5])
    partial_path(output).write_bytes(kept + b"\x00\x00garbage\n")
    result = run_predict_file(session, entry.spec, source, output, "jsonl", 8, resume=True, progress=False)
    assert result.resumed_after == 5
    # the resumed batches start at line 6, not 9: floats may differ in their last digits
    resumed, expected = read_results(output), read_results(reference)
    assert [row["line"] for row in resumed] == [row["line"] for row in expected] == list(range(1, 21))
    for got, want in zip(resumed, expected, strict=True):
        assert max(abs(a - b) for a, b in zip(got["output"], want["output"], strict=True)) <= 1e-5


def test_without_resume_a_partial_is_started_afresh(
    tmp_path: Path, session: InferenceSession, entry: ModelEntry
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", 10)
    output = tmp_path / "out.jsonl"
    partial_path(output).write_bytes(b'{"line":1,"output":[0.0]}\nstale')
    result = run_predict_file(session, entry.spec, source, output, "jsonl", 4, progress=False)
    assert result.resumed_after == 0
    assert [row["line"] for row in read_results(output)] == list(range(1, 11))


def test_progress_lines_when_stderr_is_not_a_tty(
    tmp_path: Path, session: InferenceSession, entry: ModelEntry, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", 40)
    run_predict_file(
        session, entry.spec, source, tmp_path / "out.jsonl", "jsonl", 8, progress=True, progress_interval=0.0
    )
    lines = capsys.readouterr().err.splitlines()
    pattern = re.compile(
        r"predict-file: [\d.]+ k?B / [\d.]+ kB \([\d.]+%\), [\d,]+ records, [\d,]+ rec/s, "
        r"ETA (\d+:\d\d:\d\d|\?)"
    )
    assert len(lines) >= 5 and all(pattern.fullmatch(line) for line in lines), lines
    assert "(100.0%), 40 records" in lines[-1]


def test_no_progress_output_when_disabled(
    tmp_path: Path, session: InferenceSession, entry: ModelEntry, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", 10)
    run_predict_file(session, entry.spec, source, tmp_path / "out.jsonl", "jsonl", 4, progress=False)
    assert capsys.readouterr().err == ""


# --- command line ----------------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="service")
    add_predict_file_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["predict-file", *argv])


def test_cli_defaults_and_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_jsonl(tmp_path / "data.ndjson", 70)
    args = parse("reference", str(source), "--progress-interval", "1000")
    assert args.handler is predict_file_command
    assert predict_file_command(args) == 0
    output = tmp_path / "data.predictions.jsonl"
    assert len(read_results(output)) == 70
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "70 records (0 errors)" in out and str(output) in out


def test_cli_text_file_with_explicit_options(tmp_path: Path) -> None:
    source = tmp_path / "vectors.txt"
    source.write_text("".join(orjson.dumps(vector(i)).decode() + "\n" for i in range(5)))
    output = tmp_path / "custom.jsonl"
    args = parse(
        "reference", str(source), "-o", str(output), "--batch-size", "2", "--grad-mode", "inference_mode"
    )
    assert predict_file_command(args) == 0
    assert [row["line"] for row in read_results(output)] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    ("name", "body", "argv", "message"),
    [
        ("in.xml", b"<a/>", (), "cannot tell the format"),
        ("in.jsonl", b'{"input": []}\n', ("--model-override",), None),
        ("in.jsonl", b"\x00\x01", (), "NUL bytes"),
        ("in.csv", b"id,text\n1,a\n", (), "no column 'input'"),
    ],
)
def test_cli_bad_input_is_one_line_and_status_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    body: bytes,
    argv: tuple[str, ...],
    message: str,
) -> None:
    source = tmp_path / name
    source.write_bytes(body)
    if message is None:
        with pytest.raises(SystemExit) as exit_info:  # argparse's own rejection of an unknown flag
            parse("reference", str(source), *argv)
        assert exit_info.value.code == 2
        return
    assert predict_file_command(parse("reference", str(source), *argv)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "in.predictions.jsonl").exists()


def test_cli_unknown_model_and_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", 1)
    assert predict_file_command(parse("nope", str(source))) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert predict_file_command(parse("reference", str(tmp_path / "missing.jsonl"))) == 2
    assert "is not a file" in capsys.readouterr().err


FLAKY_MODEL = """
class Flaky:
    module = None

    def preprocess(self, inputs):
        return [list(map(float, value)) for value in inputs]

    def forward(self, batch):
        if any(value[0] < 0 for value in batch):
            raise ValueError("negative first feature")
        return batch

    def postprocess(self, output):
        return output


def load(spec, weights, device, **_):
    return Flaky()
"""


def test_cli_model_error_keeps_the_partial_and_says_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # a real repository holding a model that fails on some inputs (importable as flakyrepo.flaky.model)
    folder = tmp_path / "flakyrepo" / "flaky"
    folder.mkdir(parents=True)
    (folder / "model.py").write_text(FLAKY_MODEL)
    (folder / "weights.bin").write_bytes(b"")
    (folder / "model.yaml").write_text(
        "name: flaky\nversion: '1'\ntask: test\nmax_batch_size: 2\ninputs: {kind: vector, dim: 2}\n"
        "weights: {path: weights.bin, sha256: " + hashlib.sha256(b"").hexdigest() + "}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    source = tmp_path / "in.txt"
    source.write_text("[1, 2]\n[3, 4]\n[5, 6]\n[-1, 0]\n[7, 8]\n")
    output = tmp_path / "in.predictions.jsonl"

    code = predict_file_command(parse("flaky", str(source), "--repository", str(folder.parent)))
    assert code == 1
    err = capsys.readouterr().err
    assert "negative first feature" in err and "--resume" in err and err.count("\n") == 1
    assert not output.exists()
    assert [row["output"] for row in read_results(partial_path(output))] == [[1, 2], [3, 4]]

    source.write_text("[1, 2]\n[3, 4]\n[5, 6]\n[9, 0]\n[7, 8]\n")  # the bad input fixed
    assert (
        predict_file_command(parse("flaky", str(source), "--repository", str(folder.parent), "--resume")) == 0
    )
    assert "resumed after line 2" in capsys.readouterr().out
    assert [row["output"] for row in read_results(output)] == [[1, 2], [3, 4], [5, 6], [9, 0], [7, 8]]


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_in_bytes_on_a_tty(
    tmp_path: Path, session: InferenceSession, entry: ModelEntry, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    source = write_jsonl(tmp_path / "in.jsonl", 40)
    run_predict_file(session, entry.spec, source, tmp_path / "out.jsonl", "jsonl", 8, progress_interval=0.0)
    shown = terminal.getvalue()
    assert "predict-file: 100%" in shown and "40 records" in shown and "rec/s" in shown
    assert re.search(r"\| [\d.]+k/[\d.]+k \[.*B/s", shown), shown  # a scaled byte count and rate


def test_error_records_held_behind_outputs_pause_the_reader_and_stay_in_place(
    tmp_path: Path, session: InferenceSession, entry: ModelEntry
) -> None:
    from service.files.job import input_validator
    from service.files.readers import open_records
    from service.files.results import RecordSource
    from service.worker.batcher import Limits, run_source

    # runs of bad lines longer than the number of error records a source may hold
    lines = [
        b'{"id": "bad", "input": [1.0]}' if 10 <= i % 40 < 35 else orjson.dumps({"id": i, "input": vector(i)})
        for i in range(300)
    ]
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    output = tmp_path / "out.jsonl"
    held: list[int] = []

    class Watched(RecordSource):
        uid = "watched"

        def take(self, limit: int) -> list[Any]:
            values = super().take(limit)
            held.append(self.errors_held)
            return values

        def finish(self) -> None:
            pass

        def fail(self, error: BaseException) -> None:
            pass

    validate = input_validator(entry.spec.inputs)
    with open_records(source, "jsonl", batch_size=8, validate=validate) as batches, open(output, "wb") as out:
        records = Watched(batches, out, max_held_errors=4)
        run_source(records, session.run, Limits(8))
    rows = read_results(output)
    assert [row["line"] for row in rows] == list(range(1, 301))
    assert records.errors == sum(1 for line in lines if b'"bad"' in line) == records.records - 115
    assert max(held) <= 4  # the reader paused instead of holding every bad line in memory
    expected = session.run([orjson.loads(line)["input"] for line in lines if b'"bad"' not in line])
    outputs = [row["output"] for row in rows if "output" in row]
    assert outputs == [pytest.approx(row, rel=1e-5) for row in expected]


# --- pairs ----------------------------------------------------------------------------------------


def test_input_keys_for_a_pair_model_and_a_text_model() -> None:
    repository = ModelRepository()
    pairs, texts = repository.get("reranker").spec.inputs, repository.get("minilm").spec.inputs
    assert input_keys(pairs, None) == (("input",), ("query", "document"))
    assert input_keys(pairs, "q, d") == (("q", "d"),)
    assert input_keys(pairs, "pair") == (("pair",),)
    assert input_keys(texts, None) == (("input",),)
    for given, model in (("a,b,c", pairs), ("a,", pairs), ("a,b", texts)):
        with pytest.raises(ValueError, match="must name one key"):
            input_keys(model, given)


def test_cli_pairs_from_columns_keys_and_pairs_agree(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pair model reads ``query``/``document`` columns, ``--input-key q,d`` keys, or ``input``
    pairs: the same scores whichever way the pairs come."""
    pairs = [("What is the capital of France?", "Paris, of course."), ("Is it sunny?", "Bananas are yellow.")]
    columns = tmp_path / "pairs.csv"
    columns.write_text(
        "id,query,document\n" + "".join(f'{i},"{q}","{d}"\n' for i, (q, d) in enumerate(pairs))
    )
    keyed = tmp_path / "keyed.jsonl"
    keyed.write_bytes(
        b"".join(orjson.dumps({"id": i, "q": q, "d": d}) + b"\n" for i, (q, d) in enumerate(pairs))
    )
    listed = tmp_path / "listed.jsonl"
    listed.write_bytes(
        b"".join(orjson.dumps({"id": i, "input": [q, d]}) + b"\n" for i, (q, d) in enumerate(pairs))
    )
    runs = [(columns, ()), (keyed, ("--input-key", "q,d")), (listed, ())]
    scores = []
    for source, extra in runs:
        assert (
            predict_file_command(parse("reranker", str(source), "--progress-interval", "1000", *extra)) == 0
        )
        results = read_results(source.with_name(source.stem + ".predictions.jsonl"))
        assert [row["id"] for row in results] in ([0, 1], ["0", "1"])
        scores.append([row["output"][0] for row in results])
    assert scores[0] == pytest.approx(scores[1], abs=1e-5) and scores[1] == pytest.approx(scores[2], abs=1e-5)
    assert predict_file_command(parse("reranker", str(keyed), "--input-key", "q,d,x")) == 2
    assert "must name one key, or 2 comma-separated (query, document)" in capsys.readouterr().err
