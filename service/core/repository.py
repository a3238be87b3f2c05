"""The model repository: one folder per model under ``models/``, each with a ``model.yaml``
declaration and a ``model.py`` that turns verified weights into a :class:`Model`.

The server knows models only through this module. Nothing a request carries ever names a
file, a class or a URL: only folders that exist on disk at start-up can be loaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# how an InferenceSession switches autograd off (defined here, torch-free, for settings and the CLI)
GradMode = Literal["no_grad", "inference_mode"]
GRAD_MODES: tuple[GradMode, ...] = ("no_grad", "inference_mode")

DEFAULT_REPOSITORY = Path(__file__).resolve().parents[2] / "models"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_TENSOR_NAME = r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$"
_CHUNK = 1 << 20


class ModelError(Exception):
    """A model cannot be declared or loaded; the message says which model and why."""


class InputSpec(BaseModel):
    """What one request may carry: a list of ``min_items``..``max_items`` inputs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["text", "vector"]
    min_items: int = Field(1, ge=1)
    max_items: int = Field(256, ge=1, le=100_000)
    # text: the most characters one input may have (longer is a 422, not a truncation)
    max_length: int = Field(10_000, ge=1)
    # vector: the exact number of floats each input must have
    dim: int | None = Field(None, ge=1)
    # one input the worker warms the model up with before it is ready (default: derived from the
    # kind: a short sentence, or a vector of zeros); declare one if the model checks its inputs
    example: str | list[float] | None = None

    @model_validator(mode="after")
    def _check(self) -> InputSpec:
        if self.min_items > self.max_items:
            raise ValueError("min_items must not exceed max_items")
        if self.kind == "vector" and self.dim is None:
            raise ValueError("a vector input needs 'dim'")
        if self.example is not None and not self._fits(self.example):
            raise ValueError(f"'example' must be one valid {self.kind} input")
        return self

    def _fits(self, value: str | list[float]) -> bool:
        if self.kind == "text":
            return isinstance(value, str) and 0 < len(value) <= self.max_length
        return isinstance(value, list) and len(value) == self.dim


class OutputSpec(BaseModel):
    """What one input becomes: ``size`` floats; the sizes an OpenAI ``dimensions`` parameter may ask for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # floats per output; None = not declared (v2 metadata then says -1, ``dimensions`` is refused)
    size: int | None = Field(None, ge=1)
    # smaller sizes the model was trained to be cut to (Matryoshka): the first d floats, L2-renormalised.
    # Empty: only ``dimensions == size`` is accepted.
    dimensions: tuple[int, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> OutputSpec:
        if self.dimensions and self.size is None:
            raise ValueError("'dimensions' needs 'size'")
        if self.size is not None and any(not 1 <= d < self.size for d in self.dimensions):
            raise ValueError(f"each of 'dimensions' must be between 1 and size - 1 ({self.size - 1})")
        if len(set(self.dimensions)) != len(self.dimensions):
            raise ValueError("'dimensions' must not repeat a size")
        return self


class TensorNames(BaseModel):
    """The names of the input and output tensors in the Open Inference Protocol (v2)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: str = Field("INPUT", pattern=_TENSOR_NAME)
    output: str = Field("OUTPUT", pattern=_TENSOR_NAME)

    @model_validator(mode="after")
    def _distinct(self) -> TensorNames:
        if self.input == self.output:
            raise ValueError("the input and output tensors need different names")
        return self


class WeightsSpec(BaseModel):
    """Where the weights live: a file in the model's folder, or a folder inside an installed package."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # a file or folder relative to the model's folder ...
    path: str | None = None
    # ... or a folder inside an installed distribution, found without importing its code
    package: str | None = None
    package_path: str = ""
    # the file whose sha256 is checked before anything is loaded (relative to the resolved location)
    checksum_file: str | None = None
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @model_validator(mode="after")
    def _one_source(self) -> WeightsSpec:
        if (self.path is None) == (self.package is None):
            raise ValueError("weights need exactly one of 'path' or 'package'")
        for part in (self.path, self.package_path, self.checksum_file):
            if part and (Path(part).is_absolute() or ".." in Path(part).parts):
                raise ValueError(f"weights paths must stay inside their folder: {part!r}")
        return self


class ModelSpec(BaseModel):
    """The declaration in ``models/<name>/model.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: str
    task: str
    description: str = ""
    weights: WeightsSpec
    inputs: InputSpec
    outputs: OutputSpec = OutputSpec()
    tensors: TensorNames = TensorNames()
    max_batch_size: int = Field(32, ge=1, le=4096)  # inputs per forward
    # padded cost per forward (longest input's cost × inputs; tokens for a text model); None: no budget
    max_batch_tokens: int | None = Field(None, ge=1, le=1 << 24)
    batch_timeout: float = Field(0.005, ge=0.0, le=10.0)  # seconds to wait for more requests
    workers: int = Field(1, ge=1, le=64)  # inference worker processes
    max_queue_size: int = Field(256, ge=1)  # requests accepted and not yet answered
    options: dict[str, Any] = Field(default_factory=dict)  # model-specific settings for model.py

    @model_validator(mode="after")
    def _check_name(self) -> ModelSpec:
        if not _NAME.match(self.name):
            raise ValueError(f"model name {self.name!r} must match {_NAME.pattern}")
        return self


