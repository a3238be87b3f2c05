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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from service.codecs import INPUT_CODECS, InputCodec, input_codec
from service.codecs.outputs import OUTPUT_CODECS, OutputCodec
from service.codecs.tensors import DEFAULT_MAX_ELEMENTS, TensorSpec, check_tensor_specs
from service.core.programs import RUNTIMES, ProgramError, merge_declared, signature, verified_bytes

# how an InferenceSession switches autograd off (defined here, torch-free, for settings and the CLI)
GradMode = Literal["no_grad", "inference_mode"]
GRAD_MODES: tuple[GradMode, ...] = ("no_grad", "inference_mode")

# the huggingface runtime's tasks, and the input kind each takes
HUGGINGFACE_TASKS = {
    "feature-extraction": "text",
    "rerank": "text_pair",
    "text-classification": "text",
    "image-classification": "image",
}
DEFAULT_REPOSITORY = Path(__file__).resolve().parents[2] / "models"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_TENSOR_NAME = r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$"
_CHUNK = 1 << 20


class ModelError(Exception):
    """A model cannot be declared or loaded; the message says which model and why."""


class InputSpec(BaseModel):
    """What one request may carry: a list of ``min_items``..``max_items`` inputs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str  # one of service.codecs.INPUT_CODECS: the codec knows everything kind-specific
    min_items: int = Field(1, ge=1)
    max_items: int = Field(256, ge=1, le=100_000)
    # text: the most characters one input may have (longer is a 422, not a truncation)
    max_length: int = Field(10_000, ge=1)
    # vector: the exact number of floats each input must have
    dim: int | None = Field(None, ge=1)
    # image: the most pixels (width x height, read from the header before decoding) and encoded
    # bytes one image may have (larger is a 413); None: 40 MP, 6 MiB (service.codecs.image)
    max_pixels: int | None = Field(None, ge=1)
    max_bytes: int | None = Field(None, ge=1)
    # tensors: each named tensor (datatype, shape batch first), and the most elements one input's
    # tensor may have where free dimensions leave it open (more: 413; None: 1,048,576)
    tensors: tuple[TensorSpec, ...] = ()
    max_elements: int | None = Field(None, ge=1, le=1 << 28)
    # one input the worker warms the model up with before it is ready (default: the codec's own
    # example: a short sentence, a vector of zeros); declare one if the model checks its inputs
    example: Any = None

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        if kind not in INPUT_CODECS:
            raise ValueError(f"Input should be {' or '.join(repr(k) for k in INPUT_CODECS)}")
        return kind

    @model_validator(mode="after")
    def _check(self) -> InputSpec:
        if self.min_items > self.max_items:
            raise ValueError("min_items must not exceed max_items")
        if self.kind != "image" and (self.max_pixels is not None or self.max_bytes is not None):
            raise ValueError("'max_pixels' and 'max_bytes' are limits of image inputs")
        if self.kind != "tensors" and (self.tensors or self.max_elements is not None):
            raise ValueError("'tensors' and 'max_elements' declare the inputs of kind 'tensors'")
        self.codec.check_spec(self)
        if self.example is not None and not self.codec.fits(self, self.example):
            raise ValueError(f"'example' must be one valid {self.kind} input")
        return self

    @property
    def element_limit(self) -> int:
        """tensors: the most elements of one input's tensor where free dimensions leave it open."""
        return self.max_elements or DEFAULT_MAX_ELEMENTS

    @property
    def codec(self) -> InputCodec:
        """Everything this kind of input needs (validation, v2 tensors, files, warm-up)."""
        return input_codec(self.kind)


