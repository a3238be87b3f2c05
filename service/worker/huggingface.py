"""The ``huggingface`` runtime: a model served from a Hugging Face folder, with no Python of the
user's own (runs in the inference worker).

Preprocessing is the folder's own tokenizer and configuration, so the outputs equal what
``transformers`` (and ``sentence-transformers``) compute in-process on the same folder. Only
safetensors weights are read, with ``local_files_only``; a folder that needs
``trust_remote_code`` (its own code) is refused.

Tasks: ``feature-extraction`` (sentence embeddings: a sentence-transformers folder's pooling,
normalisation and ``max_seq_length``; a bare encoder gets mean pooling, unnormalised),
``rerank`` (a one-label ``*ForSequenceClassification`` cross-encoder: sigmoid of its logit per
query-document pair, a long document scored by its best chunk), ``text-classification`` and
``image-classification`` (the folder's image processor; images decoded here, in the worker:
:mod:`service.codecs.image`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from service.core.repository import ModelError, ModelSpec, classifier_labels, read_json, refuse_remote_code
from service.worker.backends import FEATURES, Backend, TorchBackend
from service.worker.programs import in_input_order
from service.worker.tuning import LONE_ROWS

POOLING_MODES = ("mean", "cls", "max")
# sentence-transformers' Pooling config flag of each mode we implement
_POOLING_FLAGS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
}


def pool(mode: str, token_embeddings: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """One vector per row from its token embeddings, padding excluded (sentence-transformers' modes)."""
    if mode == "cls":
        return token_embeddings[:, 0]
    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
    if mode == "max":
        masked = token_embeddings.masked_fill(mask == 0, torch.finfo(token_embeddings.dtype).min)
        return masked.max(dim=1).values
    summed = (token_embeddings * mask).sum(dim=1)
    return summed / mask.sum(dim=1).clamp(min=1e-9)


def rows_of(output: torch.Tensor) -> list[list[float]]:
    """A forward's output as plain fp32 rows, one per input (what a worker answers)."""
    rows: list[list[float]] = output.detach().float().cpu().tolist()
    return rows


class TokenizedModel:
    """What the folder models share: the folder's own tokenizer (truncated at ``max_length``), the
    module, and token counts as the batcher's costs. A subclass says how inputs are tokenized
    (:meth:`encode`) and what the forward returns."""

    def __init__(self, tokenizer: Any, module: torch.nn.Module, max_length: int, device: str) -> None:
        self.tokenizer = tokenizer
        self.module = module
        self.max_length = max_length
        self.device = device
        # what runs the network (service.worker.backends): one for forwards of a lone input or
        # two, one for batches; torch fp32 until the model is told otherwise (tuning.select)
        self.network: Backend = TorchBackend(module)
        self.lone_network: Backend = self.network
        self.backends = {"lone": "torch", "batch": "torch"}  # names, by shape

    def use(self, batch: Backend, lone: Backend | None = None) -> None:
        """Run batches on ``batch`` and forwards of at most LONE_ROWS rows on ``lone`` (default: the same)."""
        self.network = batch
        self.lone_network = lone or batch

    def run_network(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """The network's first output (last hidden state, logits) for tokenized ``features``."""
        rows = int(features["input_ids"].shape[0])
        return (self.lone_network if rows <= LONE_ROWS else self.network)(features)

    def example_features(self) -> dict[str, torch.Tensor]:
        """Tokenized features of a small batch, to export the network with."""
        batch = self.preprocess([self.example_input(), self.example_input()])
        return {key: value for key, value in batch.items() if key in FEATURES}

    def example_input(self) -> Any:
        return "A short sentence to trace the network with."

    def encode(self, inputs: Sequence[Any], **options: Any) -> Any:
        """Tokenize single texts (a subclass may tokenize otherwise, e.g. pairs)."""
        return self.tokenizer(list(inputs), truncation=True, max_length=self.max_length, **options)

    def costs(self, inputs: Sequence[Any]) -> list[int]:
        """Tokens per input after truncation, special tokens included: the batcher's cost and the
        usage reported to clients (the fast tokenizer costs ~1% of the forward it precedes)."""
        encoded = self.encode(inputs, return_attention_mask=False, return_token_type_ids=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def preprocess(self, inputs: Sequence[Any]) -> dict[str, torch.Tensor]:
        encoded = self.encode(inputs, padding=True, return_tensors="pt")
        return {key: value.to(self.device) for key, value in encoded.items()}

    def postprocess(self, output: torch.Tensor) -> list[list[float]]:
        return rows_of(output)


class SentenceEmbedder(TokenizedModel):
    """Encode, pool, optionally L2-normalise (sentence-transformers' bi-encoder)."""

    def __init__(
        self,
        tokenizer: Any,
        module: torch.nn.Module,
        max_length: int,
        pooling: str,
        normalize: bool,
        device: str,
    ) -> None:
        super().__init__(tokenizer, module, max_length, device)
        self.pooling = pooling
        self.normalize = normalize

    @property
    def max_seq_length(self) -> int:  # sentence-transformers' name for it
        return self.max_length

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.run_network(batch)
        pooled = pool(self.pooling, hidden, batch["attention_mask"])
        return torch.nn.functional.normalize(pooled, p=2, dim=1) if self.normalize else pooled


DEFAULT_MAX_TOKENS_PER_DOC = 4096  # Cohere's default: a document's tokens past this are not read


class PairScorer(TokenizedModel):
    """A cross-encoder: each ``[query, document]`` pair tokenized together, one logit, sigmoid:
    sentence-transformers' CrossEncoder for every pair that fits the model's window.

    A pair that does not fit is scored as Cohere's rerank does: the document (its first
    ``max_tokens_per_doc`` tokens, default 4096) is split into chunks that each fit beside the
    query, consecutive chunks overlapping by an eighth of the window, and the pair scores its best
    chunk. The query keeps what fits beside the document, and at least half the window (a longer
    query is cut to that). An input may carry the limits as extra elements, as the rerank route
    sends them: ``[query, document, max_tokens_per_doc, max_chunks_per_doc]`` (None: default,
    no chunk limit)."""

    def __init__(self, tokenizer: Any, module: torch.nn.Module, max_length: int, device: str) -> None:
        super().__init__(tokenizer, module, max_length, device)
        self.specials = int(tokenizer.num_special_tokens_to_add(pair=True))
        self.overlap = max_length // 8
        # documents are measured whole before they are chunked: transformers would warn that a
        # sequence is longer than the model's maximum (what it keeps in this dict is "warned once")
        tokenizer.deprecation_warnings["sequence-length-is-longer-than-the-specified-maximum"] = True

    def encode(self, inputs: Sequence[Any], **options: Any) -> Any:
        queries, documents = self._fitted(inputs)
        encoded = self.tokenizer(
            queries,
            documents,
            truncation="only_second",
            max_length=self.max_length,
            stride=self.overlap,
            return_overflowing_tokens=True,
            **options,
        )
        most: list[int | None] = [pair[3] if len(pair) > 3 else None for pair in inputs]
        if any(limit is not None for limit in most):
            keep, seen = [], [0] * len(inputs)
            for row, owner in enumerate(encoded["overflow_to_sample_mapping"]):
                limit = most[int(owner)]
                seen[int(owner)] += 1
                if limit is None or seen[int(owner)] <= limit:
                    keep.append(row)
            if len(keep) < len(encoded["input_ids"]):
                encoded = {
                    key: value[keep] if isinstance(value, torch.Tensor) else [value[row] for row in keep]
                    for key, value in encoded.items()
                }
        return encoded

    def _fitted(self, inputs: Sequence[Any]) -> tuple[list[str], list[str]]:
        """The queries and documents to tokenize: as given when the pair fits; else the document
        cut to its token limit and the query to what fits beside it (at least half the window)."""
        queries = [str(pair[0]) for pair in inputs]
        documents = [str(pair[1]) for pair in inputs]
        alone = self.tokenizer(
            queries + documents,
            add_special_tokens=False,
            return_offsets_mapping=True,
            return_attention_mask=False,
        )["offset_mapping"]
        room = self.max_length - self.specials
        for index, pair in enumerate(inputs):
            query, document = alone[index], alone[len(inputs) + index]
            limit = pair[2] if len(pair) > 2 and pair[2] is not None else DEFAULT_MAX_TOKENS_PER_DOC
            if len(document) > limit:
                documents[index] = documents[index][: document[limit - 1][1]]
                document = document[:limit]
            keep = max(room // 2, room - len(document))
            if len(query) > keep:
                queries[index] = queries[index][: query[keep - 1][1]]
        return queries, documents

    def example_input(self) -> Any:
        return ["A short query?", "A short document to trace the network with."]

    def costs(self, inputs: Sequence[Any]) -> list[int]:
        """Tokens of every chunk of each pair (one chunk when it fits)."""
        encoded = self.encode(inputs, return_attention_mask=False, return_token_type_ids=False)
        totals = [0] * len(inputs)
        for ids, owner in zip(encoded["input_ids"], encoded["overflow_to_sample_mapping"], strict=True):
            totals[int(owner)] += len(ids)
        return totals

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        owners = batch["overflow_to_sample_mapping"]
        features = {key: value for key, value in batch.items() if key != "overflow_to_sample_mapping"}
        scores = torch.sigmoid(self.run_network(features))
        if len(owners) == int(owners[-1]) + 1:  # one chunk per pair
            return scores
        best = torch.full(
            (int(owners[-1]) + 1, scores.shape[1]), -1.0, dtype=scores.dtype, device=scores.device
        )
        return best.scatter_reduce(0, owners.unsqueeze(1).expand_as(scores), scores, reduce="amax")


class TextClassifier(TokenizedModel):
    """A ``*ForSequenceClassification`` over single texts: its logits per input, in label order
    (the API server turns them into labelled scores: service.codecs.outputs)."""

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.run_network(batch)


def sequence_classification(folder: Path) -> tuple[Any, Any]:
    """The folder's tokenizer and ``*ForSequenceClassification`` (safetensors, no remote code)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    module = AutoModelForSequenceClassification.from_pretrained(
        str(folder), local_files_only=True, use_safetensors=True, trust_remote_code=False
    )
    return tokenizer, module


def window(tokenizer: Any, module: torch.nn.Module) -> int:
    """Tokens the model reads at most: the tokenizer's limit, within the position embeddings."""
    positions = int(getattr(module.config, "max_position_embeddings", 512))
    return min(int(tokenizer.model_max_length), positions)


def check_labels(spec: ModelSpec, folder: Path) -> None:
    """The labels and activation model.yaml declares are the folder's (its config's id2label)."""
    labels, activation = classifier_labels(read_json(folder / "config.json"))
    declared = (spec.outputs.labels, spec.outputs.activation)
    if declared != (labels, activation):
        raise ModelError(
            f"model {spec.name!r}: model.yaml declares labels {declared[0]} ({declared[1]}), "
            f"the folder has {labels} ({activation})"
        )


def load_classifier(spec: ModelSpec, folder: Path, device: str) -> TextClassifier:
    tokenizer, module = sequence_classification(folder)
    check_labels(spec, folder)
    module.to(device).eval()
    return TextClassifier(tokenizer, module, window(tokenizer, module), device)


class ImageClassifier:
    """A ``*ForImageClassification`` with the folder's image processor: each input's encoded
    image decoded (an undecodable one is that input's 422 alone), resized and normalised as the
    processor says; its logits per input, in label order. Runs on torch.

    When the processor makes every image the same size (a fixed size or a crop, as ViT's and
    most classifiers' do) every image costs the batcher 1. When it keeps the aspect ratio (a
    shortest edge and no crop), an image costs its pixels after the resize, read from its header,
    so the batcher orders inputs by size; images of different sizes then run as one forward per
    size (they cannot share a tensor)."""

    def __init__(self, processor: Any, module: torch.nn.Module, device: str, spec: ModelSpec) -> None:
        self.processor = processor
        self.module = module
        self.device = device
        from service.codecs.image import limits

        self.max_bytes, self.max_pixels = limits(spec.inputs)
        self.backends = {"lone": "torch", "batch": "torch"}
        if not fixed_size(processor):
            self.costs = self.resized_pixels

    def resized_pixels(self, inputs: Sequence[Any]) -> list[int]:
        """Each image's pixels after the processor's resize, from its header (1 when unreadable:
        the worker refuses it when it decodes)."""
        import numpy as np

        from service.codecs import CodecError
        from service.codecs.image import image_bytes, probe

        size = getattr(self.processor, "size", None)
        costs = []
        for value in inputs:
            try:
                if isinstance(value, np.ndarray):
                    height, width = int(value.shape[0]), int(value.shape[1])
                else:
                    _, width, height = probe(image_bytes(value, self.max_bytes), self.max_pixels)
            except CodecError:
                costs.append(1)
                continue
            costs.append(max(1, resized_area(width, height, size)))
        return costs

    def preprocess(self, inputs: Sequence[Any]) -> list[tuple[list[int], torch.Tensor]]:
        import numpy as np
        from PIL import Image

        from service.codecs import CodecError
        from service.codecs.image import decode, image_bytes
        from service.core.rejection import InputRejected

        # one image at a time: decoded, processed to the model's size, dropped before the next is
        # decoded (16 decoded 1920 x 1080 photos at once grew a worker's RSS by 294 MB)
        groups: dict[tuple[int, ...], list[tuple[int, torch.Tensor]]] = {}
        for index, value in enumerate(inputs):
            if isinstance(value, np.ndarray):  # v2 UINT8 [height, width, 3]: pixels already
                image = Image.fromarray(value, "RGB")
            else:
                try:
                    image = decode(image_bytes(value, self.max_bytes), self.max_pixels)
                except CodecError as exc:
                    raise InputRejected(exc.message, index=index) from None
                except Exception as exc:  # Pillow's decoders raise OSError, ValueError, SyntaxError...
                    raise InputRejected(f"the image cannot be decoded: {exc}", index=index) from None
            pixels = self.processor(images=image, return_tensors="pt")["pixel_values"]
            groups.setdefault(tuple(pixels.shape), []).append((index, pixels))
            del image
        return [
            ([index for index, _ in rows], torch.cat([pixels for _, pixels in rows]).to(self.device))
            for rows in groups.values()
        ]

    def forward(self, groups: list[tuple[list[int], torch.Tensor]]) -> list[tuple[list[int], torch.Tensor]]:
        return [(indices, self.module(pixel_values=pixels)[0]) for indices, pixels in groups]

    def postprocess(self, output: list[tuple[list[int], torch.Tensor]]) -> list[list[float]]:
        return in_input_order((indices, rows_of(logits)) for indices, logits in output)


def fixed_size(processor: Any) -> bool:
    """Whether the processor makes images of any shape the same size (probed with two blank
    images, one wide and one tall)."""
    from PIL import Image

    shapes = {
        tuple(processor(images=Image.new("RGB", size), return_tensors="pt")["pixel_values"].shape)
        for size in ((96, 48), (48, 96))
    }
    return len(shapes) == 1


def resized_area(width: int, height: int, size: Any) -> int:
    """Pixels of a ``width`` x ``height`` image after a processor's aspect-keeping resize (its
    ``size``: a shortest edge, capped by a longest edge when given, or a longest edge alone)."""
    shortest = getattr(size, "shortest_edge", None) or (
        size.get("shortest_edge") if isinstance(size, dict) else None
    )
    longest = getattr(size, "longest_edge", None) or (
        size.get("longest_edge") if isinstance(size, dict) else None
    )
    short, long = min(width, height), max(width, height)
    if shortest:
        short, long = shortest, shortest * long / short
        if longest and long > longest:
            short, long = short * longest / long, longest
    elif longest:
        short, long = short * longest / long, longest
    return int(round(short) * round(long))


def load_image_classifier(spec: ModelSpec, folder: Path, device: str) -> ImageClassifier:
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    processor = AutoImageProcessor.from_pretrained(
        str(folder), local_files_only=True, trust_remote_code=False
    )
    module = AutoModelForImageClassification.from_pretrained(
        str(folder), local_files_only=True, use_safetensors=True, trust_remote_code=False
    )
    check_labels(spec, folder)
    module.to(device).eval()
    return ImageClassifier(processor, module, device, spec)


def load(
    spec: ModelSpec, folder: Path, device: str, cache_dir: Path | None = None, backend: str | None = None
) -> Any:
    """The model of ``spec.task`` from a verified folder, running on the backends it serves with
    (``spec.backend``, or ``backend`` when given; exports and decisions under ``cache_dir``)."""
    refuse_remote_code(spec.name, folder, read_json(folder / "config.json"))
    loaders = {
        "feature-extraction": load_embedder,
        "rerank": load_scorer,
        "text-classification": load_classifier,
        "image-classification": load_image_classifier,
    }
    loader = loaders.get(spec.task)
    if loader is None:
        raise ModelError(f"model {spec.name!r}: the huggingface runtime does not serve task {spec.task!r}")
    model: Any = loader(spec, folder, device)
    if device != "cpu" and (backend or spec.backend) not in ("torch", "auto"):
        raise ModelError(f"model {spec.name!r}: backend {backend or spec.backend} runs on the CPU only")
    if device == "cpu" and isinstance(model, TokenizedModel):
        from service.worker.tuning import select

        model.backends = select(
            model, spec.model_copy(update={"backend": backend or spec.backend}), cache_dir
        )
    return model


def load_scorer(spec: ModelSpec, folder: Path, device: str) -> PairScorer:
    tokenizer, module = sequence_classification(folder)
    if module.config.num_labels != 1:
        raise ModelError(
            f"model {spec.name!r}: a reranker has one label, {folder} has {module.config.num_labels}"
        )
    module.to(device).eval()
    return PairScorer(tokenizer, module, window(tokenizer, module), device)


def sentence_transformers_layout(folder: Path) -> tuple[str, bool, int | None]:
    """(pooling mode, normalise, max_seq_length) as the folder's sentence-transformers files say;
    a bare encoder: mean pooling, not normalised, the tokenizer's own limit."""
    pooling, normalize, max_length = "mean", False, None
    modules = folder / "modules.json"
    if modules.is_file():
        with open(modules, encoding="utf-8") as handle:
            listed = json.load(handle)
        for module in listed:
            kind = str(module.get("type", ""))
            if not kind.endswith((".Transformer", ".Pooling", ".Normalize")):
                raise ModelError(
                    f"{folder}: module {kind!r} (modules.json) is not served by the huggingface runtime "
                    "(it serves Transformer, Pooling and Normalize)"
                )
            if kind.endswith(".Normalize"):
                normalize = True
            elif kind.endswith(".Pooling"):
                config = read_json(folder / module.get("path", "1_Pooling") / "config.json")
                flags = {key for key, value in config.items() if key.startswith("pooling_mode_") and value}
                modes = [mode for flag, mode in _POOLING_FLAGS.items() if flag in flags]
                if len(flags) != 1 or len(modes) != 1:
                    raise ModelError(f"{folder}: pooling {sorted(flags)} is not one of {POOLING_MODES}")
                pooling = modes[0]
    bert = folder / "sentence_bert_config.json"
    if bert.is_file():
        max_length = int(read_json(bert)["max_seq_length"])
    return pooling, normalize, max_length


def load_embedder(spec: ModelSpec, folder: Path, device: str) -> SentenceEmbedder:
    from transformers import AutoModel, AutoTokenizer

    pooling, normalize, max_length = sentence_transformers_layout(folder)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    module = AutoModel.from_pretrained(
        str(folder), local_files_only=True, use_safetensors=True, trust_remote_code=False
    )
    module.to(device).eval()
    if max_length is None:
        max_length = window(tokenizer, module)
    return SentenceEmbedder(tokenizer, module, max_length, pooling, normalize, device)
