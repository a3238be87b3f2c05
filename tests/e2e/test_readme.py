"""The README's snippets, run as a reader would run them: the task sections' curl and client calls
against a real server of the bundled models, and both "serve your own model" walkthroughs (a
Hugging Face folder with no Python; a ``model.py`` of one's own) from their own snippets, with
nothing but the port changed. A snippet that drifts from the code fails here."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.core.repository import ModelRepository
from tests.support import ServerProcess, ServerUnderTest

README = Path(__file__).resolve().parents[2] / "README.md"
SNIPPET = re.compile(r"<!-- snippet: ([a-z-]+) -->\n```(\w+)\n(.*?)\n```", re.S)
DOCUMENTED_PORT = "127.0.0.1:8000"


def snippets(group: str) -> list[tuple[str, str]]:
    """(language, code) of every snippet of ``group``, in README order."""
    found = [(lang, code) for name, lang, code in SNIPPET.findall(README.read_text("utf-8")) if name == group]
    assert found, f"the README has no {group!r} snippet"
    return found


def on_port(code: str, port: int) -> str:
    return code.replace(DOCUMENTED_PORT, f"127.0.0.1:{port}")


def run_shell(code: str, port: int, cwd: Path | None = None) -> str:
    """Run a shell snippet (in ``cwd``); every curl fails on an HTTP error (-f), so a 4xx/5xx fails
    the test, and ends its answer with a newline (one answer per line); ``python -m service`` is
    this interpreter's."""
    script = on_port(code, port).replace("curl -s ", "curl -sSf -w '\\n' ")
    script = script.replace("python -m service", f"{shlex.quote(sys.executable)} -m service")
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=120, cwd=cwd
    )
    assert done.returncode == 0, (script, done.stdout[-2000:], done.stderr[-2000:])
    assert done.stdout.strip(), script
    return done.stdout


def run_python(code: str, port: int) -> None:
    exec(compile(on_port(code, port), str(README), "exec"), {"__name__": "__readme__"})