class OutputSpec(BaseModel):
    """What one input becomes: ``size`` floats; the sizes an OpenAI ``dimensions`` parameter may ask for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # floats per output; None = not declared (v2 metadata then says -1, ``dimensions`` is refused)
    size: int | None = Field(None, ge=1)
    # smaller sizes the model was trained to be cut to (Matryoshka): the first d floats, L2-renormalised.
    # Empty: only ``dimensions == size`` is accepted.
    dimensions: tuple[int, ...] = ()
    # what the floats mean (service.codecs.outputs): embedding | relevance | classification;
    # tensors: several named tensors of any datatype (service.codecs.tensors), declared in ``tensors``
    kind: Literal["embedding", "relevance", "classification", "tensors"] = "embedding"
    tensors: tuple[TensorSpec, ...] = ()
    # classification: one label per output float, in the model's order (its id2label)
    labels: tuple[str, ...] = ()
    # classification: softmax (one label per input) or sigmoid (multi-label), from the model's problem_type
    activation: Literal["softmax", "sigmoid"] = "softmax"

    @property
    def codec(self) -> OutputCodec:
        return OUTPUT_CODECS[self.kind]

    @model_validator(mode="after")
    def _check(self) -> OutputSpec:
        if self.kind == "classification" and (not self.labels or self.size != len(self.labels)):
            raise ValueError("a classification output needs 'labels', one per output ('size' floats)")
        if self.dimensions and self.size is None:
            raise ValueError("'dimensions' needs 'size'")
        if self.size is not None and any(not 1 <= d < self.size for d in self.dimensions):
            raise ValueError(f"each of 'dimensions' must be between 1 and size - 1 ({self.size - 1})")
        if len(set(self.dimensions)) != len(self.dimensions):
            raise ValueError("'dimensions' must not repeat a size")
        if self.kind == "tensors":
            check_tensor_specs(self.tensors, "output")
        elif self.tensors:
            raise ValueError("'tensors' declares the outputs of kind 'tensors'")
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


PROGRAM_RUNTIMES = ("onnx", "torch-export")
BACKEND_NAMES = ("auto", "torch", "torch-bf16", "torch-bf16-autocast", "onnx", "onnx-int8")
Backend = Literal["auto", "torch", "torch-bf16", "torch-bf16-autocast", "onnx", "onnx-int8"]


class GateSpec(BaseModel):
    """The accuracy gate a backend other than ``torch`` must pass on the calibration set
    (service.worker.gate); loosen it here explicitly to serve e.g. ``onnx-int8``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_cosine: float = Field(0.9999, ge=-1.0, le=1.0)  # embeddings: the smallest cosine to fp32
    min_neighbour_overlap: float = Field(0.99, ge=0.0, le=1.0)  # embeddings: mean top-10 overlap
    max_score_difference: float = Field(1e-3, ge=0.0)  # classification and rerank scores


