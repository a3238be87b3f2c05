"""Settings: YAML + SERVICE_* environment, validated before anything starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from service.settings import ConfigError, load_settings
from tests.support import ROOT


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_defaults_are_safe() -> None:
    settings = load_settings()
    assert settings.host == "127.0.0.1"
    assert settings.port == 8000
    assert settings.serve == ["minilm"]
    assert settings.accelerator == "cpu"
    assert settings.grad_mode == "no_grad"
    assert settings.shutdown_delay == 0  # `make run` stops at once; deployments set it


def test_environment_overrides_yaml_with_nesting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(tmp_path, "port: 9000\nserve: [minilm, reference]\nmodels:\n  minilm:\n    workers: 1\n")
    monkeypatch.setenv("SERVICE_PORT", "9100")
    monkeypatch.setenv("SERVICE_MODELS__MINILM__WORKERS", "2")
    monkeypatch.setenv("SERVICE_MODELS__MINILM__MAX_BATCH_TOKENS", "2048")
    monkeypatch.setenv("SERVICE_GRAD_MODE", "inference_mode")
    settings = load_settings(config)
    assert settings.port == 9100
    assert settings.models["minilm"].workers == 2
    assert settings.models["minilm"].max_batch_tokens == 2048
    assert settings.grad_mode == "inference_mode"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("port: 80\n", "port"),
        ("grad_mode: enable_grad\n", "grad_mode"),
        ("host: example.com\n", "host"),
        ("colour: blue\n", "colour"),
        ("serve: [minilm]\nmodels:\n  reference: {workers: 2}\n", "not served"),
        ("request_timeout: 500\nmax_request_timeout: 100\n", "request_timeout"),
        ("shutdown_delay: -1\n", "shutdown_delay"),
        ("shutdown_delay: 301\n", "shutdown_delay"),
        ("[1, 2", "not valid YAML"),
        ("- a list\n", "mapping"),
    ],
)
def test_bad_values_are_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_settings(write(tmp_path, text))
    assert "\n" not in str(caught.value)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_serve_with_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    result = run_cli("serve", "--config", str(write(tmp_path, "port: 80\n")))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("service: error: invalid configuration: port")


def test_serve_unknown_model_exits_2_before_any_worker(tmp_path: Path) -> None:
    result = run_cli("serve", env={"SERVICE_SERVE": '["nope"]'})
    assert result.returncode == 2
    assert "unknown model 'nope'" in result.stderr
    assert "inference-worker" not in result.stderr + result.stdout


def test_models_command_lists_the_repository() -> None:
    result = run_cli("models")
    assert result.returncode == 0
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert {"minilm", "reference"} <= set(names)
