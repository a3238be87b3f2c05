"""Service settings: ``config/default.yaml`` overlaid by ``SERVICE_*`` environment variables
(``__`` separates nested keys, e.g. ``SERVICE_MODELS__MINILM__WORKERS=2``).

Built once in ``main()`` and passed down; nothing reads settings at import time.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from service.core.repository import DEFAULT_REPOSITORY, Backend

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "default.yaml"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/inference-service``, else ``~/.cache/inference-service``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "inference-service"


class ModelOverrides(BaseModel):
    """Per-model operational overrides of what ``model.yaml`` declares."""

    model_config = ConfigDict(extra="forbid")

    workers: int | None = Field(None, ge=1, le=64)
    max_batch_size: int | None = Field(None, ge=1, le=4096)
    max_batch_tokens: int | None = Field(None, ge=1, le=1 << 24)
    batch_timeout: float | None = Field(None, ge=0.0, le=10.0)
    max_queue_size: int | None = Field(None, ge=1)
    backend: Backend | None = None  # huggingface runtime: auto, torch, torch-bf16, onnx, onnx-int8


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SERVICE_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    host: str = "127.0.0.1"  # loopback unless deliberately exposed
    port: int = Field(8000, ge=1024, le=65535)
    # the models to serve, by folder name in the repository
    serve: list[str] = Field(default_factory=lambda: ["minilm"], min_length=1)
    repository: Path = DEFAULT_REPOSITORY
    # backend exports and tuning decisions (python -m service tune), made once and reused
    cache_dir: Path = Field(default_factory=default_cache_dir)
    # Hugging Face folders served as models, by name (``serve --model NAME=PATH``); each is also in
    # ``serve``. Their task is inferred from the folder unless ``folder_tasks`` names one, and their
    # manifest sha256 is computed and logged at start unless ``folder_sha256`` pins it.
    folders: dict[str, Path] = Field(default_factory=dict)
    folder_tasks: dict[str, str] = Field(default_factory=dict)
    folder_sha256: dict[str, str] = Field(default_factory=dict)
    models: dict[str, ModelOverrides] = Field(default_factory=dict)
    accelerator: Literal["cpu", "cuda"] = "cpu"  # explicit: LitServe's "auto" shells out to nvidia-smi
    grad_mode: Literal["no_grad", "inference_mode"] = "no_grad"
    # the cores the service sizes its torch threads for; 0 = the cores this process may run on.
    # In a container os.cpu_count() sees the node's cores: set it from the CPU limit.
    cpus: int = Field(0, ge=0, le=1024)
    # 0 = share the cores (``cpus``) between all inference workers, adaptively (service.worker.threads)
    torch_threads: int = Field(0, ge=0, le=256)
    # torch's inter-op pool per worker (torch.set_num_interop_threads); 0 = torch's default
    torch_interop_threads: int = Field(0, ge=0, le=256)
    num_api_servers: int = Field(1, ge=1, le=32)
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)  # JSON request bodies
    # seconds a client may pause while sending a body (408 beyond): a slow sender cannot hold a slot
    body_timeout: float = Field(30.0, gt=0.0, le=3600.0)
    # seconds from arrival to answer (queue + compute); clients may ask for less with X-Request-Timeout
    request_timeout: float = Field(30.0, gt=0.0, le=3600.0)
    max_request_timeout: float = Field(120.0, gt=0.0, le=3600.0)
    shutdown_grace: float = Field(25.0, ge=0.0, le=600.0)  # seconds to drain on SIGTERM/SIGINT
    # seconds after SIGTERM during which readiness answers 503 but requests are still served, so
    # load balancers and endpoint controllers stop sending traffic before the drain refuses any
    shutdown_delay: float = Field(0.0, ge=0.0, le=300.0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = False  # one uvicorn line per request costs ~0.5 ms at this scale
    metrics: bool = True  # false turns every metric into a no-op (to measure their cost)
    # file endpoint
    spool_dir: Path | None = None  # None: a folder under the system temp dir
    max_file_bytes: int = Field(2 * 1024**3, ge=1024)
    max_line_bytes: int = Field(1024 * 1024, ge=64)
    # security
    api_keys: list[SecretStr] = Field(default_factory=list)
    api_keys_file: Path | None = None
    metrics_api_key: SecretStr | None = None

    @field_validator("host")
    @classmethod
    def _valid_host(cls, value: str) -> str:
        # LitServe binds only these; anything else would fail after the workers started
        if value not in ("127.0.0.1", "0.0.0.0", "::"):
            raise ValueError(f"host must be 127.0.0.1, 0.0.0.0 or ::, got {value!r}")
        return value

    @field_validator("repository")
    @classmethod
    def _repository_exists(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError(f"model repository {value} is not a folder")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.request_timeout > self.max_request_timeout:
            raise ValueError("request_timeout must not exceed max_request_timeout")
        if len(set(self.serve)) != len(self.serve):
            raise ValueError(f"serve lists a model twice: {self.serve}")
        unknown = sorted(set(self.models) - set(self.serve))
        if unknown:
            raise ValueError(f"models has overrides for models that are not served: {unknown}")
        return self

    def all_api_keys(self) -> list[str]:
        """Keys from config plus one per non-blank line of ``api_keys_file``."""
        keys = [key.get_secret_value() for key in self.api_keys]
        if self.api_keys_file is not None:
            with open(self.api_keys_file, encoding="utf-8") as handle:
                keys.extend(line.strip() for line in handle if line.strip() and not line.startswith("#"))
        return [key for key in keys if key]

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # environment beats the YAML file, which arrives as init values
        return env_settings, init_settings


class ConfigError(Exception):
    """The configuration is invalid; the message is one line that says what and where."""


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Read the YAML file (default ``config/default.yaml``), apply env and explicit overrides, validate."""
    from pydantic import ValidationError

    source = path or DEFAULT_CONFIG
    try:
        with open(source, encoding="utf-8") as handle:
            raw = yaml.safe_load(handle) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {source} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {source} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {source} must hold a mapping at the top level")
    try:
        settings = Settings(**raw)
        if overrides:
            settings = Settings(**{**raw, **{k: v for k, v in overrides.items() if v is not None}})
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        env_hint = "SERVICE_" + "__".join(str(part).upper() for part in first["loc"])
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(
            f"invalid configuration: {where}: {first['msg']} (from {source} or {env_hint}){more}"
        ) from None
    return settings


def cores(settings: Settings) -> int:
    """The cores the service sizes its threads for: ``cpus`` when set, else :func:`cpu_count`."""
    return settings.cpus or cpu_count()


def cpu_count() -> int:
    """Cores this process may run on (respects affinity and cgroup-pinned CPU sets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    """Log to stderr at ``level``: the command line's process, and each inference worker (LitServe
    spawns them, so they start with Python's default of warnings only, without a format)."""
    logging.basicConfig(format=LOG_FORMAT)
    logging.getLogger().setLevel(level.upper())
