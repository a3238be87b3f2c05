"""Hostile and malformed input against the real server: every route answers a clear 4xx with
``{"error": ...}`` JSON, never a 5xx, a hang or a leak, and the server stays ready afterwards."""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

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
    from service.core.spool import default_spool_dir

    return default_spool_dir(server.port)


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
