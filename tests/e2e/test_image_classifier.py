"""The bundled image classifier on a real server: labelled scores equal ``transformers``' image
processor and model in-process on the same folder and images (same order, within 1e-4) whichever
way the images arrive — base64 and data URLs in JSON, a raw ``image/*`` body, multipart files, v2
BYTES through tritonclient (JSON and binary) — alone and under 32 concurrent clients; hostile
images answer 4xx within a second and leave the worker serving; a copy of the folder made
elsewhere serves with ``--model NAME=PATH``."""

from __future__ import annotations

import base64
import io
import shutil
import struct
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import tritonclient.http as triton
from PIL import Image

from service.core.repository import ModelRepository
from tests.support import ServerProcess

PREDICT = "/v1/models/image_classifier/predict"


def folder() -> Path:
    return ModelRepository().get("image_classifier").verified_weights()


def encoded(image: Image.Image, kind: str, **options: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, kind, **options)
    return out.getvalue()


def pictures() -> list[bytes]:
    """Deterministic images of several formats, sizes and modes."""
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (180, 240, 3), dtype=np.uint8))
    gradient = Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (64, 1)))  # greyscale
    rgba = Image.fromarray(rng.integers(0, 256, (50, 70, 4), dtype=np.uint8), "RGBA")
    return [
        encoded(noise, "JPEG", quality=90),
        encoded(noise.resize((640, 480)), "PNG"),
        encoded(gradient, "PNG"),
        encoded(rgba, "PNG"),
        encoded(noise, "WEBP", lossless=True),
        encoded(noise.convert("P"), "GIF"),
        encoded(noise, "BMP"),
    ]


IMAGES = pictures()