class ModelSpec(BaseModel):
    """The declaration in ``models/<name>/model.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: str
    task: str
    description: str = ""
    # python: model.py's load() builds the model; huggingface: a Hugging Face folder (the weights
    # location) served for ``task`` with no Python of the user's own (service.worker.huggingface);
    # onnx / torch-export: a .onnx file or a torch.export .pt2 program (the weights file), its
    # tensors read from it (service.core.programs)
    runtime: Literal["python", "huggingface", "onnx", "torch-export"] = "python"
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
    # huggingface runtime: what runs the network (service.worker.backends); auto: this machine's
    # tuning decision (python -m service tune NAME), torch until there is one
    backend: Backend = "auto"
    gate: GateSpec = GateSpec()

    @model_validator(mode="before")
    @classmethod
    def _program_tensors(cls, raw: Any) -> Any:
        """A program's inputs and outputs are its tensors, read from it: both may be left out."""
        if isinstance(raw, dict) and raw.get("runtime") in PROGRAM_RUNTIMES:
            raw = dict(raw)
            for side in ("inputs", "outputs"):
                declared = raw.get(side) or {}
                if isinstance(declared, dict):  # limits alone (max_items, ...) keep kind tensors
                    raw[side] = {"kind": "tensors", **declared}
        return raw

    @model_validator(mode="after")
    def _check_name(self) -> ModelSpec:
        if not _NAME.match(self.name):
            raise ValueError(f"model name {self.name!r} must match {_NAME.pattern}")
        if self.runtime == "huggingface":
            kind = HUGGINGFACE_TASKS.get(self.task)
            if kind is None:
                raise ValueError(
                    f"the huggingface runtime serves tasks {sorted(HUGGINGFACE_TASKS)}, not {self.task!r}"
                )
            if self.inputs.kind != kind:
                raise ValueError(f"task {self.task} takes inputs of kind {kind!r}, not {self.inputs.kind!r}")
        if self.runtime in PROGRAM_RUNTIMES:
            if self.inputs.kind != "tensors" or self.outputs.kind != "tensors":
                raise ValueError(
                    f"a {self.runtime} program takes and gives tensors: inputs and outputs kind 'tensors'"
                )
            if self.weights.path is None or self.weights.checksum_file is not None:
                raise ValueError(f"a {self.runtime} program is one file: weights.path and its sha256")
        elif (self.inputs.kind == "tensors" and not self.inputs.tensors) or (
            self.outputs.kind == "tensors" and not self.outputs.tensors
        ):
            raise ValueError("a model of kind 'tensors' declares each tensor (name, datatype, shape)")
        if self.runtime != "huggingface" and self.backend not in ("auto", "torch"):
            raise ValueError(f"backend {self.backend} is for the huggingface runtime")
        if self.inputs.kind == "image" and self.backend not in ("auto", "torch"):
            raise ValueError(f"backend {self.backend}: image models run on torch (the gate's sets are text)")
        if self.runtime == "huggingface" and self.weights.checksum_file is not None:
            raise ValueError(
                "a huggingface folder is checksummed whole (sha256 of its manifest): drop checksum_file"
            )
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
        if target.is_dir():  # a whole folder (the huggingface runtime trusts every file in it)
            digest = sha256_folder(target)
        elif not target.is_file():
            raise ModelError(f"model {self.spec.name!r}: weights file {target} is missing")
        else:
            digest = sha256_file(target)
        if digest != self.spec.weights.sha256:
            raise ModelError(
                f"model {self.spec.name!r}: checksum mismatch for {target}: "
                f"expected sha256 {self.spec.weights.sha256}, got {digest}; refusing to load"
            )
        return location

    def program_bytes(self) -> bytes:
        """A program's file, read once and checked against its pinned sha256 (ModelError otherwise)."""
        try:
            return verified_bytes(self.weights_location(), self.spec.weights.sha256)
        except ProgramError as exc:
            raise ModelError(f"model {self.spec.name!r}: {exc}") from None

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

    def load(self, device: str, cache_dir: Path | None = None, **overrides: Any) -> Model:
        """Verify the weights, then build the model: the huggingface runtime from the folder (on
        its backend, exports and decisions under ``cache_dir``), or ``model.py``'s
        ``load(spec, weights, device)``."""
        if self.spec.runtime in PROGRAM_RUNTIMES:
            from service.worker import programs  # torch / onnxruntime: imported in the worker only

            data = self.program_bytes()
            program: Model = programs.load(self.spec, data, device)
            return program
        weights = self.verified_weights()
        if self.spec.runtime == "huggingface":
            from service.worker import huggingface  # torch: imported in the worker only

            served: Model = huggingface.load(self.spec, weights, device, cache_dir)
            return served
        module = self._import_code()
        loader = getattr(module, "load", None)
        if loader is None:
            raise ModelError(f"model {self.spec.name!r}: {self.folder}/model.py defines no load()")
        model = loader(self.spec, weights, device, **overrides)
        if not isinstance(model, Model):
            raise ModelError(f"model {self.spec.name!r}: load() returned {type(model).__name__}, not a Model")
        if self.spec.outputs.kind == "tensors":  # every answer checked against the declared tensors
            from service.worker.programs import CheckedTensors

            return CheckedTensors(self.spec, model)
        return model


def with_program_tensors(entry: ModelEntry, data: bytes | None = None) -> ModelEntry:
    """A program's entry with its tensors read from the program (its checksum checked first,
    unless ``data`` are its bytes, just read and hashed); others as they are. ModelError naming
    the model when the program cannot be served."""
    spec = entry.spec
    if spec.runtime not in PROGRAM_RUNTIMES:
        return entry
    try:
        inputs, outputs = signature(spec.runtime, entry.program_bytes() if data is None else data)
        inputs = merge_declared(spec.inputs.tensors, inputs, "input")
        outputs = merge_declared(spec.outputs.tensors, outputs, "output")
    except ProgramError as exc:
        raise ModelError(f"model {spec.name!r}: {exc}") from None
    resolved = spec.model_copy(
        update={
            "inputs": spec.inputs.model_copy(update={"tensors": inputs}),
            "outputs": spec.outputs.model_copy(update={"tensors": outputs}),
        }
    )
    return ModelEntry(spec=resolved, folder=entry.folder)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a model folder's file (config.json, modules.json, ...)."""
    import json

    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    if not isinstance(data, dict):
        raise ModelError(f"{path}: not a JSON object")
    return data