@runtime_checkable
class Model(Protocol):
    """What ``models/<name>/model.py``'s ``load()`` returns. No I/O, no HTTP.

    It may also implement :class:`CostedModel`'s ``costs``; without it every input costs 1.
    """

    module: Any  # the torch.nn.Module, put in eval mode by load()

    def preprocess(self, inputs: Sequence[Any]) -> Any: ...

    def forward(self, batch: Any) -> Any: ...

    def postprocess(self, output: Any) -> list[Any]: ...


@runtime_checkable
class CostedModel(Protocol):
    """A model whose inputs differ in cost (optional): the batcher orders inputs by cost and
    cuts forwards under ``max_batch_tokens``; text models also report it as token usage."""

    def costs(self, inputs: Sequence[Any]) -> list[int]:
        """One positive int per input, cheaply: for a text model its tokens after truncation,
        special tokens included (what one row of a forward computes before padding)."""
        ...


@dataclass(frozen=True)
class ModelEntry:
    """A discovered model folder and its validated declaration."""

    spec: ModelSpec
    folder: Path

    def weights_location(self) -> Path:
        """The file or folder the weights live in (not verified yet)."""
        weights = self.spec.weights
        if weights.path is not None:
            return self.folder / weights.path
        assert weights.package is not None
        found = importlib.util.find_spec(weights.package)
        if found is None or not found.submodule_search_locations:
            raise ModelError(
                f"model {self.spec.name!r}: weights package {weights.package!r} is not installed "
                f"(run 'make install')"
            )
        return Path(next(iter(found.submodule_search_locations))) / weights.package_path

    def verified_weights(self) -> Path:
        """Resolve the weights and check their sha256; raise :class:`ModelError` on any mismatch."""
        location = self.weights_location()
        target = location / self.spec.weights.checksum_file if self.spec.weights.checksum_file else location
        if not target.is_file():
            raise ModelError(f"model {self.spec.name!r}: weights file {target} is missing")
        digest = sha256_file(target)
        if digest != self.spec.weights.sha256:
            raise ModelError(
                f"model {self.spec.name!r}: checksum mismatch for {target}: "
                f"expected sha256 {self.spec.weights.sha256}, got {digest}; refusing to load"
            )
        return location

    def _import_code(self) -> Any:
        """Import ``model.py`` from this folder by path (any repository location works)."""
        name = _module_name(self.folder)
        if name in sys.modules:
            return sys.modules[name]
        location = importlib.util.spec_from_file_location(name, self.folder / "model.py")
        if location is None or location.loader is None:
            raise ModelError(f"model {self.spec.name!r}: cannot import {self.folder}/model.py")
        module = importlib.util.module_from_spec(location)
        sys.modules[name] = module
        try:
            location.loader.exec_module(module)
        except Exception:
            del sys.modules[name]
            raise
        return module

    def load(self, device: str, **overrides: Any) -> Model:
        """Verify the weights, import ``model.py`` and call its ``load(spec, weights, device)``."""
        weights = self.verified_weights()
        module = self._import_code()
        loader = getattr(module, "load", None)
        if loader is None:
            raise ModelError(f"model {self.spec.name!r}: {self.folder}/model.py defines no load()")
        model = loader(self.spec, weights, device, **overrides)
        if not isinstance(model, Model):
            raise ModelError(f"model {self.spec.name!r}: load() returned {type(model).__name__}, not a Model")
        return model


def _module_name(folder: Path) -> str:
    digest = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:12]
    return f"_inference_models.{folder.name}_{digest}.model"


def sha256_file(path: Path) -> str:
    """The sha256 of a file, read in bounded chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class ModelRepository:
    """The models found under one folder: ``<root>/<name>/model.yaml`` + ``model.py``."""

    def __init__(self, root: Path = DEFAULT_REPOSITORY) -> None:
        self.root = Path(root)
        self._entries = self._discover()

    def _discover(self) -> dict[str, ModelEntry]:
        if not self.root.is_dir():
            raise ModelError(f"model repository {self.root} is not a folder")
        entries: dict[str, ModelEntry] = {}
        for declaration in sorted(self.root.glob("*/model.yaml")):
            folder = declaration.parent
            try:
                with open(declaration, encoding="utf-8") as handle:
                    raw = yaml.safe_load(handle)
                spec = ModelSpec.model_validate(raw)
            except (yaml.YAMLError, ValidationError) as exc:
                first = str(exc).splitlines()
                raise ModelError(f"{declaration}: invalid declaration: {' '.join(first[:3])}") from exc
            if spec.name != folder.name:
                raise ModelError(
                    f"{declaration}: name {spec.name!r} must equal its folder name {folder.name!r}"
                )
            if not (folder / "model.py").is_file():
                raise ModelError(f"{folder}: has model.yaml but no model.py")
            entries[spec.name] = ModelEntry(spec=spec, folder=folder)
        return entries

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str) -> ModelEntry:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(self._entries) or "none"
            raise ModelError(f"unknown model {name!r} (the repository at {self.root} has: {known})") from None
