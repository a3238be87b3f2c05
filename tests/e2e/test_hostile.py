"""Hostile and malformed input against the real server: every route answers a clear 4xx with
``{"error": ...}`` JSON (OpenAI's shape on ``/v1/embeddings``), never a 5xx, a hang or a leak,
and the server stays ready afterwards."""

from __future__ import annotations

import base64
import gzip
import itertools
import json
import socket
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.e2e.test_tensors import HOSTILE as TENSOR_HOSTILE
from tests.support import ServerProcess

JSON = {"content-type": "application/json"}
NDJSON = {"content-type": "application/x-ndjson"}
MULTIPART = "multipart/form-data; boundary=zzz"
MAX_BODY_BYTES = 8 * 1024 * 1024  # the default max_body_bytes
VECTOR = [0.5] * 16  # a valid reference input
DEEP = 100_000  # nesting depth of the "deeply nested" bodies
PREDICT = {"minilm": "/v1/models/minilm/predict", "reference": "/v1/models/reference/predict"}
FILE = "/v1/models/minilm/predict-file"
GOOD_LINE = b'{"input": "hello"}\n'


def assert_error(response: httpx.Response, *statuses: int) -> str:
    """A 4xx (one of ``statuses`` when given) with a JSON body ``{"error": "<message>"}``."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    if statuses:
        assert response.status_code in statuses, (response.status_code, response.text[:300])
    assert response.headers["content-type"] == "application/json", response.headers
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert isinstance(body["error"], str) and body["error"]
    message: str = body["error"]
    return message


def raw(content: bytes, content_type: str | None = "application/json") -> dict[str, Any]:
    return {"content": content, "headers": {"content-type": content_type} if content_type else {}}


def vectors(*items: str) -> bytes:
    """A reference body whose vectors hold the given JSON number tokens (padded to 16)."""
    rows = ["[" + ", ".join([item, *["1"] * 15]) + "]" for item in items]
    return ('{"inputs": [' + ", ".join(rows) + "]}").encode()


# (id, request kwargs, expected statuses) per model; each must be a 4xx JSON error
COMMON_CASES: list[tuple[str, dict[str, Any], tuple[int, ...]]] = [
    ("truncated-json", raw(b'{"inputs": ['), (400,)),
    ("truncated-string", raw(b'{"inputs": ["abc'), (400,)),
    ("trailing-garbage", raw(b'{"inputs": ["a"]} xyz'), (400,)),
    ("single-quotes", raw(b"{'inputs': ['a']}"), (400,)),
    ("bare-word", raw(b"inputs"), (400,)),
    ("nul-bytes", raw(b"\x00" * 64), (400,)),
    ("bom", raw(b'\xef\xbb\xbf{"inputs": ["a"]}'), (400,)),
    ("empty-body", raw(b""), (400,)),
    ("whitespace-body", raw(b"   \n\t "), (400,)),
    ("null", raw(b"null"), (422,)),
    ("number", raw(b"42"), (422,)),
    ("string", raw(b'"inputs"'), (422,)),
    ("list-body", raw(b'[["a"]]'), (422,)),
    ("missing-inputs", {"json": {}}, (422,)),
    ("renamed-inputs", {"json": {"texts": ["a"]}}, (422,)),
    ("inputs-null", {"json": {"inputs": None}}, (422,)),
    ("inputs-string", {"json": {"inputs": "abc"}}, (422,)),
    ("inputs-object", {"json": {"inputs": {"0": "a"}}}, (422,)),
    ("inputs-number", {"json": {"inputs": 1}}, (422,)),
    ("extra-field", {"json": {"inputs": ["a"], "extra": 1}}, (422,)),
    ("duplicate-key", raw(b'{"inputs": ["a"], "inputs": 5}'), (422,)),
    ("empty-list", {"json": {"inputs": []}}, (422,)),
    ("too-many-items", {"json": {"inputs": [["a"]] * 1025}}, (422,)),
    ("list-of-nulls", {"json": {"inputs": [None]}}, (422,)),
    ("list-of-objects", {"json": {"inputs": [{"text": "a"}]}}, (422,)),
    ("nan-literal", raw(vectors("NaN")), (400,)),
    ("infinity-literal", raw(vectors("Infinity")), (400,)),
    ("minus-infinity-literal", raw(vectors("-Infinity")), (400,)),
    ("overflowing-number", raw(vectors("1e999")), (400,)),
    ("overflowing-integer", raw(vectors("9" * 400)), (400,)),
    ("nan-string", {"json": {"inputs": [["NaN", *[1] * 15]]}}, (422,)),
    ("infinity-string", {"json": {"inputs": [["Infinity", *[1] * 15]]}}, (422,)),
    ("nested-arrays", raw(b"[" * DEEP + b"]" * DEEP), (400,)),
    ("nested-objects", raw(b'{"a": ' * DEEP + b"1" + b"}" * DEEP), (400,)),
    ("nested-inputs", raw(b'{"inputs": ' + b"[" * DEEP + b"]" * DEEP + b"}"), (400,)),
    ("unclosed-nesting", raw(b"[" * (10 * DEEP)), (400,)),
    ("invalid-utf8", raw(b'{"inputs": ["\xff\xfe"]}'), (400,)),
    ("invalid-utf8-key", raw(b'{"in\xc3puts": ["a"]}'), (400,)),
    ("overlong-utf8", raw(b'{"inputs": ["\xc0\xaf"]}'), (400,)),
    ("lone-surrogate", raw(b'{"inputs": ["\\ud800"]}'), (400,)),
    ("utf16-body", raw('{"inputs": ["a"]}'.encode("utf-16")), (400,)),
    ("no-content-type", raw(b'{"inputs": ["a"]}', None), (415,)),
    ("text-plain", raw(b'{"inputs": ["a"]}', "text/plain"), (415,)),
    ("form-urlencoded", raw(b"inputs=a", "application/x-www-form-urlencoded"), (415,)),
    ("multipart", raw(b"--zzz--\r\n", MULTIPART), (415,)),
    ("json-lookalike", raw(b'{"inputs": ["a"]}', "application/jsonx"), (415,)),
    ("timeout-header-nan", {"json": {"inputs": ["a"]}, "headers": {"x-request-timeout": "nan"}}, (400,)),
    ("timeout-header-word", {"json": {"inputs": ["a"]}, "headers": {"x-request-timeout": "soon"}}, (400,)),
    ("timeout-header-negative", {"json": {"inputs": ["a"]}, "headers": {"x-request-timeout": "-1"}}, (400,)),
    ("timeout-header-huge", {"json": {"inputs": ["a"]}, "headers": {"x-request-timeout": "1e999"}}, (400,)),
]
MINILM_CASES: list[tuple[str, dict[str, Any], tuple[int, ...]]] = [
    ("number-item", {"json": {"inputs": ["ok", 3]}}, (422,)),
    ("bool-item", {"json": {"inputs": [True]}}, (422,)),
    ("nested-list-item", {"json": {"inputs": [["a"]]}}, (422,)),
    ("too-many-texts", {"json": {"inputs": ["a"] * 257}}, (422,)),
    ("too-long-text", {"json": {"inputs": ["x" * 10_001]}}, (422,)),
    ("huge-text", {"json": {"inputs": ["x" * (4 * 1024 * 1024)]}}, (422,)),
]
REFERENCE_CASES: list[tuple[str, dict[str, Any], tuple[int, ...]]] = [
    ("short-vector", {"json": {"inputs": [[1.0] * 15]}}, (422,)),
    ("long-vector", {"json": {"inputs": [[1.0] * 17]}}, (422,)),
    ("empty-vector", {"json": {"inputs": [[]]}}, (422,)),
    ("flat-vector", {"json": {"inputs": [1.0] * 16}}, (422,)),
    ("string-numbers", {"json": {"inputs": [["1.0"] * 16]}}, (422,)),
    ("bool-numbers", {"json": {"inputs": [[True] * 16]}}, (422,)),
    ("null-numbers", {"json": {"inputs": [[None] * 16]}}, (422,)),
    ("nested-numbers", {"json": {"inputs": [[[1.0]] * 16]}}, (422,)),
    ("text-inputs", {"json": {"inputs": ["a"]}}, (422,)),
    ("too-many-vectors", {"json": {"inputs": [VECTOR] * 1025}}, (422,)),
]


def predict_cases() -> Iterator[Any]:
    for model, cases in (
        ("minilm", COMMON_CASES + MINILM_CASES),
        ("reference", COMMON_CASES + REFERENCE_CASES),
    ):
        for case_id, kwargs, statuses in cases:
            yield pytest.param(model, kwargs, statuses, id=f"{model}-{case_id}")


@pytest.mark.parametrize(("model", "kwargs", "statuses"), predict_cases())
def test_predict_answers_hostile_bodies_with_a_json_4xx(
    server: ServerProcess, model: str, kwargs: dict[str, Any], statuses: tuple[int, ...]
) -> None:
    assert_error(server.client.post(PREDICT[model], **kwargs), *statuses)


def test_validation_errors_name_the_field_without_echoing_the_input(server: ServerProcess) -> None:
    secret = "unique-" + "q" * 10_001
    message = assert_error(server.post(PREDICT["minilm"], {"inputs": ["fine", secret]}), 422)
    assert message.startswith("inputs.1") and "unique-" not in message
    message = assert_error(server.post(PREDICT["reference"], {"inputs": [["unique-marker"] * 16]}), 422)
    assert message.startswith("inputs.0.0") and "unique-marker" not in message


def test_the_server_is_still_ready_after_hostile_predict_bodies(server: ServerProcess) -> None:
    assert server.client.get("/health/ready").status_code == 200
    response = server.post(PREDICT["reference"], {"inputs": [VECTOR]})
    assert response.status_code == 200 and len(response.json()["outputs"]) == 1


@pytest.mark.parametrize("value", ["1e308", "-1e308", "3.5e38"])
def test_numbers_beyond_float32_are_not_answered_with_nulls(server: ServerProcess, value: str) -> None:
    """Finite JSON numbers past float32's range become inf in the model, inf - inf = NaN, and the
    answer was a 200 with ``null`` outputs. Either reject them (422) or answer finite numbers."""
    body = ('{"inputs": [[' + ", ".join([value] * 16) + "]]}").encode()
    response = server.client.post(PREDICT["reference"], content=body, headers=JSON)
    if response.status_code != 200:
        assert_error(response, 422)
        return
    outputs = response.json()["outputs"]
    assert all(isinstance(x, float) for row in outputs for x in row), outputs


TRAVERSALS = [
    "..%2F..%2Fetc%2Fpasswd",
    "..%2f..%2f..%2fetc%2fpasswd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "..%5C..%5Cwindows%5Cwin.ini",
    "..%252F..%252Fetc%252Fpasswd",
    "%2E%2E",
    "..",
    "%00",
    "minilm%00",
    "minilm%2F..%2Freference",
    "%ff%fe",
    "a" * 4000,
]


@pytest.mark.parametrize("name", TRAVERSALS, ids=lambda name: name[:30])
def test_model_names_that_traverse_paths_are_404(server: ServerProcess, name: str) -> None:
    for method, suffix, kwargs in (
        ("GET", "", {}),
        ("POST", "/predict", {"json": {"inputs": ["a"]}}),
        ("POST", "/predict-file", {"content": GOOD_LINE, "headers": NDJSON}),
    ):
        response = server.client.request(method, f"/v1/models/{name}{suffix}", **kwargs)
        message = assert_error(response, 404)
        assert "root:" not in message and len(message) < 500


@pytest.mark.parametrize(
    "path",
    [
        "/v1/models/../reference",
        "/v1/models/../reference/predict",
        "/v1/models/./../../etc/passwd",
        "/v1/models/minilm/../reference/predict",
        "/v1/../../../etc/passwd",
        "/v1/models/minilm/predict/..",
    ],
)
def test_dot_segments_never_reach_another_route_or_file(server: ServerProcess, path: str) -> None:
    # sent as is (httpx would normalise the dot segments away)
    for method in ("GET", "POST"):
        status, body = http_raw(server, method, path, JSON, b'{"inputs": ["a"]}')
        assert 400 <= status < 500, (status, body[:300])
        assert b"root:" not in body


@pytest.mark.parametrize(
    ("query", "content", "headers", "statuses"),
    [
        ("format=../../x", GOOD_LINE, NDJSON, (400,)),
        ("format=..%2F..%2Fetc%2Fpasswd", GOOD_LINE, NDJSON, (400,)),
        ("format=%00", GOOD_LINE, NDJSON, (400,)),
        ("format=JSONL", GOOD_LINE, NDJSON, (400,)),
        ("format=" + "x" * 5000, GOOD_LINE, NDJSON, (400,)),
        ("format=csv&input_column=../../etc/passwd", b"input\nhello\n", {"content-type": "text/csv"}, (400,)),
        ("format=csv&id_column=../../etc", b"input\nhello\n", {"content-type": "text/csv"}, None),
        ("input_key=../../etc", GOOD_LINE, NDJSON, None),
        ("id_key=../../etc/passwd", GOOD_LINE, NDJSON, None),
        ("input_key=%00", GOOD_LINE, NDJSON, None),
        ("", GOOD_LINE, {}, (415,)),
        ("", GOOD_LINE, JSON, (415,)),
        ("", GOOD_LINE, {"content-type": "image/png"}, (415,)),
        ("", GOOD_LINE, {"content-type": "multipart/mixed; boundary=zzz"}, (415,)),
        ("", b"\x00\xff\xfe" * 100, NDJSON, (400,)),
        ("", b'{"input": "\xff"}\n', NDJSON, (400,)),
        ("", b"hello \xc0\xaf\n", {"content-type": "text/plain"}, (400,)),
        ("", b"not json\n", NDJSON, (400,)),
        ("", b"[" * DEEP + b"\n", NDJSON, (400,)),
        ("", b'{"input": ' + b"[" * DEEP + b"]" * DEEP + b"}\n", NDJSON, (400,)),
        ("", b'{"input": NaN}\n', NDJSON, (400,)),
        ("", b"a,b\n1,2\n", {"content-type": "text/csv"}, (400,)),
        ("", b"input\n\x00\n", {"content-type": "text/csv"}, (400,)),
    ],
)
def test_predict_file_answers_bad_parameters_and_bodies_with_a_json_4xx(
    server: ServerProcess,
    query: str,
    content: bytes,
    headers: dict[str, str],
    statuses: tuple[int, ...] | None,
) -> None:
    """``statuses`` None: the file itself is fine, so a 200 whose lines are per-record results or
    errors is also right, as long as nothing outside the spool folder is touched."""
    response = server.client.post(f"{FILE}?{query}", content=content, headers=headers)
    if statuses is None and response.status_code == 200:
        assert response.headers["content-type"] == "application/x-ndjson"
        assert b"root:" not in response.content
        return
    assert_error(response, *(statuses or ()))


def multipart(*parts: bytes, boundary: bytes = b"zzz", close: bool = True) -> bytes:
    body = b"".join(b"--" + boundary + b"\r\n" + part + b"\r\n" for part in parts)
    return body + (b"--" + boundary + b"--\r\n" if close else b"")


def part(
    filename: bytes | None = b"x.jsonl", content_type: bytes | None = None, data: bytes = GOOD_LINE
) -> bytes:
    disposition = b'Content-Disposition: form-data; name="file"'
    if filename is not None:
        disposition += b'; filename="' + filename + b'"'
    headers = [disposition, *([b"Content-Type: " + content_type] if content_type else [])]
    return b"\r\n".join(headers) + b"\r\n\r\n" + data


@pytest.mark.parametrize(
    ("content", "content_type", "statuses"),
    [
        (multipart(part()), "multipart/form-data", (400,)),  # no boundary
        (multipart(part()), "multipart/form-data; boundary=", (400,)),
        (multipart(part()), "multipart/form-data; boundary=yyy", (400,)),
        (multipart(part(), close=False), MULTIPART, (400,)),
        (multipart(part(), part()), MULTIPART, (400,)),
        (b"", MULTIPART, (400,)),
        (b"--zzz--\r\n", MULTIPART, (400,)),
        (b"\x00" * 1000, MULTIPART, (400,)),
        (b"--zzz\r\nno colon here\r\n\r\nhello\r\n--zzz--\r\n", MULTIPART, (400,)),
        (b"--zzz\r\nX: " + b"a" * (1 << 20) + b"\r\n\r\nhi\r\n--zzz--\r\n", MULTIPART, (400,)),
        (b"--zzz\r\n" + b"X: a\r\n" * 100_000 + b"\r\nhi\r\n--zzz--\r\n", MULTIPART, (400,)),
        (multipart(part(filename=None)), MULTIPART, (415,)),
        (multipart(part(filename=b"../../etc/passwd")), MULTIPART, (415,)),
        (multipart(part(filename=None, content_type=b"\xff\xfe;;;=")), MULTIPART, (400, 415)),
        (multipart(part(data=b"\x00\x01\x02" * 50)), MULTIPART, (400,)),
        (multipart(part(data=b"[" * DEEP + b"\n")), MULTIPART, (400,)),
    ],
)
def test_predict_file_answers_bad_multipart_with_a_json_4xx(
    server: ServerProcess, content: bytes, content_type: str, statuses: tuple[int, ...]
) -> None:
    response = server.client.post(FILE, content=content, headers={"content-type": content_type})
    assert_error(response, *statuses)


@pytest.mark.parametrize(
    "filename",
    [
        b"../../etc/passwd.jsonl",
        b"../../../../../../tmp/hostile-upload.jsonl",
        b"/etc/cron.d/hostile.jsonl",
        b"..\\..\\windows\\hostile.jsonl",
        b"%2e%2e%2f%2e%2e%2fhostile.jsonl",
        b"hostile\x00.jsonl",
        b"a" * 5000 + b".jsonl",
    ],
)
def test_multipart_file_names_are_never_used_as_paths(server: ServerProcess, filename: bytes) -> None:
    spool = spool_dir(server)
    before = set(spool.iterdir())
    response = server.client.post(
        FILE, content=multipart(part(filename)), headers={"content-type": MULTIPART}
    )
    if response.status_code == 200:  # the name only picked the format
        lines = response.text.splitlines()
        assert len(lines) == 1 and '"output"' in lines[0]
    else:
        assert_error(response)
    assert not Path("/tmp/hostile-upload.jsonl").exists()
    assert not Path("/etc/cron.d/hostile.jsonl").exists()
    assert eventually(lambda: set(spool.iterdir()) == before), set(spool.iterdir()) - before


def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Spool files go once the response has been sent, a moment after the client has it all."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def spool_dir(server: ServerProcess) -> Path:
    return server.spool_dir


# --- oversized bodies: 413 before the body is read -----------------------------------------------


def http_raw(
    server: ServerProcess, method: str, path: str, headers: dict[str, str], body: bytes, timeout: float = 10.0
) -> tuple[int, bytes]:
    """One request over a raw socket (no normalisation); the status and the body."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        head += "".join(f"{key}: {value}\r\n" for key, value in headers.items())
        head += f"Content-Length: {len(body)}\r\n\r\n"
        sock.sendall(head.encode("latin-1") + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def read_head(sock: socket.socket, deadline: float) -> bytes:
    """The status line and headers of a response, waiting at most until ``deadline``."""
    data = b""
    while b"\r\n\r\n" not in data:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize(
    ("path", "content_type", "start"),
    [
        (PREDICT["minilm"], "application/json", b'{"inputs": ["'),
        (PREDICT["reference"], "application/json", b'{"inputs": [['),
        (FILE, "application/x-ndjson", GOOD_LINE),
        (FILE, MULTIPART, b"--zzz\r\n" + part()),
        ("/v2/models/reference/infer", "application/octet-stream", b'{"inputs": ['),
        ("/v1/embeddings", "application/json", b'{"model": "minilm", "input": ["'),
    ],
)
def test_a_huge_declared_body_is_refused_before_it_is_sent(
    server: ServerProcess, path: str, content_type: str, start: bytes
) -> None:
    """Content-Length of a terabyte and only a few bytes sent: the 413 comes at once, while the
    client is still 'sending' (the server does not wait for, or buffer, the rest)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        sock.sendall(head.encode() + f"Content-Length: {10**12}\r\n\r\n".encode() + start)
        data = read_head(sock, time.monotonic() + 5)
    assert data.startswith(b"HTTP/1.1 413 "), data[:300]
    assert b"content-type: application/json" in data.lower()


def test_a_chunked_body_is_cut_off_at_the_limit(server: ServerProcess) -> None:
    """No Content-Length to judge by: the 413 comes once the limit is crossed, not at the end."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        head = f"POST {PREDICT['minilm']} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        sock.sendall(head.encode() + b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b" " * 65536
        for _ in range(MAX_BODY_BYTES // len(chunk) + 2):  # just past the limit, and never the last chunk
            sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        data = read_head(sock, time.monotonic() + 5)
    assert data.startswith(b"HTTP/1.1 413 "), data[:300]


def scrape_codes(server: ServerProcess) -> dict[str, float]:
    samples = {}
    for line in server.client.get("/metrics").text.splitlines():
        if line.startswith("inference_requests_total{") and 'code="5' in line:
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


@pytest.mark.parametrize(
    ("path", "content_type"),
    [(PREDICT["minilm"], "application/json"), (FILE, "application/x-ndjson"), (FILE, MULTIPART)],
)
def test_a_client_that_goes_away_mid_body_is_not_a_server_error(
    server: ServerProcess, path: str, content_type: str
) -> None:
    """Starlette raises ClientDisconnect from request.stream(); it must not become a logged
    'unhandled error' and a 500 in the metrics (any client could fill the error log)."""
    before = scrape_codes(server)
    logged = server.output().count("unhandled error")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        sock.sendall(head.encode() + b"Content-Length: 100000\r\n\r\n" + b"--zzz\r\n" + b"x" * 1000)
        time.sleep(0.3)
    time.sleep(0.5)
    assert server.client.get("/health/ready").status_code == 200
    assert scrape_codes(server) == before
    assert server.output().count("unhandled error") == logged


def test_file_key_parameters_are_bounded(server: ServerProcess) -> None:
    """input_key / id_key are echoed into every error line: a 15 kB key turned a 30 kB upload of
    10,000 ``{}`` lines into a 150 MB answer (and spool file). An over-long key must be a 400."""
    key = "k" * 15_000
    for query in (f"input_key={key}", f"id_key={key}", f"format=csv&input_column={key}"):
        response = server.client.post(f"{FILE}?{query}", content=b"{}\n" * 10_000, headers=NDJSON)
        assert response.status_code == 400 or len(response.content) < 2_000_000, (
            query[:20],
            response.status_code,
            len(response.content),
        )


# --- the Open Inference Protocol (v2) and OpenAI embeddings ---------------------------------------

V2 = {"minilm": "/v2/models/minilm/infer", "reference": "/v2/models/reference/infer"}
EMBEDDINGS = "/v1/embeddings"
HEADER_LENGTH = "Inference-Header-Content-Length"
# 32 MiB of zeros, ~32 kB compressed: decompressed only up to max_body_bytes
BOMB = zlib.compress(b"\x00" * (32 * 1024 * 1024), 9)
GZIP_BOMB = gzip.compress(b"\x00" * (32 * 1024 * 1024), 9)


def v2_binary(tensor: dict[str, Any], data: bytes, header_length: str | None = None) -> dict[str, Any]:
    """A binary-extension request: the JSON header, then ``data``."""
    header = json.dumps({"inputs": [tensor]}).encode()
    length = str(len(header)) if header_length is None else header_length
    return {"content": header + data, "headers": {HEADER_LENGTH: length}}


def v2_json(tensor: dict[str, Any], **document: Any) -> dict[str, Any]:
    return {"content": json.dumps({"inputs": [tensor], **document}).encode()}


def prefixed(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def text(shape: list[int], **fields: Any) -> dict[str, Any]:
    return {"name": "TEXT", "datatype": "BYTES", "shape": shape, **fields}


def floats(shape: list[Any], datatype: str = "FP32", **fields: Any) -> dict[str, Any]:
    return {"name": "INPUT", "datatype": datatype, "shape": shape, **fields}


FOUR_FLOATS = struct.pack("<16f", *range(16))

# (id, model, request kwargs, expected statuses)
V2_CASES: list[tuple[str, str, dict[str, Any], tuple[int, ...]]] = [
    ("empty-body", "reference", {"content": b""}, (400,)),
    ("not-json", "reference", {"content": b"{inputs"}, (400,)),
    ("json-list", "reference", {"content": b"[]"}, (400,)),
    ("deep-nesting", "reference", {"content": b"[" * DEEP + b"]" * DEEP}, (400,)),
    ("no-inputs", "reference", {"content": b"{}"}, (400,)),
    ("two-inputs", "reference", {"content": json.dumps({"inputs": [floats([1, 16]), floats([1, 16])]}).encode()}, (400,)),
    ("unknown-output", "reference", v2_json(floats([1, 16], data=[0.0] * 16), outputs=[{"name": "nope"}]), (400,)),
    ("id-number", "reference", v2_json(floats([1, 16], data=[0.0] * 16), id=5), (400,)),
    ("header-length-past-body", "reference", v2_binary(floats([1, 16], parameters={"binary_data_size": 64}), FOUR_FLOATS, "100000"), (400,)),
    ("header-length-huge", "reference", v2_binary(floats([1, 16], parameters={"binary_data_size": 64}), FOUR_FLOATS, "9" * 400), (400,)),
    ("header-length-negative", "reference", v2_binary(floats([1, 16], parameters={"binary_data_size": 64}), FOUR_FLOATS, "-5"), (400,)),
    ("header-length-word", "reference", v2_binary(floats([1, 16], parameters={"binary_data_size": 64}), FOUR_FLOATS, "abc"), (400,)),
    ("header-length-cuts-json", "reference", v2_binary(floats([1, 16], parameters={"binary_data_size": 64}), FOUR_FLOATS, "10"), (400,)),
    ("binary-size-negative", "reference", v2_binary(floats([1, 16], parameters={"binary_data_size": -64}), FOUR_FLOATS), (400,)),
    ("binary-size-oversized", "reference", v2_binary(floats([1, 16], parameters={"binary_data_size": 2**40}), FOUR_FLOATS), (400,)),
    ("binary-size-short", "reference", v2_binary(floats([1, 16], parameters={"binary_data_size": 32}), FOUR_FLOATS), (400,)),
    ("binary-size-string", "reference", v2_binary(floats([1, 16], parameters={"binary_data_size": "64"}), FOUR_FLOATS), (400,)),
    ("binary-without-header", "reference", {"content": json.dumps({"inputs": [floats([1, 16], parameters={"binary_data_size": 64})]}).encode() + FOUR_FLOATS}, (400,)),
    ("binary-and-data", "reference", v2_binary(floats([1, 16], data=[0.0] * 16, parameters={"binary_data_size": 64}), FOUR_FLOATS), (400,)),
    ("binary-nan", "reference", v2_binary(floats([1, 16], parameters={"binary_data_size": 64}), struct.pack("<16f", *[float("nan")] * 16)), (400,)),
    ("binary-count-mismatch", "reference", v2_binary(floats([2, 16], parameters={"binary_data_size": 64}), FOUR_FLOATS), (400,)),
    ("shape-vs-data", "reference", v2_json(floats([2, 16], data=[0.0] * 16)), (400,)),
    ("data-too-long", "reference", v2_json(floats([1, 16], data=[0.0] * 17)), (400,)),
    ("wrong-dim", "reference", v2_json(floats([1, 8], data=[0.0] * 8)), (400,)),
    ("negative-dim", "reference", v2_json(floats([-1, 16], data=[0.0] * 16)), (400,)),
    ("float-dim", "reference", v2_json(floats([1.0, 16], data=[0.0] * 16)), (400,)),
    ("huge-shape", "reference", v2_json(floats([10**12, 16], data=[0.0] * 16)), (413,)),
    ("huge-shape-past-64-bits", "reference", {"content": b'{"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [' + b"9" * 30 + b', 16], "data": [0]}]}'}, (413,)),
    ("many-dims", "reference", v2_json(floats([1] * 100, data=[0.0])), (413,)),
    ("too-many-inputs", "reference", v2_json(floats([1025, 16], data=[0.0] * 16)), (413,)),
    ("bytes-to-vector-model", "reference", v2_json(floats([1, 16], "BYTES", data=["a"] * 16)), (400,)),
    ("bool-datatype", "reference", v2_json(floats([1, 16], "BOOL", data=[True] * 16)), (400,)),
    ("unknown-datatype", "reference", v2_json(floats([1, 16], "FLOAT", data=[0.0] * 16)), (400,)),
    ("strings-as-numbers", "reference", v2_json(floats([1, 16], data=["1"] * 16)), (400,)),
    ("int-too-big-for-float32", "reference", v2_json(floats([1, 16], "INT64", data=[2**40 + 1] * 16)), (400,)),
    ("fp64-past-float32", "reference", v2_json(floats([1, 16], "FP64", data=[1e300] * 16)), (400,)),
    ("bytes-prefix-past-end", "minilm", v2_binary(text([1], parameters={"binary_data_size": 7}), struct.pack("<I", 1000) + b"abc"), (400,)),
    ("bytes-prefix-cut-short", "minilm", v2_binary(text([1], parameters={"binary_data_size": 2}), b"\x05\x00"), (400,)),
    ("bytes-count-mismatch", "minilm", v2_binary(text([2], parameters={"binary_data_size": 9}), prefixed(b"hello")), (400,)),
    ("bytes-extra-elements", "minilm", v2_binary(text([1], parameters={"binary_data_size": 10}), prefixed(b"a", b"b")), (400,)),
    ("bytes-invalid-utf8", "minilm", v2_binary(text([1], parameters={"binary_data_size": 6}), prefixed(b"\xff\xfe")), (400,)),
    ("bytes-too-long", "minilm", v2_json(text([1], data=["x" * 10_001])), (413,)),
    ("fp32-to-text-model", "minilm", v2_json(text([1], datatype="FP32", data=[1.0])), (400,)),
    ("numbers-as-bytes", "minilm", v2_json(text([2], data=["a", 1])), (400,)),
    ("text-shape-2d", "minilm", v2_json(text([1, 2], data=["a", "b"])), (400,)),
    ("zero-texts", "minilm", v2_json(text([0], data=[])), (400,)),
    ("too-many-texts", "minilm", v2_json(text([257], data=["a"] * 257)), (413,)),
    ("deflate-bomb", "reference", {"content": BOMB, "headers": {"content-encoding": "deflate"}}, (413,)),
    ("gzip-bomb", "reference", {"content": GZIP_BOMB, "headers": {"content-encoding": "gzip"}}, (413,)),
    ("gzip-corrupt", "reference", {"content": b"\x1f\x8b" + b"\x00" * 40, "headers": {"content-encoding": "gzip"}}, (400,)),
    ("gzip-truncated", "reference", {"content": gzip.compress(b'{"inputs": []}')[:-12], "headers": {"content-encoding": "gzip"}}, (400,)),
    ("unknown-encoding", "reference", {"content": b"{}", "headers": {"content-encoding": "br"}}, (415,)),
    ("timeout-header-nan", "reference", {"content": b"{}", "headers": {"x-request-timeout": "nan"}}, (400,)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("model", "kwargs", "statuses"), [pytest.param(m, k, s, id=i) for i, m, k, s in V2_CASES]
)
def test_v2_infer_answers_hostile_bodies_with_a_json_4xx(
    server: ServerProcess, model: str, kwargs: dict[str, Any], statuses: tuple[int, ...]
) -> None:
    assert_error(server.client.post(V2[model], **kwargs), *statuses)


def openai_error(response: httpx.Response, *statuses: int) -> str:
    """A 4xx (one of ``statuses``) in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    if statuses:
        assert response.status_code in statuses, (response.status_code, response.text[:300])
    assert response.headers["content-type"] == "application/json", response.headers
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    message: str = body["error"]["message"]
    assert isinstance(message, str) and message
    return message


def embeddings_body(**fields: Any) -> dict[str, Any]:
    return {"json": {"model": "minilm", **fields}}


OPENAI_CASES: list[tuple[str, dict[str, Any], tuple[int, ...]]] = [
    ("empty-body", {"content": b""}, (400,)),
    ("not-json", {"content": b"{model"}, (400,)),
    ("deep-nesting", {"content": b"[" * DEEP + b"]" * DEEP}, (400,)),
    ("list-body", {"json": ["hello"]}, (400,)),
    ("no-model", {"json": {"input": "a"}}, (400,)),
    ("model-number", {"json": {"model": 3, "input": "a"}}, (400,)),
    ("unknown-model", {"json": {"model": "nope", "input": "a"}}, (404,)),
    ("vector-model", {"json": {"model": "reference", "input": "a"}}, (400,)),
    ("no-input", embeddings_body(), (400,)),
    ("input-null", embeddings_body(input=None), (400,)),
    ("input-zero-items", embeddings_body(input=[]), (400,)),
    ("input-too-many-items", embeddings_body(input=["a"] * 257), (400,)),
    ("input-number", embeddings_body(input=5), (400,)),
    ("input-object", embeddings_body(input={"text": "a"}), (400,)),
    ("input-token-ids", embeddings_body(input=[101, 102]), (400,)),
    ("input-token-id-lists", embeddings_body(input=[[101, 102]]), (400,)),
    ("non-string-item", embeddings_body(input=["a", 5]), (400,)),
    ("null-item", embeddings_body(input=["a", None]), (400,)),
    ("object-item", embeddings_body(input=[{"a": 1}]), (400,)),
    ("bool-items", embeddings_body(input=[True, False]), (400,)),
    ("too-long-text", embeddings_body(input=["x" * 10_001]), (400,)),
    ("huge-text", embeddings_body(input=["x" * (4 * 1024 * 1024)]), (400,)),
    ("dimensions-zero", embeddings_body(input="a", dimensions=0), (400,)),
    ("dimensions-unsupported", embeddings_body(input="a", dimensions=100), (400,)),
    ("dimensions-string", embeddings_body(input="a", dimensions="384"), (400,)),
    ("dimensions-bool", embeddings_body(input="a", dimensions=True), (400,)),
    ("encoding-format", embeddings_body(input="a", encoding_format="int8"), (400,)),
    ("user-number", embeddings_body(input="a", user=5), (400,)),
    ("over-the-body-limit", {"content": b" " * (MAX_BODY_BYTES + 1)}, (413,)),
    ("gzip-bomb", {"content": GZIP_BOMB, "headers": {"content-encoding": "gzip"}}, (413,)),
    ("unknown-encoding", {"content": b"{}", "headers": {"content-encoding": "compress"}}, (415,)),
    ("timeout-header-word", {"json": {"model": "minilm", "input": "a"}, "headers": {"x-request-timeout": "soon"}}, (400,)),
]  # fmt: skip


@pytest.mark.parametrize(("kwargs", "statuses"), [pytest.param(k, s, id=i) for i, k, s in OPENAI_CASES])
def test_embeddings_answer_hostile_bodies_with_an_openai_4xx(
    server: ServerProcess, kwargs: dict[str, Any], statuses: tuple[int, ...]
) -> None:
    openai_error(server.client.post(EMBEDDINGS, **kwargs), *statuses)


def test_the_server_is_still_ready_after_hostile_v2_and_openai_bodies(server: ServerProcess) -> None:
    assert server.client.get("/health/ready").status_code == 200
    assert server.client.get("/v2/health/ready").status_code == 200
    tensor = floats([1, 16], data=[0.5] * 16)
    assert server.client.post(V2["reference"], **v2_json(tensor)).status_code == 200
    assert server.post(EMBEDDINGS, {"model": "minilm", "input": "hello"}).status_code == 200


# --- afterwards: still ready, no memory or file descriptor growth ---------------------------------


def hostile_requests() -> list[Callable[[httpx.Client], httpx.Response]]:
    """A mix of the above, one callable per request."""
    requests: list[Callable[[httpx.Client], httpx.Response]] = []
    for model, cases in (
        ("minilm", COMMON_CASES + MINILM_CASES),
        ("reference", COMMON_CASES + REFERENCE_CASES),
    ):
        for _, kwargs, _ in cases:
            requests.append(lambda client, path=PREDICT[model], kwargs=kwargs: client.post(path, **kwargs))
    bodies = [
        (FILE + "?format=../../x", GOOD_LINE, NDJSON),
        (FILE, b"\x00\xff" * 100, NDJSON),
        (FILE, multipart(part(), close=False), {"content-type": MULTIPART}),
        (FILE, multipart(part(), part()), {"content-type": MULTIPART}),
        (FILE, multipart(part(b"../../etc/passwd")), {"content-type": MULTIPART}),
        (FILE, multipart(part(b"../../etc/passwd.jsonl")), {"content-type": MULTIPART}),
        (FILE + "?input_key=../../etc", GOOD_LINE, NDJSON),
        ("/v1/models/..%2F..%2Fetc%2Fpasswd/predict", b"{}", JSON),
        ("/v1/models/..%2Freference/predict-file", GOOD_LINE, NDJSON),
    ]
    for path, content, headers in bodies:
        requests.append(lambda client, p=path, c=content, h=headers: client.post(p, content=c, headers=h))
    requests.append(lambda client: client.get("/v1/models/..%2F..%2Fetc%2Fpasswd"))
    for _, model, kwargs, _ in V2_CASES:
        requests.append(lambda client, path=V2[model], kwargs=kwargs: client.post(path, **kwargs))
    for _, kwargs, _ in OPENAI_CASES:
        requests.append(lambda client, kwargs=kwargs: client.post(EMBEDDINGS, **kwargs))
    return requests


def footprint(server: ServerProcess) -> dict[int, tuple[int, int]]:
    """(RSS bytes, open file descriptors) of every server process, by pid."""
    sizes = {}
    for pid in server.pids():
        try:
            process = psutil.Process(pid)
            sizes[pid] = (process.memory_info().rss, process.num_fds())
        except psutil.NoSuchProcess:
            continue
    return sizes


def send_all(server: ServerProcess, count: int) -> None:
    requests = hostile_requests()
    with httpx.Client(base_url=server.url, timeout=60.0) as client:
        for send in itertools.islice(itertools.cycle(requests), count):
            response = send(client)
            assert response.status_code < 500, response.text[:300]


def test_hundreds_of_hostile_requests_leave_the_server_ready_without_leaks(server: ServerProcess) -> None:
    send_all(server, 200)  # warm up: allocator arenas, caches, lazily imported modules
    time.sleep(0.5)
    before = footprint(server)
    send_all(server, 600)
    time.sleep(0.5)
    after = footprint(server)
    assert server.client.get("/health/ready").status_code == 200
    assert after.keys() == before.keys(), "a server process came or went"
    growth = {pid: after[pid][0] - before[pid][0] for pid in before}
    assert sum(growth.values()) < 32 * 1024 * 1024, growth
    assert max(growth.values()) < 16 * 1024 * 1024, growth
    fds = {pid: after[pid][1] - before[pid][1] for pid in before}
    assert max(fds.values()) <= 2, fds
    assert eventually(
        lambda: not any(spool_dir(server).glob("*.in")) and not any(spool_dir(server).glob("*.out"))
    )


# --- the pair and classification kinds -------------------------------------------------------------

HUGE = 2**64
DEEP_PARAMETERS = '{"inputs": ["a"], "parameters": ' + "[" * DEEP + "]" * DEEP + "}"
KIND_CASES: list[tuple[str, str, dict[str, Any], int, str]] = [
    # (case, path, request, status, error key): the native route 422, rerank and v2 400
    (
        "top-k-huge",
        "/v1/models/classifier/predict",
        {"json": {"inputs": ["a"], "parameters": {"top_k": HUGE}}},
        422,
        "error",
    ),
    (
        "top-k-negative",
        "/v1/models/classifier/predict",
        {"json": {"inputs": ["a"], "parameters": {"top_k": -1}}},
        422,
        "error",
    ),
    (
        "top-k-float",
        "/v1/models/classifier/predict",
        {"json": {"inputs": ["a"], "parameters": {"top_k": 1.5}}},
        422,
        "error",
    ),
    (
        "top-k-bool",
        "/v1/models/classifier/predict",
        {"json": {"inputs": ["a"], "parameters": {"top_k": True}}},
        422,
        "error",
    ),
    (
        "parameters-list",
        "/v1/models/classifier/predict",
        {"json": {"inputs": ["a"], "parameters": [1]}},
        422,
        "error",
    ),
    ("parameters-deep", "/v1/models/classifier/predict", raw(DEEP_PARAMETERS.encode()), 400, "error"),
    (
        "raw-scores-number",
        "/v1/models/classifier/predict",
        {"json": {"inputs": ["a"], "parameters": {"raw_scores": 1}}},
        422,
        "error",
    ),
    (
        "grouped-on-text-model",
        "/v1/models/classifier/predict",
        {"json": {"query": "q", "documents": ["d"]}},
        422,
        "error",
    ),
    ("pair-of-three", "/v1/models/reranker/predict", {"json": {"inputs": [["q", "d", "e"]]}}, 422, "error"),
    ("pair-with-null", "/v1/models/reranker/predict", {"json": {"inputs": [["q", None]]}}, 422, "error"),
    (
        "pair-limits-smuggled",
        "/v1/models/reranker/predict",
        {"json": {"inputs": [["q", "d", 1, 1]]}},
        422,
        "error",
    ),
    ("query-number", "/v1/models/reranker/predict", {"json": {"query": 3, "documents": ["d"]}}, 422, "error"),
    (
        "documents-object",
        "/v1/models/reranker/predict",
        {"json": {"query": "q", "documents": {"a": "d"}}},
        422,
        "error",
    ),
    (
        "documents-nested",
        "/v1/models/reranker/predict",
        {"json": {"query": "q", "documents": [["d"]]}},
        422,
        "error",
    ),
    (
        "documents-too-many",
        "/v1/models/reranker/predict",
        {"json": {"query": "q", "documents": ["d"] * 1001}},
        422,
        "error",
    ),
    (
        "document-too-long",
        "/v1/models/reranker/predict",
        {"json": {"query": "q", "documents": ["d" * 10_001]}},
        422,
        "error",
    ),
    (
        "rerank-top-n-huge",
        "/v2/rerank",
        {"json": {"model": "reranker", "query": "q", "documents": ["d"], "top_n": HUGE}},
        400,
        "message",
    ),
    (
        "rerank-top-n-float",
        "/v2/rerank",
        {"json": {"model": "reranker", "query": "q", "documents": ["d"], "top_n": 1.5}},
        400,
        "message",
    ),
    (
        "rerank-max-tokens-zero",
        "/v2/rerank",
        {"json": {"model": "reranker", "query": "q", "documents": ["d"], "max_tokens_per_doc": 0}},
        400,
        "message",
    ),
    (
        "rerank-max-tokens-bool",
        "/v2/rerank",
        {"json": {"model": "reranker", "query": "q", "documents": ["d"], "max_tokens_per_doc": True}},
        400,
        "message",
    ),
    (
        "rerank-max-chunks-negative",
        "/v1/rerank",
        {"json": {"query": "q", "documents": ["d"], "max_chunks_per_doc": -1}},
        400,
        "message",
    ),
    (
        "rerank-text-not-string",
        "/v1/rerank",
        {"json": {"query": "q", "documents": [{"text": 3}]}},
        400,
        "message",
    ),
    (
        "rerank-object-on-v2",
        "/v2/rerank",
        {"json": {"model": "reranker", "query": "q", "documents": [{"text": "d"}]}},
        400,
        "message",
    ),
    (
        "rerank-model-list",
        "/v2/rerank",
        {"json": {"model": ["reranker"], "query": "q", "documents": ["d"]}},
        400,
        "message",
    ),
    (
        "rerank-classifier",
        "/v2/rerank",
        {"json": {"model": "classifier", "query": "q", "documents": ["d"]}},
        400,
        "message",
    ),
    ("rerank-array-body", "/v2/rerank", raw(b"[]"), 400, "message"),
    ("rerank-deep-body", "/v2/rerank", raw(("[" * DEEP + "]" * DEEP).encode()), 400, "message"),
]
V2_TEXT = {"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": ["a"]}
for count in (0, -1, 1.5, HUGE, "2", None, [2]):
    wanted = {"name": "LOGITS", "parameters": {"classification": count}}
    if count is not None:
        KIND_CASES.append(
            (
                f"classification-{count!r}",
                "/v2/models/classifier/infer",
                {"json": {"inputs": [V2_TEXT], "outputs": [wanted]}},
                400,
                "error",
            )
        )
KIND_CASES.append(
    (
        "pair-one-column",
        "/v2/models/reranker/infer",
        {"json": {"inputs": [{"name": "PAIR", "datatype": "BYTES", "shape": [1, 1], "data": ["q"]}]}},
        400,
        "error",
    )
)


IMAGE = "/v1/models/image_classifier/predict"
IMAGE_V2 = "/v2/models/image_classifier/infer"
IMAGE_FILE = "/v1/models/image_classifier/predict-file"


def _png(width: int, height: int) -> bytes:
    from tests.e2e.test_image_classifier import png_chunks

    return png_chunks(width, height)


def _multipart(size: int) -> bytes:
    """One file part of ``size`` bytes, past the 8 MiB body limit when large."""
    head = b'--b\r\nContent-Disposition: form-data; name="f"; filename="x.png"\r\nContent-Type: image/png\r\n\r\n'
    return head + b"\0" * size + b"\r\n--b--\r\n"


def _v2_pixels(shape: list[Any], datatype: str = "UINT8", data: Any = None) -> dict[str, Any]:
    return {
        "json": {"inputs": [{"name": "IMAGE", "shape": shape, "datatype": datatype, "data": data or [0]}]}
    }


def _binary_pixels(shape: list[int], size: int, actual: int) -> dict[str, Any]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "IMAGE",
                    "shape": shape,
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": size},
                }
            ]
        }
    ).encode()
    return {
        "content": header + b"\0" * actual,
        "headers": {
            "content-type": "application/octet-stream",
            "inference-header-content-length": str(len(header)),
        },
    }


KIND_CASES += [
    ("image-bomb-raw", IMAGE, raw(_png(50_000, 50_000), "image/png"), 413, "error"),
    (
        "image-bomb-json",
        IMAGE,
        {"json": {"inputs": [base64.b64encode(_png(50_000, 50_000)).decode()]}},
        422,
        "error",
    ),
    ("image-zero-pixels", IMAGE, raw(_png(0, 7), "image/png"), 422, "error"),
    ("image-wrong-magic", IMAGE, raw(b"GIF89a" + b"\xff" * 64, "image/gif"), 422, "error"),
    ("image-pdf", IMAGE, raw(b"%PDF-1.7\n" + b"x" * 500, "image/png"), 422, "error"),
    ("image-empty-raw", IMAGE, raw(b"", "image/png"), 400, "error"),
    ("image-not-base64", IMAGE, {"json": {"inputs": ["**not base64**"]}}, 422, "error"),
    ("image-data-url-not-base64", IMAGE, {"json": {"inputs": ["data:image/png,raw"]}}, 422, "error"),
    ("image-number", IMAGE, {"json": {"inputs": [3]}}, 422, "error"),
    ("image-bad-top-k", f"{IMAGE}?top_k=eleven", raw(_png(4, 4), "image/png"), 422, "error"),
    ("image-unknown-parameter", f"{IMAGE}?colour=red", raw(_png(4, 4), "image/png"), 422, "error"),
    (
        "image-multipart-no-file",
        IMAGE,
        raw(
            b'--b\r\nContent-Disposition: form-data; name="f"\r\n\r\nvalue\r\n--b--\r\n',
            "multipart/form-data; boundary=b",
        ),
        400,
        "error",
    ),
    (
        "image-multipart-too-large",
        IMAGE,
        raw(_multipart(9 << 20), "multipart/form-data; boundary=b"),
        413,
        "error",
    ),
    (
        "image-multipart-chunked-too-large",
        IMAGE,
        {
            "content": iter([_multipart(9 << 20)]),
            "headers": {"content-type": "multipart/form-data; boundary=b"},
        },
        413,
        "error",
    ),
    (
        "image-multipart-malformed",
        IMAGE,
        raw(b"--b\r\nnot a part", "multipart/form-data; boundary=b"),
        400,
        "error",
    ),
    (
        "image-multipart-too-many",
        IMAGE,
        {"files": [("f", (f"{i}.png", _png(2, 2), "image/png")) for i in range(70)]},
        413,
        "error",
    ),
    ("image-v2-fp32", IMAGE_V2, _v2_pixels([1, 2, 2, 3], "FP32", [0.0] * 12), 400, "error"),
    ("image-v2-four-channels", IMAGE_V2, _v2_pixels([1, 2, 2, 4]), 400, "error"),
    ("image-v2-negative", IMAGE_V2, _v2_pixels([1, -2, 2, 3]), 400, "error"),
    ("image-v2-huge", IMAGE_V2, _v2_pixels([1, 100_000, 100_000, 3]), 413, "error"),
    ("image-v2-too-few-values", IMAGE_V2, _v2_pixels([1, 2, 2, 3], data=[1, 2, 3]), 400, "error"),
    ("image-v2-strings-as-pixels", IMAGE_V2, _v2_pixels([1, 1, 1, 3], data=["a", "b", "c"]), 400, "error"),
    ("image-v2-binary-mismatch", IMAGE_V2, _binary_pixels([1, 2, 2, 3], 12, 11), 400, "error"),
    ("image-v2-binary-short", IMAGE_V2, _binary_pixels([1, 2, 2, 3], 10, 10), 400, "error"),
    (
        "image-v2-bytes-not-image",
        IMAGE_V2,
        {"json": {"inputs": [{"name": "IMAGE", "shape": [1], "datatype": "BYTES", "data": ["aGVsbG8="]}]}},
        400,
        "error",
    ),
    ("image-archive-not-tar", IMAGE_FILE, raw(b"hello" * 200, "application/x-tar"), 400, "error"),
    ("image-archive-not-zip", IMAGE_FILE, raw(b"hello" * 200, "application/zip"), 400, "error"),
    (
        "archive-to-a-text-model",
        "/v1/models/classifier/predict-file",
        raw(b"PK\x05\x06" + b"\0" * 18, "application/zip"),
        415,
        "error",
    ),
    ("image-to-a-text-model", "/v1/models/classifier/predict", raw(_png(4, 4), "image/png"), 415, "error"),
    ("image-to-a-tensor-model", "/v1/models/scorer/predict", raw(_png(4, 4), "image/png"), 415, "error"),
    (
        "archive-to-a-tensor-model",
        "/v1/models/scorer/predict-file",
        raw(b"PK\x05\x06" + b"\0" * 18, "application/zip"),
        415,
        "error",
    ),
]
# every other hostile tensor: tests/e2e/test_tensors.py (its own server, with timings and RSS)
KIND_CASES += [
    (f"tensor-{name.replace(' ', '-')}", path, kwargs, status, "error")
    for name, (path, kwargs, status, _) in TENSOR_HOSTILE.items()
]


@pytest.fixture(scope="module")
def kinds_server() -> Iterator[ServerProcess]:
    with ServerProcess(serve=["reranker", "classifier", "image_classifier", "scorer"]) as process:
        yield process


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "key"), [pytest.param(*case[1:], id=case[0]) for case in KIND_CASES]
)
def test_pair_and_classifier_routes_answer_hostile_bodies_with_a_clear_4xx(
    kinds_server: ServerProcess, path: str, kwargs: dict[str, Any], status: int, key: str
) -> None:
    response = kinds_server.client.post(path, **kwargs)
    assert response.status_code == status, (response.status_code, response.text[:300])
    body = response.json()
    assert set(body) == {key} and isinstance(body[key], str) and body[key], body


def test_the_pair_and_classifier_server_is_still_ready(kinds_server: ServerProcess) -> None:
    assert kinds_server.client.get("/health/ready").status_code == 200
    answer = kinds_server.post("/v1/models/reranker/predict", {"query": "q", "documents": ["d"]})
    assert answer.status_code == 200 and len(answer.json()["outputs"]) == 1
    from tests.e2e.test_image_classifier import IMAGES

    picture = kinds_server.client.post(IMAGE, content=IMAGES[0], headers={"content-type": "image/jpeg"})
    assert picture.status_code == 200 and len(picture.json()["outputs"][0]) == 10