def refuse_remote_code(name: str, folder: Path, config: dict[str, Any]) -> None:
    """A folder whose ``config`` (its config.json) maps classes to its own code (``auto_map``) needs
    ``trust_remote_code``: code from the folder would run. Refused."""
    if config.get("auto_map"):
        raise ModelError(
            f"model {name!r}: {folder} needs trust_remote_code (its config.json maps classes to code "
            "in the folder); the huggingface runtime runs no code from a model folder"
        )


def classifier_labels(config: dict[str, Any]) -> tuple[tuple[str, ...], Literal["softmax", "sigmoid"]]:
    """A sequence classifier's labels in id order (its ``id2label``) and its activation (sigmoid
    when its ``problem_type`` is multi-label), from its config.json."""
    id2label = {int(k): str(v) for k, v in (config.get("id2label") or {}).items()}
    count = len(id2label) or int(config.get("num_labels", 2))
    labels = tuple(id2label.get(i, f"LABEL_{i}") for i in range(count))
    multi = config.get("problem_type") == "multi_label_classification"
    return labels, "sigmoid" if multi else "softmax"


@dataclass(frozen=True)
class FolderKind:
    """What a Hugging Face folder is, read from its files (as TEI and KServe infer it)."""

    task: str
    size: int | None  # floats per output when known (an encoder's hidden size)


def folder_outputs(task: str, kind: FolderKind, config: dict[str, Any]) -> OutputSpec:
    """What a folder's model answers, for ``task``."""
    if task == "rerank":
        return OutputSpec(kind="relevance", size=1)
    if task in ("text-classification", "image-classification"):
        labels, activation = classifier_labels(config)
        return OutputSpec(kind="classification", size=len(labels), labels=labels, activation=activation)
    return OutputSpec(size=kind.size)


def infer_task(folder: Path, config: dict[str, Any]) -> FolderKind:
    """A sentence-transformers folder or a bare encoder is ``feature-extraction``; a
    ``*ForSequenceClassification`` with one label ``rerank``, with more ``text-classification``;
    ``*ForImageClassification`` ``image-classification``."""
    architectures = [str(a) for a in config.get("architectures") or []]
    size = config.get("hidden_size") if isinstance(config.get("hidden_size"), int) else None
    if (folder / "modules.json").is_file():
        return FolderKind("feature-extraction", size)
    for architecture in architectures:
        if architecture.endswith("ForSequenceClassification"):
            labels, _ = classifier_labels(config)
            return FolderKind("rerank" if len(labels) == 1 else "text-classification", len(labels))
        if architecture.endswith("ForImageClassification"):
            return FolderKind("image-classification", None)
    if not architectures or any(a.endswith("Model") for a in architectures):
        return FolderKind("feature-extraction", size)
    raise ModelError(f"{folder}: cannot tell the task of architectures {architectures}; pass --task")


def _module_name(folder: Path) -> str:
    digest = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:12]
    return f"_inference_models.{folder.name}_{digest}.model"


def folder_manifest(folder: Path) -> list[tuple[str, str]]:
    """(relative path, sha256) of every file under ``folder``, sorted; a symlink is refused (it
    could point anywhere)."""
    entries = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if "__pycache__" in path.parts:
            continue
        if path.is_symlink():
            raise ModelError(
                f"{folder}: {relative} is a symbolic link; a model folder must hold its own files"
            )
        if path.is_file():
            entries.append((relative, sha256_file(path)))
    return entries