@pytest.fixture(scope="module")
def logits() -> list[list[float]]:
    """transformers in-process: the folder's processor on each image as Pillow opens it (RGB;
    alpha composited on white, as the service documents), its model's logits."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    processor = AutoImageProcessor.from_pretrained(str(folder()), local_files_only=True)
    model = AutoModelForImageClassification.from_pretrained(str(folder()), local_files_only=True).eval()
    rows = []
    for data in IMAGES:
        image = Image.open(io.BytesIO(data))
        if image.mode == "RGBA":
            image = Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image)
        with torch.no_grad():
            rows.append(
                model(**processor(images=image.convert("RGB"), return_tensors="pt")).logits[0].tolist()
            )
    return rows


@pytest.fixture(scope="module")
def expected(logits: list[list[float]]) -> list[list[dict[str, Any]]]:
    """The labelled scores: softmax over id2label, best first."""
    labels = ModelRepository().get("image_classifier").spec.outputs.labels
    answers = []
    for row in logits:
        scores = torch.softmax(torch.tensor(row), dim=0).tolist()
        order = sorted(range(len(scores)), key=lambda i: -scores[i])
        answers.append([{"label": labels[i], "score": scores[i]} for i in order])
    return answers


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess(serve=["image_classifier"]) as process:
        yield process


def assert_same(answer: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert [item["label"] for item in answer] == [item["label"] for item in want]
    assert max(abs(a["score"] - w["score"]) for a, w in zip(answer, want, strict=True)) <= 1e-4


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_json_base64_and_data_urls_equal_transformers(server: ServerProcess, expected: Any) -> None:
    inputs = [b64(data) if i % 2 else f"data:image/png;base64,{b64(data)}" for i, data in enumerate(IMAGES)]
    response = server.post(PREDICT, {"inputs": inputs})
    assert response.status_code == 200, response.text
    for answer, want in zip(response.json()["outputs"], expected, strict=True):
        assert_same(answer, want)
    top = server.post(PREDICT, {"inputs": inputs[:1], "parameters": {"top_k": 2}}).json()["outputs"][0]
    assert [item["label"] for item in top] == [item["label"] for item in expected[0][:2]]


def test_raw_bodies_and_multipart_files(server: ServerProcess, expected: Any) -> None:
    raw = server.client.post(PREDICT, content=IMAGES[0], headers={"content-type": "image/jpeg"})
    assert raw.status_code == 200, raw.text
    assert_same(raw.json()["outputs"][0], expected[0])
    top = server.client.post(f"{PREDICT}?top_k=3", content=IMAGES[1], headers={"content-type": "image/png"})
    assert [item["label"] for item in top.json()["outputs"][0]] == [item["label"] for item in expected[1][:3]]
    files = [("images", (f"{i}.img", data, "application/octet-stream")) for i, data in enumerate(IMAGES)]
    multipart = server.client.post(PREDICT, files=files)
    assert multipart.status_code == 200, multipart.text
    for answer, want in zip(multipart.json()["outputs"], expected, strict=True):
        assert_same(answer, want)


def test_32_concurrent_clients(server: ServerProcess, expected: Any) -> None:
    def one(index: int) -> list[dict[str, Any]]:
        data = IMAGES[index % len(IMAGES)]
        reply = server.client.post(PREDICT, content=data, headers={"content-type": "image/*"})
        assert reply.status_code == 200, reply.text
        outputs: list[list[dict[str, Any]]] = reply.json()["outputs"]
        return outputs[0]

    with ThreadPoolExecutor(max_workers=32) as pool:
        for index, answer in enumerate(pool.map(one, range(96))):
            assert_same(answer, expected[index % len(IMAGES)])


@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient_bytes_and_the_classification_extension(
    server: ServerProcess, expected: Any, binary: bool
) -> None:
    with triton.InferenceServerClient(server.url.removeprefix("http://")) as client:
        metadata = client.get_model_metadata("image_classifier")
        assert metadata["inputs"] == [{"name": "IMAGE", "datatype": "BYTES", "shape": [-1]}]
        images = triton.InferInput("IMAGE", [3], "BYTES")
        # binary: the files' bytes; JSON: base64 text (a JSON string cannot carry raw bytes)
        elements = IMAGES[:3] if binary else [b64(data) for data in IMAGES[:3]]
        images.set_data_from_numpy(np.array(elements, dtype=object), binary_data=binary)
        wanted = triton.InferRequestedOutput("LOGITS", binary_data=binary, class_count=3)
        result = client.infer("image_classifier", [images], outputs=[wanted])
    classes = result.as_numpy("LOGITS")
    assert classes is not None and classes.shape == (3, 3)
    for row, want in zip(classes.tolist(), expected[:3], strict=True):
        labels = [(e.decode() if isinstance(e, bytes) else e).split(":")[2] for e in row]
        assert labels == [item["label"] for item in want[:3]]


@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient_uint8_pixels(server: ServerProcess, expected: Any, binary: bool) -> None:
    """Decoded images, [N, height, width, 3] UINT8: the same answers as their encoded files."""
    pixels = np.stack([np.array(Image.open(io.BytesIO(IMAGES[i])).convert("RGB")) for i in (0, 4)])
    assert pixels.shape == (2, 180, 240, 3)
    with triton.InferenceServerClient(server.url.removeprefix("http://")) as client:
        images = triton.InferInput("IMAGE", list(pixels.shape), "UINT8")
        images.set_data_from_numpy(pixels, binary_data=binary)
        wanted = triton.InferRequestedOutput("LOGITS", binary_data=binary, class_count=10)
        result = client.infer("image_classifier", [images], outputs=[wanted])
    classes = result.as_numpy("LOGITS")
    assert classes is not None
    for row, want in zip(classes.tolist(), [expected[0], expected[4]], strict=True):
        labels = [(e.decode() if isinstance(e, bytes) else e).split(":")[2] for e in row]
        assert labels == [item["label"] for item in want]
    wrong = server.post(
        "/v2/models/image_classifier/infer",
        {"inputs": [{"name": "IMAGE", "shape": [1, 2, 2, 3], "datatype": "FP32", "data": [0.0] * 12}]},
    )
    assert wrong.status_code == 400 and "UINT8" in wrong.json()["error"]
    huge = server.post(
        "/v2/models/image_classifier/infer",
        {"inputs": [{"name": "IMAGE", "shape": [1, 10_000, 10_000, 3], "datatype": "UINT8", "data": [0]}]},
    )
    assert huge.status_code == 413, huge.text


def png_chunks(width: int, height: int, pixels: bytes = b"") -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (a few bytes of compressed data)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(pixels or b"\0" * 4096))
        + chunk(b"IEND", b"")
    )


HOSTILE = {
    "bomb": (png_chunks(50_000, 50_000), 413, "pixels"),
    "not an image": (b"%PDF-1.4 not an image at all" * 10, 422, "not an image"),
    "truncated": (IMAGES[0][: len(IMAGES[0]) // 3], 422, "image"),
    "corrupt pixels": (png_chunks(64, 64, b"\x07" * 100), 422, "image"),
    "zero pixels": (png_chunks(0, 10), 422, "image"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_images_are_4xx_fast_and_the_worker_keeps_serving(
    server: ServerProcess, expected: Any, case: str
) -> None:
    data, status, phrase = HOSTILE[case]
    for send, wanted in (
        (lambda: server.client.post(PREDICT, content=data, headers={"content-type": "image/png"}), status),
        (
            lambda: server.post(PREDICT, {"inputs": [b64(data)]}),
            422,
        ),  # JSON: a validation error, naming inputs.0
    ):
        started = time.monotonic()
        response = send()
        assert response.status_code == wanted, response.text
        assert phrase in response.json()["error"], response.text
        assert time.monotonic() - started < 5.0  # a second on a quiet machine; generous for CI
    after = server.client.post(PREDICT, content=IMAGES[0], headers={"content-type": "image/jpeg"})
    assert after.status_code == 200
    assert_same(after.json()["outputs"][0], expected[0])


def test_a_bad_image_beside_good_ones_fails_alone(server: ServerProcess, expected: Any) -> None:
    """A truncated image passes the header check; the worker refuses it alone (422), and the other
    clients' images decoded in the same forward are answered."""
    bad = IMAGES[0][: len(IMAGES[0]) // 3]

    def one(index: int) -> int:
        data = bad if index % 4 == 0 else IMAGES[index % len(IMAGES)]
        reply = server.client.post(PREDICT, content=data, headers={"content-type": "image/jpeg"})
        if reply.status_code == 200:
            assert_same(reply.json()["outputs"][0], expected[index % len(IMAGES)])
        return reply.status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        codes = list(pool.map(one, range(32)))
    assert codes == [422 if index % 4 == 0 else 200 for index in range(32)]


def test_an_image_classifier_folder_made_elsewhere_serves_with_one_command(
    tmp_path: Path, expected: Any
) -> None:
    mine = tmp_path / "vision"
    shutil.copytree(folder(), mine)
    with ServerProcess(args=["--model", f"vision={mine}"]) as process:
        detail = process.client.get("/v1/models/vision").json()
        assert detail["task"] == "image-classification"
        reply = process.client.post(
            "/v1/models/vision/predict", content=IMAGES[0], headers={"content-type": "image/jpeg"}
        )
        assert reply.status_code == 200, reply.text
        assert_same(reply.json()["outputs"][0], expected[0])


def archive_members() -> list[tuple[str, bytes]]:
    """The images, a file that is not one, and a name that climbs out."""
    named = [(f"set/{index}.img", data) for index, data in enumerate(IMAGES)]
    return [*named[:3], ("set/readme.txt", b"not an image"), ("../up.png", IMAGES[0]), *named[3:]]


def check_lines(lines: list[dict[str, Any]], logits: list[list[float]]) -> None:
    members = archive_members()
    assert [line["id"] for line in lines] == [name for name, _ in members]
    assert [line["line"] for line in lines] == list(range(1, len(members) + 1))
    images = [line for line in lines if "output" in line]
    assert len(images) == len(IMAGES)
    for line, want in zip(images, logits, strict=True):
        assert max(abs(a - b) for a, b in zip(line["output"], want, strict=True)) <= 1e-4
    errors = {line["id"]: line["error"] for line in lines if "error" in line}
    assert "not an image" in errors["set/readme.txt"] and "climbs out" in errors["../up.png"]


def tar_of(members: list[tuple[str, bytes]]) -> bytes:
    import tarfile

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def zip_of(members: list[tuple[str, bytes]]) -> bytes:
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in members:
            archive.writestr(name, data)
    return out.getvalue()


def ndjson(text: str) -> list[dict[str, Any]]:
    import json

    return [json.loads(line) for line in text.splitlines() if line]


def test_predict_file_reads_tar_and_zip_archives_member_by_member(server: ServerProcess, logits: Any) -> None:
    files = "/v1/models/image_classifier/predict-file"
    tar = server.client.post(
        files, content=tar_of(archive_members()), headers={"content-type": "application/x-tar"}
    )
    assert tar.status_code == 200, tar.text
    check_lines(ndjson(tar.text), logits)
    upload = {"file": ("images.zip", zip_of(archive_members()), "application/octet-stream")}
    zipped = server.client.post(files, files=upload)
    assert zipped.status_code == 200, zipped.text
    check_lines(ndjson(zipped.text), logits)
    text = server.client.post(files, content=b"hello", headers={"content-type": "application/x-tar"})
    assert text.status_code == 400 and "not a tar archive" in text.json()["error"]


def test_the_command_line_reads_a_folder(tmp_path: Path, logits: Any) -> None:
    import subprocess
    import sys

    root = tmp_path / "pictures"
    for name, data in archive_members():
        if not name.startswith(".."):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
    out = tmp_path / "out.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "service", "predict-file", "image_classifier", str(root), "-o", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    lines = ndjson(out.read_text())
    assert [line["id"] for line in lines] == sorted(
        name for name, _ in archive_members() if not name.startswith("..")
    )
    by_name = {line["id"]: line for line in lines}
    for index, want in enumerate(logits):
        got = by_name[f"set/{index}.img"]["output"]
        assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 1e-4
    assert "not an image" in by_name["set/readme.txt"]["error"]


def test_the_command_line_says_image_models_run_on_torch() -> None:
    import subprocess
    import sys

    listed = subprocess.run(
        [sys.executable, "-m", "service", "models"], capture_output=True, text=True, timeout=120, check=True
    )
    (line,) = [line for line in listed.stdout.splitlines() if line.startswith("image_classifier ")]
    assert "image-classification" in line and "torch (image models)" in line
    tuned = subprocess.run(
        [sys.executable, "-m", "service", "tune", "image_classifier"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert tuned.returncode == 2 and "image models run on torch" in tuned.stderr


def test_hostile_images_leave_every_process_rss_flat(server: ServerProcess) -> None:
    """After one round of every hostile image (allocations made once), ten more rounds grow no
    process of the service by more than 5% (+8 MB for the allocator's own slack)."""

    def send_all() -> None:
        for data, _, _ in HOSTILE.values():
            server.client.post(PREDICT, content=data, headers={"content-type": "image/png"})
            server.post(PREDICT, {"inputs": [b64(data)]})

    send_all()
    before = server.rss()
    for _ in range(10):
        send_all()
    after = server.rss()
    assert set(after) == set(before)  # no process replaced (no worker died)
    for pid, size in before.items():
        assert after.get(pid, 0) <= size * 1.05 + 8_000_000, (pid, size, after.get(pid))
    assert server.client.get("/health/ready").status_code == 200


def test_a_folder_whose_processor_keeps_the_aspect_ratio_serves_images_of_every_size(tmp_path: Path) -> None:
    """A ResNet folder resizing to a shortest edge without a crop: concurrent clients' images of
    three sizes share the worker's batches, each answer equal to transformers on that image alone."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from tests.integration.test_image_sizes import png, resnet_folder

    folder = resnet_folder(tmp_path / "resnet")
    processor = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
    reference = AutoModelForImageClassification.from_pretrained(str(folder), local_files_only=True).eval()
    images = [png(*size, seed) for seed, size in enumerate([(64, 32), (32, 64), (40, 40)] * 4)]
    with ServerProcess(args=["--model", f"resnet={folder}"]) as process:

        def one(data: bytes) -> list[float]:
            reply = process.client.post(
                "/v1/models/resnet/predict?raw_scores=true",
                content=data,
                headers={"content-type": "image/png"},
            )
            assert reply.status_code == 200, reply.text
            scores = {item["label"]: item["score"] for item in reply.json()["outputs"][0]}
            return [scores[label] for label in ("a", "b", "c")]

        with ThreadPoolExecutor(max_workers=12) as pool:
            answers = list(pool.map(one, images))
    for data, got in zip(images, answers, strict=True):
        with torch.no_grad():
            want = reference(
                **processor(images=Image.open(io.BytesIO(data)).convert("RGB"), return_tensors="pt")
            )
        np.testing.assert_allclose(got, want.logits[0].numpy(), rtol=0, atol=1e-4)