def printed_by(code: str, port: int) -> str:
    """What a Python snippet prints."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        run_python(code, port)
    return out.getvalue()


def run(lang: str, code: str, port: int) -> None:
    if lang == "sh":
        run_shell(code, port)
    else:
        assert lang == "python", lang
        run_python(code, port)


def server_command(code: str, replacements: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """A one-line ``[VAR=value ...] python -m service serve ...`` snippet as a command and its env."""
    for old, new in replacements.items():
        code = code.replace(old, new)
    words = shlex.split(code)
    env = {}
    while "=" in words[0] and not words[0].startswith("-"):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    assert words[:4] == ["python", "-m", "service", "serve"], words
    return [sys.executable, *words[1:]], env


@pytest.fixture(scope="module")
def tasks_server() -> Iterator[ServerProcess]:
    with ServerProcess(serve=["minilm", "reranker", "classifier"]) as server:
        yield server


def test_the_task_sections_snippets_run(tasks_server: ServerProcess) -> None:
    found = snippets("tasks")
    assert {lang for lang, _ in found} == {"sh", "python"} and len(found) >= 6  # 3 tasks × (curl, client)
    for lang, code in found:
        run(lang, code, tasks_server.port)


def test_serving_a_hugging_face_folder_as_the_readme_says(tmp_path: Path) -> None:
    folder = tmp_path / "sentiment-folder"
    shutil.copytree(ModelRepository().get("classifier").verified_weights(), folder)
    ((_, serve),) = snippets("own-folder-serve")
    command, env = server_command(serve, {"/path/to/sentiment-folder": str(folder)})
    with ServerUnderTest(command, "/health/ready", env=env) as server:
        ((_, call),) = snippets("own-folder-call")
        output = run_shell(call, server.port)
    assert '"task":"text-classification"' in output.replace(" ", "")
    assert '"label":' in output


def test_serving_a_model_py_of_ones_own_as_the_readme_says(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "models" / "mymodel"
    folder.mkdir(parents=True)
    ((_, make_weights),) = snippets("own-python-weights")
    made = subprocess.run(
        [sys.executable, "-c", make_weights],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    digest = made.stdout.strip()
    assert re.fullmatch("[0-9a-f]{64}", digest), made.stdout
    ((_, declaration),) = snippets("own-python-yaml")
    assert "<the digest printed above>" in declaration
    (folder / "model.yaml").write_text(declaration.replace("<the digest printed above>", digest))
    ((_, code),) = snippets("own-python-code")
    (folder / "model.py").write_text(code)
    ((_, serve),) = snippets("own-python-serve")
    command, env = server_command(serve, {})
    env["SERVICE_REPOSITORY"] = str(tmp_path / "models")
    with ServerUnderTest(command, "/health/ready", env=env) as server:
        ((_, call),) = snippets("own-python-call")
        output = run_shell(call, server.port)
        answer = json.loads(output.splitlines()[0])
        weights = load_file(str(folder / "weights.safetensors"))
        vector = torch.arange(1, 17, dtype=torch.float32)
        want = (weights["weight"] @ vector + weights["bias"]).tolist()
        assert answer["outputs"][0] == pytest.approx(want, abs=1e-4)
        import httpx

        with httpx.Client(base_url=server.url, timeout=30) as client:
            mixed = client.post("/v1/models/mymodel/predict", json={"inputs": [[0.0] * 16]})
            assert mixed.status_code == 422
            assert "an all-zero vector has no direction" in mixed.json()["error"]


def test_the_image_snippets_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """curl -T, --data-binary, -F, JSON base64, a tar to predict-file, the CLI on a folder, and
    tritonclient, on the files the snippets name."""
    import io
    import tarfile

    from tests.e2e.test_image_classifier import IMAGES

    (tmp_path / "cat.jpg").write_bytes(IMAGES[0])
    (tmp_path / "dog.png").write_bytes(IMAGES[1])
    photos = tmp_path / "photos"
    photos.mkdir()
    with tarfile.open(tmp_path / "photos.tar", "w") as archive:
        for index, data in enumerate(IMAGES[:4]):
            (photos / f"{index}.img").write_bytes(data)
            member = tarfile.TarInfo(f"{index}.img")
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    ((_, serve),) = snippets("images-serve")
    command, env = server_command(serve, {})
    with ServerUnderTest(command, "/health/ready", env=env) as server:
        (shell, client) = snippets("images")
        assert shell[0] == "sh" and client[0] == "python"
        output = run_shell(shell[1], server.port, cwd=tmp_path)
        answers = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
        assert [len(a["outputs"]) for a in answers[:4]] == [1, 1, 2, 1]
        assert len(answers[0]["outputs"][0]) == 2 and len(answers[3]["outputs"][0]) == 3
        assert (
            answers[0]["outputs"] == answers[3]["outputs"]
            or answers[0]["outputs"][0][0]["label"] == (answers[3]["outputs"][0][0]["label"])
        )
        lines = [
            json.loads(line) for line in (tmp_path / "photos.predictions.jsonl").read_text().splitlines()
        ]
        assert [line["id"] for line in lines] == [f"{i}.img" for i in range(4)]
        monkeypatch.chdir(tmp_path)
        printed = printed_by(client[1], server.port)
        # [[b'2.318000:3:cat' ...]]: three classes, each logit:index:label (Triton's format)
        assert len(re.findall(r"b'-?\d+\.\d{6}:\d+:[a-z]+'", printed)) == 3, printed


def test_the_named_tensor_snippets_run(tmp_path: Path) -> None:
    """The declaration is the bundled scorer's; a .onnx and a .pt2 made as a user makes them
    serve from the snippet's command; curl and tritonclient answer."""
    import yaml

    from tests.programs import make_onnx, make_pt2

    ((_, declaration),) = snippets("tensors-yaml")
    shown = yaml.safe_load(declaration)
    with open(ModelRepository().get("scorer").folder / "model.yaml", encoding="utf-8") as handle:
        bundled = yaml.safe_load(handle)
    assert shown["inputs"]["tensors"] == bundled["inputs"]["tensors"]
    assert shown["outputs"] == bundled["outputs"]
    onnx, pt2 = tmp_path / "pooler.onnx", tmp_path / "pooler.pt2"
    make_onnx(onnx)
    digest = make_pt2(pt2)
    ((_, serve),) = snippets("tensors-serve")
    replacements = {
        "/path/to/pooler.onnx": str(onnx),
        "/path/to/pooler.pt2": str(pt2),
        "<sha256sum of pooler.pt2>": digest,
    }
    command, env = server_command(serve, replacements)
    with ServerUnderTest(command, "/health/ready", env=env) as server:
        ((_, call),) = snippets("tensors-call")
        output = run_shell(call, server.port)
        metadata, answer = (json.loads(line) for line in output.splitlines()[:2])
        assert [t["name"] for t in metadata["inputs"]] == ["tokens", "weights"]
        assert [o["count"] for o in answer["outputs"]] == [2, 1]
        ((_, client),) = snippets("tensors-client")
        assert printed_by(client, server.port).strip() == "(2, 4) [2 3]"  # as the snippet's comment says