def sha256_folder(folder: Path) -> str:
    """The sha256 of a folder's manifest (``<sha256>  <relative path>`` lines, sorted by path):
    changing, adding or removing any file changes it."""
    manifest = "".join(f"{digest}  {relative}\n" for relative, digest in folder_manifest(folder))
    return hashlib.sha256(manifest.encode()).hexdigest()


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
        self._resolved: set[str] = set()  # programs whose tensors were read

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
            if spec.runtime == "python" and not (folder / "model.py").is_file():
                raise ModelError(f"{folder}: has model.yaml but no model.py")
            entries[spec.name] = ModelEntry(spec=spec, folder=folder)  # a program's tensors: read by get()
        return entries

    def add_folder(
        self, name: str, folder: Path, task: str | None = None, sha256: str | None = None
    ) -> ModelEntry:
        """Serve a Hugging Face folder as model ``name`` (the huggingface runtime), its task
        inferred from the folder unless given. Without a pinned ``sha256`` the folder's manifest
        digest is computed now (and logged by the caller), so it cannot change under the workers."""
        folder = Path(folder).resolve()
        if name in self._entries:
            raise ModelError(f"model {name!r} is already in the repository {self.root}")
        if folder.is_file() and folder.suffix in RUNTIMES:
            return self.add_program(name, folder, task, sha256)
        if not (folder / "config.json").is_file():
            raise ModelError(f"{folder}: not a Hugging Face model folder (no config.json)")
        config = read_json(folder / "config.json")
        refuse_remote_code(name, folder, config)
        inferred = infer_task(folder, config)
        task = task or inferred.task
        if task not in HUGGINGFACE_TASKS:
            raise ModelError(
                f"model {name!r}: {folder} is a {task} model; the huggingface runtime serves "
                f"{', '.join(sorted(HUGGINGFACE_TASKS))} (pass --task if the guess is wrong)"
            )
        digest = sha256 or sha256_folder(folder)
        image = HUGGINGFACE_TASKS[task] == "image"
        try:
            spec = ModelSpec(
                name=name,
                version="folder",
                task=task,
                description=f"served from {folder}",
                runtime="huggingface",
                weights=WeightsSpec(path=".", sha256=digest),
                inputs=InputSpec(kind=HUGGINGFACE_TASKS[task], max_items=64 if image else 256),
                outputs=folder_outputs(task, inferred, config),
                max_batch_size=16 if image else 32,
                workers=2 if image else 1,  # images: one worker decodes while the other computes
                max_batch_tokens=None if image else 8192,  # an image costs 1: the processor fixes its size
                batch_timeout=0.005,
            )
        except ValidationError as exc:
            first = str(exc).splitlines()
            raise ModelError(f"model {name!r} from {folder}: {' '.join(first[:3])}") from None
        entry = ModelEntry(spec=spec, folder=folder)
        self._entries[name] = entry
        return entry

    def add_program(self, name: str, path: Path, task: str | None, sha256: str | None) -> ModelEntry:
        """Serve a ``.onnx`` file or a ``.pt2`` program as model ``name``, its tensors read from it.
        A ``.pt2`` is code: it needs its ``sha256`` pinned. A ``.onnx`` without one is hashed now."""
        runtime = RUNTIMES[path.suffix]
        data = None
        if sha256 is None:
            if runtime == "torch-export":
                raise ModelError(
                    f"model {name!r}: {path} is a torch.export program, which is code: pin its checksum "
                    f"with --sha256 {name}=HEX (sha256sum {path.name}) to serve it"
                )
            with open(path, "rb") as handle:  # read once: hashed here, its tensors read from the same bytes
                data = handle.read()
            sha256 = hashlib.sha256(data).hexdigest()
        try:
            spec = ModelSpec(
                name=name,
                version="file",
                task=task or "tensors",
                description=f"served from {path}",
                runtime=runtime,
                weights=WeightsSpec(path=path.name, sha256=sha256),
                inputs=InputSpec(kind="tensors"),
                outputs=OutputSpec(kind="tensors"),
                max_batch_size=32,
                workers=1,
            )
        except ValidationError as exc:
            first = str(exc).splitlines()
            raise ModelError(f"model {name!r} from {path}: {' '.join(first[:3])}") from None
        entry = with_program_tensors(ModelEntry(spec=spec, folder=path.parent), data)
        self._entries[name] = entry
        self._resolved.add(name)
        return entry

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def declared(self, name: str) -> ModelSpec:
        """Model ``name``'s declaration as its ``model.yaml`` says (a program's tensors not read)."""
        try:
            return self._entries[name].spec
        except KeyError:
            known = ", ".join(self._entries) or "none"
            raise ModelError(f"unknown model {name!r} (the repository at {self.root} has: {known})") from None

    def get(self, name: str) -> ModelEntry:
        """Model ``name``, ready to load: a program's tensors are read from it (its checksum
        checked) the first time it is asked for, so one broken program fails only its own use."""
        self.declared(name)
        entry = self._entries[name]
        if entry.spec.runtime in PROGRAM_RUNTIMES and name not in self._resolved:
            entry = self._entries[name] = with_program_tensors(entry)
            self._resolved.add(name)
        return entry
